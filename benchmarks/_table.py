"""One way to print benchmark tables (rich), shared by every script in benchmarks/."""

from __future__ import annotations

import statistics
import sys
import time
from typing import Callable, Sequence

from rich.console import Console
from rich.table import Table


def median_time(fn: Callable[[], object], repeat: int = 3) -> float:
    """Median wall time of ``repeat`` runs of ``fn`` (seconds)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def timer(fn: Callable[[], object]) -> Callable[[], float]:
    """``fn`` as a self-timing contender for ``interleaved``: called once now (the warm-up: JIT,
    caches), then each call returns its own seconds."""
    fn()

    def call() -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t
    return call


def interleaved(contenders: dict[str, Callable[[], float]], repeat: int) -> dict[str, list[float]]:
    """``repeat`` timings of each contender (a callable returning the seconds its call took, see
    ``timer``), taken in rounds, one call of each per round, so that a shared machine's drifting
    load falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeat):
        for name, call in contenders.items():
            times[name].append(call())
    return times


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]], note: str = "") -> None:
    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*(f"{c:,.1f}" if isinstance(c, float) and abs(c) >= 100 else
                        f"{c:.3g}" if isinstance(c, float) else str(c) for c in row))
    console = Console(width=None if sys.stdout.isatty() else 200)  # piped to a file: never squeeze the columns
    console.print(table)
    if note:
        console.print(note)
