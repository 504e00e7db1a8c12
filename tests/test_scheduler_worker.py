"""Workers on real evaluators: local runs, two worker processes, SIGKILL, matching."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from dcp_worktimes.errors import DcpError, WorktimeNotFound
from dcp_worktimes.scheduler import open_scheduler
from dcp_worktimes.scheduler.local import run_local
from dcp_worktimes.scheduler import worker as worker_module
from dcp_worktimes.scheduler.worker import Worker
from dcp_worktimes.testing_scheduler import make_job, serving
from dcp_worktimes.values import unpack

pytest.importorskip("dcp_worktime_echo")


def follow(s, job_id, timeout=120.0):
    """Events until complete/cancel (what job.exec() does), with a hard time bound."""
    after, seen = 0, []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for seq, ev in s.events(job_id, after, wait=1.0):
            after = seq
            seen.append(ev)
            if ev["type"] in ("complete", "cancel"):
                return seen
    raise AssertionError(f"job {job_id} did not finish in {timeout}s: {s.status(job_id)}")


@pytest.fixture
def store(tmp_path):
    url = f"sqlite:///{tmp_path}/jobs.db"
    s = open_scheduler(url)
    yield url, s
    s.close()


def test_run_local_completes_every_slice(store):
    url, s = store
    s.submit(make_job("j1", 300))
    with run_local(s, "j1", cores=2):
        events = follow(s, "j1")
    results = s.results("j1")
    assert {n: unpack(r.value) for n, r in results.items()} == {n: n for n in range(300)}
    assert all(r.wall_time >= 0 and r.bytes_in > 0 for r in results.values())
    assert sum(e["type"] == "result" for e in events) == 300
    statuses = [e for e in events if e["type"] == "status"]
    assert statuses[-1]["computed"] == 300 and statuses.count(statuses[-1]) == 1  # the final status once
    assert s.status("j1")["status"] == "complete"


def test_console_emit_and_errors_reach_the_event_log(store):
    url, s = store
    job = make_job("j1", 3)
    job.spec.work = json.dumps({"when": 1, "console": ["hello"], "emit": {"partial": {"a": 1}}, "throw": "bad one"})
    s.submit(job)
    with run_local(s, "j1", cores=1):
        events = follow(s, "j1")
    kinds = [e["type"] for e in events]
    assert "console" in kinds and "error" in kinds and "custom" in kinds
    custom = next(e for e in events if e["type"] == "custom")
    assert custom["name"] == "partial" and custom["value"] == {"a": 1} and custom["sliceNumber"] == 1
    console = next(e for e in events if e["type"] == "console")
    assert console["message"] == "hello" and console["sliceNumber"] == 1
    error = next(e for e in events if e["type"] == "error")
    assert error["sliceNumber"] == 1 and error["code"] == "EUNCAUGHT" and "bad one" in error["message"]
    assert s.status("j1")["computed"] == 2 and s.status("j1")["failed"] == 1


def test_events_of_a_running_slice_arrive_while_it_runs_and_in_order(store):
    url, s = store
    job = make_job("talk", 1)
    job.spec.work = json.dumps({"console": ["start"], "emit": {"partial": 1}, "sleep": 4})
    s.submit(job)
    seen = []
    with run_local(s, "talk", cores=1):
        t0 = time.monotonic()
        after = 0
        while not any(e["type"] == "complete" for _, e in seen):
            assert time.monotonic() - t0 < 60
            for seq, ev in s.events("talk", after, wait=0.2):
                after = seq
                seen.append((time.monotonic() - t0, ev))
    kinds = [e["type"] for _, e in seen if e["type"] in ("console", "custom", "result")]
    assert kinds == ["console", "custom", "result"]  # logged before emitted, both before the result
    when = {e["type"]: t for t, e in seen}
    # The slice sleeps 4 s after logging and emitting: both must arrive well before its result.
    assert when["result"] - when["console"] > 2 and when["result"] - when["custom"] > 2, when


def test_a_rejected_slice_is_given_back_and_runs_again(store):
    url, s = store
    from dcp_worktimes.values import pack

    job = make_job("picky", 3, worktime="map-basic")
    # Globals persist between slices of a job in one evaluator: the first try of slice 1 refuses it.
    job.spec.work = "x => { globalThis.tries = (globalThis.tries || 0) + 1; if (x == 1 && tries < 3) work.reject('busy'); return x }"
    s.submit(job)
    never = make_job("never", 1, worktime="map-basic")
    never.spec.work = "x => work.reject('never')"
    s.submit(never)
    with run_local(s, "picky", cores=1):
        follow(s, "picky")
    assert {n: unpack(r.value) for n, r in s.results("picky").items()} == {0: 0, 1: 1, 2: 2}
    with run_local(s, "never", cores=1):
        follow(s, "never")
    (report,) = s.results("never").values()
    assert report.error["code"] == "EWORKREJECT" and "never" in report.error["message"]
    assert report.attempt == never.max_attempts  # retried, then failed for good


def test_run_local_fails_at_once_when_nothing_installed_matches(store):
    url, s = store
    s.submit(make_job("nope", 2, worktime="no-such-worktime"))
    started = time.monotonic()
    with pytest.raises(WorktimeNotFound, match="no-such-worktime"):
        with run_local(s, "nope"):
            pass
    s.submit(make_job("old", 2, worktime_range="^9.0.0"))
    with pytest.raises(WorktimeNotFound, match=r"echo@\^9.0.0"):
        with run_local(s, "old"):
            pass
    s.submit(make_job("gpu", 2, requirements={"gpu": True}))
    with pytest.raises(DcpError, match="gpu=true") as info:
        with run_local(s, "gpu"):
            pass
    assert info.value.code == "EREQUIREMENTS"
    assert time.monotonic() - started < 5


def test_attached_worker_that_cannot_run_a_job_reports_it_unschedulable(store):
    url, s = store
    s.submit(make_job("gpu", 2, requirements={"gpu": True}))
    s.SCHEDULABLE_GRACE = 0.0  # type: ignore[attr-defined]
    s.SCHEDULABLE_INTERVAL = 0.0  # type: ignore[attr-defined]
    stop = threading.Event()
    w = Worker(s, ["echo"], cores=1, poll_interval=0.05, idle_poll_interval=0.1)
    t = threading.Thread(target=w.run, args=(stop,))
    t.start()
    try:
        deadline = time.monotonic() + 30
        while s.status("gpu")["status"] != "unschedulable" and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        t.join(30)
    st = s.status("gpu")
    assert st["status"] == "unschedulable" and "gpu=true" in st["reason"]
    assert any(e["type"] == "unschedulable" for _, e in s.events("gpu"))


def test_worker_runs_until_idle_and_stops_evaluators(store):
    import psutil

    def live_children():  # the warm pool of earlier exec() calls in this process is not this worker's
        return {c.pid for c in psutil.Process().children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE}

    url, s = store
    before = live_children()
    s.submit(make_job("a", 50, payment_per_slice=1))
    s.submit(make_job("b", 50, payment_per_slice=3))
    w = Worker(s, ["echo"], cores=2)
    w.run(until_idle=True)
    assert w.completed == 100
    assert s.status("a")["status"] == s.status("b")["status"] == "complete"
    assert live_children() - before == set()
    assert w.id not in {info.id for info in s.workers()}  # it said goodbye


def test_a_stored_job_whose_file_names_no_disk_takes_fails_its_slices_not_the_worker(store):
    # Stored by a deployer that did not check the names: a check while reading the job from the
    # store would have raised in every worker that leased it.
    url, s = store
    bad = make_job("bad", 3)
    bad.spec.files = {"a": b"x", "a/b": b"y"}
    s.submit(bad)
    s.submit(make_job("good", 3))
    w = Worker(s, ["echo"], cores=1)
    w.run(until_idle=True)
    st = s.status("bad")  # bad work stops its job once, with the reason
    assert st["status"] == "cancelled" and "EBADWORK" in st["reason"] and "cannot be both a file and a folder" \
        in st["reason"], st
    assert s.status("good")["status"] == "complete"


def test_a_stored_datum_that_cannot_be_decoded_fails_its_slice_not_the_worker(store):
    # Nested one level past what msgpack unpacks (forged, or stored before deployers checked):
    # leasing it raised, and every worker that leased the job ended with "internal error".
    from dcp_worktimes.values import MAX_DEPTH, pack

    url, s = store
    s.submit(make_job("deep", stream=True))
    s.add_slices("deep", [(0, pack(1)), (1, b"\x91" * (MAX_DEPTH + 1) + b"\x00"), (2, pack(3))])
    s.close_input("deep", 3)
    Worker(s, ["echo"], cores=1).run(until_idle=True)
    results = s.results("deep")
    assert unpack(results[0].value) == 1 and unpack(results[2].value) == 3
    assert results[1].error["code"] == "EUNSERIALIZABLE" and "nested more than" in results[1].error["message"]
    st = s.status("deep")
    assert (st["computed"], st["failed"], st["status"]) == (2, 1, "failed"), st


def test_outcomes_of_a_lease_dropped_here_count_for_nothing(store):
    # The slices of a lost lease, dropped unrun, came back with no wall time: they pulled the
    # worker's slice-time estimate towards zero, and its next leases were far too big.
    from dcp_worktimes.errors import SliceError
    from dcp_worktimes.runner.pool import Outcome

    url, s = store
    w = Worker(s, ["echo"], cores=1)
    w._on_outcome(Outcome.failure("j", "a-lease-no-longer-held", [1, 2, 3], SliceError("lost", code="ECANCELLED")))
    assert w._wall_n == 0 and w._outcomes == [] and w._waiting == 0


def test_an_idle_workers_next_lease_is_not_sized_by_its_last_jobs_slices(store):
    # Its mean slice time was over its whole life: after a job of trivial slices, its first lease
    # of a job of slow ones took every slice, and the other workers of the fleet sat idle.
    url, s = store
    first, second = Worker(s, ["echo"], cores=1), Worker(s, ["echo"], cores=1)
    with serving(first):
        s.submit(make_job("fast", 2000))
        deadline = time.monotonic() + 120
        while s.status("fast")["status"] != "complete" and time.monotonic() < deadline:
            time.sleep(0.05)
        while first.leased and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # idle for a moment
        slow = make_job("slow", 8)
        slow.spec.work = '{"sleep": 0.3}'
        s.submit(slow)
        while not s.status("slow")["distributed"] and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # the first worker has taken what it takes
        with serving(second):
            follow(s, "slow")
    assert {r.worker for r in s.results("slow").values()} == {first.id, second.id}


def test_an_idle_worker_lets_a_finished_jobs_evaluators_go_and_keeps_spares(store, monkeypatch):
    """A finished job's evaluators (and whatever its work left in their memory) must not wait
    for the worker's next job; spares take their place, and the next job runs in them."""
    url, s = store
    s.submit(make_job("first", 4))
    w = Worker(s, ["echo"], cores=1, poll_interval=0.05, idle_poll_interval=0.1)
    with serving(w):
        follow(s, "first")
        slot = w._pool._slots[0]
        first_pid = slot.proc.pid
        deadline = time.monotonic() + 20
        while slot.proc is not None or slot.spare is None or slot.spare._proc is None:
            assert time.monotonic() < deadline, "the finished job's evaluator was never released"
            time.sleep(0.05)
        assert not psutil.pid_exists(first_pid) or psutil.Process(first_pid).status() == psutil.STATUS_ZOMBIE
        spare_pid = slot.spare._proc.pid
        monkeypatch.setattr(worker_module, "RELEASE_AFTER", 600.0)  # the second job's evaluator stays to be seen
        s.submit(make_job("second", 4))
        follow(s, "second")
        assert {n: unpack(r.value) for n, r in s.results("second").items()} == {0: 0, 1: 1, 2: 2, 3: 3}
        assert slot.proc.pid == spare_pid  # it ran in the spare


def test_worker_stops_a_cancelled_jobs_slices_within_seconds(store):
    """A deployer's cancel reaches a worker long before its next lease extension (30 s / 3)."""
    url, s = store
    job = make_job("slow", 4)
    job.spec.work = json.dumps({"sleep": 60})
    s.submit(job)
    w = Worker(s, ["echo"], cores=2, lease_seconds=30.0)
    with serving(w, timeout=30) as t:
        deadline = time.monotonic() + 30
        while not any(slot.busy for slot in (w._pool._slots if w._pool else [])):
            assert time.monotonic() < deadline, "the worker never started the slow slices"
            time.sleep(0.05)
        s.cancel("slow")
        cancelled = time.monotonic()
        while w._inflight or any(slot.busy for slot in w._pool._slots):
            assert time.monotonic() - cancelled < 5, "the cancelled job's slices kept running"
            time.sleep(0.05)
    assert not t.is_alive() and w.error is None
    assert w.completed == 0 and s.status("slow")["status"] == "cancelled"


@pytest.mark.parametrize("job_timeout, worker_timeout, code", [
    ("1s", "1s", "ENOPROGRESS"),
    ("1s", "off", None),   # V14: the worker disables the watchdog
    ("off", "1s", None),   # V14: the job disables it, even on a worker whose default is on
    ("1s", "30s", "ENOPROGRESS"),
])
def test_either_the_job_or_the_worker_can_turn_the_no_progress_watchdog_off(store, job_timeout, worker_timeout, code):
    from dcp_worktimes.limits import Limits

    url, s = store
    job = make_job("quiet", 1)
    job.spec.work = json.dumps({"silent": 2.5})
    job.spec.limits = Limits.parse(progress_timeout=job_timeout)
    s.submit(job)
    w = Worker(s, ["echo"], cores=1, limits=Limits.parse(progress_timeout=worker_timeout))
    w.run(until_idle=True)
    (report,) = s.results("quiet").values()
    assert (report.error or {}).get("code") == code, report.error
    assert report.ok == (code is None)


def test_a_limit_this_worker_lowered_is_named_in_the_error(store):
    from dcp_worktimes.limits import Limits

    url, s = store
    job = make_job("slow", 1)
    job.spec.work = json.dumps({"sleep": 3})
    s.submit(job)
    Worker(s, ["echo"], cores=1, limits=Limits.parse(wall_time="1s")).run(until_idle=True)
    (report,) = s.results("slow").values()
    assert report.error["code"] == "ESLICETOOSLOW"
    assert "this worker allows at most 1 s of wall_time" in report.error["message"]
    assert "dcp-worker --wall-time" in report.error["message"]


def test_a_scratch_cap_error_is_not_blamed_on_a_lowered_output_limit(store):
    from dcp_worktimes.limits import Limits, exceeded

    url, s = store
    s.submit(make_job("j", 1))
    w = Worker(s, ["echo"], cores=1, limits=Limits.parse(output="1MB"))
    w._spec("j")  # what leasing the job does: the job's 64 MiB output is lowered to 1 MB
    over = exceeded("output", 1_000_000, used=2_000_000).to_dict()
    assert "dcp-worker --output-limit" in w._explain_cap("j", over)["message"]
    scratch = exceeded("scratch", 64 << 20, used=65 << 20).to_dict()
    assert scratch["code"] == "EOUTPUTLIMIT" and w._explain_cap("j", scratch) == scratch


# The real command line (`dcp-worker --worktime echo --cores 1 --scheduler URL`).
DCP_WORKER = "import sys; from dcp_worktimes.cli import main; sys.argv[0] = 'dcp-worker'; main()"


def start_worker(url):
    return subprocess.Popen([sys.executable, "-c", DCP_WORKER, "--worktime", "echo", "--cores", "1", "--scheduler", url],
                            start_new_session=True, stderr=subprocess.DEVNULL)


def worked(s, job_id: str, pid: int) -> bool:
    """Whether the worker process ``pid`` has a result in the job (result records name their worker)."""
    return any(f"-{pid}-" in r.worker for r in s.results(job_id).values())


def test_sigkill_one_of_two_worker_processes(store):
    """Acceptance: two dcp-worker processes, one SIGKILLed mid-job; every slice exactly once."""
    url, s = store
    n = 200
    job = make_job("k", n)
    job.spec.work = json.dumps({"sleep": 0.02})
    s.submit(job)
    a, b = start_worker(url), start_worker(url)
    try:
        deadline = time.monotonic() + 120
        # Kill once both have worked (so the victim holds leases), whichever started first.
        while not (s.status("k")["computed"] >= 40 and worked(s, "k", a.pid) and worked(s, "k", b.pid)) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.status("k")["computed"] < n, "job finished before the kill; make slices slower"
        os.killpg(a.pid, signal.SIGKILL)  # the worker and its evaluators
        a.wait(10)
        follow(s, "k", timeout=180)
    finally:
        for p in (a, b):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(30)
    results = s.results("k")
    assert sorted(results) == list(range(n))
    assert all(r.ok and unpack(r.value) == i for i, r in results.items())
    st = s.status("k")
    assert st == {"total": n, "distributed": n, "computed": n, "failed": 0, "status": "complete"}
    events = s.events("k")
    assert sorted(e["sliceNumber"] for _, e in events if e["type"] == "result") == list(range(n))
    retried = [r for r in results.values() if r.attempt > 1]
    assert retried  # the killed worker's slices were run again ...
    assert all(f"-{b.pid}-" in r.worker for r in retried)  # ... by the survivor
    assert {f"-{a.pid}-" in r.worker for r in results.values()} == {True, False}  # both had worked  # the killed worker's slices were run again by the survivor


def test_worker_sigterm_hands_slices_back(store):
    import sqlite3

    url, s = store
    job = make_job("t", 40)
    job.spec.work = json.dumps({"sleep": 0.2})
    s.submit(job)
    p = start_worker(url)
    try:
        deadline = time.monotonic() + 60
        while s.status("t")["computed"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(p.pid, signal.SIGTERM)
        assert p.wait(60) == 0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    db = sqlite3.connect(url[len("sqlite:///"):])
    assert db.execute("SELECT COUNT(*) FROM leases").fetchone()[0] == 0  # nothing left held
    computed = s.status("t")["computed"]
    assert 2 <= computed < 40
    assert db.execute("SELECT pending FROM jobs WHERE id = 't'").fetchone()[0] >= 1
    w = Worker(s, ["echo"], cores=2, worker_id="second")
    w.run(until_idle=True)
    assert s.status("t")["status"] == "complete"
    assert sorted(s.results("t")) == list(range(40))


RUN_WORKER = ("import sys; from dcp_worktimes.scheduler.worker import run_worker; "
              "run_worker(sys.argv[1], ['echo'], cores=1, lease_seconds=float(sys.argv[2]))")


def test_frozen_worker_loses_its_lease_and_its_late_results_are_ignored(store):
    """SIGSTOP a worker (alive, silent): its slices go to the other worker after lease expiry;
    after SIGCONT its late reports change nothing."""
    url, s = store
    n = 60
    job = make_job("f", n)
    job.spec.work = json.dumps({"sleep": 0.05})
    s.submit(job)
    procs = [subprocess.Popen([sys.executable, "-c", RUN_WORKER, url, "1.5"], start_new_session=True)
             for _ in range(2)]
    frozen = procs[0]
    try:
        deadline = time.monotonic() + 120
        # Freeze it once it has worked (it then holds leases): a worker that started late might
        # otherwise be frozen before it leased anything, and nothing would be retried.
        while not (s.status("f")["computed"] >= 10 and worked(s, "f", frozen.pid)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert s.status("f")["computed"] < n, "job finished before the freeze; make slices slower"
        os.killpg(frozen.pid, signal.SIGSTOP)
        follow(s, "f", timeout=180)
        os.killpg(frozen.pid, signal.SIGCONT)
        time.sleep(3)  # it wakes up, reports what it finished, learns its leases are gone
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGCONT)
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(60)
    results = s.results("f")
    assert sorted(results) == list(range(n)) and all(unpack(r.value) == i for i, r in results.items())
    assert s.status("f") == {"total": n, "distributed": n, "computed": n, "failed": 0, "status": "complete"}
    assert sum(1 for r in results.values() if r.attempt > 1) >= 1
    assert sum(1 for _, e in s.events("f") if e["type"] == "result") == n


HOARDING_WORKER = ("import sys; from dcp_worktimes.scheduler import open_scheduler; "
                   "from dcp_worktimes.scheduler.worker import Worker; "
                   "Worker(open_scheduler(sys.argv[1]), ['echo'], cores=1, lease_seconds=1.5, queue_seconds=20).run()")


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_a_killed_worker_charges_an_attempt_only_to_the_slices_it_may_have_started(store, request, backend):
    # Killed while holding a big lease, a worker cost every unreported slice of it an attempt,
    # though one core had started at most one of them: three such kills failed slices that
    # never ran ("lost 3 times"). Its heartbeats now say which slices no evaluator was given.
    url, s = store if backend == "sqlite" else (request.getfixturevalue("redis_url"), None)
    s = s or open_scheduler(url)
    n = 60
    job = make_job("h", n)
    job.spec.work = json.dumps({"sleep": 0.2})
    s.submit(job)
    p = subprocess.Popen([sys.executable, "-c", HOARDING_WORKER, url], start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while s.status("h")["computed"] < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert 3 <= s.status("h")["computed"] < 20, "make the slices slower"
        time.sleep(1.2)  # two heartbeats (every 0.5 s) with its lease held
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
    done = s.status("h")["computed"]
    time.sleep(2.0)  # its leases expire (1.5 s)
    w = Worker(s, ["echo"], cores=2, worker_id="second")
    w.run(until_idle=True)
    assert s.status("h")["status"] == "complete"
    results = s.results("h")
    again = [r for r in results.values() if f"-{p.pid}-" not in r.worker]
    assert len(again) == n - done
    charged = [r for r in again if r.attempt > 1]
    # At most the slices it was running or had finished unreported at its last heartbeat (one
    # given to its evaluator since goes back uncharged, once): never the whole lease.
    assert len(again) >= 30 and len(charged) <= 3, sorted(r.attempt for r in again)
    if backend == "redis":
        s.close()


def test_dcp_worker_in_another_process_helps_a_local_exec(store):
    """`dcp-worker` started in another terminal takes slices of a job run with exec() locally."""
    from dcp_worktimes import compute

    url, s = store
    helper = start_worker(url)
    try:
        deadline = time.monotonic() + 60
        while not any(f"-{helper.pid}-" in w.id for w in s.workers()) and time.monotonic() < deadline:
            time.sleep(0.05)
        job = compute.for_(0, 79, json.dumps({"sleep": 0.05}), worktime="echo", scheduler=url)
        values = list(job.exec(cores=1))
    finally:
        os.killpg(helper.pid, signal.SIGTERM)
        helper.wait(60)
    assert values == list(range(80))
    workers = {r.worker for r in s.results(job.id).values()}
    assert len(workers) == 2 and any(f"-{helper.pid}-" in w for w in workers)


def test_a_wake_up_while_the_worker_is_busy_is_not_lost():
    # Work stored between two waits (the worker was leasing or reporting) must wake the next wait
    # at once, not after its whole timeout.
    import time

    from dcp_worktimes.scheduler.wake import Waiter, Wake

    wake = Wake()
    waiter = Waiter(wake)
    assert waiter.wait(0.01) is False
    wake.notify()  # nobody waiting at this moment
    started = time.monotonic()
    assert waiter.wait(5.0) is True
    assert time.monotonic() - started < 1.0
    assert waiter.wait(0.01) is False  # seen: nothing new since
