"""Compiling the WASI CPython module once, with visible progress, through the shared disk cache.

The first compile of ``python-snapshot.wasm`` (104 MB) takes ~2 minutes and ~2.3 GB of RAM on a
2-core machine; afterwards the serialized artifact (keyed by module hash + engine options, see
``dcp_worktimes.worktimes.wasm_runtime.compile_module``) loads in milliseconds. ``warmup`` is what
``dcp-worker warmup --worktime python`` runs::

    >>> from dcp_worktimes.worktimes.python import warmup                       # doctest: +SKIP
    >>> warmup(lambda fraction, message: print(message))                        # doctest: +SKIP
    compiling CPython 3.15.0 for WASI (first use only; it took 2 min on 2 cores here): 4 s so far
    ...
    CPython 3.15.0 for WASI compiled in 117s; cached in ~/.cache/dcp-worktimes/wasm

Progress is elapsed time, honestly: wasmtime compiles a module in one call that reports nothing
until it returns, so there is no fraction to show before the end (``fraction`` is ``None`` until
the final ``1.0``). Waiting for another process that is compiling it says so.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..wasm_runtime import EngineOptions, cache_dir, cache_path, cached_module, compile_module, get_engine
from .artifacts import INSTALL_HINT, Runtime, RuntimeMissing, find_runtime, runtime_cache, stdlib_folder

if TYPE_CHECKING:
    import wasmtime

#: CPython needs wasm exceptions. 2 MiB of wasm stack: wasmtime refuses (and wasmtime-py aborts the
#: process on) a max_wasm_stack above its async stack size, 2 MiB by default; CPython 3.15 guards
#: its own recursion well below that (RecursionError), measured in tests/test_python_worktime.py.
ENGINE_OPTIONS = EngineOptions(fuel=False, exceptions=True, max_wasm_stack=2 << 20)

#: What a first compile took here (2 cores, shared); said in the progress messages, never used as a fraction.
EXPECTED_COMPILE_SECONDS = 120.0

ProgressCallback = Callable[[float | None, str], None]


@dataclass
class Compiled:
    engine: "wasmtime.Engine"
    module: "wasmtime.Module"
    runtime: Runtime
    source: str  # "compiled" | "disk" | "memory"
    seconds: float


_lock = threading.Lock()
_done: Compiled | None = None


def load(progress: ProgressCallback | None = None) -> Compiled:
    """The compiled CPython module for this process (compiled at most once per machine)."""
    global _done
    with _lock:
        if _done is not None:
            if progress is not None:
                progress(1.0, f"CPython {_done.runtime.python_version} for WASI already loaded")
            return _done
        runtime = find_runtime()
        engine = get_engine(ENGINE_OPTIONS)
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                known = _verified_digest(runtime)
                hit = cached_module(engine, ENGINE_OPTIONS, known) if known else None
                if hit is not None:  # the module file is the one hashed before: no need to read it
                    box["compiled"] = hit
                    return
                wasm = runtime.snapshot.read_bytes()
                box["hashed"] = True
                if _artifact_path(runtime) is not None and _artifact_path(runtime).is_file():
                    box["compiled"] = compile_module(engine, ENGINE_OPTIONS, wasm)
                    return
                # One compiler per machine: ~2.3 GB of RAM and both cores each. Others wait here,
                # then load what the first one wrote.
                box["phase"] = "waiting"
                with _machine_lock():
                    box["phase"] = "compiling"
                    box["compiled"] = compile_module(engine, ENGINE_OPTIONS, wasm)
            except BaseException as e:  # noqa: BLE001 - re-raised on the calling thread
                box["error"] = e

        started = time.monotonic()
        thread = threading.Thread(target=work, name="dcp-python-compile", daemon=True)
        thread.start()
        label = f"CPython {runtime.python_version} for WASI"
        while thread.is_alive():
            thread.join(0.5)
            elapsed = time.monotonic() - started
            if thread.is_alive() and elapsed > 1.0 and progress is not None:
                if box.get("phase") == "waiting":
                    what = f"waiting for another process compiling {label}"
                else:
                    what = (f"compiling {label} (first use only; it took {EXPECTED_COMPILE_SECONDS / 60:.0f} min on "
                            "2 cores here)")
                progress(None, f"{what}: {elapsed:.0f} s so far")
        if "error" in box:
            raise RuntimeMissing(f"{runtime.snapshot} does not compile: {box['error']}; reinstall with: "
                                 f"{INSTALL_HINT}") from box["error"]
        compiled = box["compiled"]
        expected = runtime.sha256.get(runtime.snapshot.name)
        if expected and compiled.digest != expected:
            raise RuntimeMissing(f"{runtime.snapshot} does not match its SHA256SUMS (corrupt install?); "
                                 f"reinstall with: {INSTALL_HINT}")
        if expected and box.get("hashed"):
            _remember_verified(runtime, expected)
        _done = Compiled(engine, compiled.module, runtime, compiled.source, compiled.seconds)
        if progress is not None:
            how = {"compiled": f"compiled in {compiled.seconds:.0f}s", "disk": "loaded from the cache",
                   "memory": "already loaded"}[compiled.source]
            progress(1.0, f"{label} {how}; cache: {cache_dir()}")
        return _done


_stdlib: dict[Runtime, Path] = {}


def stdlib_folder_for(runtime: Runtime) -> Path:
    """The read-only folder mounted at ``/usr/local/lib`` (made once, next to the module cache)."""
    folder = _stdlib.get(runtime)
    if folder is None:
        folder = _stdlib[runtime] = stdlib_folder(runtime, runtime_cache())
    return folder


def _artifact_path(runtime: Runtime) -> Path | None:
    """Where ``compile_module`` keeps our artifact."""
    digest = runtime.sha256.get(runtime.snapshot.name)
    return cache_path(ENGINE_OPTIONS, digest) if digest is not None else None


# Every zygote start used to read the 99 MB module and hash it (~130 ms of a cold python job's
# start) to check it against SHA256SUMS and to find its compiled artifact. Once a file has been
# hashed and matched, a stamp of its identity (path, size, mtime, inode) stands in for that:
# a reinstalled or rewritten file gets a new identity and is hashed again.
def _stamp_path(runtime: Runtime) -> Path:
    import hashlib

    return runtime_cache() / f"verified-{hashlib.sha256(str(runtime.snapshot).encode()).hexdigest()[:16]}.json"


def _identity(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "dev": st.st_dev}


def _verified_digest(runtime: Runtime) -> str | None:
    """The snapshot's sha256 if this very file was hashed and matched SHA256SUMS before."""
    import json

    expected = runtime.sha256.get(runtime.snapshot.name)
    if not expected:
        return None
    try:
        stamp = json.loads(_stamp_path(runtime).read_text())
        return expected if stamp == {**_identity(runtime.snapshot), "sha256": expected} else None
    except (OSError, ValueError):
        return None


def _remember_verified(runtime: Runtime, digest: str) -> None:
    import json

    from ..wasm_runtime.engine import _write_atomically

    try:
        stamp = {**_identity(runtime.snapshot), "sha256": digest}
    except OSError:
        return
    _write_atomically(_stamp_path(runtime), json.dumps(stamp).encode())


@contextmanager
def _machine_lock() -> Iterator[None]:
    import fcntl

    folder = runtime_cache()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(folder / "compile.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_if_cached() -> Compiled | None:
    """``load()`` when the compiled artifact is on disk (or loaded), else ``None`` without compiling."""
    if _done is not None:
        return _done
    try:
        path = _artifact_path(find_runtime())
        return load() if path is not None and path.is_file() else None
    except Exception:
        return None  # the evaluator's prepare reports the problem with its full message


def cold_start() -> str | None:
    """What ``load()`` will do that takes minutes, when the compiled module is not on disk yet."""
    if _done is not None:
        return None
    try:
        runtime = find_runtime()
        path = _artifact_path(runtime)
    except Exception:  # noqa: BLE001 - the probe says what is missing
        return None
    if path is not None and path.is_file():
        return None
    return (f"compiling CPython {runtime.python_version} for WASI once on this machine (about "
            f"{EXPECTED_COMPILE_SECONDS / 60:.0f} min and 2.3 GB of memory); `dcp-worker warmup --worktime python` "
            "does it ahead of time")


def warmup(progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Compile (or load) the runtime and start one interpreter; returns what it did and how long.

    ``progress(fraction, message)`` is called about twice a second while compiling (``fraction``
    ``None``: elapsed time is all there is to show), then once with ``1.0``.
    """
    from .interpreter import Guest, GuestDirs

    compiled = load(progress)
    stdlib_folder_for(compiled.runtime)
    started = time.monotonic()
    with GuestDirs.create() as dirs:
        guest = Guest(compiled, dirs, memory=None)
        try:
            guest.start(deadline=time.monotonic() + 120)
        finally:
            guest.close()
    return {
        "python": compiled.runtime.python_version,
        "source": compiled.source,
        "compile_seconds": round(compiled.seconds, 3),
        "start_seconds": round(time.monotonic() - started, 3),
        "cache": str(cache_dir()),
    }
