import time


def work(datum):
    # Burns CPU for 10 s. Expected: ECPULIMIT at the 1 s CPU-time limit.
    end = time.monotonic() + 10
    n = 0
    while time.monotonic() < end:
        n += 1
    return n
