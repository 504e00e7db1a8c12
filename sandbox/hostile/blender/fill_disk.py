def dcp_datum(scene, datum):
    chunk = b"x" * (1 << 20)
    with open("/scratch/fill", "wb") as f:
        while True:
            f.write(chunk)
            f.flush()
