def dcp_datum(scene, datum):
    with open(datum) as f:  # datum: a host file's path
        return f.read()
