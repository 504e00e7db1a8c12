def dcp_datum(scene, datum):
    raise ValueError("hostile throw")
