"""The Compute API: ``from dcp_worktimes import compute``.

Map work over an input set, run it on this machine (or on workers attached to the same
scheduler), get the results in slice order::

    from dcp_worktimes import compute

    results = compute.for_(1, 3, "function(i){ progress(); return i*10 }").exec()
    results                      # [10, 20, 30]
    results.entries()            # [['1', 10], ['2', 20], ['3', 30]]

    def square(x):
        return x * x
    compute.for_(range(5), square).exec()          # the python worktime: [0, 1, 4, 9, 16]

Forms of ``for_`` (work always comes after the inputs; an optional list of extra work arguments
comes last, ``work(datum, *arguments)``; keyword settings are job attributes such as
``worktime="python"``, ``requirements=...``, ``limits=...``):

* ``for_({"start": 0, "end": 9, "step": 1, "group": None}, work)`` or ``for_(RangeObject(...), work)``
* ``for_(start, end, work)`` / ``for_(start, end, step, work)``
* ``for_([{...}, {...}], work)`` — multi-dimensional: one work argument per range, results nested
* ``for_(iterable_or_generator, work)`` — consumed lazily, in batches
* ``for_(stats.set.normal(1000, 0, 1, seed=1), work)`` — distributions, lazy and seedable

``do(n, work)`` runs ``work`` ``n`` times (it receives the slice number ``0..n-1``).
``resume(job_id)`` re-attaches to a deployed job from another process.
``Application(name, version, identity)`` defines and publishes named work functions;
``Application(name, "^1.0.0").for_(inputs, "function")`` builds a job from one (``application.py``).
"""

from __future__ import annotations

import numbers
from decimal import Decimal
from fractions import Fraction
from types import SimpleNamespace
from typing import Any

from ..inputs import InputSet, MultiRange, RangeError, RangeObject, StreamInput, input_set, input_set_from_description
from ..inputs import distributions as stats
from ..worktime import CapturedWork
from .application import Application, ApplicationFunction
from .cost import CostProfile, CostProfileError, freeValue, marketPrice, marketValue, parse_cost, safeMarketValue
from .events import Event
from .job import Job, JobCancelled, JobTimedOut, resume
from .results import JobFailed, ResultHandle, ResultKeyError, SliceFailed
from .settings import SETTINGS, RequirementsError, check_arguments

__all__ = [
    "for_", "do", "resume", "Job", "stats", "RangeObject", "MultiRange", "RangeError", "InputSet", "StreamInput",
    "input_set", "input_set_from_description", "ResultHandle", "ResultKeyError", "SliceFailed", "JobFailed",
    "JobCancelled", "JobTimedOut", "RequirementsError", "CostProfile", "CostProfileError", "parse_cost", "marketValue",
    "marketPrice", "safeMarketValue", "freeValue", "default", "Event", "Application", "ApplicationFunction",
]

class _Defaults(SimpleNamespace):
    """Default job settings applied by ``for_``/``do`` (DCP's ``compute.default``), e.g.
    ``compute.default.worktime = "python"`` or ``compute.default.limits = {"wall_time": "1m"}``.
    A name that is no job setting is refused where it is set (every later ``for_`` failed)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in SETTINGS:
            raise AttributeError(f"compute.default.{name}: unknown job setting; settings: {', '.join(sorted(SETTINGS))}")
        super().__setattr__(name, value)


default = _Defaults()


def _is_number(x: Any) -> bool:
    return isinstance(x, (numbers.Real, Decimal, Fraction)) and not isinstance(x, bool)


def _is_work(x: Any) -> bool:
    """What may stand where the work goes: text, bytes, a path, a function, or data (a dict) for
    worktimes whose work is data (``Worktime.capture_work`` decides what it accepts)."""
    import os
    from collections.abc import Mapping

    return isinstance(x, (str, bytes, bytearray, memoryview, CapturedWork, os.PathLike, Mapping)) or callable(x)


def _split_tail(rest: tuple, form: str) -> tuple[Any, list | None]:
    """``(work[, arguments])`` from what follows the inputs."""
    if not rest:
        raise TypeError(f"compute.for_({form}): the work is missing; pass it after the inputs: "
                        f"compute.for_({form}, work)")
    work, *more = rest
    if not _is_work(work):
        raise TypeError(
            f"compute.for_({form}, ...): expected the work (a JS source string, a Python function, a Path, bytes, or "
            f"a dict for worktimes whose work is data) after the inputs, got {type(work).__name__} {work!r:.40}"
        )
    if len(more) > 1:
        raise TypeError(f"compute.for_: too many arguments after the work; extra work arguments go in one list: "
                        f"compute.for_({form}, work, [a, b, c])")
    return work, check_arguments(more[0] if more else None, f"compute.for_({form}, work, arguments)")


def for_(*args: Any, **settings: Any) -> Job:
    """Create a job mapping work over an input set (forms in the module docstring).

    Nothing is deployed until ``exec()``. The inputs and the work are checked here; what can still
    change before ``exec()`` (settings, the scheduler, whether the arguments can be sent) is
    checked by ``exec()`` before anything is deployed. Each refusal says how to fix it.
    """
    args = _positional_for(args, settings)
    inputs, work, arguments = parse_for(args)
    return _make_job(inputs, work, arguments, settings)


#: Keywords naming what ``for_`` takes positionally (as DCP's ``compute.for`` does).
_POSITIONAL = ("inputs", "start", "end", "step", "group", "input_set", "range")


def _positional_for(args: tuple, settings: dict) -> tuple:
    """``work=`` and ``arguments=`` joined to the positional arguments (taken from ``settings``);
    a keyword for the inputs is refused saying how to write them."""
    named = [k for k in _POSITIONAL if k in settings]
    if named:
        raise TypeError(f"compute.for_(): {', '.join(f'{k}=' for k in named)} cannot be given by keyword: the inputs come "
                        "first, by position: compute.for_(inputs, work), compute.for_(start, end[, step], work), "
                        "or compute.for_({'start': 1, 'end': 10, 'step': 2}, work)")
    if "work" in settings:
        work = settings.pop("work")
        if any(_is_work(a) for a in args[1:]) or (args and isinstance(args[0], (str, bytes))):
            raise TypeError("compute.for_(): the work is given twice (by position and as work=); give it once")
        args = (*args, work)
        if "arguments" in settings:
            args = (*args, settings.pop("arguments"))
    elif "arguments" in settings:
        # after the work, whichever form came before it: a list after the work is its arguments
        if not args or not _is_work(args[-1]):
            raise TypeError("compute.for_(): arguments= is given twice or before the work; write "
                            "compute.for_(inputs, work, arguments) or compute.for_(inputs, work, arguments=[...])")
        args = (*args, settings.pop("arguments"))
    return args


def parse_for(args: tuple, call: str = "compute.for_") -> tuple[InputSet, Any, list | None]:
    """``(inputs, work, arguments)`` from the positional arguments of a ``for_`` call (every form)."""
    if not args:
        raise TypeError(f"{call}() needs inputs and work, e.g. {call}(1, 10, work) or "
                        f"{call}({{'start': 1, 'end': 10}}, work)")
    first = args[0]
    if _is_number(first):
        numbers_ = []
        i = 0
        while i < len(args) and _is_number(args[i]) and len(numbers_) < 3:
            numbers_.append(args[i])
            i += 1
        if len(numbers_) < 2 and any(_is_number(a) for a in args[i:]):
            raise TypeError(
                f"{call}({', '.join(f'{a!r:.20}' for a in args)}): the work must come after start, end[, step]: "
                f"{call}(start, end[, step], work[, arguments])"
            )
        if len(numbers_) < 2:
            raise TypeError(
                f"{call}({first!r}, ...): a numeric form needs start and end: {call}(start, end[, step], work)"
            )
        form = ", ".join(repr(n) for n in numbers_)
        work, arguments = _split_tail(args[i:], form)
        return RangeObject(*numbers_), work, arguments
    if isinstance(first, (str, bytes)) or (callable(first) and not isinstance(first, type) and not hasattr(first, "__iter__")):
        raise TypeError(
            f"{call}: the first argument looks like the work; the inputs come first: "
            f"{call}(inputs, work[, arguments])"
        )
    inputs = input_set(first)
    work, arguments = _split_tail(args[1:], type(first).__name__)
    return inputs, work, arguments


def do(n: int, work: Any, arguments: list | None = None, **settings: Any) -> Job:
    """A job that runs ``work`` ``n`` times; the work receives the slice number (``0..n-1``)."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise TypeError(f"compute.do(n, work): n must be a positive integer, got {n!r}")
    return _make_job(RangeObject(0, int(n) - 1), work, check_arguments(arguments, "compute.do(n, work, arguments)"),
                     settings)


def _make_job(inputs: InputSet, work: Any, arguments: list | None, settings: dict) -> Job:
    merged = dict(vars(default))
    merged.update(settings)
    return Job(inputs, work, arguments, **merged)
