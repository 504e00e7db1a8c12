def work(datum):
    raise ValueError("boom from the work")
