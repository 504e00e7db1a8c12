"""The ``echo`` worktime: returns each datum; its work can ask it to misbehave (see README).

This module is the template for a third-party worktime: one ``Worktime`` subclass, one hook.
"""

from __future__ import annotations

import ctypes
import json
import os
import time
from typing import Any

from dcp_worktimes import hookimpl
from dcp_worktimes.errors import ErrorCode, SliceError, WorkError
from dcp_worktimes.worktime import Block, JobSpec, SliceContext, Worktime

ACTIONS = ("pid", "spin", "sleep", "silent", "allocate", "crash", "output", "throw", "console", "emit", "progress",
           "result", "unserializable", "when")
CRASHES = ("segfault", "abort", "exit")


class EchoWorktime(Worktime):
    """Returns each slice's datum; misbehaves on request to exercise the host's limits."""

    name = "echo"
    version = "1.0.0"
    capabilities = {"echo": True}
    # Nothing: every limit is left to the host's process-level guards, which is what echo tests.
    enforces = frozenset()

    def prepare(self, job: JobSpec) -> None:
        self.job = job
        work = job.work.decode() if isinstance(job.work, bytes) else job.work
        if not work.strip():
            self.actions: dict[str, Any] = {}
            return
        try:
            actions = json.loads(work)
        except json.JSONDecodeError as e:
            raise WorkError(f"echo's work must be empty or a JSON object of actions: {e}") from None
        if not isinstance(actions, dict):
            raise WorkError(f"echo's work must be a JSON object of actions, got {type(actions).__name__}")
        unknown = sorted(set(actions) - set(ACTIONS))
        if unknown:
            raise WorkError(f"unknown echo action(s) {', '.join(unknown)}; known: {', '.join(ACTIONS)}")
        if "crash" in actions and actions["crash"] not in CRASHES:
            raise WorkError(f"crash must be one of {', '.join(CRASHES)}")
        for key in ("spin", "sleep", "silent", "allocate", "output"):
            value = actions.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise WorkError(f"echo action {key!r} takes a number, got {value!r}")
        for key, kind in (("console", list), ("emit", dict), ("progress", list)):
            if not isinstance(actions.get(key, kind()), kind):
                raise WorkError(f"echo action {key!r} takes a {kind.__name__}")
        self.actions = actions

    def execute_block(self, block: Block) -> None:
        """Many slices per call (the host's block fast path): plain echo settles them all at once;
        with actions, one by one within the block's time budget."""
        if not self.actions:
            pending = block.pending()
            block.done_many(pending, [block.datums[i] for i in pending])
            return
        block.run_each(self.execute)

    def execute(self, ctx: SliceContext, datum: Any) -> Any:
        a = self.actions
        if not a:  # plain echo: the host's per-slice overhead is all that is measured
            return datum
        if "when" in a and datum != a["when"]:
            ctx.progress(1)
            return datum
        for value in a.get("progress", []):
            ctx.progress(value)
        for line in a.get("console", []):
            ctx.console("log", line)
        for name, value in a.get("emit", {}).items():
            ctx.emit(name, value)
        if "spin" in a:
            _spin(ctx, a["spin"])
        if "sleep" in a:
            _sleep(ctx, a["sleep"], report=True)
        if "silent" in a:
            _sleep(ctx, a["silent"], report=False)
        if "allocate" in a:
            hoard = []
            left = int(float(a["allocate"]) * (1 << 20))
            while left > 0:
                chunk = min(left, 8 << 20)
                hoard.append(bytearray(os.urandom(1)) * chunk)  # touched: counts in RSS
                left -= chunk
                ctx.progress()
            del hoard
        if "crash" in a:
            _crash(a["crash"])
        if "throw" in a:
            raise SliceError(str(a["throw"]), code=ErrorCode.EUNCAUGHT, name="EchoError")
        if a.get("unserializable"):
            return {"value": object()}
        if "output" in a:
            return b"x" * int(float(a["output"]) * (1 << 20))
        ctx.progress(1)
        if a.get("pid"):
            return [datum, os.getpid()]
        return a["result"] if "result" in a else datum


def _spin(ctx: SliceContext, seconds: float) -> None:
    end = float("inf") if seconds < 0 else time.process_time() + seconds
    while time.process_time() < end and not ctx.cancelled:
        for _ in range(10000):
            pass
        ctx.progress()


def _sleep(ctx: SliceContext, seconds: float, report: bool) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end and not ctx.cancelled:
        time.sleep(min(0.05, max(0.0, end - time.monotonic())))
        if report:
            ctx.progress()


def _crash(how: str) -> None:
    if how == "segfault":
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    if how == "abort":
        os.abort()
    os._exit(70)


@hookimpl
def register_worktimes(register):
    register(EchoWorktime)
