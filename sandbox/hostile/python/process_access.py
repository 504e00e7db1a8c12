def work(marker):
    import os
    os.system(f"touch {marker}")
    import subprocess
    subprocess.run(["touch", marker])
    return "started a process"
