"""What of the worker's own failures may reach a deployer: the kind of failure, never the host.

A deployer is a stranger. When a worktime or an engine binding raises something unexpected, the
error event says *what* failed (the exception's type and message) but never *where* on the
worker: no Python traceback, no path of the worker's install, home, or temporary folders. The
full traceback goes to the evaluator's stderr, for the worker's owner::

    >>> from dcp_worktimes.runner.redact import redact
    >>> import sys
    >>> redact(f'ValueError: cannot parse {sys.prefix}/lib/x.py')
    'ValueError: cannot parse <host>/lib/x.py'
    >>> redact(f'Traceback (most recent call last):\\n  File "{sys.prefix}/x.py", line 3, in f\\n    g()\\nValueError: bad')
    'ValueError: bad'
"""

from __future__ import annotations

import os
import re
import sys
import sysconfig
import tempfile
import traceback
from functools import lru_cache

from ..errors import ErrorCode, SliceError
from .bounds import cut

#: What a host path prefix becomes.
HOST = "<host>"
#: The most of one message a host failure may quote (an exception's text may hold a whole value).
MAX_MESSAGE = 2000

_FRAME = re.compile(r'^\s*File "[^"]*", line \d+')
#: Python 3.11's markers under a frame's source line (``^^^^``, ``~~~^^^``): nothing without it.
_MARKERS = re.compile(r"^\s*[\^~]+\s*$")


@lru_cache(maxsize=1)
def _prefixes() -> tuple[str, ...]:
    """Folders of this host that say who and where the worker is, longest first."""
    found = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.expanduser("~"), tempfile.gettempdir(),
             os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), os.getcwd()}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            found.add(sysconfig.get_path(key))
        except KeyError:
            pass
    found.update(p for p in sys.path if p.startswith("/"))
    good = {os.path.normpath(p) for p in found if p and len(p) > 1}
    return tuple(sorted(good, key=len, reverse=True))


def redact(text: str) -> str:
    """``text`` without Python traceback frames and with host folders replaced by ``<host>``."""
    lines = text.splitlines()
    out: list[str] = []
    skip_source = skip_markers = False
    for line in lines:
        if line.startswith("Traceback (most recent call last)") or line.strip().startswith("During handling of"):
            continue
        if _FRAME.match(line):
            skip_source = True  # the next, more indented line is the frame's source text
            continue
        if skip_source and line.startswith("    "):
            skip_source, skip_markers = False, True  # and the line after it may mark part of it
            continue
        if skip_markers and _MARKERS.match(line):
            skip_markers = False
            continue
        skip_source = skip_markers = False
        out.append(line)
    text = "\n".join(out)
    for prefix in _prefixes():
        text = text.replace(prefix, HOST)
    return text


def host_failure(exc: BaseException, doing: str, code: ErrorCode = ErrorCode.EUNCAUGHT,
                 worker_fault: bool = False) -> SliceError:
    """The error a deployer gets for an unexpected exception of the worker's own code while
    ``doing`` something; the traceback is printed to stderr (the worker's side) instead."""
    traceback.print_exception(exc, file=sys.stderr)
    try:
        said = str(exc)
    except BaseException:  # noqa: BLE001 - its __str__ raised (or looped into RecursionError): the slice's error all the same
        said = "(its message could not be printed: its __str__ raised)"
    text = cut(redact(f"{type(exc).__name__}: {said}"), MAX_MESSAGE)
    return SliceError(f"{doing}: {text}" if doing else text, code=code, name=type(exc).__name__,
                      worker_fault=worker_fault)
