"""The ``ollama`` worktime's work: a generation request as data, checked field by field.

A work is a JSON object (the Compute API sends it as canonical JSON text)::

    {"model": "gemma3:270m",                                   # required: a model the worker serves
     "prompt": "Classify this ticket: {datum}",               # a prompt template ...
     "messages": [{"role": "user", "content": "{datum}"}],   # ... or chat messages (one of the two)
     "system": "You are terse.",                               # optional system prompt
     "raw": false,                                             # true: the prompt goes to the model as is
     "options": {"temperature": 0, "seed": 1, "num_predict": 8, "stop": ["\\n"]},
     "format": "json",                                         # or a JSON schema: the answer is parsed
     "return": "full"}                                         # or "text": the text (or parsed JSON) only

Each slice's datum fills the template: ``{datum}`` is the datum itself (a string as is, anything
else as JSON); when the datum is an object, ``{name}`` is its member ``name``. ``{{`` and ``}}``
are literal braces; braces around anything that is not a name (``{"label": 1}``) stay as written.
Substitution is plain text replacement (never ``str.format``: a template cannot reach Python
attributes), and it happens once per slice, so a datum cannot inject further placeholders.

>>> w = Work.parse({"model": "m", "prompt": "Q: {datum}\\nA:", "options": {"num_predict": 4}})
>>> w.render("2+2?").prompt
'Q: 2+2?\\nA:'
>>> Work.parse({"model": "m", "prompt": "x", "options": {"temprature": 0}})
Traceback (most recent call last):
dcp_worktimes.errors.WorkError: EBADWORK: work.options has no option 'temprature' (did you mean 'temperature'?); options: frequency_penalty, min_p, num_ctx, num_predict, presence_penalty, repeat_last_n, repeat_penalty, seed, stop, temperature, top_k, top_p, typical_p
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from dcp_worktimes.errors import ErrorCode, SliceError, WorkError

#: Tokens generated when the work names no ``num_predict`` (Ollama's own default is unbounded).
DEFAULT_NUM_PREDICT = 128
#: Deepest nesting accepted in a ``format`` schema (a bounded grammar, and no recursion bombs).
MAX_SCHEMA_DEPTH = 32

FIELDS = {
    "model": "the model's name, as the worker serves it (e.g. gemma3:270m)",
    "prompt": "a prompt template; {datum} (or {name} for an object datum) is filled per slice",
    "messages": "chat messages [{role, content}], contents being templates like prompt",
    "system": "a system prompt",
    "raw": "true: send the prompt as is, without the model's chat template",
    "options": "generation options (temperature, seed, num_predict, stop, ...)",
    "format": '"json" or a JSON schema: the answer is constrained to it and parsed',
    "return": '"full" (a dict with text, tokens, timings, digest) or "text" (the text or parsed JSON only)',
}

# name -> (kinds, lowest allowed value or None, meaning)
_NUMBER = (int, float)
OPTIONS: dict[str, tuple[tuple[type, ...], float | None, str]] = {
    "temperature": (_NUMBER, 0.0, "sampling temperature; 0 picks the most likely token"),
    "seed": ((int,), None, "random seed of the sampler"),
    "num_predict": ((int,), 1, "the most tokens to generate"),
    "stop": ((str, list), None, "a string or list of strings that end the generation"),
    "top_k": ((int,), 0, "sample among the k most likely tokens"),
    "top_p": (_NUMBER, 0.0, "nucleus sampling threshold"),
    "min_p": (_NUMBER, 0.0, "minimum probability relative to the most likely token"),
    "typical_p": (_NUMBER, 0.0, "locally typical sampling"),
    "repeat_penalty": (_NUMBER, 0.0, "penalty for repeated tokens"),
    "repeat_last_n": ((int,), -1, "how far back the repeat penalty looks"),
    "presence_penalty": (_NUMBER, None, "penalty for tokens already present"),
    "frequency_penalty": (_NUMBER, None, "penalty proportional to token frequency"),
    "num_ctx": ((int,), 16, "context window in tokens"),
}
_KIND_WORDS = {_NUMBER: "a number", (int,): "an integer", (str, list): "a string or a list of strings"}
ROLES = ("system", "user", "assistant")
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Rendered:
    """One slice's request text: ``prompt`` (with ``system``) or chat ``messages``."""

    prompt: str | None
    messages: list[dict[str, str]] | None
    system: str | None

    @property
    def size(self) -> int:
        """UTF-8 bytes of everything the model reads (what the worker's prompt cap counts)."""
        parts = [self.prompt or "", self.system or ""] + [m["content"] for m in self.messages or ()]
        return sum(len(p.encode("utf-8", "surrogatepass")) for p in parts)


@dataclass(frozen=True)
class Work:
    """A parsed, checked work. Build it with ``Work.parse``; ``canonical()`` is its JSON text."""

    model: str
    prompt: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None
    system: str | None = None
    raw: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    format: str | Mapping[str, Any] | None = None
    returns: str = "full"

    # -- parsing ----------------------------------------------------------------------------------
    @classmethod
    def parse(cls, value: Any) -> "Work":
        """A ``Work`` from a dict or its JSON text; ``WorkError`` (``EBADWORK``) naming the bad field."""
        if isinstance(value, (bytes, bytearray)):
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                raise WorkError("the ollama worktime's work must be a JSON object (UTF-8 text), got binary data") from None
        if isinstance(value, str):
            text = value
            if not text.strip():
                raise WorkError('the ollama worktime needs a work: a JSON object like {"model": "gemma3:270m", '
                                '"prompt": "... {datum}"}')
            try:
                value = json.loads(text)
            except RecursionError:
                raise WorkError("the work's JSON is nested too deeply") from None
            except json.JSONDecodeError as e:
                raise WorkError(f"the work is not valid JSON ({e}); pass a dict like "
                                '{"model": "gemma3:270m", "prompt": "... {datum}"}') from None
        if not isinstance(value, Mapping):
            raise WorkError(f"the ollama worktime's work must be a JSON object with model and prompt, "
                            f"got {type(value).__name__}")
        _no_unknown(value, FIELDS, "work")

        model = value.get("model")
        if not isinstance(model, str) or not model.strip():
            raise WorkError(f"work.model must name a model (a non-empty string such as 'gemma3:270m'), got {model!r}")
        prompt, messages = value.get("prompt"), value.get("messages")
        if (prompt is None) == (messages is None):
            raise WorkError("the work needs exactly one of work.prompt (a template) and work.messages (chat messages)")
        if prompt is not None and not isinstance(prompt, str):
            raise WorkError(f"work.prompt must be a string (a template with {{datum}}), got {type(prompt).__name__}")
        parsed_messages = None if messages is None else _messages(messages)
        system = value.get("system")
        if system is not None and not isinstance(system, str):
            raise WorkError(f"work.system must be a string, got {type(system).__name__}")
        raw = value.get("raw", False)
        if not isinstance(raw, bool):
            raise WorkError(f"work.raw must be true or false, got {raw!r}")
        if raw and messages is not None:
            raise WorkError("work.raw applies to work.prompt; chat messages always go through the model's chat template")
        if raw and system is not None:
            raise WorkError("work.system has no effect with raw=true (there is no template to put it in); "
                            "write it into work.prompt, or drop raw")
        returns = value.get("return", "full")
        if returns not in ("full", "text"):
            raise WorkError(f'work.return must be "full" or "text", got {returns!r}')
        return cls(model=model, prompt=prompt, messages=parsed_messages, system=system, raw=raw,
                   options=_options(value.get("options")), format=_format(value.get("format")), returns=returns)

    def canonical(self) -> str:
        """The work as canonical JSON text (sorted keys, defaults left out): equal works, equal text."""
        d: dict[str, Any] = {"model": self.model}
        if self.prompt is not None:
            d["prompt"] = self.prompt
        if self.messages is not None:
            d["messages"] = [{"role": r, "content": c} for r, c in self.messages]
        if self.system is not None:
            d["system"] = self.system
        if self.raw:
            d["raw"] = True
        if self.options:
            d["options"] = dict(self.options)
        if self.format is not None:
            d["format"] = self.format
        if self.returns != "full":
            d["return"] = self.returns
        return json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    # -- per slice ------------------------------------------------------------------------------
    @property
    def num_predict(self) -> int:
        return int(self.options.get("num_predict", DEFAULT_NUM_PREDICT))

    @property
    def stop(self) -> list[str]:
        stop = self.options.get("stop")
        return [] if stop is None else [stop] if isinstance(stop, str) else list(stop)

    def render(self, datum: Any) -> Rendered:
        """Fill the templates with one slice's datum (``SliceError`` when the datum lacks a name)."""
        values = _variables(datum)
        if self.messages is not None:
            messages = [{"role": r, "content": _fill(c, values, f"messages[{i}].content")}
                        for i, (r, c) in enumerate(self.messages)]
            if self.system is not None:
                messages.insert(0, {"role": "system", "content": _fill(self.system, values, "system")})
            return Rendered(None, messages, None)
        system = None if self.system is None else _fill(self.system, values, "system")
        return Rendered(_fill(self.prompt or "", values, "prompt"), None, system)


# -- helpers ------------------------------------------------------------------------------------
def _no_unknown(value: Mapping[str, Any], known: Mapping[str, Any], where: str) -> None:
    unknown = [k for k in value if k not in known]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), list(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        what = "field" if where == "work" else "option"
        raise WorkError(f"{where} has no {what} {unknown[0]!r}{hint}; {what}s: {', '.join(sorted(known))}")


def _messages(messages: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(messages, list) or not messages:
        raise WorkError("work.messages must be a non-empty list of {\"role\": ..., \"content\": ...} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or set(m) - {"role", "content"} or "content" not in m:
            raise WorkError(f"work.messages[{i}] must be an object with role and content (and nothing else), got {m!r}")
        role, content = m.get("role", "user"), m["content"]
        if role not in ROLES:
            raise WorkError(f"work.messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise WorkError(f"work.messages[{i}].content must be a string, got {type(content).__name__}")
        out.append((role, content))
    return tuple(out)


def _options(options: Any) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise WorkError(f"work.options must be an object such as {{\"temperature\": 0}}, got {type(options).__name__}")
    _no_unknown(options, OPTIONS, "work.options")
    out: dict[str, Any] = {}
    for name, value in options.items():
        kinds, lowest, meaning = OPTIONS[name]
        if isinstance(value, bool) or not isinstance(value, kinds):
            want = _KIND_WORDS[kinds]
            raise WorkError(f"work.options.{name} ({meaning}) must be {want}, got {value!r}")
        if isinstance(value, float) and value != value:
            raise WorkError(f"work.options.{name} must be a number, got NaN")
        if lowest is not None and value < lowest:
            extra = "; this worktime never generates without bound" if name == "num_predict" else ""
            raise WorkError(f"work.options.{name} ({meaning}) must be at least {lowest:g}, got {value!r}{extra}")
        if name == "stop" and isinstance(value, list) and not all(isinstance(s, str) and s for s in value):
            raise WorkError(f"work.options.stop must be a string or a list of non-empty strings, got {value!r}")
        out[name] = value
    return out


def _format(fmt: Any) -> str | dict | None:
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return "json"
    if not isinstance(fmt, Mapping):
        raise WorkError(f'work.format must be "json" or a JSON schema object, got {fmt!r}')
    depth = _depth(fmt)
    if depth > MAX_SCHEMA_DEPTH:
        raise WorkError(f"work.format: the JSON schema is nested {depth} levels deep; at most {MAX_SCHEMA_DEPTH} are accepted")
    return dict(fmt)


def _depth(value: Any, limit: int = MAX_SCHEMA_DEPTH + 1) -> int:
    """Nesting depth of a JSON value, counted without recursion and stopping past ``limit``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if d > limit:
            return d
        children = node.values() if isinstance(node, Mapping) else node if isinstance(node, list) else ()
        stack.extend((c, d + 1) for c in children if isinstance(c, (Mapping, list)))
    return deepest


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=_unjsonable)


def _unjsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        raise SliceError("the datum holds bytes, which a prompt cannot contain; send text (decode it first)",
                         code=ErrorCode.EUNCAUGHT, name="DatumError")
    raise TypeError(f"{type(value).__name__} is not JSON")


def _variables(datum: Any) -> dict[str, str]:
    if isinstance(datum, bytes):
        _unjsonable(datum)
    values = {"datum": _text(datum)}
    if isinstance(datum, dict):
        values.update({str(k): _text(v) for k, v in datum.items()})
    return values


def _fill(template: str, values: Mapping[str, str], where: str) -> str:
    def sub(m: re.Match[str]) -> str:
        token = m.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        name = m.group(1)
        if name not in values:
            has = sorted(k for k in values if k != "datum")
            got = f"an object with {', '.join(has)}" if has else "not an object with named members"
            raise SliceError(f"work.{where} uses {{{name}}}, but this slice's datum is {got}; give each datum a "
                             f"'{name}' member, or write {{{{{name}}}}} for literal braces",
                             code=ErrorCode.EUNCAUGHT, name="DatumError")
        return values[name]

    return _PLACEHOLDER.sub(sub, template)
