import time


def dcp_datum(scene, datum):
    end = time.process_time() + 10
    while time.process_time() < end:
        pass
