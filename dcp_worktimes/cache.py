"""Where dcp-worktimes keeps what it can rebuild (compiled modules, engines' caches, model
digests): ``$DCP_WORKTIMES_CACHE``, else the user cache directory. One function, so that every
worktime (built in or a plugin) and the evaluators' write rules agree on the place::

    cache_root("wasm")      # ~/.cache/dcp-worktimes/wasm on Linux
"""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=None)
def package_version(distribution: str, module: str) -> str | None:
    """The installed version of ``distribution`` (whose import name is ``module``), or ``None``:
    what an engine's cache is keyed by. Read from the ``*.dist-info`` folder beside the module;
    ``importlib.metadata`` only where that is ambiguous, because its first use costs 15-50 ms
    (its imports and a scan of every distribution on ``sys.path``), which every evaluator paid
    again when it ran after the fork. Cached for the process: a zygote that asked once hands the
    answer to every evaluator it forks.

    >>> package_version("msgpack", "msgpack")  # doctest: +SKIP
    '1.1.0'
    """
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return None
    if spec.origin:
        folder = Path(spec.origin).parent
        if spec.submodule_search_locations is not None:  # a package: its dist-info is beside its folder
            folder = folder.parent
        prefix = distribution.lower().replace("-", "_") + "-"  # how a dist-info folder spells it
        found = [p for p in folder.glob("*.dist-info") if p.name.lower().startswith(prefix)]
        if len(found) == 1:
            return found[0].name[len(prefix):-len(".dist-info")]
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
