"""The read side of the Redis store: the event log (``XRANGE``/``XREAD BLOCK`` on the job's stream,
result batches expanded into ``result``/``error`` events), result batches, status, listings and
live workers.

A stored result batch (one element of ``res:<id>``) is a header then, for a worker's report, the
worker's columns as it sent them::

    [1, kept positions or False (all), attempts (1 = all first attempts, else one per kept), worker]
    [numbers, oks, values, errors, walls, cpus, bytes_in, bytes_out]

or, for slices lost ``max_attempts`` times, the header alone: ``[2, numbers, attempts, max_attempts]``.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import msgpack

from ...recent import Recent
from ...values import unpack, unpacker
from ..base import WORKER_TTL, EventsRewound, JobRecord, ResultBatch, UnknownJob, WorkerInfo, lost_error
from .connection import Link
from .keys import Keys
from .leases import LeaseEngine, Records

#: Stream entries read per round trip.
PAGE = 10_000
#: Longest single XREAD BLOCK (ms); longer waits loop, so a socket timeout never cuts one.
BLOCK_MS = 1000


def decode_batch(element: bytes) -> ResultBatch:
    """One stored result batch as ``ResultBatch`` columns (see the module docstring)."""
    u = unpacker()
    u.feed(element)
    head = next(u)
    if head[0] == 2:
        _, numbers, attempts, max_attempts = head
        k = len(numbers)
        return ResultBatch(list(numbers), [False] * k, [None] * k,
                           [lost_error(n, a, max_attempts) for n, a in zip(numbers, attempts)],
                           [0.0] * k, [0.0] * k, [0] * k, [0] * k, list(attempts), [None] * k)
    _, mask, attempts, worker = head
    columns = next(u)
    if mask is not False:
        columns = [[col[i] for i in mask] for col in columns]
    k = len(columns[0])
    attempts = [1] * k if attempts == 1 else list(attempts)
    return ResultBatch(*columns, attempts, [worker] * k)


def _event(fields: dict) -> dict:
    """A log entry written by a script (``k`` = kind) or by a client (``e`` = packed event)."""
    raw = fields.get(b"e")
    if raw is not None:
        return unpack(raw)
    kind = fields[b"k"].decode()
    text = {k.decode(): v.decode() for k, v in fields.items()}
    if kind == "status":
        return {"type": "status", "total": int(text["t"]) if text["t"] else None, "distributed": int(text["d"]),
                "computed": int(text["c"]), "failed": int(text["f"])}
    if kind == "state":
        return {"type": "readyStateChange", "state": text["s"]}
    if kind == "complete":
        return {"type": "complete", "computed": int(text["c"]), "failed": int(text["f"])}
    if kind == "cancel":
        return {"type": "cancel", "reason": text["r"], **({"code": text["c"]} if "c" in text else {})}
    if kind == "unschedulable":
        return {"type": "unschedulable", "reason": text["r"]}
    return {"type": kind, **{k: v for k, v in text.items() if k != "k"}}


def _seq(entry_id: bytes) -> int:
    return int(entry_id.partition(b"-")[2])


class Reads:
    def __init__(self, link: Link, keys: Keys, records: Records, leases: LeaseEngine) -> None:
        self.link, self.keys, self.records, self.leases = link, keys, records, leases
        #: Per job, the last event log entry this process read (id, fields): found changed or gone
        #: at the next read, the log was rewritten (the server lost writes), even once it has grown
        #: past where the reader was.
        self._marks: Recent[str, tuple[int, dict]] = Recent(1000)

    def unknown(self, job_id: str) -> UnknownJob:
        keep = self.link.target.keep
        kept = "are kept until deleted (keep=forever)" if not keep else (
            f"expire {keep / 86400:g} days after they end (the URL's keep=)" if keep >= 86400 else
            f"expire {keep:g} s after they end (the URL's keep=)")
        return UnknownJob(f"no job {job_id!r} in the Redis scheduler {self.link.target.shown} (group "
                          f"{self.link.target.group!r}; finished jobs {kept}); list jobs with `dcp-worker jobs`")

    # -- events -------------------------------------------------------------------------------------
    def events(self, job_id: str, after: int, wait: float, limit: int | None, results: bool) -> list[tuple[int, dict]]:
        deadline = time.monotonic() + wait
        key = self.keys.events(job_id)
        cursor = after
        entries = self._read(job_id, key, cursor)
        while True:
            out = self._decode(job_id, entries, after, results)
            if entries:
                cursor = _seq(entries[-1][0])
                self._marks[job_id] = (cursor, entries[-1][1])
            if out:
                return out if limit is None else out[: int(limit)]
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            block = max(1, min(BLOCK_MS, int(left * 1000)))
            got = self.link.call("wait for events", lambda c: c.xread({key: f"0-{cursor}"}, count=PAGE, block=block))
            entries = got[0][1] if got else []
            if entries and len(entries) == PAGE:
                entries += self._read(job_id, key, _seq(entries[-1][0]), check=False)

    def _read(self, job_id: str, key: str, after: int, check: bool = True) -> list:
        """Every entry after ``after`` (paged); ``UnknownJob`` if the job does not exist."""
        mark = self._marks.get(job_id) if check and after else None
        if mark is not None and mark[0] > after:
            mark = None  # a reader further back (another follower of the job): nothing to compare

        def first(c: Any) -> tuple:
            pipe = c.pipeline(transaction=False)
            pipe.hget(self.keys.job(job_id), "seq")
            pipe.xrange(key, f"(0-{after}", "+", count=PAGE)
            if mark is not None:
                pipe.xrange(key, f"0-{mark[0]}", f"0-{mark[0]}")
            return tuple(pipe.execute())

        seq, entries, *marked = self.link.call("read events", first)
        if check and seq is None:
            raise self.unknown(job_id)
        rewritten = bool(marked) and [fields for _id, fields in marked[0]] != [mark[1]]  # type: ignore[index]
        if check and (int(seq) < after or rewritten):
            self._marks.pop(job_id, None)
            raise EventsRewound(f"the event log of job {job_id} is not the one read up to #{after}: the Redis server at "
                                f"{self.link.target.shown} lost recent writes (it restarted from an older snapshot)",
                                int(seq))
        while len(entries) % PAGE == 0 and entries:
            more = self.link.call("read events", lambda c: c.xrange(key, f"(0-{_seq(entries[-1][0])}", "+", count=PAGE))
            entries += more
            if len(more) < PAGE:
                break
        return entries

    def _decode(self, job_id: str, entries: list, after: int, results: bool) -> list[tuple[int, dict]]:
        out: list[tuple[int, dict]] = []
        markers = [(i, _seq(eid), fields) for i, (eid, fields) in enumerate(entries) if b"b" in fields]
        batches: dict[int, ResultBatch] = {}
        if results and markers:
            lo, hi = int(markers[0][2][b"b"]), int(markers[-1][2][b"b"])
            raw = self.link.call("read results", lambda c: c.lrange(self.keys.results(job_id), lo, hi))
            batches = {lo + i: decode_batch(element) for i, element in enumerate(raw)}
        for eid, fields in entries:
            seq = _seq(eid)
            if b"b" not in fields:
                if seq > after:
                    out.append((seq, _event(fields)))
                continue
            if not results:
                continue
            batch = batches.get(int(fields[b"b"]))
            if batch is None:  # deleted meanwhile
                continue
            first = seq - len(batch.numbers) + 1
            for i, n in enumerate(batch.numbers):
                if first + i <= after:
                    continue
                if batch.oks[i]:
                    out.append((first + i, {"type": "result", "sliceNumber": n, "value": batch.values[i]}))
                else:
                    out.append((first + i, {"type": "error", "sliceNumber": n, **(batch.errors[i] or {})}))
        return out

    # -- results and jobs ---------------------------------------------------------------------------
    def result_batches(self, job_id: str) -> Iterator[ResultBatch]:
        """The job's batches in the order they were recorded, 64 per round trip."""
        key = self.keys.results(job_id)

        def length(c: Any) -> tuple:
            pipe = c.pipeline(transaction=False)
            pipe.exists(self.keys.job(job_id))
            pipe.llen(key)
            return tuple(pipe.execute())

        exists, count = self.link.call("count results", length)
        if not exists:
            raise self.unknown(job_id)
        return self._batches(key, count)

    def _batches(self, key: str, count: int) -> Iterator[ResultBatch]:
        for start in range(0, count, 64):
            stop = min(start + 63, count - 1)
            for element in self.link.call("read results", lambda c: c.lrange(key, start, stop)):
                yield decode_batch(element)

    def get_job(self, job_id: str) -> JobRecord:
        rec = self.records.full(job_id)
        row = self.link.call("read a job", lambda c: c.hmget(self.keys.job(job_id), "status", "total", "payment"))
        if rec is None or row[0] is None:
            raise self.unknown(job_id)
        out = JobRecord.from_dict(rec.to_dict())
        out.status, out.total, out.payment_per_slice = row[0].decode(), _int(row[1]), float(row[2])
        return out

    def status(self, job_id: str) -> dict:
        row = self.link.call("read a job's status", lambda c: c.hmget(
            self.keys.job(job_id), "status", "total", "distributed", "computed", "failed", "reason"))
        if row[0] is None:
            raise self.unknown(job_id)
        out = {"total": _int(row[1]), "distributed": int(row[2]), "computed": int(row[3]), "failed": int(row[4]),
               "status": row[0].decode()}
        if row[5]:
            out["reason"] = row[5].decode()
        return out

    _SUMMARY = ("record", "status", "reason", "total", "distributed", "computed", "failed", "created", "payment")

    def _rows(self) -> list[tuple[str, list]]:
        """``(job id, summary fields)`` of every job, newest first; expired ids are dropped."""
        def read(c: Any) -> tuple[list, list]:
            ids = c.zrevrange(self.keys.jobs, 0, -1)
            pipe = c.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(self.keys.job(job_id.decode()), *self._SUMMARY)
            return ids, pipe.execute()

        ids, rows = self.link.call("list jobs", read)
        gone = [i for i, row in zip(ids, rows) if row[0] is None]
        if gone:
            self.link.call("forget expired jobs", lambda c: c.zrem(self.keys.jobs, *gone))
        return [(i.decode(), row) for i, row in zip(ids, rows) if row[0] is not None]

    def list_jobs(self) -> list[JobRecord]:
        out = []
        for _job_id, row in self._rows():
            rec = JobRecord.from_dict(unpack(row[0]))
            rec.status, rec.total, rec.payment_per_slice = row[1].decode(), _int(row[3]), float(row[8])
            out.append(rec)
        return out

    def job_summaries(self) -> list[dict]:
        out = []
        for job_id, row in self._rows():
            record, status, reason, total, distributed, computed, failed, created, payment = row
            rec = unpack(record)
            out.append({
                "id": job_id, "worktime": rec["spec"]["worktime"], "status": status.decode(),
                "reason": reason.decode() if reason else None, "total": _int(total), "distributed": int(distributed),
                "computed": int(computed), "failed": int(failed), "created": float(created),
                "payment_per_slice": float(payment), "public": rec.get("public") or {},
            })
        return out

    def workers(self) -> list[WorkerInfo]:
        reply = self.leases.run("workers", "list workers", [repr(WORKER_TTL)])
        ids, infos, times = msgpack.unpackb(reply, raw=True)
        out = []
        for wid, info, seen in zip(ids, infos, times):
            if not info:
                continue
            d = msgpack.unpackb(info, raw=False)
            out.append(WorkerInfo(wid.decode(), d["worktimes"], d["capabilities"], float(seen), d.get("categories")))
        return out


def _int(raw: bytes | None) -> int | None:
    return int(raw) if raw else None
