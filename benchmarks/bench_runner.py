"""Per-slice host overhead of the sandboxed runner (echo worktime) vs multiprocessing.Pool.

    python benchmarks/bench_runner.py [--slices 100000]

Both sides run the same trivial function (identity) over the same integers on all cores, in the
same run. The runner pays for what Pool does not: a sandboxed evaluator per core, msgpack values,
per-slice limits, errors and accounting. Goal: echo >= 30 % of Pool's chunked rate.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from _table import median_time, print_table  # noqa: E402

from dcp_worktimes.runner import EvaluatorPool  # noqa: E402
from dcp_worktimes.worktime import JobSpec  # noqa: E402


def identity(x):
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--slices", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    n, cores = args.slices, os.cpu_count() or 1

    with EvaluatorPool(cores=cores) as pool:
        counter = iter(range(10**9))

        def runner() -> None:
            job = JobSpec(id=f"bench-{next(counter)}", worktime="echo", work="")
            bad = sum(1 for o in pool.map(job, ((i, i) for i in range(n))) if not o.ok)
            assert bad == 0

        runner()  # warm: evaluators started once, as a long-running worker has them
        t_runner = median_time(runner, args.repeat)

    with multiprocessing.Pool(cores) as mp:
        chunk = max(1, n // (cores * 4))
        t_chunked = median_time(lambda: mp.map(identity, range(n), chunksize=chunk), args.repeat)
        t_single = median_time(lambda: mp.map(identity, range(n // 10), chunksize=1), args.repeat) * 10

    rows = [
        ("dcp-worktimes echo (sandboxed)", n / t_runner, t_runner / n * 1e6 * cores, 1.0),
        (f"multiprocessing.Pool chunked ({chunk}/chunk)", n / t_chunked, t_chunked / n * 1e6 * cores, t_chunked / t_runner),
        ("multiprocessing.Pool chunksize=1", n / t_single, t_single / n * 1e6 * cores, t_single / t_runner),
    ]
    print_table(f"{n:,} trivial slices on {cores} cores", ["", "slices/s", "µs per slice per core",
                                                          "echo's throughput ÷ this row's"],
                rows, note=f"echo reaches {t_chunked / t_runner:.1%} of Pool chunked throughput (goal >= 30 %), "
                           f"{t_single / t_runner:.0%} of Pool with chunksize=1.")


if __name__ == "__main__":
    main()
