"""The embedded scheduler: one SQLite file (WAL mode) shared by the deployer and local workers.

Storage, and why it is shaped so:

* ``jobs``: one row per job, the ``JobRecord`` as msgpack plus the hot counters as columns
  (``next_slice``, ``pending``, ``distributed``, ``computed``, ``failed``, ``seq``) so leasing and
  status never scan slices.
* ``leases``: one row per batch handed to a worker (not per slice): its expiry, and either a
  contiguous run ``[first, stop)`` of fresh slices of a range/distribution with a bitmap of the
  ones already settled (those slices never get a slice row: ``next_slice`` walks the
  description), or, for ``first IS NULL``, the slice rows that point at it. Heartbeats extend one
  row per batch. An expired lease is deleted and its unsettled slices become pending rows.
* ``slices``: stream datums (state 3, *queued*: leased in runs by the ``next_slice`` cursor
  exactly like a range, so never updated one by one; the row stays so a slice added twice is
  not run twice), and slices that are pending (retries, returns), leased from pending, or done
  (state 2). Datum NULL for described inputs: recomputed from the description. A job's rows
  are deleted when it reaches a final state.
* ``results``: one row per reported *batch*: the msgpack of its columns (slice numbers, ok flags,
  result bytes as the worker sent them, errors, wall/CPU time, bytes in/out, attempts, worker ids), under the
  per-job sequence numbers ``seq .. last``. A report is recorded only if its slice is still its
  lease's (lease row exists, and the bit is unset or the slice row points at it); the bit or row
  is settled in the same transaction, so every result is recorded exactly once and late reports
  from an old lease are ignored.
* ``events``: the job's event log; ``result`` and ``error`` events are not stored twice but
  expanded from ``results`` in the same per-job sequence.
* ``workers``: live workers (host, pid, worktimes, capabilities). A worker on this host whose
  process is gone loses its leases at once instead of after lease expiry.

Every write is one ``BEGIN IMMEDIATE`` transaction per batch (workers lease and report in
batches), so the host is not the bottleneck.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import replace
from typing import Any

from ..errors import ErrorCode
from ..values import pack, packer, unpack
from .base import (
    CANCELLED,
    COMPLETE,
    FAILED,
    FINAL_STATES,
    RUNNING,
    UNSCHEDULABLE,
    WORKER_TTL,
    JobRecord,
    Lease,
    Scheduler,
    SchedulerError,
    SliceReport,
    UnknownJob,
    WorkerInfo,
    is_retryable,
    unusable_work_reason,
    validate_job,
)
from .matching import worker_can_run

SCHEMA_VERSION = 4
#: Slice row states. QUEUED: a stream slice not leased yet (walked by ``next_slice`` like a range).
PENDING, LEASED, DONE, QUEUED = 0, 1, 2, 3
HOST = socket.gethostname()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    record BLOB NOT NULL,
    payment REAL NOT NULL,
    created REAL NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    total INTEGER,
    described INTEGER NOT NULL,
    next_slice INTEGER NOT NULL DEFAULT 0,
    pending INTEGER NOT NULL DEFAULT 0,
    distributed INTEGER NOT NULL DEFAULT 0,
    computed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL DEFAULT 0,
    added INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, payment DESC, created);
CREATE TABLE IF NOT EXISTS slices (
    job_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    state INTEGER NOT NULL,
    retry INTEGER NOT NULL DEFAULT 0,
    datum BLOB,
    lease_id TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, n)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS slices_pending ON slices(job_id, retry DESC, n) WHERE state = 0;
CREATE INDEX IF NOT EXISTS slices_lease ON slices(lease_id) WHERE state = 1;
CREATE TABLE IF NOT EXISTS leases (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    worker_id TEXT NOT NULL,
    expires REAL NOT NULL,
    first INTEGER,
    stop INTEGER,
    bits BLOB,
    count INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS leases_expiry ON leases(expires);
CREATE INDEX IF NOT EXISTS leases_worker ON leases(worker_id);
CREATE TABLE IF NOT EXISTS results (
    job_id TEXT NOT NULL,
    last INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (job_id, last)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event BLOB NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    host TEXT, pid INTEGER,
    worktimes BLOB, capabilities BLOB,
    last_seen REAL
);
"""

# In-process wake-ups: every SqliteScheduler on the same file in this process shares one
# condition, so a deployer waiting in events() wakes as soon as a local worker commits.
_conditions: dict[str, threading.Condition] = {}
_conditions_lock = threading.Lock()

log = logging.getLogger(__name__)


def _condition(path: str) -> threading.Condition:
    with _conditions_lock:
        return _conditions.setdefault(path, threading.Condition())


class SqliteScheduler(Scheduler):
    """``Scheduler`` on one SQLite file; safe across threads and processes of one machine.

    >>> s = SqliteScheduler(":memory:")        # doctest: +SKIP
    """

    #: How often lease() looks for dead local workers and expired leases (seconds).
    RECLAIM_INTERVAL = 0.5
    #: How often lease() checks jobs this worker cannot run for being unschedulable.
    SCHEDULABLE_INTERVAL = 2.0
    #: A job nobody can run is declared unschedulable after this many seconds.
    SCHEDULABLE_GRACE = 3.0

    def __init__(self, path: str) -> None:
        self.path = path
        if path != ":memory:":
            directory = os.path.dirname(os.path.abspath(path))
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError as e:
                raise SchedulerError(f"cannot create the scheduler directory {directory}: {e}; choose another path with DCP_SCHEDULER=sqlite:///path.db") from None
        self._lock = threading.RLock()
        self._cond = _condition(os.path.abspath(path) if path != ":memory:" else f":memory:{id(self)}")
        try:
            self._db = sqlite3.connect(path, timeout=60.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout = 60000")
            if path != ":memory:":
                mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise SchedulerError(f"{path}: SQLite refused WAL mode ({mode}); put the store on a local disk")
            # NORMAL in WAL mode: a power cut may lose the last commits, never corrupts the store.
            self._db.execute("PRAGMA synchronous = NORMAL")
            with self._tx():
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                if version == 2:
                    self._migrate_from_2()
                    version = 3
                if version == 3:  # format 4 added jobs.added (stream slices queued)
                    self._db.execute("ALTER TABLE jobs ADD COLUMN added INTEGER NOT NULL DEFAULT 0")
                    version = SCHEMA_VERSION
                if version not in (0, SCHEMA_VERSION):
                    raise SchedulerError(
                        f"{path} was written by another version of dcp-worktimes (store format {version}, this one "
                        f"reads {SCHEMA_VERSION}); move it away or choose another store with DCP_SCHEDULER=sqlite:///path.db")
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as e:
            raise SchedulerError(f"cannot open the scheduler store {path}: {e}; is it a dcp-worktimes SQLite file?") from None
        self._jobs: dict[str, JobRecord] = {}  # immutable parts of job records
        self._inputs: dict[str, Any] = {}  # job id -> InputSet built from the description
        self._fast: dict[str, Any] = {}  # job id -> (start, step) of an integer range, or False
        self._last_reclaim = 0.0
        self._last_check = 0.0
        self._closed = False

    def __repr__(self) -> str:
        return f"<SqliteScheduler {self.path}>"

    def _migrate_from_2(self) -> None:
        """Inside the opening transaction: format 2 kept one results row per slice and no lease
        bitmaps; turn each result into a one-slice batch and rebuild the bitmaps."""
        old = self._db.execute(
            "SELECT job_id, n, seq, ok, value, error, wall, cpu, bytes_in, bytes_out, attempt FROM results").fetchall()
        self._db.execute("DROP INDEX IF EXISTS results_seq")
        self._db.execute("DROP TABLE results")
        self._db.execute("ALTER TABLE leases ADD COLUMN bits BLOB")
        for stmt in _SCHEMA.split(";"):
            if stmt.strip():
                self._db.execute(stmt)
        done: dict[str, set[int]] = {}
        for job_id, n, seq, ok, value, error, wall, cpu, bin_, bout, attempt in old:
            done.setdefault(job_id, set()).add(n)
            data = pack([[n], [bool(ok)], [value], [unpack(error) if error else None], [wall or 0.0], [cpu or 0.0],
                         [bin_ or 0], [bout or 0], [attempt or 1]])
            self._db.execute("INSERT INTO results (job_id, last, seq, data) VALUES (?, ?, ?, ?)", (job_id, seq, seq, data))
        for lease_id, job_id, first, stop in self._db.execute(
                "SELECT id, job_id, first, stop FROM leases WHERE first IS NOT NULL").fetchall():
            settled = done.get(job_id, set()) | {n for (n,) in self._db.execute(
                "SELECT n FROM slices WHERE job_id = ? AND n >= ? AND n < ?", (job_id, first, stop))}
            bits = bytearray((stop - first + 7) // 8)
            for n in settled:
                if first <= n < stop:
                    bits[(n - first) >> 3] |= 1 << ((n - first) & 7)
            self._db.execute("UPDATE leases SET bits = ? WHERE id = ?", (bytes(bits), lease_id))

    # -- plumbing -----------------------------------------------------------------------------
    def _tx(self) -> "_Transaction":
        return _Transaction(self)

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _record(self, job_id: str) -> JobRecord:
        rec = self._jobs.get(job_id)
        if rec is None:
            row = self._db.execute("SELECT record FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise UnknownJob(f"no job {job_id!r} in the scheduler store {self.path}; list jobs with `dcp-worker jobs`")
            rec = JobRecord.from_dict(unpack(row[0]))
            self._jobs[job_id] = rec
        return rec

    def _input(self, job_id: str) -> Any:
        inp = self._inputs.get(job_id)
        if inp is None:
            from ..inputs import input_set_from_description

            inp = input_set_from_description(self._record(job_id).input)
            self._inputs[job_id] = inp
        return inp

    def _append_events(self, job_id: str, events: list[dict]) -> None:
        """Inside a transaction: give ``events`` the job's next sequence numbers."""
        if not events:
            return
        seq = self._db.execute("SELECT seq FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        self._db.executemany(
            "INSERT INTO events (job_id, seq, event) VALUES (?, ?, ?)",
            [(job_id, seq + i + 1, pack(ev)) for i, ev in enumerate(events)],
        )
        self._db.execute("UPDATE jobs SET seq = ? WHERE id = ?", (seq + len(events), job_id))

    def _status_or_none(self, job_id: str) -> str | None:
        """The job's status, or ``None`` for a job that was deleted (late worker traffic is ignored)."""
        row = self._db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else row[0]

    def _job_row(self, job_id: str) -> tuple:
        row = self._db.execute(
            "SELECT status, total, described, next_slice, pending, distributed, computed, failed FROM jobs WHERE id = ?",
            (job_id,),
        ).fetchone()
        if row is None:
            raise UnknownJob(f"no job {job_id!r} in the scheduler store {self.path}; list jobs with `dcp-worker jobs`")
        return row

    def _maybe_finish(self, job_id: str) -> bool:
        """Inside a transaction: mark the job complete once every slice has a final report (``True``)."""
        status, total, _d, _n, _p, distributed, computed, failed = self._job_row(job_id)
        if status in FINAL_STATES or total is None or computed + failed < total:
            return False
        final = COMPLETE if failed == 0 else FAILED
        self._db.execute("UPDATE jobs SET status = ? WHERE id = ?", (final, job_id))
        # A final job is never leased again and its input is closed: its slice rows (a stream's
        # datums, retry bookkeeping) are dead weight. Results and counters are stored apart.
        self._db.execute("DELETE FROM slices WHERE job_id = ?", (job_id,))
        self._append_events(
            job_id,
            [
                {"type": "status", "total": total, "distributed": distributed, "computed": computed, "failed": failed},
                {"type": "readyStateChange", "state": "complete" if final == COMPLETE else "failed"},
                {"type": "complete", "computed": computed, "failed": failed},
            ],
        )
        return True

    # -- deployer side --------------------------------------------------------------------------
    def submit(self, job: JobRecord) -> None:
        validate_job(job)
        described = job.input.get("kind") != "stream"
        total = job.total
        if described:
            inp = self._input_for_submit(job)
            real = len(inp)
            if total is not None and total != real:
                raise SchedulerError(f"job {job.id}: total={total} but its input has {real} slices; leave total=None")
            total = real
        job.created = job.created or time.time()
        job.total = total
        with self._lock, self._tx():
            if self._db.execute("SELECT 1 FROM jobs WHERE id = ?", (job.id,)).fetchone():
                raise SchedulerError(f"a job with id {job.id!r} already exists in {self.path}; resume it instead of submitting again")
            self._db.execute(
                "INSERT INTO jobs (id, record, payment, created, status, total, described) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job.id, pack(job.to_dict()), float(job.payment_per_slice), job.created, RUNNING, total, int(described)),
            )
            self._append_events(job.id, [{"type": "accepted", "id": job.id}, {"type": "readyStateChange", "state": "deployed"}])
            if total == 0:
                self._maybe_finish(job.id)
        self._jobs[job.id] = JobRecord.from_dict(job.to_dict())
        self._notify()

    def _input_for_submit(self, job: JobRecord) -> Any:
        from ..inputs import input_set_from_description

        try:
            inp = input_set_from_description(job.input)
        except (TypeError, ValueError, KeyError) as e:
            raise SchedulerError(f"job {job.id}: unusable input description {job.input!r}: {e}") from None
        self._inputs[job.id] = inp
        return inp

    def add_slices(self, job_id: str, items: list[tuple[int, bytes]]) -> None:
        if not items:
            return
        with self._lock, self._tx():
            status, total, described, *_ = self._job_row(job_id)
            if described:
                raise SchedulerError(f"job {job_id} slices its input from a description; add_slices is for stream inputs")
            if total is not None:
                raise SchedulerError(f"job {job_id}: input already closed with {total} slices; cannot add more")
            if status in FINAL_STATES:
                return
            # Stream slices are queued rows that leasing walks in order like a range (no per-slice
            # update when leased); their rows stay, so adding one again is ignored. A slice numbered
            # below the cursor (added out of order) is queued as pending instead.
            cursor = self._db.execute("SELECT next_slice FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
            rows = [(job_id, int(n), QUEUED if n >= cursor else PENDING, bytes(d)) for n, d in items]
            before = self._db.total_changes
            self._db.executemany("INSERT OR IGNORE INTO slices (job_id, n, state, datum) VALUES (?, ?, ?, ?)",
                                 [r for r in rows if r[2] == QUEUED])
            queued = self._db.total_changes - before
            late = [r for r in rows if r[2] == PENDING]
            cur = self._db.executemany("INSERT OR IGNORE INTO slices (job_id, n, state, datum) VALUES (?, ?, ?, ?)", late)
            self._db.execute("UPDATE jobs SET added = added + ?, pending = pending + ? WHERE id = ?",
                             (queued, cur.rowcount if late else 0, job_id))
        self._notify()

    def close_input(self, job_id: str, total: int) -> None:
        with self._lock, self._tx():
            status, old_total, described, *_ = self._job_row(job_id)
            if old_total is not None and old_total != total:
                raise SchedulerError(f"job {job_id} already has {old_total} slices; close_input({total}) disagrees")
            self._db.execute("UPDATE jobs SET total = ? WHERE id = ?", (int(total), job_id))
            self._maybe_finish(job_id)
        self._notify()

    def events(self, job_id: str, after: int = 0, *, wait: float = 0.0, limit: int | None = None) -> list[tuple[int, dict]]:
        deadline = time.monotonic() + wait
        while True:
            with self._lock:
                out = self._read_events(job_id, after, limit)
            if out or time.monotonic() >= deadline:
                return out
            with self._cond:
                # Other processes do not notify us: poll at least every 20 ms.
                self._cond.wait(min(0.02, max(0.0, deadline - time.monotonic())))

    def _read_events(self, job_id: str, after: int, limit: int | None) -> list[tuple[int, dict]]:
        self._record(job_id)  # UnknownJob for a bad id
        out: list[tuple[int, dict]] = [
            (seq, unpack(event)) for seq, event in self._db.execute(
                "SELECT seq, event FROM events WHERE job_id = ? AND seq > ? ORDER BY seq", (job_id, after))
        ]
        batches = self._db.execute(
            "SELECT seq, data FROM results WHERE job_id = ? AND last > ? ORDER BY last", (job_id, after)).fetchall()
        if batches:
            for first, data in batches:
                ns, oks, values, errors = unpack(data)[:4]
                for i, n in enumerate(ns):
                    seq = first + i
                    if seq <= after:
                        continue
                    if oks[i]:
                        out.append((seq, {"type": "result", "sliceNumber": n, "value": values[i]}))
                    else:
                        out.append((seq, {"type": "error", "sliceNumber": n, **(errors[i] or {})}))
            out.sort(key=_first)  # runs that are each already in order: cheap
        return out if limit is None else out[: int(limit)]

    def results(self, job_id: str) -> dict[int, SliceReport]:
        with self._lock:
            self._record(job_id)
            batches = self._db.execute("SELECT data FROM results WHERE job_id = ?", (job_id,)).fetchall()
        out: dict[int, SliceReport] = {}
        for (data,) in batches:
            columns = unpack(data)
            if len(columns) < 10:  # batches written before the worker column existed
                columns.append([None] * len(columns[0]))
            for n, ok, value, error, wall, cpu, bin_, bout, attempt, worker in zip(*columns):
                out[n] = SliceReport(n, bool(ok), value, error, wall, cpu, bin_, bout, attempt, worker)
        return out

    def get_job(self, job_id: str) -> JobRecord:
        with self._lock:
            rec = self._record(job_id)
            status, total, *_ = self._job_row(job_id)
            # The payment may change (set_payment) in another process: the row, not the cache, has it.
            (payment,) = self._db.execute("SELECT payment FROM jobs WHERE id = ?", (job_id,)).fetchone()
        out = JobRecord.from_dict(rec.to_dict())
        out.status, out.total, out.payment_per_slice = status, total, payment
        return out

    def status(self, job_id: str) -> dict:
        with self._lock:
            status, total, _d, _n, _p, distributed, computed, failed = self._job_row(job_id)
            reason = self._db.execute("SELECT reason FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        out = {"total": total, "distributed": distributed, "computed": computed, "failed": failed, "status": status}
        if reason:
            out["reason"] = reason
        return out

    def set_payment(self, job_id: str, payment_per_slice: float) -> None:
        payment = float(payment_per_slice)
        if not payment >= 0 or payment == float("inf"):
            raise SchedulerError(f"payment per slice must be a finite number >= 0, got {payment_per_slice!r}")
        with self._lock, self._tx():
            rec = replace(self._record(job_id), payment_per_slice=payment)  # UnknownJob for a bad id
            self._db.execute("UPDATE jobs SET payment = ?, record = ? WHERE id = ?",
                             (payment, pack(rec.to_dict()), job_id))
            self._jobs[job_id] = rec
        self._notify()

    def cancel(self, job_id: str, reason: str = "cancelled by the deployer") -> None:
        with self._lock, self._tx():
            self._cancel(job_id, reason)
        self._notify()

    def _cancel(self, job_id: str, reason: str) -> None:
        """Inside a transaction: stop the job (no more leases; late results are ignored)."""
        status, *_ = self._job_row(job_id)
        if status in FINAL_STATES:
            return
        self._db.execute("UPDATE jobs SET status = ?, reason = ?, pending = 0 WHERE id = ?", (CANCELLED, reason, job_id))
        self._db.execute("DELETE FROM slices WHERE job_id = ?", (job_id,))
        self._db.execute("DELETE FROM leases WHERE job_id = ?", (job_id,))
        self._append_events(job_id, [{"type": "readyStateChange", "state": "cancelled"}, {"type": "cancel", "reason": reason}])

    def delete_job(self, job_id: str) -> None:
        self.cancel(job_id, "deleted")
        with self._lock, self._tx():
            for table, column in (("events", "job_id"), ("results", "job_id"), ("slices", "job_id"),
                                  ("leases", "job_id"), ("jobs", "id")):
                self._db.execute(f"DELETE FROM {table} WHERE {column} = ?", (job_id,))
        self._jobs.pop(job_id, None)
        self._inputs.pop(job_id, None)
        self._fast.pop(job_id, None)

    def list_jobs(self) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute("SELECT id, record, status, total FROM jobs ORDER BY created DESC").fetchall()
        out = []
        for _id, record, status, total in rows:
            rec = JobRecord.from_dict(unpack(record))
            rec.status, rec.total = status, total
            out.append(rec)
        return out

    def job_summaries(self) -> list[dict]:
        """One dict per job for ``dcp-worker jobs``: id, worktime, status, counts, created."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, record, status, reason, total, distributed, computed, failed, created, payment "
                "FROM jobs ORDER BY created DESC"
            ).fetchall()
        out = []
        for jid, record, status, reason, total, distributed, computed, failed, created, payment in rows:
            rec = unpack(record)
            out.append({
                "id": jid, "worktime": rec["spec"]["worktime"], "status": status, "reason": reason, "total": total,
                "distributed": distributed, "computed": computed, "failed": failed, "created": created,
                "payment_per_slice": payment, "public": rec.get("public") or {},
            })
        return out

    # -- worker side ----------------------------------------------------------------------------
    def lease(
        self, worker_id: str, worktimes: dict[str, str], capabilities: dict, max_slices: int, lease_seconds: float,
        *, jobs: list[str] | None = None, pid: int | None = None,
    ) -> list[Lease]:
        if max_slices <= 0:
            return []
        now = time.time()
        expires = now + lease_seconds
        leases: list[Lease] = []
        unmatched: list[str] = []
        with self._lock, self._tx():
            self._register(worker_id, worktimes, capabilities, now, pid)
            if now - self._last_reclaim >= self.RECLAIM_INTERVAL:
                self._last_reclaim = now
                self._reclaim(now)
            candidates = self._db.execute(
                "SELECT id, status, total, described, next_slice, pending FROM jobs "
                "WHERE status IN (?, ?) AND (pending > 0 OR (described = 1 AND next_slice < total) "
                "OR (described = 0 AND distributed < added)) "
                "ORDER BY payment DESC, created ASC",
                (RUNNING, UNSCHEDULABLE),
            ).fetchall()
            only = set(jobs) if jobs is not None else None
            for job_id, status, total, described, next_slice, pending in candidates:
                if only is not None and job_id not in only:
                    continue
                want = max_slices - len(leases)
                if want <= 0:
                    break
                rec = self._record(job_id)
                if worker_can_run(rec, worktimes, capabilities) is not None:
                    unmatched.append(job_id)
                    continue
                got = self._lease_job(job_id, worker_id, expires, want, described, next_slice, total, pending)
                if got and status == UNSCHEDULABLE:
                    self._db.execute("UPDATE jobs SET status = ?, reason = NULL WHERE id = ?", (RUNNING, job_id))
                    self._append_events(job_id, [{"type": "readyStateChange", "state": "running"}])
                leases.extend(got)
        if unmatched and now - self._last_check >= self.SCHEDULABLE_INTERVAL:
            self._last_check = now
            for job_id in unmatched:
                self.check_schedulable(job_id, grace=self.SCHEDULABLE_GRACE)
        return leases

    def _lease_job(self, job_id: str, worker_id: str, expires: float, want: int, described: int,
                   next_slice: int, total: int | None, pending: int) -> list[Lease]:
        out: list[Lease] = []
        first_time = 0  # slices leased for the first time count as distributed
        if pending > 0:
            rows = self._db.execute(
                "SELECT n, datum, attempt, retry FROM slices WHERE job_id = ? AND state = 0 ORDER BY retry DESC, n LIMIT ?",
                (job_id, want),
            ).fetchall()
            if rows:
                token = _token()
                self._db.execute(
                    "INSERT INTO leases (id, job_id, worker_id, expires, count) VALUES (?, ?, ?, ?, ?)",
                    (token, job_id, worker_id, expires, len(rows)),
                )
                self._db.executemany(
                    "UPDATE slices SET state = 1, retry = 1, lease_id = ?, attempt = attempt + 1 WHERE job_id = ? AND n = ?",
                    [(token, job_id, n) for n, _d, _a, _r in rows],
                )
                inp = None
                for n, datum, attempt, retry in rows:
                    if datum is None:  # a described slice being leased again
                        inp = inp or self._input(job_id)
                        datum = pack(inp.nth(n))
                    first_time += not retry
                    out.append(Lease(job_id, n, datum, token, attempt + 1, expires))
                self._db.execute("UPDATE jobs SET pending = pending - ? WHERE id = ?", (len(rows), job_id))
        more = want - len(out)
        if described and more > 0 and total is not None and next_slice < total:
            stop = min(total, next_slice + more)
            token = _token()
            self._db.execute(
                "INSERT INTO leases (id, job_id, worker_id, expires, first, stop, bits, count) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (token, job_id, worker_id, expires, next_slice, stop, bytes((stop - next_slice + 7) // 8), stop - next_slice),
            )
            self._db.execute("UPDATE jobs SET next_slice = ? WHERE id = ?", (stop, job_id))
            out.extend(Lease(job_id, n, datum, token, 1, expires)
                       for n, datum in zip(range(next_slice, stop), self._packed_datums(job_id, next_slice, stop)))
            first_time += stop - next_slice
        elif not described and more > 0:
            rows = self._db.execute(
                "SELECT n, datum FROM slices WHERE job_id = ? AND n >= ? AND state = 3 ORDER BY n LIMIT ?",
                (job_id, next_slice, more),
            ).fetchall()
            if rows:
                # One range lease over the queued rows; numbers missing in between count as settled.
                stop = rows[-1][0] + 1
                bits = bytearray(b"\xff" * ((stop - next_slice + 7) // 8))
                for n, _d in rows:
                    i = n - next_slice
                    bits[i >> 3] &= ~(1 << (i & 7)) & 0xFF
                token = _token()
                self._db.execute(
                    "INSERT INTO leases (id, job_id, worker_id, expires, first, stop, bits, count) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (token, job_id, worker_id, expires, next_slice, stop, bytes(bits), len(rows)),
                )
                self._db.execute("UPDATE jobs SET next_slice = ? WHERE id = ?", (stop, job_id))
                out.extend(Lease(job_id, n, datum, token, 1, expires) for n, datum in rows)
                first_time += len(rows)
        if first_time:
            self._db.execute("UPDATE jobs SET distributed = distributed + ? WHERE id = ?", (first_time, job_id))
        return out

    def _packed_datums(self, job_id: str, first: int, stop: int) -> list[bytes]:
        """Packed datums of slices ``first .. stop-1`` of a described input."""
        desc = self._record(job_id).input
        if desc.get("kind") == "range" and desc.get("integral") and not desc.get("group"):
            # Integer ranges are the common case and RangeObject.nth goes through Fraction
            # arithmetic (~30 µs a slice); the same values as plain ints cost well under 1 µs.
            fast = self._int_range(job_id, desc)
            if fast is not None:
                start, step = fast
                p = packer()
                return [p.pack(start + n * step) for n in range(first, stop)]
        inp = self._input(job_id)
        return [pack(inp.nth(n)) for n in range(first, stop)]

    def _int_range(self, job_id: str, desc: dict) -> tuple[int, int] | None:
        cached = self._fast.get(job_id)
        if cached is None:
            from fractions import Fraction

            try:
                start, step = Fraction(desc["start"]), Fraction(desc["step"])
            except (KeyError, ValueError, TypeError, ZeroDivisionError):
                return None
            if start.denominator != 1 or step.denominator != 1:
                return None
            cached = (int(start), int(step))
            inp = self._input(job_id)  # trust but verify against the owner of the semantics
            if len(inp) and inp.nth(len(inp) - 1) != cached[0] + (len(inp) - 1) * cached[1]:
                cached = False  # type: ignore[assignment]
            self._fast[job_id] = cached
        return cached or None

    def _register(self, worker_id: str, worktimes: dict, capabilities: dict, now: float, pid: int | None) -> None:
        self._db.execute(
            "INSERT INTO workers (id, host, pid, worktimes, capabilities, last_seen) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET last_seen = excluded.last_seen, worktimes = excluded.worktimes, "
            "capabilities = excluded.capabilities",
            (worker_id, HOST, pid if pid is not None else os.getpid(), pack(dict(worktimes)), pack(dict(capabilities)), now),
        )

    def _reclaim(self, now: float) -> None:
        """Inside a transaction: leases of dead local workers expire now; expired leases requeue."""
        import psutil

        for wid, pid in self._db.execute("SELECT id, pid FROM workers WHERE host = ?", (HOST,)).fetchall():
            if pid and not psutil.pid_exists(pid):
                self._db.execute("UPDATE leases SET expires = 0 WHERE worker_id = ?", (wid,))
                self._db.execute("DELETE FROM workers WHERE id = ?", (wid,))
        expired = self._db.execute(
            "SELECT id, job_id, first, stop, bits FROM leases WHERE expires < ?", (now,)
        ).fetchall()
        touched = set()
        for lease_id, job_id, first, stop, bits in expired:
            self._db.execute("DELETE FROM leases WHERE id = ?", (lease_id,))
            rec = self._record(job_id)
            if first is not None:
                lost = [(first + i, 1) for i in range(stop - first) if not bits[i >> 3] >> (i & 7) & 1]
            else:
                lost = self._db.execute(
                    "SELECT n, attempt FROM slices WHERE lease_id = ? AND state = 1", (lease_id,)).fetchall()
            if not lost:
                continue
            touched.add(job_id)
            retry = [(n, a) for n, a in lost if a < rec.max_attempts]
            final = [(n, a) for n, a in lost if a >= rec.max_attempts]
            if retry:
                self._requeue(job_id, retry)
            if final:
                self._record_final(job_id, [
                    (SliceReport(n, False, None, {
                        "code": ErrorCode.ECRASH.value, "stack": None, "name": None,
                        "message": f"slice {n} was lost {a} times (its worker died or stopped reporting); "
                                   f"giving up after max_attempts={rec.max_attempts}"}), a) for n, a in final
                ], ok=False)
                self._db.executemany("UPDATE slices SET state = 2, datum = NULL, lease_id = NULL WHERE job_id = ? AND n = ?",
                                     [(job_id, n) for n, _a in final])
        for job_id in touched:
            self._maybe_finish(job_id)

    def _requeue(self, job_id: str, items: list[tuple[int, int]]) -> None:
        """Inside a transaction: slices ``(n, attempts so far)`` become pending again (retried first)."""
        cur = self._db.executemany(
            "INSERT INTO slices (job_id, n, state, retry, attempt) VALUES (?, ?, 0, 1, ?) "
            "ON CONFLICT (job_id, n) DO UPDATE SET state = 0, retry = 1, lease_id = NULL, attempt = excluded.attempt",
            [(job_id, n, a) for n, a in items],
        )
        self._db.execute("UPDATE jobs SET pending = pending + ? WHERE id = ?", (cur.rowcount, job_id))

    def _record_final(self, job_id: str, items: list[tuple[SliceReport, int]], ok: bool,
                      workers: list[str | None] | None = None) -> int:
        """Inside a transaction: store final reports as one batch row (the caller settled them)."""
        if not items:
            return 0
        seq = self._db.execute("SELECT seq FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        columns = [
            [r.slice_number for r, _a in items],
            [r.ok and ok for r, _a in items],
            [r.value if ok else None for r, _a in items],
            [None if ok else (r.error or {}) for r, _a in items],
            [float(r.wall_time) for r, _a in items],
            [float(r.cpu_time) for r, _a in items],
            [int(r.bytes_in) for r, _a in items],
            [int(r.bytes_out) for r, _a in items],
            [int(a) for _r, a in items],
            workers if workers is not None else [None] * len(items),
        ]
        last = seq + len(items)
        self._db.execute("INSERT INTO results (job_id, last, seq, data) VALUES (?, ?, ?, ?)",
                         (job_id, last, seq + 1, pack(columns)))
        column = "computed" if ok else "failed"
        self._db.execute(f"UPDATE jobs SET {column} = {column} + ?, seq = ? WHERE id = ?", (len(items), last, job_id))
        return len(items)

    def _valid(self, job_id: str, group: list[tuple[Lease, Any]]) -> tuple[list[tuple[Lease, Any]], dict]:
        """Inside a transaction: the reports that still count, and the state to settle them with.

        A report counts when its lease still exists and the slice is still that lease's and
        unsettled: a fresh slice inside the lease's range whose bit is unset, or a slice row leased
        to it. The first such report per slice wins; late reports from an expired lease, reports of
        returned or re-queued slices and duplicates are ignored.
        """
        leases: dict[str, list] = {}
        for lease_id in {lease.lease_id for lease, _ in group}:
            row = self._db.execute("SELECT first, stop, bits, worker_id FROM leases WHERE id = ?", (lease_id,)).fetchone()
            if row is not None:
                leases[lease_id] = [row[0], row[1], bytearray(row[2]) if row[2] is not None else None, 0, row[3]]
        if not leases:
            return [], leases
        by_row = [lease.slice_number for lease, _ in group if lease.lease_id in leases and leases[lease.lease_id][0] is None]
        rows: dict[int, tuple[int, str | None]] = {}
        for i in range(0, len(by_row), 500):
            chunk = by_row[i:i + 500]
            rows.update((n, (state, lid)) for n, state, lid in self._db.execute(
                f"SELECT n, state, lease_id FROM slices WHERE job_id = ? AND n IN ({','.join('?' * len(chunk))})",
                (job_id, *chunk)))
        out = []
        for lease, report in group:
            entry = leases.get(lease.lease_id)
            if entry is None:
                continue
            n = lease.slice_number
            first, stop, bits = entry[0], entry[1], entry[2]
            if first is None:
                if rows.get(n) != (LEASED, lease.lease_id):
                    continue
                rows[n] = (DONE, None)  # settled: a second report in this batch is ignored
            else:
                i = n - first
                if not 0 <= i < stop - first or bits[i >> 3] >> (i & 7) & 1:
                    continue
                bits[i >> 3] |= 1 << (i & 7)
            entry[3] += 1
            out.append((lease, report))
        return out, leases

    def _settle(self, job_id: str, leases: dict, done_rows: list[int]) -> None:
        """Inside a transaction: write back lease bitmaps and counts; mark settled rows done."""
        for lease_id, (first, _stop, bits, k, _worker) in leases.items():
            if not k:
                continue
            if first is not None:
                self._db.execute("UPDATE leases SET done = done + ?, bits = ? WHERE id = ?", (k, bytes(bits), lease_id))
            else:
                self._db.execute("UPDATE leases SET done = done + ? WHERE id = ?", (k, lease_id))
            self._db.execute("DELETE FROM leases WHERE id = ? AND done >= count", (lease_id,))
        if done_rows:
            self._db.executemany("UPDATE slices SET state = 2, datum = NULL, lease_id = NULL WHERE job_id = ? AND n = ?",
                                 [(job_id, n) for n in done_rows])

    def _row_slices(self, group: list[tuple[Lease, Any]], leases: dict) -> list[int]:
        return [lease.slice_number for lease, _ in group if leases[lease.lease_id][0] is None]

    def heartbeat(self, worker_id: str, lease_ids: list[str], lease_seconds: float) -> list[str]:
        now = time.time()
        lost = []
        with self._lock, self._tx():
            self._db.execute("UPDATE workers SET last_seen = ? WHERE id = ?", (now, worker_id))
            for lid in dict.fromkeys(lease_ids):
                cur = self._db.execute(
                    "UPDATE leases SET expires = ? WHERE id = ? AND worker_id = ?", (now + lease_seconds, lid, worker_id))
                if cur.rowcount == 0:
                    lost.append(lid)
        return lost

    def _report(self, items: list[tuple[Lease, SliceReport]], ok: bool) -> None:
        if not items:
            return
        by_job: dict[str, list[tuple[Lease, SliceReport]]] = {}
        for lease, report in items:
            by_job.setdefault(lease.job_id, []).append((lease, report))
        with self._lock, self._tx():
            for job_id, group in by_job.items():
                status = self._status_or_none(job_id)
                if status is None or status == CANCELLED:
                    continue  # late results of a cancelled or deleted job are dropped
                group, leases = self._valid(job_id, group)
                if not group:
                    continue
                if ok:
                    self._record_final(job_id, [(r, lease.attempt) for lease, r in group], ok=True,
                                       workers=[leases[lease.lease_id][4] for lease, _r in group])
                    self._settle(job_id, leases, self._row_slices(group, leases))
                else:
                    rec = self._record(job_id)
                    again = [(lease, r) for lease, r in group if is_retryable(r.error) and lease.attempt < rec.max_attempts]
                    final = [(lease, r) for lease, r in group if not (is_retryable(r.error) and lease.attempt < rec.max_attempts)]
                    self._record_final(job_id, [(r, lease.attempt) for lease, r in final], ok=False,
                                       workers=[leases[lease.lease_id][4] for lease, _r in final])
                    self._settle(job_id, leases, self._row_slices(final, leases))
                    if again:  # after settling: the re-queued rows must not be marked done
                        self._requeue(job_id, [(lease.slice_number, lease.attempt) for lease, _r in again])
                    unusable = unusable_work_reason([r.error for _lease, r in final])
                    if unusable:
                        self._cancel(job_id, unusable)
                        continue
                if not self._maybe_finish(job_id):  # a finishing job's status event comes with its end
                    _s, total, _d, _n, _p, distributed, computed, failed = self._job_row(job_id)
                    self._append_events(job_id, [{"type": "status", "total": total, "distributed": distributed,
                                                  "computed": computed, "failed": failed}])
        self._notify()

    def complete(self, done: list[tuple[Lease, SliceReport]]) -> None:
        self._report(done, ok=True)

    def fail(self, failed: list[tuple[Lease, SliceReport]]) -> None:
        self._report(failed, ok=False)

    def return_slices(self, leases: list[Lease]) -> None:
        if not leases:
            return
        with self._lock, self._tx():
            by_job: dict[str, list[Lease]] = {}
            for lease in leases:
                by_job.setdefault(lease.job_id, []).append(lease)
            for job_id, group in by_job.items():
                status = self._status_or_none(job_id)
                if status is None or status in FINAL_STATES:
                    continue
                live, leases = self._valid(job_id, [(lease, None) for lease in group])
                if live:
                    self._settle(job_id, leases, [])
                    self._requeue(job_id, [(lease.slice_number, lease.attempt - 1) for lease, _ in live])
        self._notify()

    def post_events(self, job_id: str, events: list[dict]) -> None:
        if not events:
            return
        with self._lock, self._tx():
            status = self._status_or_none(job_id)
            if status is None or status == CANCELLED:
                return
            self._append_events(job_id, events)
        self._notify()

    def wait_for_work(self, timeout: float) -> bool:
        # Wakes on commits of this process; other processes' commits are seen at the timeout.
        with self._cond:
            return self._cond.wait(timeout)

    def workers(self) -> list[WorkerInfo]:
        cutoff = time.time() - WORKER_TTL
        with self._lock:
            rows = self._db.execute(
                "SELECT id, worktimes, capabilities, last_seen FROM workers WHERE last_seen >= ?", (cutoff,)
            ).fetchall()
        return [WorkerInfo(i, unpack(w), unpack(c), t) for i, w, c, t in rows]

    def leave(self, worker_id: str) -> None:
        """The worker is stopping: forget it (its unfinished leases should be returned first)."""
        with self._lock, self._tx():
            self._db.execute("DELETE FROM workers WHERE id = ?", (worker_id,))

    def check_schedulable(self, job_id: str, grace: float = 0.0) -> str | None:
        with self._lock:
            rec = self._record(job_id)
            status, *_ = self._job_row(job_id)
            created = self._db.execute("SELECT created FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        if status in FINAL_STATES:
            return None
        live = self.workers()
        reasons = [worker_can_run(rec, w.worktimes, w.capabilities) for w in live]
        if any(r is None for r in reasons):
            return None
        if time.time() - created < grace:
            return None
        if not live:
            reason = (f"no worker is attached to the scheduler {self.path}; start one with "
                      f"`dcp-worker --worktime {rec.spec.worktime} --scheduler sqlite:///{self.path}` or run the job locally")
        else:
            reason = "; ".join(sorted(set(r for r in reasons if r))) + (
                f" (live workers: {len(live)}); start a worker that has it, or change the job's worktime/requirements")
        with self._lock:
            # A deployer asks every few quiet seconds: answer an unchanged verdict with a read,
            # and take the write lock only to record a new one.
            row = self._db.execute("SELECT status, reason FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row[0] in FINAL_STATES:
                return None
            if row[0] == UNSCHEDULABLE and row[1] == reason:
                return reason
            with self._tx():
                row = self._db.execute("SELECT status, reason FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row[0] in FINAL_STATES:
                    return None
                if row[0] != UNSCHEDULABLE or row[1] != reason:
                    self._db.execute("UPDATE jobs SET status = ?, reason = ? WHERE id = ?", (UNSCHEDULABLE, reason, job_id))
                    self._append_events(job_id, [{"type": "unschedulable", "reason": reason}])
        self._notify()
        return reason

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()


def _token() -> str:
    return uuid.uuid4().hex[:16]


def _first(item: tuple) -> Any:
    return item[0]


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (rollback on error); re-entrant within one thread."""

    def __init__(self, owner: SqliteScheduler) -> None:
        self.owner = owner

    def __enter__(self) -> None:
        self.owner._lock.acquire()
        try:
            db = self.owner._db
            self.outer = not db.in_transaction
            if self.outer:
                self._begin(db)
        except BaseException:
            self.owner._lock.release()
            raise

    def _begin(self, db: sqlite3.Connection) -> None:
        # Another process holding the write lock (a SIGSTOPped worker, a Ctrl-Z) must make us
        # wait, not crash: the busy timeout waits 60 s per attempt, and we keep trying, saying so.
        waited = 0.0
        while True:
            started = time.monotonic()
            try:
                db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                waited += time.monotonic() - started
                log.warning("the job store %s has been locked by another process for %.0f s (a stopped "
                            "worker or deployer?); still waiting", self.owner.path, waited)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if self.outer:
                if exc_type is None:
                    self.owner._db.execute("COMMIT")
                else:
                    self.owner._db.execute("ROLLBACK")
        finally:
            self.owner._lock.release()

