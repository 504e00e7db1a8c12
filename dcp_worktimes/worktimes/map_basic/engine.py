"""What both map-basic engines share: the engine contract, the prelude's replies, error messages.

An engine (``quickjs.QuickJSEngine`` in process, ``v8.V8Engine`` in a Deno process) loads
``prelude.js`` and drives its dispatcher: ``compile`` the work once per job, ``set_job``
(arguments, modules), then ``run`` one slice at a time. Everything the prelude answers is decoded
here, so both engines turn the same JavaScript outcome into the same Python value or the same
``SliceError`` (code, message, name, stack).

Which engine runs is a worker setting (``dcp-worker --js-engine v8|quickjs``); ``choose`` resolves
it, defaulting to V8 where the ``deno`` package is installed::

    engine = make_engine(choose(None), memory=None)   # V8 if installed, else QuickJS
    engine.set_job(arguments=[3], modules={})
    engine.compile("function (x, k) { progress(); return x * k }")
    engine.run(SliceContext(0, Limits()), 7)         # -> 21
"""

from __future__ import annotations

import json
import os
import re
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from ...errors import ErrorCode, SliceError, WorkError
from ...limits import exceeded, format_size
from ...values import UnserializableValue
from ...worktime import SliceContext
from .marshal import bigint_hint, from_js, to_js

with open(os.path.join(os.path.dirname(__file__), "prelude.js"), encoding="utf-8") as _f:
    PRELUDE = _f.read()

#: Engine names, as ``--js-engine`` takes them.
ENGINES = ("v8", "quickjs")

#: The reply of a slice whose promise can never settle (same text on both engines).
NEVER_SETTLED = ("the work function's promise never settled and nothing is left to run (no timers, no "
                 "pending jobs); make sure every Promise it awaits resolves or rejects")


class Engine(ABC):
    """One JavaScript context with the prelude loaded, for one job. Not thread-safe."""

    #: ``"v8"`` or ``"quickjs"``.
    name: ClassVar[str]
    #: Whether the engine can stop running JavaScript itself at a deadline (else the runner kills).
    interrupt_installed: bool = True

    _memory_limit = 0  # bytes of JS heap allowed (0 = unlimited)
    _slice: SliceContext | None = None
    _bigint = False  # job option "bigint": every int crosses as a BigInt
    _args_text = ""  # the job arguments as sent (for bigint_hint)
    _datum_text = ""  # the running slice's datum as sent (for bigint_hint)

    # -- what an engine implements ------------------------------------------------------------
    @abstractmethod
    def _operation(self, op: str, a: str = "", b: str = "", time_limit: float | None = None) -> str:
        """Call the prelude dispatcher outside a slice (compile, job, spread, eval) and return its
        reply as text; ``time_limit`` bounds it (``SliceError`` ``ESLICETOOSLOW``)."""

    @abstractmethod
    def run(self, ctx: SliceContext, datum: Any) -> Any:
        """Run one slice: call the work, settle promises and timers, return the decoded result."""

    @abstractmethod
    def close(self) -> None:
        """Free the engine (the context, or the engine process)."""

    def set_limits(self, memory: int | None) -> None:
        """The JS heap quota in bytes (``None`` = unlimited), where the engine can change it."""

    def _is_out_of_memory(self, name: str | None, message: str) -> bool:
        """Whether an error the work did not catch is the engine running out of heap."""
        return False

    def _forget_garbage(self) -> None:
        """Collect garbage after an out-of-memory error, so the next slice starts clean."""

    # -- shared -------------------------------------------------------------------------------
    def compile(self, source: str, strict: bool = False, time_limit: float | None = 60.0) -> None:
        """Evaluate the work text to a function, or raise WorkError (EBADWORK) saying why.

        A file-style work runs top-level code: ``time_limit`` bounds it (an endless loop there
        would otherwise hang ``prepare``).
        """
        try:
            source.encode("utf-8")
        except UnicodeEncodeError as e:  # neither engine's channel carries lone surrogates
            raise WorkError(f"the work text contains an unpaired surrogate ({source[e.start]!r} at offset {e.start}); "
                            "write it as a \\u escape inside a string literal") from None
        try:
            result = self._operation("compile", source, "1" if strict else "", time_limit=time_limit)
        except SliceError as e:
            if e.code == ErrorCode.ESLICETOOSLOW:
                raise WorkError(f"evaluating the work took longer than {time_limit:g} s; the work text must "
                                "evaluate to a function quickly (move heavy set-up into the function)") from None
            raise WorkError(f"the work could not be evaluated: {e.message}") from None
        if not result:
            return
        if result[0] == "n":
            got = json.loads(result[1:])
            raise WorkError(
                f"the work must evaluate to a function, but it evaluated to {got}; deploy it as a function "
                "expression such as 'function (datum) { return datum * 2 }', 'async (datum) => ...', or a file "
                "whose last expression is the function"
            )
        err = json.loads(result[1:])
        where = ""
        for line in (err.get("stack") or "").splitlines():
            if "<input>:" in line:
                where = " at line " + line.split("<input>:", 1)[1].rstrip(")").replace(":", ", column ", 1)
                break
        kind = err.get("name")
        other = _other_language(source)
        # Nesting too deep for the parser overflows its stack before any code runs: no frame of
        # the work's says where (a top-level throw on QuickJS has none either, but is no overflow).
        too_deep = not where and (kind, err["message"]) in (("RangeError", "Maximum call stack size exceeded"),
                                                            ("InternalError", "stack overflow"))
        if kind != "SyntaxError" and not too_deep:
            # The text parsed and its top-level code ran and threw (a file-style work's set-up,
            # or an expression such as makeWork(config)): not a compile error. A SyntaxError is
            # almost always the parser's (a top-level JSON.parse of bad text is the rare other).
            thrown = f"{kind}: {err['message']}" if kind else err["message"]
            raise WorkError(f"the work threw while loading (its top-level code ran): {thrown}{where}; "
                            f"{other or 'fix the code that runs when the work loads, or move it into the function'}")
        raise WorkError(f"the work does not compile: {kind}: {err['message']}{where}; "
                        f"{other or 'fix the work function' + chr(39) + 's source'}")

    def set_job(self, arguments: list[Any], modules: dict[str, str | bytes], spread: bool = False,
                bigint: bool = False) -> None:
        """Job arguments (passed after the datum), module sources for require(), whether a list
        datum is spread into separate arguments (multi-dimensional jobs), and whether every int
        crosses as a BigInt (the job option ``bigint``)."""
        self._bigint = bigint
        args_text, modules_json = job_texts(arguments, modules, bigint)
        self._args_text = args_text
        if 0 < self._memory_limit < len(args_text) + len(modules_json):
            # Decoded in the engine they take at least as much heap: say so on every engine (V8's
            # heap is too coarse to refuse small amounts by itself).
            raise WorkError(f"the job's arguments and modules take {format_size(len(args_text) + len(modules_json))}, "
                            f"more than the memory limit of {format_size(self._memory_limit)}; raise the job's memory "
                            "limit or pass less data")
        self._operation("job", args_text, modules_json)
        self._operation("spread", "1" if spread else "")

    def eval(self, source: str) -> Any:
        """Evaluate JS source and decode its value (tests and diagnostics)."""
        return self._result(self._operation("eval", source))

    def _result(self, envelope: str) -> Any:
        """The slice's value from the prelude's reply, or the ``SliceError`` it stands for."""
        kind, body = envelope[:1], envelope[1:]
        if kind == "v":
            return from_js(body)
        if kind == "e":
            err = json.loads(body)
            name, message = err.get("name"), err.get("message", "")
            if self._is_out_of_memory(name, message):
                self._forget_garbage()
                raise SliceError(memory_message(self._memory_limit), code=ErrorCode.EMEMORYLIMIT, name="InternalError")
            stack = err.get("stack") or ""
            full = f"{name}: {message}\n{stack}" if stack else None
            hint = bigint_hint(name, message, self._bigint, (self._datum_text, self._args_text))
            raise SliceError(sanitize(message) + hint, code=ErrorCode.EUNCAUGHT, stack=full and sanitize(full), name=name)
        if kind == "r":
            raise SliceError(f"work.reject: {sanitize(json.loads(body))}", code=ErrorCode.EWORKREJECT)
        if kind == "o":
            cap = self._slice.limits.output if self._slice is not None else None
            shown = format_size(cap) if cap else "its limit"
            raise SliceError(f"the result is larger than the output limit of {shown} when written out; return less "
                             "data or raise the job's output limit", code=ErrorCode.EOUTPUTLIMIT)
        if kind == "u":
            message = json.loads(body)
            if message.startswith("the value"):
                message = "the result" + message[len("the value"):]
            else:  # e.g. JSON.stringify's "circular reference"
                message = f"the result cannot cross the sandbox boundary: {message}; return plain, acyclic data"
            raise SliceError(message, code=ErrorCode.EUNSERIALIZABLE, name="DataCloneError")
        if kind == "N":
            raise SliceError(NEVER_SETTLED, code=ErrorCode.EUNCAUGHT)
        raise SliceError(f"internal error: unexpected reply {envelope[:40]!r} from the map-basic prelude", code=ErrorCode.ECRASH)


def job_texts(arguments: list[Any], modules: dict[str, str | bytes], bigint: bool = False) -> tuple[str, str]:
    """The prelude's ``job`` operands: the arguments as marshalled text, the modules as JSON."""
    try:
        args_text = to_js(list(arguments), bigint)
    except UnserializableValue as e:
        raise WorkError(f"the job arguments cannot be passed to JavaScript: {e}") from None
    sources: dict[str, str] = {}
    for name, src in modules.items():
        if isinstance(src, bytes):
            try:
                src = src.decode("utf-8")
            except UnicodeDecodeError:
                raise WorkError(f"module {name!r} is not UTF-8 text; map-basic modules are JavaScript source") from None
        sources[str(name)] = src
    return args_text, json.dumps(sources, ensure_ascii=True)


def datum_text(datum: Any, bigint: bool = False) -> str:
    """The datum as the prelude's ``start`` takes it, or ``EUNSERIALIZABLE``."""
    try:
        return to_js(datum, bigint)
    except UnserializableValue as e:
        raise datum_error(e) from None


def datum_error(e: UnserializableValue) -> SliceError:
    """The slice's error for a datum that cannot be passed to JavaScript."""
    return SliceError(f"the datum cannot be passed to JavaScript: {e}", code=ErrorCode.EUNSERIALIZABLE)


# -- choosing an engine -------------------------------------------------------------------------
def choose(setting: Any) -> str:
    """The engine for a ``--js-engine`` value (or ``DCP_WORKTIMES_JS_ENGINE``, as every worktime
    setting: ``plugins.settings_from_env``): ``"v8"``, ``"quickjs"``, or (unset) V8 where the
    ``deno`` package is installed, else QuickJS. ``ValueError`` for anything else.

    >>> choose("QuickJS")
    'quickjs'
    """
    if setting is None or setting == "":
        from . import v8

        return "v8" if v8.deno_binary() is not None else "quickjs"
    name = str(setting).strip().lower()
    if name not in ENGINES:
        raise ValueError(f"--js-engine (DCP_WORKTIMES_JS_ENGINE) must be one of {', '.join(ENGINES)}, not {setting!r}")
    return name


def missing(name: str) -> str | None:
    """Why engine ``name`` cannot run on this machine (with the install command), or ``None``."""
    if name == "v8":
        from . import v8

        return None if v8.deno_binary() is not None else (
            "map-basic on V8 needs Deno: pip install 'deno>=2.9' (or dcp-worktimes[v8]), or run with --js-engine quickjs")
    import importlib.util

    return None if importlib.util.find_spec("_quickjs") is not None else (
        "map-basic on QuickJS needs quickjs-ng: pip install 'quickjs-ng>=0.17'")


def make_engine(name: str, memory: int | None = None, webassembly: bool = False) -> Engine:
    """A fresh engine of kind ``name`` with the prelude loaded and a JS heap quota of ``memory``."""
    if name == "v8":
        from .v8 import V8Engine

        return V8Engine(memory=memory, webassembly=webassembly)
    from .quickjs import QuickJSEngine

    engine = QuickJSEngine()
    engine.set_limits(memory)
    return engine


# -- messages -----------------------------------------------------------------------------------
def sanitize(text: str) -> str:
    """Replace lone surrogates (legal in JS strings, not in UTF-8) with U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _other_language(source: str) -> str | None:
    """A hint when JavaScript that does not compile looks like another worktime's work."""
    if re.match(r"\s*(def |async def |import |from [\w.]+ import |class \w+.*:|lambda\b)", source):
        return "it looks like Python: deploy it with worktime='python'"
    if re.match(r"\s*\(module\b", source) or source.startswith("\0asm"):
        return "it looks like WebAssembly: deploy it with worktime='wasi'"
    return None


def memory_message(limit: int) -> str:
    shown = format_size(limit) if limit > 0 else "the available memory"
    return f"the work used more than {shown} of JavaScript heap; raise the job's memory limit or process less data per slice"


def limit_error(code: ErrorCode, ctx: SliceContext | None) -> SliceError:
    """The error of a slice an engine stopped at a limit, worded as wherever else that limit is
    enforced (``limits.exceeded``: the host's watchdog, the other worktimes)."""
    limits = ctx.limits if ctx is not None else None
    if code is ErrorCode.ESLICETOOSLOW:
        return exceeded("wall_time", limits.wall_time if limits else None, name="InternalError")
    if code is ErrorCode.ENOPROGRESS:
        return exceeded("progress_timeout", limits.progress_timeout if limits else None, name="InternalError")
    if code is ErrorCode.ECPULIMIT:
        return exceeded("cpu_time", limits.cpu_time if limits else None, name="InternalError")
    if code is ErrorCode.EOUTPUTLIMIT:
        return exceeded("output", limits.output if limits else None, what="console/emit traffic", name="InternalError")
    return SliceError("the slice was cancelled", code=code, name="InternalError")
