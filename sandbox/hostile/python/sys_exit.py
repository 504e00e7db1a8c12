def work(datum):
    import sys
    sys.exit(3)
