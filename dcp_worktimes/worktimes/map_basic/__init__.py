"""map-basic: DCP's JavaScript worktime on QuickJS (quickjs-ng).

* ``worktime.py`` — the ``MapBasic`` worktime class (cheap to import);
* ``engine.py`` — one QuickJS context, limits, interrupt handler, the slice loop;
* ``prelude.js`` — the sandbox globals evaluated in every context (progress, console, work.emit,
  work.reject, require, timers, TextEncoder/TextDecoder, structuredClone, crypto);
* ``marshal.py`` — values as text between Python and JS (conversion table in its docstring).

Design notes and the engine comparison: ``sandbox/mapbasic.md``.
"""

from ...hookspecs import hookimpl
from .worktime import MapBasic

__all__ = ["MapBasic", "register_worktimes"]


@hookimpl
def register_worktimes(register):
    register(MapBasic)
