"""The built-in worktimes, one package each, named after the worktime (``-`` becomes ``_``).

Each package is a plugin module: its ``__init__`` has the same ``register_worktimes`` hook a
third-party package has, and the registry loads them exactly as it loads installed plugins.
Guest-side files live next to the host code that uses them:

==================  =========================================================================
package             what it holds
==================  =========================================================================
``map_basic/``      JavaScript on QuickJS: the worktime, the engine wrapper, value marshalling,
                    ``prelude.js`` (the globals the work sees)
``wasi/``           WebAssembly command modules: the worktime, the slice ABI, a C toolchain helper
``python/``         CPython for WASI: the worktime, the interpreter host, the runtime cache,
                    ``guest/`` (the bootstrap that runs inside the sandbox)
``wasm_runtime/``   shared wasmtime machinery (engines, compile cache, watchdog, scratch folders)
                    used by ``wasi`` and ``python``; not a worktime itself
==================  =========================================================================
"""

#: Modules of this package that are worktime plugins, in the order the registry loads them.
BUILTINS = ("map_basic", "wasi", "python")
