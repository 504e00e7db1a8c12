"""Every test session (tests/ and each plugin's tests) runs against its own job store and cache.

No test writes to the user's real job store (``~/.local/share/dcp-worktimes``) or cache
(``~/.cache/dcp-worktimes``): both variables point into a temporary folder for the whole session,
for subprocesses too. The one expensive artifact, the python worktime's compiled CPython
(~2 minutes to compile), is taken from the user's cache when ``dcp-worker warmup --worktime
python`` left one there (copied: a hard link would share the file's inode, and the cache's LRU
``utime`` on a hit would then change the user's file); otherwise the session compiles its own.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_SESSION = Path(tempfile.mkdtemp(prefix="dcp-worktimes-tests-"))


def _user_cache() -> Path:
    import platformdirs

    return Path(os.environ.get("DCP_WORKTIMES_CACHE") or platformdirs.user_cache_dir("dcp-worktimes"))


def _seed(source: Path, target: Path) -> None:
    """The user's compiled WebAssembly modules, copied into the session's cache (read, never touched)."""
    found = source / "wasm"
    if not found.is_dir():
        return
    (target / "wasm").mkdir(parents=True, exist_ok=True)
    for item in found.glob("*.cwasm"):
        shutil.copyfile(item, target / "wasm" / item.name)


_seed(_user_cache(), _SESSION / "cache")
os.environ["DCP_WORKTIMES_CACHE"] = str(_SESSION / "cache")
os.environ["DCP_SCHEDULER"] = f"sqlite:///{_SESSION}/jobs.db"


def pytest_sessionfinish(session, exitstatus):  # noqa: ARG001 - pytest's hook signature
    shutil.rmtree(_SESSION, ignore_errors=True)
