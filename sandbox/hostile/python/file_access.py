def work(path):
    with open(path) as f:
        return f.read()
