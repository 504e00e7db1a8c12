"""The SQLite lease engine on its own: runs and bitmaps, pending rows, exactly-once reports, expiry."""

from __future__ import annotations

import time

import pytest

from dcp_worktimes.inputs import input_set
from dcp_worktimes.scheduler.sqlite import SqliteScheduler
from dcp_worktimes.scheduler.sqlite.leases import HeldLease
from dcp_worktimes.scheduler.sqlite.schema import PENDING
from dcp_worktimes.testing_scheduler import back, err, make_job, ok, take

ECHO = {"echo": "1.0.0"}


@pytest.fixture
def s():
    sched = SqliteScheduler(":memory:")
    yield sched
    sched.close()


def engine(s):
    return s._leases


def lease_rows(s):
    return s._store.db.execute("SELECT id, first, stop, count, done FROM leases ORDER BY first").fetchall()


def test_a_range_is_leased_as_one_run_row_with_a_bitmap(s):
    s.submit(make_job("j", 10))
    (block,) = s.lease("w", ECHO, {}, 4, 30)
    assert block.numbers == [0, 1, 2, 3] and block.datums == [0, 1, 2, 3] and block.attempts == [1, 1, 1, 1]
    (row,) = lease_rows(s)
    assert row[1:] == (0, 4, 4, 0)  # first, stop, count, done: no per-slice rows
    assert s._store.db.execute("SELECT COUNT(*) FROM slices").fetchone()[0] == 0
    slices = take_all(block)
    s.report(ok(slices[1], slices[1]))  # a duplicate in the same report counts once
    assert lease_rows(s)[0][4] == 1 and s.status("j")["computed"] == 1
    s.report(ok(*slices))  # the rest settle the run; the row is gone
    assert lease_rows(s) == [] and s.status("j")["computed"] == 4


def take_all(block):
    from dcp_worktimes.testing_scheduler import split

    return split([block])


def test_held_lease_takes_each_slice_of_its_run_once():
    h = HeldLease(10, 20, 0, "w")
    assert h.take([10, 11, 12]) == [True] * 3  # a contiguous part: one bitmask
    assert h.take([12, 13]) == [False, True]  # 12 again: not fresh
    assert h.take([9, 19, 20]) == [False, True, False]  # outside the run
    assert h.settled == 5


def test_retries_are_leased_before_fresh_slices_with_their_attempt(s):
    s.submit(make_job("j", 6))
    first = take(s, "w", max_slices=2)
    s.report(err(first[1], code="ECRASH"))  # retryable: back to pending
    again = take(s, "w", max_slices=2)
    assert [(sl.slice_number, sl.attempt) for sl in again] == [(1, 2), (2, 1)]
    assert again[0].datum == 1  # a described slice's datum is recomputed, not stored


def test_an_expired_run_puts_its_unsettled_slices_back_and_lost_ones_fail(s):
    s.submit(make_job("j", 3, max_attempts=1))
    leases = take(s, "w", max_slices=3, lease_seconds=0.05)
    s.report(ok(leases[0]))
    time.sleep(0.1)
    engine(s)._last_reclaim = 0.0
    assert take(s, "w2", max_slices=3) == []  # reclaimed: slices 1, 2 lost once = max_attempts
    st = s.status("j")
    assert st["computed"] == 1 and st["failed"] == 2 and st["status"] == "failed"
    errors = {n: r.error for n, r in s.results("j").items() if not r.ok}
    assert set(errors) == {1, 2} and all(e["code"] == "ECRASH" and "lost 1 times" in e["message"] for e in errors.values())


def test_a_late_report_of_an_expired_lease_is_ignored(s):
    s.submit(make_job("j", 1))
    (old,) = take(s, "w", max_slices=1, lease_seconds=0.05)
    time.sleep(0.1)
    engine(s)._last_reclaim = 0.0
    (new,) = take(s, "w2", max_slices=1)
    assert new.attempt == 2 and s._store.db.execute(
        "SELECT state FROM slices WHERE n = 0").fetchone()[0] != PENDING
    s.report(ok(old))  # the first worker comes back too late
    assert s.status("j")["computed"] == 0
    s.report(ok(new))
    assert s.status("j")["computed"] == 1 and s.results("j")[0].attempt == 2


@pytest.mark.parametrize("spec", [
    {"start": -5, "end": 20, "step": 3}, {"start": 10, "end": 0, "step": -2}, {"start": 2**70, "end": 2**70 + 5},
    {"start": 0.5, "end": 3.5, "step": 0.5},
])
def test_leased_datums_are_the_inputs_own(s, spec):
    job = make_job("j")
    job.input = input_set(spec).description()
    s.submit(job)
    inputs = input_set(spec)
    (block,) = s.lease("w", ECHO, {}, 10**6, 30)
    assert block.datums == [inputs.nth(i) for i in range(len(inputs))]
    assert [type(d) for d in block.datums] == [type(inputs.nth(i)) for i in range(len(inputs))]


def test_a_returned_part_of_a_run_comes_back_without_using_an_attempt(s):
    s.submit(make_job("j", 5))
    slices = take(s, "w", max_slices=5)
    s.report(ok(slices[0], slices[4]))
    s.return_slices(back(*slices[1:4]))
    again = take(s, "w2")
    assert [(sl.slice_number, sl.attempt) for sl in again] == [(1, 1), (2, 1), (3, 1)]
    assert lease_rows(s)[-1][1] is None  # leased again as pending rows, not a run
