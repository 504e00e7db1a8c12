"""A zygote: a pre-started process that forks ready evaluators in a few milliseconds.

Starting an evaluator from scratch costs a Python start-up plus imports (~50-100 ms, more under
load), and every job gets fresh evaluators. The zygote pays that once per worktime: it imports the
worktime's module, calls its ``preload()`` (which may import the engine, but must not start
threads: ``fork`` copies only the calling thread), then forks one evaluator per request::

    supervisor ──(socketpair, SEQPACKET)──► zygote ──fork──► evaluator (fds 0/1/2 + heartbeat)
      request: {"network", "parent"} + fds [stdin, stdout, stderr, heartbeat]
      reply:   {"pid"}; later, asynchronously: {"exit": pid, "status": wait status}

The evaluator is the zygote's child, so the zygote reaps it and reports how it died (for
``ECRASH`` messages). The zygote dies with the worker (``PR_SET_PDEATHSIG``) and its evaluators
die with it.
"""

from __future__ import annotations

import argparse
import array
import os
import select
import signal
import socket
import threading
import time
import traceback
from typing import Any

import msgpack

from . import isolation

MAX_FDS = 4


def _recv(sock: socket.socket) -> tuple[dict | None, list[int]]:
    fds = array.array("i")
    msg, anc, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    if not msg:
        return None, []
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    return msgpack.unpackb(msg), list(fds)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--worktime", required=True)
    ap.add_argument("--parent", type=int, required=True)
    args = ap.parse_args(argv)
    # Die with the worker; namespaces are per evaluator (each fork makes its own).
    isolation.apply(network=True, parent_pid=args.parent, private_mounts=False)
    from . import lockdown
    from .evaluator import _load_class, serve

    from ..cache import cache_root

    cache_root()  # platformdirs, which the lockdown's write rules need (a new job's first ms count)
    import psutil  # noqa: F401  (an evaluator with child processes measures them: ~30 ms to import)

    sock = socket.socket(fileno=0)  # the supervisor hands us our end of a socketpair as stdin
    try:
        cls: Any = _load_class(args.worktime)
        # Every evaluator forked from here has libseccomp loaded, and its lockdown's shared part built.
        lockdown.preload(network=bool(getattr(cls, "network", False)))
        preload = getattr(cls, "preload", None)
        if callable(preload):
            preload()
        # A preload that started threads makes fork unsafe: the supervisor then starts plainly.
        sock.send(msgpack.packb({"ready": True, "threads": threading.active_count() - 1}))
    except Exception as e:
        sock.send(msgpack.packb({"ready": False, "error": f"{type(e).__name__}: {e}"}))
        return

    while True:
        ready, _, _ = select.select([sock], [], [], 0.05)
        try:
            _reap(sock)
            if not ready:
                continue
            req, fds = _recv(sock)
        except OSError:  # the supervisor went away with our news unread (ECONNRESET, EPIPE)
            req = None
        if req is None:
            _reap_last()  # the supervisor closed its end: we are done, once our evaluators are
            return
        pid = os.fork()
        if pid == 0:
            status = 0
            try:
                sock.close()
                os.setsid()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                for target, fd in enumerate(fds[:3]):
                    os.dup2(fd, target)
                for fd in fds[:3]:
                    if fd > 2:
                        os.close(fd)
                serve(cls, fds[3], os.getppid(), bool(req.get("network")))
            except BaseException:
                traceback.print_exc()  # to the evaluator's stderr: the crash report quotes it
                status = 1
            finally:
                os._exit(status)
        for fd in fds:
            os.close(fd)
        try:
            sock.send(msgpack.packb({"pid": pid}))
        except OSError:
            return


def _reap(sock: socket.socket | None) -> bool:
    """Reap the evaluators that exited and tell the supervisor (``sock``); whether any still run."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True
        # The zygote shares the host's mount namespace: removing the dead evaluator's mount-point
        # folder costs little here, and the supervisor need not wait for the exit to do it.
        isolation.remove_areas_of(pid)
        if sock is not None:
            sock.send(msgpack.packb({"exit": pid, "status": status}))


def _reap_last(within: float = 1.0) -> None:
    """Reap the evaluators still exiting (the supervisor asked them to, or killed them); those not
    gone ``within`` seconds die with us (PDEATHSIG), their folders left to the next pool's sweep."""
    deadline = time.monotonic() + within
    while _reap(None) and time.monotonic() < deadline:
        time.sleep(0.01)


if __name__ == "__main__":
    main()
