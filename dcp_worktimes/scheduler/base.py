"""The scheduler interface: a durable job store that hands slices to workers under leases.

A **scheduler** holds jobs (their spec, how their input is sliced, their results and events) and
hands slices to workers. Every backend (the embedded SQLite one, a Redis one later) implements
``Scheduler`` and passes the conformance suite in ``dcp_worktimes.testing_scheduler``.

Life of a job::

    from dcp_worktimes.scheduler import open_scheduler, JobRecord, SliceReport
    from dcp_worktimes.worktime import JobSpec

    s = open_scheduler("sqlite:///tmp/jobs.db")
    s.submit(JobRecord(id="j1", spec=JobSpec(id="j1", worktime="echo"),
                       input={"kind": "range", "start": 0, "end": 9, "step": 1}, total=10))
    leases = s.lease("w1", {"echo": "1.0.0"}, {}, max_slices=4, lease_seconds=30)
    s.complete([(l, SliceReport(l.slice_number, True, value=l.datum)) for l in leases])
    s.status("j1")        # {'total': 10, 'distributed': 4, 'computed': 4, 'failed': 0, 'status': 'running'}
    s.events("j1")        # [(1, {'type': 'accepted'}), ..., (n, {'type': 'result', 'sliceNumber': 0, ...})]

Rules every backend keeps (the conformance suite checks them):

* **Leases.** A slice handed out by ``lease`` belongs to that lease until it expires
  (``lease_seconds``, renewed by ``heartbeat``). An expired slice is handed out again with
  ``attempt + 1``; a report carrying an old lease is ignored, so **each slice's result is
  recorded exactly once**. A slice whose leases were lost ``max_attempts`` times fails with
  ``ECRASH``.
* **Unusable work.** A final ``EBADWORK`` error (the work does not compile, its top level raises)
  cancels the job at once with that reason: every other slice would fail the same way.
* **Retries.** ``fail`` with a retryable error (``ECRASH``: the evaluator died; ``EWORKREJECT``:
  the work called ``work.reject()``, which DCP retries and then gives back; or an error dict
  with ``"retryable": True``) puts the slice back until ``max_attempts``; any other error is the
  work's fault and is final.
* **Order.** Slices of the job paying more per slice are leased first; among equals, older jobs
  first; within a job, retried slices first, then ascending slice numbers.
* **Matching.** A worker gets a slice only when its worktimes (``{name: version}``) include the
  job's worktime within ``worktime_range`` and its capabilities satisfy the job's requirements
  (nested dicts of booleans; ``True`` = must have, ``False`` = must not have).
  ``check_schedulable`` reports a job no live worker can run (``unschedulable`` event + status).
* **Inputs.** Ranges and distributions are stored as descriptions (``InputSet.description()``)
  and sliced on demand with ``dcp_worktimes.inputs.input_set_from_description``; streams
  arrive with ``add_slices`` in batches and end with ``close_input``.
* **Events.** Each job has an ordered event log (``events(job_id, after)``), with these types:
  ``accepted``, ``readyStateChange`` ({state}), ``status`` ({total, distributed, computed, failed}),
  ``result`` ({sliceNumber, value: msgpack bytes}), ``console`` ({level, message, sliceNumber,
  same}), ``error`` ({sliceNumber, code, message, stack, name}), ``noProgress`` ({sliceNumber}),
  ``custom`` ({name, value, sliceNumber}), ``progress`` ({sliceNumber, value}), ``complete``
  ({computed, failed}), ``cancel`` ({reason}), ``unschedulable`` ({reason}).

Refinements over the first interface draft (additive only): ``events`` takes ``wait=`` seconds to
block until something new arrives; ``heartbeat`` returns the lease ids that are no longer valid
(expired and handed to someone else, or their job was cancelled); ``workers()`` lists live
workers; ``check_schedulable(job_id)``; ``result`` events carry the result bytes; ``lease``
takes ``jobs=`` (only these job ids) and ``pid=``; ``leave``, ``wait_for_work`` and
``job_summaries`` have default implementations; ``delete_job``; ``SliceReport.attempt`` and ``.worker``; ``cancel`` takes a ``reason``.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..errors import DcpError, ErrorCode
from ..versions import parse_range
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


class SchedulerError(DcpError):
    """Misuse of a scheduler: unknown job, bad URL, duplicate job id ..."""

    code = "ESCHEDULER"


class UnknownJob(SchedulerError):
    code = "ENOJOB"


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
        )


@dataclass
class Lease:
    """One slice handed to one worker until ``expires`` (``time.time()`` seconds)."""

    job_id: str
    slice_number: int
    datum: bytes  # msgpack of the datum (dcp_worktimes.values.pack)
    lease_id: str
    attempt: int
    expires: float


@dataclass
class SliceReport:
    """A slice's outcome as a worker reports it: DCP's result plus its time and data reports."""

    slice_number: int
    ok: bool
    value: bytes | None = None  # msgpack of the result when ok
    error: dict | None = None  # SliceError.to_dict() when not ok
    wall_time: float = 0.0
    cpu_time: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0
    attempt: int = 0  # filled in by ``results()``: which attempt produced it (1 = first lease)
    worker: str | None = None  # filled in by ``results()``: the worker that computed it


@dataclass
class WorkerInfo:
    id: str
    worktimes: dict[str, str]
    capabilities: dict
    last_seen: float


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

    @abstractmethod
    def events(self, job_id: str, after: int = 0, *, wait: float = 0.0) -> list[tuple[int, dict]]:
        """Events with sequence number > ``after``, in order; blocks up to ``wait`` s for one."""

    @abstractmethod
    def results(self, job_id: str) -> dict[int, SliceReport]:
        """Every recorded final report of the job, by slice number."""

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
        *, jobs: list[str] | None = None, pid: int | None = None,
    ) -> list[Lease]:
        """Up to ``max_slices`` slices this worker can run, each leased for ``lease_seconds``.

        ``jobs`` restricts leasing to these job ids (local execution of one job); ``pid`` is the
        worker's process id when it is not the caller's (lets the store notice a dead worker).
        """

    @abstractmethod
    def heartbeat(self, worker_id: str, lease_ids: list[str], lease_seconds: float) -> list[str]:
        """Extend these leases; returns the ids that are no longer valid (drop their work)."""

    @abstractmethod
    def complete(self, done: list[tuple[Lease, SliceReport]]) -> None:
        """Record successful slices; reports under a lease that is no longer current are ignored."""

    @abstractmethod
    def fail(self, failed: list[tuple[Lease, SliceReport]]) -> None:
        """Record failed slices: retryable errors go back to the queue, others are final."""

    @abstractmethod
    def return_slices(self, leases: list[Lease]) -> None:
        """Give slices back unrun (worker shutting down): leased again without using an attempt."""

    @abstractmethod
    def post_events(self, job_id: str, events: list[dict]) -> None:
        """Append worker events (console/custom/progress/noProgress) to the job's log."""

    @abstractmethod
    def workers(self) -> list[WorkerInfo]:
        """Workers seen within ``WORKER_TTL`` seconds."""

    @abstractmethod
    def check_schedulable(self, job_id: str, grace: float = 0.0) -> str | None:
        """If live workers exist but none can run the job, mark it ``unschedulable`` (event +
        status) and return the reason; ``None`` when some worker can (or none are attached yet
        and ``grace`` seconds since submission have not passed)."""

    def delete_job(self, job_id: str) -> None:
        """Forget a job and everything stored for it (a running job is cancelled first)."""
        raise NotImplementedError(f"{type(self).__name__} cannot delete jobs")

    def leave(self, worker_id: str) -> None:
        """The worker stops (after returning its unfinished slices): forget it."""

    def wait_for_work(self, timeout: float) -> bool:
        """Block up to ``timeout`` s; ``True`` when woken early because this backend saw new work."""
        time.sleep(timeout)
        return False

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


def unusable_work_reason(errors: Iterable[Mapping[str, Any] | None]) -> str | None:
    """The cancel reason when a final error says the work itself is unusable (``EBADWORK``): every
    other slice would fail the same way, so the scheduler stops the job (whoever runs it)."""
    for error in errors:
        if error and str(error.get("code")) == ErrorCode.EBADWORK.value:
            return f"the work is unusable (EBADWORK): {error.get('message', '')}"
    return None


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
    import platformdirs

    path = os.path.join(platformdirs.user_data_dir("dcp-worktimes", appauthor=False), "scheduler.db")
    return "sqlite:///" + path


def open_scheduler(url: str | None = None) -> Scheduler:
    """Open a scheduler by URL.

    ``None`` → ``$DCP_SCHEDULER`` or ``sqlite:///<user data dir>/dcp-worktimes/scheduler.db``;
    ``sqlite:///abs/path.db`` (three slashes then an absolute path, so four in total on POSIX);
    ``sqlite://relative/path.db`` and plain paths ending in ``.db`` are accepted too;
    ``sqlite://:memory:`` is a private in-process store (tests).

    >>> open_scheduler("sqlite:///tmp/dcp-jobs.db")      # doctest: +SKIP
    <SqliteScheduler /tmp/dcp-jobs.db>
    """
    from .urls import parse_url

    kind, target = parse_url(url if url is not None else default_url())
    if kind == "sqlite":
        from .sqlite import SqliteScheduler

        return SqliteScheduler(target)
    raise SchedulerError(f"unsupported scheduler URL {url!r}")  # parse_url already said why


def now() -> float:
    return time.time()


def iter_chunks(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    chunk: list[Any] = []
    for x in items:
        chunk.append(x)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
