"""msgpack for the guest: the lossless value set of ``dcp_worktimes.values``, in pure Python.

Runs inside the WASI CPython (which has no msgpack). The host decodes what this module encodes
with ``dcp_worktimes.values.unpack`` and encodes what it decodes with ``values.pack``, so the two
must agree byte for byte on the ext type for big integers (ext 1: ASCII hexadecimal digits, optional leading '-').

Guest-only conversions on the way out (documented in ``sandbox/python.md``):

* ``tuple`` → list; ``bytearray``/``memoryview`` → bytes;
* numpy arrays → nested lists (``ndarray.tolist()``), numpy scalars → the Python scalar
  (``.item()``); complex numbers and object arrays of non-values are unserializable;
* anything else (sets, custom objects) raises ``Unserializable`` naming the type and where it
  sits in the value (``result[3]['key']``).
"""

import sys
from struct import pack as _pack, unpack_from as _unpack_from

EXT_BIGINT = 1
#: ``dcp_worktimes.values.MAX_DEPTH``: one nesting limit everywhere (msgpack's, on the host).
_MAX_DEPTH = 1024
#: Python frames the codec needs at that depth (two per level), on top of the caller's.
_FRAMES = 2 * _MAX_DEPTH + 200


class Unserializable(TypeError):
    """A value outside the lossless set: the slice fails with EUNSERIALIZABLE."""


class _Deep:
    """Room for ``_FRAMES`` more Python frames while the codec walks a deep value (CPython 3.12+
    counts only Python frames against the limit; the walk uses no C stack per level)."""

    def __enter__(self):
        self.old = sys.getrecursionlimit()
        sys.setrecursionlimit(self.old + _FRAMES)

    def __exit__(self, *exc):
        sys.setrecursionlimit(self.old)


#: Types whose values hold no others: encoded without making room for a deep walk.
_FLAT = frozenset((int, float, str, bool, bytes, type(None)))


def encode(value, where="value"):
    t = type(value)
    if t is int:  # the usual result, once per slice (bool is not int here): straight to bytes
        return FIXINT[value] if 0 <= value < 0x80 else _int(value)
    if t is float:
        return b"\xcb" + _pack(">d", value)
    out = []
    if t in _FLAT:  # no recursion-limit juggling
        _enc(value, out, where, 0)
    else:
        with _Deep():
            _enc(value, out, where, 0)
    return b"".join(out)


_heads = {}  # (op, len(rest)) -> the frame's bytes before its value


def encode_frame(op, value, where, *rest):
    """``[op, value, *rest]`` with errors naming ``where`` (``result[3]``), not the frame's own index."""
    head = _heads.get((op, len(rest)))  # constant per kind of frame: made once
    if head is None:
        head = _heads[(op, len(rest))] = bytes([0x92 + len(rest)]) + encode(op)
    return head + encode(value, where) + b"".join(encode(r) for r in rest)


def _name(where):
    """The place a ``where`` names: ``where`` is a string, or ``(parent, kind, key)`` made per item
    of a list or dict as the walk goes (formatted only for an error: most values have none)."""
    parts = []
    while type(where) is tuple:
        where, kind, key = where
        parts.append(f"[{key}]" if kind == 0 else f"[{key!r}]" if kind == 1 else f" key {key!r}")
    return where + "".join(reversed(parts))


def _enc(v, out, where, depth):
    if depth > _MAX_DEPTH:
        where = _name(where)
        if len(where) > 80:  # the path to the deep end repeats itself; its start says enough
            where = where[:60] + "..."
        raise Unserializable(f"{where} is nested more than {_MAX_DEPTH} levels deep (lists/dicts inside each "
                             "other; a cycle?); flatten it")
    t = type(v)
    if v is None:
        out.append(b"\xc0")
    elif v is True:
        out.append(b"\xc3")
    elif v is False:
        out.append(b"\xc2")
    elif t is int or (isinstance(v, int) and t is not bool):
        out.append(_int(int(v)))
    elif t is float or isinstance(v, float):
        out.append(b"\xcb" + _pack(">d", float(v)))
    elif t is str or isinstance(v, str):
        b = str(v).encode("utf-8", "surrogatepass")
        n = len(b)
        if n < 32:
            out.append(bytes((0xA0 | n,)))
        elif n < 0x100:
            out.append(b"\xd9" + bytes((n,)))
        elif n < 0x10000:
            out.append(b"\xda" + _pack(">H", n))
        else:
            out.append(b"\xdb" + _pack(">I", n))
        out.append(b)
    elif isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        n = len(b)
        if n < 0x100:
            out.append(b"\xc4" + bytes((n,)))
        elif n < 0x10000:
            out.append(b"\xc5" + _pack(">H", n))
        else:
            out.append(b"\xc6" + _pack(">I", n))
        out.append(b)
    elif t is list or t is tuple or isinstance(v, (list, tuple)):
        _enc_len(len(v), out, 0x90, b"\xdc", b"\xdd")
        for i, item in enumerate(v):
            _enc(item, out, (where, 0, i), depth + 1)
    elif t is dict or isinstance(v, dict):
        _enc_len(len(v), out, 0x80, b"\xde", b"\xdf")
        for k, item in v.items():
            if isinstance(k, (list, tuple, dict)):
                # The host decodes the value set with lists, which cannot be dict keys there either.
                raise Unserializable(f"{_name(where)} has the key {k!r}; dict keys must be None, bool, int, float, "
                                     "str or bytes (use a string such as '1,2' for a compound key)")
            _enc(k, out, (where, 2, k), depth + 1)
            _enc(item, out, (where, 1, k), depth + 1)
    else:
        converted = _numpy(v, where)
        if converted is _NOT_NUMPY:
            raise Unserializable(
                f"{_name(where)} is a {t.__module__}.{t.__qualname__}, which cannot cross the sandbox boundary; "
                "return None, bool, int, float, str, bytes, lists or dicts (numpy arrays become lists)"
            )
        _enc(converted, out, where, depth + 1)


def array_head(n):
    """The header of a msgpack array of ``n`` items (frames assembled from encoded parts)."""
    out = []
    _enc_len(n, out, 0x90, b"\xdc", b"\xdd")
    return out[0]


def _enc_len(n, out, fix, b16, b32):
    if n < 16:
        out.append(bytes((fix | n,)))
    elif n < 0x10000:
        out.append(b16 + _pack(">H", n))
    else:
        out.append(b32 + _pack(">I", n))


FIXINT = [bytes((i,)) for i in range(0x80)]  # public: the guest's block loop encodes positions itself


def _int(i):
    """An int's msgpack bytes: the smallest form, or ext 1 (hex digits) beyond 64 bits."""
    if 0 <= i < 0x80:
        return FIXINT[i]
    if -32 <= i < 0:
        return bytes((i & 0xFF,))
    if 0 <= i < 2**32:
        return b"\xce" + _pack(">I", i)
    if 0 <= i < 2**64:
        return b"\xcf" + _pack(">Q", i)
    if -(2**63) <= i < 0:
        return b"\xd3" + _pack(">q", i)
    digits = format(i, "x").encode("ascii")
    n = len(digits)
    if n < 0x100:
        return b"\xc7" + bytes((n, EXT_BIGINT)) + digits
    if n < 0x10000:
        return b"\xc8" + _pack(">HB", n, EXT_BIGINT) + digits
    return b"\xc9" + _pack(">IB", n, EXT_BIGINT) + digits


_NOT_NUMPY = object()


def _numpy(v, where):
    """numpy values as plain ones, without importing numpy when the work never did."""
    mod = type(v).__module__ or ""
    if not mod.startswith("numpy"):
        return _NOT_NUMPY
    import numpy

    if isinstance(v, numpy.ndarray):
        if v.dtype.kind == "c":
            raise Unserializable(f"{_name(where)} is a complex numpy array; return its .real and .imag separately")
        return v.tolist()
    if isinstance(v, numpy.generic):
        item = v.item()
        if isinstance(item, complex):
            raise Unserializable(f"{_name(where)} is a complex number; return its .real and .imag separately")
        if type(item) is type(v):  # longdouble (and the like): .item() keeps the type
            if isinstance(v, numpy.floating):
                return float(v)  # to double precision: what a float crosses as
            raise Unserializable(f"{_name(where)} is a numpy.{type(v).__name__}, which has no plain Python value; "
                                 "convert it (float(), int(), str()) before returning it")
        return item
    return _NOT_NUMPY


def decode(data):
    with _Deep():
        value, end = _dec(memoryview(data), 0)
    if end != len(data):
        raise ValueError(f"{len(data) - end} trailing bytes after a msgpack value")
    return value


def _dec(b, i):
    c = b[i]
    i += 1
    if c < 0x80:
        return c, i
    if c >= 0xE0:
        return c - 0x100, i
    if 0xA0 <= c <= 0xBF:
        n = c & 0x1F
        return str(b[i:i + n], "utf-8", "surrogatepass"), i + n
    if 0x90 <= c <= 0x9F:
        return _dec_array(b, i, c & 0x0F)
    if 0x80 <= c <= 0x8F:
        return _dec_map(b, i, c & 0x0F)
    if c == 0xC0:
        return None, i
    if c == 0xC2:
        return False, i
    if c == 0xC3:
        return True, i
    if c in (0xC4, 0xC5, 0xC6):
        n, i = _length(b, i, c - 0xC4)
        return bytes(b[i:i + n]), i + n
    if c in (0xD9, 0xDA, 0xDB):
        n, i = _length(b, i, c - 0xD9)
        return str(b[i:i + n], "utf-8", "surrogatepass"), i + n
    if c == 0xCA:
        return _unpack_from(">f", b, i)[0], i + 4
    if c == 0xCB:
        return _unpack_from(">d", b, i)[0], i + 8
    if 0xCC <= c <= 0xCF:
        size = 1 << (c - 0xCC)
        return int.from_bytes(b[i:i + size], "big"), i + size
    if 0xD0 <= c <= 0xD3:
        size = 1 << (c - 0xD0)
        return int.from_bytes(b[i:i + size], "big", signed=True), i + size
    if c in (0xDC, 0xDD):
        n, i = _length(b, i, c - 0xDC + 1)
        return _dec_array(b, i, n)
    if c in (0xDE, 0xDF):
        n, i = _length(b, i, c - 0xDE + 1)
        return _dec_map(b, i, n)
    if c in (0xC7, 0xC8, 0xC9) or 0xD4 <= c <= 0xD8:
        if c >= 0xD4:
            n = 1 << (c - 0xD4)
        else:
            n, i = _length(b, i, c - 0xC7)
        code = b[i]
        i += 1
        payload = bytes(b[i:i + n])
        if code == EXT_BIGINT:
            return int(payload.decode("ascii"), 16), i + n
        raise ValueError(f"unknown msgpack ext type {code}")
    raise ValueError(f"unknown msgpack byte 0x{c:02x}")


def _length(b, i, kind):
    size = (1, 2, 4)[kind]
    return int.from_bytes(b[i:i + size], "big"), i + size


def _dec_array(b, i, n):
    out = []
    for _ in range(n):
        v, i = _dec(b, i)
        out.append(v)
    return out, i


def _dec_map(b, i, n):
    out = {}
    for _ in range(n):
        k, i = _dec(b, i)
        v, i = _dec(b, i)
        if isinstance(k, list):
            k = tuple(k)  # a list key cannot be a dict key in Python; msgpack allows it
        out[k] = v
    return out, i
