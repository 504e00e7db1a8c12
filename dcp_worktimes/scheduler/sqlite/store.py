"""The store's state and the steps every write shares: reading a job's row, appending events,
recording final reports, re-queueing slices, finishing and cancelling jobs.

Methods whose docstring says *inside a transaction* must run inside ``store.tx()``; the lease
engine (``leases.py``), the read side (``reads.py``) and ``SqliteScheduler`` build on them.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import Any, NamedTuple

from ...recent import Recent
from ...values import pack, unpack
from ..base import CANCELLED, COMPLETE, FAILED, FINAL_STATES, JobRecord, Report, StoreDamaged, UnknownJob, lost_error
from ..slicing import JOBS_CACHED, Slicer
from ..wake import shared
from .schema import DONE, Transaction, open_database


class JobRow(NamedTuple):
    """A job's hot columns."""

    status: str
    total: int | None
    described: int
    next_slice: int
    pending: int
    distributed: int
    computed: int
    failed: int
    reason: str | None
    added: int

    def counts(self) -> dict:
        return {"total": self.total, "distributed": self.distributed, "computed": self.computed, "failed": self.failed}


_JOB_COLUMNS = ", ".join(JobRow._fields)


class Store:
    """One connection (shared by the threads of this process, under ``lock``) and its caches."""

    def __init__(self, path: str, *, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self.db: sqlite3.Connection = open_database(path, read_only=read_only)
        self.lock = threading.RLock()
        # Every store on one file in this process shares a Wake; a private in-memory one its own.
        self.wake = shared(f":memory:{id(self)}" if path == ":memory:" else os.path.abspath(path))
        self.cond = self.wake.cond
        self.jobs: Recent[str, JobRecord] = Recent(JOBS_CACHED)  # the immutable parts of job records
        self.slicer = Slicer()  # datums of described inputs

    def tx(self) -> Transaction:
        return Transaction(self.db, self.lock, self.path)

    def notify(self) -> None:
        self.wake.notify()

    def decode(self, blob: bytes, what: str) -> Any:
        """A stored msgpack blob; ``StoreDamaged`` if it does not decode (bit rot SQLite cannot see)."""
        try:
            return unpack(blob)
        except Exception as e:  # msgpack raises several unrelated types for damaged bytes
            raise self.damaged(what, e) from None

    def decode_record(self, blob: bytes, job_id: str) -> JobRecord:
        try:
            return JobRecord.from_dict(self.decode(blob, f"the record of job {job_id}"))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise self.damaged(f"the record of job {job_id}", e) from None

    def damaged(self, what: str, e: Exception) -> StoreDamaged:
        return StoreDamaged(f"the job store {self.path} is damaged: {what} cannot be decoded ({type(e).__name__}: "
                            f"{e}); move the store away and start a new one, or delete that job with "
                            "`dcp-worker jobs --delete JOB_ID --force`")

    def unknown(self, job_id: str) -> UnknownJob:
        return UnknownJob(f"no job {job_id!r} in the scheduler store {self.path}; list jobs with `dcp-worker jobs`")

    # -- reads usable anywhere (under ``lock``) ---------------------------------------------------
    def record(self, job_id: str) -> JobRecord:
        rec = self.jobs.get(job_id)
        if rec is None:
            row = self.db.execute("SELECT record FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise self.unknown(job_id)
            rec = self.decode_record(row[0], job_id)
            self.jobs[job_id] = rec
        return rec

    def input(self, job_id: str) -> Any:
        return self.slicer.input(job_id, self.record(job_id).input)

    def job_row(self, job_id: str) -> JobRow:
        row = self.db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise self.unknown(job_id)
        return JobRow(*row)

    def status_or_none(self, job_id: str) -> str | None:
        """The job's status, or ``None`` for a job that was deleted (late worker traffic is ignored)."""
        row = self.db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else row[0]

    # -- steps inside a transaction ---------------------------------------------------------------
    def append_events(self, job_id: str, events: list[dict]) -> None:
        """Inside a transaction: give ``events`` the job's next sequence numbers."""
        if not events:
            return
        seq = self.db.execute("SELECT seq FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        self.db.executemany("INSERT INTO events (job_id, seq, event) VALUES (?, ?, ?)",
                            [(job_id, seq + i + 1, pack(ev)) for i, ev in enumerate(events)])
        self.db.execute("UPDATE jobs SET seq = ? WHERE id = ?", (seq + len(events), job_id))

    def record_columns(self, job_id: str, r: Report, keep: list[int], attempts: list[int], worker: str | None) -> None:
        """Inside a transaction: store the outcomes at positions ``keep`` of report ``r`` as final
        (the caller settled them), with their attempts, as one batch row."""
        if not keep:
            return
        if len(keep) == len(r):  # the usual case: the whole report counts; no per-slice copying
            columns = [r.numbers, r.oks, r.values, r.errors, r.walls, r.cpus, r.bytes_in, r.bytes_out, attempts]
            failed = len(keep) - sum(r.oks)
        else:
            columns = [[col[i] for i in keep] for col in (r.numbers, r.oks, r.values, r.errors, r.walls, r.cpus,
                                                          r.bytes_in, r.bytes_out, attempts)]
            failed = len(keep) - sum(columns[1])
        self.record_batch(job_id, columns + [[worker] * len(keep)], failed)

    def record_batch(self, job_id: str, columns: list[list], failed: int) -> None:
        """Inside a transaction: one results row (``schema.RESULT_COLUMNS``) with ``failed`` failures."""
        count = len(columns[0])
        seq = self.db.execute("SELECT seq FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        last = seq + count
        self.db.execute("INSERT INTO results (job_id, last, seq, data) VALUES (?, ?, ?, ?)",
                        (job_id, last, seq + 1, pack(columns)))
        self.db.execute("UPDATE jobs SET computed = computed + ?, failed = failed + ?, seq = ? WHERE id = ?",
                        (count - failed, failed, last, job_id))

    def lost_for_good(self, job_id: str, items: list[tuple[int, int]], max_attempts: int) -> None:
        """Inside a transaction: slices ``(n, attempts)`` lost too often fail with ``ECRASH``."""
        k = len(items)
        errors = [lost_error(n, a, max_attempts) for n, a in items]
        self.record_batch(job_id, [[n for n, _a in items], [False] * k, [None] * k, errors, [0.0] * k, [0.0] * k,
                                   [0] * k, [0] * k, [a for _n, a in items], [None] * k], k)
        self.db.executemany(f"UPDATE slices SET state = {DONE}, datum = NULL, lease_id = NULL WHERE job_id = ? AND n = ?",
                            [(job_id, n) for n, _a in items])

    def requeue(self, job_id: str, items: list[tuple[int, int]], retry: int | None = 1) -> None:
        """Inside a transaction: slices ``(n, attempts so far)`` become pending again (retried
        first). ``retry``: 2 marks them returned unstarted from an expired lease (``schema``), 1
        clears that mark (a loss charged), ``None`` keeps it (given back, a retryable failure)."""
        kept = "MAX(slices.retry, 1)" if retry is None else "excluded.retry"
        cur = self.db.executemany(
            "INSERT INTO slices (job_id, n, state, retry, attempt) VALUES (?, ?, 0, ?, ?) "
            f"ON CONFLICT (job_id, n) DO UPDATE SET state = 0, retry = {kept}, lease_id = NULL, "
            "attempt = excluded.attempt",
            [(job_id, n, retry or 1, a) for n, a in items],
        )
        self.db.execute("UPDATE jobs SET pending = pending + ? WHERE id = ?", (cur.rowcount, job_id))

    def maybe_finish(self, job_id: str) -> bool:
        """Inside a transaction: mark the job complete once every slice has a final report (``True``)."""
        row = self.job_row(job_id)
        if row.status in FINAL_STATES or row.total is None or row.computed + row.failed < row.total:
            return False
        final = COMPLETE if row.failed == 0 else FAILED
        self.db.execute("UPDATE jobs SET status = ? WHERE id = ?", (final, job_id))
        # A final job is never leased again and its input is closed: its slice rows (a stream's
        # datums, retry bookkeeping) are dead weight. Results and counters are stored apart.
        self.db.execute("DELETE FROM slices WHERE job_id = ?", (job_id,))
        self.append_events(job_id, [
            {"type": "status", **row.counts()},
            {"type": "readyStateChange", "state": "complete" if final == COMPLETE else "failed"},
            {"type": "complete", "computed": row.computed, "failed": row.failed},
        ])
        return True

    def status_event(self, job_id: str) -> None:
        """Inside a transaction: the job's counters as a ``status`` event, or its end if it ended."""
        if not self.maybe_finish(job_id):  # a finishing job's status event comes with its end
            self.append_events(job_id, [{"type": "status", **self.job_row(job_id).counts()}])

    def cancel(self, job_id: str, reason: str, code: str | None = None) -> None:
        """Inside a transaction: stop the job (no more leases; late results are ignored).
        ``code``: the error code behind a cancel the scheduler decided (``EBADWORK``)."""
        if self.job_row(job_id).status in FINAL_STATES:
            return
        self.db.execute("UPDATE jobs SET status = ?, reason = ?, pending = 0 WHERE id = ?", (CANCELLED, reason, job_id))
        self.db.execute("DELETE FROM slices WHERE job_id = ?", (job_id,))
        self.db.execute("DELETE FROM leases WHERE job_id = ?", (job_id,))
        self.db.execute("DELETE FROM feed_leases WHERE job_id = ?", (job_id,))
        cancel = {"type": "cancel", "reason": reason, **({"code": code} if code else {})}
        self.append_events(job_id, [{"type": "readyStateChange", "state": "cancelled"}, cancel])

    def forget(self, job_id: str) -> None:
        """The job was deleted: drop what this process cached about it."""
        self.jobs.pop(job_id, None)
        self.slicer.forget(job_id)
