"""The python worktime's runtime for the tests: one compiled-module cache for all of them.

Compiling CPython-for-WASI takes ~2 minutes, so the suite compiles it at most once per session:
the cache is the session's (the repository's conftest.py points ``$DCP_WORKTIMES_CACHE`` at it and
links in what ``dcp-worker warmup`` left in the user's cache), never a per-test temporary folder.
Other tests may point ``DCP_WORKTIMES_CACHE`` at a temporary folder; the ``python_cache`` fixture
(tests/conftest.py) puts the session's back for the python tests, and ``warm`` compiles (or loads) once.
"""

from __future__ import annotations

import os

import platformdirs

#: Read at import (collection) time, before any test has monkeypatched the variable.
PYTHON_CACHE = os.environ.get("DCP_WORKTIMES_CACHE") or platformdirs.user_cache_dir("dcp-worktimes")

#: A first compile on a fresh, busy 2-core machine: generous, only ever reached once per machine.
FIRST_COMPILE_TIMEOUT = 900


def runtime_available() -> bool:
    try:
        from dcp_worktimes.worktimes.python.artifacts import find_runtime

        find_runtime()
        return True
    except Exception:
        return False
