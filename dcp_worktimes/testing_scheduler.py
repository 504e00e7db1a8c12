"""Scheduler conformance suite: every scheduler backend subclasses it (fsspec style).

::

    # tests/test_scheduler_mybackend.py
    import pytest
    from dcp_worktimes.testing_scheduler import SchedulerConformance

    class TestMyBackend(SchedulerConformance):
        @pytest.fixture
        def scheduler(self, tmp_path):
            s = MyBackend(tmp_path / "store")
            yield s
            s.close()

        @pytest.fixture
        def reopen(self, scheduler, tmp_path):          # optional: durability checks
            return lambda: MyBackend(tmp_path / "store")

The suite drives the ``Scheduler`` interface directly (no evaluators), so it is fast and checks
the contract of ``dcp_worktimes.scheduler.base``: leases and their expiry, exactly-once results,
retries, payment order, matching and unschedulable jobs, streams, cancellation, the event log,
applications (publishing, versions, ownership) and the categories workers serve.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pytest

from .inputs import input_set
from .limits import Limits
from .scheduler.base import (
    AppFunction,
    ApplicationRecord,
    ApplicationRefused,
    JobRecord,
    Lease,
    Report,
    Scheduler,
    SchedulerError,
    UnknownApplication,
    UnknownJob,
    feed_lost_reason,
)
from .values import MAX_DEPTH, Undecodable, pack, unpack
from .worktime import JobSpec

ECHO = {"echo": "1.0.0"}


def make_job(job_id: str, n: int = 10, *, worktime: str = "echo", stream: bool = False, **kw: Any) -> JobRecord:
    """A job over ``range(n)`` (described) or, with ``stream=True``, a stream to fill with add_slices."""
    desc = {"kind": "stream"} if stream else input_set({"start": 0, "end": n - 1}).description()
    return JobRecord(id=job_id, spec=JobSpec(id=job_id, worktime=worktime), input=desc, **kw)


@dataclass(frozen=True)
class Slice:
    """One slice of a leased block, as the tests pick slices out of blocks."""

    lease: Lease
    index: int

    @property
    def slice_number(self) -> int:
        return self.lease.numbers[self.index]

    @property
    def datum(self) -> Any:
        return self.lease.datums[self.index]

    @property
    def attempt(self) -> int:
        return self.lease.attempts[self.index]

    @property
    def job_id(self) -> str:
        return self.lease.job_id

    @property
    def lease_id(self) -> str:
        return self.lease.lease_id


def make_app(name: str, version: str, owner: str = "owner-a", *, work: str | bytes = "", categories: list[str] | None = None,
             **functions: AppFunction) -> ApplicationRecord:
    """An application version with one echo function ``f`` (or the ``functions`` given)."""
    fns = functions or {"f": AppFunction(JobSpec(id="", worktime="echo", work=work))}
    return ApplicationRecord(name=name, version=version, owner=owner, functions=fns, categories=categories or [])


def app_job(job_id: str, n: int, categories: list[str]) -> JobRecord:
    """A job built from an application carrying ``categories``."""
    return make_job(job_id, n, application={"name": "app", "version": "1.0.0", "function": "f", "categories": categories})


def split(leases: list[Lease]) -> list[Slice]:
    """The slices of leased blocks, one by one."""
    return [Slice(lease, i) for lease in leases for i in range(len(lease))]


def _by_lease(slices: tuple[Slice, ...]) -> dict[str, list[Slice]]:
    groups: dict[str, list[Slice]] = {}
    for sl in slices:
        groups.setdefault(sl.lease_id, []).append(sl)
    return groups


def ok(*slices: Slice, wall: float = 0.01, cpu: float = 0.005) -> list[Report]:
    """Successful reports echoing each slice's datum (one report per lease)."""
    out = []
    for group in _by_lease(slices).values():
        values = [pack(sl.datum) for sl in group]
        out.append(Report.ok(group[0].lease, [sl.slice_number for sl in group], values, [wall] * len(group),
                             [cpu] * len(group), [len(v) for v in values]))
    return out


def err(*slices: Slice, code: str = "EUNCAUGHT", **extra: Any) -> list[Report]:
    """Failed reports, one error dict per slice."""
    return [Report.failed(group[0].lease, [sl.slice_number for sl in group],
                          [{"code": code, "message": f"boom {code}", **extra} for _ in group])
            for group in _by_lease(slices).values()]


def back(*slices: Slice) -> list[Lease]:
    """The leases of these slices, restricted to them (to give back with ``return_slices``)."""
    return [group[0].lease.part(sl.index for sl in group) for group in _by_lease(slices).values()]


@contextmanager
def serving(worker: Any, timeout: float = 60.0) -> Iterator[threading.Thread]:
    """``worker.run`` on a thread of its own for the ``with`` block, then stopped and joined (for
    up to ``timeout`` s)::

        with serving(Worker(s, ["echo"], cores=1)) as thread:
            s.submit(make_job("j", 10))
    """
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(timeout)


def take(s: Scheduler, worker: str = "w1", worktimes: dict | None = None, caps: dict | None = None,
          max_slices: int = 1000, lease_seconds: float = 30) -> list[Slice]:
    """One ``lease`` call, as slices."""
    return split(s.lease(worker, worktimes or ECHO, caps or {}, max_slices, lease_seconds))


def drain(s: Scheduler, worker: str = "w1", worktimes: dict | None = None, caps: dict | None = None,
          **kw: Any) -> list[Slice]:
    """Lease until nothing is left."""
    out: list[Slice] = []
    while True:
        got = take(s, worker, worktimes, caps, kw.get("max_slices", 1000), kw.get("lease_seconds", 30))
        if not got:
            return out
        out.extend(got)


class SchedulerConformance:
    """Subclass and override the ``scheduler`` fixture (and ``reopen`` for durability checks)."""

    @pytest.fixture
    def scheduler(self) -> Scheduler:
        raise NotImplementedError("override the `scheduler` fixture to yield a fresh, empty backend")

    @pytest.fixture
    def reopen(self) -> Callable[[], Scheduler] | None:
        return None

    # -- jobs -------------------------------------------------------------------------------------
    def test_submit_and_get_job(self, scheduler: Scheduler) -> None:
        job = make_job("j1", 5, payment_per_slice=2.5, requirements={"echo": True}, public={"name": "demo"})
        job.spec.work = b"\x00\xffbinary"
        scheduler.submit(job)
        got = scheduler.get_job("j1")
        assert got.spec.work == b"\x00\xffbinary"
        assert got.total == 5 and got.status == "running"
        assert got.public == {"name": "demo"} and got.payment_per_slice == 2.5
        assert scheduler.status("j1") == {"total": 5, "distributed": 0, "computed": 0, "failed": 0, "status": "running"}
        assert [e["type"] for _, e in scheduler.events("j1")][0] == "accepted"
        assert "j1" in [j.id for j in scheduler.list_jobs()]
        assert scheduler.job_summaries()[0]["id"] == "j1"

    def test_a_stored_datum_that_cannot_be_decoded_is_leased_in_its_place(self, scheduler: Scheduler) -> None:
        # Forged, or stored by a version that did not check: leasing it raised, and every worker
        # that leased the job died (a deployer could keep a whole fleet down).
        scheduler.submit(make_job("deep", stream=True))
        scheduler.add_slices("deep", [(0, pack(1)), (1, b"\x91" * (MAX_DEPTH + 1) + b"\x00"), (2, pack(3))])
        scheduler.close_input("deep", 3)
        datums = {sl.slice_number: sl.datum for sl in drain(scheduler)}
        assert datums[0] == 1 and datums[2] == 3
        assert isinstance(datums[1], Undecodable) and f"nested more than {MAX_DEPTH} levels" in datums[1].error

    def test_work_stored_between_two_waits_wakes_the_next_one(self, scheduler: Scheduler) -> None:
        # A worker is busy (leasing, reporting) between its waits: a job submitted then must not
        # leave the next wait sleeping its whole timeout.
        scheduler.wait_for_work(0.05)
        scheduler.submit(make_job("woken", 2))
        started = time.monotonic()
        assert scheduler.wait_for_work(10.0) is True
        assert time.monotonic() - started < 5.0

    def test_duplicate_and_unknown_jobs(self, scheduler: Scheduler) -> None:
        scheduler.submit(make_job("j1"))
        with pytest.raises(SchedulerError, match="already exists"):
            scheduler.submit(make_job("j1"))
        with pytest.raises(UnknownJob, match="nope"):
            scheduler.get_job("nope")
        with pytest.raises(UnknownJob):
            scheduler.status("nope")

    def test_bad_job_is_refused_with_reason(self, scheduler: Scheduler) -> None:
        with pytest.raises(SchedulerError, match="version range"):
            scheduler.submit(make_job("j1", worktime_range="not a range!"))

    # -- leases and results -------------------------------------------------------------------------
    def test_every_slice_once_with_datums(self, scheduler: Scheduler) -> None:
        scheduler.submit(make_job("j1", 25))
        first = take(scheduler, "w1", ECHO, {}, 10, 30)
        assert len(first) == 10
        rest = drain(scheduler, "w2")
        leases = first + rest
        assert sorted(lease.slice_number for lease in leases) == list(range(25))
        assert all(lease.datum == lease.slice_number for lease in leases)
        assert all(lease.attempt == 1 for lease in leases)
        scheduler.report(ok(*leases, wall=0.25, cpu=0.125))
        results = scheduler.results("j1")
        assert sorted(results) == list(range(25))
        r = results[7]
        assert r.ok and unpack(r.value) == 7 and r.wall_time == 0.25 and r.cpu_time == 0.125 and r.attempt == 1
        assert {results[lease.slice_number].worker for lease in first} == {"w1"}
        assert {results[lease.slice_number].worker for lease in rest} == {"w2"}
        assert r.bytes_in == len(pack(7)) and r.bytes_out == len(pack(7))
        st = scheduler.status("j1")
        assert st["status"] == "complete" and st["computed"] == 25 and st["distributed"] == 25
        types = [e["type"] for _, e in scheduler.events("j1")]
        assert types.count("result") == 25 and types[-1] == "complete"

    def test_duplicate_report_recorded_once(self, scheduler: Scheduler) -> None:
        scheduler.submit(make_job("j1", 3))
        leases = drain(scheduler)
        scheduler.report(ok(*leases))
        scheduler.report(ok(*leases))
        events = [e for _, e in scheduler.events("j1") if e["type"] == "result"]
        assert sorted(e["sliceNumber"] for e in events) == [0, 1, 2]
        assert scheduler.status("j1")["computed"] == 3

    def test_repeated_reports_do_not_use_up_a_lease(self, scheduler: Scheduler) -> None:
        # A confused worker reporting one slice many times must not make the scheduler think the
        # batch is finished (the other slices would then be lost).
        scheduler.submit(make_job("j1", 4))
        l0, l1, l2, l3 = take(scheduler, "w1", ECHO, {}, 4, 30)
        scheduler.report(ok(l0, l0))
        scheduler.report(ok(l0))
        scheduler.report(err(l1, code="ECRASH"))
        scheduler.report(err(l1, code="ECRASH"))  # already back in the queue: ignored
        scheduler.report(ok(l2, l3))
        (again,) = drain(scheduler, "w2")
        assert again.slice_number == 1 and again.attempt == 2
        scheduler.report(ok(again))
        st = scheduler.status("j1")
        assert st["status"] == "complete" and st["computed"] == 4 and st["failed"] == 0

    def test_expired_lease_is_handed_out_again_and_late_result_ignored(self, scheduler: Scheduler) -> None:
        scheduler.submit(make_job("j1", 4))
        old = take(scheduler, "w1", ECHO, {}, 4, lease_seconds=0.2)
        assert take(scheduler, "w2", ECHO, {}, 4, 30) == []  # held by w1
        time.sleep(0.8)
        new = drain(scheduler, "w2")
        assert sorted(lease.slice_number for lease in new) == [0, 1, 2, 3]
        assert all(lease.attempt == 2 for lease in new)
        # The old worker wakes up and reports: ignored, whatever it says.
        scheduler.report([Report.ok(sl.lease, [sl.slice_number], [pack("stale")]) for sl in old])
        scheduler.report(ok(*new))
        results = scheduler.results("j1")
        assert {n: unpack(r.value) for n, r in results.items()} == {0: 0, 1: 1, 2: 2, 3: 3}
        assert scheduler.status("j1")["computed"] == 4

    def test_old_and_new_leases_of_one_slice_are_recorded_once(self, scheduler: Scheduler) -> None:
        # w1 is cut off from the store (a network partition): its lease expires, w2 gets the same
        # slices, then both report, in every order, some of them twice. Only w2's count.
        scheduler.submit(make_job("j1", 3))
        old = take(scheduler, "w1", ECHO, {}, 3, lease_seconds=0.2)
        time.sleep(0.7)
        new = {sl.slice_number: sl for sl in drain(scheduler, "w2")}
        assert sorted(new) == [0, 1, 2] and {sl.attempt for sl in new.values()} == {2}
        stale = {sl.slice_number: Report.ok(sl.lease, [sl.slice_number], [pack("stale")]) for sl in old}
        assert scheduler.heartbeat("w1", [old[0].lease_id], 30) == [old[0].lease_id]  # back: it learns they are gone
        scheduler.report([stale[0]])  # the old lease first ...
        scheduler.report(ok(new[0]))
        scheduler.report(ok(new[1]))  # ... or last
        scheduler.report([stale[1]])
        scheduler.report([stale[2]] + ok(new[2]) + [stale[2]] + ok(new[2]))  # both in one call, twice
        scheduler.report(ok(*new.values()))
        results = scheduler.results("j1")
        assert {n: (unpack(r.value), r.worker, r.attempt) for n, r in results.items()} == \
            {n: (n, "w2", 2) for n in range(3)}
        assert [e["sliceNumber"] for _, e in scheduler.events("j1") if e["type"] == "result"].count(2) == 1
        st = scheduler.status("j1")
        assert st["computed"] == 3 and st["distributed"] == 3 and st["status"] == "complete"

    def test_heartbeat_keeps_lease_and_reports_lost_ones(self, scheduler: Scheduler) -> None:
        scheduler.submit(make_job("j1", 2))
        held = take(scheduler, "w1", ECHO, {}, 1, lease_seconds=0.3)
        lost = take(scheduler, "w1", ECHO, {}, 1, lease_seconds=0.2)
        deadline = time.time() + 1.2  # well past both initial expiries
        while time.time() < deadline:
            # Each beat extends by 1 s: only a stall of a whole second could lose it.
            scheduler.heartbeat("w1", [held[0].lease_id], 1.0)
            time.sleep(0.1)
        # lost[0] expired long ago; held[0] was kept alive.
        again = drain(scheduler, "w2")
        assert [lease.slice_number for lease in again] == [lost[0].slice_number]
        gone = scheduler.heartbeat("w1", [held[0].lease_id, lost[0].lease_id], 30)
        assert gone == [lost[0].lease_id]

    def test_retryable_failure_is_retried_then_final(self, scheduler: Scheduler) -> None:
        scheduler.submit(make_job("j1", 1, max_attempts=2))
        (a,) = take(scheduler, "w1", ECHO, {}, 5, 30)
        scheduler.report(err(a, code="ECRASH"))
        (b,) = take(scheduler, "w1", ECHO, {}, 5, 30)
        assert b.slice_number == 0 and b.attempt == 2
        scheduler.report(err(b, code="ECRASH"))
        assert take(scheduler, "w1", ECHO, {}, 5, 30) == []
        r = scheduler.results("j1")[0]
        assert not r.ok and r.error["code"] == "ECRASH"
        st = scheduler.status("j1")
        assert st["failed"] == 1 and st["status"] == "failed"

    def test_work_error_is_final_at_once(self, scheduler: Scheduler) -> None:
        scheduler.submit(make_job("j1", 2))
        leases = drain(scheduler)
        scheduler.report(err(leases[0], code="EUNCAUGHT", stack="at work (1:1)"))
        scheduler.report(ok(leases[1]))
        assert take(scheduler, "w1", ECHO, {}, 5, 30) == []
        errors = [e for _, e in scheduler.events("j1") if e["type"] == "error"]
        assert errors == [{"type": "error", "sliceNumber": 0, "code": "EUNCAUGHT", "message": "boom EUNCAUGHT",
                           "stack": "at work (1:1)"}]
        assert scheduler.status("j1")["status"] == "failed"

    def test_lost_too_often_fails_with_ecrash(self, scheduler: Scheduler) -> None:
        scheduler.submit(make_job("j1", 1, max_attempts=1))
        take(scheduler, "w1", ECHO, {}, 1, lease_seconds=0.1)
        time.sleep(0.7)
        assert take(scheduler, "w2", ECHO, {}, 1, 30) == []
        r = scheduler.results("j1")[0]
        assert not r.ok and r.error["code"] == "ECRASH" and "max_attempts" in r.error["message"]

    def test_a_lost_lease_charges_only_the_slices_its_worker_may_have_started(self, scheduler: Scheduler) -> None:
        scheduler.submit(make_job("j1", 4))
        first = take(scheduler, "w1", ECHO, {}, 4, lease_seconds=1.0)
        (lid,) = {sl.lease_id for sl in first}
        # w1 says 2 and 3 wait unstarted, then dies: only 0 and 1 may have run.
        assert scheduler.heartbeat("w1", [lid], 1.0, {lid: [2, 3]}) == []
        time.sleep(1.5)
        second = drain(scheduler, "w2", lease_seconds=1.0)
        assert {sl.slice_number: sl.attempt for sl in second} == {0: 2, 1: 2, 2: 1, 3: 1}
        # w2 dies too, having started none by its heartbeat: 0 and 1 come back as they were, but
        # 2 and 3 were spared last time in a row, so they are charged (work that kills workers
        # before a heartbeat tells must still run out of attempts).
        for lease_id, group in _by_lease(tuple(second)).items():
            scheduler.heartbeat("w2", [lease_id], 1.0, {lease_id: [sl.slice_number for sl in group]})
        time.sleep(1.5)
        third = drain(scheduler, "w3")
        assert {sl.slice_number: sl.attempt for sl in third} == {0: 2, 1: 2, 2: 2, 3: 2}
        scheduler.report(ok(*third))
        assert {n: r.attempt for n, r in scheduler.results("j1").items()} == {0: 2, 1: 2, 2: 2, 3: 2}
        assert scheduler.status("j1")["status"] == "complete"

    def test_slices_said_unstarted_once_are_still_lost_for_good_in_the_end(self, scheduler: Scheduler) -> None:
        # Every worker dies right after saying its slice had not started: spared every other
        # time, the slice still fails after max_attempts losses that were charged.
        scheduler.submit(make_job("j1", 1, max_attempts=2))
        for _ in range(4):
            (sl,) = take(scheduler, "w1", ECHO, {}, 1, lease_seconds=1.0)
            scheduler.heartbeat("w1", [sl.lease_id], 1.0, {sl.lease_id: [0]})
            time.sleep(1.5)
        assert take(scheduler, "w2", ECHO, {}, 1, 30) == []
        r = scheduler.results("j1")[0]
        assert not r.ok and r.error["code"] == "ECRASH" and r.attempt == 2

    def test_a_slice_spared_once_stays_marked_when_given_back_in_between(self, scheduler: Scheduler) -> None:
        # Spared, then handed back by a worker that stopped, then lost again unstarted: the loss
        # is charged (the mark goes only with a charged loss), on every backend alike.
        scheduler.submit(make_job("j1", 1))
        (a,) = take(scheduler, "w1", ECHO, {}, 1, lease_seconds=1.0)
        scheduler.heartbeat("w1", [a.lease_id], 1.0, {a.lease_id: [0]})
        time.sleep(1.5)
        (b,) = take(scheduler, "w2", ECHO, {}, 1, 30)
        assert b.attempt == 1  # spared
        scheduler.return_slices(back(b))
        (c,) = take(scheduler, "w3", ECHO, {}, 1, lease_seconds=1.0)
        assert c.attempt == 1  # given back: no attempt used
        scheduler.heartbeat("w3", [c.lease_id], 1.0, {c.lease_id: [0]})
        time.sleep(1.5)
        (d,) = take(scheduler, "w4", ECHO, {}, 1, 30)
        assert d.attempt == 2  # still marked: charged

    def test_returned_slices_come_back_without_using_an_attempt(self, scheduler: Scheduler) -> None:
        scheduler.submit(make_job("j1", 3))
        leases = drain(scheduler)
        scheduler.report(ok(leases[0]))
        scheduler.return_slices(back(*leases[1:]))
        again = drain(scheduler, "w2")
        assert sorted(lease.slice_number for lease in again) == [1, 2]
        assert all(lease.attempt == 1 for lease in again)
        assert all(lease.datum == lease.slice_number for lease in again)
        scheduler.report(ok(*leases[1:]))  # returned: ignored
        scheduler.report(ok(*again))
        assert scheduler.status("j1")["status"] == "complete"

    def test_concurrent_lessees_never_share_a_slice(self, scheduler: Scheduler) -> None:
        scheduler.submit(make_job("j1", 600))
        got: dict[str, list[int]] = {"a": [], "b": [], "c": []}

        def worker(name: str) -> None:
            while True:
                leases = take(scheduler, name, ECHO, {}, 7, 30)
                if not leases:
                    return
                got[name].extend(lease.slice_number for lease in leases)
                scheduler.report(ok(*leases))

        threads = [threading.Thread(target=worker, args=(n,)) for n in got]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        everything = sorted(got["a"] + got["b"] + got["c"])
        assert everything == list(range(600))
        assert scheduler.status("j1")["computed"] == 600

    # -- order and matching -------------------------------------------------------------------------
    def test_higher_payment_leased_first(self, scheduler: Scheduler) -> None:
        scheduler.submit(make_job("cheap", 3, payment_per_slice=0.1))
        scheduler.submit(make_job("rich", 3, payment_per_slice=5.0))
        first = take(scheduler, "w1", ECHO, {}, 3, 30)
        assert {lease.job_id for lease in first} == {"rich"}
        second = take(scheduler, "w1", ECHO, {}, 3, 30)
        assert {lease.job_id for lease in second} == {"cheap"}

    def test_a_new_bid_reorders_leasing(self, scheduler: Scheduler) -> None:
        scheduler.submit(make_job("cheap", 6, payment_per_slice=0.1))
        scheduler.submit(make_job("rich", 6, payment_per_slice=5.0))
        assert {lease.job_id for lease in take(scheduler, "w1", ECHO, {}, 3, 30)} == {"rich"}
        scheduler.set_payment("cheap", 9.0)  # exec(newCost) on a deployed job
        assert {lease.job_id for lease in take(scheduler, "w1", ECHO, {}, 3, 30)} == {"cheap"}
        assert scheduler.get_job("cheap").payment_per_slice == 9.0
        with pytest.raises(UnknownJob):
            scheduler.set_payment("nope", 1.0)
        with pytest.raises(SchedulerError):
            scheduler.set_payment("cheap", -1)

    def test_payment_order_across_jobs_within_one_lease(self, scheduler: Scheduler) -> None:
        scheduler.submit(make_job("old-cheap", 2, payment_per_slice=1.0, created=1000.0))
        scheduler.submit(make_job("new-cheap", 2, payment_per_slice=1.0, created=2000.0))
        scheduler.submit(make_job("rich", 2, payment_per_slice=3.0, created=3000.0))
        blocks = scheduler.lease("w1", ECHO, {}, 5, 30)  # one call spans jobs: best paid, then oldest
        assert [(b.job_id, b.numbers) for b in blocks] == [("rich", [0, 1]), ("old-cheap", [0, 1]), ("new-cheap", [0])]
        (crashed,) = split([blocks[1].part([1])])
        scheduler.report(err(crashed, code="ECRASH"))  # a retry of the cheap old job ...
        scheduler.submit(make_job("richer", 1, payment_per_slice=5.0, created=4000.0))
        again = scheduler.lease("w1", ECHO, {}, 5, 30)  # ... still comes after a better-paid job
        assert [(b.job_id, b.numbers, b.attempts) for b in again] == \
            [("richer", [0], [1]), ("old-cheap", [1], [2]), ("new-cheap", [1], [1])]

    def test_unschedulable_counts_workers_of_every_machine(self, scheduler: Scheduler, reopen: Any) -> None:
        if reopen is None:
            pytest.skip("this backend is not shared between processes or machines")
        machine_b, machine_c = reopen(), reopen()
        try:
            scheduler.submit(make_job("py", 2, worktime="python"))
            assert take(scheduler, "w-a", ECHO, {}, 5, 30) == []  # machine A: echo only
            assert take(machine_b, "w-b", {"map-basic": "1.0.0"}, {}, 5, 30) == []  # machine B: map-basic only
            assert {"w-a", "w-b"} <= {w.id for w in scheduler.workers()} == {w.id for w in machine_b.workers()}
            reason = machine_b.check_schedulable("py")
            assert reason and "python" in reason and scheduler.status("py")["status"] == "unschedulable"
            assert scheduler.check_schedulable("py") == reason  # the same verdict from every machine
            assert [e["type"] for _, e in machine_c.events("py")].count("unschedulable") == 1
            leases = take(machine_c, "w-c", {"python": "1.0.0"}, {}, 5, 30)  # machine C can run it
            assert len(leases) == 2 and scheduler.status("py")["status"] == "running"
            assert machine_b.check_schedulable("py") is None
            scheduler.set_payment("py", 2.0)  # a new bid from one machine is seen by the others
            assert machine_b.get_job("py").payment_per_slice == 2.0
        finally:
            machine_b.close()
            machine_c.close()

    def test_matching_worktime_range_and_requirements(self, scheduler: Scheduler) -> None:
        scheduler.submit(make_job("v2", 1, worktime_range="^2.0.0"))
        scheduler.submit(make_job("gpu", 1, requirements={"machine": {"gpu": True}}))
        scheduler.submit(make_job("nogpu", 1, requirements={"machine": {"gpu": False}}))
        scheduler.submit(make_job("other", 1, worktime="map-basic"))
        plain = drain(scheduler, "w1", ECHO, {})
        assert {lease.job_id for lease in plain} == {"nogpu"}
        gpu = drain(scheduler, "w2", {"echo": "2.1.0"}, {"machine": {"gpu": True}})
        assert {lease.job_id for lease in gpu} == {"v2", "gpu"}
        assert take(scheduler, "w3", {"map-basic": "1.0.0"}, {}, 5, 30)[0].job_id == "other"

    def test_job_nobody_can_run_is_reported(self, scheduler: Scheduler) -> None:
        scheduler.submit(make_job("j1", 2, requirements={"gpu": True}))
        assert take(scheduler, "w1", ECHO, {}, 5, 30) == []
        reason = scheduler.check_schedulable("j1")
        assert reason and "gpu" in reason
        st = scheduler.status("j1")
        assert st["status"] == "unschedulable"
        assert [e for _, e in scheduler.events("j1") if e["type"] == "unschedulable"][0]["reason"] == reason
        # Asked again (a deployer asks every quiet period): the same verdict, no second event.
        assert scheduler.check_schedulable("j1") == reason
        assert [e["type"] for _, e in scheduler.events("j1")].count("unschedulable") == 1
        # A worker that can run it arrives: the job runs again.
        leases = take(scheduler, "w2", ECHO, {"gpu": True}, 5, 30)
        assert len(leases) == 2 and scheduler.status("j1")["status"] == "running"
        assert scheduler.check_schedulable("j1") is None

    def test_no_worker_at_all_is_reported_after_grace(self, scheduler: Scheduler) -> None:
        scheduler.submit(make_job("j1", 2, worktime="nobody-has-this"))
        assert scheduler.check_schedulable("j1", grace=60) is None  # still within the grace period
        reason = scheduler.check_schedulable("j1", grace=0)
        assert reason and ("no worker" in reason or "nobody-has-this" in reason)
        assert scheduler.status("j1")["status"] == "unschedulable"
        assert scheduler.status("j1")["reason"] == reason

    # -- streams, cancel, events ----------------------------------------------------------------------
    def test_stream_input(self, scheduler: Scheduler) -> None:
        scheduler.submit(make_job("s", stream=True))
        scheduler.add_slices("s", [(0, pack("a")), (1, pack(b"\x00\x01"))])
        scheduler.add_slices("s", [(1, pack("dup")), (2, pack({"k": [1, 2]}))])
        leases = drain(scheduler)
        assert {lease.slice_number: lease.datum for lease in leases} == {0: "a", 1: b"\x00\x01", 2: {"k": [1, 2]}}
        scheduler.report(ok(*leases))
        assert scheduler.status("s")["status"] == "running"  # input still open
        scheduler.add_slices("s", [(0, pack("done already")), (3, pack(3.5))])  # slice 0 is not run again
        more = drain(scheduler)
        assert [lease.slice_number for lease in more] == [3]
        scheduler.report(ok(*more))
        scheduler.close_input("s", 4)
        st = scheduler.status("s")
        assert st["status"] == "complete" and st["total"] == 4 and st["distributed"] == 4
        assert unpack(scheduler.results("s")[3].value) == 3.5

    def test_stream_gaps_and_late_numbers(self, scheduler: Scheduler) -> None:
        scheduler.submit(make_job("s", stream=True))
        scheduler.add_slices("s", [(0, pack("a")), (1, pack("b")), (5, pack("f"))])
        first = drain(scheduler)
        assert [(lease.slice_number, lease.datum) for lease in first] == [(0, "a"), (1, "b"), (5, "f")]
        scheduler.add_slices("s", [(3, pack("d")), (2, pack("c"))])  # below what was already handed out
        late = drain(scheduler, "w2")
        assert sorted((lease.slice_number, lease.datum) for lease in late) == [(2, "c"), (3, "d")]
        scheduler.report(ok(*first + late))
        scheduler.close_input("s", 5)
        assert scheduler.status("s")["status"] == "complete"
        assert sorted(scheduler.results("s")) == [0, 1, 2, 3, 5]

    def test_stream_slice_lost_is_leased_again_with_its_datum(self, scheduler: Scheduler) -> None:
        scheduler.submit(make_job("s", stream=True))
        scheduler.add_slices("s", [(0, pack(b"\x00zero")), (1, pack([1]))])
        scheduler.close_input("s", 2)
        take(scheduler, "w1", ECHO, {}, 2, lease_seconds=0.2)
        time.sleep(0.7)
        again = drain(scheduler, "w2")
        assert [(lease.slice_number, lease.datum, lease.attempt) for lease in again] == \
            [(0, b"\x00zero", 2), (1, [1], 2)]
        scheduler.report(ok(*again))
        assert scheduler.status("s")["status"] == "complete"

    # A stream's deployer keeps a feed lease while it sends the input (keep_feeding): one that
    # dies mid-stream leaves a job nothing can finish, which the next lease call's reclaim ends.
    def test_stream_whose_feed_lease_expired_is_cancelled_and_keeps_its_results(self, scheduler: Scheduler) -> None:
        scheduler.submit(make_job("s", stream=True))
        scheduler.keep_feeding("s", 0.3)
        scheduler.add_slices("s", [(0, pack("a")), (1, pack("b")), (2, pack("c"))])
        done, held = take(scheduler, "w1", ECHO, {}, 2, 30)
        scheduler.report(ok(done))
        time.sleep(0.8)  # the deployer is gone: no renewal, no close_input
        assert take(scheduler, "w2") == []  # the reclaim ended the job: slice 2 is not handed out
        reason = feed_lost_reason(3)
        assert "deploy the job again" in reason
        st = scheduler.status("s")
        assert st["status"] == "cancelled" and st["reason"] == reason and st["total"] is None
        assert [e for _, e in scheduler.events("s")][-1] == {"type": "cancel", "reason": reason}
        (summary,) = [j for j in scheduler.job_summaries() if j["id"] == "s"]
        assert summary["status"] == "cancelled" and summary["reason"] == reason
        assert {n: unpack(r.value) for n, r in scheduler.results("s").items()} == {0: "a"}  # computed: kept
        assert scheduler.heartbeat("w1", [held.lease_id], 30) == [held.lease_id]  # its worker drops it
        scheduler.keep_feeding("s", 30)  # a renewal arriving late changes nothing
        assert scheduler.status("s")["status"] == "cancelled"

    def test_stream_whose_feed_lease_is_renewed_is_kept(self, scheduler: Scheduler) -> None:
        scheduler.submit(make_job("s", stream=True))
        deadline = time.monotonic() + 1.5  # three lease lengths: only the renewals keep it
        n = 0
        while time.monotonic() < deadline:
            scheduler.keep_feeding("s", 0.5)
            scheduler.add_slices("s", [(n, pack(n))])
            n += 1
            scheduler.report(ok(*take(scheduler, "w1")))  # every lease call runs the reclaim
            time.sleep(0.1)
        assert scheduler.status("s")["status"] == "running"
        scheduler.add_slices("s", [(n, pack(n))])
        scheduler.close_input("s", n + 1)  # fed in full: its feed lease no longer matters ...
        scheduler.keep_feeding("s", 0.01)  # ... nor does a renewal racing the close
        time.sleep(0.6)
        last = take(scheduler, "w2")
        assert [sl.slice_number for sl in last] == [n] and scheduler.status("s")["status"] == "running"
        scheduler.report(ok(*last))
        assert scheduler.status("s")["status"] == "complete"
        with pytest.raises(UnknownJob):
            scheduler.keep_feeding("nope", 30)

    def test_stream_without_a_feed_lease_never_expires(self, scheduler: Scheduler) -> None:
        # Deployed by a version that had no feed leases (or through the interface without one):
        # nothing says its deployer died, so nothing may end it.
        scheduler.submit(make_job("old", stream=True))
        scheduler.add_slices("old", [(0, pack(0)), (1, pack(1))])
        scheduler.report(ok(*take(scheduler, "w1", max_slices=1)))
        time.sleep(0.7)
        assert [sl.slice_number for sl in take(scheduler, "w2")] == [1]
        assert scheduler.status("old")["status"] == "running"
        scheduler.close_input("old", 2)
        assert scheduler.status("old")["status"] == "running"

    def test_cancel(self, scheduler: Scheduler) -> None:
        scheduler.submit(make_job("j1", 10))
        leases = take(scheduler, "w1", ECHO, {}, 3, 30)
        scheduler.cancel("j1", "enough")
        assert take(scheduler, "w1", ECHO, {}, 10, 30) == []
        scheduler.report(ok(*leases))
        assert scheduler.results("j1") == {}
        assert scheduler.status("j1")["status"] == "cancelled"
        assert scheduler.heartbeat("w1", [leases[0].lease_id], 30) == [leases[0].lease_id]
        assert [e for _, e in scheduler.events("j1")][-1] == {"type": "cancel", "reason": "enough"}

    def test_events_incremental_and_worker_events(self, scheduler: Scheduler) -> None:
        scheduler.submit(make_job("j1", 2))
        seen = scheduler.events("j1")
        after = seen[-1][0]
        assert scheduler.events("j1", after) == []
        scheduler.post_events("j1", [{"type": "console", "level": "log", "message": "hi", "sliceNumber": 0, "same": 1},
                                     {"type": "custom", "name": "partial", "value": b"\x01", "sliceNumber": 0}])
        new = scheduler.events("j1", after)
        assert [e["type"] for _, e in new] == ["console", "custom"] and new[1][1]["value"] == b"\x01"
        assert all(seq > after for seq, _ in new) and new[0][0] < new[1][0]

    def test_events_wait_wakes_up(self, scheduler: Scheduler) -> None:
        scheduler.submit(make_job("j1", 1))
        after = scheduler.events("j1")[-1][0]
        t = threading.Timer(0.2, lambda: scheduler.post_events("j1", [{"type": "custom", "name": "x", "value": 1}]))
        t.start()
        started = time.monotonic()
        got = scheduler.events("j1", after, wait=10)
        assert got and time.monotonic() - started < 5
        assert scheduler.events("j1", got[-1][0], wait=0.1) == []

    def test_workers_are_listed(self, scheduler: Scheduler) -> None:
        take(scheduler, "w-listed", ECHO, {"x": True}, 1, 30)
        ws = {w.id: w for w in scheduler.workers()}
        assert ws["w-listed"].worktimes == ECHO and ws["w-listed"].capabilities == {"x": True}
        scheduler.leave("w-listed")
        assert "w-listed" not in {w.id for w in scheduler.workers()}

    def test_delete_job(self, scheduler: Scheduler) -> None:
        scheduler.submit(make_job("gone", 3))
        scheduler.submit(make_job("kept", 3))
        leases = take(scheduler, "w1", ECHO, {}, 2, 30)
        scheduler.delete_job("gone")
        with pytest.raises(UnknownJob):
            scheduler.status("gone")
        assert [j.id for j in scheduler.list_jobs()] == ["kept"]
        scheduler.report(ok(*[sl for sl in leases if sl.job_id == "gone"]))  # ignored, no crash
        assert scheduler.status("kept")["total"] == 3

    # -- applications -------------------------------------------------------------------------------
    def test_applications_publish_resolve_and_round_trip(self, scheduler: Scheduler) -> None:
        rich = AppFunction(
            JobSpec(id="", worktime="echo", work=b"\x00\xffwork", modules={"lib": "exports.k = 1", "bin": b"\x01"},
                    files={"data/a.bin": b"\x02"}, options={"strict": True}, limits=Limits.parse(wall_time="2s")),
            worktime_range="^1.0.0", requirements={"machine": {"gpu": True}})
        scheduler.publish_application(make_app("vp", "1.0.0"))
        scheduler.publish_application(make_app("vp", "1.2.0", categories=["video", "gpu"], stabilize=rich))
        scheduler.publish_application(make_app("vp", "2.0.0"))
        scheduler.publish_application(make_app("other", "0.1.0", "owner-b"))
        assert scheduler.get_application("vp", "^1.0.0").version == "1.2.0"  # max-satisfying
        assert scheduler.get_application("vp").version == "2.0.0"  # no range: the newest
        assert scheduler.get_application("vp", "1.0.0").version == "1.0.0"
        got = scheduler.get_application("vp", "~1.2")
        assert got.categories == ["video", "gpu"] and got.owner == "owner-a" and got.published > 0
        fn = got.functions["stabilize"]
        assert fn.spec.work == b"\x00\xffwork" and fn.spec.modules == {"lib": "exports.k = 1", "bin": b"\x01"}
        assert fn.spec.files == {"data/a.bin": b"\x02"} and fn.spec.options == {"strict": True}
        assert fn.spec.limits.wall_time == 2.0 and fn.worktime_range == "^1.0.0"
        assert fn.requirements == {"machine": {"gpu": True}}
        listed = [(a.name, a.version) for a in scheduler.list_applications()]
        assert listed == [("other", "0.1.0"), ("vp", "1.0.0"), ("vp", "1.2.0"), ("vp", "2.0.0")]

    def test_a_published_version_never_changes(self, scheduler: Scheduler) -> None:
        scheduler.publish_application(make_app("vp", "1.0.0", work="first"))
        with pytest.raises(ApplicationRefused, match="already published.*new version"):
            scheduler.publish_application(make_app("vp", "1.0.0", work="second"))
        assert scheduler.get_application("vp", "1.0.0").functions["f"].spec.work == "first"
        scheduler.publish_application(make_app("vp", "1.0.1", work="second"))  # an update is a new version
        assert scheduler.get_application("vp", "^1.0.0").functions["f"].spec.work == "second"

    def test_only_the_first_identity_publishes_new_versions(self, scheduler: Scheduler) -> None:
        scheduler.publish_application(make_app("vp", "1.0.0", "alice"))
        with pytest.raises(ApplicationRefused, match="another identity"):
            scheduler.publish_application(make_app("vp", "1.1.0", "mallory"))
        scheduler.publish_application(make_app("vp", "1.1.0", "alice"))
        assert [a.version for a in scheduler.list_applications()] == ["1.0.0", "1.1.0"]

    def test_two_identities_racing_for_a_name_cannot_both_own_it(self, scheduler: Scheduler) -> None:
        outcomes: dict[str, str] = {}

        def publish(owner: str) -> None:
            try:
                for minor in range(5):
                    scheduler.publish_application(make_app("contested", f"1.{minor}.0-{owner}", owner))
                outcomes[owner] = "ok"
            except ApplicationRefused:
                outcomes[owner] = "refused"

        threads = [threading.Thread(target=publish, args=(o,)) for o in ("alice", "bob")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(outcomes.values()) == ["ok", "refused"]
        assert {a.owner for a in scheduler.list_applications()} == {next(o for o, r in outcomes.items() if r == "ok")}

    def test_unknown_application_or_version_says_what_exists(self, scheduler: Scheduler) -> None:
        with pytest.raises(UnknownApplication, match="no application named 'vp'"):
            scheduler.get_application("vp", "^1.0.0")
        scheduler.publish_application(make_app("vp", "1.0.0"))
        scheduler.publish_application(make_app("vp", "1.3.0"))
        with pytest.raises(UnknownApplication, match=r"no version within '\^2.0.0'; published: 1.0.0, 1.3.0"):
            scheduler.get_application("vp", "^2.0.0")

    def test_bad_applications_are_refused_with_reason(self, scheduler: Scheduler) -> None:
        with pytest.raises(SchedulerError, match="semver"):
            scheduler.publish_application(make_app("vp", "1.0"))
        with pytest.raises(SchedulerError, match="no functions"):
            scheduler.publish_application(ApplicationRecord("vp", "1.0.0", {}, "alice"))
        assert scheduler.list_applications() == []

    def test_workers_serve_only_their_categories(self, scheduler: Scheduler) -> None:
        scheduler.submit(app_job("video", 3, ["video"]))
        scheduler.submit(app_job("audio", 3, ["audio", "fx"]))
        scheduler.submit(make_job("plain", 3))
        got = scheduler.lease("w-video", ECHO, {}, 100, 30, categories=["video"])
        assert {lease.job_id for lease in got} == {"video"}
        got = scheduler.lease("w-fx", ECHO, {}, 100, 30, categories=["fx", "photo"])
        assert {lease.job_id for lease in got} == {"audio"}
        assert scheduler.lease("w-none", ECHO, {}, 100, 30, categories=["photo"]) == []
        got = scheduler.lease("w-any", ECHO, {}, 100, 30)  # no categories: every job
        assert {lease.job_id for lease in got} == {"plain"}
        served = {w.id: w.categories for w in scheduler.workers()}
        assert served["w-video"] == ["video"] and served["w-fx"] == ["fx", "photo"] and served["w-any"] is None
        assert scheduler.get_job("audio").application["categories"] == ["audio", "fx"]

    def test_a_job_no_worker_serves_the_category_of_is_unschedulable(self, scheduler: Scheduler) -> None:
        scheduler.submit(app_job("video", 2, ["video"]))
        assert scheduler.lease("w-audio", ECHO, {}, 5, 30, categories=["audio"]) == []
        reason = scheduler.check_schedulable("video")
        assert reason and "categor" in reason and "video" in reason
        assert scheduler.lease("w-video", ECHO, {}, 5, 30, categories=["video"])
        assert scheduler.status("video")["status"] == "running"

    # -- durability ---------------------------------------------------------------------------------
    def test_reopen_keeps_jobs_results_and_leases(self, scheduler: Scheduler, reopen: Any) -> None:
        if reopen is None:
            pytest.skip("backend is not durable")
        scheduler.submit(make_job("j1", 4))
        leases = take(scheduler, "w1", ECHO, {}, 2, 30)
        scheduler.report(ok(leases[0]))
        other = reopen()
        try:
            assert set(other.results("j1")) == {0}
            rest = drain(other, "w2")
            assert sorted(lease.slice_number for lease in rest) == [2, 3]  # slice 1 is still leased
            other.report(ok(*rest))
            scheduler.report(ok(leases[1]))
            assert other.status("j1")["status"] == "complete"
            assert sorted(other.results("j1")) == [0, 1, 2, 3]
        finally:
            other.close()

    def test_reopen_keeps_applications(self, scheduler: Scheduler, reopen: Any) -> None:
        if reopen is None:
            pytest.skip("backend is not durable")
        scheduler.publish_application(make_app("vp", "1.0.0", "alice", categories=["video"]))
        other = reopen()
        try:
            assert other.get_application("vp", "^1").categories == ["video"]
            with pytest.raises(ApplicationRefused):
                other.publish_application(make_app("vp", "1.1.0", "mallory"))
        finally:
            other.close()
