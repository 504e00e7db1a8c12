"""Re-bidding a job (seed-compute-api.txt, example 10 "Altering Price Parameters"): ``exec(newCost)``
on a deployed job updates its bid; called again while the first ``exec()`` runs — from a thread, from
``exec_async``, from one of the job's own event handlers — updates the bid and returns the same
results; the job runs on one set of evaluators and every event is dispatched once."""

from __future__ import annotations

import asyncio
import threading
import time
import warnings

import pytest

from dcp_worktimes import compute
from dcp_worktimes.compute.cost import MARKET_RATE
from dcp_worktimes.scheduler import open_scheduler

SAFE = MARKET_RATE * 1.5  # what compute.safeMarketValue offers per slice
JS = "function(i){ progress(); return i*10 }"


def slow_job(n: int = 60, sleep: float = 0.02, **settings):
    """``n`` echo slices of ``sleep`` s each on one evaluator: long enough to re-bid while it runs."""
    settings.setdefault("cores", 1)
    return compute.for_({"start": 1, "end": n}, f'{{"sleep": {sleep}}}', worktime="echo", **settings)


def computed_by(store: str, job_id: str) -> set[str | None]:
    with open_scheduler(store) as s:
        return {r.worker for r in s.results(job_id).values()}


def test_exec_with_a_new_cost_updates_a_deployed_jobs_bid(store):
    """seed-compute-api.txt, "Altering Price Parameters": g.exec(compute.safeMarketValue) updates the bid."""
    job = compute.for_(2, 5, JS, cores=1)
    job_id = job.deploy(compute.marketValue)
    assert job.exec({"maxPaymentPerSlice": 5}) == [20, 30, 40, 50]
    with open_scheduler(store) as s:
        assert s.get_job(job_id).payment_per_slice == 5


def test_a_second_exec_from_a_thread_rebids_and_gets_the_same_results(store):
    job = slow_job()
    results: dict[str, object] = {}
    statuses = []
    job.on("status", lambda ev: statuses.append(threading.get_ident()))

    def rebid():
        while job.id is None:
            time.sleep(0.01)
        time.sleep(0.2)
        results["second"] = job.exec(compute.safeMarketValue)

    thread = threading.Thread(target=rebid)
    thread.start()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a handler failing inside the job would be a RuntimeWarning
        first = job.exec(compute.marketValue)
    thread.join(60)
    assert first == list(range(1, 61)) and results["second"] == first
    with open_scheduler(store) as s:
        assert s.get_job(job.id).payment_per_slice == pytest.approx(SAFE)
    # One set of evaluators (one local worker) ran the job, and events went to one thread only.
    assert len(computed_by(store, job.id)) == 1
    assert set(statuses) == {threading.get_ident()}


def test_concurrent_exec_async_calls_share_one_run(store):
    job = slow_job(40)

    async def main():
        first = asyncio.create_task(job.exec_async(compute.marketValue))
        while job.id is None:
            await asyncio.sleep(0.01)
        second = asyncio.create_task(job.exec_async(compute.safeMarketValue))
        return await asyncio.gather(first, second)

    a, b = asyncio.run(main())
    assert a == b == list(range(1, 41))
    assert len(computed_by(store, job.id)) == 1
    with open_scheduler(store) as s:
        assert s.get_job(job.id).payment_per_slice == pytest.approx(SAFE)


def test_exec_from_a_status_handler_rebids_without_reentering_handlers(store):
    job = slow_job(40)
    calls: list[int] = []
    depth = [0]
    inner: list[object] = []

    def on_status(ev):
        depth[0] += 1
        try:
            calls.append(depth[0])
            if len(calls) <= 3:
                inner.append(job.exec(compute.safeMarketValue))
        finally:
            depth[0] -= 1

    job.on("status", on_status)
    results = []
    job.on("result", lambda ev: results.append(ev.sliceNumber))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outer = job.exec(compute.marketValue)
    assert outer == list(range(1, 41))
    assert inner and all(r == outer for r in inner)
    assert max(calls) == 1  # a handler never runs inside another handler
    assert sorted(results) == list(range(40))  # every result event dispatched exactly once
    with open_scheduler(store) as s:
        assert s.get_job(job.id).payment_per_slice == pytest.approx(SAFE)


def test_a_local_exec_joining_a_remote_one_runs_the_job_here(store):
    job = slow_job(10, 0.01, worker_wait=60)
    out: dict[str, object] = {}
    thread = threading.Thread(target=lambda: out.setdefault("remote", job.exec(local=False, timeout=60)))
    thread.start()
    while job.id is None:
        time.sleep(0.01)
    assert job.exec(local=True, timeout=60) == list(range(1, 11))
    thread.join(60)
    assert out["remote"] == list(range(1, 11))


def test_the_store_stays_open_until_the_last_exec_returns(store):
    """The bug: both calls shared one connection, and the first to finish closed it under the other."""
    job = slow_job(20, 0.01)
    errors: list[BaseException] = []

    def another():
        try:
            while job.id is None:
                time.sleep(0.005)
            job.exec()
            job.status()  # still usable after both returned
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=another) for _ in range(3)]
    for t in threads:
        t.start()
    assert job.exec() == list(range(1, 21))
    for t in threads:
        t.join(60)
    assert errors == []
    assert job.status()["status"] == "complete"


def test_a_joining_exec_can_time_out_on_its_own(store):
    job = slow_job(50, 0.1)
    caught: list[BaseException] = []

    def first():
        try:
            job.exec()
        except BaseException as e:  # noqa: BLE001
            caught.append(e)

    thread = threading.Thread(target=first)
    thread.start()
    while job.id is None:
        time.sleep(0.01)
    time.sleep(0.1)
    with pytest.raises(TimeoutError, match="cancelled"):
        job.exec(timeout=0.5)
    thread.join(60)
    assert job.status()["status"] == "cancelled"
    # The first exec() learns why its job stopped.
    assert len(caught) == 1 and isinstance(caught[0], compute.JobCancelled) and "timeout=0.5" in str(caught[0])
