"""dcp-worktimes: the worker side of the Distributive Compute Protocol and its Compute API.

``from dcp_worktimes import compute`` gives the Compute API; ``hookimpl`` marks plugin hooks.
"""

from __future__ import annotations

from .hookspecs import hookimpl

__all__ = ["hookimpl", "compute", "__version__"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # The Compute API pulls in more than a worker needs; import it only when asked for.
    if name == "compute":
        import importlib

        return importlib.import_module(".compute", __name__)
    raise AttributeError(f"module 'dcp_worktimes' has no attribute {name!r}")
