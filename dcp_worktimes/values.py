"""Lossless values across the sandbox boundary (msgpack frames).

The value set every worktime accepts and returns: ``None``, ``bool``, ``int`` of any size,
``float`` (NaN and infinities included), ``str``, ``bytes``, ``list``, ``dict``. Tuples arrive as
lists. msgpack covers all of it except integers outside the 64-bit range, which travel as an
extension type holding their hexadecimal digits (hex, not decimal: conversion is linear and has
no digit limit, so a 10**5000 crosses as easily as 2**70)::

    >>> from dcp_worktimes.values import pack, unpack
    >>> unpack(pack([2**100, b"\\x00\\xff", {"a": None}]))
    [1267650600228229401496703205376, b'\\x00\\xff', {'a': None}]

Strings are carried exactly, lone surrogates included (``"\\ud800"``: legal in a JavaScript string
and in a Python ``str``, not in UTF-8): msgpack holds their UTF-8 form with surrogates encoded as
if they were characters (``surrogatepass``, the "WTF-8" that JavaScript engines use). The fast,
strict encoder runs first; only a value that has one is encoded again this way.

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

import sys
from typing import Any

import msgpack

_EXT_BIGINT = 1  # payload: ASCII hexadecimal digits, optional leading '-'

VALUE_TYPES = "None, bool, int, float, str, bytes, list, dict"
#: The deepest nesting of lists/dicts a value may have (msgpack's limit, both ways).
MAX_DEPTH = 1024
_TOO_DEEP = (f"the value is nested more than {MAX_DEPTH} levels deep (lists/dicts inside each other; a cycle?); "
             "flatten it")


#: The types a dict key may have on both sides of the boundary: a tuple key would be written as an
#: array, which no decoder can make a key of (``inputs.plain`` refuses it where it enters).
KEY_TYPES = (str, int, float, bytes, bool, type(None))
KEY_RULE = "dict keys must be None, bool, int, float, str or bytes (use a string such as '1,2' for a compound key)"
_BAD_KEY = f"a dict key is a list, tuple or dict; {KEY_RULE}"


#: Decimal digits an int may have where it is read or written as text (JSON, the CLI): Python's
#: default stops at 4300; the conversion is quadratic, so a stranger's value must not get an
#: unbounded one. Set per process by ``allow_big_ints``.
MAX_INT_DIGITS = 200_000


def allow_big_ints() -> None:
    """Let this process read and print ints of up to ``MAX_INT_DIGITS`` decimal digits."""
    sys.set_int_max_str_digits(MAX_INT_DIGITS)


#: Python frames a recursive walk of a value may take per level of nesting (with some to spare).
FRAMES_PER_LEVEL = 4


def allow_depth() -> None:
    """Let this process walk values ``MAX_DEPTH`` deep for good (CPython 3.11+ takes no C stack per
    Python frame): the CLI and every evaluator at their start, a deployer's process once it sends
    such a value. It only ever raises the limit, so threads racing here cannot lower it."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), FRAMES_PER_LEVEL * MAX_DEPTH + 1000))


class UnserializableValue(TypeError):
    """A value outside the lossless set (the slice fails with ``EUNSERIALIZABLE``)."""


class Undecodable:
    """Stands in for a stored value that cannot be decoded (nested deeper than ``MAX_DEPTH``,
    stored by a version that did not check, or forged): ``pack`` raises its error, so the slice it
    belongs to fails alone (``EUNSERIALIZABLE``) instead of the worker reading it."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error

    def __repr__(self) -> str:
        return f"Undecodable({self.error!r})"


def unpack_datums(packed: list[bytes]) -> list[Any]:
    """``unpack_all``, with an ``Undecodable`` in the place of each item that cannot be decoded."""
    # UnserializableValue is a TypeError; msgpack raises ValueError or UnpackException for bad bytes.
    failures = (ValueError, TypeError, msgpack.UnpackException)
    try:
        return unpack_all(packed)
    except failures:
        out: list[Any] = []
        for item in packed:
            try:
                out.append(unpack(item))
            except failures as e:
                out.append(Undecodable(f"the stored value cannot be decoded: {e}"))
        return out


def _default(obj: Any) -> Any:
    if isinstance(obj, Undecodable):
        raise UnserializableValue(obj.error)
    if isinstance(obj, int):  # only reached when msgpack's 64-bit range overflowed
        return msgpack.ExtType(_EXT_BIGINT, format(int(obj), "x").encode("ascii"))
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    if isinstance(obj, (set, frozenset)):
        raise UnserializableValue(f"a {type(obj).__name__} cannot cross the sandbox boundary; convert it to a list")
    if isinstance(obj, range):  # e.g. inputs mixing ranges and data: only a list of ranges alone is one input set
        raise UnserializableValue(f"a range ({obj!r}) cannot cross the sandbox boundary as a value; send list({obj!r}), "
                                  "or make every input a range for a multi-dimensional input set")
    raise UnserializableValue(
        f"a value of type {type(obj).__module__}.{type(obj).__qualname__} cannot cross the sandbox boundary; "
        f"supported types: {VALUE_TYPES}"
    )


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_BIGINT:
        return int(data.decode("ascii"), 16)
    return msgpack.ExtType(code, data)


#: Text in frames: lone surrogates travel as their 3-byte UTF-8 form (see the module docstring).
TEXT_ERRORS = "surrogatepass"


def pack(value: Any) -> bytes:
    """Encode one value; raises ``UnserializableValue`` for anything outside the value set."""
    try:
        try:
            return msgpack.packb(value, default=_default, use_bin_type=True, strict_types=False, datetime=False)
        except UnicodeEncodeError:  # a lone surrogate somewhere: the slower encoder that carries it
            return msgpack.packb(value, default=_default, use_bin_type=True, strict_types=False, datetime=False,
                                 unicode_errors=TEXT_ERRORS)
    except UnserializableValue:
        raise
    except (TypeError, ValueError, OverflowError) as e:  # e.g. recursion, non-str-able keys
        raise as_unserializable(e) from None


def as_unserializable(e: Exception) -> UnserializableValue:
    # msgpack's nesting limit (MAX_DEPTH), or Python's own while reading nested text (json)
    if isinstance(e, RecursionError) or "recursion limit" in str(e):
        return UnserializableValue(_TOO_DEEP)
    return UnserializableValue(f"value cannot cross the sandbox boundary: {e}")


def unpack(data: bytes, unicode_errors: str = TEXT_ERRORS) -> Any:
    """The value ``pack`` encoded (``unicode_errors="replace"`` for text that may be broken).

    ``UnserializableValue`` for bytes nested deeper than ``MAX_DEPTH`` (only a forged frame can be)."""
    try:
        return _unpackb(data, unicode_errors)
    except msgpack.StackError:
        raise UnserializableValue(_TOO_DEEP) from None
    except TypeError as e:
        raise _bad_key(e) from None


def _bad_key(e: TypeError) -> Exception:
    """What to raise for msgpack's ``TypeError`` while decoding: "unhashable type: 'list'" is a map
    key packed as an array (a tuple key, see ``check_keys``); anything else is raised as it is."""
    return UnserializableValue(f"{_BAD_KEY} ({e})") if "unhashable" in str(e) else e


#: Values that cannot hold a dict, so neither a key no decoder can make (``check_keys``).
SCALARS = (int, float, str, bytes, bool, type(None))


def check_keys(data: bytes) -> None:
    """``UnserializableValue`` if packed ``data`` holds a dict key no decoder can make: ``pack``
    writes a tuple key as an array. A worktime's result is checked so where it is made, or it
    would be stored as computed and fail every read of its job's results. Depth is not judged
    here (``check_decodes`` does)."""
    try:
        _unpackb(data, TEXT_ERRORS)
    except msgpack.StackError:
        pass
    except TypeError as e:
        raise _bad_key(e) from None


def pack_decodable(value: Any) -> bytes:
    """``pack``, refusing what would not decode again: an empty list or dict innermost at one
    level past ``MAX_DEPTH`` packs (msgpack counts it one level shallower packing than unpacking),
    then fails every read. For values that will be stored and read elsewhere (inputs, results);
    only values longer than ``MAX_DEPTH`` bytes, which alone can be that deep, are decoded again."""
    data = pack(value)
    check_decodes(data)
    return data


def pack_checked(value: Any) -> bytes:
    """``pack``, then make sure the bytes decode again: ``pack`` takes a tuple as a dict key and
    writes it as an array, which no decoder can make a key of. For values packed once and decoded
    elsewhere later (a job sent to evaluators), never on a per-slice path."""
    data = pack(value)
    unpack(data)
    return data


#: Every byte value but msgpack's container headers (fixmap, fixarray, array 16/32, map 16/32).
_NOT_HEADERS = bytes(b for b in range(256) if not (0x80 <= b <= 0x9F or 0xDC <= b <= 0xDF))


def check_decodes(data: bytes, below: int = 0) -> None:
    """``UnserializableValue`` unless packed ``data`` is shallow enough to decode again ``below``
    levels down in a frame: msgpack packs an empty list one level deeper than it unpacks, and a
    frame's own levels count against the limit too. Only depth is checked, so values shorter than
    the limit (which cannot be that deep) are not decoded at all."""
    # Each level of nesting is a container header: fewer bytes of a header's value than the limit
    # (a scan in C, ~20x cheaper than decoding) rule out a value that deep.
    if len(data) + below > MAX_DEPTH and len(data.translate(None, _NOT_HEADERS)) + below > MAX_DEPTH:
        unpack(b"\x91" * below + data)


def unpack_frame(data: bytes, unicode_errors: str = TEXT_ERRORS, *, frames_at: int | None = None) -> list:
    """A frame: an array whose items may *each* nest ``MAX_DEPTH`` levels (``[op, value]``), so the
    frame's own level does not lower the limit for the value it carries. ``frames_at``: the item
    at that index is an array of such frames (one frame carrying several), decoded the same way."""
    # The whole frame in one C call first (a python block's results come many to a frame): only a
    # value within the frame's own levels of MAX_DEPTH, or a malformed frame, needs the walk below,
    # which then decides as it always did.
    try:
        whole = _unpackb(data, unicode_errors)
    except (msgpack.StackError, ValueError, TypeError, msgpack.UnpackException):
        pass
    else:
        if type(whole) is list and (frames_at is None or (
                frames_at < len(whole) and type(whole[frames_at]) is list
                and all(type(f) is list for f in whole[frames_at]))):
            return whole
    unp = msgpack.Unpacker(ext_hook=_ext_hook, raw=False, strict_map_key=False, use_list=True,
                           unicode_errors=unicode_errors, max_buffer_size=max(len(data), 1 << 20))
    unp.feed(data)

    def frame() -> list:
        return [unp.unpack() for _ in range(unp.read_array_header())]

    try:
        items = [[frame() for _ in range(unp.read_array_header())] if i == frames_at else unp.unpack()
                 for i in range(unp.read_array_header())]
    except msgpack.StackError:
        raise UnserializableValue(_TOO_DEEP) from None
    except TypeError as e:  # a tuple key, stored before results were checked
        raise _bad_key(e) from None
    except msgpack.OutOfData:
        raise ValueError("a truncated frame") from None
    if unp.tell() != len(data):
        raise msgpack.ExtraData(items, b"")
    return items


def _unpackb(data: bytes, unicode_errors: str) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False, use_list=True,
                           unicode_errors=unicode_errors)


def _array_header(n: int) -> bytes:
    return bytes([0x90 | n]) if n < 16 else b"\xdc" + n.to_bytes(2, "big") if n < 65536 else b"\xdd" + n.to_bytes(4, "big")


def pack_all(values: list[Any]) -> bytes:
    """Many values as one packed array (one C-level call), each item allowed ``MAX_DEPTH`` levels.

    >>> unpack_all_packed(pack_all([1, "two", [3]]))
    [1, 'two', [3]]
    """
    try:
        return pack(values)
    except UnserializableValue:  # which item, and why (one at MAX_DEPTH, inside the array, is fine)
        return _array_header(len(values)) + b"".join(pack(v) for v in values)


def unpack_all_packed(data: bytes) -> list[Any]:
    """The items of a packed array (``pack_all``), each allowed ``MAX_DEPTH`` levels."""
    try:
        return unpack(data)
    except UnserializableValue:
        return unpack_frame(data)


def unpack_all(packed: list[bytes]) -> list[Any]:
    """The values of many packed items, decoded in one call (they are joined into one msgpack
    array): a batch of a million results costs one C-level decode, not a million calls.

    >>> unpack_all([pack(1), pack("two"), pack([3])])
    [1, 'two', [3]]
    """
    return unpack_all_packed(_array_header(len(packed)) + b"".join(packed))


def printable(text: str) -> str:
    """``text`` for people (console lines): each lone surrogate becomes U+FFFD, as JavaScript
    consoles show it; a surrogate pair written as two code points becomes its character.

    >>> printable("ok \\ud800!")
    'ok \ufffd!'
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def packer() -> msgpack.Packer:
    """A reusable packer for a hot loop: the strict encoder of ``pack``. A ``UnicodeEncodeError``
    from it means a lone surrogate: encode that value with ``pack`` instead (and start a new
    packer, as after any failure)."""
    return msgpack.Packer(default=_default, use_bin_type=True, datetime=False)


def unpacker() -> msgpack.Unpacker:
    """A streaming unpacker for frames read from a pipe."""
    return msgpack.Unpacker(ext_hook=_ext_hook, raw=False, strict_map_key=False, use_list=True, max_buffer_size=2**31 - 1,
                            # Only fed, never reading a file: read_size is the first buffer, which
                            # grows to the largest frame. msgpack's default, 1 MiB, is touched page by
                            # page as frames pass, in each evaluator's channel.
                            read_size=1 << 16,
                            unicode_errors=TEXT_ERRORS)
