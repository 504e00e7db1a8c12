"""The worker side of the Redis store: which jobs a worker may lease from, the lease call, reports.

* ``lease``: one ``ZRANGE`` of the queue (best paying first) whose jobs are matched against the
  worker here (``worker_can_run``: version ranges and nested requirements stay in Python, with
  the job records cached), then one ``lease`` script that registers the worker, reclaims expired
  leases and cuts blocks from the matching jobs. Described inputs' datums are computed here
  (``Slicer``), stream datums come back with the block.
* ``report`` / ``return_slices``: one script call for all the reports of a flush; the worker's
  columns go to the server as one msgpack blob per report, stored as they are.
* Every ``RECLAIM_INTERVAL`` a lessee also looks at the workers registered from this machine and
  expires at once the leases of those whose process is gone (as the SQLite store does).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from typing import Any, Mapping

import msgpack

from ...values import pack, unpack, unpack_datums
from ..host import HOST_KEY
from ...worktime import JobSpec
from ..base import JobRecord, Lease, Report, is_retryable, unusable_work_reason
from ..matching import worker_can_run
from ..slicing import Slicer
from .connection import Link
from .keys import Keys
from .scripts import register




def token() -> str:
    """A request token: the server applies a call carrying it once, however often it is retried."""
    return uuid.uuid4().hex


def numbers_arg(numbers: list[int]) -> bytes:
    """Slice numbers for a script: ``=first:count`` for a contiguous ascending run (the usual
    report: the script checks it with one substring), else a msgpack list."""
    first, k = numbers[0], len(numbers)
    if numbers[-1] - first == k - 1 and first >= 0 and numbers == list(range(first, first + k)):
        return f"={first}:{k}".encode()
    return msgpack.packb(numbers)


def queue_member(created: float, job_id: str) -> str:
    """The job's member in the ``queue`` sorted set: equal bids sort by it, so older jobs first."""
    return f"{created:020.6f}|{job_id}"


class Records:
    """What this process knows of jobs, by id, fetched once (a job's record never changes).

    Three views of a job, so that a worker never downloads what it does not need: ``full`` (the
    ``JobRecord``, with the work and its files, only for jobs it runs), ``matching`` (worktime,
    range, requirements, categories: a few bytes, for every queued job) and ``input`` (the input
    description, to cut datums).
    """

    def __init__(self, link: Link, keys: Keys) -> None:
        self.link, self.keys = link, keys
        self._cache: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def _many(self, field: str, ids: list[str], decode: Any) -> dict[str, Any]:
        with self._lock:
            out = {i: self._cache[(field, i)] for i in ids if (field, i) in self._cache}
        missing = [i for i in dict.fromkeys(ids) if i not in out]
        if missing:
            def fetch(client: Any) -> list:
                pipe = client.pipeline(transaction=False)
                for i in missing:
                    pipe.hget(self.keys.job(i), field)
                return pipe.execute()

            for job_id, raw in zip(missing, self.link.call("read jobs", fetch)):
                if raw is not None:
                    out[job_id] = decode(job_id, unpack(raw))
            with self._lock:
                if len(self._cache) > 4096:  # a long-lived worker sees many jobs: keep recent ones
                    self._cache.clear()
                self._cache.update(((field, i), out[i]) for i in missing if i in out)
        return out

    def full(self, job_id: str) -> JobRecord | None:
        return self._many("record", [job_id], lambda _i, d: JobRecord.from_dict(d)).get(job_id)

    def matching(self, ids: list[str]) -> dict[str, JobRecord]:
        """Records holding only what ``worker_can_run`` reads, for those of ``ids`` that exist."""
        return self._many("match", ids, match_record)

    def input(self, job_id: str) -> dict | None:
        return self._many("input", [job_id], lambda _i, d: d).get(job_id)

    def put(self, job: JobRecord) -> None:
        with self._lock:
            self._cache[("record", job.id)] = job
            self._cache[("match", job.id)] = match_record(job.id, match_fields(job))
            self._cache[("input", job.id)] = job.input

    def forget(self, job_id: str) -> None:
        with self._lock:
            for field in ("record", "match", "input"):
                self._cache.pop((field, job_id), None)


def match_fields(job: JobRecord) -> dict:
    """What matching a worker to ``job`` reads (stored beside the record: ``job:<id>`` ``match``)."""
    return {"worktime": job.spec.worktime, "worktime_range": job.worktime_range, "requirements": job.requirements,
            "categories": job.categories}


def match_record(job_id: str, d: dict) -> JobRecord:
    return JobRecord(id=job_id, spec=JobSpec(id=job_id, worktime=d["worktime"]), worktime_range=d["worktime_range"],
                     requirements=d["requirements"], application={"categories": d["categories"]})


class LeaseEngine:
    """Leasing, heartbeats and reports against one group."""

    #: How often a lessee looks for dead workers of this machine (seconds).
    RECLAIM_INTERVAL = 0.5
    #: Jobs read from the queue per round trip while looking for ones this worker can run.
    PAGE = 64

    def __init__(self, link: Link, keys: Keys, records: Records) -> None:
        self.link, self.keys, self.records = link, keys, records
        self.scripts = register(link.client)
        self.slicer = Slicer()
        self._slicer_lock = threading.Lock()
        self._last_reap = 0.0

    def run(self, name: str, what: str, args: list) -> Any:
        script = self.scripts[name]
        return self.link.call(what, lambda client: script(args=[self.keys.prefix, *args], client=client))

    # -- leasing ----------------------------------------------------------------------------------
    def lease(self, worker_id: str, worktimes: dict[str, str], capabilities: dict, max_slices: int,
              lease_seconds: float, jobs: list[str] | None, pid: int | None,
              categories: list[str] | None = None) -> tuple[list[Lease], list[str]]:
        """``(leases, jobs this worker could not run)``."""
        if max_slices <= 0:
            return [], []
        now = time.monotonic()
        if now - self._last_reap >= self.RECLAIM_INTERVAL:
            self._last_reap = now
            self._reap_local()
        info = msgpack.packb({"host": socket.gethostname(), "pid": pid or os.getpid(), "worktimes": dict(worktimes),
                              "capabilities": dict(capabilities),
                              "categories": None if categories is None else list(categories)}, use_bin_type=True)
        leases: list[Lease] = []
        for _ in range(2):
            candidates, unmatched = self._candidates(worktimes, capabilities, jobs, categories)
            reply = self.run("lease", "lease slices", [worker_id, info, HOST_KEY, pid or os.getpid(),
                                                        repr(float(lease_seconds)), int(max_slices), token(), *candidates])
            expires = time.time() + lease_seconds
            reclaimed, blocks = msgpack.unpackb(reply, raw=True)
            leases += [self._block(b, expires) for b in blocks]
            max_slices -= sum(len(b) for b in leases)
            # Expired leases were reclaimed after the queue was read: their jobs may be back in it.
            if not reclaimed or max_slices <= 0:
                break
        return leases, unmatched

    def _candidates(self, worktimes: dict[str, str], capabilities: dict, jobs: list[str] | None,
                    categories: list[str] | None) -> tuple[list[str], list[str]]:
        """Job ids this worker can run, in leasing order, and the queued ones it cannot."""
        allowed: list[str] = []
        unmatched: list[str] = []
        start = 0
        while True:
            if jobs is not None:
                ids, more = list(dict.fromkeys(jobs)), False
            else:
                members = self.link.call("read the queue", lambda c: c.zrange(self.keys.queue, start, start + self.PAGE - 1))
                ids = [m.decode().partition("|")[2] for m in members]
                more = len(members) == self.PAGE
                start += self.PAGE
            records = self.records.matching(ids)
            for job_id in ids:
                rec = records.get(job_id)
                if rec is None:
                    continue
                fits = worker_can_run(rec, worktimes, capabilities, categories) is None
                (allowed if fits else unmatched).append(job_id)
            if allowed or not more:
                return allowed, unmatched

    def _block(self, b: list, expires: float) -> Lease:
        kind, job_id, lease_id = b[0], b[1].decode(), b[2].decode()
        if kind == 1:
            first, stop, datums = b[3], b[4], b[5]
            numbers, attempts = list(range(first, stop)), [1] * (stop - first)
        else:
            numbers, attempts, datums = b[3], b[4], b[5]
        if datums is False or datums is None:
            desc = self.records.input(job_id) or {}
            with self._slicer_lock:
                datums = self.slicer.run(job_id, desc, first, stop) if kind == 1 else \
                    self.slicer.some(job_id, desc, numbers)
        else:
            datums = unpack_datums(datums)
        return Lease(job_id, lease_id, numbers, datums, attempts, expires)

    def _reap_local(self) -> None:
        """Workers registered from this machine whose process is gone: their leases expire now."""
        import psutil

        registered = self.link.call("read this machine's workers", lambda c: c.hgetall(self.keys.host(HOST_KEY)))
        dead = [w.decode() for w, pid in registered.items() if not psutil.pid_exists(int(pid or 0))]
        if dead:
            self.run("leave", "expire the leases of dead workers", [HOST_KEY, "1", *dead])

    def leave(self, worker_id: str) -> None:
        self.run("leave", "unregister a worker", [HOST_KEY, "0", worker_id])

    def heartbeat(self, worker_id: str, lease_ids: list[str], lease_seconds: float,
                  unstarted: Mapping[str, list[int]] | None = None) -> list[str]:
        held = list(dict.fromkeys(lease_ids))
        # Per lease, in the order of the ids: a msgpack list of the slices not started, or '' for none.
        args = [msgpack.packb(list(unstarted[lid])) if unstarted and unstarted.get(lid) else b"" for lid in held]
        lost = self.run("heartbeat", "extend leases", [worker_id, repr(float(lease_seconds)), *held, *args])
        return [lid.decode() for lid in lost]

    # -- reports ------------------------------------------------------------------------------------
    def report(self, reports: list[Report]) -> int:
        """Record outcomes that still count; how many jobs had some."""
        args: list = []
        for r in reports:
            if not r.numbers:
                continue
            if all(r.oks):
                kinds = "o" * len(r)
                reason = ""
            else:
                kinds = "".join("o" if ok else "b" if unusable_work_reason([e]) else "r" if is_retryable(e) else "f"
                                for ok, e in zip(r.oks, r.errors))
                reason = unusable_work_reason(e for ok, e in zip(r.oks, r.errors) if not ok) or ""
            blob = pack([r.numbers, r.oks, r.values, r.errors, r.walls, r.cpus, r.bytes_in, r.bytes_out])
            args += [r.lease_id, r.job_id, numbers_arg(r.numbers), kinds, blob, reason]
        if not args:
            return 0
        return int(self.run("report", "report results", args))

    def return_slices(self, leases: list[Lease]) -> None:
        args: list = []
        for lease in leases:
            if lease.numbers:
                args += [lease.lease_id, lease.job_id, numbers_arg(lease.numbers)]
        if args:
            self.run("give_back", "return slices", args)
