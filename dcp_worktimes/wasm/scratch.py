"""The size cap of a guest's scratch directory (its writable ``/tmp``), shared by the WASI worktimes.

A guest may write files only there; without a cap one slice could fill the worker's disk. The
watchdog calls ``ScratchCap.check()`` on every tick; it rescans at most every ``interval``
seconds (a scan is a directory walk), so the cap is soft by what one interval of writing adds::

    cap = ScratchCap("/path/to/scratch", 64 << 20)
    error = cap.check()          # None, or SliceError(EOUTPUTLIMIT) once the tree is over the cap
"""

from __future__ import annotations

import os
import time

from ..errors import ErrorCode, SliceError

MiB = 1 << 20
DEFAULT_SCRATCH_SIZE = 64 * MiB
#: The most a job may ask for (``options.scratch_size``); the worker's owner sets it with this variable.
ENV_SCRATCH_LIMIT = "DCP_WORKTIMES_SCRATCH_LIMIT"
DEFAULT_SCRATCH_LIMIT = 1024 * MiB
CHECK_INTERVAL = 0.2
#: What an entry costs at least: empty files and directories use an inode and a block of metadata.
ENTRY_COST = 4096


def scratch_size(option: object) -> int:
    """The cap for a job asking for ``option`` (``None``: the default): never above the worker's limit.

    ``ValueError`` for a value that is not a size. A job cannot lift the cap ("none" means the
    worker's limit): the scratch directory lives on the worker's disk.
    """
    from ..limits import parse_size

    limit = parse_size(os.environ.get(ENV_SCRATCH_LIMIT) or DEFAULT_SCRATCH_LIMIT, ENV_SCRATCH_LIMIT) or DEFAULT_SCRATCH_LIMIT
    asked = parse_size(DEFAULT_SCRATCH_SIZE if option is None else option, "options.scratch_size")
    return limit if asked is None else min(asked, limit)


def tree_size(path: str) -> int:
    """Bytes of disk the tree under ``path`` occupies: allocated blocks, and at least ENTRY_COST per
    entry (a million empty files fill a disk's inodes as surely as bytes fill its blocks)."""
    total = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                            total += ENTRY_COST
                        else:
                            total += max(entry.stat(follow_symlinks=False).st_blocks * 512, ENTRY_COST)
                    except OSError:
                        pass
        except OSError:
            pass
    return total


class ScratchCap:
    """Periodic check that a scratch tree stays under ``cap`` bytes (``None``: no cap)."""

    def __init__(self, path: str, cap: int | None, option: str = "options.scratch_size",
                 interval: float = CHECK_INTERVAL) -> None:
        self.path, self.cap, self.option, self.interval = path, cap, option, interval
        self._last = 0.0

    def check(self) -> SliceError | None:
        if self.cap is None:
            return None
        now = time.monotonic()
        if now - self._last < self.interval:
            return None
        self._last = now
        used = tree_size(self.path)
        if used > self.cap:
            return SliceError(f"the scratch directory /tmp grew to {used} bytes, over its cap of {self.cap}; "
                              f"write less, or raise {self.option}", code=ErrorCode.EOUTPUTLIMIT)
        return None
