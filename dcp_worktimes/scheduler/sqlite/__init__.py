"""The embedded scheduler: one SQLite file (WAL mode) shared by the deployer and local workers.

``SqliteScheduler`` is the ``Scheduler`` interface over four parts, each in its own module:

* ``schema.py``: the tables (and why they are shaped so), opening a store, transactions;
* ``store.py``: the state and the steps every write shares (events, final reports, re-queueing,
  finishing and cancelling a job), with the job's row as a named record (``JobRow``);
* ``leases.py``: the lease engine (leasing runs of slices, exactly-once reports, expiry);
* ``reads.py``: the read side (events, results, status, listings);
* ``applications.py``: published applications and the categories workers serve.

Every write is one ``BEGIN IMMEDIATE`` transaction per batch (workers lease and report in
batches). A worker on this host whose process is gone loses its leases at once instead of after
lease expiry.

>>> s = SqliteScheduler(":memory:")        # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any, Iterator, Mapping
from ...inputs import input_set_from_description
from ...values import pack
from ..base import (
    ApplicationRecord,
    CANCELLED,
    FINAL_STATES,
    RUNNING,
    UNSCHEDULABLE,
    JobRecord,
    Lease,
    Scheduler,
    SchedulerError,
    Report,
    ResultBatch,
    WorkerInfo,
    check_payment,
    validate_job,
)
from ..matching import unschedulable_reason
from ..urls import sqlite_url
from ..wake import Waiter
from .applications import Applications
from .leases import LeaseEngine
from .reads import Reads
from .schema import HOST, PENDING, QUEUED
from .store import Store

__all__ = ["SqliteScheduler"]


def _file_identity(path: str) -> tuple[int, int] | None:
    """The file at ``path`` as (device, inode); ``None`` for none (or a private in-memory store)."""
    if path == ":memory:":
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class SqliteScheduler(Scheduler):
    """``Scheduler`` on one SQLite file; safe across threads and processes of one machine."""

    #: How often lease() checks jobs this worker cannot run for being unschedulable.
    SCHEDULABLE_INTERVAL = 2.0
    #: A job nobody can run is declared unschedulable after this many seconds.
    SCHEDULABLE_GRACE = 3.0

    def __init__(self, path: str, *, read_only: bool = False) -> None:
        """``read_only``: open an existing store for reading only (listing a store on a full or
        read-only disk); every write then raises ``StoreUnavailable``."""
        self.path = path
        self._store = Store(path, read_only=read_only)
        self._waiter = Waiter(self._store.wake)
        self._leases = LeaseEngine(self._store)
        self._reads = Reads(self._store)
        self._apps = Applications(self._store)
        self._last_check = 0.0
        self._closed = False
        self._identity = _file_identity(path)

    def __repr__(self) -> str:
        return f"<SqliteScheduler {self.path}>"

    def replaced(self) -> str | None:
        if self._identity is None:
            return None
        now = _file_identity(self.path)
        if now == self._identity:
            return None
        happened = "was deleted" if now is None else "was replaced by another file"
        return f"the job store {self.path} {happened} while it was open here"

    @property
    def url(self) -> str | None:
        return None if self.path == ":memory:" else sqlite_url(os.path.abspath(self.path))

    # -- deployer side --------------------------------------------------------------------------
    def submit(self, job: JobRecord) -> None:
        validate_job(job)
        store = self._store
        described = job.input.get("kind") != "stream"
        total = job.total
        if described:
            try:
                inp = store.slicer.inputs[job.id] = input_set_from_description(job.input)
            except (TypeError, ValueError, KeyError) as e:
                raise SchedulerError(f"job {job.id}: unusable input description {job.input!r}: {e}") from None
            real = len(inp)
            if total is not None and total != real:
                raise SchedulerError(f"job {job.id}: total={total} but its input has {real} slices; leave total=None")
            total = real
        job.created = job.created or time.time()
        job.total = total
        with store.tx():
            if store.db.execute("SELECT 1 FROM jobs WHERE id = ?", (job.id,)).fetchone():
                raise SchedulerError(f"a job with id {job.id!r} already exists in {self.path}; resume it instead of "
                                     "submitting again")
            store.db.execute(
                "INSERT INTO jobs (id, record, payment, created, status, total, described) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job.id, pack(job.to_dict()), float(job.payment_per_slice), job.created, RUNNING, total, int(described)),
            )
            store.append_events(job.id, [{"type": "accepted", "id": job.id}, {"type": "readyStateChange", "state": "deployed"}])
            if total == 0:
                store.maybe_finish(job.id)
        store.jobs[job.id] = JobRecord.from_dict(job.to_dict())
        store.notify()

    def add_slices(self, job_id: str, items: list[tuple[int, bytes]]) -> None:
        if not items:
            return
        store = self._store
        with store.tx():
            row = store.job_row(job_id)
            if row.described:
                raise SchedulerError(f"job {job_id} slices its input from a description; add_slices is for stream inputs")
            if row.total is not None:
                raise SchedulerError(f"job {job_id}: input already closed with {row.total} slices; cannot add more")
            if row.status in FINAL_STATES:
                return
            # Stream slices are queued rows that leasing walks in order like a range (no per-slice
            # update when leased); their rows stay, so adding one again is ignored. A slice numbered
            # below the cursor (added out of order) is queued as pending instead.
            rows = [(job_id, int(n), QUEUED if n >= row.next_slice else PENDING, bytes(d)) for n, d in items]
            before = store.db.total_changes
            store.db.executemany("INSERT OR IGNORE INTO slices (job_id, n, state, datum) VALUES (?, ?, ?, ?)",
                                 [r for r in rows if r[2] == QUEUED])
            queued = store.db.total_changes - before
            late = [r for r in rows if r[2] == PENDING]
            cur = store.db.executemany("INSERT OR IGNORE INTO slices (job_id, n, state, datum) VALUES (?, ?, ?, ?)", late)
            store.db.execute("UPDATE jobs SET added = added + ?, pending = pending + ? WHERE id = ?",
                             (queued, cur.rowcount if late else 0, job_id))
        store.notify()

    def close_input(self, job_id: str, total: int) -> None:
        store = self._store
        with store.tx():
            row = store.job_row(job_id)
            if row.total is not None and row.total != total:
                raise SchedulerError(f"job {job_id} already has {row.total} slices; close_input({total}) disagrees")
            store.db.execute("UPDATE jobs SET total = ? WHERE id = ?", (int(total), job_id))
            store.db.execute("DELETE FROM feed_leases WHERE job_id = ?", (job_id,))  # fed in full: nothing to expire
            store.maybe_finish(job_id)
        store.notify()

    def keep_feeding(self, job_id: str, seconds: float, *, watch_caller: bool = False) -> None:
        from ...runner.isolation import started  # here: the runner's modules are no deployer's start-up cost

        me = (HOST, os.getpid(), started(os.getpid())) if watch_caller else (None, None, None)
        store = self._store
        with store.tx():
            row = store.job_row(job_id)  # UnknownJob for a bad id
            if row.described or row.total is not None or row.status in FINAL_STATES:
                return  # nothing left to feed: a row now would outlive the job
            store.db.execute(
                "INSERT INTO feed_leases (job_id, expires, host, pid, started) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(job_id) DO UPDATE SET expires = excluded.expires, host = excluded.host, "
                "pid = excluded.pid, started = excluded.started",
                (job_id, time.time() + float(seconds), *me),
            )

    def events(self, job_id: str, after: int = 0, *, wait: float = 0.0, limit: int | None = None,
               results: bool = True) -> list[tuple[int, dict]]:
        return self._reads.events(job_id, after, wait, limit, results)

    def result_batches(self, job_id: str) -> Iterator[ResultBatch]:
        return self._reads.result_batches(job_id)

    def get_job(self, job_id: str) -> JobRecord:
        return self._reads.get_job(job_id)

    def status(self, job_id: str) -> dict:
        return self._reads.status(job_id)

    def list_jobs(self) -> list[JobRecord]:
        return self._reads.list_jobs()

    def job_summaries(self) -> list[dict]:
        return self._reads.job_summaries()

    def set_payment(self, job_id: str, payment_per_slice: float) -> None:
        payment = check_payment(payment_per_slice)
        store = self._store
        with store.tx():
            rec = replace(store.record(job_id), payment_per_slice=payment)  # UnknownJob for a bad id
            store.db.execute("UPDATE jobs SET payment = ?, record = ? WHERE id = ?", (payment, pack(rec.to_dict()), job_id))
            store.jobs[job_id] = rec
        store.notify()

    def cancel(self, job_id: str, reason: str = "cancelled by the deployer") -> None:
        with self._store.tx():
            self._store.cancel(job_id, reason)
        self._store.notify()

    def delete_job(self, job_id: str) -> None:
        self.cancel(job_id, "deleted")
        store = self._store
        with store.tx():
            for table, column in (("events", "job_id"), ("results", "job_id"), ("slices", "job_id"),
                                  ("leases", "job_id"), ("feed_leases", "job_id"), ("jobs", "id")):
                store.db.execute(f"DELETE FROM {table} WHERE {column} = ?", (job_id,))
        store.forget(job_id)

    # -- worker side ----------------------------------------------------------------------------
    def lease(
        self, worker_id: str, worktimes: dict[str, str], capabilities: dict, max_slices: int, lease_seconds: float,
        *, jobs: list[str] | None = None, pid: int | None = None, categories: list[str] | None = None,
    ) -> list[Lease]:
        if categories is not None:
            self._apps.serve(worker_id, list(categories))
        leases, unmatched = self._leases.lease(worker_id, worktimes, capabilities, max_slices, lease_seconds, jobs, pid,
                                               categories)
        now = time.time()
        if unmatched and now - self._last_check >= self.SCHEDULABLE_INTERVAL:
            self._last_check = now
            for job_id in unmatched:
                self.check_schedulable(job_id, grace=self.SCHEDULABLE_GRACE)
        return leases

    def heartbeat(self, worker_id: str, lease_ids: list[str], lease_seconds: float,
                  unstarted: Mapping[str, list[int]] | None = None) -> list[str]:
        return self._leases.heartbeat(worker_id, lease_ids, lease_seconds, unstarted)

    def report(self, reports: list[Report]) -> None:
        self._leases.report(reports)

    def return_slices(self, leases: list[Lease]) -> None:
        self._leases.return_slices(leases)

    def post_events(self, job_id: str, events: list[dict]) -> None:
        if not events:
            return
        store = self._store
        with store.tx():
            status = store.status_or_none(job_id)
            if status is None or status == CANCELLED:
                return
            store.append_events(job_id, events)
        store.notify()

    def wait_for_work(self, timeout: float) -> bool:
        # Wakes on commits of this process; other processes' commits are seen at the timeout.
        return self._waiter.wait(timeout)

    def wake_waiters(self) -> None:
        self._store.notify()

    def workers(self) -> list[WorkerInfo]:
        live = self._reads.workers()
        served = self._apps.served() if live else {}
        for w in live:
            w.categories = served.get(w.id)
        return live

    def leave(self, worker_id: str) -> None:
        """The worker is stopping: forget it (its unfinished leases should be returned first)."""
        with self._store.tx():
            self._store.db.execute("DELETE FROM workers WHERE id = ?", (worker_id,))
            self._apps.forget_worker(worker_id)

    # -- applications ---------------------------------------------------------------------------
    def publish_application(self, app: ApplicationRecord) -> None:
        self._apps.publish(app)

    def get_application(self, name: str, version: str | None = None) -> ApplicationRecord:
        return self._apps.get(name, version)

    def list_applications(self) -> list[ApplicationRecord]:
        return self._apps.list()

    def check_schedulable(self, job_id: str, grace: float = 0.0) -> str | None:
        store = self._store
        with store.lock:
            rec = store.record(job_id)
            row = store.job_row(job_id)
            (created,) = store.db.execute("SELECT created FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row.status in FINAL_STATES:
            return None
        reason = unschedulable_reason(rec, self.workers(), self.url or "sqlite://:memory:")
        if reason is None or time.time() - created < grace:
            return None
        with store.lock:
            # A deployer asks every few quiet seconds: answer an unchanged verdict with a read,
            # and take the write lock only to record a new one.
            row = store.job_row(job_id)
            if row.status in FINAL_STATES:
                return None
            if row.status == UNSCHEDULABLE and row.reason == reason:
                return reason
            with store.tx():
                row = store.job_row(job_id)
                if row.status in FINAL_STATES:
                    return None
                if row.status != UNSCHEDULABLE or row.reason != reason:
                    store.db.execute("UPDATE jobs SET status = ?, reason = ? WHERE id = ?", (UNSCHEDULABLE, reason, job_id))
                    store.append_events(job_id, [{"type": "unschedulable", "reason": reason}])
        store.notify()
        return reason

    def reuse_token(self) -> Any:
        if self._closed or self._store.read_only or self.path == ":memory:":  # a private store is the job's own
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        # The file's identity, not its size or time: other processes (workers) write to it too.
        return st.st_dev, st.st_ino

    def close(self) -> None:
        with self._store.lock:
            if not self._closed:
                self._closed = True
                self._store.db.close()

