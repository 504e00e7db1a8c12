"""``job.exec()`` end to end through the embedded scheduler and real evaluators, with the ``echo``
worktime (it returns each datum; its JSON work makes it misbehave on request). These check the
Compute API's own machinery — datums, results, events, failures, streams — independently of any
script engine; ``test_compute_vectors.py`` runs the spec's vectors on map-basic and python."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time

import pytest

from dcp_worktimes import compute
from dcp_worktimes.errors import ErrorCode, WorkError
from dcp_worktimes.scheduler import open_scheduler
from dcp_worktimes.testing_scheduler import serving


@contextlib.contextmanager
def attached_worker(store, worktimes):
    """A worker serving ``worktimes`` from the store on a thread of this process, for the block."""
    from dcp_worktimes.scheduler.worker import Worker

    with open_scheduler(store) as s, serving(Worker(s, worktimes, cores=1), timeout=30):
        yield s


def echo(inputs, actions=None, *args, **settings):
    settings.setdefault("cores", 2)
    return compute.for_(inputs, json.dumps(actions) if actions else "", *args, worktime="echo", **settings)


def test_results_come_back_in_slice_order_with_keys(store):
    r = echo({"start": 1, "end": 3}).exec()
    assert r == [1, 2, 3]
    assert r.entries() == [["1", 1], ["2", 2], ["3", 3]] and r.key(2) == 2


@pytest.mark.parametrize("inputs, expected", [
    ({"start": 10, "end": 13, "step": 2}, [10, 12]),                               # V2's datums
    ({"start": 10, "end": 13, "group": 2}, [[10, 11], [12, 13]]),                  # V3's datums
    ({"start": 0.1, "end": 0.5, "step": 0.1}, [0.1, 0.2, 0.3, 0.4, 0.5]),          # V8's datums
    ({"start": 1, "end": 9, "step": 3, "group": 2}, [[1, 4], [7]]),                # V9's datums
    ([123, 456], [123, 456]),                                                      # V6
    ([b"\x00\xff\x80" * 100, "x", 2**80, None, {"a": [1.5]}], [b"\x00\xff\x80" * 100, "x", 2**80, None, {"a": [1.5]}]),
])
def test_datums_reach_the_worker_exactly(store, inputs, expected):
    r = echo(inputs).exec()
    assert r == expected
    if isinstance(inputs, dict) and inputs.get("step") == 0.1:
        assert r.keys() == ["0.1", "0.2", "0.3", "0.4", "0.5"]


def test_v7_generator_is_streamed_lazily_in_batches(store):
    pulled = []

    def fruit():
        for f in ["banana", "orange", "apple"] * 900:  # 2700 datums: three batches
            pulled.append(f)
            yield f

    job = echo(fruit())
    assert pulled == []  # nothing is read before exec()
    r = job.exec()
    assert len(r) == 2700 and r[:3] == ["banana", "orange", "apple"] and r[-1] == "apple"
    assert r.entries()[1] == ["orange", "orange"]


def test_multi_dimensional_results_nest(store):
    r = echo([{"start": 1, "end": 2}, {"start": 3, "end": 5}]).exec()
    # echo returns the (unspread) datum, so each cell holds [i, j]
    assert r == [[[1, 3], [1, 4], [1, 5]], [[2, 3], [2, 4], [2, 5]]]
    assert r.key(2).key(5) == [2, 5]


def test_distribution_input_runs(store):
    s = compute.stats.set.randomInt(20, 1, 6, seed=9)
    r = echo(s).exec()
    assert r == [s.nth(i) for i in range(20)]


def test_work_errors_are_not_retried_and_reported_together(store):
    job = echo([1, 2, 3, 4], {"throw": "boom", "when": 2})
    errors = []
    job.on("error", errors.append)
    with pytest.raises(compute.JobFailed) as info:
        job.exec()
    err = info.value
    assert [(f.slice_number, str(f.code), f.message) for f in err.failures] == [(1, "EUNCAUGHT", "boom")]
    assert "slice 1: EUNCAUGHT: boom" in str(err)
    assert err.results[0] == 1 and err.results[2:] == [3, 4]  # the completed results are there
    assert [e.sliceNumber for e in errors] == [1]
    with open_scheduler(store) as s:
        assert s.status(err.job_id)["failed"] == 1


def test_errors_in_place(store):
    r = echo([1, 2, 3], {"throw": "boom", "when": 3}).exec(errors="return")
    assert r[:2] == [1, 2] and isinstance(r[2], compute.SliceFailed)
    assert r[2].code == "EUNCAUGHT" and r.failures == [r[2]]


def test_evaluator_crashes_are_retried_then_reported(store):
    job = echo([1, 2], {"crash": "exit", "when": 2}, max_attempts=2)
    r = job.exec(errors="return")
    assert r[0] == 1
    assert isinstance(r[1], compute.SliceFailed) and r[1].code == ErrorCode.ECRASH


def test_events_reach_handlers(store):
    job = echo([1, 2], {"console": ["hello"], "emit": {"partial": {"rows": 3}}})
    seen: dict[str, list] = {}
    for name in ("accepted", "readyStateChange", "status", "result", "console", "complete"):
        job.on(name, lambda ev, name=name: seen.setdefault(name, []).append(ev))
    custom = []
    job.work.on("partial", custom.append)
    r = job.exec()
    assert r == [1, 2]
    assert seen["accepted"][0].id == job.id
    assert sorted(ev.sliceNumber for ev in seen["result"]) == [0, 1]
    assert sorted(ev.result for ev in seen["result"]) == [1, 2]
    assert {ev.message for ev in seen["console"]} == {"hello"}
    assert sorted(ev.sliceNumber for ev in custom) == [0, 1] and custom[0].value == {"rows": 3}
    assert seen["status"][-1].computed == 2 and len(seen["complete"]) == 1
    assert "deployed" in [ev.state for ev in seen["readyStateChange"]]


def test_cancel_from_a_handler(store):
    job = echo({"start": 1, "end": 200}, {"sleep": 0.05}, cores=1)
    job.on("result", lambda ev: job.cancel("enough"))
    t0 = time.monotonic()
    with pytest.raises(compute.JobCancelled, match="enough") as info:
        job.exec()
    assert time.monotonic() - t0 < 30
    partial = info.value.results
    done = [v for v in partial if not isinstance(v, compute.SliceFailed)]
    assert 1 <= len(done) < 200 and len(partial) == 200 and None not in done
    # each slice that did not complete says so in its place (it read as None, like a null result)
    assert len(partial.failures) == 200 - len(done)
    assert {(f.code, f.message) for f in partial.failures} == {
        ("ECANCELLED", "the job was cancelled before this slice completed")}
    assert all(partial[f.slice_number] is f for f in partial.failures)


def test_a_cancelled_job_s_null_results_are_not_confused_with_slices_that_never_ran(store):
    job = compute.for_(range(40), "function (i) { const t = Date.now(); while (Date.now() - t < 20) {} progress(); "
                                      "return i < 4 && i % 2 ? null : i }", cores=1)
    job.on("result", lambda ev: job.cancel("enough") if ev.sliceNumber == 3 else None)
    with pytest.raises(compute.JobCancelled) as info:
        job.exec()
    r = info.value.results
    assert r.key(1) is None and r.key(3) is None  # returned null
    assert isinstance(r.key(39), compute.SliceFailed) and r.key(39).code == "ECANCELLED"  # never ran


def test_enoprogress_unless_the_watchdog_is_off(store):
    job = echo([1], {"silent": 3}, limits={"progress_timeout": "1s"})
    no_progress = []
    job.on("noProgress", no_progress.append)
    r = job.exec(errors="return")
    assert isinstance(r[0], compute.SliceFailed) and r[0].code == ErrorCode.ENOPROGRESS
    assert [ev.sliceNumber for ev in no_progress] == [0]
    assert echo([1], {"silent": 1.5}, limits={"progress_timeout": None}).exec() == [1]


def test_exec_async(store):
    async def main():
        return await echo([5, 6]).exec_async()

    assert asyncio.run(main()) == [5, 6]


def test_timeout_cancels(store):
    with pytest.raises(TimeoutError, match="cancelled"):
        echo([1], {"sleep": 20}).exec(timeout=1.5)


def test_a_timeout_keeps_the_results_that_completed(store):
    job = compute.for_(range(6), "function(i){ progress(); if (i >= 2) while (true) progress(); return i * 10 }")
    with pytest.raises(compute.JobTimedOut, match="did not finish within 3 s; it was cancelled") as caught:
        job.exec(timeout=3, cores=1)
    r = caught.value.results
    assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, compute.JobCancelled)
    assert caught.value.job_id == job.id and len(r) == 6 and list(r)[:2] == [0, 10]
    assert {f.slice_number for f in r.failures} == {2, 3, 4, 5} and {f.code for f in r.failures} == {"ECANCELLED"}


def test_progress_bar_when_forced(store, capsys):
    r = echo([1, 2, 3]).exec(progress=True)
    assert r == [1, 2, 3]
    assert "3/3" in capsys.readouterr().out


def test_resume_of_a_finished_job_returns_its_results(store):
    job = echo([7, 8, 9])
    job.exec()
    again = compute.resume(job.id)
    t0 = time.monotonic()
    assert again.exec() == [7, 8, 9]
    assert time.monotonic() - t0 < 10


def test_remote_execution_uses_attached_workers(store):
    with attached_worker(store, ["echo"]):
        assert echo([1, 2, 3]).exec(local=False, timeout=60) == [1, 2, 3]


def test_remote_job_no_worker_can_run_is_reported_not_hung(store, monkeypatch):
    with attached_worker(store, ["wasi"]) as s:  # attached, but it does not have echo
        t0 = time.monotonic()
        j = echo([1], worker_wait=0.5)
        with pytest.raises(compute.RequirementsError, match="echo"):
            j.exec(local=False, timeout=60)
        assert time.monotonic() - t0 < 30
        # The deployer gave up: the job is cancelled in the store, so a worker attached later
        # does not run it behind the deployer's back.
        assert s.status(j.id)["status"] == "cancelled"


def test_empty_inputs_complete_at_once(store):
    t0 = time.monotonic()
    assert echo([]).exec() == [] and echo(range(0)).exec() == []
    assert time.monotonic() - t0 < 20


def test_a_stream_that_fails_midway_stops_the_job_and_says_where(store):
    def datums():
        for i in range(2500):
            yield {1, 2} if i == 1500 else i  # a set cannot be sent

    with pytest.raises(TypeError, match="input 1500"):
        echo(datums()).exec()

    def broken():
        yield 1
        raise RuntimeError("the source broke")

    with pytest.raises(RuntimeError, match="the source broke"):
        echo(broken()).exec()


def test_a_slow_stream_whose_deployer_is_alive_is_never_ended(store, monkeypatch):
    """A generator may take longer than the whole feed lease between two items: the deployer
    renews the lease on a timer of its own, not per item, so the store never takes it for dead
    (the local worker's lease calls run the reclaim all along)."""
    from dcp_worktimes.compute import deploy

    monkeypatch.setattr(deploy, "FEED_LEASE", 1.0)
    monkeypatch.setattr(deploy, "FEED_REFRESH", 0.1)
    monkeypatch.setattr(deploy, "STREAM_BATCH", 1)  # each item is sent as soon as it comes

    def slow():
        for i in range(3):
            if i:
                time.sleep(2.0)  # twice the feed lease
            yield i

    assert echo(slow(), cores=1).exec() == [0, 1, 2]


def test_compute_default_applies_to_new_jobs(store, monkeypatch):
    monkeypatch.setattr(compute.default, "worktime", "echo", raising=False)
    monkeypatch.setattr(compute.default, "max_attempts", 5, raising=False)
    j = compute.for_([1], "")
    assert j.worktime == "echo" and j.max_attempts == 5
    assert j.exec() == [1]
    with pytest.raises(TypeError, match="unknown job setting 'id'"):
        compute.for_([1], "", id="x")


def test_remote_job_with_no_worker_says_what_it_waits_for_then_gives_up(store, caplog):
    """exec(local=False) with nobody attached: a message naming the worktime and the command to
    start a worker, then RequirementsError after job.worker_wait seconds (not a silent 30 s)."""
    import logging

    caplog.set_level(logging.WARNING, logger="dcp_worktimes.compute")
    job = echo([1], worker_wait=1.5, requirements={"echo": True})
    t0 = time.monotonic()
    with pytest.raises(compute.RequirementsError, match="no worker is attached"):
        job.exec(local=False, timeout=60)
    waited = time.monotonic() - t0
    assert 1.5 <= waited < 20
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "waiting for a worker with echo" in said and "echo=true" in said and "dcp-worker --worktime echo" in said
    assert "giving up after 1.5 s (job.worker_wait)" in said
    with open_scheduler(store) as s:
        assert s.status(job.id)["status"] == "cancelled"
    with pytest.raises(ValueError, match="worker_wait"):
        echo([1], worker_wait=-1).exec(local=False)


def test_a_remote_job_a_worker_took_waits_for_workers_that_stop_checking_in(store, monkeypatch):
    """Workers vanish from the deployer's view once the job runs (their check-ins are writes, and a
    store that fails for a while takes none): that is no job nobody can run, and worker_wait must
    not cancel it (it did, throwing the workers' results away)."""
    from dcp_worktimes.scheduler.sqlite import SqliteScheduler

    # Two slices of 2.5 s on one core: the deployer hears nothing for longer than it waits quietly.
    job = echo(range(2), {"silent": 2.5}, worker_wait=0.5)
    real = SqliteScheduler.workers
    monkeypatch.setattr(SqliteScheduler, "workers",
                        lambda self: [] if job.id and self.status(job.id)["distributed"] > 0 else real(self))
    with attached_worker(store, ["echo"]):
        assert list(job.exec(local=False, timeout=120)) == [0, 1]


def test_an_attached_worker_that_cannot_run_the_job_does_not_cut_worker_wait_short(store):
    """Such a worker marks the job unschedulable within seconds; the deployer gave up then, whatever
    job.worker_wait said (None: wait for ever). It waits worker_wait, and a worker that can run the
    job and attaches meanwhile runs it."""
    job = compute.for_([1, 2], "function(i){ progress(); return i * 3 }", worktime="map-basic", worker_wait=None)
    ended: list = []
    thread = threading.Thread(target=lambda: ended.append(job.exec(local=False, timeout=120)))
    with attached_worker(store, ["echo"]) as s:
        thread.start()
        deadline = time.monotonic() + 60

        def judged() -> bool:
            return job.id is not None and any(e["type"] == "unschedulable" for _, e in s.events(job.id, 0))

        while not judged():
            assert time.monotonic() < deadline, "the echo worker never judged the job"
            time.sleep(0.1)
        time.sleep(2.5)  # a quiet spell: the deployer looks at the workers again
        assert thread.is_alive() and not ended
        with attached_worker(store, ["map-basic"]):
            thread.join(60)
    assert ended and list(ended[0]) == [3, 6]
    with pytest.raises(compute.RequirementsError, match="no worker has the worktime 'map-basic'"):  # a finite wait ends
        with attached_worker(store, ["echo"]):
            compute.for_([1], "function(i){ progress(); return i }", worktime="map-basic", worker_wait=4).exec(
                local=False, timeout=60)


def test_a_remote_job_still_gives_up_when_a_worker_that_could_run_it_leaves_before_taking_any(store, monkeypatch):
    import itertools

    from dcp_worktimes.scheduler.base import WorkerInfo
    from dcp_worktimes.scheduler.sqlite import SqliteScheduler

    calls = itertools.count()
    seen = WorkerInfo("w1", {"echo": "1.0.0"}, {"echo": True}, time.time())
    monkeypatch.setattr(SqliteScheduler, "workers", lambda self: [seen] if next(calls) == 0 else [])
    with pytest.raises(compute.RequirementsError, match="no worker is attached"):
        echo([1], worker_wait=0.5).exec(local=False, timeout=60)


def test_a_deployer_whose_store_stops_answering_says_so_and_carries_on_when_it_is_back(store, caplog, monkeypatch):
    """Reading the job's events fails for a while (an injected StoreUnavailable, as Redis gone or
    an I/O error raises): exec() says the store is failing, keeps trying, and returns every result."""
    import logging

    from dcp_worktimes.scheduler import StoreUnavailable
    from dcp_worktimes.scheduler.sqlite import SqliteScheduler

    real = SqliteScheduler.events
    failing_until = [0.0]

    def events(self, job_id, after=0, **kw):
        if failing_until[0] == 0.0:
            failing_until[0] = time.monotonic() + 1.0
        if time.monotonic() < failing_until[0]:
            raise StoreUnavailable(f"the job store {self.url} is unreachable (injected)")
        return real(self, job_id, after, **kw)

    monkeypatch.setattr(SqliteScheduler, "events", events)
    caplog.set_level(logging.WARNING, logger="dcp_worktimes.compute")
    assert echo(range(20)).exec(timeout=60) == list(range(20))
    said = [r.getMessage() for r in caplog.records]
    assert any("the job store is failing" in m and "unreachable (injected)" in m for m in said), said
    assert any("answers again" in m for m in said), said


def test_a_result_stored_deeper_than_it_can_be_read_back_fails_alone(store):
    # msgpack packs an empty list one level deeper than it unpacks (1025 levels): such a result was
    # stored, and exec() then raised for the whole job, every other result lost; its result event
    # broke the listeners' loop too.
    # (1025: a lone surrogate beside the deep value: packed another way, and checked all the same)
    work = "n => { let v = []; for (let i = 0; i < Math.min(n, 1024); i++) v = [v]; if (n > 1024) v.push('\\ud800'); return n ? v : 0 }"
    job = compute.for_([0, 1024, 0, 1025], work, worktime="map-basic")
    errors: list = []
    job.on("error", errors.append)
    out = job.exec(errors="return")
    assert out[0] == 0 and out[2] == 0
    for bad in (out[1], out[3]):
        assert bad.code == "EUNSERIALIZABLE" and "nested more than 1024 levels" in bad.message  # said by the evaluator
    assert sorted(e["sliceNumber"] for e in errors) == [1, 3]
    assert job.status()["failed"] == 2


CONCURRENT_FIRST_JOBS = """
import threading, traceback
from dcp_worktimes import compute
W = "function (i) { progress(); return i * 2 }"
got = []
def run():
    try:
        got.append(list(compute.for_([1, 2, 3], W).exec()))
    except Exception as e:
        got.append(str(e))
        traceback.print_exc()
threads = [threading.Thread(target=run) for _ in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(got, list(compute.for_([4], W).exec()))
"""


@pytest.mark.parametrize("engine", ["v8", "quickjs"])
def test_a_fresh_process_s_first_jobs_may_start_together(tmp_path, engine):
    # Both failed, "this machine cannot run map-basic jobs", and so did every later map-basic job
    # of that process: the two first probes ran at once, the deno package's first read of
    # sysconfig is not thread-safe, and the failed probe was cached.
    import os
    import subprocess
    import sys

    from dcp_worktimes.worktimes.map_basic.engine import missing

    if missing(engine):
        pytest.skip(missing(engine))
    env = {**os.environ, "DCP_SCHEDULER": f"sqlite:///{tmp_path}/jobs.db", "DCP_WORKTIMES_JS_ENGINE": engine,
           "DCP_PROGRESS": "0"}
    out = subprocess.run([sys.executable, "-c", CONCURRENT_FIRST_JOBS], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "[[2, 4, 6], [2, 4, 6]] [8]", out.stderr[-2000:]


@pytest.mark.parametrize("requirements, engine", [
    ({"engine": {"quickjs": True}}, "quickjs"), ({"engine": {"v8": False}}, "quickjs"),
    ({"engine": {"v8": True}}, "v8"), ({"engine": {"quickjs": False}}, "v8"),
])
def test_exec_here_runs_the_engine_the_requirements_ask_for(store, monkeypatch, requirements, engine):
    # README: a job "can require or refuse" engine.v8 / engine.quickjs. On a machine with both,
    # exec() failed EREQUIREMENTS for the one that is not the default.
    from dcp_worktimes.worktimes.map_basic.engine import missing

    for name in ("v8", "quickjs"):
        if missing(name):
            pytest.skip(missing(name))
    monkeypatch.delenv("DCP_WORKTIMES_JS_ENGINE", raising=False)
    # each engine words this TypeError its own way
    job = compute.for_([1], "function (i) { try { null.x } catch (e) { return e.message } }", requirements=requirements)
    said = {"v8": "Cannot read properties of null (reading 'x')", "quickjs": "cannot read property 'x' of null"}
    assert job.exec() == [said[engine]]


def test_an_engine_set_in_the_environment_stays_and_the_error_says_what_would_run(store, monkeypatch):
    from dcp_worktimes.worktimes.map_basic.engine import missing

    for name in ("v8", "quickjs"):
        if missing(name):
            pytest.skip(missing(name))
    monkeypatch.setenv("DCP_WORKTIMES_JS_ENGINE", "v8")
    job = compute.for_([1], "function (i) { return i }", requirements={"engine": {"quickjs": True}})
    with pytest.raises(compute.RequirementsError, match="it would run with DCP_WORKTIMES_JS_ENGINE=quickjs "
                                                        r"\(set here to v8\)"):
        job.exec()


def test_a_job_deleted_while_exec_waits_raises_job_cancelled_saying_so(store):
    # `dcp-worker jobs --delete ID --force` under a waiting exec(): it crashed with ENOJOB "no job
    # ... list jobs with dcp-worker jobs" from inside the follower.
    job = echo(list(range(200)), {"sleep": 0.05}, cores=1)

    def delete(ev) -> None:
        if ev.sliceNumber == 0:
            with open_scheduler(store) as s:
                s.cancel(job.id, "deleted by its owner")
                s.delete_job(job.id)

    job.on("result", delete)
    with pytest.raises(compute.JobCancelled, match="is gone from the job store while this process waited for it: deleted"):
        job.exec()


def test_a_cancel_while_a_stream_s_first_batch_is_read_is_kept(store):
    # exec() reads a stream's first batch before the job has an id; a cancel() then set a flag
    # nobody looked at again, and the job ran to its end.
    def slow():
        for i in range(3):
            yield i
            time.sleep(0.3)
        time.sleep(3)
        yield 99

    job = echo(slow(), cores=1)
    threading.Timer(0.5, job.cancel, args=("changed my mind",)).start()
    with pytest.raises(compute.JobCancelled, match="changed my mind") as info:
        job.exec()
    r = info.value.results  # what it had read, each in its place: none ran
    assert len(r) >= 2 and all(isinstance(v, compute.SliceFailed) and v.code == "ECANCELLED" for v in r)


def test_a_cancelled_stream_s_slices_that_never_ran_are_marked_too():
    # With no total (a stream cut short), the handle grew with its results and slices that never
    # ran stayed None.
    from types import SimpleNamespace

    from dcp_worktimes.compute.results import collect
    from dcp_worktimes.values import pack

    batch = SimpleNamespace(numbers=[0, 1, 4], oks=[True] * 3, values=[pack(0), pack(None), pack(40)], errors=[None] * 3)
    r = collect([batch], None, None, "j", unfinished="never ran")
    assert r[:2] == [0, None] and r[4] == 40 and [f.slice_number for f in r.failures] == [2, 3]
    assert r[2] is r.failures[0] and r[2].code == "ECANCELLED"


def test_a_slow_generators_inputs_run_as_they_come():
    # Stream inputs went to the store 1000 at a time: a generator taking seconds per item deployed
    # nothing, and ran nothing, until it was exhausted.
    state = {"done": False, "first_result_while_generating": None}

    def inputs():
        for i in range(8):
            time.sleep(0.4)
            yield i
        state["done"] = True

    job = compute.for_(inputs(), "", worktime="echo")
    job.on("result", lambda ev: state.setdefault("first", state["done"]))
    assert job.exec(progress=False, timeout=120) == list(range(8))
    assert state["first"] is False, "no result came before the generator ended"


def test_a_datum_before_a_long_pause_of_its_generator_is_not_held_back():
    # A datum waited in its batch until the generator's next one came: a burst, then a pause, and
    # the burst waited out the pause (a generator that waits for a result never got one).
    results: dict = {}
    answered = threading.Event()
    waited: list[bool] = []

    def inputs():
        yield 1
        yield 2
        waited.append(answered.wait(15))  # yields its last input once the first results are back
        yield 3

    job = compute.for_(inputs(), "", worktime="echo")

    def on_result(ev):
        results[ev.sliceNumber] = ev.result
        if len(results) >= 2:
            answered.set()

    job.on("result", on_result)
    assert job.exec(progress=False, timeout=120) == [1, 2, 3]
    assert waited == [True], "the first inputs did not run until the generator gave up waiting"


def test_exec_again_after_unusable_work_raises_the_same_work_error(store):
    # The second exec() found the job cancelled and raised JobCancelled.
    job = compute.for_(range(3), "function(i){ progress(); return i", worktime="map-basic", cores=1)
    for _ in range(2):
        with pytest.raises(WorkError, match="the work cannot be used") as info:
            job.exec()
        assert info.value.code == "EBADWORK"
