"""The ``blender`` worktime plugin for dcp-worktimes: render frames with real Blender, sandboxed.

Importing this package is cheap (no Blender is started): the worktime probes Blender when the
worker asks (``BlenderWorktime.probe``) and starts it per job in ``prepare``.
"""

from __future__ import annotations

from dcp_worktimes import hookimpl

from .worktime import BlenderWorktime

__all__ = ["BlenderWorktime"]


@hookimpl
def register_worktimes(register):
    register(BlenderWorktime)
