# A sparse /tmp file of 1 TiB apparent size whose holes it fills, 1 MiB every 1 GiB (ignoring
# errors): only allocated pages use the disk, and the kernel-capped scratch counts exactly those.
import os


def work(x):
    fd = os.open("/tmp/sparse", os.O_RDWR | os.O_CREAT)
    os.ftruncate(fd, 1 << 40)
    block = b"x" * (1 << 20)
    written = 0
    for i in range(1024):
        try:
            written += os.pwrite(fd, block, i << 30)
        except OSError:
            pass
    return written
