"""The scheduler interface: a durable job store that hands slices to workers under leases.

A **scheduler** holds jobs (their spec, how their input is sliced, their results and events) and
hands slices to workers. Every backend (the embedded SQLite one, the Redis one for fleets) implements
``Scheduler`` and passes the conformance suite in ``dcp_worktimes.testing_scheduler``.

Life of a job::

    from dcp_worktimes.scheduler import open_scheduler, JobRecord, Report
    from dcp_worktimes.values import pack
    from dcp_worktimes.worktime import JobSpec

    s = open_scheduler("sqlite:///tmp/jobs.db")
    s.submit(JobRecord(id="j1", spec=JobSpec(id="j1", worktime="echo"),
                       input={"kind": "range", "start": 0, "end": 9, "step": 1}, total=10))
    (lease,) = s.lease("w1", {"echo": "1.0.0"}, {}, max_slices=4, lease_seconds=30)
    lease.numbers, lease.datums      # [0, 1, 2, 3], [0, 1, 2, 3]: a block of slices, one lease
    s.report([Report.ok(lease, lease.numbers, [pack(d) for d in lease.datums])])
    s.status("j1")        # {'total': 10, 'distributed': 4, 'computed': 4, 'failed': 0, 'status': 'running'}
    s.events("j1")        # [(1, {'type': 'accepted'}), ..., (n, {'type': 'result', 'sliceNumber': 0, ...})]

Slices travel in **blocks**: a lease holds many slices of one job (``Lease.numbers``), and a
report carries the outcomes of many slices as columns (``Report``), so a job of millions of
slices costs a few thousand round trips, never one per slice; per-slice semantics (attempts,
exactly-once results, retries, per-slice errors) are kept inside the block.

Rules every backend keeps (the conformance suite checks them):

* **Leases.** A slice handed out by ``lease`` belongs to that lease until it expires
  (``lease_seconds``, renewed by ``heartbeat``). An expired slice is handed out again with
  ``attempt + 1``; a report of a slice no longer its lease's is ignored, so **each slice's result
  is recorded exactly once**. A slice whose leases were lost ``max_attempts`` times fails with
  ``ECRASH``.
* **Unusable work.** A final ``EBADWORK`` error (the work does not compile, its top level raises)
  or ``ENOSLICEHANDLER`` (a program that sets no slice handler; ``UNUSABLE_WORK_CODES``) cancels
  the job at once with that reason: every other slice would fail the same way.
* **Retries.** A failed slice with a retryable error (``ECRASH``: the evaluator died; ``EWORKREJECT``:
  the work called ``work.reject()``, which DCP retries and then gives back; or an error dict
  with ``"retryable": True``) puts the slice back until ``max_attempts``; any other error is the
  work's fault and is final.
* **Order.** Slices of the job paying more per slice are leased first; among equals, older jobs
  first; within a job, retried slices first, then ascending slice numbers.
* **Matching.** A worker gets a slice only when its worktimes (``{name: version}``) include the
  job's worktime within ``worktime_range`` and its capabilities satisfy the job's requirements
  (nested dicts of booleans; ``True`` = must have, ``False`` = must not have); a worker that
  leases with ``categories`` only gets slices of jobs whose application carries one of them.
  ``check_schedulable`` reports a job no live worker can run (``unschedulable`` event + status).
* **Applications.** Named, semver-versioned sets of work functions (``ApplicationRecord``) that
  jobs are built from. A version, once published, never changes; the identity that first
  published a name (``owner``, a fingerprint) is the only one that may publish its next versions.
  ``get_application(name, range)`` resolves the highest published version within an npm range.
* **Inputs.** Ranges and distributions are stored as descriptions (``InputSet.description()``)
  and sliced on demand with ``dcp_worktimes.inputs.input_set_from_description``; streams
  arrive with ``add_slices`` in batches and end with ``close_input``.
* **Feed leases.** A stream's remaining inputs exist only in its deployer's process, so a
  deployer that dies mid-stream leaves a job that can never finish. While it feeds, the deployer
  renews a feed lease (``keep_feeding``); once the lease has expired with the input still open,
  the store's housekeeping (the reclaim a ``lease`` call runs) cancels the job with
  ``feed_lost_reason``. Results already recorded stay. A stream job with no feed lease recorded
  (deployed by a version that had none) never expires this way.
* **Events.** Each job has an ordered event log (``events(job_id, after)``), with these types:
  ``accepted``, ``readyStateChange`` ({state}), ``status`` ({total, distributed, computed, failed}),
  ``result`` ({sliceNumber, value: msgpack bytes}), ``console`` ({level, message, sliceNumber,
  same}), ``error`` ({sliceNumber, code, message, stack, name}), ``noProgress`` ({sliceNumber}),
  ``custom`` ({name, value, sliceNumber}), ``progress`` ({sliceNumber, value}), ``complete``
  ({computed, failed}), ``cancel`` ({reason, code}), ``unschedulable`` ({reason}). ``result`` and
  ``error`` events are part of the log but left out with ``events(..., results=False)``: a
  deployer with no result listener reads the results as blocks (``result_batches``) instead.

**Applications** (named, versioned work functions published once and used by many jobs) live in
the store too: ``publish_application``, ``get_application``, ``list_applications``; a job built
from one carries ``JobRecord.application``, and a worker may serve only some categories
(``lease(..., categories=...)``).
"""

from __future__ import annotations

import os
import re
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

from ..errors import UNUSABLE_WORK_CODES, DcpError, ErrorCode
from ..versions import max_satisfying, parse_range, parse_version
from ..worktime import JobSpec

#: Environment variable naming the default scheduler URL (``sqlite:///abs/path.db``).
ENV_SCHEDULER = "DCP_SCHEDULER"

#: Job states.
RUNNING, COMPLETE, CANCELLED, FAILED, UNSCHEDULABLE = "running", "complete", "cancelled", "failed", "unschedulable"
FINAL_STATES = frozenset({COMPLETE, CANCELLED, FAILED})

#: Error codes a scheduler retries: the evaluator died (not the work's fault), or the work
#: refused the slice with ``work.reject()`` (DCP: "the worker refuses the slice; retried, then given back").
RETRYABLE_CODES = frozenset({ErrorCode.ECRASH.value, ErrorCode.EWORKREJECT.value})

#: A worker that has not called ``lease``/``heartbeat`` for this long is not live.
WORKER_TTL = 15.0


def feed_lost_reason(arrived: int) -> str:
    """The cancel reason of a stream job whose feed lease expired with its input open: its
    deployer stopped mid-stream, and the inputs it had not sent yet existed nowhere else.
    (The Redis backend words the same sentence in ``lua/common.lua``; the conformance suite
    checks that both agree.)"""
    return (f"the deployer stopped while sending its input stream ({arrived} inputs had arrived); the rest existed "
            "only in that process: deploy the job again")


class SchedulerError(DcpError):
    """Misuse of a scheduler: unknown job, bad URL, duplicate job id ...

    ``retryable``: the same call may succeed later unchanged (the store's disk had a moment)."""

    code = "ESCHEDULER"
    retryable = False


class StoreUnavailable(SchedulerError):
    """The job store cannot be used right now: its disk is full, an I/O error, it is read-only or
    locked. Nothing is wrong with the call: retry it later (a worker keeps its results meanwhile)."""

    code = "ESTOREUNAVAILABLE"
    retryable = True


class StoreDamaged(SchedulerError):
    """The job store's file is damaged (corrupt, or not a store at all): retrying will not help."""

    code = "ESTOREDAMAGED"


class UnknownJob(SchedulerError):
    code = "ENOJOB"


class EventsRewound(SchedulerError):
    """The job's event log is shorter than a reader had read: the store lost recent writes (a
    Redis server restarted from an older snapshot). ``seq``: the log's last sequence number now."""

    code = "ESTORELOST"

    def __init__(self, message: str, seq: int) -> None:
        super().__init__(message)
        self.seq = seq


class UnknownApplication(SchedulerError):
    """No published application of that name, or no version of it within the range asked for."""

    code = "ENOAPPLICATION"


class ApplicationRefused(SchedulerError):
    """A publish the store refuses: the version exists already, or the name is another identity's."""

    code = "EAPPLICATION"


@dataclass
class JobRecord:
    """A job as the scheduler stores it. ``input`` is an ``InputSet.description()``."""

    id: str
    spec: JobSpec
    worktime_range: str | None = None
    requirements: dict = field(default_factory=dict)
    payment_per_slice: float = 0.0
    input: dict = field(default_factory=lambda: {"kind": "stream"})
    total: int | None = None
    public: dict = field(default_factory=dict)
    status: str = RUNNING
    max_attempts: int = 3
    created: float = 0.0
    #: For a job built from an application: ``{"name", "version", "function", "categories"}``.
    application: dict | None = None

    @property
    def categories(self) -> list[str]:
        """The categories of the job's application (workers may serve only some); none for other jobs."""
        return list((self.application or {}).get("categories") or [])

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "spec": self.spec.to_dict(),
            "worktime_range": self.worktime_range,
            "requirements": self.requirements,
            "payment_per_slice": self.payment_per_slice,
            "input": self.input,
            "total": self.total,
            "public": self.public,
            "status": self.status,
            "max_attempts": self.max_attempts,
            "created": self.created,
            "application": self.application,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "JobRecord":
        return cls(
            id=d["id"],
            spec=JobSpec.from_dict(d["spec"]),
            worktime_range=d.get("worktime_range"),
            requirements=dict(d.get("requirements") or {}),
            payment_per_slice=float(d.get("payment_per_slice") or 0.0),
            input=dict(d.get("input") or {"kind": "stream"}),
            total=d.get("total"),
            public=dict(d.get("public") or {}),
            status=d.get("status", RUNNING),
            max_attempts=int(d.get("max_attempts", 3)),
            created=float(d.get("created") or 0.0),
            application=dict(d["application"]) if d.get("application") else None,
        )


@dataclass(slots=True)
class Lease:
    """A block of slices of one job, handed to one worker until ``expires`` (``time.time()`` s).

    ``numbers[i]`` is a slice number, ``datums[i]`` its datum (a value of the lossless set) and
    ``attempts[i]`` which attempt this is (1 = first lease).
    """

    job_id: str
    lease_id: str
    numbers: list[int]
    datums: list[Any]
    attempts: list[int]
    expires: float

    def __len__(self) -> int:
        return len(self.numbers)

    def part(self, indexes: Iterable[int]) -> "Lease":
        """The same lease restricted to the slices at ``indexes`` (positions, not slice numbers)."""
        idx = list(indexes)
        return Lease(self.job_id, self.lease_id, [self.numbers[i] for i in idx], [self.datums[i] for i in idx],
                     [self.attempts[i] for i in idx], self.expires)


@dataclass(slots=True)
class Report:
    """Outcomes of some slices of one lease, as columns (``numbers[i]`` ↔ ``oks[i]`` ↔ ...).

    ``values[i]`` is the msgpack of slice ``numbers[i]``'s result when ``oks[i]``, else ``None``;
    ``errors[i]`` its error dict (``SliceError.to_dict()``) when it failed, else ``None``.
    """

    job_id: str
    lease_id: str
    numbers: list[int]
    oks: list[bool]
    values: list[bytes | None]
    errors: list[dict | None]
    walls: list[float]
    cpus: list[float]
    bytes_in: list[int]
    bytes_out: list[int]

    def __len__(self) -> int:
        return len(self.numbers)

    @classmethod
    def ok(cls, lease: Lease, numbers: list[int], values: list[bytes], walls: list[float] | None = None,
           cpus: list[float] | None = None, bytes_in: list[int] | None = None) -> "Report":
        """Successful slices ``numbers`` of ``lease`` with their packed results."""
        n = len(numbers)
        return cls(lease.job_id, lease.lease_id, list(numbers), [True] * n, list(values), [None] * n,
                   walls or [0.0] * n, cpus or [0.0] * n, bytes_in or [0] * n, [len(v) for v in values])

    @classmethod
    def failed(cls, lease: Lease, numbers: list[int], errors: list[dict], walls: list[float] | None = None) -> "Report":
        """Failed slices ``numbers`` of ``lease`` with their error dicts."""
        n = len(numbers)
        return cls(lease.job_id, lease.lease_id, list(numbers), [False] * n, [None] * n, list(errors),
                   walls or [0.0] * n, [0.0] * n, [0] * n, [0] * n)


@dataclass
class SliceReport:
    """One slice's recorded outcome (``Scheduler.results``): DCP's result plus its time and data
    reports, which attempt produced it and which worker."""

    slice_number: int
    ok: bool
    value: bytes | None = None  # msgpack of the result when ok
    error: dict | None = None  # SliceError.to_dict() when not ok
    wall_time: float = 0.0
    cpu_time: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0
    attempt: int = 0  # which attempt produced it (1 = first lease)
    worker: str | None = None  # the worker that computed it


@dataclass(slots=True)
class ResultBatch:
    """Recorded outcomes of a job as columns, as a backend stores them (``result_batches``)."""

    numbers: list[int]
    oks: list[bool]
    values: list[bytes | None]
    errors: list[dict | None]
    walls: list[float]
    cpus: list[float]
    bytes_in: list[int]
    bytes_out: list[int]
    attempts: list[int]
    workers: list[str | None]

    def reports(self) -> Iterator[SliceReport]:
        for row in zip(self.numbers, self.oks, self.values, self.errors, self.walls, self.cpus, self.bytes_in,
                       self.bytes_out, self.attempts, self.workers):
            n, ok, value, error, wall, cpu, bin_, bout, attempt, worker = row
            yield SliceReport(n, bool(ok), value, error, wall, cpu, bin_, bout, attempt, worker)


@dataclass
class WorkerInfo:
    id: str
    worktimes: dict[str, str]
    capabilities: dict
    last_seen: float
    #: The application categories it serves (``dcp-worker --category``); ``None`` = every job.
    categories: list[str] | None = None


@dataclass
class AppFunction:
    """One named work function of an application: the work and how it runs (``spec``: its
    ``id`` and ``arguments`` are unused; a job's are its own), the worktime range and requirements."""

    spec: JobSpec
    worktime_range: str | None = None
    requirements: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "worktime_range": self.worktime_range, "requirements": self.requirements}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AppFunction":
        return cls(JobSpec.from_dict(d["spec"]), d.get("worktime_range"), dict(d.get("requirements") or {}))


@dataclass
class ApplicationRecord:
    """A published application version (DCP's "Application Handles"): plain data, so any
    key-value store can hold it as one record under ``(name, version)``.

    ``owner`` is a fingerprint of the identity that published it (never the identity itself);
    ``categories`` are DCP's "hashTags" (workers may choose the categories they serve);
    ``public`` holds ``description`` and ``link``.
    """

    name: str
    version: str
    functions: dict[str, AppFunction]
    owner: str = ""
    categories: list[str] = field(default_factory=list)
    public: dict = field(default_factory=dict)
    published: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "owner": self.owner, "categories": list(self.categories),
                "public": dict(self.public), "published": self.published,
                "functions": {n: f.to_dict() for n, f in self.functions.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ApplicationRecord":
        return cls(name=d["name"], version=d["version"], owner=d.get("owner") or "",
                   categories=list(d.get("categories") or []), public=dict(d.get("public") or {}),
                   published=float(d.get("published") or 0.0),
                   functions={n: AppFunction.from_dict(f) for n, f in (d.get("functions") or {}).items()})


class Scheduler(ABC):
    """The interface every backend implements. All methods are thread-safe."""

    # -- deployer side --------------------------------------------------------------------------
    @abstractmethod
    def submit(self, job: JobRecord) -> None:
        """Store a new job (emits ``accepted``). A duplicate id is a ``SchedulerError``."""

    @abstractmethod
    def add_slices(self, job_id: str, items: list[tuple[int, bytes]]) -> None:
        """Append stream slices ``(slice_number, packed datum)``; duplicates are ignored."""

    @abstractmethod
    def close_input(self, job_id: str, total: int) -> None:
        """No more slices will be added; the job has ``total`` slices."""

    def keep_feeding(self, job_id: str, seconds: float, *, watch_caller: bool = False) -> None:
        """The deployer of stream job ``job_id`` is alive and still sending its input: keep the
        job for ``seconds`` more (its feed lease, renewed on a timer while the deployer feeds).

        ``watch_caller``: the calling process is the deployer, and a store that can see it (SQLite,
        on the same machine) may go by it instead: the job ends as soon as that process is gone,
        and not while it lives (stopped with Ctrl-Z, or its machine asleep past the lease).

        Why: the inputs not yet sent exist only in the deployer's process. If it dies mid-stream
        nobody will ever call ``close_input``; once the feed lease has expired with the input still
        open, the store cancels the job with ``feed_lost_reason`` (see the module docstring)
        instead of leaving it running for ever. A job that never had a feed lease (deployed by an
        older version) never expires this way. A no-op for a job whose input is closed or that
        has ended; ``UnknownJob`` for no such job.

        Not abstract: this default records nothing, so a backend that does not track feed leases
        keeps an open stream job until ``close_input``, as every backend did before.
        """

    @abstractmethod
    def events(self, job_id: str, after: int = 0, *, wait: float = 0.0, results: bool = True) -> list[tuple[int, dict]]:
        """Events with sequence number > ``after``, in order; blocks up to ``wait`` s for one.
        ``results=False`` leaves out ``result`` and ``error`` events."""

    @abstractmethod
    def result_batches(self, job_id: str) -> Iterator[ResultBatch]:
        """The job's recorded final outcomes as columns, batch by batch (a deployer collecting a
        million results never holds them twice)."""

    def results(self, job_id: str) -> dict[int, SliceReport]:
        """Every recorded final report of the job, by slice number (small jobs, tools, tests)."""
        return {r.slice_number: r for batch in self.result_batches(job_id) for r in batch.reports()}

    @abstractmethod
    def get_job(self, job_id: str) -> JobRecord:
        """The stored job; ``UnknownJob`` if there is none."""

    @abstractmethod
    def status(self, job_id: str) -> dict:
        """``{total, distributed, computed, failed, status}``, plus ``reason`` when the job is
        unschedulable or cancelled (why, in a sentence)."""

    @abstractmethod
    def cancel(self, job_id: str, reason: str = "cancelled by the deployer") -> None:
        """Stop handing out the job's slices and ignore its late results (emits ``cancel``)."""

    @abstractmethod
    def set_payment(self, job_id: str, payment_per_slice: float) -> None:
        """Change what the job offers per slice from now on (DCP: ``exec(newCost)`` on a deployed
        job updates its bid); it orders leasing like the payment given at submit."""

    @abstractmethod
    def list_jobs(self) -> list[JobRecord]:
        """Every stored job, newest first."""

    # -- worker side ----------------------------------------------------------------------------
    @abstractmethod
    def lease(
        self, worker_id: str, worktimes: dict[str, str], capabilities: dict, max_slices: int, lease_seconds: float,
        *, jobs: list[str] | None = None, pid: int | None = None, categories: list[str] | None = None,
    ) -> list[Lease]:
        """Up to ``max_slices`` slices this worker can run, in blocks, leased for ``lease_seconds``.

        ``jobs`` restricts leasing to these job ids (local execution of one job); ``pid`` is the
        worker's process id when it is not the caller's (lets the store notice a dead worker);
        ``categories``: the worker serves only jobs whose application carries one of them (and
        ``workers()`` lists them, so ``check_schedulable`` knows).
        """

    @abstractmethod
    def heartbeat(self, worker_id: str, lease_ids: list[str], lease_seconds: float,
                  unstarted: Mapping[str, list[int]] | None = None) -> list[str]:
        """Extend these leases; returns the ids that are no longer valid (drop their work).

        ``unstarted`` names, per lease id, the slices the worker has not started yet (each
        heartbeat replaces what the last one said). Should the lease expire before the next
        heartbeat (the worker died), those slices go back without using an attempt, so a worker
        killed while holding a big lease does not charge all of it; a slice returned so that
        is charged the next time it is lost, whatever that worker says, so work that kills
        workers just after it starts still runs out of attempts."""

    @abstractmethod
    def report(self, reports: list[Report]) -> None:
        """Record outcomes: successes and final errors once each; retryable errors go back to the
        queue (until ``max_attempts``); slices no longer their lease's are ignored."""

    @abstractmethod
    def return_slices(self, leases: list[Lease]) -> None:
        """Give the slices of these (possibly partial, ``Lease.part``) leases back unrun (worker
        shutting down, or unable to run them): leased again without using an attempt."""

    @abstractmethod
    def post_events(self, job_id: str, events: list[dict]) -> None:
        """Append worker events (console/custom/progress/noProgress) to the job's log."""

    def replaced(self) -> str | None:
        """Why this scheduler no longer serves what its URL names now (SQLite: the file was deleted,
        or another put at its path, while it was open), or ``None``. A serving worker checks it
        now and then: deployers use what the URL names."""
        return None

    def give_up_after(self, stop: threading.Event, grace: float) -> None:
        """Once ``stop`` is set, calls waiting for a store that does not answer give up within
        ``grace`` seconds instead of the store's whole retry (a ``dcp-worker`` told to stop,
        holding no slice, must not take minutes). Backends that do not wait so ignore it."""

    def writes_refused(self) -> str | None:
        """Why the store refuses every write now (workers then cannot check in or record results),
        or ``None``: one cheap look, asked by a deployer that sees no live worker, so that it
        names the cause instead of waiting for workers to attach. Backends that cannot tell say
        ``None``."""
        return None

    @abstractmethod
    def workers(self) -> list[WorkerInfo]:
        """Workers seen within ``WORKER_TTL`` seconds."""

    @abstractmethod
    def check_schedulable(self, job_id: str, grace: float = 0.0) -> str | None:
        """If live workers exist but none can run the job, mark it ``unschedulable`` (event +
        status) and return the reason; ``None`` when some worker can (or none are attached yet
        and ``grace`` seconds since submission have not passed)."""

    # -- applications ---------------------------------------------------------------------------
    @abstractmethod
    def publish_application(self, app: ApplicationRecord) -> None:
        """Store a new application version (``validate_application`` first).

        ``ApplicationRefused`` when ``(name, version)`` exists (an application changes only by a
        new version) or when ``name`` was first published by another ``owner``; atomic, so two
        identities racing for a new name cannot both own it.
        """

    @abstractmethod
    def get_application(self, name: str, version: str | None = None) -> ApplicationRecord:
        """The highest published version of ``name`` within the npm range ``version`` (``None``:
        the newest); ``UnknownApplication`` saying what is published (``pick_version`` words it)."""

    @abstractmethod
    def list_applications(self) -> list[ApplicationRecord]:
        """Every published version, by name, then by ascending version."""

    def delete_job(self, job_id: str) -> None:
        """Forget a job and everything stored for it (a running job is cancelled first)."""
        raise NotImplementedError(f"{type(self).__name__} cannot delete jobs")

    @property
    def url(self) -> str | None:
        """The URL other processes open this store with (``open_scheduler``), or ``None`` for a
        store only this process can reach (a private in-memory one)."""
        return None

    def leave(self, worker_id: str) -> None:
        """The worker stops (after returning its unfinished slices): forget it."""

    def wait_for_work(self, timeout: float) -> bool:
        """Block up to ``timeout`` s; ``True`` when woken early because this backend saw new work."""
        time.sleep(timeout)
        return False

    def wake_waiters(self) -> None:
        """End the ``wait_for_work`` calls of this process on this store now (a worker told to
        stop). Backends whose waits are short may do nothing."""

    def job_summaries(self) -> list[dict]:
        """One dict per job (``dcp-worker jobs``): id, worktime, status, reason, total,
        distributed, computed, failed, created, payment_per_slice, public."""
        out = []
        for rec in self.list_jobs():
            st = self.status(rec.id)
            out.append({"id": rec.id, "worktime": rec.spec.worktime, "status": st["status"], "reason": st.get("reason"),
                        "total": st["total"], "distributed": st["distributed"], "computed": st["computed"],
                        "failed": st["failed"], "created": rec.created, "payment_per_slice": rec.payment_per_slice,
                        "public": rec.public})
        return out

    @abstractmethod
    def close(self) -> None:
        """Release connections. The stored data stays."""

    def reuse_token(self) -> Any:
        """``None`` (the default), or a value that stays equal while this open scheduler may
        serve the next job of this process instead of being closed and opened again
        (``scheduler/reuse.py``). The SQLite store's: its file's identity, so a store deleted or
        replaced by another file meanwhile is opened afresh."""
        return None

    def __enter__(self) -> "Scheduler":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- checks ---------------------------------------------------------------------------------------
def validate_job(job: JobRecord) -> None:
    """Raise ``SchedulerError`` naming what is wrong with a job before storing it."""
    if not isinstance(job.id, str) or not job.id:
        raise SchedulerError("job id must be a non-empty string")
    if job.worktime_range:
        try:
            parse_range(job.worktime_range)
        except ValueError as e:
            raise SchedulerError(str(e)) from None
    if not isinstance(job.requirements, dict):
        raise SchedulerError(f"requirements must be a nested dict of booleans, got {type(job.requirements).__name__}")
    if job.max_attempts < 1:
        raise SchedulerError(f"max_attempts must be at least 1, got {job.max_attempts}")
    if not isinstance(job.input, dict) or "kind" not in job.input:
        raise SchedulerError("input must be an InputSet.description() dict with a 'kind'")


def check_payment(payment_per_slice: Any) -> float:
    """A bid as stored: a finite number >= 0, else ``SchedulerError``."""
    try:
        payment = float(payment_per_slice)
    except (TypeError, ValueError):
        payment = float("nan")
    if not payment >= 0 or payment == float("inf"):
        raise SchedulerError(f"payment per slice must be a finite number >= 0, got {payment_per_slice!r}")
    return payment


def validate_application(app: ApplicationRecord) -> None:
    """Raise ``SchedulerError`` naming what is wrong with an application before storing it."""
    if not isinstance(app.name, str) or not app.name.strip() or app.name != app.name.strip():
        raise SchedulerError(f"application name must be a non-empty string without surrounding spaces, got {app.name!r}")
    try:
        parse_version(app.version)
    except ValueError as e:
        raise SchedulerError(f"application {app.name}: {e} (a published version is exact; ranges are for using one)") from None
    if "+" in str(app.version):
        # Semver gives build metadata no precedence: 1.0.0+b would be a second 1.0.0 with other work.
        core = str(app.version).split("+", 1)[0]
        raise SchedulerError(f"application {app.name}: version {app.version} has build metadata, which semver ranks "
                             f"equal to {core}; a published version never changes, so publish a new one (e.g. the "
                             "next patch version) without '+...'")
    if not app.functions:
        raise SchedulerError(f"application {app.name} {app.version} has no functions; define one before publishing")
    for fname, fn in app.functions.items():
        if not isinstance(fname, str) or not fname:
            raise SchedulerError(f"application {app.name}: function names must be non-empty strings, got {fname!r}")
        if fn.worktime_range:
            try:
                parse_range(fn.worktime_range)
            except ValueError as e:
                raise SchedulerError(f"application {app.name}, function {fname}: {e}") from None


def pick_version(name: str, versions: Iterable[str], wanted: str | None) -> str:
    """The highest of an application's published ``versions`` within ``wanted`` (an npm range;
    ``None`` = any), or ``UnknownApplication`` saying what exists."""
    versions = list(versions)
    if not versions:
        raise UnknownApplication(f"no application named {name!r} is published on this scheduler; publish it with "
                                 f"compute.Application({name!r}, '1.0.0', identity).publish()")
    try:
        best = max_satisfying(versions, wanted)
    except ValueError as e:
        raise UnknownApplication(f"application {name}: {e}") from None
    if best is None:
        shown = ", ".join(sorted(versions, key=parse_version))
        raise UnknownApplication(f"application {name} has no version within {wanted!r}; published: {shown}")
    return best


#: What ``unusable_work_reason`` says, as a deployer recognises it later (group 1: the code).
UNUSABLE_WORK_REASON = re.compile(r"the work is unusable \((\w+)\): ")


def unusable_work_reason(errors: Iterable[Mapping[str, Any] | None]) -> str | None:
    """The cancel reason when a final error says the work itself is unusable (``EBADWORK``,
    ``ENOSLICEHANDLER``: ``UNUSABLE_WORK_CODES``): every other slice would fail the same way, so
    the scheduler stops the job (whoever runs it)."""
    for error in errors:
        if error and str(error.get("code")) in UNUSABLE_WORK_CODES:
            return f"the work is unusable ({error.get('code')}): {error.get('message', '')}"
    return None


def lost_error(slice_number: int, attempts: int, max_attempts: int) -> dict:
    """The final error of a slice whose leases were lost ``max_attempts`` times (every backend)."""
    return {"code": ErrorCode.ECRASH.value, "stack": None, "name": None,
            "message": f"slice {slice_number} was lost {attempts} times (its worker died or stopped reporting); "
                       f"giving up after max_attempts={max_attempts}"}


def is_retryable(error: Mapping[str, Any] | None) -> bool:
    if not error:
        return False
    return bool(error.get("retryable")) or str(error.get("code")) in RETRYABLE_CODES


# -- opening ------------------------------------------------------------------------------------
def default_url() -> str:
    """``$DCP_SCHEDULER``, else a SQLite file in the per-user data directory."""
    env = os.environ.get(ENV_SCHEDULER, "").strip()
    if env:
        return env
    from .urls import sqlite_url  # here: urls imports this module

    return sqlite_url(default_store_path())


def default_store_path() -> str:
    """The per-user embedded store (its folder is created on first use; no other store's is)."""
    import platformdirs

    return os.path.join(platformdirs.user_data_dir("dcp-worktimes", appauthor=False), "scheduler.db")


def open_scheduler(url: str | None = None, *, read_only: bool = False) -> Scheduler:
    """Open a scheduler by URL.

    ``None`` → ``$DCP_SCHEDULER`` or ``sqlite:///<user data dir>/dcp-worktimes/scheduler.db``;
    ``sqlite:///abs/path.db`` (three slashes then an absolute path, so four in total on POSIX);
    ``sqlite://relative/path.db`` and plain paths ending in ``.db`` are accepted too;
    ``sqlite://:memory:`` is a private in-process store (tests);
    ``redis://[[user]:password@]host[:port][/db][?group=NAME]`` (``rediss://`` for TLS) is a shared
    Redis 7 server (``scheduler/redis``; needs ``pip install 'dcp-worktimes[redis]'``).
    ``read_only``: open an existing store only to read it (``dcp-worker jobs``; SQLite).

    >>> open_scheduler("sqlite:///tmp/dcp-jobs.db")      # doctest: +SKIP
    <SqliteScheduler /tmp/dcp-jobs.db>
    """
    from .urls import parse_url

    kind, target = parse_url(url if url is not None else default_url())
    if kind == "sqlite":
        from .sqlite import SqliteScheduler

        return SqliteScheduler(target, read_only=read_only)
    if kind == "redis":
        try:
            from .redis import RedisScheduler
        except ImportError as e:
            if (e.name or "").split(".")[0] not in ("redis", "hiredis"):
                raise
            raise SchedulerError("the Redis scheduler needs the redis client: pip install 'dcp-worktimes[redis]'") from None
        return RedisScheduler(target)
    raise SchedulerError(f"unsupported scheduler URL {url!r}")  # parse_url already said why
