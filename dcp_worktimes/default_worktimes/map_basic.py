"""Built-in ``map-basic`` worktime (JavaScript on QuickJS). The engine loads lazily in ``prepare``."""

from ..hookspecs import hookimpl
from ..mapbasic.worktime import MapBasic


@hookimpl
def register_worktimes(register):
    register(MapBasic)
