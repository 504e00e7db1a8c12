# Scene script: the factory scene, and a per-frame hook that never returns.
def dcp_datum(scene, datum):
    while True:
        pass
