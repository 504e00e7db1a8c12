"""The sandboxed slice runner: evaluator processes, msgpack frames, process-level limits."""

from .pool import EvaluatorPool, SliceOutcome, run_slice

__all__ = ["EvaluatorPool", "SliceOutcome", "run_slice"]
