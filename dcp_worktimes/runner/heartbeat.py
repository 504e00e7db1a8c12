"""A shared-memory heartbeat between an evaluator and its supervisor.

The evaluator writes, for the slice it is running, its index in the batch, the monotonic start
time, the time of its last ``progress()`` and its process CPU time at start. The supervisor's
watchdog reads it every tick. Shared memory instead of frames because ``progress()`` may be
called millions of times per slice: a pipe message per call would cost more than the work.

``CLOCK_MONOTONIC`` is system-wide on Linux, so times compare across the two processes.
"""

from __future__ import annotations

import mmap
import os
import struct

_LAYOUT = struct.Struct("<qqddd")  # generation, index (-1 idle), started, last_progress, cpu_start
SIZE = _LAYOUT.size
IDLE = -1


class Heartbeat:
    """One evaluator's heartbeat record, backed by a memfd both processes map."""

    def __init__(self, fd: int | None = None) -> None:
        new = fd is None
        if fd is None:
            fd = os.memfd_create("dcp-heartbeat", 0)
            os.ftruncate(fd, SIZE)
        self.fd = fd
        self._map = mmap.mmap(fd, SIZE)
        self._gen = 0
        if new:
            self.idle()  # zeroed memory would read as "slice 0 started at time 0"

    # -- evaluator side -------------------------------------------------------------------------
    def start(self, index: int, now: float, cpu: float) -> None:
        self._gen += 1
        _LAYOUT.pack_into(self._map, 0, self._gen, index, now, now, cpu)

    def progressed(self, now: float) -> None:
        struct.pack_into("<d", self._map, 24, now)  # one aligned 8-byte store: no torn read

    def idle(self) -> None:
        self._gen += 1
        _LAYOUT.pack_into(self._map, 0, self._gen, IDLE, 0.0, 0.0, 0.0)

    # -- supervisor side ------------------------------------------------------------------------
    def read(self) -> tuple[int, int, float, float, float]:
        """``(generation, index, started, last_progress, cpu_start)``; retried if torn."""
        for _ in range(4):
            first = _LAYOUT.unpack_from(self._map, 0)
            again = _LAYOUT.unpack_from(self._map, 0)
            if first[:3] == again[:3]:
                return again
        return again

    def close(self) -> None:
        try:
            self._map.close()
        finally:
            os.close(self.fd)
