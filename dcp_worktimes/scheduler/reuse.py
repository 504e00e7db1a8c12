"""Schedulers the Compute API keeps open between the jobs of one process.

Opening the embedded store costs ~2 ms (a connection, WAL mode, the schema check) and closing
its last connection 2-4 ms more (SQLite checkpoints the WAL into the file): a process that runs
job after job paid both on every ``exec()``, a fifth of a small job's latency. A job done with a
scheduler it opened gives it back here instead of closing it, and the next job on the same URL in
this process takes it, if it is still the same store (``Scheduler.reuse_token``: the SQLite file
was not deleted or replaced by another file meanwhile). At most one idle scheduler per URL and
``MAX_KEPT`` in all; each is closed ``IDLE_SECONDS`` after its last job (by a background thread,
so the file is complete on disk, WAL checkpointed, a moment after the jobs stop) and at exit.

A kept connection whose file was deleted or replaced meanwhile is never closed: closing SQLite's
last connection deletes ``<store>-wal`` *by name*, which may now be another store's (one a second
process made at the same path). It is abandoned instead, its descriptors kept until the process
ends. A forked child abandons its parent's the same way (SQLite connections must not cross a
fork). As with any open SQLite store (a running worker's too), copying another file *over* it in
place, rather than replacing it (``mv``), corrupts it::

    sched = take("sqlite:///tmp/jobs.db")        # the kept one, or open_scheduler(url)
    ...
    give_back("sqlite:///tmp/jobs.db", sched)    # kept for the next job, or closed
"""

from __future__ import annotations

import atexit
import ctypes
import os
import threading
import time
from typing import Any

from .base import Scheduler, default_url, open_scheduler

#: Seconds an idle scheduler is kept for the next job. Short: while it is open, the store's last
#: jobs are in its WAL file, not yet in the main file (a copy of the main file alone lacks them).
IDLE_SECONDS = 2.0
#: Idle schedulers kept at most (one per URL).
MAX_KEPT = 4

_lock = threading.Condition()
_idle: dict[str, tuple[Scheduler, Any, float, int]] = {}  # URL -> (scheduler, token, given back at, pid)
_abandoned: list[Scheduler] = []  # never closed (see above)
_closer: threading.Thread | None = None


def take(url: str | None) -> Scheduler:
    """A scheduler for ``url`` (``None``: the default store): the one kept, if still usable, or a new one."""
    key = url if url is not None else default_url()
    with _lock:
        entry = _idle.pop(key, None)
        stale = _expired()
    _close(stale)
    if entry is not None:
        sched, token, _, _ = entry
        if _token(sched) == token:
            return sched
        _abandon(sched)
    return open_scheduler(key)


def give_back(url: str | None, sched: Scheduler) -> None:
    """A job is done with ``sched``, which it got from ``take(url)``: keep it or close it."""
    token = _token(sched)
    if token is None:
        sched.close()
        return
    key = url if url is not None else default_url()
    with _lock:
        old = _idle.pop(key, None)
        _idle[key] = (sched, token, time.monotonic(), os.getpid())
        stale = [old] if old is not None else []
        while len(_idle) > MAX_KEPT:
            stale.append(_idle.pop(next(iter(_idle))))
        stale += _expired()
        started = _start_closer()
        _lock.notify_all()
    _close(stale)
    if not started:  # no thread can start (the interpreter is shutting down): close it now
        close_all()


@atexit.register
def close_all() -> None:
    """Close every kept scheduler (at exit; tests that count open files)."""
    with _lock:
        kept = list(_idle.values())
        _idle.clear()
    _close(kept)


def _start_closer() -> bool:
    """The closer thread runs (the caller holds ``_lock``); ``False`` if it cannot be started."""
    global _closer
    if _closer is None or not _closer.is_alive():
        try:
            _closer = threading.Thread(target=_close_idle, name="dcp-store-closer", daemon=True)
            _closer.start()
        except RuntimeError:
            _closer = None
            return False
    return True


def _close_idle() -> None:
    """The background thread: close each kept scheduler when its time is up."""
    while True:
        with _lock:
            stale = _expired()
            if not stale:
                now = time.monotonic()
                due = [since + IDLE_SECONDS - now for _, _, since, _ in _idle.values()]
                _lock.wait(max(0.0, min(due)) + 0.01 if due else None)
        _close(stale)


def _expired() -> list[tuple[Scheduler, Any, float, int]]:
    """Pop the schedulers idle too long (the caller holds ``_lock``)."""
    now = time.monotonic()
    old = [key for key, (_, _, since, _) in _idle.items() if now - since >= IDLE_SECONDS]
    return [_idle.pop(key) for key in old]


def _token(sched: Scheduler) -> Any:
    try:
        return sched.reuse_token()
    except Exception:  # noqa: BLE001 - a scheduler that cannot tell is not reused
        return None


def _close(entries: list[tuple[Scheduler, Any, float, int]]) -> None:
    """Close kept schedulers that still are what they were; abandon the others."""
    for sched, token, _, pid in entries:
        if pid != os.getpid() or _token(sched) != token:
            _abandon(sched)
            continue
        try:
            sched.close()
        except Exception:  # noqa: BLE001 - closing an idle connection must not fail a job
            pass


def _abandon(sched: Scheduler) -> None:
    # A reference the interpreter never drops, even at exit (when it clears modules and would
    # otherwise free the connection, which closes it).
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(sched))
    _abandoned.append(sched)


def _after_fork_in_child() -> None:
    global _lock, _closer
    _lock = threading.Condition()  # the parent's may have been held by a thread the child lacks
    _closer = None
    for sched, _, _, _ in _idle.values():
        _abandon(sched)
    _idle.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
