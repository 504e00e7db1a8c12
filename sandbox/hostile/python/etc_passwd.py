def work(datum):
    return open("/etc/passwd").read()
