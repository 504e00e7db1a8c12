"""Shared WebAssembly machinery (wasmtime) for the ``wasi`` and ``python`` worktimes.

Everything lives in ``engine.py``; see its docstring for the usage example and the decisions.
Importing this package does not import wasmtime.
"""

from .engine import (
    ENV_CACHE,
    EXIT_NOT_ALLOWED,
    CompiledModule,
    EngineOptions,
    Guard,
    Watchdog,
    cache_dir,
    cache_path,
    cached_module,
    compile_module,
    get_engine,
    get_watchdog,
    memory_at_quota,
    safe_wasm_stack,
    set_store_limits,
    stats,
    exit_not_allowed,
    trap_to_error,
    wasm_bytes,
)

__all__ = [
    "ENV_CACHE",
    "EXIT_NOT_ALLOWED",
    "CompiledModule",
    "EngineOptions",
    "Guard",
    "Watchdog",
    "cache_dir",
    "cache_path",
    "cached_module",
    "compile_module",
    "get_engine",
    "get_watchdog",
    "memory_at_quota",
    "safe_wasm_stack",
    "set_store_limits",
    "stats",
    "exit_not_allowed",
    "trap_to_error",
    "wasm_bytes",
]
