"""The evaluator's last layer: a seccomp filter and Landlock rules, applied once its engine is loaded.

If a guest ever escaped its engine (a JIT bug in wasmtime, a QuickJS memory bug, a native
library loaded by a future worktime), it would run as the evaluator process: the worker's user,
without network (``isolation.py``). This module takes away what no engine needs once it is
running, so that such an escape can do little more than the work itself could::

    from dcp_worktimes.runner import lockdown
    report = lockdown.apply(network=False, spawns=False, writable=[area, cache])
    # {"seccomp": {"applied": True, "denied": [...]}, "landlock": {"applied": True, "abi": 7, ...}}

**When.** After the job's first ``prepare`` (the engine is loaded, the work compiled, the job's
private mounts made) and before its first slice: mounting is among what is taken away. One job
per evaluator process, so one lockdown per process, and it cannot be undone.

**seccomp** (libseccomp through ``pyseccomp``, synchronised to every thread of the process;
default: allow; a denied call fails with ``EPERM``, so the engine reports an error rather than
dying). Denied, and why:

* new processes and programs: ``fork``, ``vfork``, ``clone`` without ``CLONE_THREAD`` (threads stay
  allowed: wasmtime, QuickJS and CPython use them), ``execve``, ``execveat``; ``clone3`` answers
  ``ENOSYS`` (its flags are out of a filter's reach; glibc then falls back to ``clone``);
* other processes: ``ptrace``, ``process_vm_readv``/``writev``, ``process_madvise``, ``pidfd_getfd``,
  ``pidfd_send_signal``, ``kcmp``; ``kill``/``tgkill``/``rt_(tg)sigqueueinfo`` to any process but this
  one, ``tkill``;
* the file system's shape and other namespaces: ``mount``, ``umount2``, ``pivot_root``, ``chroot``,
  the new mount API (``open_tree``, ``move_mount``, ``fsopen``, ``fsconfig``, ``fsmount``, ``fspick``,
  ``mount_setattr``), ``unshare``, ``setns``;
* sockets: ``socket`` for every address family, and ``socketpair`` except ``AF_UNIX`` (a connected
  pair reaches nothing outside). A ``network = True`` worktime keeps ``AF_UNIX``, ``AF_INET``,
  ``AF_INET6`` and ``AF_NETLINK`` (name resolution) sockets;
* kernel interfaces engines never use, where kernel exploits usually start: ``bpf``,
  ``perf_event_open``, ``userfaultfd``, ``io_uring_*`` (its operations bypass seccomp), ``keyctl``,
  ``add_key``, ``request_key``, ``open_by_handle_at``, ``name_to_handle_at``, module, kexec, swap,
  reboot, clock, hostname, quota, ``acct``, ``syslog``, ``iopl``/``ioperm``, ``personality``.

A ``spawns = True`` worktime (one that runs its engine as a child program, e.g. Blender in
bubblewrap) keeps process creation, ``execve`` and the namespace and mount calls that program's
own sandbox needs; everything else above stays denied.

**Landlock** (the kernel's path-based access control, via its three system calls): the process
may read its Python installation and packages, ``/usr`` and the system libraries, a few files of
``/etc`` (the dynamic loader's cache, the time zone; all of ``/etc`` for a network worktime), its
own ``/proc/<pid>`` and the CPU/memory information files, and read and write only its private
tmpfs area and the worktimes' compile cache (and, where it has no private area, the temporary
folders). Nothing may be executed. With Landlock ABI 4+ a non-network evaluator may neither
connect nor bind TCP; with ABI 6+ it may not signal processes outside itself nor reach abstract
Unix sockets. Landlock restricts the thread that applies it and the threads it starts later; on
kernels before Landlock ABI 8 (no ``TSYNC``), threads an engine started during ``prepare`` keep
their file access (seccomp covers every thread). ``spawns`` worktimes get no Landlock rules: their
child's own sandbox mounts file systems, which Landlock forbids.

What took effect is reported in the evaluator's ``prepared`` frame and by ``describe()`` in
``dcp-worker worktimes --json``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import sys
from typing import Any, Iterable

#: Socket families a ``network = True`` worktime may create.
NETWORK_FAMILIES = (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6, getattr(socket, "AF_NETLINK", 16))

#: Always denied (see the module docstring for why).
DENIED = (
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "pidfd_getfd", "pidfd_send_signal",
    "kcmp", "tkill",
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "keyctl", "add_key", "request_key", "open_by_handle_at", "name_to_handle_at",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot",
    "swapon", "swapoff", "acct", "syslog", "quotactl", "quotactl_fd", "iopl", "ioperm", "personality",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname", "setdomainname", "vhangup",
    "uselib",
)
#: Denied unless the worktime ``spawns`` its engine as a child program.
DENIED_UNLESS_SPAWNS = (
    "fork", "vfork", "execve", "execveat",
    "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick",
    "mount_setattr", "unshare", "setns",
)
CLONE_THREAD = 0x00010000

# -- Landlock's constants (include/uapi/linux/landlock.h) -------------------------------------------
_SYS_CREATE, _SYS_ADD_RULE, _SYS_RESTRICT = 444, 445, 446  # the same on every architecture
_RULE_PATH_BENEATH = 1
_VERSION = 1  # landlock_create_ruleset flag: ask for the ABI version
_TSYNC = 1 << 3  # landlock_restrict_self flag (ABI 8): every thread of the process
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
_FILE_ONLY = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1
PR_SET_NO_NEW_PRIVS = 38

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0: not available)."""
    abi = _libc.syscall(_SYS_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(_VERSION))
    return max(int(abi), 0)


def _seccomp_module() -> Any:
    try:
        import pyseccomp
    except (ImportError, RuntimeError, OSError) as e:  # RuntimeError: libseccomp.so.2 is missing
        raise LockdownUnavailable(f"seccomp: {e} (pip install pyseccomp; apt-get install libseccomp2)") from None
    return pyseccomp


#: Built ahead by ``preload(network=...)`` in a zygote: each forked evaluator inherits a copy.
_READ_PATHS: dict[bool, set[str]] = {}  # the read-only Landlock paths every evaluator shares, by network
_FILTERS: dict[tuple[bool, bool], tuple[Any, list[str]]] = {}  # seccomp filters, all but their per-process rules


def preload(network: bool | None = None) -> None:
    """Load libseccomp ahead: finding it runs ``ldconfig`` (~25 ms). With ``network`` (a
    zygote, before it forks), also build what every evaluator's lockdown shares: the read-only
    Landlock paths and a seccomp filter for each ``spawns`` value, all but the rules naming the
    evaluator's own pid. Each fork gets its own copy; a new job's lockdown then costs ~2 ms
    instead of ~8 (building ~190 seccomp rules through ctypes, ``sysconfig``'s paths)."""
    try:
        _seccomp_module()
    except LockdownUnavailable:
        return
    if network is None:
        return
    _READ_PATHS[network] = _read_paths(network)
    for spawns in (False, True):
        try:
            _FILTERS[(network, spawns)] = _shared_filter(network, spawns)
        except (OSError, RuntimeError, ValueError):
            pass  # built (and reported) again where it is applied


class LockdownUnavailable(Exception):
    """This machine cannot apply a layer (no libseccomp, no Landlock); the message says why."""


def seccomp_plan(network: bool, spawns: bool) -> dict[str, Any]:
    """What the seccomp filter denies for a worktime (names, as reported)."""
    denied = list(DENIED) + ([] if spawns else list(DENIED_UNLESS_SPAWNS))
    if not spawns:  # spawns: it starts its engine, and signals it (the engine's own sandbox confines that)
        denied += ["clone (new processes; threads allowed)", "clone3 (ENOSYS)",
                   "kill/tgkill/rt_sigqueueinfo/rt_tgsigqueueinfo to other processes"]
    families = "AF_UNIX, AF_INET, AF_INET6, AF_NETLINK" if network else "none"
    return {"denied": denied, "sockets_allowed": families, "socketpair": "AF_UNIX only"}


def _deny(sc: Any, f: Any, skipped: list[str], name: str, *args: Any, action: int | None = None) -> None:
    try:
        f.add_rule(sc.ERRNO(errno.EPERM) if action is None else action, name, *args)
    except (ValueError, OSError, RuntimeError):
        skipped.append(name)  # not a system call on this architecture / libseccomp


def _shared_filter(network: bool, spawns: bool) -> tuple[Any, list[str]]:
    """The seccomp filter's rules that do not depend on the process (not loaded), and the
    calls this system lacks."""
    sc = _seccomp_module()
    f = sc.SyscallFilter(defaction=sc.ALLOW)
    f.set_attr(sc.Attr.CTL_TSYNC, 1)  # every thread, including the engine's
    skipped: list[str] = []
    for name in DENIED + (() if spawns else DENIED_UNLESS_SPAWNS):
        _deny(sc, f, skipped, name)
    if not spawns:
        _deny(sc, f, skipped, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))  # no CLONE_THREAD: a new process
        _deny(sc, f, skipped, "clone3", action=sc.ERRNO(errno.ENOSYS))
    for name, allowed in (("socket", NETWORK_FAMILIES if network else ()), ("socketpair", (socket.AF_UNIX,))):
        # Compared exactly below 64 (the kernel reads an int: any value with high bits set is >= 64).
        for family in range(64):
            if family not in allowed:
                _deny(sc, f, skipped, name, sc.Arg(0, sc.EQ, family))
        _deny(sc, f, skipped, name, sc.Arg(0, sc.GE, 64))
    return f, skipped


def apply_seccomp(network: bool, spawns: bool) -> dict[str, Any]:
    sc = _seccomp_module()
    # A zygote's prebuilt filter is this process's own copy (fork): taken, so never loaded twice.
    f, skipped = _FILTERS.pop((network, spawns), None) or _shared_filter(network, spawns)
    if not spawns:  # a worktime that runs its engine as a child program must be able to stop it
        me = os.getpid()
        for name in ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
            _deny(sc, f, skipped, name, sc.Arg(0, sc.NE, me))
    f.load()
    return {"applied": True, **seccomp_plan(network, spawns), **({"not_on_this_system": skipped} if skipped else {})}


def _read_paths(network: bool) -> set[str]:
    """The folders and files every evaluator may read (those that exist), but its own ``/proc``
    and ``sys.path`` (read when applied)."""
    import sysconfig

    read = {sys.prefix, sys.base_prefix, sys.exec_prefix, "/usr", "/lib", "/lib64", "/lib32",
            "/etc/ld.so.cache", "/etc/localtime", "/proc/meminfo", "/proc/cpuinfo", "/proc/stat",
            "/sys/devices/system/cpu",
            os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        read.add(sysconfig.get_path(key))
    if network:
        read.add("/etc")
    return {p for p in read if os.path.exists(p)}


def _import_roots() -> set[str]:
    """The folders this process imported modules from (the ``sys.path`` entry behind each)."""
    roots = set()
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if not file or name == "__main__":
            continue
        folder = os.path.dirname(os.path.abspath(file))
        # a.b in <root>/a/b.py or <root>/a/b/__init__.py: up one folder per dotted part but the module's own
        depth = name.count(".") + (1 if os.path.basename(file).startswith("__init__.") else 0)
        for _ in range(depth):
            folder = os.path.dirname(folder)
        roots.add(os.path.normpath(folder))
    return roots


def _landlock_rules(network: bool, writable: Iterable[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """``([(path, "r" | "rw" | "dev")], rw folders)`` for this process."""
    shared = _READ_PATHS.get(network) or _read_paths(network)
    # sys.path as it is now (a worktime's preload() or prepare() may have added to it), but for
    # the folder the worker was started in, which `python -m` puts first: from / or a home folder
    # that made every file there readable. It stays only if modules were imported from it.
    here = os.path.normpath(os.getcwd())
    entries = {os.path.normpath(p) for p in sys.path if p and os.path.isabs(p) and os.path.exists(p)}
    if here in entries and here not in _import_roots():
        entries.discard(here)
    own = entries | {f"/proc/{os.getpid()}"}
    rules = [(p, "r") for p in sorted(shared | own)]
    rules += [(p, "dev") for p in ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
              if os.path.exists(p)]
    rw = sorted({os.path.realpath(p) for p in writable if p and os.path.isdir(p)})
    rules += [(p, "rw") for p in rw]
    return rules, rw


def apply_landlock(network: bool, writable: Iterable[str]) -> dict[str, Any]:
    abi = landlock_abi()
    if abi < 1:
        raise LockdownUnavailable("Landlock is not enabled in this kernel (needs Linux 5.13+ with lsm=landlock)")
    fs = _FS_BY_ABI.get(abi, _FS_BY_ABI[5])
    attr = _RulesetAttr(handled_access_fs=fs)
    size = 8
    if abi >= 4 and not network:
        attr.handled_access_net = NET_BIND_TCP | NET_CONNECT_TCP  # handled, never allowed: no TCP
    if abi >= 4:
        size = 16
    if abi >= 6:
        attr.scoped = SCOPE_SIGNAL | SCOPE_ABSTRACT_UNIX_SOCKET
        size = 24
    ruleset = _libc.syscall(_SYS_CREATE, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise LockdownUnavailable(f"landlock_create_ruleset failed: {os.strerror(ctypes.get_errno())}")
    rights = {"r": READ_FILE | READ_DIR, "dev": READ_FILE | WRITE_FILE,
              "rw": fs & ~(EXECUTE | (1 << 6) | (1 << 11))}  # no exec, no device nodes
    rules, rw = _landlock_rules(network, writable)
    try:
        for path, kind in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                allowed = rights[kind] & fs
                if not os.path.isdir(path):
                    allowed &= _FILE_ONLY
                rule = _PathBeneath(allowed_access=allowed, parent_fd=fd)
                if _libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), ctypes.c_uint32(0)):
                    raise LockdownUnavailable(f"landlock_add_rule({path}) failed: {os.strerror(ctypes.get_errno())}")
            finally:
                os.close(fd)
        if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise LockdownUnavailable("prctl(PR_SET_NO_NEW_PRIVS) failed")
        all_threads = abi >= 8
        flags = _TSYNC if all_threads else 0
        if _libc.syscall(_SYS_RESTRICT, ruleset, ctypes.c_uint32(flags)) != 0:
            raise LockdownUnavailable(f"landlock_restrict_self failed: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)
    return {"applied": True, "abi": abi, "writable": rw, "all_threads": all_threads,
            "tcp": "allowed" if network or abi < 4 else "denied",
            "signals_outside": "denied" if abi >= 6 else "allowed", "execute": "denied"}


def apply(*, network: bool, spawns: bool, writable: Iterable[str]) -> dict[str, Any]:
    """Lock the calling process down (once, irreversibly); what took effect, layer by layer.

    A layer this machine cannot apply is reported as ``{"applied": False, "reason": ...}``; the
    evaluator runs on with the others (as it does without a network namespace)."""
    report: dict[str, Any] = {}
    preload()  # first: finding libseccomp runs ldconfig, which Landlock (no execute) would then refuse
    if spawns:
        report["landlock"] = {"applied": False, "reason": "the worktime runs its engine as a child program "
                                                          "with its own sandbox (spawns = True)"}
    else:
        try:
            report["landlock"] = apply_landlock(network, writable)
        except LockdownUnavailable as e:
            report["landlock"] = {"applied": False, "reason": str(e)}
    try:
        report["seccomp"] = apply_seccomp(network, spawns)
    except LockdownUnavailable as e:
        report["seccomp"] = {"applied": False, "reason": str(e)}
    except OSError as e:  # seccomp_load refused (e.g. seccomp disabled in this kernel)
        report["seccomp"] = {"applied": False, "reason": f"seccomp: {e}"}
    return report


def describe(network: bool, spawns: bool) -> dict[str, Any]:
    """What an evaluator of such a worktime would apply on this machine (nothing is applied)."""
    try:
        _seccomp_module()
        seccomp: dict[str, Any] = {"available": True, **seccomp_plan(network, spawns)}
    except LockdownUnavailable as e:
        seccomp = {"available": False, "reason": str(e)}
    abi = landlock_abi()
    if spawns:
        landlock: dict[str, Any] = {"available": abi > 0, "applied": False, "reason": "spawns = True"}
    else:
        landlock = {"available": abi > 0, "abi": abi}
        if abi:
            landlock.update({"tcp": "allowed" if network or abi < 4 else "denied", "execute": "denied",
                             "all_threads": abi >= 8})
    return {"when": "after the job's first prepare", "network": network, "spawns": spawns,
            "seccomp": seccomp, "landlock": landlock}
