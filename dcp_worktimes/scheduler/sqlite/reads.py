"""The read side of the SQLite store: events (result and error events expanded from the stored
result batches), results, job records, status, listings and live workers."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from ..base import WORKER_TTL, JobRecord, ResultBatch, StoreDamaged, WorkerInfo
from .store import Store

#: Bytes of stored result rows ``result_batches`` reads per query.
READ_BYTES = 256 * 1024


def _first(item: tuple) -> int:
    return item[0]


class Reads:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db

    def events(self, job_id: str, after: int, wait: float, limit: int | None, results: bool) -> list[tuple[int, dict]]:
        deadline = time.monotonic() + wait
        while True:
            with self.store.lock, self._snapshot():
                out = self._read_events(job_id, after, limit, results)
            if out or time.monotonic() >= deadline:
                return out
            with self.store.cond:
                # Other processes do not notify us: poll at least every 20 ms.
                self.store.cond.wait(min(0.02, max(0.0, deadline - time.monotonic())))

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        """One read transaction around several SELECTs: each would otherwise see the store as of
        its own start. Events and results are separate tables written by separate commits: an
        event and a result committed between the two reads made the event (a later sequence number
        than any read so far) skipped for good by the next read, which starts after the result."""
        if self.db.in_transaction:
            yield
            return
        self.db.execute("BEGIN")
        try:
            yield
        finally:
            if self.db.in_transaction:
                self.db.execute("COMMIT")

    def _read_events(self, job_id: str, after: int, limit: int | None, results: bool) -> list[tuple[int, dict]]:
        self.store.record(job_id)  # UnknownJob for a bad id
        out: list[tuple[int, dict]] = [
            (seq, self.store.decode(event, f"event {seq} of job {job_id}")) for seq, event in self.db.execute(
                "SELECT seq, event FROM events WHERE job_id = ? AND seq > ? ORDER BY seq", (job_id, after))
        ]
        if not results:
            return out if limit is None else out[: int(limit)]
        batches = self.db.execute(
            "SELECT seq, data FROM results WHERE job_id = ? AND last > ? ORDER BY last", (job_id, after)).fetchall()
        if batches:
            for first, data in batches:
                ns, oks, values, errors = self.store.decode(data, f"a result batch of job {job_id}")[:4]
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

    def result_batches(self, job_id: str) -> Iterator[ResultBatch]:
        """The job's result rows one at a time, in the order they were recorded (a cursor reads
        them as they are consumed: a million results are never in memory twice)."""
        with self.store.lock:
            self.store.record(job_id)
            rows = self.db.execute("SELECT last, coalesce(length(data), 0) FROM results WHERE job_id = ? ORDER BY last",
                                   (job_id,)).fetchall()
        # Rows are read a few at a time under the lock (never held while the caller decodes), at
        # most READ_BYTES of them: a row holds one flush of results, whose size grows with the
        # evaluators' run frames.
        i = 0
        while i < len(rows):
            j, size = i, 0
            while j < len(rows) and (j == i or size + rows[j][1] <= READ_BYTES):
                size += rows[j][1]
                j += 1
            with self.store.lock:
                chunk = self.db.execute("SELECT data FROM results WHERE job_id = ? AND last >= ? AND last <= ? "
                                        "ORDER BY last", (job_id, rows[i][0], rows[j - 1][0])).fetchall()
            i = j
            for (data,) in chunk:
                yield ResultBatch(*self.store.decode(data, f"a result batch of job {job_id}"))

    def get_job(self, job_id: str) -> JobRecord:
        with self.store.lock:
            rec = self.store.record(job_id)
            row = self.store.job_row(job_id)
            # The payment may change (set_payment) in another process: the row, not the cache, has it.
            (payment,) = self.db.execute("SELECT payment FROM jobs WHERE id = ?", (job_id,)).fetchone()
        out = JobRecord.from_dict(rec.to_dict())
        out.status, out.total, out.payment_per_slice = row.status, row.total, payment
        return out

    def status(self, job_id: str) -> dict:
        with self.store.lock:
            row = self.store.job_row(job_id)
        out = {**row.counts(), "status": row.status}
        if row.reason:
            out["reason"] = row.reason
        return out

    def list_jobs(self) -> list[JobRecord]:
        with self.store.lock:
            rows = self.db.execute("SELECT id, record, status, total FROM jobs ORDER BY created DESC").fetchall()
        out = []
        for jid, record, status, total in rows:
            rec = self.store.decode_record(record, jid)
            rec.status, rec.total = status, total
            out.append(rec)
        return out

    def job_summaries(self) -> list[dict]:
        with self.store.lock:
            rows = self.db.execute(
                "SELECT id, record, status, reason, total, distributed, computed, failed, created, payment "
                "FROM jobs ORDER BY created DESC"
            ).fetchall()
        out = []
        for jid, record, status, reason, total, distributed, computed, failed, created, payment in rows:
            try:
                rec = self.store.decode(record, f"the record of job {jid}")
                if not isinstance(rec, dict) or not isinstance(rec.get("spec"), dict):
                    raise self.store.damaged(f"the record of job {jid}", ValueError("not a job record"))
            except StoreDamaged as e:  # listed as such, so that it can be deleted; the others still show
                rec, status, reason = {"spec": {"worktime": "?"}}, "damaged", e.message
            out.append({
                "id": jid, "worktime": rec["spec"]["worktime"], "status": status, "reason": reason, "total": total,
                "distributed": distributed, "computed": computed, "failed": failed, "created": created,
                "payment_per_slice": payment, "public": rec.get("public") or {},
            })
        return out

    def workers(self) -> list[WorkerInfo]:
        cutoff = time.time() - WORKER_TTL
        with self.store.lock:
            rows = self.db.execute(
                "SELECT id, worktimes, capabilities, last_seen FROM workers WHERE last_seen >= ?", (cutoff,)).fetchall()
        decode = self.store.decode
        return [WorkerInfo(i, decode(w, f"worker {i}"), decode(c, f"worker {i}"), t) for i, w, c, t in rows]
