def work(datum):
    while True:
        pass
