"""Supervisor-side handle of one evaluator process: launch, frames, kill, post-mortem.

Evaluators are launched one of two ways, behind the same handle:

* forked by a ``Zygote`` of their worktime (default: a few ms per evaluator, see ``zygote.py``);
* started from scratch with ``subprocess`` (``DCP_WORKTIMES_ZYGOTE=0``, or if the zygote fails).
"""

from __future__ import annotations

import array
import collections
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Iterator

import msgpack

from ..errors import ErrorCode, SliceError
from ..values import packer, unpacker
from .heartbeat import Heartbeat

STDERR_TAIL = 4096
ENV_ZYGOTE = "DCP_WORKTIMES_ZYGOTE"


class EvaluatorDied(Exception):
    """The evaluator's frame stream ended; ``reason`` is the watchdog's verdict if it killed it."""

    def __init__(self, reason: SliceError | None, index: int | None) -> None:
        super().__init__(str(reason))
        self.reason = reason
        self.index = index


class Zygote:
    """A pre-started process per worktime that forks evaluators on request (thread-safe)."""

    def __init__(self, worktime_ref: str, env: dict[str, str] | None = None) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dcp_worktimes.runner.zygote", "--worktime", worktime_ref,
             "--parent", str(os.getpid())],
            stdin=theirs.fileno(), stdout=subprocess.DEVNULL, start_new_session=True, env=env,
        )
        theirs.close()
        self._lock = threading.Lock()
        self._replies: "queue.SimpleQueue[dict | None]" = queue.SimpleQueue()
        self._exits: dict[int, int] = {}
        self._exit_cond = threading.Condition()
        hello = self._read()
        if not hello or not hello.get("ready"):
            self.close()
            raise RuntimeError(f"zygote for {worktime_ref} failed: {(hello or {}).get('error', 'no answer')}")
        threading.Thread(target=self._reader, daemon=True, name="dcp-zygote").start()

    def _read(self) -> dict | None:
        data = self.sock.recv(4096)
        return msgpack.unpackb(data) if data else None

    def _reader(self) -> None:
        while True:
            try:
                msg = self._read()
            except OSError:
                msg = None
            if msg is None:
                self._replies.put(None)
                with self._exit_cond:
                    self._exit_cond.notify_all()
                return
            if "exit" in msg:
                with self._exit_cond:
                    self._exits[msg["exit"]] = msg["status"]
                    self._exit_cond.notify_all()
            elif "pid" in msg:
                self._replies.put(msg)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def fork(self, fds: list[int], network: bool) -> int:
        payload = msgpack.packb({"network": network})
        with self._lock:
            self.sock.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            reply = self._replies.get()
        if reply is None:
            raise OSError("the zygote died")
        return reply["pid"]

    def wait_exit(self, pid: int, timeout: float) -> int | None:
        """The evaluator's wait status once the zygote reaped it (``None`` if not within ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._exit_cond:
            while pid not in self._exits:
                left = deadline - time.monotonic()
                if left <= 0 or not self.alive():
                    return None
                self._exit_cond.wait(left)
            return self._exits.pop(pid)

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class EvaluatorProcess:
    """One sandboxed evaluator. Not thread-safe: one driver thread; the watchdog may ``kill`` it."""

    def __init__(self, worktime_ref: str, network: bool = False, env: dict[str, str] | None = None,
                 zygote: Zygote | None = None) -> None:
        self.heartbeat = Heartbeat()
        self.zygote = zygote
        self.proc: subprocess.Popen | None = None
        if zygote is not None:
            (in_r, in_w), (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe(), os.pipe()
            try:
                self.pid = zygote.fork([in_r, out_w, err_w, self.heartbeat.fd], network)
            finally:
                for fd in (in_r, out_w, err_w):
                    os.close(fd)
            self._stdin = os.fdopen(in_w, "wb", buffering=0)
            self._stdout_fd, self._stderr_fd = out_r, err_r
        else:
            cmd = [sys.executable, "-m", "dcp_worktimes.runner.evaluator", "--worktime", worktime_ref,
                   "--heartbeat-fd", str(self.heartbeat.fd), "--parent", str(os.getpid())]
            if network:
                cmd.append("--network")
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=(self.heartbeat.fd,), start_new_session=True, env=env, bufsize=0,
            )
            self.pid = self.proc.pid
            self._stdin = self.proc.stdin  # type: ignore[assignment]
            self._stdout_fd, self._stderr_fd = self.proc.stdout.fileno(), self.proc.stderr.fileno()  # type: ignore[union-attr]
        self._status: int | None = None  # returncode as subprocess reports it (negative: signal)
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
        ready = self.expect("ready")
        self.isolation: dict[str, Any] = ready.get("isolation", {})

    # -- frames -------------------------------------------------------------------------------
    def send(self, msg: dict) -> None:
        try:
            self._stdin.write(self._packer.pack(msg))
        except (BrokenPipeError, OSError, ValueError):
            raise EvaluatorDied(self.kill_reason or self._crash_reason(), self.kill_index) from None

    def frames(self) -> Iterator[dict]:
        """Frames as they arrive; raises ``EvaluatorDied`` at end of stream."""
        fd = self._stdout_fd
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

    def expect(self, kind: str) -> dict:
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

    def wait(self, timeout: float) -> int | None:
        """The exit status (negative: killed by that signal), or ``None`` if still running."""
        if self._status is not None:
            return self._status
        if self.proc is not None:
            try:
                self._status = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        elif self.zygote is not None:
            raw = self.zygote.wait_exit(self.pid, timeout)
            if raw is None:
                return None
            self._status = -os.WTERMSIG(raw) if os.WIFSIGNALED(raw) else os.WEXITSTATUS(raw)
        return self._status

    def alive(self) -> bool:
        if self._status is not None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return self.wait(0) is None if self.proc is not None else True

    def close(self, timeout: float = 1.0) -> None:
        """Ask the evaluator to exit (so ``release()`` cleans up), then make sure it is gone."""
        if self._status is None:
            try:
                self.send({"op": "exit"})
                self._stdin.close()
                self._await_eof(timeout)  # the child closes its end when it exits
            except (EvaluatorDied, OSError):
                pass
        self.kill()
        if self.proc is not None:
            self.wait(5)  # reap our own child; a zygote reaps its children itself
        for closer in (self._stdin.close, lambda: os.close(self._stdout_fd)):
            try:
                closer()
            except OSError:
                pass
        if self.proc is None:  # Popen owns its pipes; ours we close ourselves
            self._stderr_thread.join(1)
            try:
                os.close(self._stderr_fd)
            except OSError:
                pass
        self.heartbeat.close()

    def _await_eof(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self._stdout_fd], [], [], left)
            if ready and not os.read(self._stdout_fd, 1 << 16):
                return

    def _drain_stderr(self) -> None:
        fd = self._stderr_fd
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
        return b"".join(self._stderr_tail)[-STDERR_TAIL:].decode("utf-8", "replace").strip()

    def _crash_reason(self) -> SliceError:
        code = self.wait(2)
        if code is None:
            self.kill()
            code = self.wait(2)
        if code is None:
            how = "stopped answering"
        elif code < 0:
            try:
                how = f"was killed by signal {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with status {code}"
        msg = f"the evaluator process {how} while running the slice"
        tail = self.stderr_tail()
        if tail:
            msg += f"; its last output:\n{tail}"
        return SliceError(msg, code=ErrorCode.ECRASH)


def zygotes_enabled() -> bool:
    return os.environ.get(ENV_ZYGOTE, "1").strip().lower() not in ("0", "false", "no", "off")
