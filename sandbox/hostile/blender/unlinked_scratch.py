# Writes 1 GiB into a scratch file it unlinked but keeps open: the kernel counts it against the
# scratch tmpfs's size, so the write stops at the cap (EOUTPUTLIMIT), never on the host's disk.
import os


def dcp_datum(scene, datum):
    f = open("/scratch/hidden", "wb")
    os.unlink("/scratch/hidden")
    chunk = b"x" * (1 << 20)
    for _ in range(1024):
        f.write(chunk)
        f.flush()
