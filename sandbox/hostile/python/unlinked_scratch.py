# Keeps one unlinked file open across slices and appends 600 MB to it in every slice (ignoring
# errors): the descriptor survives from slice to slice in the warm interpreter, and no directory
# walk sees the file. The kernel-capped scratch stops it at the cap. Returns the file's size.
import os

held = []


def work(x):
    if not held:
        f = open("/tmp/hidden", "wb")
        os.unlink("/tmp/hidden")
        held.append(f)
    f = held[0]
    block = b"x" * (1 << 20)
    for _ in range(600):
        try:
            f.write(block)
            f.flush()
        except OSError:
            pass
    return f.tell()
