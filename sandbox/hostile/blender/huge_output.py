def dcp_datum(scene, datum):
    for i in range(40000):
        print(f"line {i} " + "x" * 100)
