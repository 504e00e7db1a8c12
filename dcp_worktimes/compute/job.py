"""Jobs: an input set, work, and everything the deployer says about running it.

A ``Job`` is what ``compute.for_`` returns. Set its attributes, subscribe to events, then
``exec()``: it checks everything (``deploy.plan``: settings, the worktime through its contract,
requirements), stores the job in the scheduler (``deploy.submit``), runs the slices on this
machine (unless ``local=False``: then it only waits for workers such as ``dcp-worker`` attached
to the same scheduler), follows the job's events (``follow.Follower``) and returns a
``ResultHandle`` (``results.collect``)::

    from dcp_worktimes import compute

    job = compute.for_(1, 3, "function(i){ progress(); return i*10 }")
    job.on("result", lambda ev: print("slice", ev.sliceNumber, "->", ev.result))
    job.requirements = {"engine": {"es7": True}}
    job.limits = {"wall_time": "10s", "memory": "256MB"}
    results = job.exec(compute.marketValue)          # [10, 20, 30]

Failure policy: a slice whose work raises fails for good (the work is deterministic); a slice
lost to a crashed evaluator is retried up to ``job.max_attempts`` times by the scheduler. When
slices fail, ``exec()`` raises one ``JobFailed`` listing each failed slice (code and message)
whose ``.results`` still holds every completed result; ``exec(errors="return")`` returns the
handle instead with a ``SliceFailed`` in each failed slot. Work that cannot be used at all (it
does not compile, its top level raises: error code ``EBADWORK``) would fail every slice the same
way, so the scheduler stops the job at the first such error and ``exec()`` raises one
``WorkError`` with the engine's message, whatever ``errors`` says.

Events are dispatched on the thread that runs ``exec()`` (``exec_async`` runs it in a worker
thread of the event loop's default executor), one handler at a time. An ``exec()`` made while
another runs (from a thread, ``exec_async`` or a handler) joins it (``_Run``): it re-bids, and
returns the same results; the first one keeps dispatching the events.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import ExitStack, contextmanager
from typing import Any, Iterator, Mapping

from ..errors import DcpError, ErrorCode, WorkError
from ..inputs import InputSet, StreamInput, input_set_from_description, input_size
from ..limits import Limits, check_cores
from ..scheduler.base import UnknownJob
from ..worktime import CapturedWork
from .cost import parse_cost
from .events import JOB_EVENTS, EventEmitter
from .follow import Follower, Outcome, deleted_meanwhile
from .progress import ProgressBar, progress_wanted
from .results import LOST_RESULT, JobFailed, ResultHandle, collect
from .settings import (
    SETTINGS,
    RequirementsError,
    check_arguments,
    check_files,
    check_modules,
    check_scheduler,
    check_timeout,
    check_worker_wait,
    parse_worktime,
    read_modules,
)
from .work import capture

log = logging.getLogger(__name__)

__all__ = ["Job", "JobCancelled", "JobTimedOut", "RequirementsError", "resume"]


class JobCancelled(DcpError):
    """The job was cancelled before it completed; ``results`` holds what had completed, and in
    the place of each slice that had not, a ``SliceFailed`` with code ``ECANCELLED`` (also in
    ``results.failures``): a slice that never ran is not mistaken for one that returned ``None``."""

    code = ErrorCode.ECANCELLED

    def __init__(self, message: str, results: ResultHandle | None = None, job_id: str | None = None) -> None:
        super().__init__(message)
        self.results = results
        self.job_id = job_id


class JobTimedOut(JobCancelled, TimeoutError):
    """``exec(timeout=...)`` expired and the job was cancelled: a ``JobCancelled`` (``results``
    holds what had completed, ``ECANCELLED`` in the place of the rest) that is also the
    ``TimeoutError`` the timeout raises. ``results`` is ``None`` when the store could not be read."""


class WorkHandle(EventEmitter):
    """``job.work``: the emitter of the work's custom ``work.emit`` events (``job.work.on(name, fn)``)."""

    def __init__(self, origin: str) -> None:
        super().__init__()
        self.origin = origin

    def __repr__(self) -> str:
        return f"<work: {self.origin}>"


class _Run:
    """One execution of a job in this process, shared by every ``exec()`` made while it lasts: the
    thread that drives it (deploys, dispatches events), the local evaluators, and how it ended."""

    def __init__(self, local: bool) -> None:
        self.local = local
        self.driver = threading.get_ident()
        self.dispatching = False  # the driver is inside the job's event loop (handlers may run)
        self.deployed = threading.Event()
        self.done = threading.Event()
        self.ended: tuple[Outcome, Follower, ResultHandle] | None = None
        self.runners = ExitStack()  # local evaluators, stopped when the run ends
        self._lock = threading.Lock()
        self._open = True
        self._running_here = False

    def start_local(self, sched: Any, job_id: str, cores: int | None) -> None:
        """Run the job's slices on this machine until the run ends (once per run)."""
        from ..scheduler.local import run_local

        with self._lock:
            if self._open and not self._running_here:
                self.runners.enter_context(run_local(sched, job_id, cores=cores))
                self._running_here = self.local = True

    def stop_joining(self) -> None:
        with self._lock:
            self._open = False

    def finish(self) -> None:
        self.done.set()


def _say_cold_start(worktime: str) -> None:
    """Before the first job of ``worktime`` here waits minutes (a compile the cache lacks), say so:
    a warning of the package's logger (printed on stderr unless the application routes it)."""
    from ..plugins import get_worktime

    try:
        note = get_worktime(worktime).cold_start()
    except DcpError:  # not installed here: deploy() said so already
        return
    if note:
        log.warning("dcp-worktimes: %s: %s", worktime, note)


class Job(EventEmitter):
    """A job handle (see the module docstring). Build it with ``compute.for_`` / ``compute.do``.

    A job object is safe to use from several threads: a second ``exec()`` while one runs updates
    the bid (if given a cost) and waits for the same results.
    """

    known = JOB_EVENTS

    def __init__(self, inputs: InputSet, work: Any, arguments: list | tuple | None = None, **settings: Any) -> None:
        super().__init__()
        self.input_set: InputSet = inputs
        self.arguments: list[Any] = check_arguments(arguments, "job arguments")
        self.id: str | None = None
        self.worktime_version: str | None = None
        #: ``True`` skips the check that the worktime is installed here (workers elsewhere have it).
        self.custom_worktime = False
        self.requirements: dict = {}
        self.public: dict = {}
        #: Set for a job built from an application (``Application.for_``): ``{name, version, function, categories}``.
        self.application: dict | None = None
        self.options: dict[str, Any] = {}
        self.max_attempts = 3
        #: ``exec(local=False)``: seconds to wait while no attached worker can run the job before
        #: giving up (``RequirementsError``; the job is cancelled). ``None`` waits for ever.
        self.worker_wait: float | None = 30.0
        #: Scheduler URL or instance; ``None`` = ``$DCP_SCHEDULER`` or the per-user SQLite store.
        self.scheduler: Any = None
        #: Local evaluator processes for ``exec()`` (``None`` = all cores).
        self.cores: int | None = None
        #: ``None`` = a progress bar when stdout is a terminal; ``True``/``False`` to force it.
        self.progress: bool | None = None
        self._worktime: str | None = None
        self._limits = Limits()
        self._modules: dict[str, str | bytes] = {}
        self._files: dict[str, bytes] = {}
        self._work_source = work
        self._capture: tuple[str | None, bool, str, CapturedWork] | None = None  # (asked, installed, name, work)
        self._lock = threading.RLock()
        self._sched: Any = None
        self._owns_sched = False
        self._sched_url: str | None = None  # what _sched was taken for (scheduler/reuse.py)
        self._sched_users = 0
        self._cancel_requested = threading.Event()
        self._cancel_reason = "cancelled by the deployer"
        self._deployed = False
        self._status: dict = {}
        self._run: _Run | None = None
        self._events_after = 0
        self._slice_count: int | None = None
        for key, value in settings.items():
            if key not in SETTINGS:
                raise TypeError(f"unknown job setting {key!r}; settings: {', '.join(sorted(SETTINGS))}")
            setattr(self, key, value)
        # The work is captured now, so what cannot run (a closure, a missing file) raises in for_().
        self.work = WorkHandle(self._captured().origin)
        self._sealed = True

    def __setattr__(self, name: str, value: Any) -> None:
        # `job.requirments = {...}` would otherwise be a new attribute nobody reads: a job deployed
        # without the requirements (or limits) its author believes it has.
        if (not name.startswith("_") and self.__dict__.get("_sealed") and name not in self.__dict__
                and not hasattr(type(self), name)):
            import difflib

            close = difflib.get_close_matches(name, sorted(SETTINGS), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise AttributeError(f"a job has no setting {name!r}; {hint}settings: {', '.join(sorted(SETTINGS))}")
        super().__setattr__(name, value)

    # -- attributes with parsing -----------------------------------------------------------------
    @property
    def worktime(self) -> str:
        """Worktime name (``"map-basic"``, ``"python"``, ...). ``"name@^1.0.0"`` also sets the range.
        Unset: the worktime the work's kind defaults to (``Worktime.default_for``)."""
        return self._worktime or self._capture_now()[2]

    @worktime.setter
    def worktime(self, value: str | None) -> None:
        name, rng = parse_worktime(value)
        self._worktime = name
        if rng:
            self.worktime_version = rng

    def _captured(self) -> CapturedWork:
        """The work as the job's worktime captures it (again if the worktime changed since)."""
        return self._capture_now()[3]

    def _capture_now(self) -> tuple[str | None, bool, str, CapturedWork]:
        key = (self._worktime, not self.custom_worktime)
        if self._capture is None or self._capture[:2] != key:
            name, captured = capture(self._work_source, self._worktime, installed=not self.custom_worktime)
            self._capture = (*key, name, captured)
        return self._capture

    @property
    def limits(self) -> Limits:
        """Per-slice limits. Assign a ``Limits`` or a dict of human values: ``{"wall_time": "2s"}``."""
        return self._limits

    @limits.setter
    def limits(self, value: Limits | Mapping[str, Any] | None) -> None:
        if value is None:
            self._limits = Limits()
        elif isinstance(value, Limits):
            self._limits = value
        elif isinstance(value, Mapping):
            self._limits = Limits.parse(**value)
        else:
            raise TypeError(f"job.limits must be a Limits or a dict such as {{'wall_time': '2s'}}, got {value!r}")

    @property
    def modules(self) -> dict[str, str | bytes]:
        """Modules shipped with the job, ``{name: source}`` (``requires()`` adds to it)."""
        return self._modules

    @modules.setter
    def modules(self, value: Mapping[str, str | bytes] | None) -> None:
        self._modules = check_modules(value if value is not None else {})

    @property
    def files(self) -> dict[str, bytes]:
        """Read-only files for the work, ``{relative path: bytes}``."""
        return self._files

    @files.setter
    def files(self, value: Mapping[str, bytes] | None) -> None:
        self._files = check_files(value if value is not None else {})

    def requires(self, *modules: Any, **named: str | bytes) -> "Job":
        """Ship modules with the job (what the work ``require``s / ``import``s).

        Accepts paths (``"./refiner.js"``, ``Path``: module name = file stem), dicts
        ``{name: source}``, and keyword ``name=source``. Returns the job, for chaining.
        """
        self._modules.update(read_modules(modules, named))
        return self

    def _total(self) -> int | None:
        """Exact slice count (any size; never ``len()``, which stops at 2**63-1), ``None`` for a stream."""
        return input_size(self.input_set)

    # -- the scheduler this job talks to -----------------------------------------------------------
    def _scheduler(self) -> Any:
        with self._lock:
            if self._sched is None:
                from ..scheduler import Scheduler
                from ..scheduler.reuse import take

                check_scheduler(self.scheduler)
                if isinstance(self.scheduler, Scheduler):
                    self._sched, self._owns_sched = self.scheduler, False
                else:
                    url = os.fspath(self.scheduler) if isinstance(self.scheduler, os.PathLike) else self.scheduler
                    self._sched, self._owns_sched, self._sched_url = take(url), True, url
            return self._sched

    @contextmanager
    def _session(self) -> Iterator[Any]:
        """The scheduler for one ``exec()``; a store this job opened itself is handed back when
        the last concurrent ``exec()`` ends (kept open for this process's next job:
        ``scheduler/reuse.py``; ``cancel()``/``status()`` take it again)."""
        with self._lock:
            sched = self._scheduler()
            self._sched_users += 1
        try:
            yield sched
        finally:
            with self._lock:
                self._sched_users -= 1
                if self._sched_users == 0 and self._owns_sched and self._sched is not None:
                    from ..scheduler.reuse import give_back

                    give_back(self._sched_url, self._sched)
                    self._sched = None


    # -- deployment ------------------------------------------------------------------------------
    def deploy(self, cost: Any = None, *, local: bool = True) -> str:
        """Check and store the job without running it; returns the job id. A generator's inputs
        are all stored before it returns (so ``compute.resume`` elsewhere can run every slice)."""
        with self._session() as sched:
            feeder = self._deploy(sched, parse_cost(cost), local)
            if feeder is not None:
                feeder.wait()
                if feeder.error is not None:
                    raise feeder.error
        return self.id  # type: ignore[return-value]

    def _deploy(self, sched: Any, profile: Any, local: bool) -> Any:
        """Store the job unless it is; returns the stream ``Feeder`` it started, if any."""
        from .deploy import plan, submit

        with self._lock:
            if self._deployed:
                return None
            if self._cancel_requested.is_set():
                raise JobCancelled("the job was cancelled before it was deployed (job.cancel()); build a new job to run it")
            record = plan(self, profile, local, sched)
            feeder = submit(sched, record, self)
            self.id = record.id
            self._deployed = True
            if self._cancel_requested.is_set():  # cancel() came while a stream's first batch was read
                sched.cancel(self.id, self._cancel_reason)
            return feeder

    # -- execution ---------------------------------------------------------------------------------
    def exec(self, cost: Any = None, payment_account: Any = None, *, errors: str = "raise", local: bool = True,
             cores: int | None = None, progress: bool | None = None, timeout: float | None = None) -> ResultHandle:
        """Deploy (unless already deployed or resumed), run, and return the results.

        ``cost``: a cost profile (``compute.marketValue`` by default, a number, or a dict).
        ``payment_account`` is accepted for DCP compatibility and unused (local jobs are free).
        ``errors``: ``"raise"`` (``JobFailed`` when any slice failed) or ``"return"``.
        ``local``: run slices on this machine; ``False`` waits for attached workers instead (for
        ``job.worker_wait`` seconds while none that can run the job is attached, saying so).
        ``timeout``: seconds before the job is cancelled and ``JobTimedOut`` raised (a
        ``TimeoutError`` whose ``results`` hold what had completed); a plain ``TimeoutError``
        when the job store was failing then, so that the job could not be cancelled.

        Calling ``exec`` again while it runs (DCP's "altering price parameters": from another
        thread, ``exec_async``, or an event handler) joins the running execution: a ``cost``
        becomes the job's new bid, and the call returns the same results (from a handler: once the
        job has ended, since the handler runs on the thread that dispatches the job's events). No
        second set of evaluators starts; ``local=True`` joining a ``local=False`` run starts
        evaluators here (``cores`` applies to them only).
        """
        if errors not in ("raise", "return"):
            raise ValueError(f"exec(errors=...) must be 'raise' or 'return', got {errors!r}")
        if not isinstance(local, bool):  # exec(local="no") must not quietly mean True
            raise TypeError(f"exec(local=...) must be True (run here) or False (attached workers), got {local!r}")
        # Every argument is checked before deploying: a job deployed and then abandoned over a bad
        # argument would stay "running" in the store forever.
        check_cores(cores, "exec(cores=...)")
        check_timeout(timeout)
        worker_wait = check_worker_wait(self.worker_wait)
        profile = parse_cost(cost)  # ENOFUNDS before anything else happens
        bid = profile if cost is not None else None
        while True:
            with self._lock:
                run, created = self._run, self._run is None
                if created:
                    if self._cancel_requested.is_set() and not self._deployed:
                        raise JobCancelled("the job was cancelled before exec() (job.cancel()); build a new job to run it")
                    run = self._run = _Run(local)
            if created:
                return self._drive(run, profile, bid, errors, cores, progress, timeout, worker_wait)
            if run.driver == threading.get_ident():  # exec() from one of this job's event handlers
                return self._await_inline(run, bid, errors, timeout, worker_wait)
            ended = self._join(run, bid, local, cores, timeout)
            if ended is not None:
                outcome, follower, results = ended
                return self._finish(outcome, follower, results, errors)
            # The run ended without an outcome (its exec() was interrupted or could not deploy):
            # this call runs the job itself.

    def _drive(self, run: "_Run", profile: Any, bid: Any, errors: str, cores: int | None, progress: bool | None,
               timeout: float | None, worker_wait: float | None) -> ResultHandle:
        """The first ``exec()``: deploy, run here (unless remote), dispatch the events, and hand the
        outcome to every ``exec()`` that joined meanwhile."""
        bar = feeder = None
        try:
            with self._session() as sched:
                if self._deployed and bid is not None:  # DCP: exec(newCost) on a deployed job updates its bid
                    sched.set_payment(self.id, bid.payment_per_slice(self._total()))
                feeder = self._deploy(sched, profile, run.local)
                run.deployed.set()
                if run.local and not self.custom_worktime:
                    _say_cold_start(self.worktime)
                bar = ProgressBar(self._total(), f"job {self.id[:8]}") if progress_wanted(
                    self.progress if progress is None else progress) else None  # type: ignore[index]
                follower = Follower(self, sched, bar, worker_wait=worker_wait)
                try:
                    with run.runners:
                        if run.local:
                            run.start_local(sched, self.id, cores if cores is not None else self.cores)
                        run.dispatching = True
                        try:
                            outcome = follower.run(timeout, remote=not run.local)
                        except JobTimedOut as e:
                            e.results = self._results_if_readable(sched)
                            raise
                        finally:
                            run.dispatching = False
                            run.stop_joining()  # no evaluators are added after this
                    if feeder is not None and feeder.error is not None:
                        raise feeder.error
                    results = self._results(sched, outcome)
                    if outcome is Outcome.UNSCHEDULABLE:
                        # The deployer gives up: a worker attached later must not run it behind its back.
                        sched.cancel(self.id, f"the deployer gave up: {follower.reason}")
                except KeyboardInterrupt as e:
                    if feeder is not None and not feeder.complete:
                        # The rest of its input exists only here: no resume can finish it, and its
                        # feed lease would only end it minutes later.
                        reason = "the deployer was interrupted while sending its input stream; deploy the job again"
                        try:
                            sched.cancel(self.id, reason)
                        except Exception:  # noqa: BLE001 - the store's own feed lease ends it then
                            pass
                        e.add_note(f"job {self.id} was cancelled: it was interrupted while its input stream was "
                                   "still being sent, and the rest of the inputs existed only in this process; "
                                   "deploy it again")
                    else:
                        e.add_note(f"job {self.id} stays in the scheduler's store; continue it with compute.resume("
                                   f"{self.id!r}).exec() or stop it with compute.resume({self.id!r}).cancel()")
                    raise
            run.ended = (outcome, follower, results)
        finally:
            if bar is not None:
                bar.close()
            if feeder is not None:
                feeder.close()
            with self._lock:
                self._run = None
            run.finish()
        return self._finish(outcome, follower, results, errors)

    def _join(self, run: "_Run", bid: Any, local: bool, cores: int | None,
              timeout: float | None) -> "tuple[Outcome, Follower, ResultHandle] | None":
        """A later ``exec()`` on another thread: re-bid, add evaluators if asked, wait for the run's end."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._session() as sched:
            # The bid goes to the deployed job (the first exec() may still be storing it).
            while not run.deployed.wait(0.05):
                if run.done.is_set():
                    return run.ended
            if bid is not None:
                sched.set_payment(self.id, bid.payment_per_slice(self._total()))
            if local and not run.local:
                run.start_local(sched, self.id, cores if cores is not None else self.cores)
            if not run.done.wait(None if deadline is None else max(0.0, deadline - time.monotonic())):
                sched.cancel(self.id, f"exec(timeout={timeout}) expired")
                raise JobTimedOut(f"job {self.id} did not finish within {timeout} s; it was cancelled",
                                  self._results_if_readable(sched), self.id)
        return run.ended

    def _await_inline(self, run: "_Run", bid: Any, errors: str, timeout: float | None,
                      worker_wait: float | None) -> ResultHandle:
        """``exec()`` from one of this job's event handlers, on the thread dispatching its events.

        Handlers run one at a time (as in JavaScript, each runs to completion before the next
        event), so this call does not dispatch: it re-bids, watches the job's log for its end with
        a cursor of its own, and returns the results; the outer ``exec()`` then dispatches the
        events that arrived meanwhile, in order.
        """
        with self._session() as sched:
            if bid is not None:
                sched.set_payment(self.id, bid.payment_per_slice(self._total()))
            follower = Follower(self, sched, emit=False, worker_wait=worker_wait)
            try:
                outcome = follower.run(timeout, remote=not run.local)
            except JobTimedOut as e:
                e.results = self._results_if_readable(sched)
                raise
            results = self._results(sched, outcome)
        return self._finish(outcome, follower, results, errors)

    def _finish(self, outcome: Outcome, follower: Follower, results: ResultHandle, errors: str) -> ResultHandle:
        """The results, or the exception that says how the job ended."""
        if outcome is Outcome.BADWORK:
            raise WorkError(follower.bad_work_message(), code=follower.bad_work_code())
        if outcome is Outcome.CANCELLED:
            raise JobCancelled(f"job {self.id} was cancelled: {follower.reason}", results, self.id)
        if outcome is Outcome.UNSCHEDULABLE:
            raise RequirementsError(f"job {self.id} cannot run: {follower.reason}; it was cancelled")
        if outcome is Outcome.FAILED and not results.failures:
            raise WorkError(f"job {self.id} failed: {follower.reason or 'see its error events'}")
        if results.failures and errors == "raise":
            raise JobFailed(results, results.failures, self.id, self._slice_count)
        return results

    def _results_if_readable(self, sched: Any) -> ResultHandle | None:
        """A timed-out (so cancelled) job's results, or ``None`` when the store cannot give them."""
        try:
            return self._results(sched, Outcome.CANCELLED)
        except Exception:  # noqa: BLE001 - the timeout is what the caller must learn of
            return None

    def _results(self, sched: Any, outcome: Outcome | None = None) -> ResultHandle:
        try:
            return self._collect(sched, outcome)
        except UnknownJob:  # deleted (dcp-worker jobs --delete --force) as it ended
            raise deleted_meanwhile(self.id) from None

    def _collect(self, sched: Any, outcome: Outcome | None) -> ResultHandle:
        total = self._total()
        if total is None:
            total = sched.status(self.id).get("total")
        if total is None and outcome is Outcome.CANCELLED and isinstance(self.input_set, StreamInput) \
                and self.input_set._source is not None:
            total = self.input_set.consumed  # a stream cancelled before its end: what it had read, run or not
        inputs: Any = self.input_set
        if isinstance(inputs, StreamInput) and inputs._source is None:
            inputs = None  # a resumed stream: the datums are not known here
        unfinished = "the job was cancelled before this slice completed" if outcome is Outcome.CANCELLED else None
        results = collect(sched.result_batches(self.id), total, inputs, self.id, unfinished)
        counted = results.counted
        if outcome in (Outcome.COMPLETE, Outcome.FAILED, None) and total is not None and counted < total:
            # Finished, yet some results are gone (a deleted or evicted key, a store that rolled
            # back): those slices must not read as having returned None. (Rare: read again, the
            # first handle let go of first.)
            del results
            log.warning("job %s: the store has results for %d of its %d slices; the others are marked %s",
                        self.id, counted, total, LOST_RESULT[0])
            results = collect(sched.result_batches(self.id), total, inputs, self.id, LOST_RESULT[1], LOST_RESULT[0])
        self._slice_count = len(results) if total is None else total
        return results

    async def exec_async(self, *args: Any, **kwargs: Any) -> ResultHandle:
        """``await job.exec_async(...)``: ``exec`` in the loop's default executor (same arguments)."""
        import asyncio  # here, not at the top: its import (with ssl) is ~10 MB that exec() never needs

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: self.exec(*args, **kwargs))

    def cancel(self, reason: str = "cancelled by the deployer") -> None:
        """Stop the job: no more slices are handed out; ``exec()`` raises ``JobCancelled``."""
        self._cancel_reason = reason
        self._cancel_requested.set()
        if self.id is not None:
            with self._session() as sched:
                sched.cancel(self.id, reason)

    def status(self) -> dict:
        """``{total, distributed, computed, failed, status}`` from the scheduler."""
        if self.id is None:
            return {"total": self._total(), "distributed": 0, "computed": 0, "failed": 0, "status": "new"}
        with self._session() as sched:
            return sched.status(self.id)

    def __repr__(self) -> str:
        state = f"id={self.id}" if self.id else "not deployed"
        return f"<Job {state} worktime={self.worktime} slices={self._total()}>"


def resume(job_id: str, scheduler: Any = None) -> Job:
    """Re-attach to a deployed job (e.g. from a new process after the deployer died).

    ``resume(job_id).exec()`` runs the slices that have no result yet and returns every result;
    slices already computed are not run again::

        job = compute.resume(open("job-id.txt").read())
        results = job.exec()
    """
    from ..scheduler import Scheduler
    from ..scheduler.reuse import give_back, take

    if isinstance(job_id, str) and not job_id.strip():
        raise ValueError("compute.resume(job_id): the job id is empty; `dcp-worker jobs` lists the ids")
    if not isinstance(job_id, str):
        raise TypeError(
            f"compute.resume(job_id): job ids are strings, as job.id (or exec()'s JobFailed.job_id) gives them; "
            f"got {type(job_id).__name__} {job_id!r:.40}"
        )
    job_id = job_id.strip()  # an id read from a file or a terminal comes with its newline
    check_scheduler(scheduler)
    if isinstance(scheduler, os.PathLike):
        scheduler = os.fspath(scheduler)
    sched = scheduler if isinstance(scheduler, Scheduler) else take(scheduler)
    try:
        record = sched.get_job(job_id)
        if record.total is None and record.input.get("kind") == "stream":
            raise DcpError(
                f"job {job_id} cannot be resumed: its input stream was not fully sent before the deployer stopped "
                "(the remaining inputs only existed in that process); deploy it again",
                code="ENORESUME",
            )
    except BaseException:
        if sched is not scheduler:  # taken here: no job holds it
            give_back(scheduler, sched)
        raise
    spec = record.spec
    # The stored work and options are exactly what the workers run: no capture again.
    job = Job(input_set_from_description(record.input), CapturedWork(spec.work, {}, "the resumed job's work"),
              list(spec.arguments), worktime=spec.worktime)
    job.id = record.id
    job.worktime_version = record.worktime_range
    job.requirements = dict(record.requirements)
    job.public = dict(record.public)
    job.limits = spec.limits
    job.options = dict(spec.options)
    job.modules = dict(spec.modules)
    job.files = dict(spec.files)
    job.max_attempts = record.max_attempts
    job.application = dict(record.application) if record.application else None
    job._sched = sched
    job._owns_sched = not isinstance(scheduler, Scheduler)
    job._sched_url = None if isinstance(scheduler, Scheduler) else scheduler
    job._deployed = True
    if isinstance(job.input_set, StreamInput):
        job.input_set._sized = record.total
    events = sched.events(job_id, 0)
    job._events_after = events[-1][0] if events else 0
    return job
