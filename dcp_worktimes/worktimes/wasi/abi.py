"""The slice ABI of the ``wasi`` worktime: content types, argv, console lines, ``dcp`` imports.

Documented for work authors in ``sandbox/wasi.md``. Summary::

    datum  --(content type)-->  stdin      argv = ["work.wasm", *arguments]
    stdout --(content type)-->  result     stderr lines --> console events (level "log")
    exit 0 = success; exit N != 0 --> SliceError carrying N and the stderr tail

Content types (``job.options["content_type"]``): ``json`` (default), ``msgpack``, ``raw``.

    >>> ct = content_type("application/json")
    >>> ct.decode(ct.encode([1, 2, 3]))
    [1, 2, 3]
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable

from ...errors import ErrorCode, SliceError, WorkError
from ...values import MAX_INT_DIGITS, UnserializableValue, as_unserializable, pack, unpack
from ...worktime import CONSOLE_LEVELS

#: Accepted spellings of each content type.
CONTENT_TYPES = {
    "json": ("json", "application/json"),
    "msgpack": ("msgpack", "application/msgpack", "application/x-msgpack"),
    "raw": ("raw", "bytes", "application/octet-stream"),
}

#: ``dcp.console(level, ptr, len)`` level numbers: indexes into ``CONSOLE_LEVELS``.


@dataclass(frozen=True)
class ContentType:
    """How a datum becomes stdin and stdout becomes a result."""

    name: str

    def encode(self, datum: Any) -> bytes:
        """The stdin bytes for ``datum``; ``SliceError(EUNSERIALIZABLE)`` if it cannot be encoded."""
        try:
            if self.name == "json":
                return json.dumps(datum, allow_nan=True, separators=(",", ":"), default=_json_default).encode()
            if self.name == "msgpack":
                return pack(datum)
        except (TypeError, ValueError, UnserializableValue) as e:
            raise SliceError(f"the datum cannot be encoded as {self.name} for stdin: {why(e)}",
                             code=ErrorCode.EUNSERIALIZABLE) from None
        if isinstance(datum, (bytes, bytearray, memoryview)):
            return bytes(datum)
        if isinstance(datum, str):
            try:
                return datum.encode()
            except UnicodeEncodeError as e:  # a lone surrogate: no UTF-8 spelling exists
                raise SliceError(f"content_type raw sends a str datum as UTF-8, and this one has a lone surrogate "
                                 f"({datum[e.start]!r} at index {e.start}); send bytes, or use content_type json "
                                 "(which escapes it)", code=ErrorCode.EUNSERIALIZABLE) from None
        raise SliceError(f"content_type raw takes bytes or str data, got {type(datum).__name__}; "
                         "use content_type json or msgpack for structured data", code=ErrorCode.EUNSERIALIZABLE)

    def decode(self, output: bytes) -> Any:
        """The result from stdout; ``SliceError(EUNSERIALIZABLE)`` when stdout is not that format."""
        if self.name == "raw":
            return bytes(output)
        if not output.strip():
            return None  # a module that prints nothing returns null
        try:
            if self.name == "json":
                return json.loads(output)
            return unpack(output)
        except Exception as e:  # json.JSONDecodeError, UnicodeDecodeError, msgpack's ExtraData/FormatError, ...
            head = output[:80].decode("utf-8", "replace")
            hint = "write exactly one JSON value to stdout" if self.name == "json" else "write one msgpack value to stdout"
            raise SliceError(f"stdout is not valid {self.name} ({why(e)}); {hint}. stdout began with {head!r}",
                             code=ErrorCode.EUNSERIALIZABLE) from None


def why(e: BaseException) -> str:
    """``e``'s text, or what the deployer can do where Python's words would send them to the host's
    ``sys.set_int_max_str_digits()`` or name its recursion limit."""
    if isinstance(e, ValueError) and "int_max_str_digits" in str(e):
        return (f"an integer has more than {MAX_INT_DIGITS} decimal digits, the most JSON text may carry here; use "
                "content_type msgpack, which carries integers of any size")
    if isinstance(e, RecursionError):
        return str(as_unserializable(e))
    return str(e)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        raise TypeError("bytes in a datum need content_type msgpack or raw")
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def content_type(value: Any) -> ContentType:
    """Parse ``job.options["content_type"]`` (``None`` = json); ``WorkError`` naming the choices."""
    if value is None:
        return ContentType("json")
    wanted = str(value).strip().lower()
    for name, spellings in CONTENT_TYPES.items():
        if wanted in spellings:
            return ContentType(name)
    choices = ", ".join(s for spellings in CONTENT_TYPES.values() for s in spellings)
    raise WorkError(f"unknown content_type {value!r} for the wasi worktime; choose one of: {choices}")


def argv(arguments: list[Any]) -> list[str]:
    """``argv`` for the job arguments: strings as-is, anything else as compact JSON."""
    out = ["work.wasm"]
    for a in arguments:
        if isinstance(a, str):
            out.append(a)
        else:
            try:
                out.append(json.dumps(a, separators=(",", ":")))
            except (TypeError, ValueError) as e:
                raise WorkError(f"job argument {a!r} cannot be passed as argv (strings or JSON values only): {e}") from None
    for a in out:
        if "\0" in a:
            raise WorkError("job arguments cannot contain NUL characters (argv strings are C strings)")
    return out


class LineSplitter:
    """Turns a byte stream (stderr) into lines for ``emit``; ``flush`` sends the last partial line."""

    def __init__(self, emit: Callable[[str], None], max_line: int = 64 * 1024) -> None:
        self._emit = emit
        self._buf = bytearray()
        self._max = max_line

    def write(self, chunk: bytes) -> None:
        self._buf += chunk
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > self._max:  # a never-ending line still reaches the console
                    self._send(bytes(self._buf[: self._max]))
                    del self._buf[: self._max]
                return
            self._send(bytes(self._buf[:nl]))
            del self._buf[: nl + 1]

    def flush(self) -> None:
        if self._buf:
            self._send(bytes(self._buf))
            self._buf.clear()

    def _send(self, line: bytes) -> None:
        self._emit(line.rstrip(b"\r").decode("utf-8", "replace"))


def progress_value(value: float) -> float | None:
    """``dcp.progress(f64)``: negative or NaN means indeterminate (``None``)."""
    if math.isnan(value) or value < 0:
        return None
    return value
