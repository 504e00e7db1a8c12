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
CHECK_INTERVAL = 0.2


def tree_size(path: str) -> int:
    """Bytes of disk the tree under ``path`` occupies (allocated blocks: sparse files count as used)."""
    total = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        else:
                            total += entry.stat(follow_symlinks=False).st_blocks * 512
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
