def work(datum):
    """Every way out we could think of; returns what succeeded (must be nothing)."""
    import os
    escaped = []
    attempts = {
        "read /etc/passwd": lambda: open("/etc/passwd").read(),
        "list /": lambda: os.listdir("/"),
        "climb out of /tmp": lambda: open("/tmp/../../etc/passwd").read(),
        "climb out of the files": lambda: os.listdir("/dcp/files/../../.."),
        "write the job files": lambda: open("/dcp/files/new.txt", "w").write("x"),
        "write the bootstrap": lambda: open("/dcp/boot/_dcp_guest.py", "a").write("x"),
        "write the stdlib": lambda: open("/usr/local/lib/evil.py", "w").write("x"),
        "socket": lambda: __import__("socket").socket(),
        "fork": lambda: os.fork(),
        "load a C library": lambda: __import__("ctypes").CDLL("libc.so.6"),
        "threads": lambda: __import__("threading").Thread(target=print).start(),
    }
    for name, attempt in attempts.items():
        try:
            attempt()
            escaped.append(name)
        except BaseException:
            pass
    return escaped
