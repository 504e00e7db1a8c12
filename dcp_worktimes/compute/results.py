"""Result handles: a job's results in slice order, paired with its inputs.

``ResultHandle`` *is* a list (``results == [10, 20, 30]``, indexing, ``len``, ``sum``), plus the
methods DCP's client adds, which pair each result with its input as ``String(input)``::

    >>> r = ResultHandle([10, 20, 30], inputs=[1, 2, 3])
    >>> r.entries()
    [['1', 10], ['2', 20], ['3', 30]]
    >>> r.fromEntries(), r.keys(), r.values(), r.key(2)
    ({'1': 10, '2': 20, '3': 30}, ['1', '2', '3'], [10, 20, 30], 20)

``key(k)`` with a ``k`` that is not an input raises ``ResultKeyError`` (code ``ERANGE``). When
several slices have the same input, ``key(k)`` and ``fromEntries()`` agree: the last such slice
wins, as in JavaScript's ``Object.fromEntries`` (``entries()`` lists every slice). For a
multi-dimensional job the handle nests one level per dimension: ``results[i][j]`` is the result
for the i-th value of the first range and the j-th of the second, and each level has its own keys.

A slice that failed holds a ``SliceFailed`` (an exception, not raised) in its place when the job
was run with ``errors="return"``; ``results.failures`` lists them either way.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Sequence

from ..errors import DcpError, ErrorCode
from ..inputs.ranges import js_number_string

__all__ = ["ResultHandle", "ResultKeyError", "SliceFailed", "JobFailed", "key_string"]


def key_string(value: Any) -> str:
    """An input as a result key, as JavaScript's ``String(value)`` writes it."""
    return js_number_string(value)


class ResultKeyError(DcpError, KeyError):
    """``results.key(k)`` with a ``k`` no slice had as input."""

    code = ErrorCode.ERANGE

    def __str__(self) -> str:  # KeyError would repr() the message
        return DcpError.__str__(self)


class SliceFailed(DcpError):
    """A failed slice, as it sits in a result handle (``errors="return"``) and in ``failures``."""

    def __init__(self, slice_number: int, code: str, message: str, stack: str | None = None, name: str | None = None) -> None:
        super().__init__(message, code=code)
        self.slice_number = slice_number
        self.stack = stack
        self.name = name

    def __repr__(self) -> str:
        return f"SliceFailed(slice {self.slice_number}, {self.code}: {self.message})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, SliceFailed) and (self.slice_number, str(self.code), self.message)
                == (other.slice_number, str(other.code), other.message))

    __hash__ = None  # type: ignore[assignment]


class ResultHandle(list):
    """Results in slice order with DCP's ``entries/fromEntries/keys/values/key`` (module docstring).

    ``inputs`` is anything with ``nth(i)`` or indexing giving slice ``i``'s input; it is read
    lazily, only when a key method is called.
    """

    def __init__(self, values: Iterable[Any] = (), inputs: Any = None, failures: Sequence[SliceFailed] = (),
                 job_id: str | None = None) -> None:
        super().__init__(values)
        self._inputs = inputs
        self._index: dict[str, int] | None = None
        self.failures: list[SliceFailed] = list(failures)
        self.job_id = job_id

    # -- inputs ----------------------------------------------------------------------------------
    def _input(self, i: int) -> Any:
        src = self._inputs
        if src is None:
            raise DcpError(
                "the inputs of this job are not known here (a stream job resumed in another process); "
                "values() and indexing still work",
                code=ErrorCode.ERANGE,
            )
        if callable(src):
            return src(i)
        if hasattr(src, "nth"):
            return src.nth(i)
        return src[i]

    def input(self, i: int) -> Any:
        """The input of slice ``i``."""
        return self._input(i)

    # -- DCP's methods ---------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return [key_string(self._input(i)) for i in range(len(self))]

    def values(self) -> list[Any]:
        return list(self)

    def entries(self) -> list[list[Any]]:
        return [[key_string(self._input(i)), v] for i, v in enumerate(self)]

    def fromEntries(self) -> dict[str, Any]:  # noqa: N802 - DCP's name
        return {key_string(self._input(i)): v for i, v in enumerate(self)}

    from_entries = fromEntries

    def key(self, k: Any) -> Any:
        """The result whose input is ``k`` (compared as ``String(k)``, so ``key(2)`` and ``key('2')``
        agree); with duplicate inputs, the last slice's, as ``fromEntries()[String(k)]``."""
        if self._index is None:
            self._index = {key_string(self._input(i)): i for i in range(len(self))}
        ks = key_string(k)
        if ks not in self._index:
            sample = ", ".join(list(self._index)[:5])
            raise ResultKeyError(
                f"no slice has the input {k!r}; keys are the inputs as strings, e.g. {sample}"
                f"{' ...' if len(self._index) > 5 else ''}"
            )
        return self[self._index[ks]]

    def __repr__(self) -> str:
        return f"ResultHandle({list.__repr__(self)})"


def nest(values: list[Any], shape: Sequence[int], dims: Sequence[Any], failures: Sequence[SliceFailed] = (),
         job_id: str | None = None) -> ResultHandle:
    """Fold flat row-major ``values`` into nested handles, one level per dimension of ``shape``.

    ``dims[d]`` gives the inputs of dimension ``d`` (a ``RangeObject``), so each level's keys are
    that dimension's values.
    """
    if len(shape) == 1:
        return ResultHandle(values, dims[0], failures, job_id)
    stride = 1
    for s in shape[1:]:
        stride *= s
    rows = [nest(values[i * stride:(i + 1) * stride], shape[1:], dims[1:]) for i in range(shape[0])]
    return ResultHandle(rows, dims[0], failures, job_id)


def _spans(numbers: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``'0-2, 5'``."""
    out, start, prev = [], None, None
    for n in sorted(numbers):
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            out.append(f"{start}-{prev}" if prev != start else str(start))
            start = prev = n
    if start is not None:
        out.append(f"{start}-{prev}" if prev != start else str(start))
    return ", ".join(out)


def _leaf_count(results: Sequence[Any]) -> int:
    """Slices behind a handle: a multi-dimensional handle nests one level per dimension."""
    return sum(_leaf_count(v) if isinstance(v, ResultHandle) else 1 for v in results)


class JobFailed(DcpError):
    """``exec()`` finished with failed slices. ``results`` holds what did complete (failed slots
    hold ``SliceFailed``); ``failures`` lists each failed slice with its code and message.

    The message groups slices that failed the same way, so a work error hit by every slice reads
    as one line, not a million.
    """

    code = "EJOBFAILED"

    def __init__(self, results: ResultHandle, failures: Sequence[SliceFailed], job_id: str | None = None,
                 total: int | None = None) -> None:
        self.results = results
        self.failures = list(failures)
        self.job_id = job_id
        groups: dict[tuple[str, str], list[int]] = {}
        for f in self.failures:
            groups.setdefault((str(f.code), f.message), []).append(f.slice_number)
        lines = []
        for (code, message), numbers in list(groups.items())[:20]:
            which = f"slice {numbers[0]}" if len(numbers) == 1 else f"slices {_spans(numbers)} ({len(numbers)})"
            lines.append(f"  {which}: {code}: {message}")
        if len(groups) > 20:
            lines.append(f"  ... and {len(groups) - 20} more kinds of failure (see .failures)")
        total = total if total is not None else _leaf_count(results)
        super().__init__(
            f"{len(self.failures)} of {total} slices failed in job {job_id}:\n" + "\n".join(lines)
            + "\nThe completed results are in this error's .results; run exec(errors='return') to get failures "
            "in place instead of an exception"
        )


#: Results from which ``collect`` first gives the C heap's free memory back (a few ms).
_TRIM_FROM = 10_000


def _release_free_heap() -> None:
    """Give glibc's free heap memory back to the system. What the job's frames and rows freed sits
    in malloc's heap, which the results (Python's own arenas, mapped apart) never reuse: without
    this it stays resident under them (~1.5 MB at the peak of 1M results). A no-op elsewhere."""
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


#: What a slice of a finished job whose result the store no longer has gets in its place.
LOST_RESULT = ("ESTORELOST", "the job store no longer has this slice's result (its results were deleted or evicted, "
               "or the store lost recent writes); deploy the job again to compute it")


def collect(batches: Iterable[Any], total: int | None, inputs: Any, job_id: str | None,
            unfinished: str | None = None, code: str = "ECANCELLED") -> ResultHandle:
    """The result handle of a job from its stored result batches (``Scheduler.result_batches``):
    results in slice order, each failed slice's ``SliceFailed`` in its place and in ``failures``.

    ``unfinished``: the job ended before every slice had a result (cancelled); each slice with
    none gets a ``SliceFailed`` (``code``, this message) in its place and in ``failures``,
    so that a slice that never ran is not read as one that returned ``None``. Without it,
    ``handle.counted`` says how many slices the batches had a result for: fewer than ``total``
    means the store lost some (collect again with ``LOST_RESULT``).

    Batches are decoded one at a time into the handle's list, so a job's results are never held
    twice (packed and decoded) in full. ``total=None`` (a stream stopped before its length was
    known): as many slots as the highest slice number that has a result.
    """
    from ..inputs import MultiRange
    from ..values import UnserializableValue, unpack, unpack_all

    if (total or 0) >= _TRIM_FROM:
        _release_free_heap()
    # The handle is filled in place: building a list and then the handle from it would hold the
    # job's result pointers twice at the peak (8 MB per million slices).
    values = ResultHandle(inputs=inputs, job_id=job_id)
    values.extend(itertools.repeat(None, total or 0))
    failures: list[SliceFailed] = []
    # Which slots got a result (only when some may have none: a bytearray, 1 MB per million).
    filled = bytearray(len(values)) if unfinished is not None else None
    counted = 0
    for batch in batches:
        numbers = batch.numbers
        counted += len(numbers)
        if filled is not None and numbers:
            if total is None and max(numbers) >= len(filled):  # a stream: the handle grows with its results
                filled.extend(bytes(max(numbers) + 1 - len(filled)))
            for n in numbers:
                if n < len(filled):
                    filled[n] = 1
        if all(batch.oks) and numbers and numbers[-1] - numbers[0] == len(numbers) - 1 and \
                0 <= numbers[0] and numbers[-1] < len(values) and numbers == list(range(numbers[0], numbers[-1] + 1)):
            # A contiguous run of successes (the usual batch): one C-level decode for all of it.
            try:
                values[numbers[0]:numbers[-1] + 1] = unpack_all(batch.values)
                continue
            except UnserializableValue:  # one of them cannot be read back: one by one, it fails alone
                pass
        for n, ok, value, err in zip(numbers, batch.oks, batch.values, batch.errors):
            if n >= len(values):
                if total is not None:
                    continue
                values.extend([None] * (n + 1 - len(values)))
            if ok:
                try:
                    values[n] = unpack(value) if value is not None else None
                    continue
                except UnserializableValue as e:  # stored, but deeper than a decoder takes: that slice's error
                    err = {"code": "EUNSERIALIZABLE", "message": f"the result cannot be read back: {e}"}
            err = err or {}
            f = SliceFailed(n, str(err.get("code", "EUNCAUGHT")), str(err.get("message", "")), err.get("stack"),
                            err.get("name"))
            values[n] = f
            failures.append(f)
    if filled is not None:
        if len(values) < len(filled):
            values.extend([None] * (len(filled) - len(values)))
        for n in (n for n, got in enumerate(filled) if not got):
            f = SliceFailed(n, code, unfinished)
            values[n] = f
            failures.append(f)
    failures.sort(key=lambda f: f.slice_number)
    if isinstance(inputs, MultiRange):
        handle = nest(values, inputs.shape, inputs.ranges, failures, job_id)
    else:
        values.failures = failures
        handle = values
    handle.counted = counted
    return handle
