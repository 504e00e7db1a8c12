"""map-basic speed on its two engines, V8 (Deno) and QuickJS, against plain Node, Deno and CPython.

    python benchmarks/bench_map_basic.py [--slices 20000] [--repeat 5]

One run, four tables, ratios printed:

1. CPU-bound kernels (fib(27); a 160x160 Float64Array matrix product; JSON-heavy work: 20 000
   records through JSON.stringify/parse), one kernel call per slice: map-basic on V8 and on
   QuickJS, in process (the engine driven directly) and as one sandboxed slice through
   ``EvaluatorPool``, beside the same JavaScript in plain Node and plain Deno (each a process kept
   open, timed inside: start-up excluded) and the same algorithm in native CPython. Each figure is
   over ``--repeat`` rounds after one warm-up call per contender (median and best: the best shows
   the engine without the noise of a shared machine). Every table times its rows in interleaved
   rounds (one call, job or size of each row per round), so that a shared machine's drifting load
   falls on all of them alike and the ratios hold. Ratio: time / plain Deno's (target for V8:
   within 1.5x).
2. Trivial slices (``x => x``) end to end through ``EvaluatorPool`` on all cores: V8, QuickJS and
   the echo reference worktime, as jobs of ``--slices`` and of five times as many. Per-slice cost:
   the difference between the two (what each slice adds once the job has started; the job's start
   shows in the smaller job's rate). Ratio: per-slice cost / QuickJS's (target for V8: within 2x).
3. A new job's first result (evaluator forked from the zygote, engine started, work compiled, one
   slice), per engine.
4. Resident memory of one evaluator after prepare (Python + engine; V8: + its Deno process), per engine.

Run it on a quiet machine and note the load (``uptime``) beside the figures: it prints the load
average before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

sys.path.insert(0, os.path.dirname(__file__))

from _table import interleaved, print_table, timer  # noqa: E402

from dcp_worktimes.limits import Limits  # noqa: E402
from dcp_worktimes.plugins import get_worktimes  # noqa: E402
from dcp_worktimes.runner import EvaluatorPool  # noqa: E402
from dcp_worktimes.worktime import JobSpec, SliceContext  # noqa: E402
from dcp_worktimes.worktimes.map_basic import MapBasic  # noqa: E402
from dcp_worktimes.worktimes.map_basic.engine import ENGINES, missing  # noqa: E402
from dcp_worktimes.worktimes.map_basic.v8 import deno_binary  # noqa: E402

# -- the kernels: the same JavaScript everywhere, and the same algorithm in Python ---------------
FIB_JS = "function fib(n) { return n < 2 ? n : fib(n - 1) + fib(n - 2) }"

MATMUL_JS = """function matmul(n) {
  const a = new Float64Array(n * n), b = new Float64Array(n * n), c = new Float64Array(n * n);
  for (let i = 0; i < n * n; i++) { a[i] = (i % 7) - 3; b[i] = (i % 5) - 2; }
  for (let i = 0; i < n; i++)
    for (let k = 0; k < n; k++) {
      const x = a[i * n + k];
      for (let j = 0; j < n; j++) c[i * n + j] += x * b[k * n + j];
    }
  let sum = 0;
  for (let i = 0; i < n * n; i++) sum += c[i];
  return sum;
}"""

JSON_JS = """function records(n) {
  const rows = [];
  for (let i = 0; i < n; i++) rows.push({ id: i, name: 'user' + i, tags: ['a', 'b', String(i % 10)], score: i % 97, ok: i % 3 === 0 });
  const back = JSON.parse(JSON.stringify(rows));
  let total = 0;
  for (const r of back) total += r.score + r.tags.length + (r.ok ? 1 : 0);
  return total;
}"""


def fib_py(n: int) -> int:
    return n if n < 2 else fib_py(n - 1) + fib_py(n - 2)


def matmul_py(n: int) -> float:
    a = [(i % 7) - 3.0 for i in range(n * n)]
    b = [(i % 5) - 2.0 for i in range(n * n)]
    c = [0.0] * (n * n)
    for i in range(n):
        for k in range(n):
            x = a[i * n + k]
            row = i * n
            for j in range(n):
                c[row + j] += x * b[k * n + j]
    return sum(c)


def records_py(n: int) -> int:
    rows = [{"id": i, "name": f"user{i}", "tags": ["a", "b", str(i % 10)], "score": i % 97, "ok": i % 3 == 0}
            for i in range(n)]
    back = json.loads(json.dumps(rows))
    return sum(r["score"] + len(r["tags"]) + (1 if r["ok"] else 0) for r in back)


KERNELS = [  # (label, JS work, argument, Python twin)
    ("fib(27)", FIB_JS, 27, fib_py),
    ("matmul 160x160 (Float64Array)", MATMUL_JS, 160, matmul_py),
    ("JSON: 20k records stringify + parse", JSON_JS, 20_000, records_py),
]


def interleaved_ms(contenders: dict[str, Callable[[], float]], repeat: int) -> dict[str, tuple[float, float]]:
    """(median, best) ms of each contender's ``repeat`` timed calls in interleaved rounds (``_table.interleaved``)."""
    return {name: (statistics.median(t) * 1000, min(t) * 1000) for name, t in interleaved(contenders, repeat).items()}


PLAIN_SCRIPT = """
const work = (%s
);
work(%d);  // the warm-up
// One timed call per byte read on stdin, its milliseconds written back: the same process all along,
// so its JIT warms as an engine kept by the evaluator does.
const isDeno = typeof Deno !== 'undefined', fs = isDeno ? null : require('fs');
const one = new Uint8Array(1), out = new TextEncoder();
for (;;) {
  const n = isDeno ? Deno.stdin.readSync(one) : fs.readSync(0, one, 0, 1, null);
  if (!n) break;
  const s = performance.now();
  work(%d);
  const line = out.encode((performance.now() - s) + '\\n');
  if (isDeno) Deno.stdout.writeSync(line); else fs.writeSync(1, line);
}
"""


def plain_runtime(runtime: str, work: str, arg: int, stack: contextlib.ExitStack) -> Callable[[], float] | None:
    """The kernel in plain Node or Deno (a process kept open, warmed up once) as a contender timed
    inside the runtime (its start-up and the pipe excluded), or ``None`` where it is missing."""
    script = PLAIN_SCRIPT % (work, arg, arg)
    if runtime == "node":
        exe = shutil.which("node")
        cmd = [exe, "-e", script] if exe else None
    else:
        exe = deno_binary()
        cmd = None
        if exe:
            fd, path = tempfile.mkstemp(suffix=".js")
            with os.fdopen(fd, "w") as f:
                f.write(script)
            stack.callback(os.unlink, path)
            cmd = [exe, "run", "--no-prompt", "--no-config", path]
    if not cmd:
        return None
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "NO_COLOR": "1", "DENO_NO_UPDATE_CHECK": "1"})
    stack.callback(proc.wait, 30)
    stack.callback(proc.stdin.close)

    def call() -> float:
        proc.stdin.write("x")
        proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"plain {runtime} ended before its run was timed")
        return float(line) / 1000
    return call


def version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.split("\n")[0].strip()
    except OSError:
        return "?"


def available_engines() -> list[str]:
    engines = [e for e in ENGINES if missing(e) is None]
    for e in ENGINES:
        if e not in engines:
            print(f"(map-basic on {e} is not installed: {missing(e)})")
    return engines


def kernel_table(engines: list[str], repeat: int) -> None:
    nan = (math.nan, math.nan)
    for label, work, arg, twin in KERNELS:
        with contextlib.ExitStack() as stack:
            contenders: dict[str, Callable[[], float]] = {}
            for engine in engines:
                wt = MapBasic()
                wt.config = {"js-engine": engine}
                wt.prepare(JobSpec(id=f"bench-{engine}", worktime="map-basic", work=work, limits=Limits(wall_time=None)))
                stack.callback(wt.release)
                contenders[f"map-basic on {engine}, in process"] = timer(
                    lambda wt=wt: wt.execute(SliceContext(0, Limits(wall_time=None)), arg))
                pool = stack.enter_context(EvaluatorPool(cores=1, config={"map-basic": {"js-engine": engine}}))
                job = JobSpec(id=f"bench-{engine}-runner", worktime="map-basic", work=work)

                def via_runner(pool=pool, job=job):
                    out = next(pool.map(job, [(0, arg)]))
                    assert out.ok, out.error

                contenders[f"map-basic on {engine}, one sandboxed slice"] = timer(via_runner)
            deno_name = f"plain deno {version([deno_binary() or 'deno', '--version']).split()[1]} (V8, in JS)"
            node_name = f"plain node {version(['node', '--version'])} (V8, in JS)"
            for name, runtime in ((deno_name, "deno"), (node_name, "node")):
                plain = plain_runtime(runtime, work, arg, stack)
                if plain is not None:
                    contenders[name] = plain
            contenders[f"native CPython {sys.version.split()[0]}"] = timer(lambda: twin(arg))
            got = interleaved_ms(contenders, repeat)
        deno = got.get(deno_name, nan)
        got.setdefault(node_name, nan)
        print_table(f"{label}: one call per slice, {repeat} interleaved rounds after a warm-up",
                    ["engine", "median ms", "best ms", "median / Deno's", "best / Deno's"],
                    [(name, med, best, med / deno[0], best / deno[1]) for name, (med, best) in got.items()])


def throughput_table(engines: list[str], slices: int, rounds: int = 2) -> None:
    cores = os.cpu_count() or 1
    runs = [(f"map-basic on {e}", "map-basic", "x => x", {"map-basic": {"js-engine": e}}) for e in engines]
    if "echo" in get_worktimes():
        runs.append(("echo (reference)", "echo", "", {}))
    big = 5 * slices
    counter = iter(range(10**6))
    # Every pool stays open through the rounds. Idle, a pool costs nothing: pool.map never
    # releases a job, so no spare evaluator (nor V8's Deno) starts behind another pool's timing;
    # each new job forks its evaluators when it comes, as in the first-result table.
    with contextlib.ExitStack() as stack:
        pools = {label: (name, work, stack.enter_context(EvaluatorPool(cores=cores, config=config)))
                 for label, name, work, config in runs}

        def once(label: str, n: int) -> float:
            name, work, pool = pools[label]
            job = JobSpec(id=f"bench-{name}-{next(counter)}", worktime=name, work=work)
            t = time.perf_counter()
            bad = [o.error for o in pool.map(job, ((i, i) for i in range(n))) if not o.ok]
            assert not bad, f"{label}: {len(bad)} slices failed, first: {bad[0]}"
            return time.perf_counter() - t

        for label in pools:
            once(label, slices)  # warm evaluators
        small: dict[str, list[float]] = {label: [] for label in pools}
        large: dict[str, list[float]] = {label: [] for label in pools}
        for _ in range(rounds):  # interleaved: each round times every worktime at both sizes
            for label in pools:
                small[label].append(once(label, slices))
                large[label].append(once(label, big))
    times = {label: (min(small[label]), min(large[label])) for label in pools}
    # A job's time is its start (evaluators prepare the job; V8 starts Deno unless a spare is
    # ready) plus its slices: the difference between the two sizes is the cost of the slices alone.
    marginal = {label: 1e6 * cores * (b - s) / (big - slices) for label, (s, b) in times.items()}
    base = marginal.get("map-basic on quickjs")
    rows = [(label, slices / s, big / b, marginal[label], (marginal[label] / base) if base else math.nan)
            for label, (s, b) in times.items()]
    print_table(f"trivial slices (x => x) end to end on {cores} cores, each size a new job (best of {rounds} "
                "interleaved rounds)", ["worktime", f"{slices:,}: slices/s", f"{big:,}: slices/s",
                                         "µs per slice per core", "cost / QuickJS's"], rows)


def first_result_table(engines: list[str], repeat: int) -> None:
    times: dict[str, list[float]] = {engine: [] for engine in engines}
    with contextlib.ExitStack() as stack:
        pools = {engine: stack.enter_context(EvaluatorPool(cores=1, config={"map-basic": {"js-engine": engine}}))
                 for engine in engines}
        for i in range(repeat + 1):  # interleaved: one job per engine per round
            for engine, pool in pools.items():
                job = JobSpec(id=f"cold-{engine}-{i}", worktime="map-basic", work="function (x) { return x * x }")
                t = time.perf_counter()
                assert next(pool.map(job, [(0, 7)])).value == 49
                times[engine].append(time.perf_counter() - t)
    # The first round also starts each pool's zygote.
    rows = [(f"map-basic on {engine}", statistics.median(t[1:]) * 1000, min(t[1:]) * 1000) for engine, t in times.items()]
    print_table(f"a new job's first result (fork + engine start + compile + one slice), {repeat} interleaved rounds",
                ["engine", "median ms", "best ms"], rows)


def memory_table(engines: list[str]) -> None:
    rows = []
    for engine in engines:
        with EvaluatorPool(cores=1, config={"map-basic": {"js-engine": engine}}) as pool:
            job = JobSpec(id=f"rss-{engine}", worktime="map-basic", work="x => x")
            assert all(o.ok for o in pool.map(job, [(i, i) for i in range(1000)]))
            # What the evaluator reported after prepare: its own RSS plus its children's (V8: Deno).
            rss = pool._slots[0].proc.baseline_rss  # noqa: SLF001 - the figure the memory guard uses
        rows.append((f"map-basic on {engine}", rss / 2**20))
    print_table("resident memory of one evaluator after prepare (Python + engine)", ["engine", "MiB"], rows)


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(f"{os.cpu_count()} cores, {load()}")
    engines = available_engines()
    kernel_table(engines, args.repeat)
    throughput_table(engines, args.slices)
    first_result_table(engines, args.repeat)
    memory_table(engines)
    print(load())


if __name__ == "__main__":
    main()
