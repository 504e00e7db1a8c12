"""One QuickJS context with the map-basic prelude, limits and an interrupt handler.

Binding: ``quickjs-ng`` (see ``sandbox/mapbasic.md`` for the comparison with ``quickjs``). We use
its low-level ``_quickjs.Context`` directly and work around its traps:

* its time limit counts process CPU time and refuses Python callbacks while set, so we never use
  it: a ctypes interrupt handler installed with ``JS_SetInterruptHandler`` (exported by the
  extension) checks the wall-clock, CPU, progress and cancel deadlines. The runtime pointer is
  read from the ``Context`` object and verified with ``JS_GetRuntimeOpaque`` (the binding stores
  the context there) before anything is installed; if the check fails we run without an engine
  interrupt and the host runner kills on wall time;
* values cross as text (``marshal.py``), never through the binding's int/str conversions;
* the stack limit is never 0 (that crashes the host) and stays below the thread's C stack;
* one context per evaluator process: a new job replaces the previous context.

Example (in-process; the runner does the same inside a sandboxed evaluator)::

    engine = JSEngine()
    engine.compile("function (x, k) { progress(); return x * k }")
    engine.set_job(arguments=[3], modules={})
    engine.run(SliceContext(0, Limits()), 7)        # -> 21
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import resource
import threading
import time
from typing import Any

from ...errors import ErrorCode, SliceError, WorkError
from ...limits import format_size
from ...values import UnserializableValue
from ...worktime import SliceContext
from .marshal import bigint_hint, from_js, to_js

with open(os.path.join(os.path.dirname(__file__), "prelude.js"), encoding="utf-8") as _f:
    PRELUDE = _f.read()

#: JS stack budget: half of the calling thread's C stack, clamped (QuickJS default is 1 MiB).
MIN_JS_STACK = 256 * 1024
MAX_JS_STACK = 4 * 1024 * 1024

_INTERRUPT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


def _thread_stack_size() -> int:
    """Bytes of C stack of the current thread (main thread: RLIMIT_STACK; others: pthread default)."""
    if threading.current_thread() is not threading.main_thread():
        size = threading.stack_size()
        if size:
            return size
    soft, _ = resource.getrlimit(resource.RLIMIT_STACK)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        # Main thread: grows on demand. Other threads: glibc falls back to a 2 MiB default.
        return 8 * 1024 * 1024 if threading.current_thread() is threading.main_thread() else 2 * 1024 * 1024
    return soft


def _sanitize(text: str) -> str:
    """Replace lone surrogates (legal in JS strings, not in UTF-8) with U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class JSEngine:
    """A QuickJS runtime + context with the prelude loaded. Not thread-safe: one slice at a time."""

    def __init__(self) -> None:
        import _quickjs  # lazy: listing worktimes must not load the engine

        self._quickjs = _quickjs
        self._ctx = _quickjs.Context()
        self._slice: SliceContext | None = None
        # Deadlines checked by the interrupt handler (monotonic / process CPU seconds).
        self._deadline: float | None = None
        self._cpu_deadline: float | None = None
        self._progress_deadline: float | None = None
        self._tripped: ErrorCode | None = None
        self.interrupt_installed = self._install_interrupt()
        self._stack_size = 0
        self._stack_thread: int | None = None
        self._memory_limit = -1
        self._may_throw_null = False  # whether the job's code can throw null itself
        self._bigint = False  # job option "bigint": every int crosses as a BigInt
        self._args_text = ""
        self._ctx.add_callable("__dcpHost", self._host)
        self._op = self._ctx.eval(PRELUDE)

    # -- interrupt ------------------------------------------------------------------------------
    def _install_interrupt(self) -> bool:
        try:
            lib = ctypes.CDLL(self._quickjs.__file__)
            lib.JS_GetRuntimeOpaque.restype = ctypes.c_void_p
            lib.JS_GetRuntimeOpaque.argtypes = [ctypes.c_void_p]
            lib.JS_SetInterruptHandler.restype = None
            lib.JS_SetInterruptHandler.argtypes = [ctypes.c_void_p, _INTERRUPT, ctypes.c_void_p]
            # RuntimeData starts with PyObject_HEAD, then the JSRuntime pointer.
            rt = ctypes.c_void_p.from_address(id(self._ctx) + object.__basicsize__).value
            if not rt or lib.JS_GetRuntimeOpaque(rt) != id(self._ctx):
                return False
            self._handler = _INTERRUPT(self._interrupt)  # keep a reference: QuickJS holds a raw pointer
            lib.JS_SetInterruptHandler(rt, self._handler, None)
            return True
        except (OSError, AttributeError, ValueError):
            return False

    def _interrupt(self, _rt: int, _opaque: int) -> int:
        # Runs every ~10k JS operations with the GIL re-acquired: keep it cheap and never raise.
        try:
            now = time.monotonic()
            if self._deadline is not None and now > self._deadline:
                self._tripped = ErrorCode.ESLICETOOSLOW
            elif self._progress_deadline is not None and now > self._progress_deadline:
                self._tripped = ErrorCode.ENOPROGRESS
            elif self._cpu_deadline is not None and time.process_time() > self._cpu_deadline:
                self._tripped = ErrorCode.ECPULIMIT
            elif self._slice is not None and self._slice.cancelled:
                self._tripped = ErrorCode.ECANCELLED
            elif self._slice is not None and self._slice.over_quota:
                self._tripped = ErrorCode.EOUTPUTLIMIT
            else:
                return 0
            return 1
        except BaseException:  # noqa: BLE001 - an exception here would be printed and ignored
            return 1

    # -- host callbacks (called by the prelude through __dcpHost) -------------------------------
    def _host(self, op: str, a: Any = None, b: Any = None) -> str | None:
        # Exceptions must not escape into the binding (it would leave a Python error pending).
        try:
            if op == "random":
                return base64.b64encode(os.urandom(int(a))).decode("ascii")
            ctx = self._slice
            if ctx is None:
                return None  # console output while compiling the work or a module: dropped
            if op == "progress":
                ctx.progress(from_js(a))
                timeout = ctx.limits.progress_timeout
                if timeout is not None:
                    self._progress_deadline = time.monotonic() + timeout
            elif op == "console":
                ctx.console(a, _sanitize(json.loads(b)))
            elif op == "emit":
                ctx.emit(_sanitize(json.loads(a)), from_js(b))
            return None
        except BaseException as e:  # noqa: BLE001
            return f"!{op}: {e}"

    # -- calls ----------------------------------------------------------------------------------
    def _call(self, *args: Any) -> Any:
        """Call the prelude dispatcher; engine-level failures become SliceError."""
        try:
            return self._op(*args)
        except self._quickjs.JSException as e:
            raise self._engine_error(e) from None

    def _engine_error(self, e: Exception) -> SliceError:
        text = str(e)
        first = text.split("\n", 1)[0]
        stack = text.split("\n", 1)[1] if "\n" in text else None
        tripped, self._tripped = self._tripped, None
        if tripped is not None:
            return _limit_error(tripped, self._slice)
        if "out of memory" in first or (first.strip() == "null" and self._null_is_out_of_memory()):
            self._ctx.gc()
            return SliceError(_memory_message(self._memory_limit), code=ErrorCode.EMEMORYLIMIT, name="InternalError")
        if isinstance(e, self._quickjs.StackOverflow):
            return SliceError(f"{first} (recursion too deep)", code=ErrorCode.EUNCAUGHT, stack=stack, name="RangeError")
        name, _, message = first.partition(": ")
        return SliceError(message or first, code=ErrorCode.EUNCAUGHT, stack=stack, name=name or None)

    def _null_is_out_of_memory(self) -> bool:
        """A ``null`` exception: QuickJS throws it when the heap is too full for even its
        out-of-memory error, so it is one unless there is no heap limit or the work throws null."""
        return self._memory_limit > 0 and not self._may_throw_null

    def set_limits(self, memory: int | None) -> None:
        """Engine memory quota in bytes (None = unlimited) and a stack limit fitting this thread."""
        limit = int(memory) if memory else 0  # 0 = unlimited for QuickJS
        if limit != self._memory_limit:
            self._ctx.set_memory_limit(limit)
            self._memory_limit = limit
        thread = threading.get_ident()
        if thread != self._stack_thread:
            stack = max(MIN_JS_STACK, min(MAX_JS_STACK, _thread_stack_size() // 2))
            self._ctx.set_max_stack_size(stack)  # never 0: a zero stack limit crashes the host
            self._stack_size, self._stack_thread = stack, thread

    def compile(self, source: str, strict: bool = False, time_limit: float | None = 60.0) -> None:
        """Evaluate the work text to a function, or raise WorkError (EBADWORK) saying why.

        A file-style work runs top-level code: ``time_limit`` bounds it (an endless loop there
        would otherwise hang ``prepare``).
        """
        try:
            source.encode("utf-8")
        except UnicodeEncodeError as e:  # the binding cannot pass lone surrogates into the engine
            raise WorkError(f"the work text contains an unpaired surrogate ({source[e.start]!r} at offset {e.start}); "
                            "write it as a \\u escape inside a string literal") from None
        self._deadline = time.monotonic() + time_limit if time_limit else None
        self._may_throw_null = _throws_null(source)
        try:
            result = self._call("compile", source, bool(strict))
        except SliceError as e:
            if e.code == ErrorCode.ESLICETOOSLOW:
                raise WorkError(f"evaluating the work took longer than {time_limit:g} s; the work text must "
                                "evaluate to a function quickly (move heavy set-up into the function)") from None
            raise WorkError(f"the work could not be evaluated: {e.message}") from None
        finally:
            self._deadline = None
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
        kind = err.get("name") or "Error"
        raise WorkError(f"the work does not compile: {kind}: {err['message']}{where}; "
                        f"{_other_language(source) or 'fix the work function' + chr(39) + 's source'}")

    def set_job(self, arguments: list[Any], modules: dict[str, str | bytes], spread: bool = False,
                bigint: bool = False) -> None:
        """Job arguments (passed after the datum), module sources for require(), whether a list
        datum is spread into separate arguments (multi-dimensional jobs), and whether every int
        crosses as a BigInt (the job option)."""
        self._bigint = bigint
        try:
            args_text = self._args_text = to_js(list(arguments), bigint)
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
            self._may_throw_null = self._may_throw_null or _throws_null(src)
        self._call("job", args_text, json.dumps(sources, ensure_ascii=True))
        self._call("spread", bool(spread))

    def run(self, ctx: SliceContext, datum: Any) -> Any:
        """Run one slice: call the work, settle promises and timers, return the decoded result."""
        try:
            datum_text = to_js(datum, self._bigint)
        except UnserializableValue as e:
            raise SliceError(f"the datum cannot be passed to JavaScript: {e}", code=ErrorCode.EUNSERIALIZABLE) from None
        limits = ctx.limits
        self.set_limits(limits.memory)
        self._slice = ctx
        self._tripped = None
        self._deadline = ctx.deadline
        self._cpu_deadline = time.process_time() + limits.cpu_time if limits.cpu_time else None
        self._progress_deadline = ctx.started + limits.progress_timeout if limits.progress_timeout else None
        try:
            envelope = self._call("start", datum_text, limits.output if limits.output is not None else -1)
            if envelope == "p":
                envelope = self._settle()
            else:
                # Jobs a synchronous work queued (queueMicrotask, .then) run now, under this slice's
                # limits: left queued they would run, and be blamed, in the next async slice.
                self._drain_jobs()
            return self._result(envelope)
        except SliceError as e:
            hint = bigint_hint(e.name, e.message, self._bigint, (datum_text, self._args_text))
            if not hint:
                raise
            raise SliceError(e.message + hint, code=e.code, stack=e.stack, name=e.name) from None
        finally:
            # Timers and promise state left by this slice are reset by the next "start".
            self._slice = None
            self._deadline = self._cpu_deadline = self._progress_deadline = None
            self._tripped = None

    def _settle(self) -> str:
        """Run jobs and timers until the work's promise settles; return the prelude's envelope."""
        while True:
            self._drain_jobs()
            envelope = self._call("poll")
            if envelope:
                return envelope
            delay = self._call("next")
            if delay < 0:
                raise SliceError(
                    "the work function's promise never settled and nothing is left to run (no timers, no "
                    "pending jobs); make sure every Promise it awaits resolves or rejects",
                    code=ErrorCode.EUNCAUGHT,
                )
            if delay > 0:
                self._sleep(delay / 1000.0)
            self._call("fire")

    def _drain_jobs(self) -> None:
        execute = self._ctx.execute_pending_job
        try:
            while execute():
                pass
        except self._quickjs.JSException as e:
            raise self._engine_error(e) from None

    def _sleep(self, seconds: float) -> None:
        """Wait for a timer, still honouring the wall, progress and cancel deadlines."""
        ctx = self._slice
        end = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            for deadline, code in ((self._deadline, ErrorCode.ESLICETOOSLOW), (self._progress_deadline, ErrorCode.ENOPROGRESS)):
                if deadline is not None and now > deadline:
                    raise _limit_error(code, ctx)
            if ctx is not None and ctx.cancelled:
                raise _limit_error(ErrorCode.ECANCELLED, ctx)
            if now >= end:
                return
            wake = min(d for d in (end, self._deadline, self._progress_deadline) if d is not None)
            time.sleep(min(0.05, max(0.0, wake - now) + 0.001))

    def _result(self, envelope: str) -> Any:
        kind, body = envelope[:1], envelope[1:]
        if kind == "v":
            return from_js(body)
        if kind == "e":
            err = json.loads(body)
            name, message = err.get("name"), err.get("message", "")
            if (name == "InternalError" and message == "out of memory") or (
                    name is None and message == "uncaught object thrown: null" and self._null_is_out_of_memory()):
                self._ctx.gc()
                raise SliceError(_memory_message(self._memory_limit), code=ErrorCode.EMEMORYLIMIT,
                                 name="InternalError")
            stack = err.get("stack") or ""
            full = f"{name}: {message}\n{stack}" if stack else None
            raise SliceError(_sanitize(message), code=ErrorCode.EUNCAUGHT, stack=full and _sanitize(full), name=name)
        if kind == "r":
            raise SliceError(f"work.reject: {_sanitize(json.loads(body))}", code=ErrorCode.EWORKREJECT)
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
        raise SliceError(f"internal error: unexpected reply {envelope[:40]!r} from the map-basic prelude", code=ErrorCode.ECRASH)

    def eval(self, source: str) -> Any:
        """Evaluate JS source and decode its value (tests and diagnostics)."""
        return self._result(self._call("eval", source))

    def memory(self) -> dict[str, int]:
        return self._ctx.memory()

    def close(self) -> None:
        self._op = None
        self._ctx = None


def _throws_null(source: str) -> bool:
    """Whether JavaScript source may throw or reject with ``null`` itself (then a ``null``
    exception is the work's own, not QuickJS out of memory)."""
    import re

    return re.search(r"\bthrow\b[^;\n]*\bnull\b|\breject\b\s*\([^)]*\bnull\b", source) is not None


def _other_language(source: str) -> str | None:
    """A hint when JavaScript that does not compile looks like another worktime's work."""
    import re

    if re.match(r"\s*(def |async def |import |from [\w.]+ import |class \w+.*:|lambda\b)", source):
        return "it looks like Python: deploy it with worktime='python'"
    if re.match(r"\s*\(module\b", source) or source.startswith("\0asm"):
        return "it looks like WebAssembly: deploy it with worktime='wasi'"
    return None


def _memory_message(limit: int) -> str:
    shown = format_size(limit) if limit > 0 else "the available memory"
    return f"the work used more than {shown} of JavaScript heap; raise the job's memory limit or process less data per slice"


def _limit_error(code: ErrorCode, ctx: SliceContext | None) -> SliceError:
    limits = ctx.limits if ctx is not None else None
    if code is ErrorCode.ESLICETOOSLOW:
        msg = f"the slice ran longer than its wall-time limit of {limits.wall_time:g} s" if limits and limits.wall_time else "the slice ran too long"
        msg += "; raise the job's wall_time limit or give each slice less work"
    elif code is ErrorCode.ENOPROGRESS:
        t = limits.progress_timeout if limits else None
        msg = (f"the work did not call progress() for {t:g} s" if t else "the work did not call progress()") + (
            "; call progress() regularly in long loops, or raise/disable the job's progress_timeout"
        )
    elif code is ErrorCode.ECPULIMIT:
        msg = f"the slice used more than {limits.cpu_time:g} s of CPU time" if limits and limits.cpu_time else "CPU limit exceeded"
        msg += "; raise the job's cpu_time limit or give each slice less work"
    elif code is ErrorCode.EOUTPUTLIMIT:
        cap = limits.output if limits else None
        msg = (f"console/emit traffic went over the output limit of {format_size(cap)}" if cap else "output limit exceeded")
        msg += "; log less, or raise the job's output limit"
    else:
        msg = "the slice was cancelled"
    return SliceError(msg, code=code, name="InternalError")
