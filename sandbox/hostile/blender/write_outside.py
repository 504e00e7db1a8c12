def dcp_datum(scene, host_path):
    """Tries to write outside /scratch; returns what happened at each place (the test checks)."""
    outcome = {}
    for path in (host_path, "/job/escape", "/usr/escape", "/etc/escape", "/escape", "/proc/escape", "/dev/escape"):
        try:
            with open(path, "w") as f:
                f.write("escaped")
            outcome[path] = "written"
        except OSError as e:
            outcome[path] = type(e).__name__
    return outcome
