"""One Blender process driven frame by frame over pipes (the host side of ``driver.py``).

``BlenderProcess.start`` launches Blender (inside the sandbox when there is one) with the driver,
which loads the work once and answers ``ready``; ``render(command, ...)`` then sends one frame's
command and waits for its image, feeding the slice's progress from Blender's own log lines::

    proc = BlenderProcess.start(launch, on_line=print)         # Blender starts, loads the .blend
    reply, image = proc.render({"frame": 12}, deadline=None, sink=ctx_sink)
    proc.stop()

A reader thread reads Blender's stdout+stderr line by line: ``Fra:`` lines become progress
(``Sample 3/32`` and ``Rendering 3 / 64 samples`` give real fractions, other ``Fra:`` lines are
signs of life), every other line is a console line. In the background, Cycles prints its sample
count only when it starts and finishes a render pass (a 20 s frame printed nothing for 16 s), so
between lines a Blender whose processes used CPU time since the last look (every
``LIVENESS_INTERVAL``) counts as alive: indeterminate progress, which feeds the no-progress
watchdog without inventing a fraction. A Blender that sleeps or blocks sends nothing. Replies come on their own pipe, each checked
field by field: the scene script runs in the same process and may write to that pipe too.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import re
import select
import signal
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from dcp_worktimes.errors import ErrorCode, SliceError
from dcp_worktimes.limits import exceeded

LENGTH = struct.Struct(">I")
MARK = "\x1edcp-driver"
#: The largest JSON reply header we accept (the image travels separately).
MAX_HEADER = 1 << 20
#: Longest log line read at once (a longer one arrives in pieces).
MAX_LINE = 64 << 10
#: Blender output lines kept for error messages.
TAIL_LINES = 40
#: How long the host waits for the last log lines of a frame after its reply (they are flushed first).
LOG_SETTLE = 2.0
#: Seconds between two looks at Blender's CPU time while it renders (see the module docstring).
LIVENESS_INTERVAL = 0.25

# Fra:3 Mem:10.12M (Peak 10.83M) | Time:00:00.13 | ... | Sample 8/8
_FRA = re.compile(r"^Fra:(-?\d+) Mem:\S+ \(Peak ([\d.]+)M\)")
_SAMPLE = re.compile(r"\| (?:Sample (\d+)/(\d+)|Rendering (\d+) / (\d+) samples)\s*$")
# Lines the driver's own plumbing makes Blender print: not the work's console.
_PLUMBING = re.compile(r"^(Saved: '/scratch/out/| Time: \d\d:\d\d\.\d\d \(Saving: )")


class Sink(Protocol):
    """Where a frame's events go (a ``SliceContext`` is one)."""

    def progress(self, value: Any = None) -> bool: ...

    def console(self, level: str, *args: Any) -> None: ...


@dataclass
class Launch:
    """How to start Blender for a job: the argv (sandbox included, ending with the driver's
    arguments: the two pipe descriptors are appended), descriptors to pass on (bwrap's seccomp
    program) and to close once Blender has started."""

    argv: list[str]
    pass_fds: tuple[int, ...] = ()
    env: dict[str, str] | None = None
    #: Unsandboxed only: make Blender die with the evaluator (bwrap's --die-with-parent does it otherwise).
    pdeathsig: bool = False
    close_after_start: tuple[int, ...] = ()
    sandboxed: bool = False


class BlenderDied(Exception):
    """The Blender process ended (crashed, was killed, or closed its reply pipe)."""


class BlenderProcess:
    def __init__(self, proc: subprocess.Popen, cmd_w: int, reply_r: int, sandboxed: bool = False) -> None:
        self.proc = proc
        self.sandboxed = sandboxed
        self._cmd_w = cmd_w
        self._reply_r = reply_r
        self._lock = threading.Lock()
        self._sink: Sink | None = None
        self._last_fraction = 0.0
        self._peak_mib: float | None = None
        self._done_ids: set[int] = set()
        self._done = threading.Condition(self._lock)
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.frames = 0
        self.started = time.monotonic()
        self._reader = threading.Thread(target=self._read_log, daemon=True, name="dcp-blender-log")
        self._reader.start()
        self._next_id = 1
        self._family: list[Any] = []  # psutil processes of Blender's tree (bwrap, its init, Blender)
        self._family_at = 0.0
        self._cpu_seen = 0.0
        self._looked_at = 0.0

    # -- start / stop ----------------------------------------------------------------------------
    @classmethod
    def start(cls, launch: Launch) -> "BlenderProcess":
        """Start Blender; it loads the work while the caller waits in ``ready()``. The driver
        finds its two pipes by the descriptor numbers appended to ``launch.argv``."""
        cmd_r, cmd_w = os.pipe()
        reply_r, reply_w = os.pipe()
        try:
            proc = subprocess.Popen([*launch.argv, str(cmd_r), str(reply_w)], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    pass_fds=(cmd_r, reply_w, *launch.pass_fds), env=launch.env,
                                    preexec_fn=_set_pdeathsig if launch.pdeathsig else None)
        except BaseException:
            for fd in (cmd_w, reply_r):
                os.close(fd)
            raise
        finally:
            for fd in (cmd_r, reply_w, *launch.close_after_start):
                os.close(fd)
        return cls(proc, cmd_w, reply_r, sandboxed=launch.sandboxed)

    def ready(self, deadline: float | None = None) -> dict:
        """The driver's first reply: ``{"t": "ready", ...}`` or ``{"t": "error", ...}``.
        ``BlenderDied`` if Blender ends first."""
        message, _ = self._receive(deadline, None, want_payload=False)
        self._settle(0)
        return message

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the driver to finish (closing its command pipe), then make sure Blender is gone."""
        try:
            os.close(self._cmd_w)
        except OSError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._close_reply()

    def kill(self) -> None:
        """SIGKILL Blender (with bwrap: bwrap, whose PID namespace then takes every process in it down)."""
        try:
            self.proc.send_signal(signal.SIGKILL)
        except (ProcessLookupError, OSError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.close(self._cmd_w)
        except OSError:
            pass
        self._close_reply()

    def _close_reply(self) -> None:
        fd, self._reply_r = self._reply_r, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass

    def exit_description(self) -> str:
        """How Blender ended, in words, with the tail of its output."""
        try:
            code = self.proc.wait(2)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.returncode
        if code is not None and code > 128 and self.sandboxed:
            code = 128 - code  # bwrap exits with 128 + the signal that killed what it ran
        if code is None:
            how = "stopped answering"
        elif code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with status {code}"
        self._reader.join(1.0)
        tail = "\n".join(self.tail).strip()
        return f"Blender {how}" + (f"; its last output:\n{tail}" if tail else "")

    # -- one frame --------------------------------------------------------------------------------
    def render(self, command: dict, *, deadline: float | None, sink: Sink, max_image: int | None,
               stop: Callable[[], SliceError | None]) -> tuple[dict, bytes | None]:
        """Send one frame's ``command`` and wait for its reply and image.

        ``deadline`` (monotonic) and ``stop()`` (a ``SliceError`` when the slice must end now:
        cancelled, over its console quota) are checked while Blender renders; either kills
        Blender, which the caller then restarts for the next frame. ``max_image``: an image
        larger than that is refused before it is read (``EOUTPUTLIMIT``).
        """
        ident = self._next_id
        self._next_id += 1
        with self._lock:
            self._sink = sink
            self._last_fraction = 0.0
            self._peak_mib = None
        self._looked_at = time.monotonic()
        self._cpu_seen = self._tree_cpu()
        try:
            data = pickle.dumps({**command, "t": "render", "id": ident}, protocol=4)
            try:
                _write_all(self._cmd_w, LENGTH.pack(len(data)) + data)
            except OSError:
                raise BlenderDied() from None
            message, image = self._receive(deadline, stop, want_payload=True, max_payload=max_image)
            if message.get("id") != ident:
                raise SliceError(f"Blender answered for frame request {message.get('id')!r}, expected {ident}: "
                                 "the work wrote to the driver's reply pipe", code=ErrorCode.EUNCAUGHT)
            self._settle(ident)
            message.pop("peak_memory", None)  # Blender's own figure, from its log, never the reply's
            with self._lock:
                if self._peak_mib is not None:
                    message["peak_memory"] = int(self._peak_mib * (1 << 20))
            self.frames += 1
            return message, image
        finally:
            with self._lock:
                self._sink = None

    def _settle(self, ident: int) -> None:
        """Wait (briefly) until the log reader has passed the driver's ``done`` marker for ``ident``,
        so every line of this frame reaches this frame's slice and none the next one's."""
        end = time.monotonic() + LOG_SETTLE
        with self._done:
            while ident not in self._done_ids:
                left = end - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    return
                self._done.wait(left)
            self._done_ids.discard(ident)

    def _receive(self, deadline: float | None, stop: Callable[[], SliceError | None] | None, *,
                 want_payload: bool, max_payload: int | None = None) -> tuple[dict, bytes | None]:
        head = self._read(LENGTH.size, deadline, stop)
        size = LENGTH.unpack(head)[0]
        if size > MAX_HEADER:
            self.kill()
            raise SliceError(f"Blender sent a {size}-byte reply header: the work wrote to the driver's reply pipe",
                             code=ErrorCode.EUNCAUGHT)
        try:
            message = json.loads(self._read(size, deadline, stop))
        except (UnicodeDecodeError, json.JSONDecodeError):
            message = None
        if not isinstance(message, dict) or message.get("t") not in ("ready", "frame", "error"):
            self.kill()
            raise SliceError("Blender sent a malformed reply: the work wrote to the driver's reply pipe",
                             code=ErrorCode.EUNCAUGHT)
        payload = None
        if want_payload and message["t"] == "frame":
            head = self._read(LENGTH.size, deadline, stop)
            n = LENGTH.unpack(head)[0]
            if n != message.get("size"):
                self.kill()
                raise SliceError("Blender's image does not have the size its reply announced: the work wrote to the "
                                 "driver's reply pipe", code=ErrorCode.EUNCAUGHT)
            if max_payload is not None and n > max_payload:
                self.kill()  # its pipe holds the unread image: this process cannot answer again
                raise exceeded("output", max_payload, used=n, what="the rendered image",
                               detail="render a smaller or compressed image: resolution, file_format")
            payload = self._read(n, deadline, stop)
        return message, payload

    def _read(self, n: int, deadline: float | None, stop: Callable[[], SliceError | None] | None) -> bytes:
        chunks = []
        while n:
            if stop is not None:
                verdict = stop()
                if verdict is not None:
                    self.kill()
                    raise verdict
            wait = 0.05
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.kill()
                    raise TimeoutError()
                wait = min(wait, left)
            fd = self._reply_r
            if fd < 0:
                raise BlenderDied()
            ready, _, _ = select.select([fd], [], [], wait)
            if not ready:
                self._check_alive()
                continue
            data = os.read(fd, min(n, 1 << 20))
            if not data:
                raise BlenderDied()
            chunks.append(data)
            n -= len(data)
        return b"".join(chunks)

    def _check_alive(self) -> None:
        """Indeterminate progress when Blender used CPU time since the last look."""
        now = time.monotonic()
        if now - self._looked_at < LIVENESS_INTERVAL:
            return
        self._looked_at = now
        cpu = self._tree_cpu()
        if cpu > self._cpu_seen:
            with self._lock:
                if self._sink is not None:
                    self._sink.progress()
        self._cpu_seen = cpu

    def _tree_cpu(self) -> float:
        """CPU seconds of Blender's process tree (seen from here, across bwrap's PID namespace)."""
        import psutil

        now = time.monotonic()
        try:
            if now - self._family_at > 2.0 or not self._family:
                root = psutil.Process(self.proc.pid)
                self._family = [root, *root.children(recursive=True)]
                self._family_at = now
        except psutil.Error:
            return self._cpu_seen
        total = 0.0
        for p in self._family:
            try:
                total += sum(p.cpu_times()[:2])
            except psutil.Error:
                pass
        return total

    # -- Blender's log ------------------------------------------------------------------------------
    def _read_log(self) -> None:
        stream = self.proc.stdout
        assert stream is not None
        # Bounded reads: a script printing gigabytes without a newline must not balloon the evaluator.
        for raw in iter(lambda: stream.readline(MAX_LINE), b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line.startswith(MARK):
                parts = line.split()
                if len(parts) == 3 and parts[1] == "done" and parts[2].isdigit():
                    with self._done:
                        self._done_ids.add(int(parts[2]))
                        self._done.notify_all()
                continue
            self._line(line)
        with self._done:
            self._done.notify_all()

    def _line(self, line: str) -> None:
        fra = _FRA.match(line)
        with self._lock:
            sink = self._sink
            if fra is None:
                if line.strip() and not _PLUMBING.match(line):
                    self.tail.append(line)
                    if sink is not None:
                        sink.console("log", line)
                return
            peak = float(fra.group(2))
            self._peak_mib = peak if self._peak_mib is None else max(self._peak_mib, peak)
            if sink is None:
                return
            fraction = None
            sample = _SAMPLE.search(line)
            if sample:
                done, total = (int(g) for g in (sample.group(1, 2) if sample.group(1) else sample.group(3, 4)))
                if total > 0 and 0 <= done <= total and done / total >= self._last_fraction:
                    fraction = self._last_fraction = done / total
            # A Fra: line without a sample count (scene sync, BVH build) is a sign of life:
            # indeterminate progress keeps the no-progress watchdog fed without inventing a number.
            sink.progress(fraction)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _set_pdeathsig() -> None:
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
