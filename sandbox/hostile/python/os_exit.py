def work(datum):
    import os
    os._exit(3)
