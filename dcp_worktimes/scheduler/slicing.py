"""Datums of described inputs, cut on demand: what every backend hands out with a lease.

A range or distribution is stored as its description (``InputSet.description()``); a lease of
slices ``first .. stop-1`` computes their datums here, never storing them. ``Slicer`` keeps one
``InputSet`` per job (built once from the description) and a fast path for integer ranges:

    >>> from dcp_worktimes.inputs import input_set
    >>> s = Slicer()
    >>> s.run("j", input_set({"start": 10, "end": 20, "step": 5}).description(), 0, 3)
    [10, 15, 20]
    >>> s.some("j", input_set({"start": 10, "end": 20, "step": 5}).description(), [2, 0])
    [20, 10]
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Iterable

from ..inputs import input_set_from_description
from ..recent import Recent

#: Jobs whose input sets a slicer keeps built (a worker that served more builds them again).
JOBS_CACHED = 1024


class Slicer:
    """Per-job caches of built input sets; not thread-safe (each backend calls it under its lock
    or from one thread per instance)."""

    def __init__(self) -> None:
        self.inputs: Recent[str, Any] = Recent(JOBS_CACHED)  # job id -> InputSet built from the description
        self.fast: Recent[str, Any] = Recent(JOBS_CACHED)  # job id -> (start, step) of an integer range, or False

    def input(self, job_id: str, desc: dict) -> Any:
        inp = self.inputs.get(job_id)
        if inp is None:
            inp = self.inputs[job_id] = input_set_from_description(desc)
        return inp

    def run(self, job_id: str, desc: dict, first: int, stop: int) -> list[Any]:
        """Datums of slices ``first .. stop-1``."""
        if desc.get("kind") == "range" and desc.get("integral") and not desc.get("group"):
            # Integer ranges are the common case and RangeObject.nth goes through Fraction
            # arithmetic (~30 µs a slice); the same values as a Python range cost nothing.
            fast = self._int_range(job_id, desc)
            if fast is not None:
                start, step = fast
                return list(range(start + first * step, start + stop * step, step))
        inp = self.input(job_id, desc)
        return [inp.nth(n) for n in range(first, stop)]

    def some(self, job_id: str, desc: dict, numbers: Iterable[int]) -> list[Any]:
        """Datums of the slices ``numbers`` (retries: any order, any gaps)."""
        inp = self.input(job_id, desc)
        return [inp.nth(n) for n in numbers]

    def forget(self, job_id: str) -> None:
        self.inputs.pop(job_id, None)
        self.fast.pop(job_id, None)

    def _int_range(self, job_id: str, desc: dict) -> tuple[int, int] | None:
        cached = self.fast.get(job_id)
        if cached is None:
            try:
                start, step = Fraction(desc["start"]), Fraction(desc["step"])
            except (KeyError, ValueError, TypeError, ZeroDivisionError):
                return None
            if start.denominator != 1 or step.denominator != 1 or step == 0:
                return None
            cached = (int(start), int(step))
            inp = self.input(job_id, desc)  # trust but verify against the owner of the semantics
            if len(inp) and inp.nth(len(inp) - 1) != cached[0] + (len(inp) - 1) * cached[1]:
                cached = False  # type: ignore[assignment]
            self.fast[job_id] = cached
        return cached or None
