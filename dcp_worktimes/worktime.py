"""The worktime contract: what a runtime must do to execute DCP slices.

A **worktime** is a class with a ``name``, an exact semver ``version``, ``capabilities``
advertised to the scheduler, the set of limits its engine enforces by itself, and a life cycle:

1. the evaluator process creates **one instance** (load the engine here, lazily, not at import);
2. ``prepare(job)`` runs **once per job**: compile the work, load the job's modules. Raise
   ``WorkError`` if the work is unusable, so the job fails once instead of every slice failing;
3. ``execute(ctx, datum)`` runs **once per slice**, one at a time, and returns the result
   (a value of the lossless set in ``dcp_worktimes.values``) or raises ``SliceError``; an engine
   that can run many slices per call (one call into JavaScript looping over a block of datums)
   may also implement ``execute_block(block)``, the fast path for small slices (see ``Block``);
4. ``release()`` when the evaluator retires or moves to another job.

Around that life cycle, class-level hooks let a worktime take part everywhere else, so neither the
Compute API nor the worker knows anything specific to one worktime:

* **on the deployer's machine**: ``capture_work(work)`` turns what the deployer passed
  (``compute.for_(inputs, work)``: a string, bytes, a ``Path``, a function, a dict ...) into the
  job's work and options; ``default_for`` says which kinds of work default to this worktime;
  ``default_range`` is the version range a job gets when it names none; ``validate(job)`` refuses
  a job before anything is stored (and again in the evaluator, before ``prepare``);
* **on the worker**: ``settings`` are the worker owner's knobs (each becomes a ``dcp-worker``
  flag; the values arrive in ``self.config``); ``probe(config)`` says whether this machine can run
  the worktime at all and what it advertises: a worktime whose engine is missing is listed with
  the reason and never offered to the scheduler.

The instance always lives inside a sandboxed evaluator process: the host enforces wall time, CPU
time, resident memory, output size and the no-progress watchdog from outside even when the
engine cannot. ``enforces`` tells the host which limits the engine checks itself (and so reports
with precise codes before the host has to kill the process).

A minimal worktime::

    from dcp_worktimes.worktime import Worktime, SliceContext, JobSpec
    from dcp_worktimes.errors import SliceError, WorkError

    class Upper(Worktime):
        name = "upper"
        version = "1.0.0"
        capabilities = {"text": {"upper": True}}

        def prepare(self, job: JobSpec) -> None:
            if job.work not in ("", "upper"):
                raise WorkError("upper takes no work text; deploy with work='upper'")

        def execute(self, ctx: SliceContext, datum):
            if not isinstance(datum, str):
                raise SliceError(f"expected a string, got {type(datum).__name__}")
            ctx.progress(0.5)
            ctx.console("log", "upper-casing", len(datum), "chars")
            return datum.upper()

and its registration (see ``hookspecs.py``)::

    from dcp_worktimes import hookimpl

    @hookimpl
    def register_worktimes(register):
        register(Upper)

Define the class at the top level of an importable module: each evaluator process imports it
again as ``module:Class`` (a class made inside a function or attached to a module later is
refused, saying so).
"""

from __future__ import annotations

import re
import reprlib
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import Any, Callable, ClassVar, Mapping

from .errors import SliceError, WorkError
from .limits import Limits


#: Limit names a worktime may list in ``Worktime.enforces``. ``prepare``: the worktime bounds the
#: work's part of ``prepare`` (loading, compiling) by the job's limits itself, so the host bounds
#: the whole of ``prepare`` only by the worker's prepare budget (its own set-up may take longer).
LIMIT_NAMES = frozenset({"wall_time", "cpu_time", "memory", "output", "progress_timeout", "stack", "prepare"})

_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


@dataclass
class JobSpec:
    """Everything a worktime needs to know about the job, handed to ``prepare``.

    ``work`` is the work as deployed (JS source, WebAssembly bytes, Python source, a JSON text ...);
    ``arguments`` are the job's extra work arguments (``work(datum, *arguments)``); ``modules``
    maps module names to source the work may ``require``/``import``; ``files`` maps relative paths
    to read-only file contents; ``options`` holds worktime-specific switches (``strict``,
    ``content_type``, ...).
    """

    id: str
    worktime: str
    work: str | bytes = ""
    arguments: list[Any] = field(default_factory=list)
    modules: dict[str, str | bytes] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "worktime": self.worktime,
            "work": self.work,
            "arguments": list(self.arguments),
            "modules": dict(self.modules),
            "files": dict(self.files),
            "options": dict(self.options),
            "limits": self.limits.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "JobSpec":
        return cls(
            id=d["id"],
            worktime=d["worktime"],
            work=d.get("work", ""),
            arguments=list(d.get("arguments") or []),
            modules=_texts(d.get("modules") or {}, "modules", (str, bytes)),
            files=_texts(d.get("files") or {}, "files", (bytes,)),
            options=dict(d.get("options") or {}),
            limits=Limits.from_dict(d.get("limits")),
        )


#: The longest name of one folder or file, in UTF-8 bytes, that file systems take (NAME_MAX).
NAME_MAX = 255


def check_file_names(names: Any) -> None:
    """``ValueError`` unless ``names`` can all be written as files under one folder: relative paths
    without ``..``, no part longer than ``NAME_MAX`` bytes, no name given twice (``a`` and
    ``a/``), none both a file and a folder of another (``a`` and ``a/b``). Checked where a job is
    made and again in the evaluator before ``prepare`` (a job stored by an older deployer): a name
    the disk refused there was taken for the worker's own fault, and that worker stopped offering
    the worktime to every job. (Not in ``JobSpec.from_dict``: workers read jobs from the store
    with it, and such a job must fail its slices, not the worker.)

    >>> check_file_names(["data/a.txt", "data/b.txt"])
    >>> check_file_names(["a", "a/b"])
    Traceback (most recent call last):
    ValueError: job file names 'a' and 'a/b' conflict: 'a' cannot be both a file and a folder
    """
    seen: dict[tuple[str, ...], str] = {}
    for name in names:
        parts = PurePosixPath(name).parts if isinstance(name, str) else ()
        if not parts or PurePosixPath(name).is_absolute() or ".." in parts or "\0" in name:
            raise ValueError(f"job file name {name!r} must be a relative path inside the job's folder, "
                             "such as 'data/a.txt' (no '..', no leading '/')")
        long = next((p for p in parts if len(p.encode("utf-8", "surrogatepass")) > NAME_MAX), None)
        if long is not None:
            shown = repr(name[:60]) + ("..." if len(name) > 60 else "")
            raise ValueError(f"job file name {shown}: a part of it is longer than {NAME_MAX} bytes")
        if parts in seen:
            raise ValueError(f"job file names {seen[parts]!r} and {name!r} name the same file")
        seen[parts] = name
    for parts, name in seen.items():
        for n in range(1, len(parts)):
            if parts[:n] in seen:
                raise ValueError(f"job file names {seen[parts[:n]]!r} and {name!r} conflict: "
                                 f"{'/'.join(parts[:n])!r} cannot be both a file and a folder")


def _texts(mapping: Mapping[str, Any], what: str, kinds: tuple[type, ...]) -> dict[str, Any]:
    """A job's modules/files as they arrive from a store: names are strings, contents the right type
    (``bytes(5)`` would silently be five NULs, ``bytes(3 * 10**9)`` three gigabytes)."""
    out = {}
    for name, content in dict(mapping).items():
        if not isinstance(name, str) or not isinstance(content, kinds):
            allowed = " or ".join(k.__name__ for k in kinds)
            raise ValueError(f"job {what}[{name!r}] must be {allowed}, got {type(content).__name__}")
        out[name] = content
    return out


def _ignore(kind: str, payload: Any) -> None:
    pass


def _nothing() -> None:
    pass


_NEVER = threading.Event()  # the cancel flag of contexts nobody can cancel


class SliceContext:
    """What a running slice may do besides computing: report progress, log, emit, check cancel.

    The host builds one per slice. ``sink`` receives ``(kind, payload)`` events
    (``"progress"``, ``"console"``, ``"emit"``); ``heartbeat`` is called on every progress report
    so the no-progress watchdog sees it even when events are throttled.

    Example (what an engine binding does when the guest calls ``progress('50%')``)::

        ctx.progress("50%")        # -> True, and a progress event with value 0.5
        ctx.console("warn", "low memory", 12)
        ctx.emit("partial", {"rows": 10})
        if ctx.cancelled: ...
    """

    #: DCP throttles progress messages to one per 0.1 s; so do we (the watchdog sees them all).
    PROGRESS_INTERVAL = 0.1

    # Slots: a context is built per slice, and trivial slices are counted in microseconds.
    __slots__ = ("slice_number", "limits", "job", "started", "deadline", "_sink", "_heartbeat", "_cancel",
                 "_last_value", "_last_sent", "_unsent", "progress_calls", "_warned")

    def __init__(
        self,
        slice_number: int,
        limits: Limits,
        job: JobSpec | None = None,
        sink: Callable[[str, Any], None] | None = None,
        heartbeat: Callable[[], None] | None = None,
        cancel_event: threading.Event | None = None,
    ) -> None:
        self.slice_number = slice_number
        self.limits = limits
        self.job = job
        self.started = time.monotonic()
        #: monotonic time after which the slice is too slow (engines use it for their interrupt).
        self.deadline = self.started + limits.wall_time if limits.wall_time else None
        self._sink = sink or _ignore
        self._heartbeat = heartbeat or _nothing
        self._cancel = cancel_event or _NEVER
        self._last_value: float | None = None
        # The first event goes out after PROGRESS_INTERVAL too: a slice shorter than that finishes
        # before any progress event would be useful, and its result says 100 % anyway.
        self._last_sent = self.started
        #: the latest fraction the throttle held back, carried by the next event that has none.
        self._unsent: float | None = None
        self.progress_calls = 0
        self._warned = False

    # -- progress -----------------------------------------------------------------------------
    def progress(self, value: Any = None, *, highest_before: float | None = None) -> bool:
        """Report progress: a number in [0, 1], a ``'NN%'`` string, or nothing (indeterminate).

        Out-of-range or backwards values are reported as indeterminate with a console note, as
        DCP does, never an error. Always returns ``True``. An engine that passes on only some of
        the work's calls gives ``highest_before``, the highest value it did not pass on, so that
        "backwards" is judged as if every call had come through.
        """
        if highest_before is not None and (self._last_value is None or highest_before > self._last_value):
            self._last_value = highest_before
        self.progress_calls += 1
        self._heartbeat()
        number = self._normalise(value)
        if number is not None:
            self._unsent = number
        now = time.monotonic()
        if now - self._last_sent >= self.PROGRESS_INTERVAL:
            self._last_sent = now
            # A fraction held back by the throttle is not lost: work that mixes fractions with
            # plain signs of life (Blender's sample lines among its sync lines) would otherwise
            # show only "indeterminate" whenever the interval opens on a sign of life.
            number, self._unsent = self._unsent, None
            self._sink("progress", number)
        return True

    def _normalise(self, value: Any) -> float | None:
        if value is None:
            return None
        number: float | None
        if isinstance(value, str):
            m = _PERCENT.match(value)
            number = float(m.group(1)) / 100 if m else None
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an int past a float's range (progress(10**400)): out of [0, 1] too
                number = None
        else:
            number = None
        if number is None or not (0.0 <= number <= 1.0):
            shown = (f"an int of {value.bit_length()} bits" if isinstance(value, int) and value.bit_length() > 64
                     else reprlib.repr(value))  # repr() of a huge int raises
            self._warn(f"progress({shown}) is not in [0, 1] or 'NN%'; reported as indeterminate")
            return None
        if self._last_value is not None and number < self._last_value:
            self._warn(f"progress went backwards ({self._last_value} -> {number}); reported as indeterminate")
            return None
        self._last_value = number
        return number

    def _warn(self, message: str) -> None:
        # Once per slice: a loop reporting odd progress must not flood the console (or its quota).
        if not self._warned:
            self._warned = True
            self.console("warn", message + " (further progress warnings in this slice are not shown)")

    # -- console / events ---------------------------------------------------------------------
    def console(self, level: str, *args: Any) -> None:
        """Log a console line (``level`` is log/debug/info/warn/error); args are joined by spaces.
        ``ValueError`` for another level (a deployer's listeners filter on these five)."""
        if level not in CONSOLE_LEVELS:
            raise ValueError(f"console({level!r}, ...): the level must be one of {', '.join(CONSOLE_LEVELS)}")
        message = " ".join(a if isinstance(a, str) else repr(a) for a in args)
        self._sink("console", {"level": level, "message": message})

    def emit(self, name: str, value: Any = None) -> None:
        """Deliver a custom event (``work.emit`` in DCP) to the deployer's ``job.work.on(name)``."""
        if not isinstance(name, str) or not name:
            raise ValueError("emit(name, value): name must be a non-empty string")
        self._sink("emit", {"name": name, "value": value})

    @property
    def over_quota(self) -> bool:
        """True once this slice's console/emit traffic went over its output limit. The host drops
        further events and fails the slice with ``EOUTPUTLIMIT`` when it returns; an engine that
        can interrupt its guest should stop it now rather than let it run on for nothing."""
        return bool(getattr(self._sink, "over", False))

    # -- cancellation -------------------------------------------------------------------------
    @property
    def cancelled(self) -> bool:
        """True once the host asked this slice to stop; long loops should check it and return."""
        return self._cancel.is_set()

    def time_left(self) -> float | None:
        """Seconds until the wall-time limit, or ``None`` when unlimited."""
        return None if self.deadline is None else self.deadline - time.monotonic()


class Block(ABC):
    """The slices of one run, for engines that execute many per call (``Worktime.execute_block``).

    ``datums[i]`` is slice ``numbers[i]``'s datum. The engine runs pending slices (``pending()``,
    in order) and settles each with ``done(i, value)`` or ``failed(i, error)``; the host packs and
    checks each result (output limit, serialisability) and sends it on, exactly as for
    ``execute``. Per-slice semantics stay the engine's to keep: each slice is under its own wall
    time, CPU time and no-progress limits (``limits``), its events go to ``context(i)``, a limit
    hit fails only that slice (``failed(i, exceeded(...))``) and the others carry on.

    An engine should return within about ``budget`` seconds (running as many slices as fit) so
    the host can refresh its watchdog; the host calls ``execute_block`` again while slices are
    pending, so each call must settle at least one slice (a call that settles none is a bug of
    the worktime: the evaluator ends, ``ECRASH``). A slice's first outcome stands: settling it
    again is ignored; an index outside the block raises ``IndexError``. Example (what echo does with actions, and map-basic on V8)::

        def execute_block(self, block):
            block.run_each(self.execute)   # per slice, within the budget; a failure fails that slice
    """

    numbers: list[int]
    datums: list[Any]
    limits: Limits
    job: JobSpec
    #: Seconds an ``execute_block`` call should run at most before returning (slices left pending
    #: are run by the next call).
    budget: float = 0.02

    @abstractmethod
    def pending(self) -> list[int]:
        """Indexes of the slices not settled yet, in order."""

    @abstractmethod
    def context(self, i: int) -> "SliceContext":
        """Slice ``i``'s context (progress, console, emit, cancel), made on first use."""

    @abstractmethod
    def done(self, i: int, value: Any) -> None:
        """Slice ``i`` returned ``value``."""

    def done_many(self, indexes: list[int], values: list[Any]) -> None:
        """Slices ``indexes`` returned ``values`` (an engine that computed a run of them at once)."""
        for i, value in zip(indexes, values):
            self.done(i, value)

    def flush(self) -> None:
        """Send the outcomes settled so far now, not when ``execute_block`` returns: an engine about
        to wait long for a slice (one that hangs until its limit) calls it, so that the results of
        the slices before it are not held back that long."""

    def starting(self, i: int) -> None:
        """Slice ``i`` starts now (an engine running slices back to back in one call says so, so
        that the host's no-progress watchdog counts each slice from its own start)."""

    def run_each(self, run: Callable[["SliceContext", Any], Any], indexes: list[int] | None = None) -> None:
        """Settle slices ``indexes`` (default: every pending one) one by one with
        ``run(context, datum)`` for about ``budget`` seconds: the loop an ``execute_block`` around a
        per-slice call needs (``block.run_each(self.execute)``)."""
        started = time.monotonic()
        for i in self.pending() if indexes is None else indexes:
            if self.cancelled:
                return
            self.starting(i)
            try:
                self.done(i, run(self.context(i), self.datums[i]))
            except BaseException as e:  # noqa: BLE001 - the host gives it its code (SystemExit too)
                self.failed(i, e)
            if time.monotonic() - started > self.budget:
                return

    @abstractmethod
    def failed(self, i: int, error: BaseException) -> None:
        """Slice ``i`` failed (a ``SliceError`` with its code; any other exception is ``EUNCAUGHT``)."""

    @property
    @abstractmethod
    def cancelled(self) -> bool:
        """True once the host asked the run to stop: settle nothing more, return."""


#: The levels of a console line (``SliceContext.console``), as JavaScript's console has them.
CONSOLE_LEVELS = ("log", "debug", "info", "warn", "error")

#: Job options the host itself sets, accepted by every worktime.
HOST_OPTIONS = frozenset({"spread_datum"})

#: ``Worktime.default_for`` kinds besides file suffixes (``".js"``): what ``work_kind`` returns.
WORK_KINDS = frozenset({"text", "bytes", "function", "data"})


@dataclass(frozen=True)
class Probe:
    """What ``Worktime.probe`` found on this machine.

    ``capabilities`` are advertised to the scheduler (matched against job requirements);
    ``unavailable`` says why the worktime cannot run here (its engine is missing, a model is not
    installed ...), in a sentence that says how to fix it. An unavailable worktime is listed by
    ``dcp-worker worktimes`` with that reason and never offered to the scheduler.
    """

    capabilities: Mapping[str, Any]
    unavailable: str | None = None

    @property
    def available(self) -> bool:
        return self.unavailable is None


@dataclass(frozen=True)
class CapturedWork:
    """The deployer's work as a job carries it: ``work`` (text or bytes) plus the job ``options``
    the capture adds; ``origin`` names it in messages (``"function square"``, ``"file shot.blend"``)."""

    work: str | bytes
    options: Mapping[str, Any] = field(default_factory=dict)
    origin: str = ""


def work_kind(work: Any) -> str:
    """The kind of a deployer's work, as ``Worktime.default_for`` names it: a lower-case file
    suffix (``".js"``) for a path, else ``"text"``, ``"bytes"``, ``"function"`` or ``"data"``.

    >>> work_kind("function (x) { return x }"), work_kind(b"\\0asm"), work_kind(len)
    ('text', 'bytes', 'function')
    """
    import os
    from pathlib import PurePath

    if isinstance(work, os.PathLike):
        return PurePath(os.fspath(work)).suffix.lower() or "data"
    if isinstance(work, str):
        return "text"
    if isinstance(work, (bytes, bytearray, memoryview)):
        return "bytes"
    if callable(work):
        return "function"
    return "data"


class Worktime(ABC):
    """Base class of every worktime. Subclasses set the class attributes and implement ``execute``."""

    #: Unique name jobs ask for (``job.worktime = "map-basic"``).
    name: ClassVar[str]
    #: Exact semver version of this worktime (jobs match it with ranges such as ``^1.0.0``).
    version: ClassVar[str] = "0.0.0"
    #: Nested dict of booleans/strings advertised to the scheduler and matched against requirements.
    capabilities: ClassVar[Mapping[str, Any]] = {}
    #: Limits the engine enforces itself (subset of ``LIMIT_NAMES``); the host enforces all anyway.
    enforces: ClassVar[frozenset[str]] = frozenset()
    #: Whether evaluators of this worktime keep the host's network. ``False`` (the default) gives
    #: each evaluator an empty network namespace; a worktime that talks to a local server sets it.
    network: ClassVar[bool] = False
    #: Whether evaluators of this worktime start child processes (an engine that is a program of
    #: its own, run in its own sandbox, e.g. Blender under bubblewrap). ``False`` (the default):
    #: once the engine is loaded, the evaluator's seccomp filter forbids new processes and
    #: programs (``runner/lockdown.py``). A worktime whose engine choice decides it sets
    #: ``self.spawns`` in ``prepare``, before the lockdown (map-basic: V8 runs in a Deno process).
    spawns: bool = False
    #: One-line description shown by ``dcp-worker worktimes``.
    description: ClassVar[str] = ""
    #: The ``job.options`` this worktime reads, ``{name: one-line meaning}``; ``None`` (the default)
    #: accepts any. Declared, a misspelt option (``contenttype``) fails the job instead of being
    #: silently ignored. ``spread_datum`` (set by the Compute API) is always accepted.
    options: ClassVar[Mapping[str, str] | None] = None
    #: Settings the worker's owner gives this worktime, ``{name: one-line help}``: each becomes a
    #: ``dcp-worker --NAME VALUE`` flag (``{"ollama-host": "Ollama server URL"}`` gives
    #: ``--ollama-host``); a name several worktimes declare is one flag that reaches them all.
    settings: ClassVar[Mapping[str, str]] = {}
    #: For settings with a fixed set of values, those values: ``{"js-engine": ("v8", "quickjs")}``.
    #: The host refuses any other value (compared without case) before the worktime sees it.
    #: A job run on this machine (``exec()``) whose requirements the default does not meet runs
    #: with the first value that does (``requirements={"engine": {"quickjs": True}}``), unless
    #: the setting was given (``DCP_WORKTIMES_JS_ENGINE``).
    choices: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    #: ``True``: ``execute`` receives each datum as its msgpack bytes (``dcp_worktimes.values``)
    #: instead of the decoded value, for engines that hand it on packed (no decode + re-encode).
    packed_datums: ClassVar[bool] = False
    #: ``True``: ``execute`` returns values decoded from an engine's own encoding (JSON, msgpack),
    #: whose dict keys are always ones a decoder can make: the host then does not decode each
    #: result again to look for a tuple key (``values.check_keys``), as it does for Python-made ones.
    decoded_results: ClassVar[bool] = False
    #: The version range a job that names none asks for (DCP: map-basic jobs get ``^1.0.0``).
    default_range: ClassVar[str | None] = None
    #: Kinds of deployer work that default to this worktime when the job names none: file
    #: suffixes (``".js"``) and ``WORK_KINDS`` (``"text"``, ``"bytes"``, ``"function"``, ``"data"``).
    default_for: ClassVar[frozenset[str]] = frozenset()

    #: The worker owner's settings for this worktime (``{name: value}`` for the names in
    #: ``settings`` that were given; values are strings, as typed: ``--upper-level 7`` gives
    #: ``"7"``, to convert and check in ``probe``), plus ``"trusted": True`` when the owner ran
    #: ``dcp-worker --trust-work NAME``. The host sets it on the instance before ``prepare``.
    config: Mapping[str, Any] = MappingProxyType({})

    #: Set by the host before ``prepare`` when this instance runs in an evaluator process that the
    #: host ends on request (always under ``dcp-worker`` and ``exec()``): ``stop_process(error)``
    #: makes ``error`` the running slice's verdict and has the host kill the process, as its own
    #: watchdog does for a wall-time overrun; the slices after it run in a fresh evaluator. An
    #: engine whose in-process interruption costs run time may rely on it instead (``wasi`` then
    #: compiles its modules without epoch checks). ``None`` in process (tests, embedding): the
    #: engine must stop its guest itself. Callable from any thread; it returns at once. Example,
    #: in a worktime's own watchdog thread: ``self.stop_process(exceeded("wall_time", 5.0))``.
    stop_process: Callable[[SliceError], None] | None = None

    # -- class-level hooks: the deployer's machine and the worker ---------------------------------
    @classmethod
    def probe(cls, config: Mapping[str, Any]) -> Probe:
        """Whether this machine can run the worktime with ``config``, and what it advertises.

        Called once per worker process (and by ``dcp-worker worktimes``), outside the sandbox,
        before any job: check that the engine is installed, read its version, list models.
        Keep it quick (cache expensive findings on disk); never raise for a missing engine,
        return ``Probe(caps, unavailable="...")`` saying how to install it. The default: always
        available, advertising ``capabilities``.

        >>> class Gpu(Worktime):
        ...     name = "gpu"
        ...     def execute(self, ctx, datum): return datum
        ...     @classmethod
        ...     def probe(cls, config):
        ...         return Probe({}, unavailable="no CUDA device; this worktime needs one")
        >>> Gpu.probe({}).available
        False
        """
        return Probe(dict(cls.capabilities))

    @classmethod
    def capture_work(cls, work: Any) -> CapturedWork:
        """Deployer side: the job's work from what the deployer passed to ``compute.for_``.

        The default takes text (``str``), bytes, and a path to a file (read here, on the
        deployer's machine: workers never read the deployer's files; UTF-8 text stays text).
        Override it for other kinds (a Python function becomes its source; a dict becomes JSON),
        raising ``WorkError`` with what to pass instead.

        >>> Worktime.capture_work("function (x) { return x }").work
        'function (x) { return x }'
        """
        import os
        from pathlib import Path

        if isinstance(work, str):
            return CapturedWork(work, origin="a string")
        if isinstance(work, (bytes, bytearray, memoryview)):
            return CapturedWork(bytes(work), origin="bytes")
        if isinstance(work, os.PathLike):
            path = Path(work).expanduser()
            if not path.is_file():
                what = "is a directory, not a file" if path.is_dir() else "does not exist"
                raise WorkError(f"work file {str(path)!r} {what}; pass the path of the work's file")
            data = path.read_bytes()
            try:
                return CapturedWork(data.decode("utf-8"), origin=f"file {path.name}")
            except UnicodeDecodeError:
                return CapturedWork(data, origin=f"file {path.name}")
        if callable(work):
            from .plugins import get_worktimes

            takers = [r.name for r in get_worktimes().values() if "function" in r.cls.default_for]
            hint = (f"Python functions run on the {takers[0]!r} worktime: leave job.worktime unset or set it to "
                    f"{takers[0]!r}" if takers else "no installed worktime takes Python functions")
            raise WorkError(f"the work is a Python function, which worktime {getattr(cls, 'name', '(custom)')} cannot "
                            f"run; {hint}")
        raise WorkError(f"worktime {getattr(cls, 'name', '(custom)')} cannot use a {type(work).__name__} as work; pass text, bytes or a "
                        "pathlib.Path to the work's file")

    @classmethod
    def validate(cls, job: JobSpec) -> None:
        """Refuse a job this worktime can never run (``WorkError``, ``EBADWORK``).

        Runs on the deployer's machine before anything is stored, and in the evaluator before
        ``prepare``: cheap checks only (no engine). The default checks ``job.options`` against
        ``options``; an override should call ``super().validate(job)``.
        """
        cls.check_options(job.options)

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """``WorkError`` (``EBADWORK``) for an option this worktime does not read.

        >>> class Js(Worktime):
        ...     name, options = "js", {"strict": "run the work in strict mode"}
        ...     def execute(self, ctx, datum): return datum
        >>> Js.check_options({"strict": True, "spread_datum": True})
        >>> Js.check_options({"stirct": True})
        Traceback (most recent call last):
        dcp_worktimes.errors.WorkError: EBADWORK: worktime js has no option 'stirct' (did you mean 'strict'?); its options: strict
        """
        if cls.options is None:
            return
        unknown = [k for k in options if k not in cls.options and k not in HOST_OPTIONS]
        if not unknown:
            return
        import difflib

        close = difflib.get_close_matches(unknown[0], list(cls.options), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        known = ", ".join(sorted(cls.options)) or "none"
        raise WorkError(f"worktime {cls.name} has no option {unknown[0]!r}{hint}; its options: {known}")

    def prepare(self, job: JobSpec) -> None:
        """Once per job, before its first slice: compile the work, load modules.

        Raise ``WorkError`` when the work cannot run at all (the job stops, on every worker;
        ``ValueError`` counts as such too). Any other exception is taken for this machine's
        fault (``ENOWORKTIME``): the worker hands the job's slices back to other workers and
        stops offering this worktime for a minute. The default keeps ``job`` as ``self.job``.
        """
        self.job = job

    @abstractmethod
    def execute(self, ctx: SliceContext, datum: Any) -> Any:
        """Run one slice and return its result, or raise ``SliceError`` with a specific code.

        Log through ``ctx.console("log", ...)``: what this code prints to stdout or stderr reaches
        neither the job's owner nor the worker's log (a tail of stderr is kept for a crash)."""

    def execute_block(self, block: Block) -> None:
        """Optional fast path: run pending slices of ``block`` in one call (see ``Block``).

        Worktimes that do not override it get ``execute`` per slice.
        """
        raise NotImplementedError

    def release(self) -> None:
        """The evaluator is done with the current job (or retiring): free per-job resources."""

    def standby(self, hint: JobSpec) -> None:
        """Optional: start ahead what the next job will need, before that job is known.

        The pool calls it in a *spare* evaluator it starts when a job of this worktime ends, so
        that the next job's ``prepare`` finds an engine process already running (map-basic starts
        its V8 process here: ~50 ms a job would otherwise wait for). ``hint`` is the previous job
        with its options and limits only (no work, arguments, modules or files): the next job is
        likely to be like it, but may be another deployer's, so nothing of a job may be kept
        here. ``prepare`` then uses what fits and discards the rest. Errors are ignored (the
        job then starts from scratch). Worktimes that do not override it still get spare
        evaluators (forked and sandboxed ahead), with nothing of theirs started.

        Example::

            def standby(self, hint):
                self._spare = start_engine(memory=hint.limits.memory)
        """

    @classmethod
    def preload(cls) -> None:
        """Import the engine ahead of time in the worktime's zygote process, which then forks
        ready evaluators (see ``runner/zygote.py``). Import only: it **must not** start threads
        or create engine instances, because ``fork`` copies only the calling thread.
        The default does nothing.
        """

    @classmethod
    def warmup(cls, report: Callable[[str], None]) -> None:
        """Prepare expensive, job-independent state ahead of time (compile and cache an engine).

        ``dcp-worker warmup`` calls it with a ``report(message)`` callback for visible progress.
        The default does nothing.
        """

    @classmethod
    def cold_start(cls) -> str | None:
        """What this worktime's first job on this machine will spend a long time on, said before it
        starts (so nobody waits in silence), or ``None`` when nothing long is ahead: the default.

        ``dcp-worker``, ``dcp-worker slice`` and ``exec()`` print it. It must be cheap (a file's
        presence, not a compile) and must not raise.

        Example::

            @classmethod
            def cold_start(cls):
                if not cached_engine_path().exists():
                    return "compiling the engine once on this machine (~1 min; `dcp-worker warmup` does it ahead)"
                return None
        """
        return None

    @classmethod
    def describe(cls, probe: Probe | None = None) -> dict[str, Any]:
        """The advertised identity: name, version, capabilities (``probe``'s when given),
        enforced limits, settings, and whether it is available here (with the reason if not)."""
        return {
            "name": cls.name,
            "version": cls.version,
            "capabilities": dict(probe.capabilities if probe is not None else cls.capabilities),
            "enforces": sorted(cls.enforces),
            "settings": dict(cls.settings),
            "available": probe is None or probe.available,
            "unavailable": probe.unavailable if probe is not None else None,
            "description": cls.description or _first_line(cls.__doc__),
            # The OS-level sandbox its evaluators apply on this machine (seccomp, Landlock).
            "lockdown": _lockdown(cls),
        }


def _lockdown(cls: type) -> dict[str, Any]:
    from .runner.lockdown import describe

    return describe(network=bool(cls.network), spawns=bool(cls.spawns))


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""
