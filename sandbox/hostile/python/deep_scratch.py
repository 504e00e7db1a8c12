# A /tmp tree 1500 directories deep (deeper than the host's recursion limit) made by slice 0 only:
# cleaning it up must not fail this job's other slices or the jobs after it.
import os


def work(x):
    if x == 0:
        os.chdir("/tmp")
        for _ in range(1500):
            os.mkdir("d")
            os.chdir("d")
        os.chdir("/")
    return x * 10
