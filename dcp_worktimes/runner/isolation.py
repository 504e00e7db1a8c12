"""Process-level isolation applied by an evaluator to itself before it loads any work.

Layers (each best effort, reported in ``describe()``; the engine's own sandbox is the first line):

* ``PR_SET_PDEATHSIG``: the evaluator dies with its worker, never orphaned;
* ``RLIMIT_CORE = 0``: a crashing engine does not dump the work's memory to disk;
* a private, empty network namespace (``unshare(CLONE_NEWNET)``, or with a user namespace when
  unprivileged): even an engine escape finds no network interface but a downed loopback.
  Worktimes that need the network (a local inference server) set ``Worktime.network = True``.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(None, use_errno=True)


def _unshare(flags: int) -> bool:
    return _libc.unshare(flags) == 0


def apply(network: bool = False, parent_pid: int | None = None) -> dict[str, bool]:
    """Isolate the calling (single-threaded, freshly started) process; return what took effect."""
    done: dict[str, bool] = {}
    done["pdeathsig"] = _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    if parent_pid is not None and os.getppid() != parent_pid:  # parent died before prctl took effect
        os._exit(1)
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        done["no_core"] = True
    except (ValueError, OSError):
        done["no_core"] = False
    if not network:
        uid, gid = os.getuid(), os.getgid()
        ok = _unshare(CLONE_NEWNET)
        if not ok and _unshare(CLONE_NEWUSER | CLONE_NEWNET):
            ok = True
            _map_ids(uid, gid)
        done["no_network"] = ok
    return done


def _map_ids(uid: int, gid: int) -> None:
    # Keep our own uid/gid inside the new user namespace so files we create stay ours.
    try:
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"{uid} {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"{gid} {gid} 1")
    except OSError:
        pass
