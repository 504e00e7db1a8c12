def work(datum):
    import time
    started = time.monotonic()
    while time.monotonic() - started < 60:
        pass
    return "finished without ever calling progress()"
