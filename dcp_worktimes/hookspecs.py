"""Plugin hooks. Arguments are only ever added, never removed or renamed.

Worktimes, built-in and third-party alike, arrive through ``register_worktimes``. A plugin is a
module with ``@hookimpl`` functions, published under the entry-point group ``dcp_worktimes``
(the entry-point name is the worktime name by convention)::

    # pyproject.toml of dcp-worktime-upper
    [project.entry-points.dcp_worktimes]
    upper = "dcp_worktime_upper"
"""

from __future__ import annotations

from typing import Callable

import pluggy

PROJECT = "dcp_worktimes"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_worktimes(register: Callable[[type], None]) -> None:
    """Register worktime classes by calling ``register(cls)`` once per class.

    Example::

        from dcp_worktimes import hookimpl
        from .worktime import EchoWorktime

        @hookimpl
        def register_worktimes(register):
            register(EchoWorktime)

    Import heavy engines inside the worktime's methods, not at module level: listing worktimes
    must stay fast and must not fail because one engine is broken.
    """
