def dcp_datum(scene, datum):
    return {"value": object()}  # what the hook returns comes back as the result's "info"
