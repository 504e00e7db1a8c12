"""map-basic on V8: the job's JavaScript runs in a Deno process that this evaluator starts and drives.

Deno comes from the ``deno`` package on PyPI (``pip install deno``: the Deno binary, V8 inside).
One Deno process per job, started in ``prepare`` and kept across the job's slices
(``v8_host.js`` is the program it runs; its header describes the two threads and the frames):

* **no permissions at all**: no ``--allow-*`` flag and ``--no-prompt``, so files, network,
  environment, subprocesses, FFI and system information fail with ``NotCapable``; ``--no-remote``
  and ``--no-npm`` refuse code from outside; an import map sends every ``node:`` built-in to a
  module that throws, so ``import()`` reaches nothing of the host either; ``--no-config`` and
  ``--no-lock`` ignore files in the working directory. The process inherits the evaluator's
  layers (empty network namespace, no core dumps) and dies with it (``PR_SET_PDEATHSIG``);
* **the work's realm** holds ECMAScript, the prelude's globals and what QuickJS-ng also offers
  (no ``Deno``, ``fetch``, ``Worker``; ``WebAssembly`` only with the job option ``webassembly``);
* **replies**: Deno writes the replies of a request's slices several to a frame, and each slice
  keeps its own limits, events and errors (the rules: ``v8_host.js``'s header);
* **limits**: this side watches the wall-time, no-progress, CPU-time, cancel and output deadlines
  while it waits for the slice's reply, and on a violation asks Deno to stop the work with V8's
  TerminateExecution (``SIGUSR2``, answered by a ``K`` frame); Deno then starts a fresh sandbox and
  the job is loaded into it again. Memory: V8's heap is capped at the job's memory limit
  (``--max-heap-size``); V8 ends the process when the work goes over it, which we report as
  ``EMEMORYLIMIT`` and start a new process. The runner's RSS and wall-time guards stay behind all
  of this.

Example (what ``MapBasic`` does in an evaluator)::

    engine = V8Engine(memory=64 << 20)
    engine.set_job(arguments=[3], modules={})
    engine.compile("function (x, k) { progress(); return x * k }")
    engine.run(SliceContext(0, Limits()), 7)        # -> 21
"""

from __future__ import annotations

import collections
import ctypes
import json
import os
import resource
import select
import signal
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from ...errors import ErrorCode, SliceError, WorkError
from ...limits import Limits
from ...worktime import Block, SliceContext
from .engine import PRELUDE, Engine, datum_text, limit_error, memory_message, sanitize
from .marshal import from_js

_plain_json = json.JSONDecoder().decode

HOST_JS = Path(__file__).with_name("v8_host.js")

#: Progress calls reach us at most this often (``FORWARD`` in v8_host.js): added to the
#: no-progress deadline, so that a slice is never stopped early.
FORWARD_SLACK = 0.05
#: Deno holds back the replies of a request's slices for at most this long (``HELD_MS`` in
#: v8_host.js) before it writes them: we may think a slice started that much before it did, so
#: that much is added to its wall-time and no-progress deadlines.
HELD_SLACK = 0.002
#: How often cancel and CPU time are checked while a slice runs.
POLL = 0.05
#: Seconds Deno gets to stop the work and answer before we kill its process instead.
STOP_GRACE = 3.0
#: Seconds a fresh Deno process gets to answer its first request.
START_TIMEOUT = 30.0
#: V8 heap of the Deno runtime itself in the sandbox (its JavaScript, the prelude), added to the
#: job's memory limit; and the smallest heap we start with (below ~6 MiB Deno cannot start).
RUNTIME_HEAP_MB = 8
MIN_HEAP_MB = 16
#: At most this many slices, and this many bytes of their datums, go with a request ahead of time.
AHEAD_SLICES = 1024
AHEAD_BYTES = 1 << 20
#: Slices of a block ``run_block`` considers per call (it returns within its budget anyway).
AHEAD_WINDOW = 2048
#: Bytes of Deno's stderr kept for error messages (the rest is dropped as it comes).
STDERR_TAIL = 16 * 1024

_HEADER = struct.Struct("<IB")
_LEN = struct.Struct("<I")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1


def deno_binary() -> str | None:
    """The Deno binary of the installed ``deno`` package, or ``None``."""
    try:
        from deno import find_deno_bin
    except ImportError:
        return None
    try:
        path = find_deno_bin()
    except (FileNotFoundError, OSError):
        return None
    return path if os.access(path, os.X_OK) else None


def deno_version() -> str | None:
    """The installed ``deno`` package's version (the Deno release it ships), without running it."""
    from ...cache import package_version

    return package_version("deno", "deno")


def _cache_dir() -> Path:
    """``$DCP_WORKTIMES_CACHE/deno/<version>`` (or the user cache dir): Deno's own cache and our
    import map live there."""
    from ...cache import cache_root

    return cache_root("deno", deno_version() or "unknown")


_BLOCKED = ("data:text/javascript," + quote(
    "throw new Error('import() of host modules is not available in map-basic: ship the code the work needs "
    "in the job\\'s modules and require() it')", safe=""))


def _import_map(binary: str, env: dict[str, str]) -> Path:
    """An import map sending every ``node:`` built-in of this Deno (bare and prefixed) to a module
    that throws. Listed once per Deno version (``node:module``'s ``builtinModules``) and cached."""
    folder = _cache_dir()
    path = folder / "import-map.json"
    if path.is_file():
        return path
    script = "import('node:module').then((m) => console.log(JSON.stringify(m.builtinModules)))"
    out = subprocess.run([binary, "eval", "--no-config", "--no-lock", script], capture_output=True, text=True,
                         env=env, timeout=START_TIMEOUT, check=True)
    names = set()
    for name in json.loads(out.stdout):
        bare = name.removeprefix("node:")
        names.update((bare, f"node:{bare}"))
    text = json.dumps({"imports": {name: _BLOCKED for name in sorted(names)}}, indent=0)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".import-map.{os.getpid()}.json"
        tmp.write_text(text)
        os.replace(tmp, path)
        return path
    except OSError:  # a read-only cache: a private copy for this process
        fd, name = tempfile.mkstemp(prefix="dcp-deno-import-map-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return Path(name)


_prctl = None
_libc_signal = None

#: The largest file Deno may write (``RLIMIT_FSIZE``). It writes only its caches in ``DENO_DIR``,
#: shared by every job on this machine, and work may add to them without end: each
#: ``import("data:...")`` of a new module stored its analysis and code cache (2.5 MB per 200 KB
#: module). Past the cap a write fails (``EFBIG``, with ``SIGXFSZ`` ignored) and Deno goes on
#: without caching it. The caches of our own code take well under 1 MB.
DENO_FILE_CAP = 16 << 20
_SIGXFSZ = int(signal.SIGXFSZ)


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: only a call of a function looked up beforehand
    (no dlopen, no imports: the evaluator has other threads, which fork does not copy)."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if _libc_signal is not None:
        _libc_signal(_SIGXFSZ, 1)  # SIG_IGN: the write fails instead of the process dying
        # Never above a cap the worker's owner set lower (`ulimit -f`): raising a hard limit fails,
        # and a failing preexec_fn read as the job's fault cancelled every map-basic job here.
        _soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        cap = DENO_FILE_CAP if hard == resource.RLIM_INFINITY else min(DENO_FILE_CAP, hard)
        resource.setrlimit(resource.RLIMIT_FSIZE, (cap, cap))


class _Stopped(Exception):
    """Deno stopped the work (``K``): the sandbox is fresh and the job must be loaded again."""


class _Died(Exception):
    """The Deno process is gone (V8 out of heap, killed, crashed)."""


class _Failed(Exception):
    """The slice finished, but an event of its own broke a limit: it fails (the sandbox is intact)."""


class _Retry(Exception):
    """Deno died with slices after the current one in flight: run the current one again alone."""


class V8Engine(Engine):
    """A Deno process running the map-basic prelude for one job. Not thread-safe."""

    name = "v8"

    def __init__(self, memory: int | None = None, webassembly: bool = False) -> None:
        self._memory_limit = int(memory) if memory else 0
        self._webassembly = bool(webassembly)
        self._proc: subprocess.Popen | None = None
        self._buf = bytearray()
        self._held: collections.deque[str] = collections.deque()  # replies of slices after the current one
        # (slice number, limit): Deno was stopped while it ran that slice, which went ahead with an
        # earlier request (the slices before it had finished; their replies were held).
        self._charged: tuple[int, ErrorCode] | None = None
        self._careful = 0  # send this many next slices alone (after Deno died with slices in flight)
        self._running_since: float | None = None  # when the slice after the held replies started
        self._slice_events = False  # the current slice delivered an event
        self._stderr: collections.deque[bytes] = collections.deque()
        self._stderr_size = 0
        # The job, kept to load it again into a fresh sandbox after a stop: [(op, a, b), ...].
        self._replay: list[tuple[str, str, str]] = []
        self._stale = False  # the sandbox was replaced: replay the job before the next request
        self._slice: SliceContext | None = None
        # Block mode (run_block): the block and the running slice's index, its context made only
        # when the slice logs or fails at a limit (most slices never need one).
        self._blk: Block | None = None
        self._blk_i: int | None = None
        # Called once when a request has waited POLL without a frame (run_block: settle and send
        # the slices that finished before the one we wait for, which may hang until its limit).
        self._on_long_wait: Callable[[], None] | None = None
        self._progress_deadline: float | None = None
        self._cpu_deadline: float | None = None
        self._event_error: SliceError | None = None
        self._batch: list = []  # the evaluator's current batch (prefetch)
        self._batch_at: dict[int, int] = {}  # slice number -> its position in _batch
        # Slices Deno runs after the current one: (number, datum text; the text for bigint_hint).
        self._ahead_sent: collections.deque[tuple[int, str]] = collections.deque()
        self._ready()

    # -- the process ------------------------------------------------------------------------------
    def _start(self) -> None:
        binary = deno_binary()
        if binary is None:
            raise SliceError("map-basic on V8 needs Deno: pip install 'deno>=2.9'", code=ErrorCode.ENOWORKTIME,
                             worker_fault=True)
        global _prctl, _libc_signal
        if _prctl is None:
            libc = ctypes.CDLL(None)
            _libc_signal = libc.signal
            _libc_signal.argtypes, _libc_signal.restype = [ctypes.c_int, ctypes.c_void_p], ctypes.c_void_p
            _prctl = libc.prctl
        cache = _cache_dir()
        env = {"DENO_DIR": str(cache / "deno-dir"), "NO_COLOR": "1", "DENO_NO_UPDATE_CHECK": "1",
               "DENO_NO_PACKAGE_JSON": "1", "PATH": os.defpath}
        import_map = _import_map(binary, env)
        heap_mb = max(MIN_HEAP_MB, RUNTIME_HEAP_MB - (-self._memory_limit // (1 << 20))) if self._memory_limit else 0
        # KiB of JS stack: half the sandbox worker thread's 4 MiB C stack (V8's limit is checked on
        # JS calls only; C++ built-ins near it need headroom: 4500 already crashes Deno here).
        v8_flags = ["--stack-size=2000"]
        if heap_mb:
            v8_flags.append(f"--max-heap-size={heap_mb}")
        cmd = [binary, "run", "--no-prompt", "--no-config", "--no-lock", "--no-remote", "--no-npm",
               f"--import-map={import_map}", f"--v8-flags={','.join(v8_flags)}", str(HOST_JS)]
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          env=env, cwd=tempfile.gettempdir(), preexec_fn=_die_with_parent, bufsize=0)
        except (OSError, subprocess.SubprocessError) as e:  # this machine's fault, never the job's
            raise WorkError(f"Deno ({binary}) could not be started here: {type(e).__name__}: {e}",
                            code=ErrorCode.ENOWORKTIME) from None
        self._buf.clear()
        self._to_deno, self._from_deno = self._proc.stdin.fileno(), self._proc.stdout.fileno()
        self._poll = select.poll()
        self._poll.register(self._from_deno, select.POLLIN)
        threading.Thread(target=self._drain_stderr, args=(self._proc.stderr,), daemon=True).start()
        self._reload()

    def _drain_stderr(self, pipe) -> None:
        # Deno's stderr must never fill up (it would block the engine); keep its tail for messages.
        fd = pipe.fileno()
        try:
            for chunk in iter(lambda: os.read(fd, 4096), b""):
                self._stderr.append(chunk)
                self._stderr_size += len(chunk)
                while self._stderr_size > STDERR_TAIL and len(self._stderr) > 1:
                    self._stderr_size -= len(self._stderr.popleft())
        finally:
            pipe.close()

    def _stderr_text(self) -> str:
        return b"".join(self._stderr).decode("utf-8", "replace")

    def _restart(self) -> None:
        self._kill()
        self._stderr.clear()
        self._stderr_size = 0
        self._start()

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.kill()
        except OSError:
            pass
        for pipe in (proc.stdin, proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        self._kill()

    def __del__(self) -> None:  # an engine nobody closed must not leave its process behind
        try:
            self._kill()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    @property
    def alive(self) -> bool:
        """Whether its Deno process still runs (a spare engine may have lost it while it waited)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The Deno process's id (its RSS is the engine's memory)."""
        return self._proc.pid if self._proc is not None else None

    # -- frames -----------------------------------------------------------------------------------
    def _send(self, kind: bytes, args: tuple[str, ...]) -> None:
        parts = [b""]
        for arg in args:
            data = arg.encode("utf-8")
            parts.append(_LEN.pack(len(data)))
            parts.append(data)
        body = b"".join(parts)
        frame = _HEADER.pack(len(body) + 1, kind[0]) + body
        try:
            written = os.write(self._to_deno, frame)
            if written < len(frame):
                view = memoryview(frame)[written:]
                while view:
                    view = view[os.write(self._to_deno, view):]
        except OSError:  # a broken pipe: Deno is gone
            raise _Died() from None

    def _frame(self, until: float | None) -> tuple[int, bytes] | None:
        """The next frame from Deno, or ``None`` when ``until`` (monotonic) passes first."""
        fd = self._from_deno
        buf = self._buf
        while True:
            if len(buf) >= 5:
                size = _LEN.unpack_from(buf)[0]
                if len(buf) >= 4 + size:
                    kind, body = buf[4], bytes(buf[5:4 + size])
                    del buf[:4 + size]
                    return kind, body
                want = 4 + size - len(buf)
            else:
                want = 5 - len(buf)
            if until is not None:
                left = until - time.monotonic()
                if left <= 0 or not self._poll.poll(left * 1000 + 1):
                    if time.monotonic() >= until:
                        return None
                    continue
            chunk = os.read(fd, max(want, 1 << 16))
            if not chunk:
                raise _Died()
            buf += chunk

    def _buffered_reply(self) -> str | None:
        """The reply at the head of what Deno wrote already, if there is one (a slice that went
        ahead and finished while we settled the ones before it): no clock, no poll, no events."""
        if self._held:
            return self._held.popleft()
        buf = self._buf
        if len(buf) < 5 or buf[4] not in (0x52, 0x4D):
            return None
        size = _LEN.unpack_from(buf)[0]
        if len(buf) < 4 + size:
            return None
        replies = self._replies(buf[4], buf[5:4 + size])
        del buf[:4 + size]
        self._held.extend(replies)
        return self._held.popleft() if self._held else None

    def _replies(self, kind: int, body: bytes | bytearray) -> list[str]:
        """The replies of an ``R`` frame (one), or of an ``M`` or ``H`` frame (each ends with a
        newline; envelopes have none and start with a letter). A number after them is how long the
        running slice has run (ms): we count that slice's limits from its start, not from when we
        heard of the ones before it."""
        text = body.decode("utf-8")
        if kind == 0x52:
            return [text]
        replies = text.split("\n")
        replies.pop()
        if replies and replies[-1][:1].isdigit():
            try:
                self._running_since = time.monotonic() - float(replies.pop()) / 1000
            except ValueError:
                pass
        return replies

    def _request(self, kind: bytes | None, *args: str, deadline: float | None = None,
                 slice_limits: bool = False) -> str:
        """Send a request (``kind`` ``None``: one sent before, whose next reply is due) and wait for
        its reply, delivering the slice's events on the way and stopping the work at the first limit
        it breaks: ``deadline`` always, and with ``slice_limits`` the running slice's no-progress,
        CPU-time, cancel and output limits."""
        if kind is not None:
            self._send(kind, args)
        first_event: float | None = None  # when the first event of this wait came (a clock read only then)
        tripped: ErrorCode | None = None
        reply: str | None = None
        chargeable = True  # no reply the worker wrote itself came after we asked to stop it
        by_event = False  # the slice's own event broke a limit: it fails even if it finished
        accepting = True  # after we asked to stop: replies count until an event is dropped
        while True:
            until = self._wake(deadline, slice_limits) if tripped is None else self._stop_by
            try:
                frame = self._frame(until)
            except _Died:
                if tripped is None:
                    raise
                raise _Died(tripped, None if by_event else reply) from None  # the replies we have stand
            if frame is None:
                if tripped is not None:  # Deno did not stop the work in time: end the process
                    self._kill()
                    raise _Died(tripped, None if by_event else reply)
                hook, self._on_long_wait = self._on_long_wait, None
                if hook is not None:
                    hook()
                tripped = self._check(deadline, slice_limits)
                if tripped is not None:
                    self._stop()
                continue
            k, body = frame
            if k == 0x52 or k == 0x4D or (k == 0x48 and tripped is not None):
                # R: the reply; M: it and replies of the slices after it; H: the replies the
                # worker held when the main thread stopped it
                replies = self._replies(k, body)
                if not accepting:
                    continue  # after an event we dropped: those slices run again
                if reply is None and replies:  # the first is this request's (held ones may wait before it)
                    reply = replies.pop(0)
                self._held.extend(replies)
                if tripped is None:
                    if reply is None:
                        continue
                    return reply
                # The work went on after we asked to stop it: Deno's answer follows. A slice that
                # the worker itself reported finished after that may have been right at its limit.
                chargeable = chargeable and k == 0x48
                continue
            if k == 0x49 and tripped is not None:  # I: the sandbox was idle, nothing was stopped
                if reply is not None and not by_event:
                    self._keep_ahead(len(self._held))  # those after a dropped event run again
                    return reply  # it had finished
                if reply is not None or not accepting:
                    raise _Failed(tripped)
                time.sleep(0.001)  # it had not started the request yet: ask again
                self._stop(again=True)
                continue
            if k == 0x4B and tripped is not None:  # K: the work was stopped, the sandbox is fresh
                self._stale = True
                raise _Stopped(tripped, None if by_event else reply, chargeable and accepting and not by_event)
            if k in (0x50, 0x43, 0x45):
                if self._on_long_wait is not None:
                    # A slice that keeps sending events is a long wait too (POLL is Deno's progress
                    # throttle: no frame-less POLL may ever come while it runs).
                    now = time.monotonic()
                    if first_event is None:
                        first_event = now
                    elif now - first_event >= POLL:
                        hook, self._on_long_wait = self._on_long_wait, None
                        hook()
                if tripped is None:
                    tripped = self._event(k, body)
                    if tripped is not None:
                        by_event = True
                        self._stop()
                else:
                    accepting = False  # its slice must not finish without it: no later reply stands
                continue
            self._kill()  # a frame that cannot come from v8_host.js: trust nothing more from it
            raise _Died(None)

    def _ctx(self) -> SliceContext | None:
        """The running slice's context: in block mode, made on first use."""
        if self._slice is None and self._blk is not None and self._blk_i is not None:
            self._slice = self._blk.context(self._blk_i)
        return self._slice

    def _stop(self, again: bool = False) -> None:
        """Ask Deno to terminate the running work (answered by a K or I frame)."""
        assert self._proc is not None
        if not again:
            self._stop_by = time.monotonic() + STOP_GRACE
        try:
            self._proc.send_signal(signal.SIGUSR2)
        except OSError:
            pass

    def _wake(self, deadline: float | None, slice_limits: bool) -> float:
        """When to look at the clocks next while waiting for a reply."""
        until = time.monotonic() + POLL
        for d in (deadline, self._progress_deadline if slice_limits else None):
            if d is not None and d < until:
                until = d
        return until

    def _check(self, deadline: float | None, slice_limits: bool) -> ErrorCode | None:
        now = time.monotonic()
        if deadline is not None and now > deadline:
            return ErrorCode.ESLICETOOSLOW
        if not slice_limits:
            return None
        if self._progress_deadline is not None and now > self._progress_deadline:
            return ErrorCode.ENOPROGRESS
        if self._cpu_deadline is not None and self._cpu_seconds() > self._cpu_deadline:
            return ErrorCode.ECPULIMIT
        if self._blk is not None and self._slice is None:
            return ErrorCode.ECANCELLED if self._blk.cancelled else None
        if self._slice is not None and self._slice.cancelled:
            return ErrorCode.ECANCELLED
        return None

    def _event(self, kind: int, body: bytes) -> ErrorCode | None:
        """Deliver an event of the running slice; the limit it breaks, if any."""
        ctx = self._ctx()
        if ctx is None:
            return None  # console output while compiling the work or a module: dropped
        self._slice_events = True
        text = body.decode("utf-8")
        try:
            if kind == 0x50:  # P: the value, and the highest earlier value of the slice (if any)
                text, _, highest = text.partition("\n")
                ctx.progress(from_js(text), highest_before=float(highest) if highest else None)
                timeout = ctx.limits.progress_timeout
                if timeout is not None:
                    self._progress_deadline = time.monotonic() + timeout + FORWARD_SLACK
            elif kind == 0x43:  # C
                level, _, message = text.partition("\n")
                ctx.console(level, sanitize(json.loads(message)))
            elif kind == 0x45:  # E
                name, _, value = text.partition("\n")
                ctx.emit(sanitize(json.loads(name)), from_js(value))
        except Exception as e:  # noqa: BLE001 - e.g. an emitted value the host cannot pack
            self._event_error = SliceError(f"{type(e).__name__}: {e}", code=ErrorCode.EUNCAUGHT, name="Error")
            return ErrorCode.EUNCAUGHT
        return ErrorCode.EOUTPUTLIMIT if ctx.over_quota else None

    def _cpu_seconds(self) -> float:
        """CPU time of the Deno process so far (all its threads), from ``/proc``."""
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
        except (OSError, IndexError, ValueError, TypeError):
            return 0.0

    # -- the engine contract ---------------------------------------------------------------------
    def _call(self, kind: bytes | None, *args: str, deadline: float | None = None, slice_limits: bool = False) -> str:
        """A request with recovery: a stopped or dead sandbox becomes the request's error, and the
        engine is ready for the next request (a fresh sandbox with the job loaded again)."""
        if kind is not None:
            try:
                self._ready()
            except SliceError:
                self._forget_ahead()
                raise
        self._event_error = None
        try:
            return self._request(kind, *args, deadline=deadline, slice_limits=slice_limits)
        except _Stopped as stopped:
            code, reply, chargeable = stopped.args
            # The slices after this one whose replies Deno held keep them. The next one was running:
            # the stop is its if it came from its own clock (counted from at most HELD_SLACK before
            # its start), else it runs again. The fresh sandbox has none of the others sent ahead.
            kept = len(self._held)
            if (reply is not None and len(self._ahead_sent) > kept and chargeable and self._event_error is None
                    and code in (ErrorCode.ESLICETOOSLOW, ErrorCode.ENOPROGRESS, ErrorCode.ECPULIMIT)):
                self._charged = (self._ahead_sent[kept][0], code)
            self._keep_ahead(kept)
            self._reload_quietly()
            if reply is not None:  # it finished before the stop: the result stands
                return reply
            raise self._event_error or limit_error(code, self._ctx()) from None
        except _Failed as failed:
            self._keep_ahead(len(self._held))
            raise self._event_error or limit_error(failed.args[0], self._ctx()) from None
        except _Died as died:
            code = died.args[0] if died.args else None
            reply = died.args[1] if len(died.args) > 1 else None
            if reply is not None:  # killed while it stopped the work: the replies we have stand
                self._keep_ahead(len(self._held))
                self._restart_quietly()
                return reply
            # Deno may have finished this slice and others sent with it, their replies held and lost
            # with the process: which one it died in is known only if it ran no slice after this one
            # (a slice that wrote anything had its reply written too). Not for a slice we stopped.
            in_flight = len(self._ahead_sent)
            self._forget_ahead()
            err = self._event_error or (limit_error(code, self._ctx()) if code is not None else self._death())
            self._restart_quietly()
            if in_flight and slice_limits and code is None and not self._slice_events and self._event_error is None:
                self._careful = in_flight + 1
                raise _Retry() from None
            raise err from None

    def _keep_ahead(self, kept: int) -> None:
        """The slices sent ahead whose replies we hold stay sent; Deno has none of the others."""
        while len(self._ahead_sent) > kept:
            self._ahead_sent.pop()
        self._running_since = None

    def _forget_ahead(self) -> None:
        """Deno has none of the slices sent ahead any more."""
        self._ahead_sent.clear()
        self._held.clear()
        self._running_since = None

    def _ready(self) -> None:
        """A process with the job loaded: a new one after a crash, a fresh sandbox after a stop."""
        try:
            if self._proc is None:
                self._start()
            elif self._stale:
                self._reload()
        except (_Stopped, _Died) as e:
            err = self._death() if isinstance(e, _Died) else SliceError(
                "the job could not be loaded again into a fresh V8 sandbox in time", code=ErrorCode.ECRASH)
            self._kill()
            raise err from None

    def _death(self) -> SliceError:
        """Why the Deno process ended, as the error of the request it was serving."""
        proc = self._proc
        status = None
        if proc is not None:
            try:
                status = proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        time.sleep(0.05)  # let the stderr reader catch the last lines
        text = self._stderr_text()
        if "heap limit" in text or "out of memory" in text.lower():
            return SliceError(memory_message(self._memory_limit), code=ErrorCode.EMEMORYLIMIT, name="RangeError")
        tail = " ".join(text.strip().splitlines()[-3:])[-300:]
        return SliceError(f"the V8 engine process ended (exit status {status}){': ' + tail if tail else ''}",
                          code=ErrorCode.ECRASH)

    def _reload(self) -> None:
        """Load the prelude, then the job so far, into a fresh sandbox."""
        self._stale = True
        self._request(b"d", "init", PRELUDE, json.dumps({"webassembly": self._webassembly}),
                      deadline=time.monotonic() + START_TIMEOUT)
        for op, a, b in self._replay:
            self._request(b"d", op, a, b, deadline=time.monotonic() + START_TIMEOUT)
        self._stale = False

    def _reload_quietly(self) -> None:
        try:
            self._reload()
        except (_Stopped, _Died, SliceError):
            self._stale = True  # tried again before the next request

    def _restart_quietly(self) -> None:
        try:
            self._restart()
        except (_Stopped, _Died, SliceError, OSError, subprocess.SubprocessError):
            self._kill()  # the next request starts a new process

    def _operation(self, op: str, a: str = "", b: str = "", time_limit: float | None = None) -> str:
        if self._ahead_sent:
            self._drop_ahead()  # slices still out: their replies must not answer this
        deadline = time.monotonic() + time_limit if time_limit else None
        reply = self._call(b"d", op, a, b, deadline=deadline)
        if op in ("job", "spread", "compile") and not (op == "compile" and reply):
            self._replay = [r for r in self._replay if r[0] != op] + [(op, a, b)]
        return reply

    def prefetch(self, items: list) -> None:
        """The slices of the evaluator's current batch, ``[(number, datum), ...]`` in the order
        ``run`` will be called for them: each request then carries the next slices too, and Deno
        runs them back to back, so a batch of short slices costs one pipe round trip, not one each."""
        self._batch = list(items)
        self._batch_at = {n: i for i, (n, _) in enumerate(self._batch)}

    def _ahead(self, number: int) -> tuple[list[str], list[int]]:
        """Datum texts and numbers of the slices after ``number`` in the batch, to send ahead."""
        from ...values import UnserializableValue
        from .marshal import to_js

        texts: list[str] = []
        numbers: list[int] = []
        batch, budget = self._batch, AHEAD_BYTES
        i = self._batch_at.get(number)
        if i is None or self._careful:
            return texts, numbers
        for n2, datum in batch[i + 1:i + 1 + AHEAD_SLICES]:
            try:
                text = to_js(datum, self._bigint)
            except (UnserializableValue, ValueError, TypeError):
                break  # that slice fails on its own, in its own request
            budget -= len(text)
            if budget < 0:
                break
            texts.append(text)
            numbers.append(n2)
        return texts, numbers

    def _drop_ahead(self) -> None:
        """Slices sent ahead that will not be asked for (a cancelled batch): stop them."""
        if self._proc is not None and not self._stale:
            try:
                self._stop()
                while True:  # until Deno answers: K (stopped) or I (they had all finished)
                    frame = self._frame(self._stop_by)
                    if frame is None:
                        raise _Died(None)
                    if frame[0] == 0x4B:
                        self._stale = True
                        break
                    if frame[0] == 0x49:
                        break
            except _Died:
                self._kill()
        self._forget_ahead()

    def run(self, ctx: SliceContext, datum: Any) -> Any:
        self._slice = ctx
        try:
            return self._result(self._reply(ctx.slice_number, datum, ctx.limits, ctx.started))
        finally:
            self._slice = None

    #: Block mode for the host's fast path (``MapBasic.execute_block``).
    runs_blocks = True

    def run_block(self, block: Block, indexes: list[int], budget: float) -> None:
        """Run the slices ``indexes`` of ``block`` in order for about ``budget`` seconds, settling
        each. Deno runs them back to back (the next ones go with each request, ``prefetch``); each
        is waited for under its own wall, no-progress, CPU and output limits, as ``run`` does, but
        its context is made only if it logs or breaks a limit, and a run of plain JSON results is
        decoded in one go and settled with ``block.done_many``: a trivial slice costs the host a
        few microseconds, not a context, a JSON decode and a settle call of its own."""
        started = time.monotonic()
        self.prefetch([(block.numbers[i], block.datums[i]) for i in indexes[:AHEAD_WINDOW]])
        limits = block.limits
        plain: list[int] = []
        texts: list[str] = []

        def settle_plain() -> None:
            if not plain:
                return
            try:
                values = _plain_json("[" + ",".join(texts) + "]")
            except (ValueError, RecursionError):  # a deep value: one by one, it fails alone
                for i, text in zip(plain, texts):
                    try:
                        block.done(i, from_js("0" + text))
                    except Exception as e:  # noqa: BLE001
                        block.failed(i, e)
            else:
                block.done_many(plain, values)
            plain.clear()
            texts.clear()

        def flush() -> None:
            settle_plain()
            block.flush()

        self._blk, self._on_long_wait = block, flush
        held, sent = self._held, self._ahead_sent
        try:
            for i in indexes:
                if block.cancelled:
                    break
                block.starting(i)
                self._slice, self._blk_i = None, i
                try:
                    number = block.numbers[i]
                    if held and sent and sent[0][0] == number and self._charged is None:
                        # Its reply came with the replies Deno held back: no clock, no deadlines.
                        self._datum_text = sent.popleft()[1]
                        envelope = held.popleft()
                    else:
                        envelope = self._reply(number, block.datums[i], limits, time.monotonic())
                    if envelope[:2] == "v0":
                        plain.append(i)
                        texts.append(envelope[2:])
                    else:
                        settle_plain()
                        if envelope[:1] == "o":
                            self._ctx()  # its message names the slice's output limit
                        block.done(i, self._result(envelope))
                except Exception as e:  # noqa: BLE001 - that slice's error; the others carry on
                    settle_plain()
                    block.failed(i, e)
                if time.monotonic() - started > budget:
                    break
            settle_plain()
        finally:
            self._blk = self._blk_i = self._slice = self._on_long_wait = None

    def _reply(self, number: int, datum: Any, limits: Limits, started: float) -> str:
        """Run slice ``number`` (or wait for it, if it went ahead with an earlier request) under
        ``limits`` counted from ``started``: the prelude's reply envelope."""
        charged = self._charged
        if charged is not None:
            if charged[0] == number:
                self._charged = None
                raise limit_error(charged[1], self._ctx())
            if not self._ahead_sent or self._ahead_sent[0][0] != number:
                self._charged = None  # the slices are not asked for in the order they were sent
        try:
            return self._reply_once(number, datum, limits, started)
        except _Retry:
            # Deno died with this slice and others in flight: this one again, alone, from now.
            return self._reply_once(number, datum, limits, time.monotonic())

    def _reply_once(self, number: int, datum: Any, limits: Limits, started: float) -> str:
        self._slice_events = False
        if self._running_since is not None and not self._held:
            # The slice that ran when we heard of the ones before it: counted from its start.
            if self._ahead_sent and self._ahead_sent[0][0] == number:
                started = min(started, self._running_since)
            self._running_since = None
        self._progress_deadline = (started + limits.progress_timeout + FORWARD_SLACK + HELD_SLACK
                                   if limits.progress_timeout else None)
        self._cpu_deadline = self._cpu_seconds() + limits.cpu_time if limits.cpu_time else None
        deadline = started + limits.wall_time + HELD_SLACK if limits.wall_time else None
        try:
            if self._ahead_sent and self._ahead_sent[0][0] == number:
                # Sent with an earlier request: Deno has been running it since that slice ended.
                self._datum_text = self._ahead_sent.popleft()[1]
                reply = self._buffered_reply()
                return reply if reply is not None else self._call(None, deadline=deadline, slice_limits=True)
            if self._ahead_sent:
                self._drop_ahead()
            text = self._datum_text = datum_text(datum, self._bigint)
            ahead, numbers = self._ahead(number) if self._batch else ([], [])
            if self._careful:
                self._careful -= 1
            cap = str(limits.output) if limits.output is not None else "-1"
            self._ahead_sent.extend(zip(numbers, ahead))  # before the call: a stop or a death must see them
            return self._call(b"s", cap, text, *ahead, deadline=deadline, slice_limits=True)
        finally:
            self._progress_deadline = self._cpu_deadline = None
