def work(datum):
    return b"x" * (8 << 20)
