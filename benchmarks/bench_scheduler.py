"""End-to-end job throughput, deployer memory and latency through the embedded scheduler, beside
``multiprocessing.Pool`` and Dask, one run on this machine.

    python benchmarks/bench_scheduler.py [--sizes 10000,100000,1000000] [--worktimes echo,map-basic/quickjs,map-basic/v8,python]
                                         [--cpu-slices 200] [--repeat 3] [--no-dask]

1. **Trivial slices**: ``compute.for_(range(N), identity).exec()`` per worktime (echo; map-basic
   ``function(i){ progress(); return i }``; python ``def f(i): return i``), each run in a fresh
   process so its peak RSS is its own: seconds, slices/s, how busy the cores were (CPU time of
   the deployer and every evaluator over wall time × cores) and the deployer's peak RSS beside
   the size of the results it returns. Beside it, in the same run: ``Pool.map(identity,
   chunksize=1)`` (one task per item, what a slice is), ``Pool.map`` with its default chunks,
   Dask ``client.map`` (one task per item) and ``dask.bag`` (what a Dask user writes for this).
2. **Latency** of a 10-slice job: cold (a fresh process: start, import, deploy, first zygote; with
   Python's bytecode cache on, as an installed package has it, even where the shell sets
   ``PYTHONDONTWRITEBYTECODE``) and
   warm (the next job in the same process: right after the last one, and 0.3 s after it, when
   the spare evaluators a finished job leaves are ready).
3. **CPU-bound**: ``--cpu-slices`` slices (0: skipped) of fib(25) in map-basic, per engine, on 1 core vs all cores (median of
   ``--repeat`` interleaved rounds), beside ``Pool`` running fib(25) in Python at the same moment.
   Each job runs twice: right after the previous one (its evaluators still starting: a V8
   process costs ~50 ms of CPU) and 0.5 s after it (spares ready, as ``Pool``'s workers are:
   the pool is started before its timing).

The baselines compute in the deploying process's own Python: no sandbox, no store, no limits,
no retries; they are what the sandbox and the store cost is measured against.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))

from _table import print_table  # noqa: E402

WORK = {"echo": "", "map-basic": "function(i){ progress(); return i }", "python": "def f(i):\n    return i\n"}
FIB = "function(n){ function fib(k){ return k < 2 ? k : fib(k - 1) + fib(k - 2) } return fib(25) }"

CHILD = r"""
import json, os, sys, tempfile, time
t_start = float(sys.argv[4])
import psutil
from dcp_worktimes import compute
n, worktime, work = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
store = f"sqlite:///{tempfile.mkdtemp()}/jobs.db"

def tree_cpu():
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for p in me.children(recursive=True):
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total

def result_size(values):
    return sys.getsizeof(values) + sum(sys.getsizeof(v) for v in values)

if n <= 10:  # latency: a cold job, then warm ones
    t = time.perf_counter()
    compute.for_(range(n), work, worktime=worktime, scheduler=store).exec(progress=False)
    cold = time.perf_counter() - t
    warm, spaced = [], []
    for _ in range(15):  # a run of jobs: what follows the first job's own start is a steady state
        t = time.perf_counter()
        compute.for_(range(n), work, worktime=worktime, scheduler=store).exec(progress=False)
        warm.append(time.perf_counter() - t)
    cold_process = time.time() - t_start - sum(warm)
    for _ in range(5):  # jobs that come a moment apart, as on a worker: spare evaluators are ready
        time.sleep(0.3)
        t = time.perf_counter()
        compute.for_(range(n), work, worktime=worktime, scheduler=store).exec(progress=False)
        spaced.append(time.perf_counter() - t)
    print(json.dumps({"cold_exec": cold, "cold_process": cold_process, "warm": sorted(warm)[len(warm) // 2],
                      "spaced": sorted(spaced)[len(spaced) // 2]}))
else:
    before = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    cpu0 = tree_cpu()
    t = time.perf_counter()
    values = compute.for_(range(n), work, worktime=worktime, scheduler=store).exec(progress=False)  # a list
    wall = time.perf_counter() - t
    assert len(values) == n and values[-1] == n - 1, values[-3:]
    cpu = tree_cpu() - cpu0
    # VmHWM, not ru_maxrss: ru_maxrss keeps the parent's peak across fork + exec.
    peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"wall": wall, "cpu": cpu, "peak_rss": peak, "before": before, "results": result_size(values)}))
"""


def identity(x):
    return x


def fib(k):
    return k if k < 2 else fib(k - 1) + fib(k - 2)


def py_fib25(_):
    return fib(25)


def child(n: int, worktime: str) -> dict:
    """One measurement in a fresh process. ``map-basic/quickjs`` and ``map-basic/v8`` choose the
    engine as a user does for in-process ``exec()``: ``DCP_WORKTIMES_JS_ENGINE``."""
    name, _, engine = worktime.partition("/")
    # As installed: Python's bytecode cache on. With PYTHONDONTWRITEBYTECODE set (some shells and
    # containers set it), every fresh process and its zygote compile ~100 modules from source:
    # ~100 ms more on the cold rows, a cost an installed package does not have.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if engine:
        env["DCP_WORKTIMES_JS_ENGINE"] = engine
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), name, json.dumps(WORK[name]), str(time.time())],
                         capture_output=True, text=True, timeout=3600, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{worktime} n={n} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def dask_rates(n: int, cores: int) -> tuple[float | None, float | None]:
    """Seconds for ``n`` items with ``client.map`` (timed on fewer, scaled) and with ``dask.bag``."""
    try:
        import dask.bag as db
        from distributed import Client, LocalCluster
    except ImportError:
        return None, None
    import logging

    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    with LocalCluster(n_workers=cores, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
        client.submit(identity, 0).result()  # warm
        k = min(n, 5_000)
        t_map = timed(lambda: client.gather(client.map(identity, range(k), pure=False))) * n / k
        bag = db.from_sequence(range(n), npartitions=cores * 4).map(identity)
        t_bag = timed(lambda: bag.compute())
    return t_map, t_bag


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--worktimes", default="echo,map-basic/quickjs,map-basic/v8,python",
                    help="comma-separated; map-basic/ENGINE picks the JavaScript engine")
    ap.add_argument("--cpu-slices", type=int, default=200, help="0 leaves the CPU-bound table out")
    ap.add_argument("--repeat", type=int, default=3, help="rounds of the CPU-bound measurements (median)")
    ap.add_argument("--no-dask", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if any(n <= 10 for n in sizes):  # 10 is the latency job's size (the child measures latency then)
        ap.error(f"--sizes: each throughput size must be above 10 (the latency table always runs a 10-slice job), got {args.sizes}")
    if args.cpu_slices < 0:
        ap.error(f"--cpu-slices: a number of fib(25) slices, or 0 to leave that table out; got {args.cpu_slices}")
    worktimes = [w.strip() for w in args.worktimes.split(",") if w.strip()]
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]

    for wt in dict.fromkeys(w.partition("/")[0] for w in worktimes):
        child(11, wt)  # not measured: writes the bytecode cache the fresh processes below read
    rows = []
    for n in sizes:
        with multiprocessing.Pool(cores) as mp:
            t_pool1 = timed(lambda: mp.map(identity, range(n), chunksize=1))
            t_pool = timed(lambda: mp.map(identity, range(n)))
        t_map, t_bag = (None, None) if args.no_dask else dask_rates(n, cores)
        for wt in worktimes:
            r = child(n, wt)
            rows.append((f"{wt}, N={n:,}", r["wall"], n / r["wall"], f"{r['cpu'] / (r['wall'] * cores):.0%}",
                         f"{r['peak_rss'] / 2**20:.0f} MB ({r['before'] / 2**20:.0f} MB before) / {r['results'] / 2**20:.1f} MB",
                         f"{t_pool1 / r['wall']:.2f}", f"{t_pool / r['wall']:.3f}",
                         f"{t_map / r['wall']:.1f}" if t_map else "-", f"{t_bag / r['wall']:.2f}" if t_bag else "-"))
        rows.append((f"  baselines, N={n:,}", "-", f"Pool(1): {n / t_pool1:,.0f}/s; Pool: {n / t_pool:,.0f}/s"
                     + (f"; Dask map: {n / t_map:,.0f}/s; dask.bag: {n / t_bag:,.0f}/s" if t_map else ""),
                     "", "", "", "", "", ""))
    print_table(f"Trivial slices end to end on {cores} cores (load average {load:.1f} at the start)",
                ["", "seconds", "slices/s", "cores busy", "deployer peak RSS (before the job) / results",
                 "× Pool chunksize=1", "× Pool default chunks", "× Dask client.map", "× dask.bag"], rows,
                note="× columns: this row's throughput over the baseline's (above 1: faster).")

    lat = []
    for wt in worktimes:
        r = child(10, wt)
        lat.append((wt, f"{r['cold_process'] * 1000:.0f} ms", f"{r['cold_exec'] * 1000:.0f} ms", f"{r['warm'] * 1000:.0f} ms",
                    f"{r['spaced'] * 1000:.0f} ms"))
    print_table("A 10-slice job", ["", "cold: process start to results", "cold: exec()",
                                   "warm: next exec() back to back (median of 15)", "warm: next exec() 0.3 s later (median of 5)"],
                lat)

    m = args.cpu_slices
    if m <= 0:
        return
    engines = [w.partition("/")[2] for w in worktimes if w.startswith("map-basic/")] or [""]
    runs: dict[str, list[float]] = collections.defaultdict(list)
    from dcp_worktimes import compute

    with tempfile.TemporaryDirectory() as tmp, multiprocessing.Pool(1) as mp1, multiprocessing.Pool(cores) as mpn:
        store = f"sqlite:///{tmp}/jobs.db"

        def fibs(c: int, engine: str) -> None:
            if engine:  # exec() reads the engine setting from the environment at each call
                os.environ["DCP_WORKTIMES_JS_ENGINE"] = engine
            assert compute.for_(range(m), FIB, scheduler=store).exec(cores=c, progress=False)[0] == 75025

        for _ in range(args.repeat):  # interleaved: the load of a shared machine drifts
            for engine in engines:
                for c in (1, cores):
                    runs[f"{engine}{c}b"].append(timed(lambda: fibs(c, engine)))  # back to back
                    time.sleep(0.5)
                    runs[f"{engine}{c}r"].append(timed(lambda: fibs(c, engine)))  # spares ready
            runs["py1"].append(timed(lambda: mp1.map(py_fib25, range(m), chunksize=1)))
            runs["pyn"].append(timed(lambda: mpn.map(py_fib25, range(m), chunksize=1)))
    med = {k: statistics.median(v) for k, v in runs.items()}
    rows = []
    for engine in engines:
        name = f"map-basic on {engine or 'the default engine'}"
        for key, when in (("b", "back to back"), ("r", "spares ready")):
            t1, tn = med[f"{engine}1{key}"], med[f"{engine}{cores}{key}"]
            rows += [(f"{name}, 1 core, {when}", t1, m / t1, "-"),
                     (f"{name}, {cores} cores, {when}", tn, m / tn, f"{t1 / (cores * tn):.0%}")]
    p1, pn = med["py1"], med["pyn"]
    rows += [("control: Pool(1), Python fib", p1, m / p1, "-"),
             (f"control: Pool({cores}), Python fib", pn, m / pn, f"{p1 / (cores * pn):.0%}")]
    print_table(f"{m} slices of fib(25), 1 core vs {cores} cores (median of {args.repeat}, interleaved)",
                ["", "seconds", "slices/s", "parallel efficiency"], rows)


if __name__ == "__main__":
    main()
