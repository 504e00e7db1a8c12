"""Where dcp-worktimes keeps what it can rebuild (compiled modules, engines' caches, model
digests): ``$DCP_WORKTIMES_CACHE``, else the user cache directory. One function, so that every
worktime (built in or a plugin) and the evaluators' write rules agree on the place::

    cache_root("wasm")      # ~/.cache/dcp-worktimes/wasm on Linux
"""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable that moves the cache (tests point it at a temporary folder).
ENV_CACHE = "DCP_WORKTIMES_CACHE"


def cache_root(*parts: str) -> Path:
    """``$DCP_WORKTIMES_CACHE/<parts>``, or the user cache directory's ``dcp-worktimes/<parts>``."""
    base = os.environ.get(ENV_CACHE)
    if not base:
        import platformdirs

        base = platformdirs.user_cache_dir("dcp-worktimes")
    return Path(base).joinpath(*parts)
