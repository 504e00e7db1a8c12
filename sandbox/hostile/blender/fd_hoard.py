# Opens files until it runs out of descriptors: any outcome, the worker keeps serving.
def dcp_datum(scene, datum):
    held = []
    try:
        for i in range(1 << 20):
            held.append(open(f"/scratch/f{i % 64}", "wb"))
    except OSError:
        pass
    return len(held)
