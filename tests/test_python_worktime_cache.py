"""One compiled-module cache for every python-worktime test (and evaluator process they start).

Compiling CPython-for-WASI takes ~2 minutes, so the suite must compile it at most once per
machine: the cache is the user's persistent one (or ``$DCP_WORKTIMES_CACHE`` as it was when the
test session started), never a per-test temporary folder. Other tests may point
``DCP_WORKTIMES_CACHE`` at a temporary folder; the ``python_cache`` fixture puts ours back for
the duration of the python tests, and ``warm`` compiles (or loads) once per session.
"""

from __future__ import annotations

import os

import platformdirs
import pytest

#: Read at import (collection) time, before any test has monkeypatched the variable.
PYTHON_CACHE = os.environ.get("DCP_WORKTIMES_CACHE") or platformdirs.user_cache_dir("dcp-worktimes")

#: A first compile on a fresh, busy 2-core machine: generous, only ever reached once per machine.
FIRST_COMPILE_TIMEOUT = 900


def runtime_available() -> bool:
    try:
        from dcp_worktimes.pywasi.artifacts import find_runtime

        find_runtime()
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def python_cache():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DCP_WORKTIMES_CACHE", PYTHON_CACHE)
        yield PYTHON_CACHE


@pytest.fixture(scope="module")
def warm(python_cache):
    """The compiled runtime (compiled here at most once per machine, with progress on stderr)."""
    import sys

    from dcp_worktimes.pywasi.compiled import load

    last = [0.0]

    def show(fraction, message):
        if fraction is None or fraction - last[0] >= 0.1 or fraction >= 1.0:
            last[0] = fraction or last[0]
            print(f"[python worktime] {message}", file=sys.stderr)

    return load(show)
