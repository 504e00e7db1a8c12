"""Supervisor-side handle of one evaluator process: spawn, frames, kill, post-mortem."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Iterator

from ..errors import ErrorCode, SliceError
from ..values import packer, unpacker
from .heartbeat import Heartbeat

STDERR_TAIL = 4096


class EvaluatorDied(Exception):
    """The evaluator's frame stream ended; ``reason`` is the watchdog's verdict if it killed it."""

    def __init__(self, reason: SliceError | None, index: int | None) -> None:
        super().__init__(str(reason))
        self.reason = reason
        self.index = index


class EvaluatorProcess:
    """One sandboxed evaluator. Not thread-safe: one driver thread; the watchdog may ``kill`` it."""

    def __init__(self, worktime_ref: str, network: bool = False, env: dict[str, str] | None = None) -> None:
        self.heartbeat = Heartbeat()
        cmd = [
            sys.executable, "-m", "dcp_worktimes.runner.evaluator",
            "--worktime", worktime_ref,
            "--heartbeat-fd", str(self.heartbeat.fd),
            "--parent", str(os.getpid()),
        ]
        if network:
            cmd.append("--network")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(self.heartbeat.fd,), start_new_session=True, env=env, bufsize=0,
        )
        self.pid = self.proc.pid
        self._unpacker = unpacker()
        self._packer = packer()
        self._stderr_tail: collections.deque[bytes] = collections.deque(maxlen=64)
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()
        self.kill_reason: SliceError | None = None
        self.kill_index: int | None = None
        self.baseline_rss = 0
        self.slices_run = 0
        self.job_id: str | None = None
        self.bytes_read = 0
        ready = self.expect("ready", timeout=None)
        self.isolation: dict[str, Any] = ready.get("isolation", {})

    # -- frames -------------------------------------------------------------------------------
    def send(self, msg: dict) -> None:
        try:
            self.proc.stdin.write(self._packer.pack(msg))  # type: ignore[union-attr]
        except (BrokenPipeError, OSError):
            raise EvaluatorDied(self.kill_reason or self._crash_reason(), self.kill_index) from None

    def frames(self) -> Iterator[dict]:
        """Frames as they arrive; raises ``EvaluatorDied`` at end of stream."""
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        unp = self._unpacker
        while True:
            for msg in unp:
                yield msg
            try:
                data = os.read(fd, 1 << 16)
            except OSError:
                data = b""
            if not data:
                raise EvaluatorDied(self.kill_reason or self._crash_reason(), self.kill_index)
            self.bytes_read += len(data)
            unp.feed(data)

    def expect(self, kind: str, timeout: float | None) -> dict:
        for msg in self.frames():
            t = msg.get("t")
            if t == kind:
                return msg
            if t == "fatal":
                self.kill()
                raise EvaluatorDied(SliceError.from_dict(msg["error"]), None)
        raise AssertionError("unreachable")

    # -- life and death -----------------------------------------------------------------------
    def kill(self, reason: SliceError | None = None, index: int | None = None) -> None:
        """Kill the whole process group (an engine may have children). First verdict wins."""
        if reason is not None and self.kill_reason is None:
            self.kill_reason, self.kill_index = reason, index
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self, timeout: float = 1.0) -> None:
        if self.alive():
            try:
                self.send({"op": "exit"})
                self.proc.stdin.close()  # type: ignore[union-attr]
                self.proc.wait(timeout)
            except (EvaluatorDied, OSError, subprocess.TimeoutExpired):
                pass
        self.kill()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()  # type: ignore[union-attr]
            except OSError:
                pass
        self.heartbeat.close()

    def _drain_stderr(self) -> None:
        fd = self.proc.stderr.fileno()  # type: ignore[union-attr]
        while True:
            try:
                data = os.read(fd, 4096)
            except OSError:
                return
            if not data:
                return
            self._stderr_tail.append(data)

    def stderr_tail(self) -> str:
        self._stderr_thread.join(0.5)
        text = b"".join(self._stderr_tail)[-STDERR_TAIL:].decode("utf-8", "replace").strip()
        return text

    def _crash_reason(self) -> SliceError:
        try:
            code = self.proc.wait(2)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.wait()
        if code < 0:
            try:
                how = f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exited with status {code}"
        tail = self.stderr_tail()
        msg = f"the evaluator process was {how} while running the slice" if code < 0 else f"the evaluator process {how} while running the slice"
        if tail:
            msg += f"; its last output:\n{tail}"
        return SliceError(msg, code=ErrorCode.ECRASH)
