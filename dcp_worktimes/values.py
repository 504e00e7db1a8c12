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

One codec per boundary; this is every hop a datum and its result make, and why:

=================================  =======================================================  ==============================
hop                                codec                                                    why
=================================  =======================================================  ==============================
deployer → store (stream inputs)   ``pack`` per datum (msgpack)                             the store keeps bytes any
                                                                                            worker decodes
store → worker (a lease)           values: a range/distribution is computed from its        no per-slice rows for
                                   description; a stream datum is ``unpack``-ed once        described inputs
worker → evaluator (a run frame)   one ``pack`` of the run's datums as an array             one C-level call per run
evaluator → worktime               values (``unpack`` of the array), or each datum's        a worktime that hands the datum
                                   msgpack bytes for ``Worktime.packed_datums``             on packed skips decode+encode
worktime → evaluator               a value; ``pack`` per result                             the output limit is per slice
evaluator → worker → store         the per-slice result bytes as sent, in columns           stored without decoding
                                   (``Report``, one msgpack row per batch)
store → deployer                   a batch's columns; its results ``unpack_all``-ed in one  a million results: a few
                                   call into the result handle                              hundred calls, not a million
map-basic engine ↔ QuickJS/V8      tagged JSON text (``worktimes/map_basic/marshal.py``)    what the engines parse fast;
                                                                                            BigInt and bytes tagged
python guest ↔ host                msgpack (``worktimes/python/guest/_dcp_codec.py``,       byte-compatible with this module
                                   a pure-Python codec inside the sandbox)
wasi guest ↔ host                  JSON, msgpack or raw bytes on stdin/stdout               the module's ``content_type``
                                   (``worktimes/wasi/abi.py``)                              option: any toolchain can read it
=================================  =======================================================  ==============================
"""

from __future__ import annotations

from typing import Any

import msgpack

_EXT_BIGINT = 1  # payload: ASCII hexadecimal digits, optional leading '-'

VALUE_TYPES = "None, bool, int, float, str, bytes, list, dict"


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
        raise UnserializableValue(f"value cannot cross the sandbox boundary: {e}") from None


def unpack(data: bytes, unicode_errors: str = "strict") -> Any:
    """The value ``pack`` encoded (``unicode_errors="replace"`` for text that may be broken)."""
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False, use_list=True,
                           unicode_errors=unicode_errors)


def unpack_all(packed: list[bytes]) -> list[Any]:
    """The values of many packed items, decoded in one call (they are joined into one msgpack
    array): a batch of a million results costs one C-level decode, not a million calls.

    >>> unpack_all([pack(1), pack("two"), pack([3])])
    [1, 'two', [3]]
    """
    n = len(packed)
    header = (bytes([0x90 | n]) if n < 16 else b"\xdc" + n.to_bytes(2, "big") if n < 65536
              else b"\xdd" + n.to_bytes(4, "big"))
    return unpack(header + b"".join(packed))


def packer() -> msgpack.Packer:
    """A reusable packer with the same rules as ``pack`` (cheaper in a hot loop)."""
    return msgpack.Packer(default=_default, use_bin_type=True, datetime=False)


def unpacker() -> msgpack.Unpacker:
    """A streaming unpacker for frames read from a pipe."""
    return msgpack.Unpacker(ext_hook=_ext_hook, raw=False, strict_map_key=False, use_list=True, max_buffer_size=2**31 - 1)
