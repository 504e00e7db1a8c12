def dcp_datum(scene, datum):
    hoard = []
    while True:
        hoard.append(b"x" * (8 << 20))  # written, so resident
