import sys

sys.setrecursionlimit(10**6)


def down(n):
    return down(n + 1) + 1


def dcp_datum(scene, datum):
    return down(0)
