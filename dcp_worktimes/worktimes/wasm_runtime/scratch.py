"""The size cap of a guest's scratch directory (its writable ``/tmp``), shared by the WASI worktimes.

A guest may write files only there; without a cap one slice could fill the worker's disk.

**In an evaluator** (with a private mount namespace, see ``runner/isolation.py``) the scratch
folder is a ``tmpfs`` of exactly the cap (``make_scratch``): the kernel counts every byte,
including files the guest unlinked but keeps open and the pages of sparse files, and a write
past the cap fails with ``ENOSPC`` in the guest. ``ScratchCap.check()`` then only reads the
file system's counters (``statvfs``, one system call, on every watchdog tick) to turn a full
scratch into the slice's ``exceeded("scratch")`` error.

**Elsewhere** (in-process use, or without user namespaces) the folder is on the host's disk and
the watchdog measures it: a directory walk at most every ``interval`` seconds, plus the files the
process holds open under it after they were unlinked (``/proc/self/fd``). That cap is soft by what
one interval of writing adds::

    cap = ScratchCap("/path/to/scratch", 64 << 20)
    error = cap.check()          # None, or SliceError(EOUTPUTLIMIT) once the tree is over the cap
"""

from __future__ import annotations

import errno
import os
import time
from typing import Callable

from ...errors import SliceError
from ...limits import exceeded

MiB = 1 << 20
DEFAULT_SCRATCH_SIZE = 64 * MiB
#: The most a job may ask for (``options.scratch_size``); the worker's owner sets it with this variable.
ENV_SCRATCH_LIMIT = "DCP_WORKTIMES_SCRATCH_LIMIT"
DEFAULT_SCRATCH_LIMIT = 1024 * MiB
CHECK_INTERVAL = 0.2
#: What an entry costs at least: empty files and directories use an inode and a block of metadata.
ENTRY_COST = 4096


def scratch_size(option: object) -> int:
    """The cap for a job asking for ``option`` (``None``: the default): never above the worker's limit.

    ``ValueError`` for a value that is not a size. A job cannot lift the cap ("none" means the
    worker's limit): the scratch directory lives on the worker's disk.
    """
    from ...limits import parse_size

    limit = parse_size(os.environ.get(ENV_SCRATCH_LIMIT) or DEFAULT_SCRATCH_LIMIT, ENV_SCRATCH_LIMIT) or DEFAULT_SCRATCH_LIMIT
    asked = parse_size(DEFAULT_SCRATCH_SIZE if option is None else option, "options.scratch_size")
    return limit if asked is None else min(asked, limit)


#: Deeper scratch trees count as over the cap: nothing needs them, and a tree too deep for the
#: host's path length could otherwise hide files from the measurement.
MAX_DEPTH = 64


class Unmeasurable(Exception):
    """The tree cannot be measured (too deep, paths too long, unreadable): treat it as over the cap."""


def tree_size(path: str) -> int:
    """Bytes of disk the tree under ``path`` occupies: allocated blocks, and at least ENTRY_COST per
    entry (a million empty files fill a disk's inodes as surely as bytes fill its blocks).

    ``Unmeasurable`` for a tree deeper than ``MAX_DEPTH`` or one the host cannot read: an entry the
    walk skipped would be disk space nobody counts.
    """
    total = 0
    stack = [(path, 0)]
    while stack:
        here, depth = stack.pop()
        try:
            with os.scandir(here) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if depth >= MAX_DEPTH:
                                raise Unmeasurable(f"directories nested more than {MAX_DEPTH} levels deep")
                            stack.append((entry.path, depth + 1))
                            total += ENTRY_COST
                        else:
                            total += max(entry.stat(follow_symlinks=False).st_blocks * 512, ENTRY_COST)
                    except FileNotFoundError:
                        pass  # deleted by the guest since the listing
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):  # the host is out of descriptors, not the tree unreadable
                raise
            raise Unmeasurable(f"a directory the host cannot read ({e.strerror})") from None
    return total


def remove_tree(path: str) -> None:
    """Delete ``path`` and everything under it, however deep or long its paths, never following a
    symlink; best effort (what cannot be deleted stays, silently, like ``rmtree(ignore_errors)``).

    ``shutil.rmtree`` recurses once per level (a guest's 1000-level tree raised RecursionError)
    and needs whole paths (ENAMETOOLONG). Instead each pass deletes the files one level down and
    renames the directories two levels down up into ``path``: two descriptors open at a time.
    """
    try:
        top = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    except OSError:  # a file or a symlink, not a directory
        _quietly(os.unlink, path)
        return
    moved = 0
    try:
        while True:
            try:
                with os.scandir(top) as it:
                    entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
            except OSError:
                return
            done = 0
            for name, is_dir in entries:
                if not is_dir:
                    done += _quietly(os.unlink, name, dir_fd=top)
                    continue
                try:
                    sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=top)
                except OSError:
                    continue
                try:
                    with os.scandir(sub) as it:
                        inner = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
                    for child, child_is_dir in inner:
                        if not child_is_dir:
                            done += _quietly(os.unlink, child, dir_fd=sub)
                            continue
                        for _ in range(1000):  # up one level, under a name not taken in `top`
                            moved += 1
                            try:
                                os.rename(child, f".dcp-up-{moved}", src_dir_fd=sub, dst_dir_fd=top)
                                done += 1
                                break
                            except OSError as e:
                                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                                    break
                except OSError:
                    pass
                finally:
                    os.close(sub)
                done += _quietly(os.rmdir, name, dir_fd=top)  # fails while its children move up
            if not entries or not done:
                break  # empty, or nothing more can be deleted
    finally:
        os.close(top)
    _quietly(os.rmdir, path)


def _quietly(op: Callable[..., object], *args: object, **kwargs: object) -> int:
    """``op(*args)``; 1 if it worked, 0 if it raised OSError."""
    try:
        op(*args, **kwargs)
        return 1
    except OSError:
        return 0


def make_scratch(path: str, cap: int | None) -> bool:
    """Create the empty folder ``path`` for a guest's ``/tmp``; ``True`` if it is a tmpfs of ``cap``
    bytes that the kernel enforces (in an evaluator with private mounts), ``False`` if it is a
    plain folder the watchdog must measure."""
    from ...runner import isolation

    os.mkdir(path, 0o700)
    return cap is not None and isolation.mount_tmpfs(path, cap)


def unlinked_open_files(path: str) -> int:
    """Bytes of files under ``path`` this process holds open although they were deleted: no walk
    finds them, yet they occupy the disk until closed."""
    prefix = os.path.join(path, "")
    total = 0
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return 0
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(prefix) and target.endswith(" (deleted)"):
                total += os.fstat(int(fd)).st_blocks * 512
        except (OSError, ValueError):
            pass  # closed meanwhile
    return total


class ScratchCap:
    """Check that a scratch tree stays under ``cap`` bytes (``None``: no cap).

    ``kernel``: the folder is a tmpfs of the cap's size (``make_scratch`` said so), read through
    ``statvfs`` on every call; otherwise a walk every ``interval`` seconds."""

    def __init__(self, path: str, cap: int | None, interval: float = CHECK_INTERVAL, *,
                 kernel: bool = False) -> None:
        self.path, self.cap, self.interval, self.kernel = path, cap, interval, kernel
        self._last = 0.0

    def check(self) -> SliceError | None:
        if self.cap is None:
            return None
        if self.kernel:
            return self.full()
        now = time.monotonic()
        if now - self._last < self.interval:
            return None
        self._last = now
        return self.measure()

    def measure(self) -> SliceError | None:
        """The walk (host folder), now: over the cap or unmeasurable → the slice's error."""
        if self.cap is None:
            return None
        if self.kernel:
            return self.full()
        try:
            used = tree_size(self.path) + unlinked_open_files(self.path)
        except Unmeasurable as e:
            return exceeded("scratch", self.cap, detail=str(e))
        except OSError as e:  # EMFILE, ENFILE: a guest holding every descriptor of this process
            if e.errno in (errno.EMFILE, errno.ENFILE):
                return None  # measured again at the next check, and after the slice with its files closed
            raise
        if used > self.cap:
            return exceeded("scratch", self.cap, used=used)
        return None

    def full(self) -> SliceError | None:
        """A kernel-capped scratch that has no room left (bytes or file entries) → the slice's error.

        While the slice runs, the watchdog stops it as soon as its scratch is full (a guest that
        ignores ENOSPC would otherwise spin until its wall time)."""
        try:
            st = os.statvfs(self.path)
        except OSError:
            return None
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        if st.f_bavail == 0:
            return exceeded("scratch", self.cap, used=max(used, self.cap or 0), detail="it is full: further writes fail")
        if st.f_files and st.f_ffree == 0:
            return exceeded("scratch", self.cap, used=max(used, st.f_files * ENTRY_COST),
                            detail=f"no room for another file: {st.f_files:,} files and folders")
        return None
