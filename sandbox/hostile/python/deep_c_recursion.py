def work(datum):
    nested = []
    for _ in range(1_000_000):
        nested = [nested]
    return repr(nested)[:10]
