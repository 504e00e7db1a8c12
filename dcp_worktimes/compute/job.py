"""Jobs: an input set, work, and everything the deployer says about running it.

A ``Job`` is what ``compute.for_`` returns. Set its attributes, subscribe to events, then
``exec()``: it validates everything (worktime installed, requirements satisfiable, cost profile,
arguments serialisable, limits), submits the job to the scheduler, streams iterable inputs in
batches, runs the slices on this machine (unless ``local=False``: then it only waits for
workers such as ``dcp-worker`` attached to the same scheduler), follows the job's events and
returns a ``ResultHandle``::

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
way, so the first such error cancels the rest of the job and ``exec()`` raises one ``WorkError``
with the engine's message, whatever ``errors`` says.

Events are dispatched on the thread that runs ``exec()`` (``exec_async`` runs it in a worker
thread of the event loop's default executor).
"""

from __future__ import annotations

import asyncio
import math
import numbers
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

from ..errors import DcpError, ErrorCode, WorkError, WorktimeNotFound
from ..limits import Limits, check_cores
from ..values import UnserializableValue, pack, unpack
from .cost import CostProfile, parse_cost
from .events import JOB_EVENTS, Event, EventEmitter
from .inputs import InputSet, StreamInput, input_set_from_description, input_size, plain
from .ranges import MultiRange
from .results import JobFailed, ResultHandle, SliceFailed, nest
from .work import Work, capture

__all__ = ["Job", "JobCancelled", "RequirementsError", "resume", "ENV_PROGRESS"]

#: ``DCP_PROGRESS=0``/``1`` forces the progress bar off/on (default: on when stdout is a TTY).
ENV_PROGRESS = "DCP_PROGRESS"

STREAM_BATCH = 1000
#: With ``exec(local=False)``: seconds to wait for a worker to attach before calling the job unschedulable.
REMOTE_GRACE = 30.0
#: The scheduler's stores count slices in signed 64-bit integers (SQLite's INTEGER).
MAX_SLICES = 2**63 - 1
_PUBLIC_KEYS = {"name", "description", "link"}
#: Job attributes that ``for_``/``do`` keywords and ``compute.default`` may set.
#: The map-basic versions a job accepts unless it says otherwise (DCP's default).
MAP_BASIC_RANGE = "^1.0.0"
SETTINGS = frozenset({"worktime", "worktime_version", "custom_worktime", "requirements", "public", "limits", "options",
                      "modules", "files", "max_attempts", "scheduler", "cores", "progress"})


class RequirementsError(DcpError):
    """Requirements that are malformed or that no available worker can satisfy."""

    code = ErrorCode.EREQUIREMENTS


class JobCancelled(DcpError):
    """The job was cancelled before it completed; ``results`` holds what had completed."""

    code = ErrorCode.ECANCELLED

    def __init__(self, message: str, results: ResultHandle | None = None, job_id: str | None = None) -> None:
        super().__init__(message)
        self.results = results
        self.job_id = job_id


class WorkHandle(EventEmitter):
    """``job.work``: the captured work, and the emitter of custom ``work.emit`` events."""

    def __init__(self, work: Work) -> None:
        super().__init__()
        self.captured = work

    def __repr__(self) -> str:
        return f"<work: {self.captured.origin}>"


def _check_requirements(req: Any, path: str = "requirements") -> None:
    if not isinstance(req, Mapping):
        raise RequirementsError(
            f"{path} must be a dict of booleans (nested by namespace), e.g. {{'machine': {{'gpu': True}}}}; "
            f"got {type(req).__name__}"
        )
    for k, v in req.items():
        if not isinstance(k, str):
            raise RequirementsError(f"{path} keys must be strings, got {k!r}")
        if isinstance(v, Mapping):
            _check_requirements(v, f"{path}.{k}")
        elif not isinstance(v, bool):
            raise RequirementsError(
                f"{path}.{k} must be True (must have) or False (must not have), or a nested dict; got {v!r}"
            )


def _check_modules(modules: Any) -> dict[str, str | bytes]:
    """``job.modules`` checked as ``requires()`` checks it: ``{name: str or bytes source}``."""
    if not isinstance(modules, Mapping):
        raise TypeError(f"job.modules must be a dict {{name: source}} (or use job.requires()), got {type(modules).__name__}")
    out: dict[str, str | bytes] = {}
    for name, source in modules.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"job.modules: module names must be non-empty strings, got {name!r}")
        if isinstance(source, (bytearray, memoryview)):
            source = bytes(source)
        if not isinstance(source, (str, bytes)):
            raise TypeError(
                f"job.modules[{name!r}]: source must be str or bytes, got {type(source).__name__} {source!r:.40}; "
                "ship a module file with job.requires('path/to/module.py')"
            )
        out[name] = source
    return out


def _check_files(files: Any) -> dict[str, bytes]:
    """``job.files``: ``{relative path: bytes}`` the work may read."""
    if not isinstance(files, Mapping):
        raise TypeError(f"job.files must be a dict {{relative path: bytes}}, got {type(files).__name__}")
    out: dict[str, bytes] = {}
    for path, data in files.items():
        if not isinstance(path, str) or not path or path.startswith(("/", "\\")) or ".." in Path(path).parts:
            raise TypeError(f"job.files: keys must be relative paths inside the job's directory such as 'data/a.txt', got {path!r}")
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        if isinstance(data, str):
            raise TypeError(
                f"job.files[{path!r}] is a str; files hold bytes: write {{{path!r}: text.encode()}} "
                "(or ship source the work imports with job.requires())"
            )
        if not isinstance(data, bytes):
            raise TypeError(f"job.files[{path!r}] must be bytes, got {type(data).__name__}")
        out[path] = data
    return out


def _check_scheduler(value: Any) -> None:
    from ..scheduler import Scheduler

    if value is None or isinstance(value, Scheduler):
        return
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(
            f"scheduler must be a scheduler URL such as 'sqlite:///path/jobs.db', a Scheduler instance or None "
            f"(= $DCP_SCHEDULER or the per-user store), got {type(value).__name__} {value!r:.40}"
        )


def _check_timeout(timeout: Any) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"exec(timeout=...) must be a positive number of seconds, or None to wait forever; got {timeout!r}")


def _progress_wanted(explicit: bool | None) -> bool:
    if explicit is not None:
        return bool(explicit)
    env = os.environ.get(ENV_PROGRESS, "").strip().lower()
    if env in ("0", "false", "no", "off"):
        return False
    if env in ("1", "true", "yes", "on"):
        return True
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


class _ProgressBar:
    """A rich progress bar fed by ``status`` events (only built when wanted)."""

    def __init__(self, total: int | None, label: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
        self.task = self.progress.add_task(label, total=total)
        self.progress.start()

    def update(self, ev: Mapping[str, Any]) -> None:
        done = (ev.get("computed") or 0) + (ev.get("failed") or 0)
        self.progress.update(self.task, completed=done, total=ev.get("total"))

    def close(self) -> None:
        self.progress.stop()


class Job(EventEmitter):
    """A job handle (see the module docstring). Build it with ``compute.for_`` / ``compute.do``."""

    known = JOB_EVENTS

    def __init__(self, inputs: InputSet, work: Any, arguments: list | tuple | None = None, **settings: Any) -> None:
        super().__init__()
        if arguments is not None and not isinstance(arguments, (list, tuple)):
            raise TypeError(
                f"job arguments must be a list (work(datum, *arguments)), got {type(arguments).__name__}; "
                f"write compute.for_(inputs, work, [{arguments!r}])"
            )
        self.input_set: InputSet = inputs
        self.work = WorkHandle(capture(work))
        self.arguments: list[Any] = list(arguments or [])
        self.id: str | None = None
        self._worktime: str | None = None
        self.worktime_version: str | None = None
        #: ``True`` skips the check that the worktime is installed here (workers elsewhere have it).
        self.custom_worktime = False
        self.requirements: dict = {}
        self.public: dict = {}
        self._limits = Limits()
        self.options: dict[str, Any] = {}
        self._modules: dict[str, str | bytes] = {}
        self._files: dict[str, bytes] = {}
        self.max_attempts = 3
        #: Scheduler URL or instance; ``None`` = ``$DCP_SCHEDULER`` or the per-user SQLite store.
        self.scheduler: Any = None
        #: Local evaluator processes for ``exec()`` (``None`` = all cores).
        self.cores: int | None = None
        #: ``None`` = a progress bar when stdout is a terminal; ``True``/``False`` to force it.
        self.progress: bool | None = None
        self._sched = None
        self._cancel_requested = threading.Event()
        self._deployed = False
        self._status: dict = {}
        for key, value in settings.items():
            if key not in SETTINGS:
                raise TypeError(f"unknown job setting {key!r}; settings: {', '.join(sorted(SETTINGS))}")
            setattr(self, key, value)
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
        """Worktime name (``"map-basic"``, ``"python"``, ...). ``"name@^1.0.0"`` also sets the range."""
        return self._worktime or self.work.captured.default_worktime

    @worktime.setter
    def worktime(self, value: str | None) -> None:
        if value is None:
            self._worktime = None
            return
        if not isinstance(value, str) or not value.strip():
            raise TypeError(f"job.worktime must be a worktime name such as 'map-basic', got {value!r}")
        name, _, rng = value.strip().partition("@")
        if not name.strip():
            raise TypeError(f"job.worktime {value!r} has no name before '@'; write e.g. 'map-basic@^1.0.0'")
        self._worktime = name.strip()
        if rng:
            self.worktime_version = rng

    def _worktime_range(self) -> str | None:
        """The semver range the job asks for: ``worktime_version``, or, for map-basic, ``^1.0.0``
        (DCP: "unset means map-basic at ^1.0.0"; a 2.0 map-basic may change the work's contract)."""
        if self.worktime_version is None and self.worktime == "map-basic":
            return MAP_BASIC_RANGE
        return self.worktime_version

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
        self._modules = _check_modules(value if value is not None else {})

    @property
    def files(self) -> dict[str, bytes]:
        """Read-only files for the work, ``{relative path: bytes}``."""
        return self._files

    @files.setter
    def files(self, value: Mapping[str, bytes] | None) -> None:
        self._files = _check_files(value if value is not None else {})

    def requires(self, *modules: Any, **named: str | bytes) -> "Job":
        """Ship modules with the job (what the work ``require``s / ``import``s).

        Accepts paths (``"./refiner.js"``, ``Path``: module name = file stem), dicts
        ``{name: source}``, and keyword ``name=source``. Returns the job, for chaining.
        """
        for m in modules:
            if isinstance(m, Mapping):
                for k, v in m.items():
                    self._add_module(k, v)
            elif isinstance(m, (str, os.PathLike)):
                path = Path(m)
                if not path.is_file():
                    raise WorkError(
                        f"requires({str(m)!r}): no such file; pass the path of a module file, or "
                        "{'name': source} to ship source text"
                    )
                data = path.read_bytes()
                try:
                    self._add_module(path.stem, data.decode("utf-8"))
                except UnicodeDecodeError:
                    self._add_module(path.stem, data)
            else:
                raise TypeError(f"requires() takes module paths or {{name: source}} dicts, got {m!r}")
        for k, v in named.items():
            self._add_module(k, v)
        return self

    def _add_module(self, name: Any, source: Any) -> None:
        self._modules.update(_check_modules({name: source}))

    # -- validation and deployment ---------------------------------------------------------------
    def _total(self) -> int | None:
        """Exact slice count (any size; never ``len()``, which stops at 2**63-1), ``None`` for a stream."""
        return input_size(self.input_set)

    def _spec(self) -> Any:
        """Validate everything and build the ``JobSpec`` (raises before anything is deployed)."""
        from ..plugins import get_worktime
        from ..worktime import JobSpec

        name = self.worktime
        captured = self.work.captured
        _check_requirements(self.requirements)
        if not isinstance(self.public, Mapping) or set(self.public) - _PUBLIC_KEYS:
            raise TypeError(f"job.public must be a dict with keys from {sorted(_PUBLIC_KEYS)}, got {self.public!r}")
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"job.max_attempts must be a positive integer, got {self.max_attempts!r}")
        check_cores(self.cores, "job.cores")
        _check_scheduler(self.scheduler)
        total = self._total()
        if total is not None and total > MAX_SLICES:
            raise ValueError(
                f"this job has {total} slices; a scheduler store counts at most 2**63-1 = {MAX_SLICES} slices per job "
                "(and no machine would finish that many); split the range into smaller jobs or use a larger step/group"
            )
        modules, files = _check_modules(self.modules), _check_files(self.files)
        if not isinstance(self.arguments, (list, tuple)):
            raise TypeError(f"job.arguments must be a list (work(datum, *arguments)), got {type(self.arguments).__name__}")
        arguments = plain(list(self.arguments))
        try:
            pack(arguments)
        except UnserializableValue as e:
            raise UnserializableValue(f"job arguments: {e}") from None
        if not isinstance(self.options, Mapping):
            raise TypeError(f"job.options must be a dict of worktime switches such as {{'strict': True}}, got {self.options!r:.40}")
        user_options = plain(dict(self.options))
        for key, value in user_options.items():
            if not isinstance(key, str):
                raise TypeError(f"job.options keys must be strings, got {key!r}")
            try:
                pack(value)
            except UnserializableValue as e:
                raise UnserializableValue(f"job.options[{key!r}]: {e}") from None
        if not self.custom_worktime:
            try:
                reg = get_worktime(name, self._worktime_range())
            except ValueError as e:  # a malformed range
                raise WorktimeNotFound(f"job.worktime_version: {e}") from None
            self._registration = reg
        else:
            self._registration = None
        if captured.kind == "python" and name != "python" and not self.custom_worktime:
            raise WorkError(
                f"the work is a Python function ({captured.origin}) but job.worktime is {name!r}; Python functions "
                "run on the 'python' worktime: leave job.worktime unset or set it to 'python' (for map-basic pass "
                "JavaScript source as a string)"
            )
        if captured.kind == "bytes" and name in ("map-basic",):
            raise WorkError(f"map-basic takes JavaScript source, not bytes ({captured.origin}); use worktime='wasi'")
        if name in ("map-basic", "python") and captured.kind != "bytes" and not captured.payload.strip():
            raise WorkError(
                f"the work is an empty string; {name} needs a function, e.g. "
                + ('"function(x){ progress(); return x }"' if name == "map-basic" else "a Python function or its source")
            )
        options = dict(captured.options)
        options.update(user_options)
        payload = captured.payload
        if isinstance(self.input_set, MultiRange):
            options["spread_datum"] = True  # work(*datum, *arguments): the contract in inputs.py
        if self._registration is not None:
            self._registration.cls.check_options(options)  # a misspelt option fails here, not silently
        return JobSpec(
            id="", worktime=name, work=payload, arguments=arguments, modules=modules,
            files=files, options=options, limits=self.limits,
        )

    def _local_capabilities(self) -> dict:
        from ..scheduler.base import merge_capabilities

        machine: dict = {}
        try:  # the worker module knows what this machine advertises, when it exists
            from ..scheduler import worker as worker_mod

            fn = getattr(worker_mod, "machine_capabilities", None)
            if callable(fn):
                machine = fn() or {}
        except ImportError:
            pass
        reg = getattr(self, "_registration", None)
        # The probe's capabilities, not the class's: they say what this machine has (map-basic: engine.v8).
        return merge_capabilities(machine, dict(reg.probe().capabilities) if reg is not None else {})

    def _check_schedulable(self, record: Any, local: bool) -> None:
        """Refuse requirements nobody can meet: not this machine (when running locally), no live worker."""
        from ..scheduler.base import unmet_requirement, worker_can_run

        if not record.requirements:
            return
        if local and unmet_requirement(record.requirements, self._local_capabilities()) is None:
            return
        sched = self._scheduler()
        reasons = []
        for w in sched.workers():
            why = worker_can_run(record, w.worktimes, w.capabilities)
            if why is None:
                return
            reasons.append(why)
        missing = unmet_requirement(record.requirements, self._local_capabilities())
        raise RequirementsError(
            f"no worker can satisfy the job's requirements: this machine fails {missing}"
            + (f", and the {len(reasons)} attached worker(s) fail too ({reasons[0]})" if reasons else
               " and no other worker is attached")
            + "; relax job.requirements or start a dcp-worker that has them"
        )

    def _scheduler(self):
        if self._sched is None:
            from ..scheduler import Scheduler, open_scheduler

            _check_scheduler(self.scheduler)
            if isinstance(self.scheduler, Scheduler):
                self._sched, self._owns_sched = self.scheduler, False
            else:
                url = os.fspath(self.scheduler) if isinstance(self.scheduler, os.PathLike) else self.scheduler
                self._sched, self._owns_sched = open_scheduler(url), True
        return self._sched

    def _release_scheduler(self) -> None:
        # A store this job opened itself is closed after exec(); cancel()/status() reopen it.
        if self._sched is not None and getattr(self, "_owns_sched", False):
            self._sched.close()
            self._sched = None

    def _record(self, cost: CostProfile) -> Any:
        from ..scheduler import JobRecord

        spec = self._spec()
        job_id = uuid.uuid4().hex
        spec.id = job_id
        total = self._total()
        return JobRecord(
            id=job_id, spec=spec, worktime_range=self._worktime_range(), requirements=dict(self.requirements),
            payment_per_slice=cost.payment_per_slice(total), input=self.input_set.description(),
            # A stream's total is announced by close_input once every datum has been pushed.
            total=None if isinstance(self.input_set, StreamInput) else total,
            public=dict(self.public), max_attempts=self.max_attempts,
        )

    def deploy(self, cost: Any = None, *, local: bool = True) -> str:
        """Validate and submit the job without running it; returns the job id. ``exec()`` calls this."""
        if self._deployed:
            return self.id  # type: ignore[return-value]
        if self._cancel_requested.is_set():
            raise JobCancelled("the job was cancelled before it was deployed (job.cancel()); build a new job to run it")
        profile = parse_cost(cost)
        record = self._record(profile)
        self._check_schedulable(record, local)
        sched = self._scheduler()
        if isinstance(self.input_set, StreamInput):
            first = self._first_batch()
            sched.submit(record)
            self.id = record.id
            self._deployed = True
            self._feeder = threading.Thread(target=self._feed, args=(first,), name=f"dcp-feed-{record.id[:8]}", daemon=True)
            self._feed_error: BaseException | None = None
            self._feeder.start()
        else:
            sched.submit(record)
            self.id = record.id
            self._deployed = True
        return record.id

    def _pack_batch(self, batch: list[tuple[int, Any]]) -> list[tuple[int, bytes]]:
        out = []
        for n, datum in batch:
            try:
                out.append((n, pack(datum)))
            except UnserializableValue as e:
                raise UnserializableValue(f"input {n} ({datum!r:.60}): {e}") from None
        return out

    def _first_batch(self) -> list[tuple[int, bytes]]:
        # The first batch is read and checked before submitting, so the usual mistakes (an input
        # that cannot be sent) raise before anything is deployed.
        assert isinstance(self.input_set, StreamInput)
        self._batches = self.input_set.batches(STREAM_BATCH)
        try:
            return self._pack_batch(next(self._batches))
        except StopIteration:
            return []

    def _feed(self, first: list[tuple[int, bytes]]) -> None:
        sched = self._scheduler()
        stream = self.input_set
        assert isinstance(stream, StreamInput)
        try:
            if first:
                sched.add_slices(self.id, first)
            for batch in self._batches:
                if self._cancel_requested.is_set():
                    return
                sched.add_slices(self.id, self._pack_batch(batch))
            sched.close_input(self.id, stream.consumed)
        except BaseException as e:  # noqa: BLE001 - reported by exec() on its own thread
            self._feed_error = e
            try:
                sched.cancel(self.id, f"the input stream failed: {type(e).__name__}: {e}")
            except Exception:
                pass

    # -- execution ---------------------------------------------------------------------------------
    def exec(self, cost: Any = None, payment_account: Any = None, *, errors: str = "raise", local: bool = True,
             cores: int | None = None, progress: bool | None = None, timeout: float | None = None) -> ResultHandle:
        """Deploy (unless already deployed or resumed), run, and return the results.

        ``cost``: a cost profile (``compute.marketValue`` by default, a number, or a dict).
        ``payment_account`` is accepted for DCP compatibility and unused (local jobs are free).
        ``errors``: ``"raise"`` (``JobFailed`` when any slice failed) or ``"return"``.
        ``local``: run slices on this machine; ``False`` waits for attached workers instead.
        ``timeout``: seconds before the job is cancelled and ``TimeoutError`` raised.
        """
        if errors not in ("raise", "return"):
            raise ValueError(f"exec(errors=...) must be 'raise' or 'return', got {errors!r}")
        if not isinstance(local, bool):  # exec(local="no") must not quietly mean True
            raise TypeError(f"exec(local=...) must be True (run here) or False (attached workers), got {local!r}")
        # Every argument is checked before deploying: a job deployed and then abandoned over a bad
        # argument would stay "running" in the store forever.
        check_cores(cores, "exec(cores=...)")
        _check_timeout(timeout)
        profile = parse_cost(cost)  # ENOFUNDS before anything else happens
        if self._cancel_requested.is_set() and not self._deployed:
            raise JobCancelled("the job was cancelled before exec() (job.cancel()); build a new job to run it")
        if self._deployed and cost is not None:  # DCP: exec(newCost) on a deployed job updates its bid
            self._scheduler().set_payment(self.id, profile.payment_per_slice(self._total()))
        self.deploy(profile, local=local)
        sched = self._scheduler()
        bar = None
        if _progress_wanted(self.progress if progress is None else progress):
            bar = _ProgressBar(self._total(), f"job {self.id[:8]}")  # type: ignore[index]
        try:
            if local:
                from ..scheduler.local import run_local

                with run_local(sched, self.id, cores=cores if cores is not None else self.cores):
                    final = self._follow(sched, bar, timeout)
            else:
                final = self._follow(sched, bar, timeout, remote=True)
            feed_error = getattr(self, "_feed_error", None)
            if feed_error is not None:
                raise feed_error
            results = self._results(sched)
        except KeyboardInterrupt as e:
            e.add_note(f"job {self.id} stays in the scheduler's store; continue it with compute.resume({self.id!r}).exec() "
                       f"or stop it with compute.resume({self.id!r}).cancel()")
            raise
        finally:
            if bar is not None:
                bar.close()
            feeder = getattr(self, "_feeder", None)
            if feeder is not None and feeder.is_alive():  # the job ended early: stop pushing inputs
                self._cancel_requested.set()
                feeder.join(10)
            self._release_scheduler()
        if final == "badwork":
            raise WorkError(self._bad_work_message())
        if final == "cancel":
            raise JobCancelled(f"job {self.id} was cancelled: {self._cancel_reason}", results, self.id)
        if final == "unschedulable":
            raise RequirementsError(f"job {self.id} cannot run: {self._cancel_reason}")
        if final == "failed" and not results.failures:
            raise WorkError(f"job {self.id} failed: {self._cancel_reason or 'see its error events'}")
        if results.failures and errors == "raise":
            raise JobFailed(results, results.failures, self.id, self._slice_count)
        return results

    async def exec_async(self, *args: Any, **kwargs: Any) -> ResultHandle:
        """``await job.exec_async(...)``: ``exec`` in the loop's default executor (same arguments)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: self.exec(*args, **kwargs))

    def cancel(self, reason: str = "cancelled by the deployer") -> None:
        """Stop the job: no more slices are handed out; ``exec()`` raises ``JobCancelled``."""
        self._cancel_requested.set()
        if self.id is not None:
            self._scheduler().cancel(self.id, reason)

    def status(self) -> dict:
        """``{total, distributed, computed, failed, status}`` from the scheduler."""
        if self.id is None:
            return {"total": self._total(), "distributed": 0, "computed": 0, "failed": 0, "status": "new"}
        return self._scheduler().status(self.id)

    def _follow(self, sched: Any, bar: _ProgressBar | None, timeout: float | None, remote: bool = False) -> str:
        """Dispatch events until the job ends; returns how it ended.

        ``remote``: slices run on attached workers only, so ask the scheduler now and then whether
        any live worker can run the job (it then emits ``unschedulable`` instead of a silent hang).
        """
        from ..scheduler.base import FINAL_STATES

        deadline = None if timeout is None else time.monotonic() + timeout
        after = getattr(self, "_events_after", 0)
        self._cancel_reason = ""
        self._bad_work: Mapping[str, Any] | None = None
        self._sched_for_dispatch = sched
        quiet_since = time.monotonic()
        st = sched.status(self.id)
        if st.get("status") in FINAL_STATES:  # e.g. resuming a job that finished meanwhile
            self._cancel_reason = str(st.get("reason") or "")
            return {"complete": "complete", "cancelled": "cancel"}.get(st["status"], st["status"])
        while True:
            events = sched.events(self.id, after, wait=0.25)
            for seq, ev in events:
                after = seq
                ended = self._dispatch(ev, bar)
                if ended:
                    self._events_after = after
                    return ended
            now = time.monotonic()
            if events:
                quiet_since = now
            elif now - quiet_since > 2.0:
                quiet_since = now
                if remote:
                    sched.check_schedulable(self.id, grace=REMOTE_GRACE)
                st = sched.status(self.id)
                if st.get("status") in FINAL_STATES:  # the log ended without our final event
                    self._events_after = after
                    return {"complete": "complete", "cancelled": "cancel"}.get(st["status"], st["status"])
            if deadline is not None and now > deadline:
                sched.cancel(self.id, f"exec(timeout={timeout}) expired")
                raise TimeoutError(f"job {self.id} did not finish within {timeout} s; it was cancelled")

    def _dispatch(self, ev: Mapping[str, Any], bar: _ProgressBar | None) -> str | None:
        kind = ev.get("type")
        payload = Event({k: v for k, v in ev.items() if k != "type"})
        if kind == "result":
            if self.listener_count("result"):
                raw = payload.pop("value", None)
                payload["result"] = unpack(raw) if isinstance(raw, (bytes, bytearray)) else raw
                self.emit("result", payload)
            return None
        if kind == "custom":
            self.work.emit(payload.get("name", ""), payload)
            return None
        if kind == "error" and str(payload.get("code")) == ErrorCode.EBADWORK.value:
            # The work itself is unusable: every other slice would fail the same way. Stop now.
            self.emit(kind, payload)
            self._bad_work = payload
            reason = f"the work is unusable (EBADWORK): {payload.get('message', '')}"
            self._cancel_reason = reason
            try:
                self._sched_for_dispatch.cancel(self.id, reason)
            except Exception:  # noqa: BLE001 - the job may have ended meanwhile; the error is raised anyway
                pass
            return "badwork"
        if kind == "status":
            self._status = dict(payload)
            if bar is not None:
                bar.update(payload)
        if kind == "accepted":
            payload.setdefault("id", self.id)
        if kind in JOB_EVENTS:
            self.emit(kind, payload)
        if kind == "complete":
            return "complete"
        if kind == "cancel":
            self._cancel_reason = str(payload.get("reason", ""))
            return "cancel"
        if kind == "unschedulable":
            self._cancel_reason = str(payload.get("reason", ""))
            return "unschedulable"
        if kind == "readyStateChange" and payload.get("state") == "failed":
            self._cancel_reason = str(payload.get("reason", "")) or "see the job's error events"
        return None

    def _bad_work_message(self) -> str:
        ev = self._bad_work or {}
        msg = str(ev.get("message", "")).strip() or "no message"
        return (f"job {self.id}: the work cannot be used (slice {ev.get('sliceNumber')} failed with EBADWORK, so every "
                f"slice would): {msg}\nThe job was cancelled; fix the work and deploy it again")

    def _results(self, sched: Any) -> ResultHandle:
        reports = sched.results(self.id)
        total = self._total()
        if total is None:
            total = sched.status(self.id).get("total") or (max(reports) + 1 if reports else 0)
        self._slice_count = total
        values: list[Any] = [None] * total
        failures: list[SliceFailed] = []
        for n, rep in reports.items():
            if n >= total:
                continue
            if rep.ok:
                values[n] = unpack(rep.value) if rep.value is not None else None
            else:
                err = rep.error or {}
                f = SliceFailed(n, str(err.get("code", "EUNCAUGHT")), str(err.get("message", "")), err.get("stack"), err.get("name"))
                values[n] = f
                failures.append(f)
        failures.sort(key=lambda f: f.slice_number)
        inputs = self.input_set
        if isinstance(inputs, MultiRange):
            return nest(values, inputs.shape, inputs.ranges, failures, self.id)
        if isinstance(inputs, StreamInput) and inputs._source is None:
            inputs = None  # a resumed stream: the datums are not known here
        return ResultHandle(values, inputs, failures, self.id)

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
    from ..scheduler import Scheduler, open_scheduler

    if isinstance(job_id, str) and not job_id.strip():
        raise ValueError("compute.resume(job_id): the job id is empty; `dcp-worker jobs` lists the ids")
    if not isinstance(job_id, str):
        raise TypeError(
            f"compute.resume(job_id): job ids are strings, as job.id (or exec()'s JobFailed.job_id) gives them; "
            f"got {type(job_id).__name__} {job_id!r:.40}"
        )
    _check_scheduler(scheduler)
    if isinstance(scheduler, os.PathLike):
        scheduler = os.fspath(scheduler)
    sched = scheduler if isinstance(scheduler, Scheduler) else open_scheduler(scheduler)
    record = sched.get_job(job_id.strip())
    if record.total is None and record.input.get("kind") == "stream":
        raise DcpError(
            f"job {job_id} cannot be resumed: its input stream was not fully sent before the deployer stopped "
            "(the remaining inputs only existed in that process); deploy it again",
            code="ENORESUME",
        )
    spec = record.spec
    work = Work(spec.work, "python" if spec.worktime == "python" else ("bytes" if isinstance(spec.work, bytes) else "source"),
                spec.worktime, options={}, origin="the resumed job's work")
    job = Job(input_set_from_description(record.input), work, list(spec.arguments))
    job.id = record.id
    job.worktime = spec.worktime
    job.worktime_version = record.worktime_range
    job.requirements = dict(record.requirements)
    job.public = dict(record.public)
    job.limits = spec.limits
    job.options = dict(spec.options)
    job.modules = dict(spec.modules)
    job.files = dict(spec.files)
    job.max_attempts = record.max_attempts
    job._sched = sched
    job._owns_sched = not isinstance(scheduler, Scheduler)
    job._deployed = True
    if isinstance(job.input_set, StreamInput):
        job.input_set._sized = record.total
    events = sched.events(job_id, 0)
    job._events_after = events[-1][0] if events else 0
    return job
