"""The worker loop: lease slices the installed worktimes can run, run them, report in batches.

::

    from dcp_worktimes.scheduler import open_scheduler
    from dcp_worktimes.scheduler.worker import Worker

    with open_scheduler("sqlite:///tmp/jobs.db") as s:
        Worker(s, worktimes=["echo"], cores=2).run(until_idle=True)

or, from the command line (``dcp-worker --worktime echo --scheduler sqlite:///tmp/jobs.db``),
``run_worker(url, ["echo"], cores=2)``.

One thread does all scheduler traffic: it keeps about ``queue_seconds`` of work per core leased
and queued on the ``EvaluatorPool`` (so evaluators never wait for the store, yet a slow job's
slices are not hoarded away from other workers), collects the block outcomes that the pool's
threads hand over, and writes them back as ``Report`` columns every ``flush_interval`` seconds
(or ``flush_size`` slices), together with the console/emit/progress events of those slices.
Leases, pool submissions and reports are blocks of slices: the per-slice work of this loop is a
few list operations.
Leases are extended every ``lease_seconds / 3``. A worker that dies simply stops extending them:
the scheduler hands its slices to someone else (at once, if it sees the process is gone). Every
``CANCEL_CHECK`` seconds the worker reads the status of the jobs it is running, so a job the
deployer cancels stops on this worker within about a second, not at the next lease extension.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

from ..errors import ErrorCode, WorktimeNotFound
from ..limits import FLAGS, Limits, check_cores, show
from ..plugins import Registration, get_worktime, get_worktimes
from ..recent import Recent
from ..worktime import JobSpec, Probe
from .base import FINAL_STATES, JobRecord, Lease, Report, Scheduler, SchedulerError, StoreUnavailable, UnknownJob
from .matching import WITHDRAWN, check_categories, merge_capabilities
from .slicing import JOBS_CACHED

log = logging.getLogger(__name__)

#: Seconds between reads of the running jobs' status (a cheap read; a cancel stops slices this soon).
CANCEL_CHECK = 1.0
#: Seconds console/progress/emit events of running slices may wait for a write (results flush sooner).
EVENTS_FLUSH = 0.25


#: Longest wait between two attempts to write to a failing store (the first retry is at once-ish).
STORE_RETRY_MAX = 5.0

#: A job with no slice here for this long (none leased or running since) has its evaluators released:
#: they exit, and spares start for the next job (a finished job's state must not stay in memory
#: until the next job needs the slot). Long enough that a job's next lease usually comes first.
RELEASE_AFTER = 1.0

#: Seconds between the checks of which jobs ended (for ``WorkerEvents.job_finished``).
REPORT_CHECK = 2.0
#: A job this worker has had no slice of for this long is reported as finished here (it may still
#: run elsewhere, or wait for a deployer); a later slice of it starts it again.
IDLE_JOB = 60.0


class WorkerEvents:
    """What a worker tells its owner (``dcp-worker``'s log: ``dcp_worktimes.worker_log``).

    Called on the worker's loop thread, never from an evaluator's; the default does nothing.
    Subclass and pass ``Worker(..., events=...)``::

        class Counter(WorkerEvents):
            def slices_done(self, job_id, report):
                print(job_id, sum(report.oks), "ok")
    """

    def job_started(self, job: JobRecord) -> None:
        """The first slice of ``job`` was leased here (or the first since it was reported finished)."""

    def slices_done(self, job_id: str, report: Report) -> None:
        """Final outcomes of some of ``job_id``'s slices as written to the scheduler (``Report``
        columns: ``numbers``, ``oks``, ``errors`` (dicts with the ``code``), ``walls`` ...)."""

    def job_finished(self, job_id: str, status: dict) -> None:
        """``job_id`` has nothing left here: ``status`` is ``Scheduler.status`` (its ``status`` says
        whether the job as a whole ended) or ``{"status": "gone"}`` for a deleted job."""


#: Seconds a worktime whose evaluators could not prepare a job for reasons of this machine (its
#: runtime missing, its disk full) is not offered, before the worker tries it again.
DISABLE_SECONDS = 60.0
#: Seconds a stopping ``dcp-worker`` waits for a store that does not answer, from the moment the
#: stop was noticed (every call after it shares that deadline).
STOP_GRACE = 10.0


def resolve_worktimes(names: Iterable[str] | None, config: Mapping[str, Mapping[str, Any]] | None = None
                      ) -> tuple[dict[str, Registration], dict[str, Probe], dict[str, str]]:
    """The worktimes a worker offers, their probes, and the installed ones it cannot offer with why.

    ``names`` empty/None: every installed worktime that is available here (the others are
    returned with their reasons, for a log line). Named ones must be installed
    (``WorktimeNotFound`` lists what is) and available (``WorktimeNotFound`` with the probe's reason).
    """
    config = config or {}
    regs = {name: get_worktime(name) for name in names} if names else get_worktimes()
    probes = {name: reg.probe(config.get(name)) for name, reg in regs.items()}
    unavailable = {name: p.unavailable for name, p in probes.items() if p.unavailable is not None}
    if names and unavailable:
        name, why = next(iter(unavailable.items()))
        raise WorktimeNotFound(f"worktime {name} cannot run on this machine: {why}")
    offered = {name: reg for name, reg in regs.items() if name not in unavailable}
    return offered, {name: probes[name] for name in offered}, unavailable  # type: ignore[misc]


@dataclass(slots=True)
class _Held:
    """A lease this worker holds: which of its slices were reported (the rest go back on shutdown)."""

    lease: Lease
    open: int
    reported: set[int] = field(default_factory=set)


def cap_limits(job: Limits, worker: Limits | None) -> Limits:
    """The stricter of the job's and the worker's limit for each resource (``None`` = unlimited).

    The no-progress watchdog is not a resource but a check for hung work: it is off when the job
    *or* the worker turns it off (DCP: "unless the job or worker disables the watchdog"), and
    otherwise the shorter timeout applies.

    >>> cap_limits(Limits.parse(memory="4GiB"), Limits.parse(progress_timeout="off")).progress_timeout is None
    True
    """
    if worker is None:
        return job
    changes = {}
    for name in ("wall_time", "cpu_time", "memory", "output"):
        a, b = getattr(job, name), getattr(worker, name)
        changes[name] = b if a is None else a if b is None else min(a, b)
    a, b = job.progress_timeout, worker.progress_timeout
    changes["progress_timeout"] = None if a is None or b is None else min(a, b)
    return replace(job, **changes)


class Worker:
    """Takes slices from ``scheduler`` and runs them on an ``EvaluatorPool`` of ``cores`` evaluators.

    ``worktimes``: names of installed worktimes to offer (default: all installed);
    ``capabilities``: extra capabilities merged over the worktimes' own (matched against job
    requirements); ``limits``: caps on every slice's limits; ``jobs``: only lease these job ids
    (local execution of one job); ``categories``: serve only jobs of applications carrying one of
    these categories (``None``: every job); ``events``: a ``WorkerEvents`` told which jobs start
    and finish here and how their slices end; ``pool``: an existing pool to share (not closed by
    the worker).
    """

    def __init__(
        self,
        scheduler: Scheduler,
        worktimes: list[str] | None = None,
        cores: int | None = None,
        *,
        capabilities: dict | None = None,
        limits: Limits | None = None,
        config: Mapping[str, Mapping[str, Any]] | None = None,
        jobs: list[str] | None = None,
        categories: list[str] | None = None,
        worker_id: str | None = None,
        lease_seconds: float = 30.0,
        queue_seconds: float = 0.5,
        max_per_core: int = 4096,
        flush_interval: float = 0.05,
        flush_size: int = 2000,
        poll_interval: float = 0.05,
        idle_poll_interval: float = 0.5,
        pool: Any = None,
        events: WorkerEvents | None = None,
    ) -> None:
        check_cores(cores)
        self.scheduler = scheduler
        #: The owner's settings per worktime (``Worktime.config``), handed to every evaluator.
        self.config = {name: dict(c) for name, c in (config or {}).items()}
        self.registrations, probes, self.unavailable = resolve_worktimes(worktimes, self.config)
        if not self.registrations:
            why = "; ".join(f"{n}: {r}" for n, r in self.unavailable.items())
            raise WorktimeNotFound("no installed worktime can run on this machine" + (f" ({why})" if why else
                                   "; install one (for example: pip install dcp-worktime-echo)"))
        self.worktimes = {name: reg.version for name, reg in self.registrations.items()}
        self.capabilities = merge_capabilities(*(p.capabilities for p in probes.values()), capabilities)
        self._disabled: dict[str, tuple[float, str]] = {}  # worktime -> (until, why): prepare failed here
        self.cores = cores or os.cpu_count() or 1
        self.limits = limits
        self.jobs = list(jobs) if jobs else None
        self.categories = check_categories(categories, "categories") if categories is not None else None
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.lease_seconds = lease_seconds
        self.queue_seconds = queue_seconds
        self.max_per_core = max_per_core
        self._wall_sum = 0.0
        self._wall_n = 0
        self._next_lease = 0.0
        self._lease_backoff = 0.0
        self.flush_interval = flush_interval
        self.flush_size = flush_size
        self.poll_interval = poll_interval
        self.idle_poll_interval = idle_poll_interval
        self._pool = pool
        self._owns_pool = pool is None
        self._cond = threading.Condition()
        self._inflight: dict[str, _Held] = {}  # lease id -> the lease and its unreported slices
        self._open = 0  # slices leased and not reported yet
        self._outcomes: list[Any] = []  # runner.Outcome blocks not reported yet
        self._waiting = 0  # slices in self._outcomes
        self._events: dict[str, list[dict]] = {}
        # Writes not done yet, in order: ("events", (job, events)), ("back", leases), ("report", reports).
        # A failing store (disk full, Redis down) leaves them here, to retry; nothing is dropped.
        self._backlog: list[tuple[str, Any]] = []
        self._outage: float | None = None  # when the store started failing (None: it works)
        self._outage_wait = 0.0
        #: The store's last failure while it is failing (``None`` once it works again).
        self.store_trouble: StoreUnavailable | None = None
        self._specs: Recent[str, JobSpec] = Recent(JOBS_CACHED)
        self._capped: Recent[str, dict[str, float]] = Recent(JOBS_CACHED)  # job -> the limits this worker lowered
        self._served: dict[str, float] = {}  # jobs with evaluators here -> when a slice was last leased or ended
        self._dropped: set[str] = set()  # cancelled jobs: outcomes are discarded
        self.completed = 0
        self.failed = 0
        self.error: BaseException | None = None
        self.events = events
        self._last_slice: dict[str, float] = {}  # jobs reported started -> when a slice of theirs was last leased

    @property
    def leased(self) -> int:
        """Slices leased here and not yet reported (queued on the evaluators or running)."""
        return len(self._inflight)

    # -- callbacks from pool threads ------------------------------------------------------------
    def _on_outcome(self, outcome: Any) -> None:
        with self._cond:
            if outcome.tag not in self._inflight:
                # A lease dropped here (lost, or its job ended): nothing to report, and its dropped
                # slices' zero walls must not pull the slice-time estimate down (leases too big).
                return
            self._outcomes.append(outcome)
            self._wall_sum += sum(outcome.walls)
            self._wall_n += len(outcome)
            self._waiting += len(outcome)
            # Wake the loop when a flush is due by size, there is room worth a lease, or nothing
            # else is running (no later outcome to batch this one with: report it now).
            k = self._waiting
            if k >= self.flush_size or k >= self._target() // 4 or k >= self._open:
                self._cond.notify_all()

    def _target(self) -> int:
        """Slices to keep leased: about ``queue_seconds`` of work per core (2 .. ``max_per_core``)."""
        if not self._wall_n:
            # Small first bites: slow slices must not be hoarded before we know. One finished slice
            # is enough to size the next lease (an engine's first slice is its slowest, so the
            # estimate errs on the small side); waiting for more leaves cores idle meanwhile.
            per_core = 4
        else:
            mean = max(self._wall_sum / self._wall_n, 1e-6)
            per_core = int(min(max(self.queue_seconds / mean, 2), self.max_per_core))
        return self.cores * per_core

    def _on_event(self, job_id: str, kind: str, number: int, payload: Any) -> None:
        if kind == "console":
            event = {"type": "console", "sliceNumber": number, "level": payload.get("level", "log"),
                     "message": payload.get("message", ""), "same": payload.get("same", 1)}
        elif kind == "emit":
            event = {"type": "custom", "sliceNumber": number, "name": payload.get("name"), "value": payload.get("value")}
        elif kind == "progress":
            event = {"type": "progress", "sliceNumber": number, "value": payload}
        else:
            event = {"type": str(kind), "sliceNumber": number, "payload": payload}
        with self._cond:
            evs = self._events.setdefault(job_id, [])
            # Progress is a level, not a log: keep only the latest per slice until the next flush.
            if kind == "progress" and evs and evs[-1].get("type") == "progress" and evs[-1]["sliceNumber"] == number:
                evs[-1] = event
            else:
                evs.append(event)

    # -- the loop -------------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None, until_idle: bool = False) -> None:
        """Work until ``stop`` is set (or, with ``until_idle``, until nothing is left to lease)."""
        stop = stop or threading.Event()
        if self._pool is None:
            from ..runner import EvaluatorPool

            self._pool = EvaluatorPool(self.cores, config=self.config)
        last_flush = last_beat = last_check = last_report = time.monotonic()
        idle_wait = self.poll_interval
        try:
            while not stop.is_set():
                try:
                    if self._outage is not None:
                        self._flush()  # the backlog first: it raises again while the store still fails
                    leased = self._top_up()
                    now = time.monotonic()
                    with self._cond:
                        pending, running, events = self._waiting, self._open, bool(self._events)
                    if (pending and (now - last_flush >= self.flush_interval or pending >= self.flush_size
                                     or pending >= running)) or (events and now - last_flush >= EVENTS_FLUSH):
                        self._flush()
                        last_flush = now
                    if self.jobs is not None and self._disabled:
                        # Running one job here (exec()): nobody else will take it from this machine.
                        name, (_until, why) = next(iter(self._disabled.items()))
                        raise WorktimeNotFound(f"this machine cannot run {name} jobs now: {why}")
                    if now - last_beat >= self.lease_seconds / 3:
                        self._heartbeat()
                        last_beat = last_check = now
                        if self.jobs is None:  # a serving worker: deployers use what the URL names now
                            self._check_store()
                    elif now - last_check >= CANCEL_CHECK:
                        with self._cond:
                            running_jobs = {held.lease.job_id for held in self._inflight.values()}
                        self._drop_finished(running_jobs)
                        self._release_idle(running_jobs, now)
                        last_check = now
                    if self.events is not None and now - last_report >= REPORT_CHECK:
                        self._report_finished(now)
                        last_report = now
                    with self._cond:
                        busy = bool(self._inflight)
                    if until_idle and not leased and not busy and not self._backlog:
                        self._flush()
                        # One more look: the flush may have completed the last slice of a stream
                        # whose producer is still adding input.
                        if not self._top_up(force=True):
                            break
                    if leased or busy:
                        idle_wait = self.poll_interval
                        with self._cond:
                            k = self._waiting
                            if k < self._target() // 4 and k < self._open:
                                self._cond.wait(self.flush_interval)
                    else:
                        self._flush()
                        with self._cond:
                            # Idle: the next job's slices may be nothing like the last's. Sized by a
                            # job of trivial slices, the first lease of a slow one took all of it,
                            # and the fleet's other workers sat idle (small first bites again).
                            self._wall_sum, self._wall_n = 0.0, 0
                        self._wait_for_work(stop, idle_wait)
                        idle_wait = min(idle_wait * 2, self.idle_poll_interval)
                except StoreUnavailable as e:
                    # Disk full, I/O error, Redis gone: keep what finished and retry with backoff. The
                    # evaluators keep running what is leased; leases this worker cannot extend expire
                    # and run elsewhere (a late report of those is ignored: exactly once).
                    self._store_failing(e, stop)
        except BaseException as e:  # noqa: BLE001 - reported to the caller (run_local) then re-raised
            self.error = e
            raise
        finally:
            self._shutdown()
            if self.events is not None:
                self._report_finished(float("inf"))

    def wake(self) -> None:
        """Wake the loop now, from another thread (after setting its ``stop``): a job that ended
        must not wait for the worker's next poll to return from ``exec()``."""
        with self._cond:
            self._cond.notify_all()
        self.scheduler.wake_waiters()

    def _store_failing(self, error: StoreUnavailable, stop: threading.Event) -> None:
        """The store refused a write or a read that may pass (``StoreUnavailable``): say so once
        per outage, then wait before the next attempt (doubling up to ``STORE_RETRY_MAX``)."""
        self.store_trouble = error
        if self._outage is None:
            self._outage = time.monotonic()
            log.warning("worker %s: the job store is failing: %s; retrying with backoff, slices keep running and "
                        "their results are kept here until the store takes them", self.id, error.message)
        self._outage_wait = min(max(self._outage_wait * 2, 0.25), STORE_RETRY_MAX)
        stop.wait(self._outage_wait)

    def _store_works(self) -> None:
        if self._outage is not None:
            log.warning("worker %s: the job store works again after %.1f s; the results kept are written",
                        self.id, time.monotonic() - self._outage)
        self._outage = None
        self._outage_wait = 0.0
        self.store_trouble = None

    def _wait_for_work(self, stop: threading.Event, timeout: float) -> None:
        # Short waits so that stop (the deployer's job finished) is noticed within ~20 ms.
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or self.scheduler.wait_for_work(min(left, 0.02)):
                return

    def _top_up(self, force: bool = False) -> int:
        target = self._target()
        with self._cond:
            room = target - self._open
            busy = bool(self._inflight)
        # Lease in big bites only: a lease is a write transaction, so never one per slice.
        if room < max(target // 4, 1):
            return 0
        now = time.monotonic()
        if busy and not force and now < self._next_lease:
            return 0  # the store had nothing for us a moment ago: don't ask every 50 ms
        offered = self._offered()
        if not offered and not self._disabled:
            return 0
        if not offered:  # every worktime withdrawn: still check in (offering none, it can match no job),
            room = 1       # so that deployers learn why (WITHDRAWN)
        kwargs: dict[str, Any] = {"jobs": self.jobs} if self.jobs is not None else {}
        if self.categories is not None:
            kwargs["categories"] = self.categories
        capabilities = self.capabilities
        if self._disabled:  # deployers told "no worker has it" learn why: WITHDRAWN (matching.py)
            capabilities = {**capabilities, WITHDRAWN: {name: why for name, (_until, why) in self._disabled.items()}}
        leases = self.scheduler.lease(self.id, offered, capabilities, room, self.lease_seconds, **kwargs)
        if self._outage is not None and not self._backlog:
            self._store_works()  # a write went through, and nothing is left from the outage
        if not leases:
            self._lease_backoff = min(max(self._lease_backoff * 2, self.poll_interval), self.idle_poll_interval)
            self._next_lease = now + self._lease_backoff
            return 0
        self._lease_backoff = 0.0
        count = 0
        for lease in leases:
            try:
                spec = self._spec(lease.job_id)
            except UnknownJob:  # deleted between lease and now
                continue
            with self._cond:
                self._inflight[lease.lease_id] = _Held(lease, len(lease))
                self._open += len(lease)
            job_id = lease.job_id
            self._dropped.discard(job_id)
            self._served[job_id] = now
            if self.events is not None:
                if job_id not in self._last_slice:
                    self.events.job_started(self.scheduler.get_job(job_id))
                self._last_slice[job_id] = time.monotonic()
            self._pool.submit(spec, lease.numbers, lease.datums, self._on_outcome,
                              lambda kind, n, payload, _j=job_id: self._on_event(_j, kind, n, payload), tag=lease.lease_id)
            count += len(lease)
        return count

    def _offered(self) -> dict[str, str]:
        """The worktimes to lease for now: all but those disabled after a failure of this machine."""
        if self._disabled:
            now = time.monotonic()
            for name, (until, _why) in list(self._disabled.items()):
                if now >= until:
                    del self._disabled[name]
                    log.warning("worker %s: offering %s again", self.id, name)
        return {n: v for n, v in self.worktimes.items() if n not in self._disabled}

    def _disable(self, worktime: str, why: str) -> None:
        """This machine could not prepare a job of ``worktime`` (not the work's fault): stop taking
        its slices for ``DISABLE_SECONDS``; the slices go back to the scheduler for other workers."""
        if worktime not in self._disabled:
            log.warning("worker %s: not offering %s for %.0f s: %s", self.id, worktime, DISABLE_SECONDS, why)
        self._disabled[worktime] = (time.monotonic() + DISABLE_SECONDS, why)

    def _spec(self, job_id: str) -> JobSpec:
        spec = self._specs.get(job_id)
        if spec is None:
            record = self.scheduler.get_job(job_id)
            spec = replace(record.spec, id=job_id, limits=cap_limits(record.spec.limits, self.limits))
            self._specs[job_id] = spec
            self._capped[job_id] = {
                name: getattr(spec.limits, name) for name in ("wall_time", "cpu_time", "memory", "output")
                if getattr(spec.limits, name) != getattr(record.spec.limits, name)}
        return spec

    def _explain_cap(self, job_id: str, error: dict) -> dict:
        """A limit error caused by this worker's cap says so: raising the job's limit cannot help."""
        name = error.get("limit")
        capped = self._capped.get(job_id, {})
        if name not in capped:
            return error
        note = (f" (this worker allows at most {show(name, capped[name])} of {name} per slice, less than the job asks "
                f"for; its owner sets that with dcp-worker {FLAGS[name]})")
        return {**error, "message": str(error.get("message", "")) + note}

    def _flush(self, keep_cancelled: bool = True) -> None:
        """Report the outcomes collected so far (and post the events of their slices).

        ``keep_cancelled=False`` (shutting down): slices cancelled by this worker's own shutdown
        are not reported but given back, to run elsewhere.
        """
        with self._cond:
            outcomes, self._outcomes, self._waiting = self._outcomes, [], 0
            events, self._events = self._events, {}
        backlog = self._backlog
        for job_id, evs in events.items():
            if job_id not in self._dropped:
                backlog.append(("events", (job_id, evs)))
        reports: list[Report] = []
        give_back: list[Lease] = []
        no_progress: dict[str, list[dict]] = {}
        for outcome in outcomes:
            with self._cond:
                held = self._inflight.get(outcome.tag)
            if held is None or outcome.job_id in self._dropped:
                continue
            keep, back = self._sort(outcome, keep_cancelled)
            if back:
                positions = {n: i for i, n in enumerate(held.lease.numbers)}
                give_back.append(held.lease.part(positions[outcome.numbers[i]] for i in back))
            if keep:
                reports.append(self._report(outcome, keep))
                for i in keep:
                    err = outcome.errors[i]
                    if err is not None and err.code == ErrorCode.ENOPROGRESS.value:
                        no_progress.setdefault(outcome.job_id, []).append(
                            {"type": "noProgress", "sliceNumber": outcome.numbers[i]})
            with self._cond:
                held.reported.update(outcome.numbers)
                held.open -= len(outcome)
                self._open -= len(outcome)
                if held.open <= 0:
                    del self._inflight[outcome.tag]
                    if outcome.job_id in self._served:  # the idle clock starts when its last slice ends
                        self._served[outcome.job_id] = time.monotonic()
        if give_back:
            backlog.append(("back", give_back))
        for job_id, evs in no_progress.items():
            backlog.append(("events", (job_id, evs)))
        if reports:
            backlog.append(("report", reports))
        self._write_backlog()

    def _write_backlog(self) -> None:
        """Write what ``_flush`` queued, in order; each item leaves the backlog only once written
        (``StoreUnavailable`` leaves the rest for the next attempt)."""
        backlog = self._backlog
        if not backlog:
            return
        while backlog:
            kind, payload = backlog[0]
            if kind == "events":
                if payload[0] not in self._dropped:
                    self.scheduler.post_events(*payload)
            elif kind == "back":
                self.scheduler.return_slices(payload)
            else:
                self.scheduler.report(payload)
                backlog.pop(0)  # written: whatever the counting below does, never written twice
                for r in payload:
                    ok = sum(r.oks)
                    self.completed += ok
                    self.failed += len(r) - ok
                    if self.events is not None:
                        self.events.slices_done(r.job_id, r)
                continue
            backlog.pop(0)
        self._store_works()

    def _sort(self, outcome: Any, keep_cancelled: bool) -> tuple[list[int], list[int]]:
        """Positions of ``outcome`` to report, and positions to give back unrun (a failure of
        this machine, or our own shutdown's cancel)."""
        if all(outcome.oks):
            return list(range(len(outcome))), []
        keep, back = [], []
        for i, err in enumerate(outcome.errors):
            if err is not None and err.worker_fault:
                self._disable(self._spec(outcome.job_id).worktime, err.message)
                back.append(i)
            elif err is not None and not keep_cancelled and err.code == ErrorCode.ECANCELLED:
                back.append(i)
            else:
                keep.append(i)
        return keep, back

    def _report(self, outcome: Any, keep: list[int]) -> Report:
        """The scheduler's ``Report`` for the slices of ``outcome`` at positions ``keep``."""
        if all(outcome.oks):
            errors: list = [None] * len(outcome)
        else:
            errors = [None if e is None else self._explain_cap(outcome.job_id, e.to_dict()) for e in outcome.errors]
        columns = (outcome.numbers, outcome.oks, outcome.values, errors, outcome.walls, outcome.cpus,
                   outcome.bytes_in, outcome.bytes_out)
        if len(keep) != len(outcome):
            columns = tuple([col[i] for i in keep] for col in columns)
        return Report(outcome.job_id, outcome.tag, *columns)

    def _report_finished(self, now: float) -> None:
        """Tell ``events`` which started jobs have nothing left here: ended, deleted, or idle here
        for ``IDLE_JOB`` seconds (``now = inf``: the worker is stopping, every job)."""
        with self._cond:
            busy = {held.lease.job_id for held in self._inflight.values()}
        for job_id, last in list(self._last_slice.items()):
            if job_id in busy and now != float("inf"):
                continue
            try:
                status = self.scheduler.status(job_id)
            except UnknownJob:
                status = {"status": "gone"}
            except Exception as e:  # noqa: BLE001 - a report must never stop the worker
                log.warning("could not read the status of job %s: %s", job_id, e)
                continue
            if status["status"] in FINAL_STATES or status["status"] == "gone" or now - last >= IDLE_JOB:
                del self._last_slice[job_id]
                self.events.job_finished(job_id, status)  # type: ignore[union-attr]

    def _check_store(self) -> None:
        why = self.scheduler.replaced()
        if why is not None:
            raise SchedulerError(f"{why}: this worker stops (it would serve a store nobody deploys to any more); "
                                 "start it again to serve the one there now")

    def _heartbeat(self) -> None:
        with self._cond:
            lease_ids = list(self._inflight)
        if not lease_ids:
            return
        # What no evaluator was given yet: should this worker die before the next beat, those
        # slices go back without using an attempt (the rest may have run, and are charged).
        unstarted = self._pool.unstarted(lease_ids) if self._pool is not None else {}
        lost = self.scheduler.heartbeat(self.id, lease_ids, self.lease_seconds, unstarted)
        if not lost:
            return
        # Those leases are another worker's now, or their job ended: what is left of them is not
        # run here (it was, to the end, and counted as computed though the store ignored it).
        by_job: dict[str, set[str]] = {}
        with self._cond:
            for lid in lost:
                held = self._inflight.pop(lid, None)
                if held is not None:
                    self._open -= held.open
                    by_job.setdefault(held.lease.job_id, set()).add(lid)
        for job_id, tags in by_job.items():
            self._pool.drop(job_id, tags)
        self._drop_finished(by_job)

    def _release_idle(self, running: set[str], now: float) -> None:
        """Release the evaluators of jobs with nothing here for ``RELEASE_AFTER`` s (see there)."""
        idle = [job_id for job_id, last in self._served.items() if job_id not in running and now - last >= RELEASE_AFTER]
        for job_id in idle:
            del self._served[job_id]
            self._pool.release(job_id, wait=False)

    def _drop_finished(self, jobs: Iterable[str]) -> None:
        """Drop those of ``jobs`` that are cancelled, finished or gone from the store."""
        for job_id in jobs:
            try:
                cancelled = self.scheduler.status(job_id)["status"] in FINAL_STATES
            except UnknownJob:  # deleted: as good as cancelled
                cancelled = True
            except Exception as e:  # noqa: BLE001 - a store hiccup must not stop a wanted job
                log.warning("could not read the status of job %s: %s", job_id, e)
                continue
            if cancelled:
                self._drop_job(job_id)

    def _drop_job(self, job_id: str) -> None:
        """Stop running a cancelled/finished job: its outcomes are discarded."""
        self._dropped.add(job_id)
        with self._cond:
            for lease_id in [lid for lid, held in self._inflight.items() if held.lease.job_id == job_id]:
                self._open -= self._inflight.pop(lease_id).open
        self._pool.cancel(job_id)

    def _shutdown(self) -> None:
        try:
            with self._cond:
                jobs = {held.lease.job_id for held in self._inflight.values()}
            if self._pool is not None:
                for job_id in jobs:
                    self._pool.cancel(job_id)  # queued slices come back ECANCELLED at once
            try:
                self._flush(keep_cancelled=False)
            finally:
                with self._cond:
                    unfinished = list(self._inflight.values())
                    self._inflight.clear()
                    self._open = 0
                back = [held.lease.part(i for i, n in enumerate(held.lease.numbers) if n not in held.reported)
                        for held in unfinished]
                if back:
                    self.scheduler.return_slices(back)
        except StoreUnavailable as e:  # stopping while the store fails: say what happens to the slices
            kept = sum(len(r) for kind, payload in self._backlog if kind == "report" for r in payload)
            log.warning("worker %s: stopping while the job store fails (%s): %d finished result(s) not written; "
                        "their leases expire within %.0f s and the slices run again", self.id, e.message, kept,
                        self.lease_seconds)
        except Exception:  # noqa: BLE001 - the store may be gone; leases will expire anyway
            log.exception("worker %s: could not hand back its slices", self.id)
        finally:
            if self._owns_pool and self._pool is not None:
                self._pool.close()
                self._pool = None
            leave = getattr(self.scheduler, "leave", None)
            if leave is not None:
                try:
                    leave(self.id)
                except Exception:  # noqa: BLE001
                    pass


def run_worker(
    scheduler_url: str | None = None,
    worktimes: list[str] | None = None,
    cores: int | None = None,
    limits: Limits | None = None,
    *,
    capabilities: dict | None = None,
    categories: list[str] | None = None,
    until_idle: bool = False,
    stop: threading.Event | None = None,
    lease_seconds: float = 30.0,
) -> Worker:
    """What ``dcp-worker --worktime NAME --scheduler URL`` runs: work until SIGINT/SIGTERM.

    Returns the finished ``Worker`` (``completed``/``failed`` counts) for a summary line.
    """
    from .base import open_scheduler
    from .processes import stopped_by

    stop = stop or threading.Event()
    scheduler = open_scheduler(scheduler_url)
    # Stopped while the store does not answer: the call waiting then, the last reports and the
    # goodbye wait STOP_GRACE s in all at most (a result not written runs again elsewhere).
    scheduler.give_up_after(stop, STOP_GRACE)
    worker = Worker(scheduler, worktimes, cores, capabilities=capabilities, limits=limits, categories=categories,
                    lease_seconds=lease_seconds)
    try:
        with stopped_by(stop, signal.SIGTERM):
            worker.run(stop, until_idle=until_idle)
    except KeyboardInterrupt:
        pass  # the finally of run() already handed the slices back
    finally:
        scheduler.close()
    return worker


def list_jobs(scheduler_url: str | None = None) -> list[dict]:
    """Rows for ``dcp-worker jobs``: id, worktime, status, total, distributed, computed, failed, created."""
    from .base import open_scheduler

    with open_scheduler(scheduler_url) as scheduler:
        return scheduler.job_summaries()

