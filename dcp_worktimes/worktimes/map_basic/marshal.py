"""Values between Python and the QuickJS guest, as text (the Python half of ``prelude.js``).

The binding's own conversions are unusable (integers beyond 32 bits arrive as garbage, strings
are cut at NUL), so every value crosses as one string: a flag character, ``"1"`` when the JSON
that follows contains tagged values, ``"0"`` when it is plain JSON, then the JSON text. A tagged
value is a one-key object ``{"\\u0000dcp": [kind, text]}`` with kind ``b`` (bytes, base64),
``n`` (an integer beyond ±(2**53-1), decimal) or ``f`` (a float JSON cannot spell: NaN,
±Infinity, or an integral number beyond 2**53, as JS prints it).

Conversions (Python → JS → Python)::

    None                 -> null                -> None
    bool                 -> boolean             -> bool
    int, |n| <= 2**53-1  -> number              -> int
    int, larger          -> BigInt              -> int      (exact, any size)
    float                -> number              -> float, or int when integral (3.0 -> 3;
                                                    JS has a single number type; -0.0 -> 0)
    float NaN / ±inf     -> NaN / ±Infinity     -> float
    str                  -> string              -> str
    bytes                -> Uint8Array          -> bytes    (exact)
    list / tuple         -> Array               -> list
    dict                 -> plain object        -> dict     (keys become strings)

With the job option ``bigint`` (``job.options = {"bigint": True}``) every Python ``int`` in the
datum and the job arguments arrives as a ``BigInt``, whatever its size: a range crossing 2**53
then gives the work one type on every slice (``x + 1n``), instead of Numbers below and BigInts
above. A ``TypeError`` from mixing the two gets a hint pointing at the option (``bigint_hint``).

JS values only the guest makes: ``undefined`` → ``None`` (also inside arrays and objects, so
keys are never silently dropped); ``BigInt`` → ``int``; ``ArrayBuffer`` → ``bytes``; objects
with ``toJSON()`` (``Date`` → ISO 8601 string) are converted by it; boxed primitives are
unboxed. Everything else fails the slice with ``EUNSERIALIZABLE`` and a message saying how to
convert it: ``Map`` (``Object.fromEntries``), ``Set`` (``[...set]``), other typed arrays, class
instances (``{...obj}`` or a ``toJSON`` method), functions, symbols, errors, cycles.

    >>> text = to_js([1, 2**60, b"\\x00\\xff", float("nan")])
    >>> text[0]
    '1'
    >>> from_js('0[1,2.5,null,"x"]')
    [1, 2.5, None, 'x']
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

from ...values import MAX_DEPTH, UnserializableValue, as_unserializable

TAG = "\x00dcp"
MAX_SAFE = 2**53 - 1

_dumps = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"), check_circular=False).encode


class _Prep:
    """Rewrites a Python value into JSON-ready data, tagging what JSON cannot carry."""

    __slots__ = ("tagged", "bigint")

    def __init__(self, bigint: bool = False) -> None:
        self.tagged = False
        self.bigint = bigint  # every int a BigInt (job option "bigint")

    def __call__(self, v: Any) -> Any:
        t = type(v)
        if t is str or v is None or t is bool:
            return v
        if t is int:
            if -MAX_SAFE <= v <= MAX_SAFE and not self.bigint:
                return v
            self.tagged = True
            return {TAG: ["n", format(v, "x")]}  # hex: decimal str() stops at 4300 digits
        if t is float:
            if math.isfinite(v):
                return v
            self.tagged = True
            return {TAG: ["f", "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")]}
        if t is list or t is tuple:
            return [self(x) for x in v]
        if t is dict:
            out = {}
            named = False  # a key that is no str: JSON names it (1 -> "1", None -> "null")
            for k, x in v.items():
                if type(k) is not str:
                    if not isinstance(k, (str, int, float, bool)) and k is not None:
                        raise UnserializableValue(
                            f"a dict key of type {type(k).__name__} ({k!r:.40}) cannot become a JS property name; use str keys"
                        )
                    named = True
                if k == TAG:
                    raise UnserializableValue(r"the dict key '\x00dcp' is reserved by map-basic; rename it")
                out[k] = self(x)
            if named:
                _distinct_names(out)
            return out
        if t is bytes or t is bytearray or t is memoryview:
            self.tagged = True
            return {TAG: ["b", base64.b64encode(bytes(v)).decode("ascii")]}
        if isinstance(v, bool):  # subclasses of the basic types: treat as the base type
            return bool(v)
        if isinstance(v, int):
            return self(int(v))
        if isinstance(v, float):
            return self(float(v))
        if isinstance(v, str):
            return str(v)
        if isinstance(v, (list, tuple)):
            return self(list(v))
        if isinstance(v, dict):
            return self(dict(v))
        raise UnserializableValue(
            f"a value of type {t.__module__}.{t.__qualname__} cannot be passed to JavaScript; "
            "supported: None, bool, int, float, str, bytes, list, dict"
        )


def _distinct_names(d: dict) -> None:
    """``UnserializableValue`` if two keys of ``d`` are one JavaScript property name (``1`` and
    ``"1"``): the object would silently keep only the last."""
    seen: dict[str, Any] = {}
    for k in d:
        name = k if type(k) is str else json.dumps(k if type(k) in (bool, type(None)) else k)
        if name in seen:
            raise UnserializableValue(f"the dict keys {seen[name]!r:.40} and {k!r:.40} are one property name in "
                                      f"JavaScript ({name!r:.40}); use distinct str keys")
        seen[name] = k


def to_js(value: Any, bigint: bool = False) -> str:
    """Encode a Python value for ``__dcpDecode`` in the guest; ``UnserializableValue`` if impossible.
    ``bigint``: every ``int`` becomes a ``BigInt`` (the job option)."""
    t = type(value)
    if t is int and -MAX_SAFE <= value <= MAX_SAFE and not bigint:  # fast paths: most datums are scalars
        return "0" + int.__repr__(value)
    if t is str:
        return "0" + _dumps(value)
    prep = _Prep(bigint)
    try:
        text = _dumps(prep(value))
    except RecursionError:
        raise UnserializableValue(f"the value is nested more than {MAX_DEPTH} levels deep (or contains itself); "
                                  "flatten it") from None
    except (TypeError, ValueError) as e:  # e.g. a list that contains itself
        raise UnserializableValue(f"value cannot be passed to JavaScript: {e}") from None
    return ("1" if prep.tagged else "0") + text


def to_js_each(values: list[Any], bigint: bool = False, max_chars: int | None = None
               ) -> tuple[list[str], UnserializableValue | None]:
    """``to_js`` of each value in order, up to the first that cannot be encoded: its texts and
    that value's error (``None``: none failed). A block's datums, many per call into the engine:
    with ``max_chars``, it stops before a text that would take the total past it (one text at least).

    >>> to_js_each([1, "a", {1}])[0]
    ['01', '0"a"']
    """
    out: list[str] = []
    total = 0
    for v in values:
        if type(v) is int and -MAX_SAFE <= v <= MAX_SAFE and not bigint:  # to_js's first test, without a call per datum
            text = "0" + int.__repr__(v)
        else:
            try:
                text = to_js(v, bigint)
            except UnserializableValue as e:
                return out, e
        total += len(text)
        if max_chars is not None and out and total > max_chars:
            break
        out.append(text)
    return out, None


def _revive(d: dict) -> Any:
    if len(d) == 1 and TAG in d:
        kind, data = d[TAG]
        if kind == "b":
            return base64.b64decode(data)
        if kind == "n":
            return int(data, 16)  # base 16 has no digit limit (and no quadratic conversion)
        if kind == "f":
            return float(data)
    return d


_plain = json.JSONDecoder().decode
_tagged = json.JSONDecoder(object_hook=_revive).decode


def from_js(text: str) -> Any:
    """Decode what the guest's ``__dcpEncode`` produced. ``UnserializableValue`` for text nested
    deeper than this process can decode (far past ``MAX_DEPTH``; shallower values that are still
    too deep are refused when packed), as for any value too deep."""
    try:
        return (_tagged if text[:1] == "1" else _plain)(text[1:])
    except RecursionError as e:
        raise as_unserializable(e) from None


#: How a BigInt looks in ``to_js`` text.
_BIGINT_MARK = '"\\u0000dcp":["n",'


def bigint_hint(name: str | None, message: str, bigint: bool, sent: tuple[str, ...]) -> str:
    """The hint to append to a work's ``TypeError`` from mixing BigInt and Number ("cannot
    convert BigInt to number", "Cannot mix BigInt and other types"), or ``""`` when it does not
    apply: the job option is on, or ``sent`` (the datum's and arguments' ``to_js`` text) carried
    an integer beyond 2**53-1.

    >>> bigint_hint("TypeError", "cannot convert BigInt to number", False, (to_js(2**60),)).startswith(" (this slice's")
    True
    >>> bigint_hint("TypeError", "cannot convert BigInt to number", False, (to_js(7),))
    ''
    """
    if name != "TypeError" or "bigint" not in message.lower():
        return ""
    if bigint:
        return (" (the job option 'bigint' is on, so every integer in the datum and the job arguments is a BigInt: "
                "write 1n instead of 1, or convert with Number(x))")
    if not any(text[:1] == "1" and _BIGINT_MARK in text for text in sent):
        return ""
    return (" (this slice's datum or a job argument holds an integer beyond 2**53-1, which JavaScript receives as a "
            "BigInt while smaller integers arrive as Numbers; set job.options = {'bigint': True} to receive every "
            "integer as a BigInt on every slice, or convert with Number(x), which rounds above 2**53)")
