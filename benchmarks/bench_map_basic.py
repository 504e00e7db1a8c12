"""map-basic speed: fib(27) per slice vs Node and CPython, trivial-slice throughput vs echo, cold start.

    python benchmarks/bench_map_basic.py [--slices 20000] [--repeat 5]

Three tables, one run:

1. ``fib(27)`` computed in one slice: map-basic's engine in-process (QuickJS, quickjs-ng), the same
   through the sandboxed runner (one slice = one fib), Node (``node`` on PATH, timed inside Node so
   its start-up is excluded) and native CPython. Ratios are relative to map-basic in-process.
2. Trivial slices (``x => x``) through ``EvaluatorPool`` on all cores: map-basic vs the echo
   reference worktime (issue target: the same order of magnitude).
3. Cold evaluator: a fresh Python process importing the worktime, creating the QuickJS context
   with the prelude and compiling the work (target < 50 ms), with and without interpreter start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
import time

sys.path.insert(0, os.path.dirname(__file__))

from _table import print_table  # noqa: E402

from dcp_worktimes.limits import Limits  # noqa: E402
from dcp_worktimes.worktimes.map_basic import MapBasic  # noqa: E402
from dcp_worktimes.plugins import get_worktimes  # noqa: E402
from dcp_worktimes.runner import EvaluatorPool  # noqa: E402
from dcp_worktimes.worktime import JobSpec, SliceContext  # noqa: E402

FIB_JS = "function fib(n) { return n < 2 ? n : fib(n - 1) + fib(n - 2) }"
N = 27
EXPECTED = 196418


def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        assert fn() == EXPECTED
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def node_fib_ms(repeat: int) -> float | None:
    node = shutil.which("node")
    if not node:
        return None
    script = textwrap.dedent(f"""
        {FIB_JS}
        const t = [];
        for (let i = 0; i < {repeat}; i++) {{
          const s = process.hrtime.bigint(); if (fib({N}) !== {EXPECTED}) throw new Error('wrong');
          t.push(Number(process.hrtime.bigint() - s) / 1e6);
        }}
        t.sort((a, b) => a - b); console.log(t[Math.floor(t.length / 2)]);
    """)
    out = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=120)
    return float(out.stdout) if out.returncode == 0 else None


def fib_table(repeat: int) -> None:
    wt = MapBasic()
    wt.prepare(JobSpec(id="bench-fib", worktime="map-basic", work=f"{FIB_JS}\nfib"))
    in_process = median_ms(lambda: wt.execute(SliceContext(0, Limits()), N), repeat)

    with EvaluatorPool(cores=1) as pool:
        job = JobSpec(id="bench-fib-runner", worktime="map-basic", work=f"{FIB_JS}\nfib")
        next(pool.map(job, [(0, 2)]))  # warm: the evaluator is started and prepared once per job

        def via_runner():
            return next(pool.map(job, [(0, N)])).value

        runner = median_ms(via_runner, repeat)

    rows = [("map-basic, in process (QuickJS)", in_process, 1.0),
            ("map-basic, one sandboxed slice", runner, runner / in_process)]
    node = node_fib_ms(repeat)
    rows.append(("node " + (subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip() if node else "(not installed)"),
                 node if node is not None else float("nan"), (node / in_process) if node else float("nan")))
    cpython = median_ms(lambda: fib(N), repeat)
    rows.append((f"native CPython {sys.version.split()[0]}", cpython, cpython / in_process))
    print_table(f"fib({N}) per slice, median of {repeat}", ["engine", "ms", "time / map-basic in process"], rows)


def throughput_table(slices: int) -> None:
    cores = os.cpu_count() or 1
    names = ["map-basic"] + (["echo"] if "echo" in get_worktimes() else [])
    works = {"map-basic": "x => x", "echo": ""}
    rates = {}
    with EvaluatorPool(cores=cores) as pool:
        for name in names:
            counter = iter(range(10**6))

            def once() -> float:
                job = JobSpec(id=f"bench-{name}-{next(counter)}", worktime=name, work=works[name])
                t = time.perf_counter()
                bad = [o.error for o in pool.map(job, ((i, i) for i in range(slices))) if not o.ok]
                assert not bad, f"{name}: {len(bad)} slices failed, first: {bad[0]}"
                return time.perf_counter() - t

            once()  # warm evaluators
            rates[name] = slices / min(once() for _ in range(2))
    rows = [(name, rate, rate / rates["map-basic"] if name != "map-basic" else 1.0) for name, rate in rates.items()]
    note = "" if "echo" in rates else "echo is not installed (pip install -e plugins/dcp-worktime-echo) - no comparison."
    if "echo" in rates:
        note = f"map-basic runs at {rates['map-basic'] / rates['echo']:.0%} of echo's trivial-slice rate."
    print_table(f"{slices:,} trivial slices on {cores} cores", ["worktime", "slices/s", "rate / map-basic"], rows, note=note)


COLD = textwrap.dedent("""
    import json, time
    t0 = time.perf_counter()
    from dcp_worktimes.worktimes.map_basic import MapBasic
    from dcp_worktimes.worktime import JobSpec, SliceContext
    from dcp_worktimes.limits import Limits
    t1 = time.perf_counter()
    import dcp_worktimes.worktimes.map_basic.engine
    t2 = time.perf_counter()
    wt = MapBasic()
    wt.prepare(JobSpec(id="cold", worktime="map-basic", work="function (x) { progress(); return x * x }"))
    t3 = time.perf_counter()
    assert wt.execute(SliceContext(0, Limits()), 7) == 49
    t4 = time.perf_counter()
    print(json.dumps([t1 - t0, t2 - t1, t3 - t2, t4 - t3]))
""")


def cold_table(repeat: int) -> None:
    # As installed (pip writes .pyc files): without PYTHONDONTWRITEBYTECODE, after one warm-up run
    # that writes the byte-code caches, every import would otherwise recompile the sources.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-c", COLD], capture_output=True, timeout=60, check=True, env=env)
    samples, totals, bare = [], [], []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True, timeout=60, env=env)
        bare.append(time.perf_counter() - t)
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", COLD], capture_output=True, text=True, timeout=60, check=True, env=env)
        totals.append(time.perf_counter() - t)
        samples.append(json.loads(out.stdout))
    imp, eng, prep, first = (statistics.median(s[i] for s in samples) * 1000 for i in range(4))
    total, interp = statistics.median(totals) * 1000, statistics.median(bare) * 1000
    ready = eng + prep + first
    forked = _zygote_job_latency(repeat)
    rows = [("python interpreter start (python -c pass)", interp),
            ("import dcp_worktimes + mapbasic (the worktime class)", imp),
            ("import the engine module (_quickjs, ctypes, marshal)", eng),
            ("prepare: QuickJS context + prelude + compile", prep),
            ("first slice", first),
            ("engine ready: engine import + prepare + first slice", ready),
            ("whole fresh process", total),
            ("as the runner does it: evaluator forked from the zygote + prepare + first slice", forked)]
    print_table(f"cold map-basic evaluator, median of {repeat}", ["step", "ms"], rows,
                note=f"map-basic's own start-up is {ready:.1f} ms (target < 50 ms); a fresh process takes "
                     f"{total:.0f} ms, of which {interp:.0f} ms is the interpreter and {imp:.0f} ms the package import; "
                     f"the runner forks evaluators from a pre-started zygote: a new job's first result in {forked:.0f} ms.")


def _zygote_job_latency(repeat: int) -> float:
    """A new job on a running pool: fresh evaluator (forked), prepare, one slice, result back."""
    from dcp_worktimes.runner import EvaluatorPool
    from dcp_worktimes.worktime import JobSpec

    times = []
    with EvaluatorPool(cores=1) as pool:
        for i in range(repeat + 1):
            job = JobSpec(id=f"cold-{i}", worktime="map-basic", work="function (x) { return x * x }")
            t = time.perf_counter()
            assert next(pool.map(job, [(0, 7)])).value == 49
            times.append(time.perf_counter() - t)
    return statistics.median(times[1:]) * 1000  # the first one also starts the zygote


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    fib_table(args.repeat)
    throughput_table(args.slices)
    cold_table(args.repeat)


if __name__ == "__main__":
    main()
