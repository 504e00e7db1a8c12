"""Range objects: exact, lazy descriptions of number sequences (``compute.for_`` forms 1–3).

A range ``{start, end, step, group}`` yields ``start, start+step, ...`` up to the last value not
past ``end``. Arithmetic is exact (``fractions.Fraction`` built from the *decimal* the user wrote,
so ``0.1`` is one tenth, not the binary float nearest to it), the set is never materialised
(``len`` and ``nth`` are O(1)), and every mistake is reported before anything is deployed::

    >>> r = RangeObject(start=0.1, end=0.5, step=0.1)
    >>> len(r), [r.nth(i) for i in range(len(r))]
    (5, [0.1, 0.2, 0.3, 0.4, 0.5])
    >>> RangeObject(start=10, end=13, group=2).nth(1)
    [12, 13]
    >>> len(RangeObject(start=0, end=10**12))
    1000000000001
    >>> RangeObject(start=0, end=10**19).size      # len() stops at sys.maxsize; .size is exact
    10000000000000000001

Datums are ``int`` when start, end and step are all integers, else ``float`` (the nearest double
to the exact decimal value: ``float(Decimal("0.3")) == 0.3``). A float range whose step is not
larger than the gap between adjacent floats at its largest value is refused: there, distinct exact
values would become the same float (``{start: 2**70, end: 2**70 + 1, step: 0.5}`` would give three
equal inputs), and an input set never holds silent duplicates. With ``group: n`` each slice gets a
list of up to ``n`` consecutive values. ``MultiRange`` is the cartesian product of several ranges
(form 3): slice ``i`` gets one value per dimension, last dimension varying fastest.
"""

from __future__ import annotations

import math
import numbers
import sys
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any, Mapping, Sequence

__all__ = ["RangeObject", "MultiRange", "RangeError", "js_number_string", "exact_number", "checked_len"]


class RangeError(ValueError):
    """A range object that cannot describe a set (raised before deployment)."""


def checked_len(size: int, what: str) -> int:
    """``size`` for ``__len__``, or a clear ``OverflowError`` when ``len()`` cannot hold it.

    ``len()`` is capped at ``sys.maxsize`` (2**63-1); sets that large are still exact and lazy,
    and ``.size`` gives their count as an ``int`` of any size.
    """
    if size > sys.maxsize:
        raise OverflowError(
            f"this {what} has {size} slices, more than len() can return (at most sys.maxsize = {sys.maxsize}); "
            "use its .size attribute for the exact count"
        )
    return size


def exact_number(value: Any, what: str) -> tuple[Fraction, bool]:
    """``value`` as an exact fraction plus whether it is an integer *type*.

    Floats are read through their shortest repr (``0.1`` -> 1/10): that is the decimal the user
    typed, and it is what DCP's BigNumber arithmetic does with a JS number.
    """
    if isinstance(value, bool) or value is None:
        raise RangeError(f"{what} must be a number, got {value!r}")
    if isinstance(value, int):
        return Fraction(value), True
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RangeError(f"{what} must be a finite number, got {value!r} (Infinity and NaN are not supported)")
        # float.__repr__: a float subclass may print itself otherwise (numpy 2: 'np.float64(0.5)').
        return Fraction(Decimal(float.__repr__(float(value)))), False
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise RangeError(f"{what} must be a finite number, got {value!r}")
        return Fraction(value), False
    if isinstance(value, Fraction):
        return value, value.denominator == 1
    if isinstance(value, str):
        try:
            d = Decimal(value.strip())
        except InvalidOperation:
            raise RangeError(f"{what} must be a number or a decimal string such as '0.1', got {value!r}") from None
        if not d.is_finite():
            raise RangeError(f"{what} must be a finite number, got {value!r}")
        return Fraction(d), d == d.to_integral_value() and "." not in value and "e" not in value.lower()
    if isinstance(value, numbers.Integral):  # numpy ints and friends
        return Fraction(int(value)), True
    if isinstance(value, numbers.Real):
        return exact_number(float(value), what)
    raise RangeError(f"{what} must be a number, got {type(value).__name__} {value!r}")


def _fraction_text(f: Fraction) -> str:
    """Exact text of a fraction whose denominator divides a power of ten; else 'n/d'."""
    if f.denominator == 1:
        return str(f.numerator)
    d = f.denominator
    twos = fives = 0
    while d % 2 == 0:
        d //= 2
        twos += 1
    while d % 5 == 0:
        d //= 5
        fives += 1
    if d != 1:
        return f"{f.numerator}/{f.denominator}"
    digits = max(twos, fives)
    scaled = f * 10**digits
    sign = "-" if scaled < 0 else ""
    text = str(abs(scaled.numerator)).rjust(digits + 1, "0")
    return f"{sign}{text[:-digits]}.{text[-digits:]}"


def _parse_fraction_text(text: str) -> Fraction:
    return Fraction(text)  # accepts both "0.1" and "1/3"


def js_number_string(value: Any) -> str:
    """``String(x)`` as JavaScript writes it: ``1.0`` -> ``'1'``, ``1e21`` -> ``'1e+21'``,
    ``1.000000000000001e20`` -> ``'100000000000000100000'`` (the shortest digits that read back
    as the same float, not its exact binary value), ``[1, [b"ab"], {}]`` -> ``'1,97,98,[object Object]'``.

    Result keys (``entries()``, ``keys()``) are the inputs as DCP's client prints them.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        if value == 0:
            return "0"
        if value.is_integer() and abs(value) < 2**53:  # exact as an int, and the common case: fast
            return str(int(value))
        r = repr(value)  # the shortest round-trip digits, as JavaScript's Number::toString picks them
        if value.is_integer() and abs(value) < 1e21:
            return format(Decimal(r).normalize(), "f")
        if "e" not in r:
            return r
        mant, exp = r.split("e")
        e = int(exp)
        if -7 < e < 21:  # JS writes these positionally
            return format(Decimal(r), "f")
        return f"{mant}e{'+' if e > 0 else '-'}{abs(e)}"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return ",".join("" if v is None else js_number_string(v) for v in value)
    if isinstance(value, (bytes, bytearray)):
        return ",".join(map(str, value))  # String(Uint8Array)
    if isinstance(value, dict):
        return "[object Object]"
    return str(value)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 32 else f"{text[:12]}...({len(text)} characters)"


def _check_floats(start: Fraction, step: Fraction, count: int, *given: Any) -> None:
    """``RangeError`` unless the range's values, as floats, are all finite and distinct."""
    last = start + (count - 1) * step
    largest = max(abs(start), abs(last))
    what = "range {start: %s, end: %s, step: %s}" % tuple(_shown(v) for v in given)
    try:
        top = float(largest)
    except OverflowError:
        top = math.inf
    if math.isinf(top):
        raise RangeError(f"{what}: its values go beyond the largest float (about 1.8e308); a range with a fractional "
                         "part gives float inputs, so use integers (exact at any size)")
    gap = math.ulp(top)
    if count > 1 and abs(step) <= gap:
        raise RangeError(
            f"{what}: near {js_number_string(top)} adjacent floats are {js_number_string(gap)} apart, not less than "
            f"the step, so some inputs would be the same float; a range with a fractional "
            "part gives float inputs. Use an integer range and scale in the work (e.g. {start: 0, end: n} and "
            "x = start + i * step there), or a larger step"
        )


@dataclass(frozen=True, init=False)
class RangeObject:
    """``{start, end, step, group}`` — see the module docstring. Accepts the dict form too:
    ``RangeObject.from_value({"start": 1, "end": 3})``.
    """

    start: Fraction
    end: Fraction
    step: Fraction
    group: int | None
    integral: bool  # datums are ints (else floats)
    count: int  # number of values (not slices)

    def __init__(self, start: Any, end: Any, step: Any = None, group: Any = None) -> None:
        s, s_int = exact_number(start, "range start")
        e, e_int = exact_number(end, "range end")
        if step is None:
            st, st_int = Fraction(1 if e >= s else -1), True
        else:
            st, st_int = exact_number(step, "range step")
            if st == 0:
                raise RangeError(f"range step must not be 0 (start={start!r}, end={end!r}); use a positive step such as 1")
            if (e - s) * st < 0:
                hint = -st
                raise RangeError(
                    f"range step {step!r} moves away from end: start={start!r}, end={end!r}; "
                    f"step must approach end, use step={_fraction_text(hint)} or swap start and end"
                )
        if group is not None:
            if isinstance(group, bool) or not isinstance(group, numbers.Integral) or group < 1:
                if isinstance(group, float) and group.is_integer() and group >= 1:
                    group = int(group)
                else:
                    raise RangeError(
                        f"range group must be a positive integer (the number of values per slice), got {group!r}; "
                        f"use e.g. group=2, or leave group out for one value per slice"
                    )
            group = int(group)
        count = int((e - s) / st) + 1 if st else 1  # (e-s)/st >= 0 here; int() floors it
        integral = s_int and e_int and st_int
        if not integral:
            _check_floats(s, st, count, start, end, step)
        object.__setattr__(self, "start", s)
        object.__setattr__(self, "end", e)
        object.__setattr__(self, "step", st)
        object.__setattr__(self, "group", group)
        object.__setattr__(self, "integral", integral)
        object.__setattr__(self, "count", count)

    # -- construction from user values -------------------------------------------------------------
    @classmethod
    def from_value(cls, value: Any) -> "RangeObject":
        """A ``RangeObject`` from itself, a dict ``{start, end[, step][, group]}`` or a non-empty ``range``."""
        if isinstance(value, RangeObject):
            return value
        if isinstance(value, range):
            if not len(value):
                raise RangeError(f"{value!r} is empty; a dimension needs at least one value")
            return cls(value[0], value[-1], value.step)
        if isinstance(value, Mapping):
            unknown = set(value) - {"start", "end", "step", "group"}
            if unknown:
                raise RangeError(
                    f"range object has unknown keys {sorted(unknown)}; a range object has start, end, step and group"
                )
            missing = [k for k in ("start", "end") if k not in value]
            if missing:
                raise RangeError(f"range object needs {' and '.join(missing)}: write {{'start': 0, 'end': 10}}")
            return cls(value["start"], value["end"], value.get("step"), value.get("group"))
        raise RangeError(f"expected a range object such as {{'start': 0, 'end': 10}}, got {type(value).__name__}")

    # -- the set ---------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Number of slices (values, or groups of values), exact at any size (``len()`` stops at 2**63-1)."""
        if self.group is None:
            return self.count
        return -(-self.count // self.group)

    def __len__(self) -> int:
        return checked_len(self.size, "range")

    def value(self, k: int) -> int | float:
        """The k-th value of the range (not slice), exact then converted once."""
        if not 0 <= k < self.count:
            raise IndexError(f"range value {k} out of range 0..{self.count - 1}")
        v = self.start + k * self.step
        return int(v) if self.integral else float(v)

    def nth(self, i: int) -> Any:
        """Datum of slice ``i``: a value, or a list of up to ``group`` values."""
        n = self.size
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"slice {i} out of range: this range has {n} slices")
        if self.group is None:
            return self.value(i)
        first = i * self.group
        return [self.value(k) for k in range(first, min(first + self.group, self.count))]

    def __iter__(self):
        return (self.nth(i) for i in range(self.size))

    def description(self) -> dict:
        return {
            "kind": "range",
            "start": _fraction_text(self.start),
            "end": _fraction_text(self.end),
            "step": _fraction_text(self.step),
            "group": self.group,
            "integral": self.integral,
        }

    @classmethod
    def from_description(cls, desc: Mapping[str, Any]) -> "RangeObject":
        r = cls(_parse_fraction_text(desc["start"]), _parse_fraction_text(desc["end"]),
                _parse_fraction_text(desc["step"]), desc.get("group"))
        object.__setattr__(r, "integral", bool(desc.get("integral", r.integral)))
        return r

    def __repr__(self) -> str:
        parts = [f"start={_fraction_text(self.start)}", f"end={_fraction_text(self.end)}",
                 f"step={_fraction_text(self.step)}"]
        if self.group:
            parts.append(f"group={self.group}")
        return f"RangeObject({', '.join(parts)})"


class MultiRange:
    """Cartesian product of ranges (``compute.for_([r1, r2, ...], work)``), lazily.

    Slice ``i``'s datum is ``[v1, v2, ...]`` (row-major: the last dimension varies fastest); the
    work receives the values as separate arguments. ``shape`` gives the per-dimension lengths the
    result handle nests by::

        >>> m = MultiRange([{"start": 1, "end": 2}, {"start": 3, "end": 5}])
        >>> len(m), m.shape, m.nth(4)
        (6, (2, 3), [2, 4])
    """

    def __init__(self, ranges: Sequence[Any]) -> None:
        if not ranges:
            raise RangeError("a multi-dimensional range needs at least one range object")
        dims = []
        for d, r in enumerate(ranges):
            try:
                dims.append(RangeObject.from_value(r))
            except RangeError as e:
                raise RangeError(f"dimension {d}: {e}") from None
        self.ranges: tuple[RangeObject, ...] = tuple(dims)
        self.shape: tuple[int, ...] = tuple(r.size for r in self.ranges)

    @property
    def size(self) -> int:
        """Number of slices, exact at any size (``len()`` stops at 2**63-1)."""
        return math.prod(self.shape)

    def __len__(self) -> int:
        return checked_len(self.size, "multi-dimensional range")

    def indices(self, i: int) -> tuple[int, ...]:
        """Per-dimension indices of slice ``i``."""
        n = self.size
        if not 0 <= i < n:
            raise IndexError(f"slice {i} out of range: this range has {n} slices")
        out = []
        for size in reversed(self.shape):
            i, r = divmod(i, size)
            out.append(r)
        return tuple(reversed(out))

    def nth(self, i: int) -> list:
        return [r.nth(k) for r, k in zip(self.ranges, self.indices(i))]

    def __iter__(self):
        return (self.nth(i) for i in range(self.size))

    def description(self) -> dict:
        return {"kind": "ranges", "ranges": [r.description() for r in self.ranges]}

    @classmethod
    def from_description(cls, desc: Mapping[str, Any]) -> "MultiRange":
        return cls([RangeObject.from_description(r) for r in desc["ranges"]])

    def __repr__(self) -> str:
        return f"MultiRange({list(self.ranges)!r})"
