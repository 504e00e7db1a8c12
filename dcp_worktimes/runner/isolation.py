"""Process-level isolation applied by an evaluator to itself before it loads any work.

Layers (each best effort, reported in ``apply()``'s answer and the evaluator's ``ready`` frame;
the engine's own sandbox is the first line):

* ``PR_SET_PDEATHSIG``: the evaluator dies with its worker, never orphaned;
* ``PR_SET_CHILD_SUBREAPER``: a process an engine starts stays the evaluator's descendant even
  when it detaches (``setsid`` and a double fork), so its memory and CPU are still counted and
  it is ended with the evaluator (``end_descendants``), not left running under init;
* ``RLIMIT_CORE = 0``: a crashing engine does not dump the work's memory to disk;
* ``RLIMIT_NOFILE = MAX_FILES``: a guest hoarding descriptors meets its own limit;
* a private, empty network namespace (``unshare(CLONE_NEWNET)``, or with a user namespace when
  unprivileged): even an engine escape finds no network interface but a downed loopback.
  Worktimes that need the network (a local inference server) set ``Worktime.network = True``;
* a private mount namespace (``private_tmp``): the evaluator's temporary files (the slice's
  input, the job's files, the guest's scratch ``/tmp``) live on ``tmpfs`` mounts only this
  process sees, which vanish with it, however it dies (``private_area``). The scratch is a
  tmpfs of its own, as big as the job's cap (``mount_tmpfs``): the kernel counts every byte,
  unlinked-but-open files and sparse files' pages included, and a write past the cap fails (ENOSPC);
* the seccomp filter and Landlock rules of ``lockdown.py``, applied once the engine is loaded.

::

    done = apply(network=False, parent_pid=os.getppid())   # {"pdeathsig": True, "no_network": True, ...}
    area = private_area()            # e.g. /tmp/dcp-private-4242-x1y2 (None: no private mounts here)
"""

from __future__ import annotations

import ctypes
import os
import re
import resource
import signal
import tempfile
from typing import Any, Iterable, Iterator

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x4000, 0x40000
MNT_DETACH = 2
#: Most descriptors an evaluator (and the guest inside it) may hold: a hoarding guest gets EMFILE,
#: the worker's own limit stays untouched.
MAX_FILES = 4096
#: What one file or folder costs a tmpfs at least (inode and dentry): its inode cap is its size / this.
ENTRY_COST = 4096

_libc = ctypes.CDLL(None, use_errno=True)
_state = {"private_mounts": False, "area": None}
_AREA = re.compile(r"^dcp-private-(\d+)-")


def _unshare(flags: int) -> bool:
    return _libc.unshare(flags) == 0


def apply(network: bool = False, parent_pid: int | None = None, private_mounts: bool = True) -> dict[str, bool]:
    """Isolate the calling (single-threaded, freshly started) process; return what took effect.

    ``private_mounts=False`` for a zygote (each evaluator it forks makes its own namespaces)."""
    done: dict[str, bool] = {}
    done["pdeathsig"] = _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    if parent_pid is not None and os.getppid() != parent_pid:  # parent died before prctl took effect
        os._exit(1)
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        done["no_core"] = True
    except (ValueError, OSError):
        done["no_core"] = False
    if private_mounts:  # an evaluator (a zygote's children are its evaluators: it reaps them itself)
        done["subreaper"] = _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
        done["max_files"] = _limit_files()
    wanted = (0 if network else CLONE_NEWNET) | (CLONE_NEWNS if private_mounts else 0)
    got = _enter(wanted)
    if got != wanted and wanted & CLONE_NEWNET:
        got = _enter(CLONE_NEWNET)  # no mount namespace here: at least the network one
    if not network:
        done["no_network"] = bool(got & CLONE_NEWNET)
    if private_mounts:
        # Our mounts must never propagate back to the host's namespace (nor theirs to us).
        ok = bool(got & CLONE_NEWNS) and _libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) == 0
        _state["private_mounts"] = ok
        done["private_tmp"] = ok
    return done


def started(pid: int) -> float | None:
    """When process ``pid`` of this machine started (``psutil`` create_time), to tell it from a
    later process with its pid; ``None`` if there is no such process."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def end_descendants(pid: int | None = None, born: float | None = None) -> None:
    """SIGKILL every descendant of process ``pid`` (default: this one), detached ones included
    (they are ours: ``PR_SET_CHILD_SUBREAPER``). Called by an evaluator as it exits, and by the
    host before it kills one (its descendants would go to init once it is gone). ``born``: the
    process's start time (psutil ``create_time``): a pid reused by another process since is left
    alone, and so is a process that already exited (a zombie has no descendants of its own)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if born is not None and (proc.create_time() != born or proc.status() == psutil.STATUS_ZOMBIE):
            return
        family = proc.children(recursive=True)
    except (psutil.Error, OSError):  # OSError: /proc unlisted to a process under Landlock
        return
    kill_all(family)


def kill_all(processes: Iterable[Any]) -> None:
    """SIGKILL these ``psutil.Process``es, skipping those gone (psutil checks that a pid was not
    reused by another process since it listed it)."""
    import psutil

    for p in processes:
        try:
            p.kill()
        except psutil.Error:
            pass


def _enter(flags: int) -> int:
    """Unshare ``flags`` (as root directly, else inside a new user namespace); the flags obtained."""
    if not flags:
        return 0
    if _unshare(flags):
        return flags
    uid, gid = os.getuid(), os.getgid()
    if _unshare(CLONE_NEWUSER | flags):
        _map_ids(uid, gid)
        return flags
    return 0


def _limit_files() -> bool:
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        cap = MAX_FILES if hard == resource.RLIM_INFINITY else min(MAX_FILES, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, cap) if soft != resource.RLIM_INFINITY else cap, cap))
        return True
    except (ValueError, OSError):
        return False


def mount_tmpfs(path: str, size: int | None) -> bool:
    """Mount a fresh tmpfs of at most ``size`` bytes (``None``: the kernel's default, half the RAM)
    and ``size / ENTRY_COST`` files on the empty folder ``path``; ``False`` where this process has
    no private mount namespace (outside an evaluator, or without user namespaces)."""
    if not _state["private_mounts"]:
        return False
    opts = "mode=0700"
    if size is not None:
        opts += f",size={max(size, 4096)},nr_inodes={max(64, size // ENTRY_COST)}"
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    return _libc.mount(b"tmpfs", os.fsencode(path), b"tmpfs", flags, opts.encode()) == 0


def unmount(path: str) -> None:
    """Detach a tmpfs ``mount_tmpfs`` made (no-op for a plain folder): its pages are freed once no
    descriptor refers to them."""
    if _state["private_mounts"]:
        _libc.umount2(os.fsencode(path), MNT_DETACH)


def private_area() -> str | None:
    """A folder only this evaluator sees, on a tmpfs that disappears with the process (so a killed
    slice leaves neither its input nor its scratch behind), or ``None`` where there are no private
    mounts (then callers use the host's temporary folder and clean up themselves). The empty
    folder it is mounted on stays on the host: the supervisor removes it when the evaluator is
    gone (``remove_area``), and ``sweep_dead_areas`` those of evaluators whose supervisor died."""
    if _state["area"] is None and _state["private_mounts"]:
        folder = tempfile.mkdtemp(prefix=f"dcp-private-{os.getpid()}-")
        if mount_tmpfs(folder, None):
            _state["area"] = folder
        else:
            os.rmdir(folder)
            _state["private_mounts"] = False
    return _state["area"]


def remove_area(folder: str | None, pid: int) -> None:
    """Remove the host's (empty) mount-point folder of the private area of evaluator ``pid``, which
    has exited (the caller reaped it: removing a live one's would detach its mount). Done by the
    supervisor or the zygote, never the evaluator: in its own mount namespace each ``rmdir``
    costs ~2 ms of a new job."""
    if folder and os.path.basename(folder).startswith(f"dcp-private-{pid}-"):
        try:
            os.rmdir(folder)
        except OSError:
            pass


def remove_areas_of(pid: int) -> None:
    """``remove_area`` for a reaped evaluator whose folder is not known (a zygote's child)."""
    for folder, owner in _areas():
        if owner == pid:
            remove_area(folder, pid)


def sweep_dead_areas() -> None:
    """The host keeps an empty mount-point folder per evaluator whose supervisor was killed before
    it could remove it: remove those of dead processes (only empty folders, and never one of a
    live process: that would detach its mount). Run once when an evaluator pool starts."""
    for folder, owner in _areas():
        if not pid_alive(owner):
            remove_area(folder, owner)


def _areas() -> Iterator[tuple[str, int]]:
    """The private areas' mount-point folders on the host, with the pid of each one's evaluator."""
    base = tempfile.gettempdir()
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        m = _AREA.match(name)
        if m is not None:
            yield os.path.join(base, name), int(m.group(1))


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (``True`` if it exists under another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
