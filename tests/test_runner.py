"""The sandboxed runner: evaluator processes, batching, limits, recovery, isolation."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import re
import time

import psutil
import pytest

from dcp_worktimes.errors import WorktimeNotFound
from dcp_worktimes.limits import Limits
from dcp_worktimes.plugins import registry
from dcp_worktimes.runner import EvaluatorPool, run_slice
from dcp_worktimes.values import MAX_DEPTH
from dcp_worktimes.worktime import JobSpec

from .test_values import VALUES


@pytest.fixture(scope="module")
def pool():
    with EvaluatorPool(cores=2) as p:
        yield p


@pytest.fixture(scope="module")
def probe():
    from . import probe_worktime

    registry().register_module(probe_worktime, "tests")
    yield "probe"


def job(work="", **limits):
    job.n = getattr(job, "n", 0) + 1
    return JobSpec(id=f"runner-{job.n}", worktime="echo", work=work if isinstance(work, str) else json.dumps(work),
                   limits=Limits.parse(**limits))


def test_values_cross_the_boundary_exactly(pool):
    outs = {o.number: o for o in pool.map(job(), list(enumerate(VALUES)))}
    for i, v in enumerate(VALUES):
        assert outs[i].ok and outs[i].value == v and type(outs[i].value) is type(v)


def test_many_slices_arrive_once_each_in_order_of_numbers(pool):
    outs = list(pool.map(job(), [(i, i * 3) for i in range(5000)]))
    assert sorted(o.number for o in outs) == list(range(5000))
    assert all(o.ok and o.value == o.number * 3 for o in outs)


def test_evaluators_are_reused_within_a_job_and_fresh_per_job(pool):
    j = job({"pid": True})
    pids = {o.value[1] for o in pool.map(j, [(i, i) for i in range(200)])}
    assert 1 <= len(pids) <= 2  # two slots at most, no respawn between slices
    other = {o.value[1] for o in pool.map(job({"pid": True}), [(0, 0)])}
    assert not other & pids


def test_reuse_count_is_bounded():
    with EvaluatorPool(cores=1, max_slices_per_evaluator=5, min_evaluator_life=0, max_batch=1) as p:
        pids = [o.value[1] for o in sorted(p.map(job({"pid": True}), [(i, i) for i in range(12)]), key=lambda o: o.number)]
    assert len(set(pids)) == 3


def test_an_evaluator_lives_its_minimum_life_whatever_its_slice_count():
    # A job of trivial slices must not pay an evaluator (and engine) start every few thousand slices.
    with EvaluatorPool(cores=1, max_slices_per_evaluator=5, min_evaluator_life=60, max_batch=1) as p:
        pids = {o.value[1] for o in p.map(job({"pid": True}), [(i, i) for i in range(12)])}
    assert len(pids) == 1


def test_a_killed_slice_spares_the_rest_of_its_batch(pool):
    work = {"spin": -1, "when": 37}
    t = time.monotonic()
    outs = {o.number: o for o in pool.map(job(work, wall_time="1s"), [(i, i) for i in range(100)])}
    assert time.monotonic() - t < 10
    assert outs[37].error.code == "ESLICETOOSLOW"
    assert all(outs[i].ok and outs[i].value == i for i in range(100) if i != 37)


def test_memory_limit_kills_the_evaluator_not_the_worker(pool):
    me = psutil.Process()
    before = me.memory_info().rss
    t = time.monotonic()
    out = next(pool.map(job({"allocate": 1024}, memory="128MB"), [(0, 0)]))
    assert out.error.code == "EMEMORYLIMIT" and time.monotonic() - t < 10
    assert "over its limit of 128 MB" in out.error.message  # in the unit the job wrote
    assert me.memory_info().rss - before < 32 << 20
    assert next(pool.map(job(), [(0, "after")])).value == "after"


def test_wall_time_bound_via_run_slice():
    t = time.monotonic()
    out = run_slice(job({"spin": -1}, wall_time="2s"), 0)
    elapsed = time.monotonic() - t
    assert out.error.code == "ESLICETOOSLOW" and elapsed < 4, elapsed
    assert out.wall_time >= 2


def test_progress_timeout_can_be_disabled(pool):
    out = next(pool.map(job({"silent": 1.5}, progress_timeout="off"), [(0, 1)]))
    assert out.ok and out.value == 1
    out = next(pool.map(job({"silent": 5}, progress_timeout="0.5s"), [(0, 1)]))
    assert out.error.code == "ENOPROGRESS"


def test_cancel_stops_running_and_queued_slices(pool):
    j = job({"sleep": 30})
    results = []
    done = threading.Event()

    def collect(outcome):
        results.extend(outcome.slices())
        if len(results) == 10:
            done.set()

    pool.submit(j, list(range(10)), list(range(10)), collect)
    time.sleep(0.5)
    pool.cancel(j.id)
    assert done.wait(10), f"only {len(results)} outcomes after cancel"
    assert {o.error.code for o in results} == {"ECANCELLED"}


def test_unknown_worktime_fails_at_submit(pool):
    with pytest.raises(WorktimeNotFound):
        pool.submit(JobSpec(id="x", worktime="no-such"), [0], [0], lambda o: None)


def test_bad_cores():
    with pytest.raises(ValueError, match="cores must be a positive number of evaluator processes"):
        EvaluatorPool(cores=0)
    with pytest.raises(ValueError, match="more than 8 evaluators per CPU"):  # not 100000 threads, then a crash
        EvaluatorPool(cores=100_000)


def test_evaluators_have_no_network(pool, probe):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    work = (
        "import socket\n"
        "def work(port):\n"
        "    try:\n"
        "        socket.create_connection(('127.0.0.1', port), timeout=2).sendall(b'x')\n"
        "        return 'connected'\n"
        "    except OSError as e:\n"
        "        return type(e).__name__\n"
    )
    out = next(pool.map(JobSpec(id="net", worktime=probe, work=work), [(0, port)]))
    server.settimeout(0.2)
    with pytest.raises(socket.timeout):
        server.accept()
    server.close()
    assert out.ok and out.value != "connected"


def test_stray_stdout_does_not_corrupt_frames(pool, probe):
    work = "import os\ndef work(x):\n    os.write(1, b'\\x93garbage')\n    print('noise')\n    return x + 1\n"
    outs = list(pool.map(JobSpec(id="stdout", worktime=probe, work=work), [(i, i) for i in range(5)]))
    assert sorted(o.value for o in outs) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("zygote", ["1", "0"])
def test_both_launch_paths_isolate_and_report_crashes(monkeypatch, zygote):
    monkeypatch.setenv("DCP_WORKTIMES_ZYGOTE", zygote)
    with EvaluatorPool(cores=1) as p:
        pids = {o.value[1] for o in p.map(job({"pid": True}), [(i, i) for i in range(3)])}
        assert len(pids) == 1
        slot = p._slots[0]
        assert (slot.proc.zygote is not None) == (zygote == "1")
        assert slot.proc.isolation.get("no_network") is True
        crash = next(p.map(job({"crash": "abort"}), [(0, 0)]))
        assert crash.error.code == "ECRASH" and "SIGABRT" in crash.error.message
        assert next(p.map(job(), [(0, "next")])).value == "next"


def _evaluator_pids() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def test_close_with_running_and_queued_slices_is_prompt_and_complete():
    before = _evaluator_pids()
    outs = []
    p = EvaluatorPool(cores=1)
    p.submit(job({"spin": -1}), list(range(20)), list(range(20)), lambda o: outs.extend(o.slices()))
    time.sleep(1.0)
    t = time.monotonic()
    p.close()
    assert time.monotonic() - t < 5
    assert len(outs) == 20 and {o.error.code for o in outs} == {"ECANCELLED"}
    time.sleep(0.3)
    assert _evaluator_pids() <= before


def test_cancel_kills_a_slice_that_ignores_it(pool, probe):
    spin = "def work(x):\n    while True:\n        pass\n"
    j = JobSpec(id="ignores-cancel", worktime=probe, work=spin)
    got = []
    pool.submit(j, [0], [0], lambda o: got.extend(o.slices()))
    time.sleep(1.0)
    t = time.monotonic()
    pool.cancel(j.id)
    while not got and time.monotonic() - t < 10:
        time.sleep(0.05)
    assert got and got[0].error.code == "ECANCELLED"
    assert time.monotonic() - t < 3


def test_an_evaluator_that_never_starts_fails_the_job_within_the_start_timeout(probe):
    with EvaluatorPool(cores=1, start_timeout=2) as p:
        t = time.monotonic()
        outs = list(p.map(JobSpec(id="stuck", worktime="stuck-at-start", work=""), [(i, i) for i in range(5)]))
        assert time.monotonic() - t < 10
    assert len(outs) == 5 and all(o.error.code == "ECRASH" for o in outs)
    assert "did not answer within 2s" in outs[0].error.message


def test_finished_results_leave_before_a_slow_slice_ends(pool):
    arrived = {}
    t = time.monotonic()
    j = job({"spin": -1, "when": 5}, wall_time="3s")
    for o in pool.map(j, [(i, i) for i in range(6)]):
        arrived[o.number] = (time.monotonic() - t, o)
    assert arrived[5][1].error.code == "ESLICETOOSLOW"
    assert all(arrived[i][1].ok and arrived[i][0] < 2 for i in range(5)), arrived


def test_no_descriptor_leaks_across_pools():
    import os

    def count():
        return len(os.listdir("/proc/self/fd"))

    with EvaluatorPool(cores=1) as p:
        next(p.map(job(), [(0, 0)]))
    before = count()
    for _ in range(4):
        with EvaluatorPool(cores=1) as p:
            assert next(p.map(job(), [(0, 1)])).value == 1
            next(p.map(job({"crash": "abort"}), [(0, 0)]))
    assert count() <= before + 2


def test_memory_of_processes_an_engine_spawns_counts_too(pool, probe):
    work = (
        "import subprocess, sys\n"
        "def work(mb):\n"
        "    code = f'import time; x = bytearray({mb} << 20); x[::4096] = b\"x\" * len(x[::4096]); time.sleep(30)'\n"
        "    subprocess.run([sys.executable, '-c', code])\n"
        "    return 'survived'\n"
    )
    t = time.monotonic()
    out = next(pool.map(JobSpec(id="spawner", worktime=probe, work=work, limits=Limits.parse(memory="100MB")), [(0, 400)]))
    assert out.error is not None and out.error.code == "EMEMORYLIMIT", out
    assert time.monotonic() - t < 15


def test_a_lone_console_line_is_not_held_until_the_slice_ends(pool):
    arrived = []
    t = time.monotonic()
    j = job({"console": ["hello", "hello", "hello"], "sleep": 3})
    out = next(pool.map(j, [(0, 0)], on_event=lambda kind, n, p: arrived.append((time.monotonic() - t, kind, p))))
    done = time.monotonic() - t
    assert out.ok
    consoles = [(at, p) for at, kind, p in arrived if kind == "console"]
    assert len(consoles) == 1 and consoles[0][1]["same"] == 3  # repeats still collapse
    assert done - consoles[0][0] > 1.5, (consoles, done)  # sent ~0.1 s after it was logged, not 3 s later


def test_a_last_console_line_over_the_output_limit_fails_the_slice(pool):
    # The line is cut to 64 KiB (runner/bounds.py), still over a 50 KB budget.
    out = next(pool.map(job({"console": ["z" * 200_000]}, output="50KB"), [(0, 0)]))
    assert not out.ok and out.error.code == "EOUTPUTLIMIT", out


def test_heartbeat_never_yields_a_torn_record():
    import struct

    from dcp_worktimes.runner.heartbeat import Heartbeat

    hb = Heartbeat()
    assert hb.read() == (-1, 0.0, 0.0, 0.0, 0)
    hb.start(3, 100.0, 1.5)
    assert hb.read() == (3, 100.0, 100.0, 1.5, 1)
    hb.start(5, 101.0, 2.0, span=40)  # a block engine on slices 5..44
    assert hb.read() == (5, 101.0, 101.0, 2.0, 40)
    struct.pack_into("<Q", hb._map, 0, 7)  # a writer descheduled mid-write: odd sequence number
    assert hb.read() is None
    assert hb.last_words()[0] == 5
    hb.close()


def outcomes(pool, worktime: str, work: str, n: int, **limits) -> dict:
    """Run ``work`` on slices ``0..n-1`` (datum = slice number) of a new job; their outcomes by number."""
    spec = JobSpec(id=f"{worktime}-{time.monotonic_ns()}", worktime=worktime, work=work, limits=Limits.parse(**limits))
    return {o.number: o for o in pool.map(spec, [(i, i) for i in range(n)])}


def test_a_result_with_a_tuple_key_fails_its_slice_where_it_is_made(pool, probe):
    # It was stored as computed, and every later read of the job's results raised TypeError.
    work = "def work(x):\n    return {(1, 2): 3} if x == 1 else {'k': [x, {'n': (x,)}]}\n"
    outs = outcomes(pool, "probe", work, 3)
    assert outs[1].error.code == "EUNSERIALIZABLE" and "dict keys must be" in outs[1].error.message
    assert outs[0].value == {"k": [0, {"n": [0]}]} and outs[2].value == {"k": [2, {"n": [2]}]}


def test_a_block_settled_at_an_index_outside_it_says_so(pool, probe):
    # block.done(n + 5, x) was dropped without a word; the slices then crashed the evaluator.
    work = ("def block(b):\n"
            "    i = b.pending()[0]\n"
            "    b.done(b.numbers[i] + 100 if b.datums[i] == 1 else i, b.datums[i] * 10)\n")
    outs = outcomes(pool, "block-probe", work, 3)
    assert outs[0].value == 0 and outs[2].value == 20
    assert outs[1].error.code == "EUNCAUGHT" and re.search(r"block\.done\(101\): this block's slices are 0\.\.\d+ "
                                                           r"\(indexes into block.datums", outs[1].error.message)


def test_stop_process_in_a_block_is_the_verdict_of_the_slice_it_started_last(pool, probe):
    # The stop named no slice of the block: the slice ran three times, then "the evaluator died
    # 3 times while this slice was waiting in its run".
    work = ("import time\n"
            "from dcp_worktimes.limits import exceeded\n"
            "def work(x):\n"
            "    if x == 2:\n"
            "        worktime.stop_process(exceeded('wall_time', 5.0))\n"
            "        time.sleep(30)\n"
            "    return x * 10\n"
            "def block(b):\n"
            "    b.run_each(lambda ctx, d: work(d))\n")
    started = time.monotonic()
    outs = outcomes(pool, "block-probe", work, 5)
    assert outs[2].error.code == "ESLICETOOSLOW" and "wall-time limit of 5 s" in outs[2].error.message, outs[2].error
    assert [outs[n].value for n in (0, 1, 3, 4)] == [0, 10, 30, 40]
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("worktime", ["probe", "block-probe"])
def test_an_exception_that_cannot_be_printed_or_a_keyboard_interrupt_fails_its_slice_once(pool, probe, worktime):
    # Either ended the evaluator: ECRASH, and the slice ran three times.
    work = ("class BadStr(Exception):\n"
            "    def __str__(self):\n"
            "        raise RuntimeError('no str for you')\n"
            "def work(x):\n"
            "    if x == 1:\n"
            "        raise BadStr()\n"
            "    if x == 2:\n"
            "        raise KeyboardInterrupt()\n"
            "    if x == 3:\n"
            "        raise SystemExit(4)\n"
            "    return x\n"
            "def block(b):\n"
            "    b.run_each(lambda ctx, d: work(d))\n")
    outs = outcomes(pool, worktime, work, 5)
    assert [outs[n].value for n in (0, 4)] == [0, 4]
    assert outs[1].error.code == "EUNCAUGHT" and outs[1].error.message.startswith("BadStr: (its message could not be printed")
    assert outs[2].error.code == "EUNCAUGHT" and outs[2].error.message.startswith("KeyboardInterrupt")
    assert outs[3].error.code == "EUNCAUGHT", outs[3].error


def test_bytes_written_to_the_message_channel_fail_the_slice_saying_so(pool, probe):
    # Their first frame decoded as an int: "internal error in the worker: 'int' object has no attribute 'get'".
    work = ("import os\ndef work(x):\n    if x == 1:\n        for fd in range(64):\n            try:\n"
            "                os.write(fd, bytes(range(1, 120)))\n            except OSError:\n                pass\n"
            "    return x\n")
    outs = outcomes(pool, "probe", work, 3)
    assert outs[1].error.code == "ECRASH" and "malformed message" in outs[1].error.message, outs[1].error
    assert "internal error" not in outs[1].error.message
    assert outs[0].value == 0 and outs[2].value == 2


def test_a_socket_the_lockdown_refuses_names_what_the_worktime_must_declare(pool, probe):
    work = "import socket\ndef work(x):\n    socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n    return x\n"
    try:
        import pyseccomp  # noqa: F401
    except (ImportError, RuntimeError, OSError) as e:
        pytest.skip(f"no seccomp filter here (pyseccomp, libseccomp2): sockets are not refused: {e}")
    out = next(pool.map(JobSpec(id=f"nosock-{time.monotonic_ns()}", worktime="probe", work=work), [(0, 0)]))
    assert out.error.code == "EUNCAUGHT" and out.error.message.startswith("PermissionError: [Errno 1]")
    assert "Worktime.network = True" in out.error.message, out.error.message


def test_job_files_of_the_wrong_type_fail_the_job_not_the_worker(pool):
    out = next(pool.map(JobSpec(id="badfiles", worktime="echo", files={"big": 3 * 10**9}), [(0, 0)]))
    assert out.error.code == "EBADWORK" and "files['big'] must be bytes, got int" in out.error.message


@pytest.mark.parametrize("files, said", [
    ({"a": b"x", "a/b": b"y"}, "'a' cannot be both a file and a folder"),
    ({"x" * 300: b"1"}, "longer than 255 bytes"),
])
def test_job_file_names_no_disk_takes_fail_the_job_not_the_worker(pool, files, said):
    # The disk's refusal (EEXIST, ENAMETOOLONG) was taken for the worker's own fault: the worker
    # stopped offering the worktime, and every job, this one again included, was turned away.
    for worktime in ("echo", "wasi"):
        out = next(pool.map(JobSpec(id=f"names-{worktime}-{time.monotonic_ns()}", worktime=worktime,
                                    work="(module)" if worktime == "wasi" else "", files=files), [(0, 0)]))
        assert out.error.code == "EBADWORK" and said in out.error.message and not out.error.worker_fault, out.error


def test_work_that_cannot_be_encoded_fails_the_job_cleanly(pool):
    out = next(pool.map(JobSpec(id="surrogate", worktime="echo", work="\udcff"), [(0, 0)]))
    assert out.error.code in ("EBADWORK", "EUNSERIALIZABLE") and "ECRASH" not in str(out.error)


# -- spare evaluators (Worktime.standby) ------------------------------------------------------------
def _standby_job(n, work="def work(x):\n    return x + 1\n", **kw):
    return JobSpec(id=f"standby-{n}-{time.monotonic_ns()}", worktime="standby-probe", work=work, **kw)


def _wait_for(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_a_finished_job_leaves_a_spare_that_the_next_job_prepares_in(probe):
    secret = "SECRET = 'deployer-a'\ndef work(x):\n    return [SECRET, x]\n"
    first = _standby_job(1, secret, arguments=["private"], options={"mode": "fast"},
                         limits=Limits.parse(memory="300MB", wall_time="20s"))
    with EvaluatorPool(cores=1) as p:
        a = list(p.map(first, [(0, 1)]))[0]
        assert a.ok and a.value[0] is None  # the first evaluator had no spare: nothing ran ahead
        p.release(first.id)
        slot = p._slots[0]
        assert slot.spare is not None and _wait_for(lambda: slot.spare._ready.is_set())
        b = list(p.map(_standby_job(2), [(0, 41)]))[0]
    assert b.ok and b.value[3] == 42
    hint, engine, evaluator = b.value[0], b.value[1], b.value[2]
    assert evaluator != a.value[2]  # a fresh process: a job never inherits another job's evaluator
    assert engine is not None  # the "engine" it started ahead served the job
    # The spare learnt the previous job's options and limits, and nothing of its work or data.
    assert hint["options"] == {"mode": "fast"} and hint["limits"]["memory"] == first.limits.memory
    assert "deployer-a" not in json.dumps(hint) and "private" not in json.dumps(hint)
    assert hint.get("work", "") in ("", b"") and not hint.get("arguments")


def test_a_spare_that_died_is_replaced_and_the_job_runs(probe):
    with EvaluatorPool(cores=1) as p:
        first = _standby_job(1)
        assert list(p.map(first, [(0, 1)]))[0].ok
        p.release(first.id)
        spare = p._slots[0].spare
        assert _wait_for(lambda: spare._ready.is_set() and spare._proc is not None)
        psutil.Process(spare._proc.pid).kill()
        assert _wait_for(lambda: not spare._proc.alive())
        out = list(p.map(_standby_job(2), [(0, 5)]))[0]
    assert out.ok and out.value[3] == 6 and out.value[1] is None  # started from scratch, no standby


def test_an_idle_spare_exits_and_close_leaves_no_process_behind(probe, monkeypatch):
    from dcp_worktimes.runner import pool as pool_module

    with EvaluatorPool(cores=2) as p:
        first = _standby_job(1)
        assert all(o.ok for o in p.map(first, [(i, i) for i in range(4)]))
        p.release(first.id)
        spares = [s.spare for s in p._slots if s.spare is not None]
        assert spares and _wait_for(lambda: all(s._ready.is_set() for s in spares))
        pids = [s._proc.pid for s in spares if s._proc is not None]
        assert pids
        monkeypatch.setattr(pool_module, "SPARE_IDLE", 0.0)
        assert _wait_for(lambda: all(s.spare is None for s in p._slots))  # the watchdog let them go
        assert _wait_for(lambda: not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
                                         for pid in pids))
        monkeypatch.setattr(pool_module, "SPARE_IDLE", 300.0)
        second = _standby_job(2)
        assert list(p.map(second, [(0, 1)]))[0].ok
        p.release(second.id)
        spare = p._slots[0].spare or p._slots[1].spare
        assert spare is not None and _wait_for(lambda: spare._ready.is_set())
        pid = spare._proc.pid
    assert _wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie")


def test_worktimes_without_standby_get_a_plain_spare_that_the_next_job_runs_in():
    with EvaluatorPool(cores=1) as p:
        j = job()
        assert list(p.map(j, [(0, 1)]))[0].ok
        used = p._slots[0].proc.pid
        p.release(j.id)
        spare = p._slots[0].spare
        assert spare is not None and _wait_for(lambda: spare._ready.is_set() and spare._proc is not None)
        ready = spare._proc.pid
        assert ready != used  # a new process: nothing of the finished job's evaluator
        nxt = job()
        assert [o.value for o in p.map(nxt, [(0, 7)])] == [7]
        assert p._slots[0].proc.pid == ready and p._slots[0].proc.job_id == nxt.id  # it ran in the spare


# -- how many evaluators a job gets ------------------------------------------------------------------
def _timed_job(name, prepare, slow=0.0, slow_one=None):
    """A probe job whose prepare takes ``prepare`` s and whose slices take ``slow`` s (only slice
    ``slow_one`` if given); each returns [datum, evaluator pid]."""
    work = (f"import os, time\ntime.sleep({prepare})\n"
            f"def work(x):\n    if {slow_one!r} in (None, x):\n        time.sleep({slow})\n    return [x, os.getpid()]\n")
    return JobSpec(id=f"{name}-{time.monotonic_ns()}", worktime="probe", work=work)


def test_a_small_job_runs_in_one_evaluator_and_leaves_the_other_spare_for_the_next(probe):
    with EvaluatorPool(cores=2) as p:
        # A job that outlasts a prepare gets every slot's evaluator.
        warm = _timed_job("warm", 0.1, slow=0.3)
        assert len({o.value[1] for o in p.map(warm, [(i, i) for i in range(4)])}) == 2
        p.release(warm.id)
        assert _wait_for(lambda: all(s.spare is not None and s.spare._ready.is_set() and s.spare._proc is not None
                                     for s in p._slots))
        spares = {s.spare._proc.pid for s in p._slots}
        # Ten trivial slices are done by the first evaluator before a second could be prepared.
        small = _timed_job("small", 0.1)
        pids = {o.value[1] for o in p.map(small, [(i, i) for i in range(10)])}
        assert len(pids) == 1 and pids <= spares
        left = [s.spare for s in p._slots if s.spare is not None]
        assert len(left) == 1 and left[0]._proc.pid in spares - pids  # kept, up, for the next job
        assert left[0]._proc.alive()


def test_an_evaluator_prepared_for_a_job_that_ended_meanwhile_is_retired(probe):
    with EvaluatorPool(cores=2) as p:
        warm = _timed_job("warm", 0.1)  # the pool learns this worktime's prepare time: ~0.1 s
        assert all(o.ok for o in p.map(warm, [(0, 0)]))
        p.release(warm.id)
        # This job's prepare takes 0.5 s: a second evaluator joins while the first still prepares
        # (it outlasts two expected prepares), and is still preparing when the first has run
        # both slices and the job is released.
        j = _timed_job("ended", 0.5)
        outs = list(p.map(j, [(0, 0), (1, 1)]))
        assert all(o.ok for o in outs) and len({o.value[1] for o in outs}) == 1
        assert any(s.joining == j.id for s in p._slots)
        p.release(j.id)
        # Once ready it finds the job over: it exits, and its slot gets a spare for the next job.
        assert _wait_for(lambda: all(s.joining is None and (s.proc is None or s.proc.job_id != j.id)
                                     for s in p._slots), timeout=5)
        assert _wait_for(lambda: all(s.spare is not None for s in p._slots))


def test_a_job_released_while_its_last_slices_run_leaves_no_evaluator_behind():
    with EvaluatorPool(cores=2) as p:
        for r in range(3):
            j = job({"sleep": 0.03})
            done: list[int] = []

            def last(outcome, j=j, done=done):
                done.extend(outcome.numbers)
                if len(done) == 8:  # the deployer releases it as the last outcome arrives, in use
                    p.release(j.id)

            p.submit(j, list(range(8)), [0] * 8, last)
            assert _wait_for(lambda: len(done) == 8)
            assert _wait_for(lambda: all(s.proc is None or s.proc.job_id != j.id for s in p._slots), timeout=3)


def test_a_deferred_release_leaves_a_job_submitted_again_alone():
    with EvaluatorPool(cores=2) as p:
        j = job()
        assert all(o.ok for o in p.map(j, [(i, i) for i in range(4)]))
        p.release(j.id, wait=False)  # as the worker does, then a new lease of the same job comes
        assert all(o.ok for o in p.map(j, [(i, i) for i in range(10, 14)]))
        time.sleep(0.1)  # the pool's release thread has run by now
        assert j.id not in p._released  # live again: a slot finding its queue empty keeps its evaluator


# -- the host folders of private areas ---------------------------------------------------------------
def test_an_evaluators_private_area_folder_goes_with_it():
    with EvaluatorPool(cores=1) as p:
        j = job()
        assert list(p.map(j, [(0, 1)]))[0].ok
        proc = p._slots[0].proc
        area = proc.isolation.get("area")
        if area is None:
            pytest.skip("no private mounts on this machine (user namespaces are off)")
        assert os.path.basename(area).startswith(f"dcp-private-{proc.pid}-") and os.path.isdir(area)
        p.release(j.id)  # the evaluator is retired: its folder goes once it is reaped
        assert _wait_for(lambda: not os.path.exists(area))
        spare = p._slots[0].spare
        assert spare is not None and _wait_for(lambda: spare._ready.is_set() and spare._proc is not None)
        spare_area = spare._proc.isolation["area"]
        assert os.path.isdir(spare_area)
    assert not os.path.exists(spare_area)  # closing the pool closes the spare, and removes its folder


def test_a_pool_sweeps_the_folders_of_dead_evaluators_only(tmp_path, monkeypatch):
    from dcp_worktimes.runner import isolation

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = tmp_path / f"dcp-private-{dead.pid}-abc"
    live = tmp_path / f"dcp-private-{os.getpid()}-abc"
    full = tmp_path / f"dcp-private-{dead.pid}-full"
    for d in (gone, live, full):
        d.mkdir()
    (full / "kept.txt").write_text("a folder with files is never removed")
    isolation.sweep_dead_areas()
    assert not gone.exists() and live.is_dir() and (full / "kept.txt").exists()


def test_zygotes_and_evaluators_outlive_the_thread_that_started_them():
    """They die with their worker through PR_SET_PDEATHSIG, which follows the starting *thread*:
    one started by a spare's short-lived thread must not die when that thread ends."""
    from dcp_worktimes.plugins import get_worktime
    from dcp_worktimes.runner.process import EvaluatorProcess, Zygote

    ref = get_worktime("echo").ref
    made = {}

    def start():
        made["zygote"] = Zygote(ref)
        made["plain"] = EvaluatorProcess(ref)  # started without a zygote

    t = threading.Thread(target=start)
    t.start()
    t.join()
    time.sleep(0.3)  # PDEATHSIG would have struck by now
    zygote, plain = made["zygote"], made["plain"]
    try:
        assert zygote.alive() and plain.alive()
        forked = EvaluatorProcess(ref, zygote=zygote)
        try:
            for proc in (plain, forked):
                proc.send({"op": "prepare", "job": JobSpec(id="outlive", worktime="echo").to_dict(), "config": {}})
                assert proc.expect("prepared")
        finally:
            forked.close()
    finally:
        plain.close()
        zygote.close()



@pytest.mark.parametrize("depth, fails", [(MAX_DEPTH - 2, False), (MAX_DEPTH - 1, True), (MAX_DEPTH, True)])
def test_an_emitted_value_too_deep_for_its_event_frame_fails_its_slice_alone(pool, depth, fails):
    # An event carries its value two levels down: 1023 levels made a frame the host could not read,
    # whose StackError crashed the slot's thread (ECRASH, an empty message, a traceback printed).
    events: list = []
    deep = "[" * depth + "0" + "]" * depth  # written out: json.dumps here would pass this process's limit
    work = '{"emit": {"deep": ' + deep + '}, "when": 1}'  # only slice 1 emits
    outs = sorted(pool.map(job(work), [(0, 0), (1, 1), (2, 2)], lambda kind, n, p: events.append((kind, n))),
                  key=lambda o: o.number)
    assert [o.ok for o in outs] == [True, not fails, True]
    if fails:
        err = outs[1].error
        assert err.code == "EUNSERIALIZABLE" and f"nested more than {MAX_DEPTH - 2} levels" in err.message, err
    else:
        assert ("emit", 1) in events


def _busy_evaluator(pool, timeout=20.0):
    """The evaluator process of the pool's busy slot (once it runs a slice)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        busy = [s.proc for s in pool._slots if s.busy and s.proc is not None]
        if busy:
            return psutil.Process(busy[0].pid)
        time.sleep(0.02)
    raise AssertionError("no slice started")


def _stopped_for(procs, seconds):
    import signal

    for p in procs:
        p.send_signal(signal.SIGSTOP)
    time.sleep(seconds)
    for p in procs:
        try:
            p.send_signal(signal.SIGCONT)
        except psutil.NoSuchProcess:
            pass


@pytest.mark.parametrize("worktime, work, config", [
    # the host's watchdog judges echo's slices: 1.2 s of CPU, calling progress() all along
    ("echo", json.dumps({"spin": 1.2}), {}),
    # QuickJS judges its own deadlines in the evaluator too (~1 s of work, progress() every ~50 ms)
    ("map-basic", "function (i) { let s = 0; for (let k = 0; k < 2e7; k++) { s += k; if (k % 1e6 === 0) progress() } "
                  "return i }", {"js-engine": "quickjs"}),
])
def test_time_an_evaluator_spent_stopped_is_not_held_against_its_slice(worktime, work, config):
    # A SIGSTOPped evaluator (a debugger, a signal from outside) failed its slice for good with
    # ENOPROGRESS, or ESLICETOOSLOW: the watchdog judged a process that could not run.
    if worktime == "map-basic":
        from dcp_worktimes.worktimes.map_basic.engine import missing

        if missing("quickjs"):
            pytest.skip(missing("quickjs"))
    j = JobSpec(id=f"stopped-{worktime}", worktime=worktime, work=work,
                limits=Limits.parse(wall_time="3s", progress_timeout="1s"))
    with EvaluatorPool(cores=1, config={worktime: config}) as p:
        got = []
        p.submit(j, [0], [7], lambda o: got.extend(o.slices()))
        evaluator = _busy_evaluator(p)
        time.sleep(0.3)
        _stopped_for([evaluator, *evaluator.children(recursive=True)], 4.0)  # over both limits
        end = time.monotonic() + 30
        while not got and time.monotonic() < end:
            time.sleep(0.05)
    assert got and got[0].ok and got[0].value == 7, got and got[0].error


def test_a_slice_over_its_limits_still_fails_after_its_evaluator_was_stopped(pool):
    # The excuse is one more run, not immunity: the slice that spins for ever fails as before.
    j = job({"spin": -1}, wall_time="1.5s")
    got = []
    pool.submit(j, [0], [0], lambda o: got.extend(o.slices()))
    evaluator = _busy_evaluator(pool)
    _stopped_for([evaluator], 2.0)
    end = time.monotonic() + 30
    while not got and time.monotonic() < end:
        time.sleep(0.05)
    assert got and got[0].error.code == "ESLICETOOSLOW"


def test_a_slice_that_stops_its_own_evaluator_is_judged_after_a_grace(probe):
    # Stopped time is excused (above), so work that SIGSTOPped itself held its core for ever,
    # never judged, and the slices run with it were never reported.
    from dcp_worktimes.runner.pool import STOPPED_GRACE

    work = "import os, signal\ndef work(x):\n    if x == 1:\n        os.kill(os.getpid(), signal.SIGSTOP)\n    return x\n"
    spec = JobSpec(id=f"selfstop-{time.monotonic_ns()}", worktime="probe", work=work, limits=Limits.parse(wall_time="1s"))
    started = time.monotonic()
    with EvaluatorPool(cores=1) as p:
        outs = {o.number: o for o in p.map(spec, [(i, i) for i in range(3)])}
    assert outs[1].error.code == "ESLICETOOSLOW" and "stayed stopped" in outs[1].error.message, outs[1].error
    assert outs[0].value == 0 and outs[2].value == 2
    assert time.monotonic() - started < 1 + STOPPED_GRACE + 10


def test_processes_an_engine_detaches_end_with_its_evaluator(probe, tmp_path):
    # setsid and a double fork: the process left the evaluator's group and went to init, and ran
    # on after the slice, the job and the worker, uncounted.
    work = ("import os, time\n"
            "def work(x):\n"
            "    if os.fork() == 0:\n"
            "        os.setsid()\n"
            "        if os.fork() == 0:\n"
            "            while True:\n"
            f"                open({str(tmp_path)!r} + f'/{{x}}', 'a').write('.')\n"
            "                time.sleep(0.1)\n"
            "        os._exit(0)\n"
            "    time.sleep(0.5)\n"
            "    while x == 'spin':\n"
            "        pass\n"
            "    return x\n")
    spec = JobSpec(id=f"detached-{time.monotonic_ns()}", worktime="probe", work=work, limits=Limits.parse(wall_time="2s"))
    with EvaluatorPool(cores=1) as p:
        outs = [o for o in p.map(spec, [(0, "spin")])]  # killed by the watchdog
        assert outs[0].error.code == "ESLICETOOSLOW"
        assert [o.value for o in p.map(spec, [(1, "ends")])] == ["ends"]  # then the pool closes it
    time.sleep(0.5)
    sizes = {f.name: f.stat().st_size for f in tmp_path.iterdir()}
    assert set(sizes) == {"spin", "ends"}, sizes  # both had started
    time.sleep(1.0)
    assert {f.name: f.stat().st_size for f in tmp_path.iterdir()} == sizes  # and neither writes any more


PAUSED_POOL = """
import json, sys, time
from dcp_worktimes.limits import Limits
from dcp_worktimes.runner import EvaluatorPool
from dcp_worktimes.worktime import JobSpec
job = JobSpec(id="paused", worktime="echo", work=json.dumps({"spin": 1.2}),
              limits=Limits.parse(wall_time="3s", progress_timeout="1s"))
with EvaluatorPool(cores=1) as pool:
    got = []
    pool.submit(job, [0], [7], lambda o: got.extend(o.slices()))
    while not any(s.busy for s in pool._slots):
        time.sleep(0.01)
    print("running", flush=True)
    while not got:
        time.sleep(0.05)
    o = got[0]
    print(json.dumps([o.ok, o.value, o.error.code if o.error else None]), flush=True)
"""


def test_a_whole_worker_stopped_and_continued_loses_no_slice():
    # Ctrl-Z of a process group, a frozen container: the worker and its evaluators all stop. On
    # continuing, the watchdog saw wall time and silence the work never had.
    proc = subprocess.Popen([sys.executable, "-c", PAUSED_POOL], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "running"
        time.sleep(0.3)
        tree = psutil.Process(proc.pid)
        _stopped_for([tree, *tree.children(recursive=True)], 4.0)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert json.loads(out.strip().splitlines()[-1]) == [True, 7, None]


def test_a_cancel_reaches_a_stopped_evaluator(pool):
    # The no-verdict-while-stopped rule also skipped the cancel: the slice hung until SIGCONT.
    import signal

    j = job({"spin": -1})
    got = []
    pool.submit(j, [0], [0], lambda o: got.extend(o.slices()))
    evaluator = _busy_evaluator(pool)
    evaluator.send_signal(signal.SIGSTOP)
    try:
        pool.cancel(j.id)
        end = time.monotonic() + 10
        while not got and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            evaluator.send_signal(signal.SIGCONT)
    assert got and got[0].error.code == "ECANCELLED"
