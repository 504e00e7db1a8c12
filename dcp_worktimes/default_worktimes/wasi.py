"""Built-in ``wasi`` worktime: WebAssembly command modules on wasmtime (see ``sandbox/wasi.md``)."""

from ..hookspecs import hookimpl


@hookimpl
def register_worktimes(register):
    # The class module imports wasmtime only inside methods, so this stays cheap.
    from ..wasi_worktime import WasiWorktime

    register(WasiWorktime)
