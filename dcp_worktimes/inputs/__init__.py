"""Input sets: what a job maps its work over. Below both the scheduler (which slices described
inputs on demand) and the Compute API (which builds them from ``compute.for_`` arguments).

Every input set has an exact ``size`` (an ``int`` of any size; ``len()`` works up to 2**63-1 and
raises ``OverflowError`` pointing to ``size`` above; both raise ``TypeError`` for streams of
unknown length: ``input_size`` turns that into ``None``), ``nth(i)``
(the datum of slice ``i``, computed without materialising the set) and a ``description()`` that
is plain JSON/msgpack data. ``input_set_from_description`` is its inverse: the scheduler stores
descriptions and slices ranges and distributions on demand::

    >>> from dcp_worktimes.inputs import input_set, input_set_from_description
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
  so the worktime calls ``work(*datum, *arguments)`` (map-basic and python both honour it).
* ``{"kind": "distribution", "name", "n", "params", "seed"}`` — see ``distributions.py``.
* ``{"kind": "stream"}`` — iterables, generators and lists: the deployer pushes packed datums
  with ``Scheduler.add_slices`` in batches and then ``close_input(total)``. ``nth`` is not
  available from the description alone (``StreamInput`` built from a description raises a
  ``TypeError`` saying so).
"""

from __future__ import annotations

import itertools
import numbers
import queue
import reprlib
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

from ..values import KEY_RULE, KEY_TYPES, MAX_DEPTH, UnserializableValue, allow_depth
from .ranges import MultiRange, RangeError, RangeObject
from .distributions import DistributionSet

__all__ = [
    "InputSet",
    "StreamInput",
    "input_size",
    "plain",
    "input_set",
    "input_set_from_description",
    "RangeObject",
    "MultiRange",
    "DistributionSet",
    "RangeError",
]


@runtime_checkable
class InputSet(Protocol):
    @property
    def size(self) -> int: ...

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
        self._pump: _Pump | None = None

    def close(self) -> None:
        """Nothing more will be read (the job ended): a thread reading the source stops at its next datum."""
        if self._pump is not None:
            self._pump.closed.set()

    @property
    def size(self) -> int:
        # Once drained, what was read is the truth: a list the caller changed between for_() and
        # exec(), or a __len__ that lies, would otherwise lose results or invent missing ones.
        if self.exhausted and self._source is not None:
            return self.consumed
        if self._sized is not None:
            return self._sized
        raise TypeError("the length of a stream input is not known until it has been consumed")

    def __len__(self) -> int:
        return self.size

    def nth(self, i: int) -> Any:
        if self.seen is not None and 0 <= i < len(self.seen):
            return self.seen[i]
        if self._source is not None and hasattr(self._source, "__getitem__") and self._sized is not None:
            return plain(self._source[i])  # type: ignore[index]
        raise TypeError(
            "slice datums of a stream input live in the scheduler's store, not in its description; "
            "read them from the scheduler (the deployer pushed them with add_slices)"
        )

    def batches(self, size: int = 1000, seconds: float | None = None) -> Iterator[list[tuple[int, Any]]]:
        """Yield ``[(slice_number, datum), ...]`` batches, pulling from the source lazily: up to
        ``size`` datums, and (``seconds``) none that waited longer than that since it came: the
        source is then read on a thread of its own (``_Pump``), so a datum of a slow or bursty
        generator goes out at most ``seconds`` after it came, whenever the next one comes."""
        if self._source is None:
            return
        if self._iter is None:
            self._iter = iter(self._source)
        if seconds is not None and self._pump is None:
            self._pump = _Pump(self._iter, size)
        while True:
            raw = list(itertools.islice(self._iter, size)) if self._pump is None else self._pump.take(size, seconds or 0.0)
            try:
                chunk = [plain(v) for v in raw]
            except (TypeError, ValueError) as e:  # UnserializableValue (a bad dict key), too deep: say which input
                at = next((i for i, v in enumerate(raw) if _fails_plain(v)), 0)
                kind = UnserializableValue if isinstance(e, TypeError) else ValueError
                raise kind(f"input {self.consumed + at} ({reprlib.repr(raw[at])}): {e}") from None
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


class _Pump:
    """A stream's source read on a thread of its own into a bounded queue: the feeder takes what
    came within ``seconds`` of a batch's first datum without waiting for the next one (which a
    generator may yield a minute later, or only once an earlier result is back)."""

    _END = object()

    def __init__(self, items: Iterator[Any], size: int) -> None:
        self.queue: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=max(1, size))
        self.closed = threading.Event()
        self.error: BaseException | None = None  # the source raised: after the datums it gave before
        self.done = False
        threading.Thread(target=self._run, args=(items,), name="dcp-stream-reader", daemon=True).start()

    def _run(self, items: Iterator[Any]) -> None:
        try:
            for item in items:
                if not self._put((True, item)):
                    return
        except BaseException as e:  # noqa: BLE001 - the feeder raises it, in order
            self._put((False, e))
            return
        self._put((False, self._END))

    def _put(self, entry: tuple[bool, Any]) -> bool:
        while not self.closed.is_set():
            try:
                self.queue.put(entry, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def take(self, size: int, seconds: float) -> list[Any]:
        """Up to ``size`` datums: waits for the first as long as it takes, then no more than
        ``seconds`` for the rest; ``[]`` at the end; the source's error once its datums are out."""
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        out: list[Any] = []
        deadline = None
        while not self.done and len(out) < size:
            try:
                ok, item = self.queue.get(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if not ok:
                self.done = True
                if item is not self._END:
                    if not out:
                        raise item
                    self.error = item
                break
            out.append(item)
            if deadline is None:
                deadline = time.monotonic() + seconds
        return out


_RANGE_KEYS = frozenset({"start", "end", "step", "group"})


def input_size(inputs: Any) -> int | None:
    """Exact number of slices of an input set (any size), or ``None`` for a stream of unknown length."""
    try:
        size = getattr(inputs, "size", None)
        return size if isinstance(size, int) else len(inputs)
    except TypeError:
        return None


def _fails_plain(value: Any) -> bool:
    try:
        plain(value)
    except (TypeError, ValueError):
        return True
    return False


def plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays (and other number types) turned into the lossless set.

    ``np.int64(3)`` -> ``3``, ``np.float64(0.5)`` -> ``0.5``, ``np.arange(3)`` -> ``[0, 1, 2]``,
    recursively inside lists, tuples and dicts; anything else is returned as it is (``pack`` then
    says what cannot be sent). numpy is only looked at when the program already imported it::

        >>> plain([1, (2.5, {"a": True})])
        [1, (2.5, {'a': True})]
    """
    try:
        return _plain(value)
    except RecursionError:  # deep, or this program's stack was deep already: once more with room
        allow_depth()
        try:
            return _plain(value)
        except RecursionError:
            raise ValueError(f"a value is nested too deeply to send (more than {MAX_DEPTH} levels of lists/dicts, "
                             "or a list that contains itself); flatten it") from None


def _plain(value: Any) -> Any:
    t = type(value)
    if t in (int, float, str, bytes, bool) or value is None:
        return value
    # Subclasses too (defaultdict, OrderedDict, Counter, a namedtuple): walked as their base type,
    # so that their keys are checked as well.
    if isinstance(value, dict):
        return {_plain_key(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    np = sys.modules.get("numpy")  # no numpy objects can exist unless numpy was imported
    if np is not None:
        if isinstance(value, np.ndarray):
            return _plain(value.tolist())
        if isinstance(value, np.generic):
            return _plain(value.item())
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float):  # a float subclass
        return float(value)
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Rational):
        return float(value)  # Fractions stay: float() would round them, pack() refuses them instead
    return value


def _plain_key(key: Any) -> Any:
    key = _plain(key)
    if type(key) in KEY_TYPES:
        return key
    if isinstance(key, str):  # a StrEnum: its text, as it travels
        return str.__str__(key)
    if isinstance(key, bytes):
        return bytes(key)
    raise UnserializableValue(f"a dict has the key {reprlib.repr(key)}, a {type(key).__name__}; {KEY_RULE}")


def _is_range_spec(v: Any) -> bool:
    return isinstance(v, (RangeObject, range)) or (isinstance(v, Mapping) and bool(v) and set(v) <= _RANGE_KEYS)


def input_set(value: Any) -> InputSet:
    """The input set for one ``compute.for_`` input argument.

    A ``RangeObject`` or range dict → ``RangeObject``; a list/tuple whose items are *all* range
    objects (dicts with only the keys start, end, step, group, or Python ``range``s) → ``MultiRange`` (a list of other
    dicts is a list of data, even when they have a ``start`` key); a distribution → itself; any other iterable (list, tuple, set of
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
    if isinstance(value, (list, tuple)) and value and all(_is_range_spec(v) for v in value):
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
