"""The Redis scheduler (``redis://`` / ``rediss://``): one Redis 7 server shared by deployers and
workers on many machines.

``RedisScheduler`` is the ``Scheduler`` interface over five parts, each in its own module:

* ``connection.py``: the URL (credentials, TLS, the ``group`` namespace, ``keep``, ``retry``),
  the client, and the retry loop that rides out a lost connection;
* ``keys.py``: the keys of a group and why they are shaped so;
* ``scripts.py`` + ``lua/``: every atomic write as a Lua script;
* ``leases.py``: the lease engine's client side (matching, blocks, reports);
* ``reads.py``: the read side (events, results, status, listings);
* ``applications.py``: published applications.

Design, for many workers and jobs of millions of slices:

* **Descriptions, not keys per slice.** Ranges and distributions are stored as descriptions and
  cut into blocks when leased: a lease of 5,000 fresh slices is one hash (its run ``[first,
  stop)`` and one settled-byte per slice), and the job's cursor moves by 5,000. Only retried or
  returned slices are listed (one sorted-set member each), and stream inputs keep their datums in
  one hash per job. Results are stored per reported batch: one list element holding the worker's
  columns as it sent them.
* **Expiry by deadline, not consumer groups.** Leases sit in a sorted set scored by their deadline
  on the *server's* clock (``TIME`` inside the scripts: workers' clocks may disagree); a
  heartbeat is ``ZADD XX``, and every lease call first reclaims what ``ZRANGEBYSCORE -inf now``
  finds. A stream consumer group with ``XAUTOCLAIM`` would need every slice (or a fixed block of
  them) written to a stream before anyone leases it: blocks could no longer be cut to the size a
  worker asks for, a block could only be reclaimed whole (not the unsettled part of it), attempts
  per slice would be ours to track anyway, and a job of 10**9 slices would be 10**9 entries.
* **Exactly once.** A report is one script that checks each slice's settled byte in its lease,
  sets it and stores the batch in the same atomic step; a slice of an expired lease was moved
  back to the queue by the reclaim and its lease deleted, so a late report finds nothing to
  settle. No check-then-set from a client, and every call can be retried blindly.
* **Events** go to a stream per job (ids ``0-<seq>``, the interface's sequence numbers);
  ``events(wait=)`` blocks in ``XREAD BLOCK``. A result batch is one entry; ``result``/``error``
  events are expanded from the stored batch only for readers that want them.
* **Feeds** of stream jobs expire by deadline too: a deployer sending a stream renews its job's
  entry in the ``feeds`` sorted set (``keep_feeding``), and the same reclaim step of every lease
  call cancels a job whose deadline passed with its input open (its deployer died mid-stream;
  the rest of its input existed only there). A job never given a deadline never expires so.
* **Finished jobs** expire after the URL's ``keep`` (default 7 days) or go with
  ``dcp-worker jobs --delete``.
* **Faults.** Redis unreachable at start: one ``RedisUnavailable`` naming the URL (never the
  password); a serving ``dcp-worker`` waits for it (``cli._open_to_serve``). A connection lost later is retried with backoff (``connection.Link``) for up to the
  URL's ``retry``; calls that would otherwise act twice carry a request token. A slice running
  meanwhile reports when the connection returns, or is reclaimed if its lease expired meanwhile.
* **Namespaces.** ``?group=NAME`` puts a team's jobs under ``dcp:NAME:``; teams sharing a server
  do not see each other's jobs. That is a namespace, not a security boundary, unless a Redis ACL
  confines each team's user to ``~dcp:NAME:*`` (README: "Run a fleet").

Redis Cluster is not supported (scripts touch keys of several jobs). Slices per job: up to 2**53.

>>> s = RedisScheduler("redis://:secret@localhost:6379/0?group=physics")   # doctest: +SKIP
>>> s                                                                         # doctest: +SKIP
<RedisScheduler redis://:***@localhost:6379/0?group=physics>
"""

from __future__ import annotations

import threading
import time
from typing import Iterator, Mapping

from ...inputs import input_set_from_description
from ...values import pack
from ..base import (
    FINAL_STATES,
    ApplicationRecord,
    JobRecord,
    Lease,
    Report,
    ResultBatch,
    Scheduler,
    SchedulerError,
    WorkerInfo,
    check_payment,
    validate_job,
)
from ..matching import unschedulable_reason
from ..wake import Waiter, Wake, shared
from .applications import Applications
from .connection import Link, RedisTarget, RedisUnavailable, parse_redis_url
from .keys import Keys
from .leases import LeaseEngine, Records, match_fields, queue_member, token
from .reads import Reads

__all__ = ["RedisScheduler", "RedisUnavailable", "parse_redis_url"]

#: Lua numbers are doubles: slice numbers and counters stay exact up to 2**53.
MAX_SLICES = 2**53

# In-process wake-ups: schedulers of one group in this process share a Wake, so a local
# worker waiting for work wakes as soon as its deployer stores some (other machines' work arrives
# through the group's wake stream: RedisScheduler._watch_for_work).
def _wake(target: RedisTarget) -> Wake:
    return shared(("redis", target.host, target.port, target.db, target.group))


class RedisScheduler(Scheduler):
    """``Scheduler`` on a Redis 7 server; safe across threads, processes and machines."""

    #: How often lease() checks jobs this worker cannot run for being unschedulable.
    SCHEDULABLE_INTERVAL = 2.0
    #: A job nobody can run is declared unschedulable after this many seconds.
    SCHEDULABLE_GRACE = 3.0

    def __init__(self, url: str) -> None:
        self.target = parse_redis_url(url)
        self._link = Link(self.target)
        try:
            self._link.check()
            self._link.warn_if_evicting()
        except BaseException:
            self._link.close()
            raise
        self._keys = Keys(self.target.prefix)
        self._records = Records(self._link, self._keys)
        self._leases = LeaseEngine(self._link, self._keys, self._records)
        self._reads = Reads(self._link, self._keys, self._records, self._leases)
        self._apps = Applications(self._link, self._keys, self._leases)
        self._wake = _wake(self.target)
        self._waiter = Waiter(self._wake)
        self._last_check = 0.0
        self._closed = False
        self._waker: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<RedisScheduler {self.target.shown}>"

    @property
    def url(self) -> str:
        """The URL as given (with its password: pass it to other processes in the environment, never
        on a command line or in a message; ``target.shown`` is the one to show)."""
        return self.target.url

    def _script(self, name: str, what: str, *args: object) -> object:
        return self._leases.run(name, what, list(args))

    def _notify(self) -> None:
        self._wake.notify()

    # -- deployer side --------------------------------------------------------------------------
    def submit(self, job: JobRecord) -> None:
        validate_job(job)
        described = job.input.get("kind") != "stream"
        total = job.total
        if described:
            try:
                real = input_set_from_description(job.input).size
            except (TypeError, ValueError, KeyError) as e:
                raise SchedulerError(f"job {job.id}: unusable input description {job.input!r}: {e}") from None
            if total is not None and total != real:
                raise SchedulerError(f"job {job.id}: total={total} but its input has {real} slices; leave total=None")
            total = real
        if total is not None and total > MAX_SLICES:
            raise SchedulerError(f"job {job.id} has {total} slices; the Redis scheduler counts at most 2**53 per job: "
                                 "split the input into smaller jobs")
        job.created = job.created or time.time()
        job.total = total
        payment = float(job.payment_per_slice)
        got = self._script(
            "submit", "submit a job", job.id, pack(job.to_dict()), repr(payment), repr(job.created),
            "" if total is None else str(total), "1" if described else "0", queue_member(job.created, job.id),
            str(job.max_attempts), str(int(self.target.keep)), token(), pack(match_fields(job)), pack(job.input),
            pack({"type": "accepted", "id": job.id}), pack({"type": "readyStateChange", "state": "deployed"}))
        if got == -1:
            raise SchedulerError(f"a job with id {job.id!r} already exists in the Redis scheduler {self.target.shown} "
                                 f"(group {self.target.group!r}); resume it instead of submitting again")
        self._records.put(JobRecord.from_dict(job.to_dict()))
        self._notify()

    def add_slices(self, job_id: str, items: list[tuple[int, bytes]]) -> None:
        if not items:
            return
        args: list = []
        for n, datum in items:
            args += [str(int(n)), bytes(datum)]
        got = self._script("add_slices", "add input slices", job_id, *args)
        if got == -1:
            raise self._reads.unknown(job_id)
        if got == -2:
            raise SchedulerError(f"job {job_id} slices its input from a description; add_slices is for stream inputs")
        if got == -3:
            raise SchedulerError(f"job {job_id}: input already closed with {self.status(job_id)['total']} slices; "
                                 "cannot add more")
        self._notify()

    def close_input(self, job_id: str, total: int) -> None:
        got = self._script("close_input", "close the input", job_id, str(int(total)))
        if got == -1:
            raise self._reads.unknown(job_id)
        if got != int(total):
            raise SchedulerError(f"job {job_id} already has {got} slices; close_input({total}) disagrees")
        self._notify()

    def keep_feeding(self, job_id: str, seconds: float, *, watch_caller: bool = False) -> None:
        # Workers on other machines cannot see the deployer's process: the lease alone decides.
        if self._script("keep_feeding", "keep a stream job's feed", job_id, repr(float(seconds))) == -1:
            raise self._reads.unknown(job_id)

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
        if self._script("set_payment", "change a job's payment", job_id, repr(payment)) == -1:
            raise self._reads.unknown(job_id)
        self._notify()

    def cancel(self, job_id: str, reason: str = "cancelled by the deployer") -> None:
        if self._script("cancel", "cancel a job", job_id, str(reason)) == -1:
            raise self._reads.unknown(job_id)
        self._notify()

    def delete_job(self, job_id: str) -> None:
        if self._script("delete", "delete a job", job_id, token()) == -1:
            raise self._reads.unknown(job_id)
        self._records.forget(job_id)
        with self._leases._slicer_lock:
            self._leases.slicer.forget(job_id)

    # -- worker side ----------------------------------------------------------------------------
    def lease(
        self, worker_id: str, worktimes: dict[str, str], capabilities: dict, max_slices: int, lease_seconds: float,
        *, jobs: list[str] | None = None, pid: int | None = None, categories: list[str] | None = None,
    ) -> list[Lease]:
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
        if self._leases.report(reports):
            self._notify()

    def return_slices(self, leases: list[Lease]) -> None:
        self._leases.return_slices(leases)
        self._notify()

    def post_events(self, job_id: str, events: list[dict]) -> None:
        if events:
            self._script("post_events", "post events", job_id, token(), *(pack(ev) for ev in events))
            self._notify()

    def wait_for_work(self, timeout: float) -> bool:
        # Wakes on writes of this process at once, and on other machines' new work through the
        # group's wake stream (one blocked XREAD per waiting process, not a poll per worker).
        if self._waker is None:
            self._waker = threading.Thread(target=self._watch_for_work, name="dcp-redis-wake", daemon=True)
            self._waker.start()
        return self._waiter.wait(timeout)

    def _watch_for_work(self) -> None:
        key = self._keys.wake
        client = self._link.client
        last = None
        while not self._closed:
            try:
                if last is None:
                    newest = client.xrevrange(key, count=1)
                    last = newest[0][0] if newest else b"0-0"
                got = client.xread({key: last}, count=100, block=1000)
            except Exception:  # noqa: BLE001 - the link is down: the worker's own calls say so and retry
                time.sleep(1.0)
                last = None
                continue
            if got:
                last = got[0][1][-1][0]
                self._notify()

    def workers(self) -> list[WorkerInfo]:
        return self._reads.workers()

    def writes_refused(self) -> str | None:
        return self._link.writes_refused()

    def give_up_after(self, stop: threading.Event, grace: float) -> None:
        self._link.give_up_after(stop, grace)

    def leave(self, worker_id: str) -> None:
        """The worker is stopping: forget it (its unfinished leases should be returned first)."""
        self._leases.leave(worker_id)

    # -- applications ---------------------------------------------------------------------------
    def publish_application(self, app: ApplicationRecord) -> None:
        self._apps.publish(app)

    def get_application(self, name: str, version: str | None = None) -> ApplicationRecord:
        return self._apps.get(name, version)

    def list_applications(self) -> list[ApplicationRecord]:
        return self._apps.list()

    def check_schedulable(self, job_id: str, grace: float = 0.0) -> str | None:
        # What matching reads, not the whole record: a worker asks this of jobs it cannot run.
        status, created = self._link.call("read a job", lambda c: c.hmget(self._keys.job(job_id), "status", "created"))
        rec = self._records.matching([job_id]).get(job_id)
        if status is None or rec is None:
            raise self._reads.unknown(job_id)
        if status.decode() in FINAL_STATES:
            return None
        reason = unschedulable_reason(rec, self.workers(), self.target.shown)
        if reason is None or time.time() - float(created) < grace:
            return None
        got = self._script("unschedulable", "mark a job unschedulable", job_id, reason)
        if got in (-1, 0):
            if got == -1:
                raise self._reads.unknown(job_id)
            return None
        if got == 2:
            self._notify()
        return reason

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._link.close()
