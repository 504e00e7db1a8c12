"""Input sets: what a job maps its work over, as the scheduler sees them.

Every input set has an exact ``len()`` (``TypeError`` for streams of unknown length), ``nth(i)``
(the datum of slice ``i``, computed without materialising the set) and a ``description()`` that
is plain JSON/msgpack data. ``input_set_from_description`` is its inverse: the scheduler stores
descriptions and slices ranges and distributions on demand::

    >>> from dcp_worktimes.compute.inputs import input_set, input_set_from_description
    >>> s = input_set({"start": 0, "end": 10**12})
    >>> d = s.description(); d["kind"]
    'range'
    >>> input_set_from_description(d).nth(10**12)
    1000000000000

Descriptions by kind:

* ``{"kind": "range", "start", "end", "step", "group", "integral"}`` — numbers as exact decimal
  strings (``"0.1"``; big integers as digits); ``integral`` says the datums are ints.
* ``{"kind": "ranges", "ranges": [<range>, ...]}`` — multi-dimensional; datum ``i`` is the list of
  per-dimension values, last dimension fastest. The job's ``options["spread_datum"]`` is ``True``
  so the worktime calls ``work(*datum, *arguments)`` (for ``python`` the Compute API instead
  appends a trampoline ``__dcp_spread__`` to the source and names it in ``options["function"]``).
* ``{"kind": "distribution", "name", "n", "params", "seed"}`` — see ``stats.py``.
* ``{"kind": "stream"}`` — iterables, generators and lists: the deployer pushes packed datums
  with ``Scheduler.add_slices`` in batches and then ``close_input(total)``. ``nth`` is not
  available from the description alone (``StreamInput`` built from a description raises a
  ``TypeError`` saying so).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

from .ranges import MultiRange, RangeError, RangeObject
from .stats import DistributionSet

__all__ = [
    "InputSet",
    "StreamInput",
    "input_set",
    "input_set_from_description",
    "RangeObject",
    "MultiRange",
    "DistributionSet",
    "RangeError",
]


@runtime_checkable
class InputSet(Protocol):
    def __len__(self) -> int: ...

    def nth(self, i: int) -> Any: ...

    def description(self) -> dict: ...


class StreamInput:
    """Datums from any iterable, consumed lazily in batches (``compute.for_(generator, work)``).

    ``len()`` is known for sized iterables (lists, tuples, ``range``) and after the stream has
    been drained; otherwise it raises ``TypeError``. The datums that were pushed are remembered
    (``seen``) so the result handle can pair inputs with results (``entries()``), as DCP's client
    does; pass ``remember=False`` for streams too large to keep.
    """

    def __init__(self, iterable: Iterable[Any] | None = None, remember: bool = True) -> None:
        self._source = iterable
        self._iter: Iterator[Any] | None = None
        self._sized = None
        if iterable is not None:
            try:
                self._sized = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                self._sized = None
        self.remember = remember
        self.seen: list[Any] | None = [] if remember else None
        self.consumed = 0
        self.exhausted = iterable is None

    def __len__(self) -> int:
        if self._sized is not None:
            return self._sized
        if self.exhausted and self._source is not None:
            return self.consumed
        raise TypeError("the length of a stream input is not known until it has been consumed")

    def nth(self, i: int) -> Any:
        if self.seen is not None and 0 <= i < len(self.seen):
            return self.seen[i]
        if self._source is not None and hasattr(self._source, "__getitem__") and self._sized is not None:
            return self._source[i]  # type: ignore[index]
        raise TypeError(
            "slice datums of a stream input live in the scheduler's store, not in its description; "
            "read them from the scheduler (the deployer pushed them with add_slices)"
        )

    def batches(self, size: int = 1000) -> Iterator[list[tuple[int, Any]]]:
        """Yield ``[(slice_number, datum), ...]`` batches, pulling from the source lazily."""
        if self._source is None:
            return
        if self._iter is None:
            self._iter = iter(self._source)
        while True:
            chunk = list(itertools.islice(self._iter, size))
            if not chunk:
                self.exhausted = True
                return
            start = self.consumed
            self.consumed += len(chunk)
            if self.seen is not None:
                self.seen.extend(chunk)
            yield list(enumerate(chunk, start))

    def description(self) -> dict:
        return {"kind": "stream"}

    def __repr__(self) -> str:
        return f"StreamInput({self._source!r})"


def input_set(value: Any) -> InputSet:
    """The input set for one ``compute.for_`` input argument.

    A ``RangeObject`` or range dict → ``RangeObject``; a list/tuple whose items are *all* range
    objects → ``MultiRange``; a distribution → itself; any other iterable (list, tuple, set of
    values, generator, ``range``) → ``StreamInput``. Strings, bytes and mappings that are not
    ranges are refused: they are almost always a mistake (a string would be sliced per character).
    """
    if isinstance(value, (RangeObject, MultiRange, DistributionSet, StreamInput)):
        return value
    if isinstance(value, Mapping):
        if "start" in value or "end" in value:
            return RangeObject.from_value(value)
        raise RangeError(
            "a dict input must be a range object {'start': ..., 'end': ..., 'step': ..., 'group': ...}; "
            "to map over a dict's items pass list(d.items())"
        )
    if isinstance(value, (str, bytes, bytearray)):
        raise RangeError(
            f"the input set is a {type(value).__name__}; pass a list of datums (e.g. [{value!r}]) or a range object. "
            "Work goes last: compute.for_(inputs, work)"
        )
    if isinstance(value, range) and len(value):
        # A Python range is a range object in disguise: keep it lazy (range(10**12) costs nothing).
        return RangeObject(value[0], value[-1], value.step)
    if isinstance(value, (list, tuple)) and value and all(
        isinstance(v, RangeObject) or (isinstance(v, Mapping) and ("start" in v or "end" in v)) for v in value
    ):
        return MultiRange(value)
    if isinstance(value, Iterable):
        return StreamInput(value)
    raise RangeError(
        f"cannot map over a {type(value).__name__}; pass a range object {{'start': 0, 'end': 9}}, "
        "start and end numbers, a list of range objects, an iterable or a stats.set distribution"
    )


def input_set_from_description(desc: Mapping[str, Any]) -> InputSet:
    """Rebuild an input set from ``description()`` (the scheduler slices on demand with it)."""
    kind = desc.get("kind") if isinstance(desc, Mapping) else None
    if kind == "range":
        return RangeObject.from_description(desc)
    if kind == "ranges":
        return MultiRange.from_description(desc)
    if kind == "distribution":
        return DistributionSet.from_description(desc)
    if kind == "stream":
        return StreamInput(None)
    raise ValueError(f"unknown input-set description {desc!r}; kinds: range, ranges, distribution, stream")
