"""The embedded scheduler: one SQLite file (WAL mode) shared by the deployer and local workers.

Storage, and why it is shaped so:

* ``jobs``: one row per job, the ``JobRecord`` as msgpack plus the hot counters as columns
  (``next_slice``, ``pending``, ``distributed``, ``computed``, ``failed``, ``seq``) so leasing and
  status never scan slices.
* ``slices``: only slices that are *pending* (stream datums, retries) or *leased*. Ranges and
  distributions are never materialised: ``next_slice`` walks them and a row appears when a slice
  is leased (datum NULL, recomputed from the description if it must be leased again). A
  completed slice's row is deleted in the same transaction that inserts its result, under the
  condition that the report's lease is still the current one: that is what makes every result
  recorded exactly once and late reports from an old lease harmless.
* ``results``: final reports as they arrive (value kept as the worker's msgpack bytes).
* ``events``: the job's event log; ``result`` and ``error`` events are not stored twice but read
  from ``results`` in the same per-job sequence (``seq``), so a 100 000-slice job costs 100 000
  rows, not 200 000.
* ``workers``: live workers (host, pid, worktimes, capabilities). A worker on this host whose
  process is gone loses its leases at once instead of after lease expiry.

Every write is one ``BEGIN IMMEDIATE`` transaction per batch (workers lease and report in
batches), so the host is not the bottleneck.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
import uuid
from typing import Any

from ..errors import ErrorCode
from ..values import pack, unpack
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
    validate_job,
    worker_can_run,
)

SCHEMA_VERSION = 1
PENDING, LEASED = 0, 1
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
    seq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS slices (
    job_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    state INTEGER NOT NULL,
    retry INTEGER NOT NULL DEFAULT 0,
    datum BLOB,
    lease_id TEXT,
    worker_id TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    expires REAL,
    PRIMARY KEY (job_id, n)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS slices_pending ON slices(job_id, retry DESC, n) WHERE state = 0;
CREATE INDEX IF NOT EXISTS slices_expiry ON slices(expires) WHERE state = 1;
CREATE INDEX IF NOT EXISTS slices_lease ON slices(lease_id) WHERE state = 1;
CREATE INDEX IF NOT EXISTS slices_worker ON slices(worker_id) WHERE state = 1;
CREATE TABLE IF NOT EXISTS results (
    job_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    value BLOB,
    error BLOB,
    wall REAL, cpu REAL, bytes_in INTEGER, bytes_out INTEGER,
    attempt INTEGER,
    PRIMARY KEY (job_id, n)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS results_seq ON results(job_id, seq);
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
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as e:
            raise SchedulerError(f"cannot open the scheduler store {path}: {e}; is it a dcp-worktimes SQLite file?") from None
        self._jobs: dict[str, JobRecord] = {}  # immutable parts of job records
        self._inputs: dict[str, Any] = {}  # job id -> InputSet built from the description
        self._last_reclaim = 0.0
        self._last_check = 0.0
        self._closed = False

    def __repr__(self) -> str:
        return f"<SqliteScheduler {self.path}>"

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
            from ..compute.inputs import input_set_from_description

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

    def _job_row(self, job_id: str) -> tuple:
        row = self._db.execute(
            "SELECT status, total, described, next_slice, pending, distributed, computed, failed FROM jobs WHERE id = ?",
            (job_id,),
        ).fetchone()
        if row is None:
            raise UnknownJob(f"no job {job_id!r} in the scheduler store {self.path}; list jobs with `dcp-worker jobs`")
        return row

    def _maybe_finish(self, job_id: str) -> None:
        """Inside a transaction: mark the job complete once every slice has a final report."""
        status, total, _d, _n, _p, distributed, computed, failed = self._job_row(job_id)
        if status in FINAL_STATES or total is None or computed + failed < total:
            return
        final = COMPLETE if failed == 0 else FAILED
        self._db.execute("UPDATE jobs SET status = ? WHERE id = ?", (final, job_id))
        self._append_events(
            job_id,
            [
                {"type": "status", "total": total, "distributed": distributed, "computed": computed, "failed": failed},
                {"type": "readyStateChange", "state": "complete" if final == COMPLETE else "failed"},
                {"type": "complete", "computed": computed, "failed": failed},
            ],
        )

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
        from ..compute.inputs import input_set_from_description

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
            cur = self._db.executemany(
                "INSERT OR IGNORE INTO slices (job_id, n, state, datum) SELECT ?, ?, 0, ? "
                "WHERE NOT EXISTS (SELECT 1 FROM results WHERE job_id = ? AND n = ?)",
                [(job_id, int(n), bytes(d), job_id, int(n)) for n, d in items],
            )
            self._db.execute("UPDATE jobs SET pending = pending + ? WHERE id = ?", (cur.rowcount, job_id))
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
        q = (
            "SELECT seq, event, NULL, NULL, NULL, NULL FROM events WHERE job_id = ? AND seq > ? "
            "UNION ALL SELECT seq, NULL, n, ok, value, error FROM results WHERE job_id = ? AND seq > ? "
            "ORDER BY 1"
        )
        args: tuple = (job_id, after, job_id, after)
        if limit is not None:
            q += " LIMIT ?"
            args += (int(limit),)
        out: list[tuple[int, dict]] = []
        for seq, event, n, ok, value, error in self._db.execute(q, args):
            if event is not None:
                out.append((seq, unpack(event)))
            elif ok:
                out.append((seq, {"type": "result", "sliceNumber": n, "value": value}))
            else:
                err = unpack(error) if error else {}
                out.append((seq, {"type": "error", "sliceNumber": n, **err}))
        return out

    def results(self, job_id: str) -> dict[int, SliceReport]:
        with self._lock:
            self._record(job_id)
            rows = self._db.execute(
                "SELECT n, ok, value, error, wall, cpu, bytes_in, bytes_out FROM results WHERE job_id = ?", (job_id,)
            ).fetchall()
        return {
            n: SliceReport(n, bool(ok), value, unpack(error) if error else None, wall or 0.0, cpu or 0.0, bin_ or 0, bout or 0)
            for n, ok, value, error, wall, cpu, bin_, bout in rows
        }

    def get_job(self, job_id: str) -> JobRecord:
        with self._lock:
            rec = self._record(job_id)
            status, total, *_ = self._job_row(job_id)
        out = JobRecord.from_dict(rec.to_dict())
        out.status, out.total = status, total
        return out

    def status(self, job_id: str) -> dict:
        with self._lock:
            status, total, _d, _n, _p, distributed, computed, failed = self._job_row(job_id)
            reason = self._db.execute("SELECT reason FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        out = {"total": total, "distributed": distributed, "computed": computed, "failed": failed, "status": status}
        if reason:
            out["reason"] = reason
        return out

    def cancel(self, job_id: str, reason: str = "cancelled by the deployer") -> None:
        with self._lock, self._tx():
            status, *_ = self._job_row(job_id)
            if status in FINAL_STATES:
                return
            self._db.execute("UPDATE jobs SET status = ?, reason = ?, pending = 0 WHERE id = ?", (CANCELLED, reason, job_id))
            self._db.execute("DELETE FROM slices WHERE job_id = ?", (job_id,))
            self._append_events(job_id, [{"type": "readyStateChange", "state": "cancelled"}, {"type": "cancel", "reason": reason}])
        self._notify()

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
        *, pid: int | None = None,
    ) -> list[Lease]:
        if max_slices <= 0:
            return []
        now = time.time()
        token = uuid.uuid4().hex[:16]
        expires = now + lease_seconds
        leases: list[Lease] = []
        unmatched: list[str] = []
        with self._lock, self._tx():
            self._register(worker_id, worktimes, capabilities, now, pid)
            if now - self._last_reclaim >= self.RECLAIM_INTERVAL:
                self._last_reclaim = now
                self._reclaim(now)
            jobs = self._db.execute(
                "SELECT id, status, total, described, next_slice, pending FROM jobs "
                "WHERE status IN (?, ?) AND (pending > 0 OR (described = 1 AND next_slice < total)) "
                "ORDER BY payment DESC, created ASC",
                (RUNNING, UNSCHEDULABLE),
            ).fetchall()
            for job_id, status, total, described, next_slice, pending in jobs:
                want = max_slices - len(leases)
                if want <= 0:
                    break
                rec = self._record(job_id)
                if worker_can_run(rec, worktimes, capabilities) is not None:
                    unmatched.append(job_id)
                    continue
                got = self._lease_job(job_id, rec, worker_id, token, expires, want, described, next_slice, total, pending)
                if got and status == UNSCHEDULABLE:
                    self._db.execute("UPDATE jobs SET status = ?, reason = NULL WHERE id = ?", (RUNNING, job_id))
                    self._append_events(job_id, [{"type": "readyStateChange", "state": "running"}])
                leases.extend(got)
        if unmatched and now - self._last_check >= self.SCHEDULABLE_INTERVAL:
            self._last_check = now
            for job_id in unmatched:
                self.check_schedulable(job_id, grace=self.SCHEDULABLE_GRACE)
        return leases

    def _lease_job(self, job_id: str, rec: JobRecord, worker_id: str, token: str, expires: float, want: int,
                   described: int, next_slice: int, total: int | None, pending: int) -> list[Lease]:
        out: list[Lease] = []
        first_time = 0  # slices leased for the first time count as distributed
        if pending > 0:
            rows = self._db.execute(
                "SELECT n, datum, attempt, retry FROM slices WHERE job_id = ? AND state = 0 ORDER BY retry DESC, n LIMIT ?",
                (job_id, want),
            ).fetchall()
            if rows:
                self._db.executemany(
                    "UPDATE slices SET state = 1, retry = 1, lease_id = ?, worker_id = ?, expires = ?, attempt = attempt + 1 "
                    "WHERE job_id = ? AND n = ?",
                    [(token, worker_id, expires, job_id, n) for n, _d, _a, _r in rows],
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
            inp = self._input(job_id)
            fresh = [Lease(job_id, n, pack(inp.nth(n)), token, 1, expires) for n in range(next_slice, stop)]
            self._db.executemany(
                "INSERT INTO slices (job_id, n, state, retry, lease_id, worker_id, attempt, expires) VALUES (?, ?, 1, 1, ?, ?, 1, ?)",
                [(job_id, lease.slice_number, token, worker_id, expires) for lease in fresh],
            )
            self._db.execute("UPDATE jobs SET next_slice = ? WHERE id = ?", (stop, job_id))
            first_time += len(fresh)
            out.extend(fresh)
        if first_time:
            self._db.execute("UPDATE jobs SET distributed = distributed + ? WHERE id = ?", (first_time, job_id))
        return out

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
                self._db.execute("UPDATE slices SET expires = 0 WHERE worker_id = ? AND state = 1", (wid,))
                self._db.execute("DELETE FROM workers WHERE id = ?", (wid,))
        expired = self._db.execute(
            "SELECT job_id, n, attempt FROM slices WHERE state = 1 AND expires < ?", (now,)
        ).fetchall()
        if not expired:
            return
        by_job: dict[str, list[tuple[int, int]]] = {}
        for job_id, n, attempt in expired:
            by_job.setdefault(job_id, []).append((n, attempt))
        for job_id, items in by_job.items():
            rec = self._record(job_id)
            retry = [(job_id, n) for n, attempt in items if attempt < rec.max_attempts]
            lost = [(n, attempt) for n, attempt in items if attempt >= rec.max_attempts]
            if retry:
                self._db.executemany(
                    "UPDATE slices SET state = 0, retry = 1, lease_id = NULL, worker_id = NULL WHERE job_id = ? AND n = ?", retry
                )
                self._db.execute("UPDATE jobs SET pending = pending + ? WHERE id = ?", (len(retry), job_id))
            if lost:
                reports = []
                for n, attempt in lost:
                    err = {"code": ErrorCode.ECRASH.value, "message": (
                        f"slice {n} was lost {attempt} times (its worker died or stopped reporting); giving up after "
                        f"max_attempts={rec.max_attempts}"), "stack": None, "name": None}
                    reports.append((n, attempt, err))
                self._record_final(job_id, [(None, SliceReport(n, False, None, err), attempt) for n, attempt, err in reports], ok=False)
        for job_id in by_job:
            self._maybe_finish(job_id)

    def _record_final(self, job_id: str, items: list[tuple[str | None, SliceReport, int]], ok: bool) -> int:
        """Inside a transaction: insert final results whose lease is current, drop their slice rows.

        ``items`` are ``(lease_id, report, attempt)``; ``lease_id`` None means "whatever lease" (the
        scheduler itself deciding). Returns how many were recorded.
        """
        seq = self._db.execute("SELECT seq FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        rows = []
        for i, (lease_id, r, attempt) in enumerate(items):
            rows.append((
                job_id, r.slice_number, seq + i + 1, int(ok), r.value if ok else None,
                None if ok else pack(r.error or {}), float(r.wall_time), float(r.cpu_time), int(r.bytes_in),
                int(r.bytes_out), attempt, job_id, r.slice_number, lease_id, lease_id,
            ))
        cur = self._db.executemany(
            "INSERT OR IGNORE INTO results (job_id, n, seq, ok, value, error, wall, cpu, bytes_in, bytes_out, attempt) "
            "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM slices WHERE job_id = ? AND n = ? "
            "AND state = 1 AND (? IS NULL OR lease_id = ?))",
            rows,
        )
        recorded = cur.rowcount
        if recorded:
            self._db.executemany(
                "DELETE FROM slices WHERE job_id = ? AND n = ? AND state = 1 AND (? IS NULL OR lease_id = ?)",
                [(job_id, r.slice_number, lease_id, lease_id) for lease_id, r, _a in items],
            )
            column = "computed" if ok else "failed"
            self._db.execute(f"UPDATE jobs SET {column} = {column} + ?, seq = ? WHERE id = ?", (recorded, seq + len(items), job_id))
        return recorded

    def heartbeat(self, worker_id: str, lease_ids: list[str], lease_seconds: float) -> list[str]:
        now = time.time()
        lost = []
        with self._lock, self._tx():
            self._db.execute("UPDATE workers SET last_seen = ? WHERE id = ?", (now, worker_id))
            for lid in dict.fromkeys(lease_ids):
                cur = self._db.execute(
                    "UPDATE slices SET expires = ? WHERE lease_id = ? AND state = 1 AND worker_id = ?",
                    (now + lease_seconds, lid, worker_id),
                )
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
                status, total, *_ = self._job_row(job_id)
                if status == CANCELLED:
                    continue  # late results of a cancelled job are dropped
                if ok:
                    self._record_final(job_id, [(l.lease_id, r, l.attempt) for l, r in group], ok=True)
                else:
                    rec = self._record(job_id)
                    retry = [(l, r) for l, r in group if is_retryable(r.error) and l.attempt < rec.max_attempts]
                    final = [(l, r) for l, r in group if not (is_retryable(r.error) and l.attempt < rec.max_attempts)]
                    if retry:
                        cur = self._db.executemany(
                            "UPDATE slices SET state = 0, retry = 1, lease_id = NULL, worker_id = NULL "
                            "WHERE job_id = ? AND n = ? AND lease_id = ? AND state = 1",
                            [(job_id, l.slice_number, l.lease_id) for l, _r in retry],
                        )
                        self._db.execute("UPDATE jobs SET pending = pending + ? WHERE id = ?", (cur.rowcount, job_id))
                    if final:
                        self._record_final(job_id, [(l.lease_id, r, l.attempt) for l, r in final], ok=False)
                _s, total, _d, _n, _p, distributed, computed, failed = self._job_row(job_id)
                self._append_events(job_id, [{"type": "status", "total": total, "distributed": distributed,
                                              "computed": computed, "failed": failed}])
                self._maybe_finish(job_id)
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
                cur = self._db.executemany(
                    "UPDATE slices SET state = 0, retry = 1, lease_id = NULL, worker_id = NULL, attempt = attempt - 1 "
                    "WHERE job_id = ? AND n = ? AND lease_id = ? AND state = 1",
                    [(job_id, lease.slice_number, lease.lease_id) for lease in group],
                )
                self._db.execute("UPDATE jobs SET pending = pending + ? WHERE id = ?", (cur.rowcount, job_id))
        self._notify()

    def post_events(self, job_id: str, events: list[dict]) -> None:
        if not events:
            return
        with self._lock, self._tx():
            status, *_ = self._job_row(job_id)
            if status == CANCELLED:
                return
            self._append_events(job_id, events)
        self._notify()

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
        with self._lock, self._tx():
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


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (rollback on error); re-entrant within one thread."""

    def __init__(self, owner: SqliteScheduler) -> None:
        self.owner = owner

    def __enter__(self) -> None:
        self.owner._lock.acquire()
        db = self.owner._db
        self.outer = not db.in_transaction
        if self.outer:
            db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if self.outer:
                if exc_type is None:
                    self.owner._db.execute("COMMIT")
                else:
                    self.owner._db.execute("ROLLBACK")
        finally:
            self.owner._lock.release()

