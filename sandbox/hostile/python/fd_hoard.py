# Opens scratch files until it runs out of descriptors and keeps them all (across slices too):
# the guest meets its own limit, the worker keeps serving.
held = []


def work(x):
    n = 0
    while n < 100_000:
        try:
            held.append(open(f"/tmp/f{n % 10}", "w"))
        except OSError:
            break
        n += 1
    return len(held)
