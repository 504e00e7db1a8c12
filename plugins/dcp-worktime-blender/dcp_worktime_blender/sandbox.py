"""The OS-level sandbox Blender runs in: bubblewrap, plus a seccomp filter where libseccomp is.

Blender runs native code and Python the deployer controls (scene scripts, and scripts or drivers
inside .blend files), so the engine itself confines nothing. Every Blender process of a job is
started as ``bwrap ARGS blender ...`` (``command()``), which gives it:

* new user, PID, network, IPC, UTS and cgroup namespaces: no network at all, only its own
  processes visible, and it dies with the evaluator (``--die-with-parent``; the PID namespace
  takes every process the work started down with it);
* no capabilities, uid/gid 65534, no further user namespaces (``--disable-userns``);
* a read-only view of the system: ``/usr`` and the ``/lib``-style links, a few files of ``/etc``
  the loader and fonts need (not ``/etc/passwd``, no home directory), a minimal ``/dev`` and its
  own ``/proc``;
* the job's files read-only at ``/job``; the only writable place is ``/scratch``, a tmpfs of a
  fixed size (``/tmp`` points into it), so a work that fills it gets ``ENOSPC``, not the disk;
  the sandbox's own ``/`` and ``/dev`` are remounted read-only, so they are no second scratch;
* a seccomp filter (``seccomp_program()``, built with libseccomp when its Python binding
  ``pyseccomp`` and the library load): no new processes (``fork``, ``vfork``, ``clone`` without
  ``CLONE_THREAD``: threads still work), no sockets but ``AF_UNIX``, none of the kernel interfaces
  a sandboxed renderer never needs (``ptrace``, ``bpf``, ``keyctl``, ``mount``, ``io_uring`` ...).

``probe()`` says whether bwrap works here (it needs unprivileged user namespaces, or root).
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass

#: Files and folders of /etc that Blender's loader, fonts and libraries read (bound read-only when present).
ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "fonts", "localtime")
#: The top-level links (or folders, on systems without merged /usr) that point into /usr.
ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
#: The sandbox's user: nobody.
UID = GID = 65534
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap)"

#: Syscalls the filter refuses with EPERM: process creation is handled separately (threads allowed).
DENIED = (
    "fork", "vfork", "execveat", "ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen",
    "fsmount", "fsconfig", "fspick", "mount_setattr", "keyctl", "add_key", "request_key", "bpf",
    "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot", "swapon",
    "swapoff", "acct", "quotactl", "syslog", "name_to_handle_at", "open_by_handle_at", "iopl", "ioperm",
    "personality", "lookup_dcookie", "uselib", "vhangup", "pidfd_getfd",
)
CLONE_THREAD = 0x00010000


@dataclass(frozen=True)
class Sandbox:
    """What confines Blender on this machine: ``bwrap`` (its path) or nothing, and ``seccomp``."""

    bwrap: str | None
    seccomp: bool
    #: Why there is no bwrap sandbox (a sentence naming the fix), ``None`` when there is one.
    reason: str | None = None

    @property
    def name(self) -> str:
        return "bwrap" if self.bwrap else "none"


@functools.lru_cache(maxsize=1)
def probe() -> Sandbox:
    """Find bwrap and check, once per process, that it can build our sandbox here."""
    seccomp = seccomp_program() is not None
    path = shutil.which("bwrap")
    if path is None:
        return Sandbox(None, seccomp, f"bwrap is not installed; {INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="dcp-bwrap-check-") as job_dir:
        argv = command(path, ["/usr/bin/true"], job_dir, scratch_size=1 << 20)
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            return Sandbox(None, seccomp, f"bwrap could not be run: {e}")
    if done.returncode != 0:
        said = done.stderr.decode("utf-8", "replace").strip().splitlines()
        return Sandbox(None, seccomp, f"bwrap cannot create its sandbox here ({said[-1] if said else done.returncode}); "
                                      "it needs unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1) "
                                      "or root")
    return Sandbox(path, seccomp)


def command(bwrap: str, argv: list[str], job_dir: str, *, scratch_size: int, seccomp_fd: int | None = None,
            extra_ro: tuple[str, ...] = ()) -> list[str]:
    """``bwrap ... argv``: run ``argv`` confined, with ``job_dir`` read-only at ``/job`` and a
    ``scratch_size``-byte tmpfs at ``/scratch``; ``extra_ro`` folders are bound read-only at
    their own paths (a Blender installed outside /usr)."""
    args = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--cap-drop", "ALL",
            "--uid", str(UID), "--gid", str(GID), "--die-with-parent", "--new-session", "--clearenv",
            "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/scratch", "--setenv", "TMPDIR", "/scratch/tmp",
            "--setenv", "LANG", "C.UTF-8",
            "--ro-bind", "/usr", "/usr"]
    for name in ROOT_LINKS:
        path = "/" + name
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for name in ETC:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    for path in extra_ro:
        args += ["--ro-bind", path, path]
    # /tmp points into /scratch, unless Blender itself lives under /tmp (TMPDIR says where then).
    tmp_link = [] if any(p == "/tmp" or p.startswith("/tmp/") for p in extra_ro) else ["--symlink", "/scratch/tmp", "/tmp"]
    args += ["--proc", "/proc", "--dev", "/dev",
             "--perms", "1777", "--size", str(scratch_size), "--tmpfs", "/scratch",
             "--perms", "1777", "--dir", "/scratch/tmp", *tmp_link,
             "--ro-bind", job_dir, "/job", "--symlink", "/proc/self/mounts", "/etc/mtab",
             # Last: bwrap builds / and /dev as in-memory tmpfs; writable, they would be a second,
             # uncapped scratch space (memory no process's resident set shows).
             "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/scratch"]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    return args + ["--", *argv]


@functools.lru_cache(maxsize=1)
def seccomp_program() -> bytes | None:
    """The compiled BPF program bwrap loads (``--seccomp FD``), or ``None`` without libseccomp."""
    try:
        import pyseccomp as sc  # raises RuntimeError itself when libseccomp.so is missing
    except (ImportError, RuntimeError, OSError):
        return None
    try:
        f = sc.SyscallFilter(sc.ALLOW)
        deny = sc.ERRNO(errno.EPERM)
        for name in DENIED:
            try:
                f.add_rule(deny, name)
            except (ValueError, OSError):  # a syscall this architecture does not have
                pass
        # clone3 passes its flags in memory, where a filter cannot look: say "not implemented",
        # and the C library falls back to clone, whose flags it can check.
        f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
        f.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
        f.add_rule(deny, "socket", sc.Arg(0, sc.NE, socket.AF_UNIX))
        f.add_rule(deny, "socketpair", sc.Arg(0, sc.NE, socket.AF_UNIX))
        with tempfile.TemporaryFile() as out:
            f.export_bpf(out)
            out.seek(0)
            return out.read()
    except (OSError, ValueError, RuntimeError):
        return None


def seccomp_fd() -> int | None:
    """A readable descriptor holding the BPF program (bwrap reads it at start), or ``None``.
    The caller passes it to the child and closes it after the start."""
    program = seccomp_program()
    if program is None:
        return None
    fd = os.memfd_create("dcp-blender-seccomp", 0)
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
