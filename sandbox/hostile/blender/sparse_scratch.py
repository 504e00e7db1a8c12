# Creates a 1 TiB sparse scratch file, then fills its holes: each page written counts against the
# scratch tmpfs's size, so the filling stops at the cap (EOUTPUTLIMIT).
def dcp_datum(scene, datum):
    chunk = b"x" * (1 << 20)
    with open("/scratch/sparse", "wb") as f:
        f.truncate(1 << 40)
        for i in range(1024):
            f.seek(i * (1 << 30))
            f.write(chunk)
            f.flush()
