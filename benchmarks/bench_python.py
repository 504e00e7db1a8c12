"""The ``python`` worktime (CPython for WASI on wasmtime): per-slice latency, start-up, and compute
speed against native CPython / native numpy, in one run.

    python benchmarks/bench_python.py [--slices 200] [--repeat 5] [--fib 25]

1. Per-slice latency of trivial work (``def f(x): return x``) on a warm worktime: in-process
   (``execute`` on a prepared worktime) and through the sandboxed runner (``EvaluatorPool.map``).
   Target: warm trivial slice <= 50 ms median.
2. Start-up: ``prepare`` of a new job (instantiate the snapshot, boot the guest, load the work),
   the first ``import numpy`` in a fresh interpreter, and a new evaluator process's first slice.
3. fib(n) in pure Python and numpy workloads (matmul, sort, FFT, elementwise) inside the worktime
   vs the same code on the host's CPython / numpy (BLAS limited to one thread: the guest has one) (time measured inside the slice, so slice overhead is
   excluded; the in-slice clock is wasmtime's monotonic clock).

The compiled module must already be cached (``dcp-worker warmup --worktime python``); otherwise
the first prepare compiles it (~2 min) and says so. Native numpy is optional (row skipped).
"""

from __future__ import annotations

import argparse
import os

# The guest is single-threaded (no threads in WASI): compare per core, so native numpy's BLAS too.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from _table import print_table  # noqa: E402

from dcp_worktimes.limits import Limits  # noqa: E402
from dcp_worktimes.worktimes.python import PythonWorktime  # noqa: E402
from dcp_worktimes.worktimes.python.compiled import load  # noqa: E402
from dcp_worktimes.runner import EvaluatorPool, run_slice  # noqa: E402
from dcp_worktimes.worktime import JobSpec, SliceContext  # noqa: E402

FIB = """
import time
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
def work(n):
    t = time.perf_counter()
    fib(n)
    return time.perf_counter() - t
"""

NUMPY = {
    "matmul": "(a @ a).sum()",
    "sort 1e6 floats": "np.sort(v)",
    "FFT 2^16": "np.abs(np.fft.fft(s)).max()",
    "elementwise 1e6 (sin, exp, sum)": "(np.sin(v) * np.exp(-v)).sum()",
}
NUMPY_TEMPLATE = """
import time
import numpy as np
def work(size):
    rng = np.random.default_rng(0)
    a = rng.random((size, size))
    v = rng.random(1_000_000)
    s = rng.random(1 << 16)
    t = time.perf_counter()
    {statement}
    return time.perf_counter() - t
"""


def _ms(seconds: float) -> float:
    return seconds * 1000


def _inside(wt: PythonWorktime, source: str, datum, repeat: int) -> float:
    spec = JobSpec(id="bench", worktime="python", work=source, limits=Limits(wall_time=600))
    wt.prepare(spec)
    wt.execute(SliceContext(0, spec.limits, spec), datum)  # warm-up: imports, caches
    return statistics.median(wt.execute(SliceContext(i, spec.limits, spec), datum) for i in range(repeat))


def _native(source: str, datum, repeat: int) -> float | None:
    namespace: dict = {}
    try:
        exec(compile(source, "<native>", "exec"), namespace)
    except ImportError:
        return None
    namespace["work"](datum)
    return statistics.median(namespace["work"](datum) for _ in range(repeat))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=200, help="trivial slices per latency measurement")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--fib", type=int, default=25)
    ap.add_argument("--matrix", type=int, default=300, help="matrix size of the numpy workload")
    args = ap.parse_args()

    compiled = load(lambda f, m: print(f"  {m}", file=sys.stderr))
    rows: list[tuple] = []
    wt = PythonWorktime()

    # 1. per-slice latency, warm
    spec = JobSpec(id="trivial", worktime="python", work="def f(x):\n    return x\n")
    wt.prepare(spec)
    wt.execute(SliceContext(0, spec.limits, spec), 0)
    lat = []
    for i in range(args.slices):
        t = time.perf_counter()
        wt.execute(SliceContext(i, spec.limits, spec), i)
        lat.append(time.perf_counter() - t)
    lat.sort()
    rows.append(("trivial slice, warm, in-process (median)", _ms(statistics.median(lat)), "", ""))
    rows.append(("trivial slice, warm, in-process (p95)", _ms(lat[int(0.95 * len(lat))]), "", ""))
    with EvaluatorPool(cores=1) as pool:
        list(pool.map(spec, [(0, 0)]))  # start and prepare the evaluator
        t = time.perf_counter()
        outs = list(pool.map(spec, [(i, i) for i in range(args.slices)]))
        per = (time.perf_counter() - t) / args.slices
        assert all(o.ok for o in outs)
        walls = sorted(o.wall_time for o in outs)
    rows.append(("trivial slice, warm, runner (throughput, per slice)", _ms(per), "", ""))
    rows.append(("trivial slice, warm, runner (evaluator wall, median)", _ms(statistics.median(walls)), "", ""))

    # 2. start-up
    prep = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        wt.prepare(spec)
        prep.append(time.perf_counter() - t)
    rows.append(("prepare a job (new interpreter from the snapshot)", _ms(statistics.median(prep)), "", ""))
    imp = []
    for _ in range(args.repeat):
        nspec = JobSpec(id="np", worktime="python", work="def f(x):\n    import numpy\n    return 1\n")
        wt.prepare(nspec)
        t = time.perf_counter()
        wt.execute(SliceContext(0, nspec.limits, nspec), 0)
        imp.append(time.perf_counter() - t)
    rows.append(("first slice importing numpy (fresh interpreter)", _ms(statistics.median(imp)), "", ""))
    t = time.perf_counter()
    out = run_slice(spec, 1)
    assert out.ok, out.error
    rows.append(("new evaluator process: start + prepare + first slice", _ms(time.perf_counter() - t), "", ""))

    # 3. compute vs native
    inside = _inside(wt, FIB, args.fib, args.repeat)
    native = _native(FIB, args.fib, args.repeat)
    rows.append((f"fib({args.fib}), pure Python", _ms(inside), _ms(native), f"{inside / native:.2f}x"))
    for label, statement in NUMPY.items():
        source = NUMPY_TEMPLATE.format(statement=statement)
        inside = _inside(wt, source, args.matrix, args.repeat)
        native = _native(source, args.matrix, args.repeat)
        label = f"numpy {args.matrix}x{args.matrix} matmul" if label == "matmul" else f"numpy {label}"
        rows.append((label, _ms(inside), "n/a (pip install numpy)" if native is None else _ms(native),
                     "" if native is None else f"{inside / native:.2f}x"))
    wt.release()

    print_table(
        f"python worktime: CPython {compiled.runtime.python_version} for WASI on wasmtime vs native "
        f"CPython {sys.version.split()[0]}",
        ["measurement", "python worktime (ms)", "native (ms)", "ratio"], rows,
        note=f"{os.cpu_count()} cores (native BLAS limited to 1 thread, as the guest); module {compiled.source} ({compiled.seconds:.2f}s); medians of "
             f"{args.repeat} runs ({args.slices} for latencies). Target: warm trivial slice <= 50 ms.",
    )


if __name__ == "__main__":
    main()
