"""The server-side steps, one Lua script each (``lua/<name>.lua`` behind ``lua/common.lua``).

Every write that must be atomic is a script: it runs alone on the server, so a slice is settled and
its result stored in one step (no check-then-set from a client), and a lease takes its slices,
its expiry entry and the job's cursor together. Scripts are sent as ``EVALSHA`` (``EVAL`` once per
server: redis-py's ``Script`` reloads one a restarted server forgot), so every version of this
package carries its own, and two versions sharing a server never run each other's.

Scripts build key names from the prefix in ``ARGV[1]`` (declared keys would have to be known
before the script reads the queue). That is fine on a standalone server or a replicated one;
Redis Cluster is not supported.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

NAMES = ("submit", "add_slices", "close_input", "keep_feeding", "lease", "report", "give_back", "heartbeat", "post_events",
         "cancel", "delete", "set_payment", "unschedulable", "workers", "leave", "publish")


@lru_cache(maxsize=None)
def source(name: str) -> str:
    """The full text of script ``name``: the common prelude, then its own body."""
    if name not in NAMES:
        raise KeyError(name)
    folder = resources.files(__package__) / "lua"
    return (folder / "common.lua").read_text("utf-8") + "\n" + (folder / f"{name}.lua").read_text("utf-8")


def register(client) -> dict:
    """``{name: redis.commands.core.Script}`` for ``client``."""
    return {name: client.register_script(source(name)) for name in NAMES}
