def dcp_datum(scene, datum):
    with open("/etc/passwd") as f:
        return f.read()
