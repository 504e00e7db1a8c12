def work(datum):
    return {"a set": {1, 2, 3}}
