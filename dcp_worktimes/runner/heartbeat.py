"""A shared-memory heartbeat between an evaluator and its supervisor.

The evaluator writes, for the slice it is running, its index in the batch, the monotonic start
time, the time of its last ``progress()``, its process CPU time at start, and ``span``: how many
slices from ``index`` on the engine may be running under this record (1 when it runs slices one
by one; more when an engine runs a block of slices per call and enforces per-slice limits itself,
so a process killed from outside cannot be blamed on one slice). The supervisor's
watchdog reads it every tick. Shared memory instead of frames because ``progress()`` may be
called millions of times per slice: a pipe message per call would cost more than the work.

The record is a seqlock: the writer makes the sequence number odd, writes the fields, makes it
even again; a reader that sees an odd or changed number retries, and after a few tries gives up
for this tick (the writer may be descheduled mid-write: a torn record once killed a healthy slice
as "no progress since time 0"). ``CLOCK_MONOTONIC`` is system-wide on Linux, so times compare
across the two processes.
"""

from __future__ import annotations

import mmap
import os
import struct

_SEQ = struct.Struct("<Q")
_FIELDS = struct.Struct("<qdddq")  # index (-1 idle), started, last_progress, cpu_start, span
_FIELDS_AT = _SEQ.size
SIZE = _SEQ.size + _FIELDS.size
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
        self._seq = _SEQ.unpack_from(self._map, 0)[0] & ~1
        if new:
            self.idle()  # zeroed memory would read as "slice 0 started at time 0"

    # -- evaluator side (one writer) --------------------------------------------------------------
    def _write(self, index: int, started: float, last: float, cpu: float, span: int) -> None:
        m = self._map
        self._seq += 1
        _SEQ.pack_into(m, 0, self._seq)  # odd: writing
        _FIELDS.pack_into(m, _FIELDS_AT, index, started, last, cpu, span)
        self._seq += 1
        _SEQ.pack_into(m, 0, self._seq)  # even: consistent

    def start(self, index: int, now: float, cpu: float, span: int = 1) -> None:
        self._write(index, now, now, cpu, span)

    def progressed(self, now: float) -> None:
        # One aligned 8-byte store: never torn on the platforms we run on, so no seqlock round.
        struct.pack_into("<d", self._map, _FIELDS_AT + 16, now)

    def idle(self) -> None:
        self._write(IDLE, 0.0, 0.0, 0.0, 0)

    # -- supervisor side --------------------------------------------------------------------------
    def read(self) -> tuple[int, float, float, float, int] | None:
        """``(index, started, last_progress, cpu_start, span)``, or ``None`` if no consistent read now."""
        m = self._map
        if self._map.closed:
            return None
        for _ in range(8):
            before = _SEQ.unpack_from(m, 0)[0]
            if before & 1:
                continue
            fields = _FIELDS.unpack_from(m, _FIELDS_AT)
            if _SEQ.unpack_from(m, 0)[0] == before:
                return fields
        return None

    def last_words(self) -> tuple[int, float, float, float, int]:
        """The record as a dead writer left it (consistent or not: nobody will finish the write)."""
        return _FIELDS.unpack_from(self._map, _FIELDS_AT)

    def close(self) -> None:
        try:
            self._map.close()
        finally:
            os.close(self.fd)
