import os
import subprocess


def dcp_datum(scene, marker):
    os.system(f"touch {marker}")
    subprocess.run(["touch", marker])
    return "started a process"
