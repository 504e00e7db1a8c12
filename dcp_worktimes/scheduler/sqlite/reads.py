"""The read side of the SQLite store: events (result and error events expanded from the stored
result batches), results, job records, status, listings and live workers."""

from __future__ import annotations

import time
from typing import Iterator

from ...values import unpack
from ..base import WORKER_TTL, JobRecord, ResultBatch, WorkerInfo
from .store import Store


def _first(item: tuple) -> int:
    return item[0]


class Reads:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db

    def events(self, job_id: str, after: int, wait: float, limit: int | None, results: bool) -> list[tuple[int, dict]]:
        deadline = time.monotonic() + wait
        while True:
            with self.store.lock:
                out = self._read_events(job_id, after, limit, results)
            if out or time.monotonic() >= deadline:
                return out
            with self.store.cond:
                # Other processes do not notify us: poll at least every 20 ms.
                self.store.cond.wait(min(0.02, max(0.0, deadline - time.monotonic())))

    def _read_events(self, job_id: str, after: int, limit: int | None, results: bool) -> list[tuple[int, dict]]:
        self.store.record(job_id)  # UnknownJob for a bad id
        out: list[tuple[int, dict]] = [
            (seq, unpack(event)) for seq, event in self.db.execute(
                "SELECT seq, event FROM events WHERE job_id = ? AND seq > ? ORDER BY seq", (job_id, after))
        ]
        if not results:
            return out if limit is None else out[: int(limit)]
        batches = self.db.execute(
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

    def result_batches(self, job_id: str) -> Iterator[ResultBatch]:
        """The job's result rows one at a time, in the order they were recorded (a cursor reads
        them as they are consumed: a million results are never in memory twice)."""
        with self.store.lock:
            self.store.record(job_id)
            lasts = [last for (last,) in self.db.execute("SELECT last FROM results WHERE job_id = ? ORDER BY last",
                                                          (job_id,))]
        for i in range(0, len(lasts), 64):
            with self.store.lock:
                rows = self.db.execute("SELECT data FROM results WHERE job_id = ? AND last >= ? AND last <= ? "
                                       "ORDER BY last", (job_id, lasts[i], lasts[min(i + 63, len(lasts) - 1)])).fetchall()
            for (data,) in rows:
                yield ResultBatch(*unpack(data))

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
            rows = self.db.execute("SELECT record, status, total FROM jobs ORDER BY created DESC").fetchall()
        out = []
        for record, status, total in rows:
            rec = JobRecord.from_dict(unpack(record))
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
            rec = unpack(record)
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
        return [WorkerInfo(i, unpack(w), unpack(c), t) for i, w, c, t in rows]
