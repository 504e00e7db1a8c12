"""The sandboxed slice runner: evaluator processes, msgpack frames, process-level limits.

Names are imported lazily: an evaluator process imports ``dcp_worktimes.runner.evaluator`` and must
not pay for the supervisor's modules (psutil, the plugin registry) on every cold start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["EvaluatorPool", "Outcome", "SliceOutcome", "run_slice"]

if TYPE_CHECKING:
    from .pool import EvaluatorPool, Outcome, SliceOutcome, run_slice


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import pool

        return getattr(pool, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
