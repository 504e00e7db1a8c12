"""Built-in ``python`` worktime: CPython for WASI on wasmtime (see ``sandbox/python.md``)."""

from ..hookspecs import hookimpl


@hookimpl
def register_worktimes(register):
    # The class module imports wasmtime only inside methods, so this stays cheap.
    from ..pywasi.worktime import PythonWorktime

    register(PythonWorktime)
