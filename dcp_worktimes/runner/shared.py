"""The evaluator pool that ``job.exec()`` keeps warm between jobs of one process.

Starting a pool means starting a zygote per worktime (a Python start-up and the engine's import,
~50-100 ms); a warm pool forks a fresh evaluator for the next job in a few milliseconds (a new
job still always gets new evaluator processes). ``borrow`` hands out the process's pool for these
``cores`` and settings; it is closed after ``IDLE_SECONDS`` without use, and at exit::

    with borrow(cores=2, config={}) as pool:
        ...
"""

from __future__ import annotations

import atexit
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from .pool import EvaluatorPool

#: Seconds an unused warm pool (its zygotes and idle evaluators) is kept before it is closed.
IDLE_SECONDS = 60.0

_lock = threading.Lock()
_pools: dict[Any, list] = {}  # key -> [pool, users, last used]
_reaper: threading.Thread | None = None


def _key(cores: int | None, config: Mapping[str, Mapping[str, Any]]) -> Any:
    return cores, tuple(sorted((name, tuple(sorted(c.items()))) for name, c in config.items()))


@contextmanager
def borrow(cores: int | None, config: Mapping[str, Mapping[str, Any]] | None = None) -> Iterator[EvaluatorPool]:
    """The warm pool for ``cores`` evaluators and these worktime settings (made on first use)."""
    config = config or {}
    key = _key(cores, config)
    with _lock:
        entry = _pools.get(key)
        if entry is None or entry[0]._closed:
            entry = _pools[key] = [EvaluatorPool(cores, config=config), 0, time.monotonic()]
            _start_reaper()
        entry[1] += 1
    try:
        yield entry[0]
    finally:
        with _lock:
            entry[1] -= 1
            entry[2] = time.monotonic()


def close_all() -> None:
    """Close every warm pool (at exit, and in tests that count processes)."""
    with _lock:
        pools = [entry[0] for entry in _pools.values()]
        _pools.clear()
    for pool in pools:
        pool.close()


def _start_reaper() -> None:
    global _reaper
    if _reaper is None or not _reaper.is_alive():
        _reaper = threading.Thread(target=_reap, name="dcp-pool-reaper", daemon=True)
        _reaper.start()


def _reap() -> None:
    while True:
        time.sleep(min(IDLE_SECONDS, 5.0))
        now = time.monotonic()
        with _lock:
            idle = [key for key, (pool, users, last) in _pools.items() if users == 0 and now - last > IDLE_SECONDS]
            pools = [_pools.pop(key)[0] for key in idle]
        for pool in pools:
            pool.close()


atexit.register(close_all)
