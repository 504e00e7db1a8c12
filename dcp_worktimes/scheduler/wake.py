"""In-process wake-ups: a worker waiting for work wakes as soon as work may have arrived.

Every scheduler on the same store in one process shares one ``Wake`` (``shared(key)``); each
scheduler object watches it through its own ``Waiter``. A plain condition variable loses a
notification that arrives while the worker is busy between two waits (leasing, reporting): it
would then sleep a whole timeout with work waiting. A ``Waiter`` remembers the last generation
it saw, so a wake-up that came in between returns at once::

    wake = shared("sqlite:/tmp/jobs.db")
    waiter = Waiter(wake)
    wake.notify()              # a deployer stored work while the worker was busy
    waiter.wait(5.0)           # -> True at once, not after 5 s
    waiter.wait(0.01)          # -> False: nothing new since
"""

from __future__ import annotations

import threading


class Wake:
    """A condition with a generation number, bumped by every ``notify``."""

    __slots__ = ("cond", "generation")

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.generation = 0

    def notify(self) -> None:
        with self.cond:
            self.generation += 1
            self.cond.notify_all()


class Waiter:
    """One scheduler's view of a ``Wake``: ``wait`` is True when there was a wake-up since the last."""

    __slots__ = ("wake", "seen")

    def __init__(self, wake: Wake) -> None:
        self.wake = wake
        self.seen = wake.generation

    def wait(self, timeout: float) -> bool:
        wake = self.wake
        with wake.cond:
            woken = wake.cond.wait_for(lambda: wake.generation != self.seen, timeout)
            self.seen = wake.generation
            return bool(woken)


_shared: dict[object, Wake] = {}
_shared_lock = threading.Lock()


def shared(key: object) -> Wake:
    """The process-wide ``Wake`` of one store (a file path, a Redis server and group)."""
    with _shared_lock:
        return _shared.setdefault(key, Wake())
