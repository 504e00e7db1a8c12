"""Per-slice resource limits: a value, enforced in the engine *and* at process level.

``Limits`` is what a job asks for and what an evaluator enforces for each of its slices::

    >>> from dcp_worktimes.limits import Limits
    >>> Limits.parse(wall_time="2s", memory="128MB").memory
    128000000
    >>> Limits(progress_timeout=None).progress_timeout is None   # watchdog disabled
    True

Every field may be ``None`` (unlimited). Sizes accept human units (``"128MB"``, ``"1GiB"``),
durations too (``"250ms"``, ``"30s"``, ``"2m"``), through ``humanfriendly``.

Defaults (documented in the README):

==================  =========  ===========================================================
field               default    violation
==================  =========  ===========================================================
wall_time           1 hour     ``ESLICETOOSLOW``
cpu_time            unlimited  ``ECPULIMIT``
memory              2 GiB      ``EMEMORYLIMIT`` (engine quota, and resident-set watchdog)
output              64 MiB     ``EOUTPUTLIMIT`` (encoded result size)
progress_timeout    30 s       ``ENOPROGRESS`` (no ``progress()`` for that long)
==================  =========  ===========================================================

DCP's docs say the progress timeout is 30 s while its code uses 300 s; we use the documented
30 s and say in the error message how to raise it or turn it off (``progress_timeout=None``).

Every limit has a documented range, and a value outside it is refused (``ValueError`` saying the
range), never passed on to an engine that would overflow on it:

* sizes (memory, output): at most ``MAX_SIZE`` (1 PiB: more than any machine has, and well inside
  the 63-bit counts every engine takes);
* durations: at least ``MIN_DURATION`` (100 ms: the watchdogs sample every 20 ms, so a shorter
  limit could not be enforced as written) and at most ``MAX_DURATION`` (one year: longer timeouts
  overflow the operating system's timers; use ``None`` for none).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from .errors import LimitExceeded

GiB = 1 << 30
MiB = 1 << 20
PiB = 1 << 50

#: The largest size limit (memory, output) a job or a worker may set.
MAX_SIZE = PiB
#: The shortest duration limit: the watchdogs sample every 20 ms, so shorter limits would not hold.
MIN_DURATION = 0.1
#: The longest duration limit (a year); ``None`` means no limit at all.
MAX_DURATION = 366 * 24 * 3600.0

_SIZE_FIELDS = ("memory", "output")
_TIME_FIELDS = ("wall_time", "cpu_time", "progress_timeout")


@dataclass(frozen=True)
class Limits:
    """Resource limits of one slice. Sizes in bytes, times in seconds, ``None`` = unlimited."""

    wall_time: float | None = 3600.0
    cpu_time: float | None = None
    memory: int | None = 2 * GiB
    output: int | None = 64 * MiB
    progress_timeout: float | None = 30.0

    def __post_init__(self) -> None:
        # Limits built directly (not through parse) get the same range checks.
        for f in dataclasses.fields(self):
            _check_range(f.name, getattr(self, f.name))

    @classmethod
    def parse(cls, base: "Limits | None" = None, **values: Any) -> "Limits":
        """Build limits from human values (``"2s"``, ``"128MB"``, numbers, ``None``/``"none"``).

        Unknown names and unparsable values raise ``ValueError`` saying which field and why.
        """
        base = base or cls()
        changes: dict[str, Any] = {}
        for key, value in values.items():
            if key not in _SIZE_FIELDS and key not in _TIME_FIELDS:
                known = ", ".join(_SIZE_FIELDS + _TIME_FIELDS)
                raise ValueError(f"unknown limit {key!r}; known limits: {known}")
            changes[key] = parse_size(value, key) if key in _SIZE_FIELDS else parse_duration(value, key)
            _check_range(key, changes[key], value)
        memory = changes.get("memory")
        if memory is not None and memory < 64 * 1024:  # catches "memory=512" meant as MB
            raise ValueError(f"memory: {values['memory']!r} is {memory} bytes, too little to run anything; "
                             "write a unit, e.g. 512MB or 2GiB")
        return dataclasses.replace(base, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "Limits":
        if not d:
            return cls()
        return cls.parse(**{k: v for k, v in d.items()})

    def describe(self) -> str:
        """One line for humans: ``wall 2s, memory 128.0 MB, ...``."""
        import humanfriendly

        parts = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None:
                shown = "unlimited"
            elif f.name in _SIZE_FIELDS:
                shown = format_size(v)
            else:
                shown = humanfriendly.format_timespan(v)
            parts.append(f"{f.name} {shown}")
        return ", ".join(parts)


#: The ``dcp-worker`` flag that sets each limit (a worker's cap on every job's limit).
FLAGS = {"wall_time": "--wall-time", "cpu_time": "--cpu-time", "memory": "--memory-limit", "output": "--output-limit",
         "progress_timeout": "--progress-timeout"}


def show(limit: str, value: float | int, like: float | int | None = None) -> str:
    """A limit's value for humans: sizes in the unit family the user wrote, durations in seconds."""
    if limit in _SIZE_FIELDS or limit == "scratch":
        return format_size(value, like=int(like) if like is not None else None)
    if limit == "fuel":
        return f"{int(value):,} instructions"
    return f"{value:.1f} s" if like is not None and value >= 1 else f"{value:g} s"


def exceeded(limit: str, allowed: float | int | None, *, used: float | int | None = None, what: str | None = None,
             detail: str | None = None, name: str | None = None, stack: str | None = None,
             subject: str = "the slice") -> "LimitExceeded":
    """The error of a slice that went over ``limit`` (a ``LIMIT_CODES`` key), worded one way
    wherever it is enforced: what was exceeded, by how much when known, and what to do.

    ``what`` names the thing measured (``"JavaScript heap"``, ``"console/emit traffic"``);
    ``detail`` is appended (``"on top of the worktime's own 40 MB"``); ``subject`` is what went over
    (``"preparing the job"``; the slice by default).

    >>> print(exceeded("wall_time", 2.0).message)
    the slice ran longer than its wall-time limit of 2 s; make the work faster, split it into smaller slices, or raise the limit (wall_time / --wall-time)
    >>> exceeded("memory", 128_000_000, used=150_000_000).code
    <ErrorCode.EMEMORYLIMIT: 'EMEMORYLIMIT'>
    """
    from .errors import LimitExceeded

    cap = "" if allowed is None else show(limit, allowed)
    over = f", over its limit of {cap}" if cap else ", over its limit"
    amount = None
    if used is not None:
        amount = show(limit, used, like=allowed)
        if amount == cap and limit in ("memory", "output", "scratch"):  # "1 MiB, over 1 MiB" says nothing
            amount = f"{int(used):,} bytes"
    how = f"raise the limit ({limit} / {FLAGS[limit]})" if limit in FLAGS else ""
    if limit == "wall_time":
        head = f"{subject} ran longer than its wall-time limit{' of ' + cap if cap else ''}"
        advice = f"make the work faster, split it into smaller slices, or {how}"
    elif limit == "progress_timeout":
        head = f"no progress() for {cap or 'too long'} (the progress timeout)"
        advice = (f"call progress() regularly in long-running work, or raise the timeout or turn it off "
                  f"(progress_timeout=None / {FLAGS[limit]} off)")
    elif limit == "cpu_time":
        head = (f"{subject} used {amount} of CPU time{over}" if amount else
                f"{subject} used more CPU time than its limit{' of ' + cap if cap else ''}")
        advice = f"do less per slice or {how}"
    elif limit == "memory":
        head = (f"{subject} used {amount} of {what or 'memory'}{over}" if amount else
                f"{subject} used more {what or 'memory'} than its limit{' of ' + cap if cap else ''}")
        advice = f"use less memory or {how}"
    elif limit == "output":
        head = f"{what or 'the result'} is {amount or 'too big'}{over.replace('its limit', 'the output limit')}"
        advice = f"send back less data or {how}"
    elif limit == "scratch" and used is None:
        head = f"{what or 'the scratch directory /tmp'} cannot be measured against its cap{' of ' + cap if cap else ''}"
        advice = "keep /tmp shallow and readable, or raise the cap (the job option scratch_size)"
    elif limit == "scratch":
        head = f"{what or 'the scratch directory /tmp'} holds {amount}{over.replace('its limit', 'its cap')}"
        advice = "write less, or raise the cap (the job option scratch_size)"
    elif limit == "fuel":
        head = f"the slice spent its fuel budget{' of ' + cap if cap else ''}"
        advice = "do less per slice or raise the job option fuel"
    else:
        raise ValueError(f"unknown limit {limit!r}")
    text = head + (f" ({detail})" if detail else "") + "; " + advice
    return LimitExceeded(text, limit=limit, name=name, stack=stack)


#: Evaluators per CPU at most: slices are CPU-bound, so more only adds memory and switching.
MAX_EVALUATORS_PER_CPU = 8


def check_cores(cores: Any, what: str = "cores") -> None:
    """``None`` (one evaluator per CPU) or a positive int no larger than ``MAX_EVALUATORS_PER_CPU``
    per CPU of this machine; ``ValueError`` saying which.

    >>> check_cores(2); check_cores(None)
    """
    import numbers
    import os

    if cores is None:
        return
    if isinstance(cores, bool) or not isinstance(cores, numbers.Integral) or cores < 1:
        raise ValueError(f"{what} must be a positive number of evaluator processes, or None for all cores; got {cores!r}")
    cpus = os.cpu_count() or 1
    if cores > MAX_EVALUATORS_PER_CPU * cpus:
        raise ValueError(f"{what}={cores} is more than {MAX_EVALUATORS_PER_CPU} evaluators per CPU on this {cpus}-CPU "
                         f"machine (at most {MAX_EVALUATORS_PER_CPU * cpus}); slices are CPU-bound, so one per CPU "
                         "(the default) is fastest")


def format_size(size: float, like: int | None = None) -> str:
    """Bytes for humans, in the unit family the user wrote (``like``, default ``size`` itself):
    a limit given as 128MB is shown in MB, one given as 1GiB in GiB.

    >>> format_size(128_000_000), format_size(1 << 30), format_size(146_800_000, like=128 << 20)
    ('128 MB', '1 GiB', '140 MiB')
    """
    import humanfriendly

    ref = int(size if like is None else like)
    binary = ref >= 1024 and ref % 1024 == 0 and ref % 1000 != 0
    return humanfriendly.format_size(size, binary=binary)


def _check_range(key: str, value: Any, given: Any = None) -> None:
    """``ValueError`` if limit ``key`` is outside its documented range (``None``, no limit, is fine)."""
    if value is None:
        return
    shown = repr(value if given is None else given)
    if key in _SIZE_FIELDS:
        if value > MAX_SIZE:
            raise ValueError(f"{key}: {shown} is more than the largest limit, {format_size(MAX_SIZE)}; "
                             f"use off for the worker's maximum")
    elif key in _TIME_FIELDS:
        if value < MIN_DURATION:
            raise ValueError(f"{key}: {shown} is shorter than {MIN_DURATION * 1000:g} ms, the shortest limit the "
                             "watchdogs can enforce (they look every 20 ms)")
        if value > MAX_DURATION:
            raise ValueError(f"{key}: {shown} is longer than the longest limit, {MAX_DURATION / 86400:g} days; "
                             "use off for no limit")


#: A number and a size unit: B, bytes, K/KB/KiB ... E/EB/EiB, kilobytes ... (any case).
_SIZE = re.compile(r"\d+(\.\d*)?\s*(b|bytes?|[kmgtpe](i?b)?|(kilo|mega|giga|tera|peta|exa|kibi|mebi|gibi|tebi|pebi|exbi)bytes?)",
                   re.IGNORECASE)


def _is_none(value: Any, what: str, example: str) -> bool:
    """Whether ``value`` asks for no limit: ``None``, ``off``, ``none``, ``unlimited``. An empty
    string is refused: it is what ``--memory-limit "$UNSET"`` gives, and must not lift a limit."""
    if isinstance(value, str) and not value.strip():
        raise ValueError(f"{what}: the value is empty; give one such as {example}, or off for no limit")
    return value is None or (isinstance(value, str) and value.strip().lower() in ("none", "unlimited", "off"))


def parse_size(value: Any, what: str = "size") -> int | None:
    """``"128MB"`` → 128000000, ``"1GiB"`` → 1073741824, ``4096`` → 4096, ``"none"`` → None."""
    if _is_none(value, what, "512MiB"):
        return None
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a size such as 128MB or 1GiB, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{what}: must be a finite size, got {value!r} (use off for no limit)")
    if isinstance(value, (int, float)):
        size = int(value)
    else:
        import humanfriendly  # lazily: evaluators start without it

        text = str(value).strip()
        try:
            number = float(text)
        except ValueError:
            pass
        else:  # "--memory-limit 1.5" almost never means 1 byte: make the unit explicit
            if number <= 0:
                raise ValueError(f"{what}: must be positive, got {value!r} (use off for no limit)")
            raise ValueError(f"{what}: {value!r} has no unit; write it like {text}MB or {text}GiB "
                             f"(or {text}B if you really mean bytes)")
        # humanfriendly reads the unit's first letter only ("2Mushrooms" is 2 MB, "1GiBB" 1 GB):
        # only the units it is meant for get that far.
        if not _SIZE.fullmatch(text):
            raise ValueError(f"{what}: cannot read {value!r} as a size; write it like 128MB, 1GiB or 4096B")
        try:
            size = int(humanfriendly.parse_size(text))
        except (humanfriendly.InvalidSize, OverflowError, ValueError):
            raise ValueError(f"{what}: cannot read {value!r} as a size; write it like 128MB, 1GiB or 4096B") from None
    if size <= 0:
        raise ValueError(f"{what}: must be positive, got {value!r} (use off for no limit)")
    return size


def to_float(value: Any) -> float:
    """``float(value)``, but a number too large for a float is infinite rather than an
    ``OverflowError`` from deep inside: every setting that takes a number then refuses it with
    its own message (a job's settings may be any Python number, 10**400 included).

    >>> to_float(10**400), to_float(-10**400), to_float(2)
    (inf, -inf, 2.0)
    """
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf
    except ValueError:  # Decimal("sNaN"): no number at all
        return math.nan


def parse_duration(value: Any, what: str = "duration") -> float | None:
    """``"2s"`` → 2.0, ``"250ms"`` → 0.25, ``"2m"`` → 120.0, ``5`` → 5.0, ``"off"`` → None."""
    if _is_none(value, what, "30s"):
        return None
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a duration such as 30s or 2m, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = to_float(value)
    else:
        import humanfriendly

        try:
            seconds = float(humanfriendly.parse_timespan(str(value)))
        except humanfriendly.InvalidTimespan:
            raise ValueError(f"{what}: cannot read {value!r} as a duration; write it like 30s, 250ms or 2m") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{what}: must be a positive finite duration, got {value!r:.40} (use off for no limit)")
    return seconds
