"""map-basic on QuickJS: one QuickJS-ng context in the evaluator process.

Binding: ``quickjs-ng`` (see ``sandbox/mapbasic.md`` for the comparison with ``quickjs``). We use
its low-level ``_quickjs.Context`` directly and work around its traps:

* its time limit counts process CPU time and refuses Python callbacks while set, so we never use
  it: a ctypes interrupt handler installed with ``JS_SetInterruptHandler`` (exported by the
  extension) checks the wall-clock, CPU, progress and cancel deadlines. The runtime pointer is
  read from the ``Context`` object and verified with ``JS_GetRuntimeOpaque`` (the binding stores
  the context there) before anything is installed; if the check fails we run without an engine
  interrupt and the host runner kills on wall time;
* values cross as text (``marshal.py``), never through the binding's int/str conversions;
* the stack limit is never 0 (that crashes the host) and stays below the thread's C stack, which
  we make big enough for deep recursion (the PyPI wheel's interpreter frames are ~3x bigger than
  a GCC 12 build's, see ``stack_budget``);
* one context per evaluator process: a new job replaces the previous context.

Example (in-process; the runner does the same inside a sandboxed evaluator)::

    engine = QuickJSEngine()
    engine.set_job(arguments=[3], modules={})
    engine.compile("function (x, k) { progress(); return x * k }")
    engine.run(SliceContext(0, Limits()), 7)        # -> 21
"""

from __future__ import annotations

import base64
import ctypes
import functools
import json
import os
import re
import resource
import threading
import time
from typing import Any

from ...errors import ErrorCode, SliceError
from ...worktime import Block, SliceContext
from .engine import PRELUDE, NEVER_SETTLED, Engine, datum_error, datum_text, limit_error, memory_message, sanitize
from .marshal import from_js, to_js_each

_plain_json = json.JSONDecoder().decode

#: JS stack budget: half of the calling thread's C stack, clamped (QuickJS's default is 1 MiB).
MIN_JS_STACK = 256 * 1024
MAX_JS_STACK = 32 * 1024 * 1024
#: The main thread's stack grows on demand up to RLIMIT_STACK: we raise a smaller soft limit to
#: this, so that ~3000-deep recursion works even with the PyPI wheel's big interpreter frames.
MAIN_STACK = 64 * 1024 * 1024

#: Seconds a ``run_block`` call runs before the slices it ended are settled and sent on, at a
#: ``progress()`` call of the slice running then (``_hand_over``), as V8's block sends its results
#: on when it waits (``Block.flush``). Between slices the call's budget (``Block.budget``, 20 ms)
#: returns them first; a long slice that never calls ``progress()`` still holds them until it ends.
HAND_OVER_AFTER = 0.05

#: Most datums sent to one ``run_block`` call (the call stops at its time budget anyway).
MAX_BLOCK_CHUNK = 4096
#: Most characters of datum text sent to one ``run_block`` call (at least one datum is sent), and
#: of results held in the call before it returns them (at least one): both live in the engine's
#: heap, under the job's memory limit, which each datum and each result alone fits.
MAX_BLOCK_TEXT = 1 << 20
#: Longest a failed slice's queued jobs are run to drop them: well under the host watchdog's 0.5 s
#: of grace past a limit (a kill it cannot pin on one slice of a block runs that slice again).
DISCARD_SECONDS = 0.1

_INTERRUPT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


def _pthread_stack_size() -> int | None:
    """Bytes of C stack of the calling thread, as glibc reports them (``pthread_getattr_np``; for
    the main thread that follows the current RLIMIT_STACK), or ``None`` where unavailable."""
    try:
        libc = ctypes.CDLL(None)
        libc.pthread_self.restype = ctypes.c_ulong
        libc.pthread_getattr_np.argtypes = [ctypes.c_ulong, ctypes.c_void_p]
        libc.pthread_attr_getstack.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        attr = ctypes.create_string_buffer(128)  # sizeof(pthread_attr_t) is 56 on x86-64 glibc
        if libc.pthread_getattr_np(libc.pthread_self(), attr) != 0:
            return None
        try:
            addr, size = ctypes.c_void_p(), ctypes.c_size_t()
            if libc.pthread_attr_getstack(attr, ctypes.byref(addr), ctypes.byref(size)) != 0:
                return None
            return size.value or None
        finally:
            libc.pthread_attr_destroy(attr)
    except (OSError, AttributeError):
        return None


def _raise_main_stack() -> None:
    """Let the main thread's stack grow to MAIN_STACK (it is reserved, not used, until recursed into)."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
        if soft != resource.RLIM_INFINITY and soft < MAIN_STACK:
            want = MAIN_STACK if hard == resource.RLIM_INFINITY else min(MAIN_STACK, hard)
            if want > soft:
                resource.setrlimit(resource.RLIMIT_STACK, (want, hard))
    except (ValueError, OSError):
        pass


def stack_budget() -> int:
    """The JS stack limit for the calling thread: half its C stack, within [256 KiB, 32 MiB]."""
    if threading.current_thread() is threading.main_thread():
        _raise_main_stack()
    size = _pthread_stack_size()
    if size is None:  # no glibc: the old guesses (main thread: RLIMIT_STACK; others: 2 MiB)
        soft, _ = resource.getrlimit(resource.RLIMIT_STACK)
        main = threading.current_thread() is threading.main_thread()
        size = soft if main and soft != resource.RLIM_INFINITY and soft > 0 else (threading.stack_size() or 2 << 20)
    return max(MIN_JS_STACK, min(MAX_JS_STACK, size // 2))


class QuickJSEngine(Engine):
    """A QuickJS runtime + context with the prelude loaded. Not thread-safe: one slice at a time."""

    name = "quickjs"

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
        # Block mode (run_block): the block, its slices' positions and datum texts, the position of
        # the slice running, and the envelope of a slice that ended with jobs still to run.
        self._blk: Block | None = None
        self._blk_indexes: list[int] = []
        self._blk_texts: list[str] = []
        self._cur = -1
        # Positions of the call settled already (handed over while it ran: _hand_over), and when.
        self._handed, self._handed_at = 0, 0.0
        self._chunk = 16  # datums encoded per run_block call (grows up to MAX_BLOCK_CHUNK)
        # The block's limits, read once per call (the per-slice callback sets each slice's deadlines),
        # and the start of the running slice's CPU clock, read at its first interrupt (_interrupt).
        self._blk_wall: float | None = None
        self._blk_patience: float | None = None
        self._blk_cpu: float | None = None
        self._cpu_from: float | None = None
        self._job_pending = self._jobs_probe()
        self.poisoned = False  # a failed slice's jobs could not be dropped: replace this context
        self._ctx.add_callable("__dcpHost", self._host)
        self._ctx.add_callable("__dcpNext", self._next_in_block)
        self._op = self._ctx.eval(PRELUDE)

    # -- the C API behind the binding -----------------------------------------------------------
    def _runtime(self) -> tuple[ctypes.CDLL, int] | None:
        """The extension's library and this context's ``JSRuntime`` pointer, or ``None`` when the
        pointer cannot be verified (then nothing is called through it)."""
        try:
            lib = ctypes.CDLL(self._quickjs.__file__)
            lib.JS_GetRuntimeOpaque.restype = ctypes.c_void_p
            lib.JS_GetRuntimeOpaque.argtypes = [ctypes.c_void_p]
            # RuntimeData starts with PyObject_HEAD, then the JSRuntime pointer.
            rt = ctypes.c_void_p.from_address(id(self._ctx) + object.__basicsize__).value
            if not rt or lib.JS_GetRuntimeOpaque(rt) != id(self._ctx):
                return None
            return lib, rt
        except (OSError, AttributeError, ValueError):
            return None

    # -- interrupt ------------------------------------------------------------------------------
    def _install_interrupt(self) -> bool:
        found = self._runtime()
        if found is None:
            return False
        lib, rt = found
        try:
            lib.JS_SetInterruptHandler.restype = None
            lib.JS_SetInterruptHandler.argtypes = [ctypes.c_void_p, _INTERRUPT, ctypes.c_void_p]
        except AttributeError:
            return False
        self._handler = _INTERRUPT(self._interrupt)  # keep a reference: QuickJS holds a raw pointer
        lib.JS_SetInterruptHandler(rt, self._handler, None)
        return True

    def _interrupt(self, _rt: int, _opaque: int) -> int:
        # Runs every ~10k JS operations with the GIL re-acquired: keep it cheap and never raise.
        try:
            now = time.monotonic()
            self._start_cpu_clock(now)
            if self._deadline is not None and now > self._deadline:
                self._tripped = ErrorCode.ESLICETOOSLOW
            elif self._progress_deadline is not None and now > self._progress_deadline:
                self._tripped = ErrorCode.ENOPROGRESS
            elif self._cpu_deadline is not None and time.process_time() > self._cpu_deadline:
                self._tripped = ErrorCode.ECPULIMIT
            elif self._slice is not None and self._slice.cancelled:
                self._tripped = ErrorCode.ECANCELLED
            elif self._blk is not None and self._blk.cancelled:
                self._tripped = ErrorCode.ECANCELLED
            elif self._slice is not None and self._slice.over_quota:
                self._tripped = ErrorCode.EOUTPUTLIMIT
            else:
                return 0
            return 1
        except BaseException:  # noqa: BLE001 - an exception here would be printed and ignored
            return 1

    def _start_cpu_clock(self, now: float) -> None:
        """Set the running block slice's CPU deadline, if it is not set yet. It is read at the slice's first interrupt
        (or host call, or promise), not as the slice starts: a CPU clock read costs 0.6 µs, as much
        as the rest of a trivial slice's host work, and most slices end before any of those. The
        CPU it used until then is counted as the wall time since it started: the engine runs on
        this one thread and it has done nothing but compute meanwhile (an interrupt comes every
        ~10k operations; a host call or a promise's wait starts the clock before waiting)."""
        if self._cpu_from is not None:
            self._cpu_deadline = time.process_time() + self._blk_cpu - (now - self._cpu_from)  # type: ignore[operator]
            self._cpu_from = None

    # -- host callbacks (called by the prelude through __dcpHost) -------------------------------
    def _host(self, op: str, a: Any = None, b: Any = None) -> str | None:
        # Exceptions must not escape into the binding (it would leave a Python error pending).
        if op == "wake":  # the slice settled: this engine's loop (_settle) polls after every job run
            return None
        if op == "held":  # host work, timed with the running slice (its clocks run already)
            try:
                self._hand_over(a)
            except BaseException as e:  # noqa: BLE001 - see above
                return f"!{op}: {e}"
            return None
        try:
            self._start_cpu_clock(time.monotonic())  # before anything that may wait (a full pipe)
            if op == "random":
                return base64.b64encode(os.urandom(int(a))).decode("ascii")
            ctx = self._slice or self._block_slice()
            if ctx is None:
                return None  # console output while compiling the work or a module: dropped
            if op == "progress":
                # block mode: b is the highest value the prelude did not pass on
                ctx.progress(from_js(a), highest_before=float(b) if b is not None else None)
                timeout = ctx.limits.progress_timeout
                now = time.monotonic()
                if timeout is not None:
                    self._progress_deadline = now + timeout
                if self._blk is not None and self._cur > self._handed and now - self._handed_at > HAND_OVER_AFTER:
                    return "h"  # a long block slice: the prelude hands over the ended ones (_hand_over)
            elif op == "console":
                ctx.console(a, sanitize(json.loads(b)))
            elif op == "emit":
                ctx.emit(sanitize(json.loads(a)), from_js(b))
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
            return limit_error(tripped, self._slice or self._block_slice())
        if "out of memory" in first or (first.strip() == "null" and self._null_is_out_of_memory()):
            self._ctx.gc()
            return SliceError(memory_message(self._memory_limit), code=ErrorCode.EMEMORYLIMIT, name="InternalError")
        if isinstance(e, self._quickjs.StackOverflow):
            return SliceError(f"{first} (recursion too deep)", code=ErrorCode.EUNCAUGHT, stack=stack, name="RangeError")
        if "Failed obtaining QuickJS error string" in first:  # the binding's words when printing it threw
            return SliceError("the work threw a value that cannot be printed (its toString throws)",
                              code=ErrorCode.EUNCAUGHT)
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
            stack = stack_budget()
            self._ctx.set_max_stack_size(stack)  # never 0: a zero stack limit crashes the host
            self._stack_size, self._stack_thread = stack, thread

    def _operation(self, op: str, a: str = "", b: str = "", time_limit: float | None = None) -> str:
        self._deadline = time.monotonic() + time_limit if time_limit else None
        try:
            return self._call(op, a, b)
        finally:
            self._deadline = None

    def compile(self, source: str, strict: bool = False, time_limit: float | None = 60.0) -> None:
        self._may_throw_null = self._may_throw_null or _throws_null(source)
        super().compile(source, strict, time_limit)

    def set_job(self, arguments: list[Any], modules: dict[str, str | bytes], spread: bool = False,
                bigint: bool = False) -> None:
        self._may_throw_null = any(_throws_null(src if isinstance(src, str) else src.decode("utf-8", "replace"))
                                   for src in modules.values())
        super().set_job(arguments, modules, spread, bigint)

    def run(self, ctx: SliceContext, datum: Any) -> Any:
        """Run one slice: call the work, settle promises and timers, return the decoded result."""
        text = self._datum_text = datum_text(datum, self._bigint)
        limits = ctx.limits
        self.set_limits(limits.memory)
        self._slice = ctx
        self._tripped = None
        self._deadline = ctx.deadline
        self._cpu_deadline = time.process_time() + limits.cpu_time if limits.cpu_time else None
        self._progress_deadline = ctx.started + limits.progress_timeout if limits.progress_timeout else None
        try:
            envelope = self._call("start", text, limits.output if limits.output is not None else -1)
            if envelope == "p":
                envelope = self._settle()
            else:
                # Jobs a synchronous work queued (queueMicrotask, .then) run now, under this slice's
                # limits: left queued they would run, and be blamed, in the next async slice.
                self._drain_jobs()
            return self._result(envelope)
        except BaseException:
            self._discard_jobs()
            raise
        finally:
            # Timers and promise state left by this slice are reset by the next "start".
            self._slice = None
            self._deadline = self._cpu_deadline = self._progress_deadline = None
            self._tripped = None

    # -- block mode -------------------------------------------------------------------------------
    @property
    def runs_blocks(self) -> bool:
        """Whether ``run_block`` can keep per-slice semantics here (it needs the engine interrupt
        for per-slice deadlines and ``JS_IsJobPending`` to run each slice's jobs in its turn)."""
        return self.interrupt_installed and self._job_pending is not None

    def run_block(self, block: Block, indexes: list[int], budget: float) -> None:
        """Run the slices ``indexes`` of ``block``, settling each (``block.done``/``failed``), for
        about ``budget`` seconds: synchronous slices run back to back in one call into the engine
        (the prelude's ``__dcpBlock``), each still under its own wall, CPU and no-progress
        deadlines (set when the prelude says it starts, ``_next_in_block``), its events on its own
        context (made when it first logs), its queued jobs run before the next slice starts. A
        slice whose result is a promise is settled here as ``run`` does; a limit hit fails only
        the slice it hit. Returns when the budget is spent, at the end, or after a promise."""
        # Encode only what this call may run: a chunk that grows while calls finish it in budget.
        datums = block.datums
        texts, bad = to_js_each([datums[i] for i in indexes[:self._chunk]], self._bigint, MAX_BLOCK_TEXT)
        if not texts:  # the first datum cannot enter the engine: that slice fails alone
            if bad is not None:
                block.failed(indexes[0], datum_error(bad))
            return
        limits = block.limits
        self.set_limits(limits.memory)
        self._blk, self._blk_indexes, self._blk_texts = block, indexes[:len(texts)], texts
        self._blk_wall, self._blk_patience = limits.wall_time or None, limits.progress_timeout or None
        self._blk_cpu = limits.cpu_time or None
        self._cur, self._tripped = -1, None
        self._handed, self._handed_at = 0, time.monotonic()
        cap = limits.output if limits.output is not None else -1
        try:
            try:
                reply = self._call("block", "\n".join(texts), f"[{cap},{max(1, int(budget * 1000))},{MAX_BLOCK_TEXT}]")
            except SliceError as e:  # a limit, or the engine failed, during slice _cur
                self._settle_ended(self._ended_after_error()[:self._cur + 1 - self._handed])
                if self._cur >= self._handed:  # it had not ended (when it had, the call broke between slices)
                    self._failed(block, self._blk_indexes[self._cur], e)
                elif len(texts) > 1:  # before the first slice (out of memory taking the chunk): one alone
                    self._chunk = 1
                    self._blk = None
                    self.run_block(block, indexes[:1], budget)
                else:  # as "start" would: that slice fails
                    self._failed(block, indexes[0], e)
                return
            kind = reply[:1]
            ended = reply[1:].split("\n") if len(reply) > 1 else []
            if kind == "p":  # slices 0.._cur-1 ended; slice _cur's result is a promise
                self._settle_ended(ended[:self._cur - self._handed])
                self._start_cpu_clock(time.monotonic())  # before its timers' waits, which are no CPU
                self._slice = self._block_slice()
                try:
                    envelope = self._settle()
                except SliceError as e:
                    self._failed(block, self._blk_indexes[self._cur], e)
                    return
                self._finalize(self._cur, envelope)
                return
            if kind == "d" and len(texts) == self._chunk:
                self._chunk = min(self._chunk * 2, MAX_BLOCK_CHUNK)
            # "d" or "s": slices 0.._cur ended; the last may have left jobs queued, to run under its
            # limits before its result counts.
            if not ended or len(ended) != self._cur + 1 - self._handed:  # the prelude names every slice started
                self._failed(block, self._blk_indexes[max(self._cur, 0)], SliceError(
                    f"internal error: unexpected reply {reply[:40]!r} from the map-basic prelude", code=ErrorCode.ECRASH))
                return
            if not self._job_pending():
                self._settle_ended(ended)
                return
            self._settle_ended(ended[:-1])
            self._finish_held(ended[-1])
        finally:
            self._blk, self._slice = None, None
            self._deadline = self._cpu_deadline = self._progress_deadline = self._cpu_from = None
            self._tripped = None

    def _next_in_block(self) -> str | None:
        """The prelude is about to start the next slice of the block (the one after ``_cur``).
        Returns ``"stop"`` when the slice that ended left jobs queued: they run under its limits,
        outside this call, before its result counts (``_finish_held``). Called once per slice
        with no arguments (see the prelude's ``__dcpBlock``): keep it lean."""
        try:
            cur = self._cur
            if cur >= 0 and self._job_pending():
                return "stop"
            self._cur = cur = cur + 1
            self._slice = None  # made on first use (_block_slice): most slices log nothing
            self._blk.starting(self._blk_indexes[cur])  # type: ignore[union-attr]
            now = time.monotonic()
            self._deadline = now + self._blk_wall if self._blk_wall else None
            self._progress_deadline = now + self._blk_patience if self._blk_patience else None
            self._cpu_deadline, self._cpu_from = None, (now if self._blk_cpu else None)
            return None
        except BaseException as e:  # noqa: BLE001 - it must not escape into the binding
            return f"!next slice: {e}"

    def _block_slice(self) -> SliceContext | None:
        """The running block slice's context, made on first use."""
        if self._blk is None or self._cur < 0:
            return None
        if self._slice is None:
            self._slice = self._blk.context(self._blk_indexes[self._cur])
        return self._slice

    def _ended_after_error(self) -> list[str]:
        """The envelopes of the block's slices that ended before a call unwound (a limit, the
        engine failing), from the prelude; none if even that call fails (out of memory: those
        slices stay pending and run again)."""
        saved = self._blk
        self._blk = None  # the slice's clocks and cancel are not this call's, only a bound of its own
        self._deadline = time.monotonic() + 1.0
        self._cpu_deadline = self._progress_deadline = self._cpu_from = None
        self._slice, self._tripped = None, None
        try:
            text = self._call("ended")
        except SliceError:
            return []
        finally:
            self._blk, self._deadline, self._tripped = saved, None, None
        return text.split("\n") if text else []

    def _finish_held(self, envelope: str) -> None:
        """Run the jobs slice ``_cur`` queued (under its limits, still running), then settle it."""
        if self._job_pending():
            self._slice = self._block_slice()
            try:
                self._drain_jobs()
            except SliceError as e:
                self._failed(self._blk, self._blk_indexes[self._cur], e)  # type: ignore[union-attr]
                return
        self._finalize(self._cur, envelope)

    def _failed(self, block: Block, i: int, e: BaseException) -> None:
        """Fail block slice ``i`` with ``e``, first dropping the jobs it left queued."""
        self._discard_jobs()
        block.failed(i, e)

    def _hand_over(self, text: str) -> None:
        """``held``: the prelude gives up the envelopes of the slices that ended so far in this
        call (a ``progress()`` call was answered ``"h"``, the call having run ``HAND_OVER_AFTER``);
        settle them and send their outcomes on now."""
        self._settle_ended(text.split("\n") if text else [])
        self._blk.flush()  # type: ignore[union-attr]
        self._handed_at = time.monotonic()

    def _settle_ended(self, ended: list[str]) -> None:
        """Settle the call's next ``len(ended)`` slices (from position ``_handed``) from their
        envelopes (the prelude's), in order: plain JSON values (the usual case) decode as one
        array, anything else one by one (``_result``)."""
        if not ended:
            return
        first, self._handed = self._handed, self._handed + len(ended)
        if all(env[:2] == "v0" for env in ended):
            try:
                values = _plain_json("[" + ",".join([env[2:] for env in ended]) + "]")
            except (ValueError, RecursionError):  # a deep value: one by one, it fails alone
                pass
            else:
                self._blk.done_many(self._blk_indexes[first:first + len(ended)], values)  # type: ignore[union-attr]
                return
        for pos, env in enumerate(ended, first):
            self._finalize(pos, env)

    def _finalize(self, pos: int, envelope: str) -> None:
        block = self._blk
        assert block is not None
        i = self._blk_indexes[pos]
        self._datum_text = self._blk_texts[pos]
        if envelope[:1] == "o":
            self._slice = self._block_slice()  # its message names the slice's limit
        try:
            value = self._result(envelope)
        except Exception as e:  # noqa: BLE001 - as from run (RecursionError of a deep value ...): this slice's
            block.failed(i, e)
        else:
            block.done(i, value)

    def _jobs_probe(self):
        """A function telling whether the engine has jobs queued (``JS_IsJobPending``)."""
        found = self._runtime()
        if found is None:
            return None
        lib, rt = found
        try:
            # PyDLL: called once per block slice, and it only reads a list head, so the GIL stays held.
            pending = ctypes.PyDLL(lib._name).JS_IsJobPending
        except (AttributeError, OSError):
            return None
        pending.restype = ctypes.c_bool  # bool in quickjs-ng: the upper bytes of the register are garbage
        # The pointer as a c_void_p, bound once (no argtypes: nothing converted per call).
        return functools.partial(pending, ctypes.c_void_p(rt))

    def _settle(self) -> str:
        """Run jobs and timers until the work's promise settles; return the prelude's envelope."""
        while True:
            self._drain_jobs()
            envelope = self._call("poll")
            if envelope:
                # Encoding the result may run job code (a getter, an error's message): the jobs
                # that queued are this slice's too.
                self._drain_jobs()
                return envelope
            delay = self._call("next")
            if delay < 0:
                return "N"  # never settled: nothing left to run
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

    def _discard_jobs(self) -> None:
        """Drop the jobs a failed slice left queued (a second job that throws, a finalizer's,
        what a limit interrupted): the slice's error is its first, and left queued they would run,
        and fail, in the next slices. QuickJS cannot clear its queue, so each runs past a deadline
        already spent: one that loops is interrupted at its next check (every ~10k operations),
        a short one runs to its end, its errors and output dropped. Jobs that outlast
        ``DISCARD_SECONDS`` (each queueing two) make the engine ``poisoned``: the worktime loads
        the job into a fresh context before the next slice."""
        saved = self._slice, self._blk, self._deadline, self._progress_deadline, self._cpu_deadline, self._cpu_from
        self._slice = self._blk = None  # nobody's: their console output goes nowhere
        self._progress_deadline = self._cpu_deadline = self._cpu_from = None
        now = time.monotonic()
        self._deadline, end = now - 1.0, now + DISCARD_SECONDS
        execute = self._ctx.execute_pending_job
        try:
            while time.monotonic() <= end:
                try:
                    if not execute():  # False: none was queued
                        return
                except self._quickjs.JSException:
                    pass
            self.poisoned = True
        finally:
            (self._slice, self._blk, self._deadline, self._progress_deadline, self._cpu_deadline,
             self._cpu_from) = saved
            self._tripped = None

    def _sleep(self, seconds: float) -> None:
        """Wait for a timer, still honouring the wall, progress and cancel deadlines."""
        ctx = self._slice
        end = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            for deadline, code in ((self._deadline, ErrorCode.ESLICETOOSLOW), (self._progress_deadline, ErrorCode.ENOPROGRESS)):
                if deadline is not None and now > deadline:
                    raise limit_error(code, ctx)
            if ctx is not None and ctx.cancelled:
                raise limit_error(ErrorCode.ECANCELLED, ctx)
            if now >= end:
                return
            wake = min(d for d in (end, self._deadline, self._progress_deadline) if d is not None)
            time.sleep(min(0.05, max(0.0, wake - now) + 0.001))

    def _is_out_of_memory(self, name: str | None, message: str) -> bool:
        return (name == "InternalError" and message == "out of memory") or (
            name is None and message == "uncaught object thrown: null" and self._null_is_out_of_memory())

    def _forget_garbage(self) -> None:
        self._ctx.gc()

    def memory(self) -> dict[str, int]:
        return self._ctx.memory()

    def close(self) -> None:
        self._op = None
        self._ctx = None


def _throws_null(source: str) -> bool:
    """Whether JavaScript source may throw or reject with ``null`` itself (then a ``null``
    exception is the work's own, not QuickJS out of memory)."""
    return re.search(r"\bthrow\b[^;\n]*\bnull\b|\breject\b\s*\([^)]*\bnull\b", source) is not None
