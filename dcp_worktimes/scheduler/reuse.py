"""Schedulers the Compute API keeps open between the jobs of one process.

Opening the embedded store costs ~2 ms (a connection, WAL mode, the schema check) and closing
its last connection 2-4 ms more (SQLite checkpoints the WAL into the file): a process that runs
job after job paid both on every ``exec()``, a fifth of a small job's latency. A job done with a
scheduler it opened gives it back here instead of closing it, and the next job on the same URL in
this process takes it, if it is still the same store (``Scheduler.reuse_token``: the SQLite file
was not deleted, replaced or rewritten meanwhile). At most one idle scheduler per URL and
``MAX_KEPT`` in all; each is closed ``IDLE_SECONDS`` after its last job (by a background thread,
so the file is complete on disk, WAL checkpointed, a moment after the jobs stop) and at exit::

    sched = take("sqlite:///tmp/jobs.db")        # the kept one, or open_scheduler(url)
    ...
    give_back("sqlite:///tmp/jobs.db", sched)    # kept for the next job, or closed
"""

from __future__ import annotations

import atexit
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
_closer: threading.Thread | None = None
_closer_pid = 0


def take(url: str | None) -> Scheduler:
    """A scheduler for ``url`` (``None``: the default store): the one kept, if still usable, or a new one."""
    key = url if url is not None else default_url()
    with _lock:
        entry = _idle.pop(key, None)
        stale = _expired()
    _close(stale)
    if entry is not None:
        sched, token, _, pid = entry
        if pid == os.getpid():  # a forked child never touches its parent's connections
            if _token(sched) == token:
                return sched
            _close([sched])
    return open_scheduler(key)


def give_back(url: str | None, sched: Scheduler) -> None:
    """A job is done with ``sched``, which it got from ``take(url)``: keep it or close it."""
    global _closer, _closer_pid
    token = _token(sched)
    if token is None:
        sched.close()
        return
    key = url if url is not None else default_url()
    me = os.getpid()
    with _lock:
        old = _idle.pop(key, None)
        _idle[key] = (sched, token, time.monotonic(), me)
        stale = [old[0]] if old is not None and old[3] == me else []
        while len(_idle) > MAX_KEPT:
            oldest = next(iter(_idle))
            s, _, _, pid = _idle.pop(oldest)
            if pid == me:
                stale.append(s)
        stale += _expired()
        if _closer is None or _closer_pid != me or not _closer.is_alive():  # one per process (fork)
            _closer, _closer_pid = threading.Thread(target=_close_idle, name="dcp-store-closer", daemon=True), me
            _closer.start()
        _lock.notify_all()
    _close(stale)


@atexit.register
def close_all() -> None:
    """Close every kept scheduler (at exit; tests that count open files)."""
    with _lock:
        kept = [s for s, _, _, pid in _idle.values() if pid == os.getpid()]
        _idle.clear()
    _close(kept)


def _close_idle() -> None:
    """The background thread: close each kept scheduler when its time is up."""
    while True:
        with _lock:
            stale = _expired()
            if not stale:
                now = time.monotonic()
                due = [since + IDLE_SECONDS - now for _, _, since, pid in _idle.values() if pid == os.getpid()]
                _lock.wait(max(0.0, min(due)) + 0.01 if due else None)
        _close(stale)


def _expired() -> list[Scheduler]:
    """Pop the schedulers idle too long (the caller holds ``_lock``)."""
    now, me = time.monotonic(), os.getpid()
    old = [key for key, (_, _, since, _) in _idle.items() if now - since >= IDLE_SECONDS]
    return [s for s, _, _, pid in (_idle.pop(key) for key in old) if pid == me]


def _token(sched: Scheduler) -> Any:
    try:
        return sched.reuse_token()
    except Exception:  # noqa: BLE001 - a scheduler that cannot tell is not reused
        return None


def _close(scheds: list[Scheduler]) -> None:
    for s in scheds:
        try:
            s.close()
        except Exception:  # noqa: BLE001 - closing an idle connection must not fail a job
            pass
