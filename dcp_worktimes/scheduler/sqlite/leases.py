"""The lease engine: which slices a worker gets, and which of its reports count.

* ``lease``: blocks of slices of the best-paying jobs this worker can run, one lease row per
  block: a run ``[first, stop)`` of fresh slices (a range is never materialised: ``next_slice``
  walks it, and its datums are computed, not stored), or pending slice rows (retries, returns)
  pointing at the lease.
* ``report``: a slice's outcome counts only while the slice is still its lease's and unsettled
  (its bit in the run is unset, or its row points at the lease); it is settled in the same
  transaction, so every result is recorded exactly once and late reports of an expired lease are
  ignored. A report of a contiguous part of a run is checked with one bitmask, not slice by slice.
* ``reclaim``: stream jobs whose feed lease expired with their input open are cancelled (their
  deployer stopped mid-stream); leases of dead local workers expire at once; expired leases go
  back to pending (or fail with ``ECRASH`` after ``max_attempts``).

Every method runs one ``BEGIN IMMEDIATE`` transaction per call.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Mapping

from ...values import pack, unpack, unpack_datums
from ..base import (
    CANCELLED,
    FINAL_STATES,
    RUNNING,
    UNSCHEDULABLE,
    Lease,
    Report,
    StoreDamaged,
    feed_lost_reason,
    is_retryable,
    unusable_work_reason,
)
from ..matching import worker_can_run
from .schema import DONE, HOST, LEASED, PENDING, QUEUED
from .store import Store

log = logging.getLogger(__name__)
#: Jobs whose damaged record this process has warned about (``lease`` skips them).
_DAMAGED_SAID: set[str] = set()


@dataclass(slots=True)
class HeldLease:
    """A lease row as reports are checked against it; ``bits`` and ``settled`` change as they count."""

    first: int | None  # None: the lease holds slice rows, not a run
    stop: int | None
    bits: int  # bit i set: slice first+i of the run is settled
    worker: str
    settled: int = 0

    def take(self, numbers: list[int]) -> list[bool]:
        """Settle these fresh slices of the run; which of them were still unsettled (in the run)."""
        first, stop = self.first, self.stop
        n0 = numbers[0] - first  # type: ignore[operator]
        k = len(numbers)
        if 0 <= n0 and numbers[-1] < stop and numbers[-1] - numbers[0] == k - 1:  # type: ignore[operator]
            mask = ((1 << k) - 1) << n0
            if not self.bits & mask and numbers == list(range(numbers[0], numbers[0] + k)):
                self.bits |= mask  # the usual case: a contiguous, unsettled part of the run
                self.settled += k
                return [True] * k
        out = []
        for n in numbers:
            i = n - first  # type: ignore[operator]
            bit = 1 << i if 0 <= i < stop - first else 0  # type: ignore[operator]
            fresh = bool(bit) and not self.bits & bit
            if fresh:
                self.bits |= bit
                self.settled += 1
            out.append(fresh)
        return out


def _token() -> str:
    return uuid.uuid4().hex[:16]


def _bits_from(blob: bytes | None) -> int:
    return int.from_bytes(blob or b"", "little")


def _bits_to(bits: int, count: int) -> bytes:
    return bits.to_bytes((count + 7) // 8, "little")


class LeaseEngine:
    """The worker side of the SQLite store."""

    #: How often lease() looks for dead local workers and expired leases (seconds).
    RECLAIM_INTERVAL = 0.5

    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db
        self._last_reclaim = 0.0

    # -- leasing ----------------------------------------------------------------------------------
    def lease(self, worker_id: str, worktimes: dict[str, str], capabilities: dict, max_slices: int,
              lease_seconds: float, jobs: list[str] | None, pid: int | None,
              categories: list[str] | None = None) -> tuple[list[Lease], list[str]]:
        """``(leases, jobs this worker could not run)``."""
        if max_slices <= 0:
            return [], []
        now = time.time()
        expires = now + lease_seconds
        leases: list[Lease] = []
        got = 0
        unmatched: list[str] = []
        store = self.store
        with store.tx():
            self.register(worker_id, worktimes, capabilities, now, pid)
            if now - self._last_reclaim >= self.RECLAIM_INTERVAL:
                self._last_reclaim = now
                self.reclaim(now)
            candidates = self.db.execute(
                "SELECT id, status FROM jobs WHERE status IN (?, ?) AND (pending > 0 OR (described = 1 AND "
                "next_slice < total) OR (described = 0 AND distributed < added)) ORDER BY payment DESC, created ASC",
                (RUNNING, UNSCHEDULABLE),
            ).fetchall()
            only = set(jobs) if jobs is not None else None
            for job_id, status in candidates:
                if only is not None and job_id not in only:
                    continue
                want = max_slices - got
                if want <= 0:
                    break
                try:
                    record = store.record(job_id)
                except StoreDamaged as e:  # one damaged record must not stop every worker serving the rest
                    if job_id not in _DAMAGED_SAID:
                        _DAMAGED_SAID.add(job_id)
                        log.warning("skipping job %s: %s", job_id, e.message)
                    continue
                if worker_can_run(record, worktimes, capabilities, categories) is not None:
                    unmatched.append(job_id)
                    continue
                blocks = self._lease_job(job_id, worker_id, expires, want)
                if blocks and status == UNSCHEDULABLE:
                    self.db.execute("UPDATE jobs SET status = ?, reason = NULL WHERE id = ?", (RUNNING, job_id))
                    store.append_events(job_id, [{"type": "readyStateChange", "state": "running"}])
                leases.extend(blocks)
                got += sum(len(b) for b in blocks)
        return leases, unmatched

    def _lease_job(self, job_id: str, worker_id: str, expires: float, want: int) -> list[Lease]:
        row = self.store.job_row(job_id)
        out: list[Lease] = []
        first_time = 0  # slices leased for the first time count as distributed
        if row.pending > 0:
            block, first_time = self._lease_pending(job_id, worker_id, expires, want)
            if block is not None:
                out.append(block)
                want -= len(block)
        start = row.next_slice
        if row.described and want > 0 and row.total is not None and start < row.total:
            stop = min(row.total, start + want)
            token = self._insert_run(job_id, worker_id, expires, start, stop, 0, stop - start)
            out.append(Lease(job_id, token, list(range(start, stop)), self._datums(job_id, start, stop),
                             [1] * (stop - start), expires))
            first_time += stop - start
        elif not row.described and want > 0:
            rows = self.db.execute(
                f"SELECT n, datum FROM slices WHERE job_id = ? AND n >= ? AND state = {QUEUED} ORDER BY n LIMIT ?",
                (job_id, start, want),
            ).fetchall()
            if rows:
                # One run over the queued rows; numbers missing in between count as settled.
                stop = rows[-1][0] + 1
                bits = (1 << (stop - start)) - 1
                for n, _d in rows:
                    bits &= ~(1 << (n - start))
                token = self._insert_run(job_id, worker_id, expires, start, stop, bits, len(rows))
                out.append(Lease(job_id, token, [n for n, _d in rows], unpack_datums([d for _n, d in rows]),
                                 [1] * len(rows), expires))
                first_time += len(rows)
        if first_time:
            self.db.execute("UPDATE jobs SET distributed = distributed + ? WHERE id = ?", (first_time, job_id))
        return out

    def _insert_run(self, job_id: str, worker_id: str, expires: float, first: int, stop: int, bits: int,
                    count: int) -> str:
        token = _token()
        self.db.execute(
            "INSERT INTO leases (id, job_id, worker_id, expires, first, stop, bits, count) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (token, job_id, worker_id, expires, first, stop, _bits_to(bits, stop - first), count),
        )
        self.db.execute("UPDATE jobs SET next_slice = ? WHERE id = ?", (stop, job_id))
        return token

    def _lease_pending(self, job_id: str, worker_id: str, expires: float, want: int) -> tuple[Lease | None, int]:
        rows = self.db.execute(
            f"SELECT n, datum, attempt, retry FROM slices WHERE job_id = ? AND state = {PENDING} "
            "ORDER BY retry DESC, n LIMIT ?", (job_id, want),
        ).fetchall()
        if not rows:
            return None, 0
        token = _token()
        self.db.execute("INSERT INTO leases (id, job_id, worker_id, expires, count) VALUES (?, ?, ?, ?, ?)",
                        (token, job_id, worker_id, expires, len(rows)))
        self.db.executemany(
            # MAX: a slice returned unstarted (retry = 2) keeps its mark while leased (reclaim reads it).
            f"UPDATE slices SET state = {LEASED}, retry = MAX(retry, 1), lease_id = ?, attempt = attempt + 1 "
            "WHERE job_id = ? AND n = ?",
            [(token, job_id, n) for n, _d, _a, _r in rows],
        )
        inp = None
        datums = []
        for n, datum, _a, _r in rows:
            if datum is None:  # a described slice being leased again
                inp = inp or self.store.input(job_id)
                datums.append(inp.nth(n))
            else:
                datums.append(unpack_datums([datum])[0])
        self.db.execute("UPDATE jobs SET pending = pending - ? WHERE id = ?", (len(rows), job_id))
        block = Lease(job_id, token, [n for n, *_ in rows], datums, [a + 1 for _n, _d, a, _r in rows], expires)
        return block, sum(1 for *_, retry in rows if not retry)

    def _datums(self, job_id: str, first: int, stop: int) -> list[Any]:
        """Datums of slices ``first .. stop-1`` of a described input."""
        return self.store.slicer.run(job_id, self.store.record(job_id).input, first, stop)

    # -- workers and expiry -------------------------------------------------------------------------
    def register(self, worker_id: str, worktimes: dict, capabilities: dict, now: float, pid: int | None) -> None:
        """Inside a transaction: the worker is live (``workers()`` lists it for ``WORKER_TTL``)."""
        self.db.execute(
            "INSERT INTO workers (id, host, pid, worktimes, capabilities, last_seen) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET last_seen = excluded.last_seen, worktimes = excluded.worktimes, "
            "capabilities = excluded.capabilities",
            (worker_id, HOST, pid if pid is not None else os.getpid(), pack(dict(worktimes)), pack(dict(capabilities)), now),
        )

    def reclaim(self, now: float) -> None:
        """Inside a transaction: lost feeds end their jobs; leases of dead local workers expire
        now; expired leases requeue."""
        import psutil

        store = self.store
        self._end_lost_feeds(now)  # first: a job cancelled here has no leases left to requeue
        for wid, pid in self.db.execute("SELECT id, pid FROM workers WHERE host = ?", (HOST,)).fetchall():
            if pid and not psutil.pid_exists(pid):
                self.db.execute("UPDATE leases SET expires = 0 WHERE worker_id = ?", (wid,))
                self.db.execute("DELETE FROM workers WHERE id = ?", (wid,))
        expired = self.db.execute(
            "SELECT l.id, l.job_id, l.first, l.stop, l.bits, u.numbers FROM leases l "
            "LEFT JOIN lease_unstarted u ON u.lease_id = l.id WHERE l.expires < ?", (now,)).fetchall()
        touched = set()
        for lease_id, job_id, first, stop, blob, unstarted in expired:
            self.db.execute("DELETE FROM leases WHERE id = ?", (lease_id,))
            self.db.execute("DELETE FROM lease_unstarted WHERE lease_id = ?", (lease_id,))
            rec = store.record(job_id)
            if first is not None:
                bits = _bits_from(blob)
                lost = [(first + i, 1, 0) for i in range(stop - first) if not bits >> i & 1]
            else:
                lost = self.db.execute(f"SELECT n, attempt, retry FROM slices WHERE lease_id = ? AND state = {LEASED}",
                                       (lease_id,)).fetchall()
            if not lost:
                continue
            touched.add(job_id)
            # Slices its worker had not started at its last heartbeat come back as they were, once
            # in a row (retry = 2 marks them): work that kills its worker just after it starts,
            # before a heartbeat says so, is charged the next time.
            never = _unstarted_set(unstarted)
            refund = [(n, a - 1) for n, a, mark in lost if n in never and mark != 2]
            charged = [(n, a) for n, a, mark in lost if n not in never or mark == 2]
            retry = [(n, a) for n, a in charged if a < rec.max_attempts]
            final = [(n, a) for n, a in charged if a >= rec.max_attempts]
            if refund:
                store.requeue(job_id, refund, retry=2)
            if retry:
                store.requeue(job_id, retry)
            if final:
                store.lost_for_good(job_id, final, rec.max_attempts)
        for job_id in touched:
            store.maybe_finish(job_id)

    def _end_lost_feeds(self, now: float) -> None:
        """Inside a transaction: cancel the stream jobs whose deployer stopped renewing their feed
        lease (``keep_feeding``) before closing their input, or, watched on this machine, whose
        process is gone: the inputs it had not sent existed only there, so nothing can finish
        them. Jobs with no row never expire (their deployer predates feed leases)."""
        feeds = self.db.execute(
            "SELECT f.job_id, j.status, j.total, f.expires, f.host, f.pid, f.started FROM feed_leases f "
            "LEFT JOIN jobs j ON j.id = f.job_id WHERE f.expires < ? OR f.host = ?", (now, HOST)).fetchall()
        for job_id, status, total, expires, host, pid, started in feeds:
            if host == HOST and pid is not None:  # its deployer is on this machine: it decides, not the clock
                if _alive(pid, started):
                    continue
            elif expires >= now:
                continue
            self.db.execute("DELETE FROM feed_leases WHERE job_id = ?", (job_id,))
            if status is None or status in FINAL_STATES or total is not None:
                continue  # deleted, ended or fed in full meanwhile (by a version that leaves the row)
            # A stream slice's row stays until the job ends (a retry updates it): one row per input.
            (arrived,) = self.db.execute("SELECT COUNT(*) FROM slices WHERE job_id = ?", (job_id,)).fetchone()
            self.store.cancel(job_id, feed_lost_reason(arrived))

    def heartbeat(self, worker_id: str, lease_ids: list[str], lease_seconds: float,
                  unstarted: Mapping[str, list[int]] | None = None) -> list[str]:
        now = time.time()
        lost = []
        unstarted = unstarted or {}
        with self.store.tx():
            self.db.execute("UPDATE workers SET last_seen = ? WHERE id = ?", (now, worker_id))
            for lid in dict.fromkeys(lease_ids):
                cur = self.db.execute("UPDATE leases SET expires = ? WHERE id = ? AND worker_id = ?",
                                      (now + lease_seconds, lid, worker_id))
                if cur.rowcount == 0:
                    lost.append(lid)
                elif unstarted.get(lid):
                    self.db.execute("INSERT OR REPLACE INTO lease_unstarted (lease_id, numbers) VALUES (?, ?)",
                                    (lid, pack(list(unstarted[lid]))))
                else:
                    self.db.execute("DELETE FROM lease_unstarted WHERE lease_id = ?", (lid,))
            # Rows of leases settled or deleted since (those paths do not look at this table).
            self.db.execute("DELETE FROM lease_unstarted WHERE lease_id NOT IN (SELECT id FROM leases)")
        return lost

    # -- reports ------------------------------------------------------------------------------------
    def report(self, reports: list[Report]) -> None:
        """Record outcomes that still count (see the module docstring)."""
        if not reports:
            return
        store = self.store
        with store.tx():
            by_job: dict[str, list[Report]] = {}
            for r in reports:
                if r.numbers:
                    by_job.setdefault(r.job_id, []).append(r)
            for job_id, group in by_job.items():
                status = store.status_or_none(job_id)
                if status is None or status == CANCELLED:
                    continue  # late results of a cancelled or deleted job are dropped
                if self._report_job(job_id, group):
                    store.status_event(job_id)
        store.notify()

    def _report_job(self, job_id: str, group: list[Report]) -> bool:
        """Inside a transaction: record one job's reports; ``False`` if nothing counted or the job stopped."""
        store = self.store
        held = self._held({r.lease_id for r in group})
        counted = False
        max_attempts = store.record(job_id).max_attempts
        for r in group:
            h = held.get(r.lease_id)
            if h is None:
                continue  # the lease expired or was settled: a late report
            valid, attempts, rows = self._check(job_id, r, h)
            if not any(valid):
                continue
            counted = True
            idx = [i for i, v in enumerate(valid) if v] if not all(valid) else None
            all_ok = all(r.oks)
            retry = [] if all_ok else [i for i in (idx if idx is not None else range(len(r)))
                                       if not r.oks[i] and is_retryable(r.errors[i]) and attempts[i] < max_attempts]
            keep = idx if idx is not None else list(range(len(r)))
            if retry:
                gone = set(retry)
                keep = [i for i in keep if i not in gone]
            store.record_columns(job_id, r, keep, attempts, h.worker)
            if rows:
                self._finish_rows(job_id, [r.numbers[i] for i in keep])
            if retry:  # after settling: the re-queued rows must not be marked done
                store.requeue(job_id, [(r.numbers[i], attempts[i]) for i in retry], retry=None)
            unusable = None if all_ok else unusable_work_reason(r.errors[i] for i in keep if not r.oks[i])
            if unusable:
                self._settle(held)
                # EBADWORK for every unusable-work code (ENOSLICEHANDLER too): the cancel's code
                # says why the scheduler stopped the job; its reason names the slice's own code.
                store.cancel(job_id, unusable, code="EBADWORK")
                return False
        self._settle(held)
        return counted

    def _held(self, lease_ids: set[str]) -> dict[str, HeldLease]:
        held: dict[str, HeldLease] = {}
        for lease_id in lease_ids:
            row = self.db.execute("SELECT first, stop, bits, worker_id FROM leases WHERE id = ?", (lease_id,)).fetchone()
            if row is not None:
                first, stop, blob, worker = row
                held[lease_id] = HeldLease(first, stop, _bits_from(blob), worker)
        return held

    def _check(self, job_id: str, r: Report, h: HeldLease) -> tuple[list[bool], list[int], bool]:
        """Which slices of ``r`` still count, their attempts, and whether they are slice rows."""
        if h.first is not None:
            return h.take(r.numbers), [1] * len(r), False
        rows: dict[int, tuple[int, str | None, int]] = {}
        numbers = r.numbers
        for i in range(0, len(numbers), 500):
            chunk = numbers[i:i + 500]
            rows.update((n, (state, lid, a)) for n, state, lid, a in self.db.execute(
                f"SELECT n, state, lease_id, attempt FROM slices WHERE job_id = ? AND n IN ({','.join('?' * len(chunk))})",
                (job_id, *chunk)))
        valid, attempts = [], []
        for n in numbers:
            state, lid, attempt = rows.get(n, (None, None, 0))
            fresh = state == LEASED and lid == r.lease_id
            if fresh:
                rows[n] = (DONE, None, attempt)  # settled: a second report of it here is ignored
                h.settled += 1
            valid.append(fresh)
            attempts.append(attempt)
        return valid, attempts, True

    def _finish_rows(self, job_id: str, numbers: list[int]) -> None:
        if numbers:
            self.db.executemany(f"UPDATE slices SET state = {DONE}, datum = NULL, lease_id = NULL WHERE job_id = ? AND n = ?",
                                [(job_id, n) for n in numbers])

    def _settle(self, held: dict[str, HeldLease]) -> None:
        """Inside a transaction: write back lease bitmaps and counts; drop finished leases."""
        for lease_id, h in held.items():
            if not h.settled:
                continue
            if h.first is not None:
                self.db.execute("UPDATE leases SET done = done + ?, bits = ? WHERE id = ?",
                                (h.settled, _bits_to(h.bits, h.stop - h.first), lease_id))  # type: ignore[operator]
            else:
                self.db.execute("UPDATE leases SET done = done + ? WHERE id = ?", (h.settled, lease_id))
            self.db.execute("DELETE FROM leases WHERE id = ? AND done >= count", (lease_id,))
            h.settled = 0

    def return_slices(self, leases: list[Lease]) -> None:
        if not leases:
            return
        store = self.store
        with store.tx():
            by_job: dict[str, list[Lease]] = {}
            for lease in leases:
                if lease.numbers:
                    by_job.setdefault(lease.job_id, []).append(lease)
            for job_id, group in by_job.items():
                status = store.status_or_none(job_id)
                if status is None or status in FINAL_STATES:
                    continue
                held = self._held({lease.lease_id for lease in group})
                back: list[tuple[int, int]] = []
                for lease in group:
                    h = held.get(lease.lease_id)
                    if h is None:
                        continue
                    probe = Report(job_id, lease.lease_id, lease.numbers, [], [], [], [], [], [], [])
                    valid, attempts, _rows = self._check(job_id, probe, h)
                    back += [(n, a - 1) for n, a, v in zip(lease.numbers, attempts, valid) if v]
                self._settle(held)
                if back:
                    store.requeue(job_id, back, retry=None)
        store.notify()


def _unstarted_set(blob: bytes | None) -> frozenset[int]:
    """The slice numbers of a ``lease_unstarted`` row; none if there is no row or it does not decode
    (then every lost slice is charged, as before heartbeats said which had started)."""
    if blob is None:
        return frozenset()
    try:
        numbers = unpack(blob)
        return frozenset(n for n in numbers if type(n) is int)
    except Exception:  # noqa: BLE001 - a damaged row costs a refund, never the reclaim
        return frozenset()


def _alive(pid: int, since: float | None) -> bool:
    """Process ``pid`` of this machine exists and is the one that started at ``since``."""
    from ...runner.isolation import started  # here: the runner's modules are no deployer's start-up cost

    now = started(pid)
    return now is not None and (since is None or abs(now - since) < 0.01)
