"""The ``map-basic`` worktime class: DCP's JavaScript work functions, on V8 or QuickJS.

Importing this module is cheap (no engine); the engine starts in ``prepare``. The worker's owner
picks the engine with ``dcp-worker --js-engine v8|quickjs`` (default: V8 where the ``deno``
package is installed, else QuickJS); the probe advertises it as ``engine: {v8: true}`` or
``engine: {quickjs: true}``, so a job can require or refuse one
(``job.requirements = {"engine": {"v8": True}}``).

    >>> from dcp_worktimes.worktime import JobSpec, SliceContext
    >>> from dcp_worktimes.limits import Limits
    >>> wt = MapBasic()
    >>> wt.config = {"js-engine": "quickjs"}
    >>> wt.prepare(JobSpec(id="j", worktime="map-basic", work="function (x) { progress(); return x * x }"))
    >>> wt.execute(SliceContext(0, Limits()), 7)
    49
"""

from __future__ import annotations

import time
from typing import Any, Mapping

from ...errors import ErrorCode, SliceError, WorkError
from ...worktime import Block, CapturedWork, JobSpec, Probe, SliceContext, Worktime
from .engine import ENGINES

SETTING = "js-engine"


class MapBasic(Worktime):
    """JavaScript work functions (DCP map-basic) on V8 (Deno) or QuickJS (quickjs-ng)."""

    name = "map-basic"
    version = "1.0.0"
    decoded_results = True  # from JSON or msgpack: no tuple keys (Worktime.decoded_results)
    # "engine" is the namespace of DCP's requirements examples ({engine: {es7: true, spidermonkey: false}});
    # the probe adds the engine that runs here (v8 or quickjs).
    capabilities = {"javascript": {"es2023": True, "async": True, "require": True},
                    "engine": {"es7": True, "es2023": True}}
    enforces = frozenset({"wall_time", "cpu_time", "memory", "stack", "progress_timeout"})
    description = "JavaScript work functions (DCP map-basic) on V8 or QuickJS"
    options = {"strict": "evaluate the work in strict mode ('use strict')",
               "bigint": "every integer of the datum and the job arguments arrives as a BigInt (default: a Number up "
                         "to 2**53-1, a BigInt above)",
               "webassembly": "give the work the WebAssembly global (V8 only: require {engine: {v8: true}})"}
    choices = {SETTING: ENGINES}
    settings = {SETTING: "JavaScript engine of map-basic: v8 or quickjs (default: v8 where the deno package "
                         "is installed, else quickjs)"}
    default_for = frozenset({"text", ".js", ".mjs", ".cjs"})
    #: DCP: a job that names no map-basic version gets ^1.0.0 (a 2.0 may change the work's contract).
    default_range = "^1.0.0"

    @classmethod
    def capture_work(cls, work: Any) -> CapturedWork:
        if isinstance(work, (bytes, bytearray, memoryview)):
            raise WorkError("map-basic takes JavaScript source text, not bytes; for a WebAssembly module use "
                            "worktime='wasi'")
        captured = super().capture_work(work)
        if isinstance(captured.work, bytes):
            raise WorkError(f"map-basic takes JavaScript source text; {captured.origin} is not UTF-8 text")
        return captured

    @classmethod
    def validate(cls, job: JobSpec) -> None:
        super().validate(job)
        work = job.work
        if isinstance(work, bytes):
            try:
                work = work.decode("utf-8")
            except UnicodeDecodeError:
                raise WorkError("map-basic work must be JavaScript source text (UTF-8); got undecodable bytes") from None
        if not isinstance(work, str) or not work.strip():
            raise WorkError('the work is an empty string; map-basic needs a work function, e.g. '
                            '"function (x) { progress(); return x * 2 }"')
        for name in ("strict", "bigint", "webassembly"):
            if not isinstance(job.options.get(name, False), bool):
                raise WorkError(f"map-basic's option {name!r} is True or False, got {job.options[name]!r}")

    def __init__(self) -> None:
        self._engine = None
        self._spare = None  # (key, engine) started by standby(), before the job was known
        self._reload_error: WorkError | None = None  # the job failed to load into a fresh context

    @staticmethod
    def _engine_key(name: str, job: JobSpec) -> tuple:
        """What an engine is started with: one started for another key cannot serve the job."""
        return name, job.limits.memory, bool(job.options.get("webassembly"))

    def standby(self, hint: JobSpec) -> None:
        """V8: start the Deno process (with the prelude) for a job like ``hint``; QuickJS starts in
        a millisecond and needs nothing ahead."""
        from .engine import make_engine, missing

        name = self.engine_name
        if name != "v8" or missing(name):
            return
        key = self._engine_key(name, hint)
        self._spare = key, make_engine(name, memory=key[1], webassembly=key[2])

    @classmethod
    def probe(cls, config: Mapping[str, Any] | None) -> Probe:
        from .engine import choose, missing

        try:
            engine = choose((config or {}).get(SETTING))
        except ValueError as e:
            return Probe(dict(cls.capabilities), unavailable=str(e))
        caps = {**cls.capabilities, "engine": {**cls.capabilities["engine"], engine: True}}
        if engine == "v8":
            caps["javascript"] = {**caps["javascript"], "webassembly": True}
        return Probe(caps, unavailable=missing(engine))

    @classmethod
    def describe(cls, probe: Probe | None = None) -> dict[str, Any]:
        desc = super().describe(probe)
        engines = (probe.capabilities if probe is not None else cls.capabilities).get("engine", {})
        if engines.get("v8"):
            from .v8 import deno_version

            desc["description"] = f"JavaScript work functions (DCP map-basic) on V8 (Deno {deno_version()})"
            from ...runner.lockdown import describe as lockdown

            desc["lockdown"] = lockdown(network=False, spawns=True)
        elif engines.get("quickjs"):
            desc["description"] = "JavaScript work functions (DCP map-basic) on QuickJS (quickjs-ng)"
        return desc

    @classmethod
    def preload(cls) -> None:
        from . import quickjs, v8  # noqa: F401  (the QuickJS binding, loaded once in the zygote)

        # What every V8 evaluator asks before it starts Deno, answered once here for all the forks
        # (each asking again after the fork cost ~20 ms of CPU: a third of a spare's start).
        if v8.deno_binary() is not None:
            v8.deno_version()

    @classmethod
    def warmup(cls, report) -> None:
        """V8: list Deno's node: built-ins for the import map and fill Deno's code cache, so the
        first job does not pay for them."""
        from .engine import missing

        if missing("v8") is None:
            from .v8 import V8Engine, deno_version

            report(f"starting V8 (Deno {deno_version()}) once: import map and code cache")
            V8Engine().close()

    @property
    def engine_name(self) -> str:
        """The engine this instance runs (``self.config["js-engine"]``, else the default)."""
        from .engine import choose

        try:
            return choose(self.config.get(SETTING))
        except ValueError as e:
            raise WorkError(str(e), code=ErrorCode.ENOWORKTIME) from None

    def prepare(self, job: JobSpec) -> None:
        from .engine import make_engine, missing

        self.job = job
        self._reload_error = None
        work = job.work.decode("utf-8") if isinstance(job.work, bytes) else job.work  # validate() checked it
        name = self.engine_name
        if job.options.get("webassembly") and name != "v8":
            raise WorkError("this worker runs map-basic on QuickJS, which has no WebAssembly; require "
                            "{engine: {v8: true}} in the job's requirements so that only V8 workers take it")
        reason = missing(name)
        if reason:
            raise WorkError(reason, code=ErrorCode.ENOWORKTIME)
        key = self._engine_key(name, job)
        spare, self._spare = self._spare, None
        if spare is not None and (spare[0] != key or not spare[1].alive):
            spare[1].close()
            spare = None
        # One engine per job: a new job drops the previous job's context (or process) first.
        self.release()
        # V8 runs in a Deno process, started again after a stop: the lockdown must allow that.
        self.spawns = name == "v8"
        try:
            engine = spare[1] if spare is not None else make_engine(name, memory=key[1], webassembly=key[2])
        except SliceError as e:  # nothing of the job has run yet: this worker's fault, not the work's
            raise WorkError(f"map-basic could not start its {name} engine: {e.message}",
                            code=ErrorCode.ENOWORKTIME) from None
        try:
            engine.set_job(list(job.arguments), dict(job.modules), spread=bool(job.options.get("spread_datum")),
                           bigint=bool(job.options.get("bigint")))
            engine.compile(work, strict=bool(job.options.get("strict")), time_limit=job.limits.wall_time or 60.0)
        except SliceError as e:  # e.g. the arguments alone exceed the memory limit
            engine.close()
            raise WorkError(f"map-basic could not load the job: {e.message}") from None
        except BaseException:
            engine.close()
            raise
        self._engine = engine

    def prefetch(self, items: list) -> None:
        """The evaluator's next batch, ``[(slice number, datum), ...]``, before its slices
        run one by one: the V8 engine sends them to Deno ahead (one pipe round trip per batch of
        short slices instead of one per slice). QuickJS runs in process and needs no such thing."""
        prefetch = getattr(self._engine, "prefetch", None)
        if prefetch is not None:
            prefetch(items)

    def _ready_engine(self, call: str) -> Any:
        """The job's engine, loaded again into a fresh one if a failed slice left it unusable
        (QuickJS: jobs it queued faster than they could be dropped, ``poisoned``)."""
        if self._reload_error is not None:
            raise self._reload_error  # the fresh context could not take the job: every slice says why
        if self._engine is None or self.job is None:
            raise WorkError(f"map-basic: {call}() called before prepare(job)")
        if getattr(self._engine, "poisoned", False):
            try:
                self.prepare(self.job)
            except WorkError as e:
                self._reload_error = e
                raise
        return self._engine

    def execute(self, ctx: SliceContext, datum: Any) -> Any:
        return self._ready_engine("execute").run(ctx, datum)

    def execute_block(self, block: Block) -> None:
        """The host's block fast path: many slices per call, each under its own context and
        limits (its own wall, CPU and no-progress deadlines; a limit hit fails that slice only).
        Both engines have a ``run_block``: QuickJS runs the synchronous slices back to back in one
        engine call; V8 sends the block's slices to Deno ahead and waits for each reply in turn.
        An engine without one runs each slice with ``engine.run``."""
        engine = self._ready_engine("execute_block")
        pending = block.pending()
        if getattr(engine, "runs_blocks", False):
            started = time.monotonic()
            while pending and not block.cancelled:
                engine = self._ready_engine("execute_block")  # a slice that failed may have poisoned it
                engine.run_block(block, pending, max(0.0, block.budget - (time.monotonic() - started)))
                if time.monotonic() - started > block.budget:
                    return
                pending = block.pending()
            return
        block.run_each(self.execute, pending)

    def release(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        if self._spare is not None:
            self._spare[1].close()
            self._spare = None
