"""The deployer's work: which worktime it defaults to, and how it becomes the job's work.

Every decision that depends on a worktime belongs to the worktime (``Worktime.capture_work``,
``default_for``, ``validate``: see ``dcp_worktimes/worktime.py``); this module only finds the
worktime and asks it::

    >>> worktime, captured = capture("function (x) { return x * 2 }")
    >>> worktime, captured.work
    ('map-basic', 'function (x) { return x * 2 }')
    >>> capture(square)[0]                                                 # doctest: +SKIP
    'python'

A one-line string that names a file (``"prog.wasm"``, ``"./shot.blend"``) is that file
(``as_work_path``, the one rule the Compute API and ``dcp-worker slice --work`` share); the file
is read here, on the deployer's machine: workers never read the deployer's files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import WorkError, WorktimeNotFound
from ..worktime import CapturedWork, Worktime, work_kind

__all__ = ["as_work_path", "capture", "default_worktime"]

#: The worktime of work whose kind no installed worktime claims (DCP's default worktime).
FALLBACK_WORKTIME = "map-basic"
#: Characters that never occur in a file name someone types, and often in source text.
_NOT_A_PATH = set(" \t\n(){};=<>\"'`")


def as_work_path(text: str, suffixes: frozenset[str] | None = None) -> Path | None:
    """The file a work string names, or ``None`` when it is work text itself.

    A one-line string without spaces or code punctuation that names an existing file is that
    file. One that looks like a path (ends with a work file suffix, or starts with ``/``, ``./``,
    ``../`` or ``~``) but names nothing is a ``WorkError`` saying so, instead of being deployed as
    source text that fails on every slice.

    >>> as_work_path("function (x) { return x }") is None
    True
    """
    if not text or len(text) > 4096 or _NOT_A_PATH & set(text):
        return None
    path = Path(text).expanduser()
    try:
        if path.is_file():
            return path
        exists_as_dir = path.is_dir()
    except OSError:
        return None
    suffixes = _suffixes() if suffixes is None else suffixes
    if path.suffix.lower() in suffixes or text.startswith(("/", "./", "../", "~")):
        what = "a directory, not a file" if exists_as_dir else "there is no such file"
        raise WorkError(f"the work {text!r} looks like a file path, but {what}; pass the path of the work's file "
                        "(or the work's text itself)")
    return None


def _suffixes() -> frozenset[str]:
    from ..plugins import get_worktimes

    return frozenset(k for reg in get_worktimes().values() for k in reg.cls.default_for if k.startswith("."))


def _kind(work: Any) -> str:
    """``work_kind``, with a file of an unknown suffix classified by its content."""
    kind = work_kind(work)
    if kind.startswith(".") and kind not in _suffixes() and isinstance(work, os.PathLike):
        try:
            head = Path(work).expanduser().read_bytes()[:65536]
            head.decode("utf-8")
            return "text" if not head.startswith(b"\0asm") else "bytes"
        except UnicodeDecodeError:
            return "bytes"
        except OSError:
            return kind
    return kind


def default_worktime(work: Any) -> str:
    """The worktime ``work`` runs on when the job names none: the installed worktime whose
    ``default_for`` claims its kind (built-ins first), else ``map-basic``."""
    from ..plugins import get_worktimes

    kind = _kind(work)
    claims = [reg for reg in get_worktimes().values() if kind in reg.cls.default_for]
    claims.sort(key=lambda reg: reg.provider != "dcp-worktimes")  # a plugin never takes over a built-in's kind
    return claims[0].name if claims else FALLBACK_WORKTIME


def capture(work: Any, worktime: str | None = None, *, installed: bool = True) -> tuple[str, CapturedWork]:
    """``(worktime name, captured work)`` for what the deployer passed as work.

    ``worktime``: the job's worktime if it names one, else ``default_worktime(work)``.
    ``installed=False`` (a custom worktime that only remote workers have): the generic capture of
    the contract (text, bytes, files). ``WorkError`` says what is wrong and what to pass instead.
    """
    if isinstance(work, CapturedWork):
        return worktime or FALLBACK_WORKTIME, work
    if isinstance(work, str):
        path = as_work_path(work)
        if path is not None:
            work = path
    name = worktime or default_worktime(work)
    cls: type[Worktime] = Worktime
    if installed:
        from ..plugins import get_worktime

        try:
            cls = get_worktime(name).cls
        except WorktimeNotFound as missing:
            # The job's checks say ENOWORKTIME with the installed list; capture what we can, and
            # say that now if even that fails (a Python function for "Python": not "(custom)").
            try:
                return name, Worktime.capture_work(work)
            except WorkError:
                raise missing from None
    return name, cls.capture_work(work)
