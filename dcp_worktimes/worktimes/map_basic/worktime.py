"""The ``map-basic`` worktime class: DCP's JavaScript work functions on QuickJS.

Importing this module is cheap (no engine); the QuickJS binding loads in ``prepare``.

    >>> from dcp_worktimes.worktime import JobSpec, SliceContext
    >>> from dcp_worktimes.limits import Limits
    >>> wt = MapBasic()
    >>> wt.prepare(JobSpec(id="j", worktime="map-basic", work="function (x) { progress(); return x * x }"))
    >>> wt.execute(SliceContext(0, Limits()), 7)
    49
"""

from __future__ import annotations

from typing import Any

from ...errors import SliceError, WorkError
from ...worktime import CapturedWork, JobSpec, SliceContext, Worktime


class MapBasic(Worktime):
    """JavaScript work functions (DCP map-basic) on QuickJS (quickjs-ng)."""

    name = "map-basic"
    version = "1.0.0"
    # "engine" is the namespace of DCP's requirements examples ({engine: {es7: true, spidermonkey: false}}).
    capabilities = {"javascript": {"es2023": True, "async": True, "require": True},
                    "engine": {"es7": True, "es2023": True, "quickjs": True}}
    enforces = frozenset({"wall_time", "cpu_time", "memory", "stack", "progress_timeout"})
    description = "JavaScript work functions (DCP map-basic) on QuickJS"
    options = {"strict": "evaluate the work in strict mode ('use strict')"}
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

    def __init__(self) -> None:
        self._engine = None

    @classmethod
    def preload(cls) -> None:
        from . import engine  # noqa: F401  (the QuickJS binding, loaded once in the zygote)

    def prepare(self, job: JobSpec) -> None:
        from .engine import JSEngine  # lazy: the engine loads only in evaluators

        self.job = job
        work = job.work.decode("utf-8") if isinstance(job.work, bytes) else job.work  # validate() checked it
        # One context per evaluator process: a new job drops the previous job's context first.
        self.release()
        engine = JSEngine()
        engine.set_limits(job.limits.memory)
        try:
            engine.set_job(list(job.arguments), dict(job.modules), spread=bool(job.options.get("spread_datum")))
            engine.compile(work, strict=bool(job.options.get("strict")), time_limit=job.limits.wall_time or 60.0)
        except SliceError as e:  # e.g. the arguments alone exceed the memory limit
            raise WorkError(f"map-basic could not load the job: {e.message}") from None
        self._engine = engine

    def execute(self, ctx: SliceContext, datum: Any) -> Any:
        if self._engine is None:
            raise WorkError("map-basic: execute() called before prepare(job)")
        return self._engine.run(ctx, datum)

    def release(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
