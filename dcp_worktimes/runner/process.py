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
from ..values import UnserializableValue, pack, packer, unpacker
from .heartbeat import Heartbeat
from .isolation import end_descendants, remove_area, started
from .redact import redact

STDERR_TAIL = 4096
#: Seconds an evaluator (or a zygote) may take from launch to its first frame.
START_TIMEOUT = 120.0
ENV_ZYGOTE = "DCP_WORKTIMES_ZYGOTE"


class EvaluatorDied(Exception):
    """The evaluator's frame stream ended; ``reason`` is the watchdog's verdict if it killed it."""

    def __init__(self, reason: SliceError | None, index: int | None) -> None:
        super().__init__(str(reason))
        self.reason = reason
        self.index = index


_launch_lock = threading.Lock()
_launch_queue: "queue.SimpleQueue | None" = None
_launch_pid = 0


def launch(*args: Any, **kwargs: Any) -> subprocess.Popen:
    """``subprocess.Popen(*args, **kwargs)``, started from one thread that lives as long as this
    process. Zygotes and evaluators die with their worker through ``PR_SET_PDEATHSIG``, which
    fires when the *thread* that started them ends, not the process: started from a spare's
    short-lived thread, or from a slot thread that the pool's close joins, they would be killed
    while still in use."""
    global _launch_queue, _launch_pid
    with _launch_lock:
        if _launch_queue is None or _launch_pid != os.getpid():  # none yet, or a forked child's copy
            _launch_queue, _launch_pid = queue.SimpleQueue(), os.getpid()
            threading.Thread(target=_launcher, args=(_launch_queue,), daemon=True, name="dcp-launcher").start()
        requests = _launch_queue
    answer: queue.SimpleQueue = queue.SimpleQueue()
    requests.put((args, kwargs, answer))
    ok, value = answer.get()
    if not ok:
        raise value
    return value


def _launcher(requests: queue.SimpleQueue) -> None:
    while True:
        args, kwargs, answer = requests.get()
        try:
            answer.put((True, subprocess.Popen(*args, **kwargs)))
        except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
            answer.put((False, e))


def _launcher_after_fork() -> None:
    global _launch_lock, _launch_queue
    _launch_lock = threading.Lock()  # the parent's may have been held by a thread the child lacks
    _launch_queue = None


os.register_at_fork(after_in_child=_launcher_after_fork)


class Zygote:
    """A pre-started process per worktime that forks evaluators on request (thread-safe)."""

    def __init__(self, worktime_ref: str, env: dict[str, str] | None = None) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        self.proc = launch(
            [sys.executable, "-m", "dcp_worktimes.runner.zygote", "--worktime", worktime_ref,
             "--parent", str(os.getpid())],
            stdin=theirs.fileno(), stdout=subprocess.DEVNULL, start_new_session=True, env=env,
        )
        theirs.close()
        self._lock = threading.Lock()
        self._replies: "queue.SimpleQueue[dict | None]" = queue.SimpleQueue()
        self._exits: dict[int, int] = {}
        self._exit_cond = threading.Condition()
        self.sock.settimeout(START_TIMEOUT)
        try:
            hello = self._read()
            if hello and hello.get("ready") and hello.get("threads"):
                hello = {"error": f"preload() started threads ({hello['threads']}): forking would be unsafe"}
        except OSError:
            hello = None
        self.sock.settimeout(None)
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
                    while len(self._exits) > 256:  # statuses nobody asked for (clean exits)
                        del self._exits[next(iter(self._exits))]
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
    """One sandboxed evaluator. One driver thread reads its frames; any thread may ``send``/``kill``.

    Both launch paths use pipes this object creates and alone closes.
    """

    def __init__(self, worktime_ref: str, network: bool = False, env: dict[str, str] | None = None,
                 zygote: Zygote | None = None, start_timeout: float = START_TIMEOUT) -> None:
        self.heartbeat = Heartbeat()
        self.zygote = zygote
        self.proc: subprocess.Popen | None = None
        self.pid = 0
        self._status: int | None = None  # exit status as subprocess reports it (negative: signal)
        self._send_lock = threading.Lock()
        self._unpacker = unpacker()
        self._packer = packer()
        self._stderr_tail: collections.deque[bytes] = collections.deque(maxlen=64)
        self.kill_reason: SliceError | None = None
        self.kill_index: int | None = None
        self.killed = False  # kill() was called: no run may be sent to it, reaped or not
        #: Whether it had no child process after its first prepare and can start none
        #: (``cannot_spawn``): then it never has any, and the watchdog stops looking for them.
        self.sealed = False
        self.born: float | None = None
        self.baseline_rss = 0
        self.slices_run = 0
        self.started = time.monotonic()
        self.job_id: str | None = None
        #: What ``runner/isolation.py`` applied, as its ``ready`` frame reports it.
        self.isolation: dict[str, Any] = {}
        (in_r, in_w), (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe(), os.pipe()
        self._stdin = os.fdopen(in_w, "wb", buffering=0)
        self._stdout_fd, self._stderr_fd = out_r, err_r
        try:
            try:
                if zygote is not None:
                    self.pid = zygote.fork([in_r, out_w, err_w, self.heartbeat.fd], network)
                else:
                    cmd = [sys.executable, "-m", "dcp_worktimes.runner.evaluator", "--worktime", worktime_ref,
                           "--heartbeat-fd", str(self.heartbeat.fd), "--parent", str(os.getpid())]
                    if network:
                        cmd.append("--network")
                    self.proc = launch(cmd, stdin=in_r, stdout=out_w, stderr=err_w, pass_fds=(self.heartbeat.fd,),
                                       start_new_session=True, env=env)
                    self.pid = self.proc.pid
            finally:
                for fd in (in_r, out_w, err_w):  # the child's ends: only the child keeps them
                    os.close(fd)
            self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
            self._stderr_thread.start()
            ready = self.expect("ready", timeout=start_timeout)
        except BaseException:
            self.close(timeout=0)
            raise
        self.isolation = ready.get("isolation", {})
        #: When the process started (psutil ``create_time``): its pid is ours only while it matches.
        self.born = started(self.pid)
        #: Resident memory when it started, before any job: what ``prepare`` adds is the job's.
        self.start_rss = int(ready.get("rss") or 0)
        #: What ``runner/lockdown.py`` applied (reported with the first ``prepared`` frame).
        self.lockdown: dict[str, Any] = {}

    def cannot_spawn(self) -> bool:
        """Whether this evaluator's seccomp filter denies new processes: so its lockdown report
        says, and the kernel confirms it runs under a filter (``Seccomp: 2`` in its status)."""
        seccomp = self.lockdown.get("seccomp") or {}
        if not seccomp.get("applied") or "fork" not in (seccomp.get("denied") or ()):
            return False
        if "clone" in (seccomp.get("not_on_this_system") or ()):  # its rule could not be added
            return False
        try:
            with open(f"/proc/{self.pid}/status") as f:
                return any(line.split() == ["Seccomp:", "2"] for line in f)
        except OSError:
            return False

    # -- frames -------------------------------------------------------------------------------
    def send(self, msg: dict) -> None:
        """Write one frame. ``UnserializableValue`` if the message cannot be encoded (the evaluator
        is fine); ``EvaluatorDied`` if the pipe is gone."""
        # Locked: a cancel from the caller's thread must not interleave with a big "run" frame.
        with self._send_lock:
            try:
                data = self._packer.pack(msg)
            except UnicodeEncodeError:  # a lone surrogate (in the work text ...): values.pack carries it
                self._packer = packer()  # a failed pack may leave partial data behind
                data = pack(msg)
            except (ValueError, TypeError, OverflowError) as e:
                self._packer = packer()
                raise UnserializableValue(f"cannot send to the evaluator: {type(e).__name__}: {e}") from None
            try:
                self._stdin.write(data)
            except (BrokenPipeError, OSError, ValueError):
                raise EvaluatorDied(self.kill_reason or self._crash_reason(), self.kill_index) from None

    def frames(self, timeout: float | None = None) -> Iterator[dict]:
        """Frames as they arrive; raises ``EvaluatorDied`` at end of stream (or after ``timeout`` s)."""
        fd = self._stdout_fd
        unp = self._unpacker
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            while True:
                try:
                    msg = next(unp)
                except StopIteration:
                    break
                except (ValueError, TypeError, msgpack.UnpackException) as e:  # nested too deep, malformed
                    # The stream cannot be trusted past this point: the evaluator goes, saying why.
                    self.kill(SliceError(f"the evaluator sent a frame the worker cannot read ({type(e).__name__}: "
                                         f"{e or 'nested too deeply'})", code=ErrorCode.ECRASH))
                    raise EvaluatorDied(self.kill_reason, self.kill_index) from None
                if type(msg) is not dict or type(msg.get("t")) is not str:
                    # Bytes that decode but are no frame: code in the evaluator wrote to its message
                    # channel (a descriptor of its own: the worktime's, or its work's, writing blindly).
                    self.kill(SliceError(f"the evaluator sent a malformed message (a {type(msg).__name__} where a "
                                         "frame belongs: code in it wrote to its message channel)", code=ErrorCode.ECRASH))
                    raise EvaluatorDied(self.kill_reason, self.kill_index)
                yield msg
            if deadline is not None:
                ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
                if not ready:
                    self.kill(SliceError(f"the evaluator did not answer within {timeout:g}s", code=ErrorCode.ECRASH))
            try:
                data = os.read(fd, 1 << 16)
            except OSError:
                data = b""
            if not data:
                raise EvaluatorDied(self.kill_reason or self._crash_reason(), self.kill_index)
            unp.feed(data)

    def expect(self, kind: str, timeout: float | None = None) -> dict:
        for msg in self.frames(timeout):
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
        first, self.killed = not self.killed, True
        if reason is not None and self.kill_reason is None:
            self.kill_reason, self.kill_index = reason, index
        if not self.pid or self._status is not None:  # never signal a pid that may have been reused
            return
        if first and not self.sealed and self.born is not None:
            # Its engine's processes, some maybe in sessions of their own, before they go to init
            # (once: the watchdog asks again each tick until the process is reaped).
            end_descendants(self.pid, self.born)
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
        if self._status is not None or self.killed:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return self.wait(0) is None if self.proc is not None else True

    def close(self, timeout: float = 1.0) -> None:
        """Ask the evaluator to exit (so ``release()`` cleans up), then make sure it is gone."""
        if self.pid and self._status is None and timeout > 0:
            try:
                self.send({"op": "exit"})
                self._stdin.close()
                self._await_eof(timeout)  # the child closes its end when it exits
            except (EvaluatorDied, OSError):
                pass
        self.kill()
        # Our own child is reaped here, and then the host's mount-point folder of its private area
        # goes; a zygote reaps its children and removes their folders itself.
        if self.proc is not None and self.wait(5) is not None:
            remove_area(self.isolation.get("area"), self.pid)
        try:
            self._stdin.close()
        except OSError:
            pass
        for fd in (self._stdout_fd, self._stderr_fd):
            try:
                os.close(fd)
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
        if hasattr(self, "_stderr_thread"):
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
        tail = redact(self.stderr_tail())  # the deployer learns how it died, not where the worker lives
        if tail:
            msg += f"; its last output:\n{tail}"
        return SliceError(msg, code=ErrorCode.ECRASH)


def zygotes_enabled() -> bool:
    return os.environ.get(ENV_ZYGOTE, "1").strip().lower() not in ("0", "false", "no", "off")
