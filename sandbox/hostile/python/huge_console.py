def work(datum):
    while True:
        print("x" * 1000)
