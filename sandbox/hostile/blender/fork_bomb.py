import os
import time

children = []


def dcp_datum(scene, datum):
    while True:
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        children.append(pid)
