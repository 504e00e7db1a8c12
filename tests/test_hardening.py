"""Hardening: hostile work and unlucky operators must not fill the worker's disk or memory, nor
crash it, nor learn about the host. (The per-worktime hostile cases are in the conformance kit.)"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from dcp_worktimes.limits import MAX_SIZE, Limits
from dcp_worktimes.runner import EvaluatorPool
from dcp_worktimes.runner.redact import redact
from dcp_worktimes.worktime import JobSpec


@pytest.fixture(scope="module")
def probes():
    from dcp_worktimes.plugins import registry

    from . import probe_worktime

    registry().register_module(probe_worktime, "tests-hardening")


# -- limits have a documented range ---------------------------------------------------------------
@pytest.mark.parametrize("kw, message", [
    ({"memory": "16EiB"}, "more than the largest limit, 1 PiB"),
    ({"memory": 2**64}, "more than the largest limit"),
    ({"output": float("inf")}, "must be a finite size"),
    ({"wall_time": "1ns"}, "shorter than 100 ms"),
    ({"cpu_time": "1us"}, "shorter than 100 ms"),
    ({"progress_timeout": "400d"}, "longer than the longest limit"),
])
def test_limits_out_of_range_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        Limits.parse(**kw)


@pytest.mark.parametrize("kw", [{"memory": 2**64}, {"output": MAX_SIZE + 1}, {"wall_time": 0.001},
                                {"cpu_time": 1e-9}, {"progress_timeout": 1e12}])
def test_limits_built_directly_get_the_same_range_checks(kw):
    with pytest.raises(ValueError, match="limit"):
        Limits(**kw)


@pytest.mark.parametrize("worktime, work", [
    ("map-basic", "x => x + 1"),
    ("python", "def f(x):\n    return x + 1\n"),
    ("wasi", "sum_json"),
    ("echo", ""),
])
def test_the_largest_limits_reach_every_built_in_engine(worktime, work, build, warm):
    from dcp_worktimes.limits import MAX_DURATION
    from dcp_worktimes.runner import run_slice

    datum = [40, 2] if worktime == "wasi" else 41
    limits = Limits(memory=MAX_SIZE, output=MAX_SIZE, wall_time=MAX_DURATION, cpu_time=MAX_DURATION,
                    progress_timeout=MAX_DURATION)
    out = run_slice(JobSpec(id=f"huge-{worktime}", worktime=worktime, work=build(work) if worktime == "wasi" else work,
                            limits=limits), datum)
    assert out.ok, out.error
    assert out.value == ({"sum": 42, "count": 2, "argv": []} if worktime == "wasi" else 41 if worktime == "echo" else 42)


# -- no host traceback or path reaches the deployer -----------------------------------------------
@pytest.mark.parametrize("where", ["prepare", "execute"])
def test_a_worktime_bug_tells_what_failed_not_where_the_host_is(probes, where):
    with EvaluatorPool(cores=1) as pool:
        out = next(pool.map(JobSpec(id=f"host-{where}", worktime="fails-on-host", work=where), [(0, 1)]))
    assert not out.ok and out.error.name == "ValueError"
    text = f"{out.error.message}\n{out.error.stack or ''}"
    root = str(Path(__file__).resolve().parents[1])
    assert "Traceback" not in text and root not in text and sys.prefix not in text, text
    assert "<host>" in out.error.message
    assert out.error.code == ("EBADWORK" if where == "prepare" else "EUNCAUGHT")


def test_an_unexpected_exception_in_prepare_is_this_machines_fault_not_the_works(probes, tmp_path):
    # It was EBADWORK: one worker with a broken local file cancelled the job for every worker.
    with EvaluatorPool(cores=1) as pool:
        out = next(pool.map(JobSpec(id="host-runtime", worktime="fails-on-host", work="prepare-runtime"), [(0, 1)]))
    assert not out.ok and out.error.code == "ENOWORKTIME" and out.error.worker_fault, out.error
    assert out.error.message.startswith("the worker could not prepare the job: RuntimeError: the local model file <host>")
    from dcp_worktimes.scheduler import open_scheduler
    from dcp_worktimes.scheduler.worker import Worker
    from dcp_worktimes.testing_scheduler import make_job

    s = open_scheduler(f"sqlite:///{tmp_path}/jobs.db")
    job = make_job("fleet", 4, worktime="fails-on-host")
    job.spec.work = "prepare-runtime"
    s.submit(job)
    from dcp_worktimes.scheduler.matching import unschedulable_reason
    from dcp_worktimes.testing_scheduler import serving

    with serving(Worker(s, ["fails-on-host"], cores=1)):  # its only worktime: it still checks in
        # A deployer whose job no other worker takes is told why, not "no worker has the worktime".
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            why = unschedulable_reason(s.get_job("fleet"), s.workers(), "the store") or ""
            if "stopped offering" in why:
                break
            time.sleep(0.1)
        st = s.status("fleet")
    assert st["status"] == "running" and st["computed"] == st["failed"] == 0, st  # handed back for other workers
    assert why.startswith("a worker that has the worktime 'fails-on-host' stopped offering it for a minute") and \
        "RuntimeError: the local model file" in why, why
    s.close()


def test_a_verdict_raised_in_prepare_keeps_its_code(probes):
    # Taken for an unexpected exception, it withdrew the worktime for a minute as this machine's fault.
    with EvaluatorPool(cores=1) as pool:
        out = next(pool.map(JobSpec(id="host-verdict", worktime="fails-on-host", work="prepare-verdict"), [(0, 1)]))
    assert not out.ok and out.error.code == "ESLICETOOSLOW" and not out.error.worker_fault, out.error
    assert out.error.message.startswith("preparing the job ran longer than its wall-time limit of 0.1 s")


def test_redact_drops_traceback_frames_and_host_folders():
    import dcp_worktimes

    text = ("Traceback (most recent call last):\n"
            f'  File "{dcp_worktimes.__file__}", line 1, in <module>\n'
            "    import nothing\n"
            f"OverflowError: too big for {sys.prefix}/lib\n")
    out = redact(text)
    assert out == "OverflowError: too big for <host>/lib"
    # Python 3.11 marks the failing part of each frame's source line: those markers go with it
    marked = ("Traceback (most recent call last):\n"
              f'  File "{dcp_worktimes.__file__}", line 9, in run\n'
              "    result = self.worktime.execute(ctx, datum)\n"
              "             ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
              f'  File "{sys.prefix}/x.py", line 3, in execute\n'
              "    sys.exit(4)\n"
              "    ~~~~~~~~^^^\n"
              "SystemExit: 4\n")
    assert redact(marked) == "SystemExit: 4"
    assert redact("results:\n~~~~~~~~\n42") == "results:\n~~~~~~~~\n42"  # markers only under a frame's source


# -- one depth limit for values, the same everywhere ----------------------------------------------
def _nest(depth: int):
    v = 0
    for _ in range(depth):
        v = [v]
    return v


def _depth(v) -> int:
    """Levels of ``[[[0]]]`` (compared without recursion: ``==`` recurses once per level)."""
    d = 0
    while isinstance(v, list) and len(v) == 1:
        v, d = v[0], d + 1
    return d if v == 0 else -1


def test_the_depth_limit_is_msgpacks_both_ways_and_says_so():
    from dcp_worktimes.values import MAX_DEPTH, UnserializableValue, pack, unpack, unpack_frame

    assert _depth(unpack(pack(_nest(MAX_DEPTH)))) == MAX_DEPTH
    with pytest.raises(UnserializableValue, match=f"nested more than {MAX_DEPTH} levels"):
        pack(_nest(MAX_DEPTH + 1))
    forged = b"\x91" * (MAX_DEPTH + 1) + b"\x00"
    with pytest.raises(UnserializableValue, match=f"nested more than {MAX_DEPTH} levels"):
        unpack(forged)
    # a frame [op, value] carries a value of the full depth
    op, value = unpack_frame(b"\x92\xa6result" + pack(_nest(MAX_DEPTH)))
    assert op == "result" and _depth(value) == MAX_DEPTH
    # ... and so does each frame of a frame of frames (a python block's results), deep or not
    many = b"\x93\xa4many\xc2\x92" + b"\x93\xa6result" + pack(_nest(MAX_DEPTH)) + b"\x00" + b"\x93\xa6result\x01\x01"
    op, running, frames = unpack_frame(many, frames_at=2)
    assert (op, running, frames[1]) == ("many", False, ["result", 1, 1])
    assert frames[0][0] == "result" and _depth(frames[0][1]) == MAX_DEPTH and frames[0][2] == 0
    assert unpack_frame(b"\x93\xa4many\xc2\x91\x93\xa6result\x01\x00", frames_at=2) == ["many", False, [["result", 1, 0]]]
    with pytest.raises(ValueError):  # a frame of frames holding something else than frames
        unpack_frame(b"\x93\xa4many\xc2\x91\x01", frames_at=2)


def test_a_job_an_evaluator_could_not_decode_fails_at_once_instead_of_hanging():
    # A tuple dict key in the job's arguments (the Compute API refuses it; the pool is the last
    # door): the evaluator could not decode its prepare frame and the host waited for ever.
    with EvaluatorPool(cores=1) as pool:
        job = JobSpec(id="tuple-key", worktime="echo", work="{}", arguments=[{(1, 2): 3}])
        outs = list(pool.map(job, [(0, 1), (1, 2)]))
        assert [o.error.code for o in outs] == ["EBADWORK"] * 2
        assert "dict keys must be None, bool, int, float, str or bytes" in outs[0].error.message
        assert [o.value for o in pool.map(JobSpec(id="next", worktime="echo", work="{}"), [(0, 1)])] == [1]


def test_the_python_guest_keeps_the_same_depth_limit(warm):
    from dcp_worktimes.runner import run_slice
    from dcp_worktimes.values import MAX_DEPTH

    work = "def f(d):\n    v = 0\n    for _ in range(d):\n        v = [v]\n    return v\n"
    out = run_slice(JobSpec(id="deep-py", worktime="python", work=work), MAX_DEPTH)
    assert out.ok and _depth(out.value) == MAX_DEPTH, out.error
    out = run_slice(JobSpec(id="deeper-py", worktime="python", work=work), MAX_DEPTH + 1)
    assert not out.ok and out.error.code == "EUNSERIALIZABLE" and f"more than {MAX_DEPTH} levels" in out.error.message
    assert len(out.error.message) < 300  # the path to the deep end is not spelled out 1000 times
    echo = "def f(v):\n    return v\n"
    out = run_slice(JobSpec(id="deep-datum-py", worktime="python", work=echo), _nest(MAX_DEPTH))
    assert out.ok and _depth(out.value) == MAX_DEPTH, out.error


# -- the scratch disk is capped by the kernel; nothing outlives a killed evaluator ----------------
HOSTILE = Path(__file__).resolve().parents[1] / "sandbox" / "hostile"


def test_an_unlinked_scratch_file_kept_open_across_slices_stays_under_the_cap(warm):
    """python keeps its interpreter warm between slices: the file's descriptor survives too."""
    from dcp_worktimes.limits import MiB

    job = JobSpec(id="unlinked-across", worktime="python", work=(HOSTILE / "python" / "unlinked_scratch.py").read_text(),
                  options={"scratch_size": "16MiB"}, limits=Limits.parse(wall_time="60s"))
    with EvaluatorPool(cores=1) as pool:
        outs = sorted(pool.map(job, [(i, i) for i in range(4)]), key=lambda o: o.number)
        assert pool._slots[0].proc is None or pool._slots[0].proc.isolation.get("private_tmp") is True
    for out in outs:  # every slice meets the cap; none got past it
        if out.ok:
            assert out.value <= 16 * MiB
        else:
            assert out.error.code == "EOUTPUTLIMIT" and "scratch directory /tmp" in out.error.message, out.error


def _our_temp_entries(pid: int) -> list[str]:
    import glob
    import tempfile

    return [p for base in (tempfile.gettempdir(), "/dev/shm") for p in glob.glob(f"{base}/dcp-*-{pid}-*")]


def test_a_killed_evaluator_leaves_no_temporary_file_nor_its_input_behind(build):
    import os
    import queue
    import secrets
    import signal
    import time

    marker = secrets.token_hex(16)
    # reads its input, writes it into /tmp, then spins: killed from outside like the OOM killer would
    wasm = build("scratch_then_spin", HOSTILE.parent.parent / "tests" / "wasi_programs")
    job = JobSpec(id="killed", worktime="wasi", work=wasm, files={"data.txt": marker.encode()},
                  limits=Limits.parse(wall_time="60s", progress_timeout="off"))
    got: "queue.SimpleQueue" = queue.SimpleQueue()
    with EvaluatorPool(cores=1) as pool:
        pool.submit(job, [0], [marker], got.put)
        deadline = time.monotonic() + 30
        while (proc := pool._slots[0].proc) is None or proc.job_id != job.id:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert proc.isolation.get("private_tmp") is True, proc.isolation
        pid = proc.pid
        time.sleep(1.0)  # the slice is running and has written its scratch file
        entries = _our_temp_entries(pid)
        assert entries, "the evaluator made its private area in the host's /tmp"
        os.kill(pid, signal.SIGKILL)
        out = got.get(timeout=60)
        assert not any(out.oks)
    time.sleep(0.2)
    for path in _our_temp_entries(pid):  # at most empty mount points remain on the host
        assert os.path.isdir(path) and not os.listdir(path), path
    for base in ("/tmp", "/dev/shm"):
        for root, _dirs, files in os.walk(base):
            if "dcp-" not in root:
                continue
            for name in files:
                try:
                    with open(os.path.join(root, name), "rb") as f:
                        assert marker.encode() not in f.read(1 << 20), os.path.join(root, name)
                except OSError:
                    pass


# -- preparing a job (compiling its work) is bounded by the job's limits ---------------------------
@pytest.fixture(scope="module")
def big_wat() -> str:
    """~66 MB of WebAssembly text: compiling it takes ~2 s and ~250 MB on this kind of machine."""
    funcs = "".join(f"(func $f{i} (result i32) i32.const {i} i32.const 1 i32.add)\n" for i in range(1_000_000))
    return f'(module (memory 1)\n{funcs}(func (export "_start")))'


@pytest.mark.parametrize("limits, code, words", [
    ({"memory": "64MiB", "wall_time": "60s"}, "EMEMORYLIMIT", "preparing the job (loading and compiling its work) used"),
    ({"wall_time": "200ms", "memory": "4GiB"}, "ESLICETOOSLOW",
     "preparing the job (loading and compiling its work) ran longer than its wall-time limit"),
])
def test_compiling_the_work_is_bounded_by_the_jobs_limits(big_wat, tmp_path, monkeypatch, limits, code, words):
    import time

    monkeypatch.setenv("DCP_WORKTIMES_CACHE", str(tmp_path))  # a cold compile cache: really compile
    job = JobSpec(id=f"big-{code}", worktime="wasi", work=big_wat, limits=Limits.parse(**limits))
    t = time.monotonic()
    with EvaluatorPool(cores=1, env={**__import__("os").environ}) as pool:
        outs = list(pool.map(job, [(i, i) for i in range(3)]))
    assert time.monotonic() - t < 30
    assert all(not o.ok and o.error.code == code for o in outs), [o.error for o in outs]
    assert words in outs[0].error.message, outs[0].error.message


# -- a long-running worker serving the whole corpus keeps its memory and disk flat -----------------
def _corpus(cc) -> list[tuple[str, str, object]]:
    """``(worktime, case, work)`` for every case of the hostile corpus each built-in can express."""
    from dcp_worktimes.testing import HOSTILE_CASES

    works: list[tuple[str, str, object]] = []
    for case in sorted(HOSTILE_CASES):
        if (HOSTILE / "c" / f"{case}.c").exists():
            works.append(("wasi", case, cc(HOSTILE / "c" / f"{case}.c")))
        if (HOSTILE / "python" / f"{case}.py").exists():
            works.append(("python", case, (HOSTILE / "python" / f"{case}.py").read_text()))
        if (HOSTILE / "js" / f"{case}.js").exists():
            works.append(("map-basic", case, (HOSTILE / "js" / f"{case}.js").read_text()))
    return works


def _temp_footprint(pids: set[int]) -> tuple[int, int]:
    """(entries, bytes) the host can see in /tmp and /dev/shm of the evaluators ``pids``."""
    import glob
    import os
    import re
    import tempfile

    entries = total = 0
    for base in (tempfile.gettempdir(), "/dev/shm"):
        for top in glob.glob(f"{base}/dcp-*"):
            m = re.search(r"-(\d+)-[^/]*$", top)
            if m is None or int(m.group(1)) not in pids:
                continue  # another process's (other workers on this machine)
            entries += 1
            for root, _dirs, files in os.walk(top):
                for name in files:
                    try:
                        total += os.lstat(os.path.join(root, name)).st_blocks * 512
                    except OSError:
                        pass
    return entries, total


def _serve(pool, corpus, tmp_path, pids: set[int]) -> None:
    import secrets

    from dcp_worktimes.testing import HOSTILE_CASES

    for worktime, case, work in corpus:
        datum = {"file_access": str(tmp_path / "canary.txt"), "network_access": ["127.0.0.1", 9],
                 "process_access": str(tmp_path / "marker")}.get(case)
        job = JobSpec(id=f"corpus-{worktime}-{case}-{secrets.token_hex(3)}", worktime=worktime, work=work,
                      limits=Limits.parse(**HOSTILE_CASES[case].limits))
        out = next(pool.map(job, [(0, datum)]))
        proc = pool._slots[0].proc
        if proc is not None:
            pids.add(proc.pid)
        codes = HOSTILE_CASES[case].codes
        assert not codes or (not out.ok and out.error.code in codes), (worktime, case, out.error)


def _flat(cc, warm, tmp_path, rounds: int, cases: set[str] | None) -> None:
    import psutil

    (tmp_path / "canary.txt").write_text("secret")
    corpus = [c for c in _corpus(cc) if cases is None or c[1] in cases]
    me = psutil.Process()
    pids: set[int] = set()
    with EvaluatorPool(cores=1) as pool:
        _serve(pool, corpus, tmp_path, pids)  # warm: engines loaded, caches filled
        rss = me.memory_info().rss
        for _ in range(rounds - 1):
            _serve(pool, corpus, tmp_path, pids)
        grown = me.memory_info().rss - rss
        entries, size = _temp_footprint(pids)
    assert grown < 32 << 20, f"the worker's memory grew by {grown >> 20} MiB over {rounds - 1} rounds"
    # Of the ~{len(pids)} evaluators that served, only empty mount points of the last few remain
    # (each new evaluator removes those of dead ones), and none holds a byte.
    assert size == 0, f"evaluators left {size} bytes of temporary files on the host"
    assert entries <= 3, f"{entries} temporary folders of {len(pids)} evaluators remain"
    assert len(pids) >= len(corpus)


RESOURCE_CASES = {"memory_balloon", "huge_output", "unlinked_scratch", "sparse_scratch", "fd_hoard", "throw",
                  "deep_recursion", "crash", "file_access"}


def test_a_worker_serving_the_resource_cases_again_and_again_stays_flat(cc, warm, tmp_path):
    _flat(cc, warm, tmp_path, rounds=3, cases=RESOURCE_CASES)


@pytest.mark.slow
def test_a_long_running_worker_serving_the_whole_corpus_stays_flat(cc, warm, tmp_path):
    _flat(cc, warm, tmp_path, rounds=6, cases=None)


# -- one byte budget per slice, and a cap on each message (runner/bounds.py) -----------------------
BIG = 20 * 2**20  # 20 MiB of text, far over the 1 MB budget below

HUGE_MESSAGES = {
    # worktime: (work, what the slice does)
    ("map-basic", "throw"): f"x => {{ throw new Error('e'.repeat({BIG})) }}",
    ("map-basic", "reject"): f"x => {{ work.reject('r'.repeat({BIG})); return 1 }}",
    ("map-basic", "console"): f"x => {{ console.log('c'.repeat({BIG})); return 1 }}",
    ("map-basic", "flood"): "x => { for (let i = 0; i < 1e6; i++) console.log(i); return 1 }",
    ("map-basic", "result_and_console"): "x => { for (let i = 0; i < 12; i++) console.log(String(i).repeat(50000)); "
                                         "return 'v'.repeat(500000) }",
    ("python", "throw"): f"def f(x):\n    raise ValueError('e' * {BIG})\n",
    ("python", "console"): f"def f(x):\n    print('c' * {BIG})\n    return 1\n",
    ("python", "flood"): "def f(x):\n    for i in range(10**6):\n        print(i)\n    return 1\n",
    ("python", "result_and_console"): "def f(x):\n    for i in range(12):\n        print(str(i) * 50000)\n"
                                      "    return 'v' * 500000\n",
}


@pytest.mark.parametrize("worktime, case", sorted(HUGE_MESSAGES))
def test_what_a_slice_sends_back_stays_within_its_budget(worktime, case, warm):
    from dcp_worktimes.runner.bounds import MESSAGE_CAP

    limits = Limits.parse(output="1MB", wall_time="60s")
    events: list = []
    with EvaluatorPool(cores=1) as pool:
        job = JobSpec(id=f"budget-{worktime}-{case}", worktime=worktime, work=HUGE_MESSAGES[worktime, case], limits=limits)
        out = next(pool.map(job, [(0, 1)], lambda kind, n, payload: events.append((kind, payload))))
        follow = next(pool.map(JobSpec(id=f"after-{worktime}-{case}", worktime=worktime,
                                       work="x => x + 1" if worktime == "map-basic" else "def f(x):\n    return x + 1\n"),
                               [(1, 41)]))
    sent = sum(len(str(p)) for _, p in events) + len(out.value_bytes or b"")
    if out.error is not None:
        sent += len(out.error.message) + len(out.error.stack or "")
    assert sent < 1_000_000 + 2 * MESSAGE_CAP, f"{sent} bytes came back"  # the budget, and one cut message
    if case in ("throw", "reject"):
        assert out.error.code == ("EWORKREJECT" if case == "reject" else "EUNCAUGHT"), out.error
        assert len(out.error.message) <= MESSAGE_CAP and "more characters cut" in out.error.message
    elif case == "console":  # a line over the cap is cut, and says so
        assert out.ok, out.error
        lines = [p["message"] for k, p in events if k == "console"]
        assert len(lines) == 1 and len(lines[0]) <= MESSAGE_CAP and "more characters cut" in lines[0]
    else:  # a flood of lines, or the result with the lines, over the one budget
        assert not out.ok and out.error.code == "EOUTPUTLIMIT", out.error
        if case == "result_and_console":
            assert "console/emit traffic" in out.error.message, out.error.message
    assert follow.ok and follow.value == 42  # the worker serves on


def test_a_huge_load_error_is_cut_too():
    from dcp_worktimes.runner.bounds import MESSAGE_CAP

    with EvaluatorPool(cores=1) as pool:
        job = JobSpec(id="load-error", worktime="map-basic", work="(x => x) +\n" + "y" * BIG + "(",
                      limits=Limits.parse(output="1MB"))
        out = next(pool.map(job, [(0, 1)]))
    assert out.error.code == "EBADWORK" and len(out.error.message) <= MESSAGE_CAP + 100, len(out.error.message)


def test_an_evaluators_descendants_are_ended_only_while_its_pid_is_its_own():
    # The host ends an evaluator's descendants before it kills it; a pid reused since by another
    # process (the evaluator exited, reaped by its zygote) must not lose its children.
    import subprocess

    import psutil

    from dcp_worktimes.runner.isolation import end_descendants

    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"])
    try:
        deadline = time.monotonic() + 30
        while not psutil.Process(parent.pid).children() and time.monotonic() < deadline:
            time.sleep(0.05)
        (child,) = psutil.Process(parent.pid).children()
        born = psutil.Process(parent.pid).create_time()
        end_descendants(parent.pid, born - 5.0)  # as if the pid were another process's now
        time.sleep(0.3)
        assert child.is_running() and child.status() != psutil.STATUS_ZOMBIE
        end_descendants(parent.pid, born)
        deadline = time.monotonic() + 10
        while child.is_running() and child.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE  # killed (its parent has not reaped it)
    finally:
        parent.kill()
        parent.wait()
