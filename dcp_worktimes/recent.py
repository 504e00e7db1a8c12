"""A mapping that keeps only its most recently stored keys.

Long-running processes (a worker serving jobs for weeks, a deployer running job after job) keep
per-job caches and memories; these must not grow with every job ever seen::

    >>> seen = Recent(2)
    >>> seen["a"], seen["b"], seen["c"] = 1, 2, 3
    >>> list(seen)
    ['b', 'c']
"""

from __future__ import annotations

import collections
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Recent(collections.OrderedDict[K, V]):
    """A dict of at most ``limit`` entries: storing a key makes it the newest, and the oldest go."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: K, value: V) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)
