def work(datum):
    import time
    time.sleep(10**6)
    return "woke up"
