"""The ``wasi`` worktime (WebAssembly/WASI command modules on wasmtime); see ``sandbox/wasi.md``.

Importing this package imports wasmtime only when a worktime instance prepares a job.
"""

from ...hookspecs import hookimpl
from .worktime import WasiWorktime

__all__ = ["WasiWorktime", "register_worktimes"]


@hookimpl
def register_worktimes(register):
    register(WasiWorktime)
