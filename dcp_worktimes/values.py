"""Lossless values across the sandbox boundary (msgpack frames).

The value set every worktime accepts and returns: ``None``, ``bool``, ``int`` of any size,
``float`` (NaN and infinities included), ``str``, ``bytes``, ``list``, ``dict``. Tuples arrive as
lists. msgpack covers all of it except integers outside the 64-bit range, which travel as an
extension type holding their hexadecimal digits (hex, not decimal: conversion is linear and has
no digit limit, so a 10**5000 crosses as easily as 2**70)::

    >>> from dcp_worktimes.values import pack, unpack
    >>> unpack(pack([2**100, b"\\x00\\xff", {"a": None}]))
    [1267650600228229401496703205376, b'\\x00\\xff', {'a': None}]

Anything else raises ``UnserializableValue`` naming the type and where it sits in the value.

**Depth.** A value may nest lists and dicts at most ``MAX_DEPTH`` (1024) levels deep: msgpack's own
limit, the same when packing and unpacking, so it is checked where values are packed at no cost.
Everything that walks values (the python guest's codec, the CLI's JSON output, ``resume``)
handles that depth; a deeper value is ``UnserializableValue`` saying so::

    >>> deep = 0
    >>> for _ in range(MAX_DEPTH + 1): deep = [deep]
    >>> pack(deep)
    Traceback (most recent call last):
    ...
    dcp_worktimes.values.UnserializableValue: the value is nested more than 1024 levels deep (lists/dicts inside each other; a cycle?); flatten it
"""

from __future__ import annotations

from typing import Any

import msgpack

_EXT_BIGINT = 1  # payload: ASCII hexadecimal digits, optional leading '-'

VALUE_TYPES = "None, bool, int, float, str, bytes, list, dict"
#: The deepest nesting of lists/dicts a value may have (msgpack's limit, both ways).
MAX_DEPTH = 1024
_TOO_DEEP = (f"the value is nested more than {MAX_DEPTH} levels deep (lists/dicts inside each other; a cycle?); "
             "flatten it")


class UnserializableValue(TypeError):
    """A value outside the lossless set (the slice fails with ``EUNSERIALIZABLE``)."""


def _default(obj: Any) -> Any:
    if isinstance(obj, int):  # only reached when msgpack's 64-bit range overflowed
        return msgpack.ExtType(_EXT_BIGINT, format(int(obj), "x").encode("ascii"))
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    if isinstance(obj, (set, frozenset)):
        raise UnserializableValue(f"a {type(obj).__name__} cannot cross the sandbox boundary; convert it to a list")
    raise UnserializableValue(
        f"a value of type {type(obj).__module__}.{type(obj).__qualname__} cannot cross the sandbox boundary; "
        f"supported types: {VALUE_TYPES}"
    )


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_BIGINT:
        return int(data.decode("ascii"), 16)
    return msgpack.ExtType(code, data)


def pack(value: Any) -> bytes:
    """Encode one value; raises ``UnserializableValue`` for anything outside the value set."""
    try:
        return msgpack.packb(value, default=_default, use_bin_type=True, strict_types=False, datetime=False)
    except UnserializableValue:
        raise
    except (TypeError, ValueError, OverflowError) as e:  # e.g. recursion, non-str-able keys
        raise as_unserializable(e) from None


def as_unserializable(e: Exception) -> UnserializableValue:
    if "recursion limit" in str(e):  # msgpack's nesting limit (MAX_DEPTH)
        return UnserializableValue(_TOO_DEEP)
    return UnserializableValue(f"value cannot cross the sandbox boundary: {e}")


def unpack(data: bytes, unicode_errors: str = "strict") -> Any:
    """The value ``pack`` encoded (``unicode_errors="replace"`` for text that may be broken).

    ``UnserializableValue`` for bytes nested deeper than ``MAX_DEPTH`` (only a forged frame can be)."""
    try:
        return _unpackb(data, unicode_errors)
    except msgpack.StackError:
        raise UnserializableValue(_TOO_DEEP) from None


def unpack_frame(data: bytes, unicode_errors: str = "strict") -> list:
    """A frame: an array whose items may *each* nest ``MAX_DEPTH`` levels (``[op, value]``), so the
    frame's own level does not lower the limit for the value it carries."""
    unp = msgpack.Unpacker(ext_hook=_ext_hook, raw=False, strict_map_key=False, use_list=True,
                           unicode_errors=unicode_errors, max_buffer_size=max(len(data), 1 << 20))
    unp.feed(data)
    try:
        n = unp.read_array_header()
        items = [unp.unpack() for _ in range(n)]
    except msgpack.StackError:
        raise UnserializableValue(_TOO_DEEP) from None
    except msgpack.OutOfData:
        raise ValueError("a truncated frame") from None
    if unp.tell() != len(data):
        raise msgpack.ExtraData(items, b"")
    return items


def _unpackb(data: bytes, unicode_errors: str) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False, use_list=True,
                           unicode_errors=unicode_errors)


def packer() -> msgpack.Packer:
    """A reusable packer with the same rules as ``pack`` (cheaper in a hot loop)."""
    return msgpack.Packer(default=_default, use_bin_type=True, datetime=False)


def unpacker() -> msgpack.Unpacker:
    """A streaming unpacker for frames read from a pipe."""
    return msgpack.Unpacker(ext_hook=_ext_hook, raw=False, strict_map_key=False, use_list=True, max_buffer_size=2**31 - 1)
