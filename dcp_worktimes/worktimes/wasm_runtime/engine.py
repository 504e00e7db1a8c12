"""Shared wasmtime machinery for the worktimes that run WebAssembly (``wasi``, ``python``).

Five small pieces, each usable on its own::

    from dcp_worktimes.worktimes.wasm_runtime import (EngineOptions, get_engine, compile_module, get_watchdog,
                                    set_store_limits, trap_to_error)

    options = EngineOptions(fuel=False, exceptions=False)
    engine = get_engine(options)                       # one Engine per options, per process
    compiled = compile_module(engine, options, wasm)   # disk-cached: a restarted worker loads, not compiles
    watchdog = get_watchdog(engine)                    # the engine's shared epoch-interrupter thread

    store = wasmtime.Store(engine)
    set_store_limits(store, memory=128 << 20)          # memory.grow past it returns -1
    with watchdog.guard(store, deadline=ctx.deadline, cpu_time=2.0) as guard:
        try:
            instance = linker.instantiate(store, compiled.module)
            ...
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            raise trap_to_error(exc, interrupted=guard.error) from None

Decisions (why):

* **Epoch interruption is on unless the process itself is the unit of interruption.** A store's
  deadline is one epoch tick ahead; the watchdog thread bumps the engine's epoch only when a
  guarded store must stop (wall deadline, CPU budget, or a ``check`` callback such as
  no-progress/output/cancel). So a normal slice pays only the JIT's epoch checks, never a periodic
  tick, and the stop happens within ``poll`` seconds (plus the guest's next loop back-edge).
  Consequence: every store of an engine made here must run under ``Watchdog.guard`` (an unguarded
  store traps at once with ``INTERRUPT``), and only one store per engine may be guarded at a time
  (the epoch is engine-wide).
* **The checks are not free**: one at every loop back-edge and function entry, ~1.6x on a tight
  numeric loop (C matmul: 1.07x gcc -O2 without them, 1.77x with; ``benchmarks/bench_wasi.py``).
  In an evaluator process the host ends on request (``Worktime.stop_process``), a worktime may
  ask for ``EngineOptions(epoch=False)`` and give the watchdog that ``stop``: the same verdicts,
  delivered by ending the process instead of trapping the guest (the ``wasi`` worktime does; the
  ``python`` worktime keeps epochs, which its per-slice watchdog inside one long call needs).
* **Fuel is optional** (``EngineOptions(fuel=True)``): a deterministic instruction budget
  (``Store.set_fuel``), at a run-time cost of roughly 10-30 %. Out of fuel maps to ``ECPULIMIT``.
* **Compiled code depends on the engine options**, so options are part of the cache key and each
  distinct ``EngineOptions`` gets its own ``Engine``.
* **max_wasm_stack is clamped** to half of the smallest thread stack this process gives its
  threads (main-thread ``RLIMIT_STACK`` and the default for new threads): a wasm stack bigger
  than the host thread's stack segfaults the host instead of trapping.
* A guest blocked *inside* a host call (a WASI sleep, a slow Python callback) is not interrupted
  by the epoch; the evaluator's supervisor still enforces wall time from outside.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from ...cache import ENV_CACHE, cache_root, package_version
from ...errors import ErrorCode, SliceError
from ...limits import exceeded

if TYPE_CHECKING:  # wasmtime is imported lazily: importing this module must stay cheap
    import wasmtime

KiB, MiB = 1 << 10, 1 << 20
WASM_PAGE = 64 * KiB

__all__ = [
    "ENV_CACHE",
    "EngineOptions",
    "get_engine",
    "safe_wasm_stack",
    "cache_dir",
    "CompiledModule",
    "cache_path",
    "cached_module",
    "compile_module",
    "wasm_bytes",
    "Watchdog",
    "Guard",
    "get_watchdog",
    "set_store_limits",
    "memory_at_quota",
    "trap_to_error",
    "stats",
]

#: Process-wide counters, handy in tests and benchmarks ("the second start compiled nothing").
stats = {"compiled": 0, "loaded_from_disk": 0, "reused_in_memory": 0}


# -- engines -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class EngineOptions:
    """Everything that shapes compiled code. Equal options share one ``Engine`` and cache entries.

    ``fuel``: count instructions (deterministic budget, ``ECPULIMIT``), slower.
    ``exceptions``: enable the wasm exception-handling proposal (CPython-for-WASI needs it).
    ``max_wasm_stack``: requested guest stack in bytes; clamped by ``safe_wasm_stack``.
    ``opt_level``: Cranelift optimisation level (``"speed"``, ``"speed_and_size"``, ``"none"``).
    ``epoch``: compile epoch checks in (the watchdog traps the guest); ``False`` only with a
    ``Watchdog(stop=...)`` that ends the process instead.
    """

    fuel: bool = False
    exceptions: bool = False
    max_wasm_stack: int = 1 * MiB
    opt_level: str = "speed"
    epoch: bool = True

    def fingerprint(self) -> str:
        """A stable text of the options plus wasmtime version and CPU: the cache-key half."""
        effective = asdict(self) | {"max_wasm_stack": safe_wasm_stack(self.max_wasm_stack)}
        if self.epoch:  # the default leaves the key as it was before the option existed: no recompiles
            del effective["epoch"]
        fields = ",".join(f"{k}={effective[k]}" for k in sorted(effective))
        return f"wasmtime={_wasmtime_version()};arch={platform.machine()};{fields}"


def _wasmtime_version() -> str:
    return package_version("wasmtime", "wasmtime") or "unknown"


_engines: dict[EngineOptions, "wasmtime.Engine"] = {}
_no_epochs: set[int] = set()  # id() of the engines made with EngineOptions(epoch=False)
_engines_lock = threading.Lock()


def safe_wasm_stack(requested: int) -> int:
    """``requested`` clamped to half the smallest stack a thread of this process gets.

    >>> safe_wasm_stack(512 * 1024) <= 512 * 1024
    True
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_STACK)
    main = soft if soft != resource.RLIM_INFINITY and soft > 0 else 2 * MiB
    # New threads get threading.stack_size() if set, else glibc's default (RLIMIT_STACK, or
    # 2 MiB when that is unlimited): the same number as `main` in the second case.
    threads = threading.stack_size() or main
    # wasmtime itself aborts the process for a max_wasm_stack above 2 MiB (seen with 4 MiB on an
    # 8 MiB main stack), whatever the host thread's stack: cap there too.
    return max(64 * KiB, min(requested, min(main, threads) // 2, 2 * MiB))


def get_engine(options: EngineOptions = EngineOptions()) -> "wasmtime.Engine":
    """The process's ``Engine`` for these options (created once)."""
    with _engines_lock:
        engine = _engines.get(options)
        if engine is None:
            import wasmtime

            config = wasmtime.Config()
            config.epoch_interruption = options.epoch
            config.consume_fuel = options.fuel
            config.wasm_exceptions = options.exceptions
            config.max_wasm_stack = safe_wasm_stack(options.max_wasm_stack)
            config.cranelift_opt_level = options.opt_level
            engine = _engines[options] = wasmtime.Engine(config)
            if not options.epoch:
                _no_epochs.add(id(engine))  # engines live as long as the process: ids stay theirs
        return engine


# -- compiled-module cache ---------------------------------------------------------------------
def cache_dir() -> Path:
    """Where compiled modules live: ``$DCP_WORKTIMES_CACHE/wasm`` or the user cache dir."""
    return cache_root("wasm")


@dataclass
class CompiledModule:
    """A compiled module and how it was obtained (``source``: compiled / disk / memory)."""

    module: "wasmtime.Module"
    digest: str  # sha256 of the wasm bytes
    path: Path  # the cache file (may be absent when the cache dir is not writable)
    source: str
    seconds: float

    @property
    def cache_hit(self) -> bool:
        return self.source != "compiled"


_memo: dict[str, CompiledModule] = {}
_MEMO_MAX = 8


def wasm_bytes(work: bytes | str | os.PathLike, *, paths: bool = True) -> bytes:
    """Module bytes from binary wasm, WAT text, or (with ``paths``) a path to a ``.wasm``/``.wat`` file.

    Workers call it with ``paths=False``: a job's work naming a file must never make the *worker*
    read its own file system (the deployer's side reads files and ships bytes).
    Raises ``ValueError`` saying which of the forms was expected.
    """
    import wasmtime

    looks_like_path = isinstance(work, str) and work.strip().endswith((".wasm", ".wat")) and "\n" not in work.strip()
    if not paths and (isinstance(work, os.PathLike) or looks_like_path):
        raise ValueError(f"work {str(work)!r} is a file name; workers never read files named by a job: deploy the "
                         "module's bytes or WAT text (dcp-worker slice and the Compute API read the file for you)")
    if isinstance(work, os.PathLike):
        work = Path(work).read_bytes()
    elif looks_like_path:
        path = Path(work.strip()).expanduser()
        if not path.is_file():
            raise ValueError(f"work {work!r} looks like a module path but no such file exists")
        work = path.read_bytes()
    if isinstance(work, (bytes, bytearray, memoryview)):
        data = bytes(work)
        if data[:4] == b"\0asm":
            return data
        try:
            work = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("work bytes are neither a wasm binary (starting with \\0asm) nor WAT text") from None
    try:
        return bytes(wasmtime.wat2wasm(work))
    except wasmtime.WasmtimeError as e:
        raise ValueError(f"work is not valid WAT text (nor a wasm binary or a .wasm path): {e}") from None


def compile_module(engine: "wasmtime.Engine", options: EngineOptions, wasm: bytes) -> CompiledModule:
    """Compile ``wasm`` for ``engine`` (made from ``options``), through the memory and disk caches.

    The disk entry is keyed by the sha256 of the module bytes and of ``options.fingerprint()``,
    written atomically, and trusted on load (it is native code: the cache directory must only be
    writable by the worker's user). A stale or corrupt entry is recompiled and replaced. Raises
    ``wasmtime.WasmtimeError`` when the module does not validate.
    """
    import hashlib  # here, not at the top: every deployer imports this module, few compile

    import wasmtime

    started = time.perf_counter()
    digest = hashlib.sha256(wasm).hexdigest()
    hit = cached_module(engine, options, digest)
    if hit is not None:
        return hit
    path = cache_path(options, digest)
    module = wasmtime.Module(engine, wasm)
    stats["compiled"] += 1
    _write_atomically(path, module.serialize())
    evict(path.parent, keep=path)
    return _remember(engine, CompiledModule(module, digest, path, "compiled", time.perf_counter() - started))


def cached_module(engine: "wasmtime.Engine", options: EngineOptions, digest: str) -> CompiledModule | None:
    """The module whose bytes have sha256 ``digest``, compiled for ``engine``, from the memory or
    disk cache of ``compile_module``; ``None`` if neither holds it (or the disk entry is stale).

    For a caller that knows the digest without reading and hashing the bytes again (the python
    worktime's 99 MB CPython module: ~130 ms per zygote start)::

        hit = cached_module(engine, options, known_digest) or compile_module(engine, options, wasm)
    """
    import wasmtime

    started = time.perf_counter()
    path = cache_path(options, digest)
    hit = _memo.get(f"{path}-{id(engine)}")
    if hit is not None:
        stats["reused_in_memory"] += 1
        return CompiledModule(hit.module, digest, hit.path, "memory", time.perf_counter() - started)
    if not path.is_file():
        return None
    try:
        module = wasmtime.Module.deserialize_file(engine, str(path))
    except wasmtime.WasmtimeError:
        return None  # written by another wasmtime build or truncated: the caller recompiles
    stats["loaded_from_disk"] += 1
    _touch(path)  # least recently *used* entries are evicted first
    return _remember(engine, CompiledModule(module, digest, path, "disk", time.perf_counter() - started))


def cache_path(options: EngineOptions, digest: str) -> Path:
    """Where ``compile_module`` keeps the module of sha256 ``digest`` compiled with ``options``."""
    import hashlib

    config_key = hashlib.sha256(options.fingerprint().encode()).hexdigest()[:16]
    return cache_dir() / f"{digest[:40]}-{config_key}.cwasm"


def _remember(engine: "wasmtime.Engine", compiled: CompiledModule) -> CompiledModule:
    if len(_memo) >= _MEMO_MAX:
        _memo.pop(next(iter(_memo)))
    _memo[f"{compiled.path}-{id(engine)}"] = compiled
    return compiled


#: Most bytes of compiled modules kept on disk; jobs choose the modules, so the cache must not grow
#: without bound (the python runtime alone is ~290 MB). ``DCP_WORKTIMES_CACHE_LIMIT`` overrides.
ENV_CACHE_LIMIT = "DCP_WORKTIMES_CACHE_LIMIT"
DEFAULT_CACHE_LIMIT = 4 << 30


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


def evict(folder: Path, keep: Path | None = None, limit: int | None = None) -> list[Path]:
    """Delete the least recently used ``*.cwasm`` in ``folder`` until the total fits ``limit``."""
    if limit is None:
        from ...limits import parse_size

        try:
            limit = parse_size(os.environ.get(ENV_CACHE_LIMIT) or DEFAULT_CACHE_LIMIT, ENV_CACHE_LIMIT)
        except ValueError:
            limit = DEFAULT_CACHE_LIMIT
        if limit is None:
            return []
    entries = []
    for p in folder.glob("*.cwasm"):
        try:
            st = p.stat()
        except OSError:
            continue
        entries.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in entries)
    removed = []
    for _, size, p in sorted(entries):
        if total <= limit:
            break
        if keep is not None and p == keep:
            continue
        try:
            p.unlink()
        except OSError:
            continue
        total -= size
        removed.append(p)
    return removed


def _write_atomically(path: Path, data: bytes | bytearray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".cwasm")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs a recompile next time; never fail the job for it


# -- the epoch watchdog ------------------------------------------------------------------------
class Guard:
    """One guarded run. ``error`` is set when the watchdog stopped the guest (and says why)."""

    def __init__(self, watchdog: "Watchdog") -> None:
        self._watchdog = watchdog
        self.error: SliceError | None = None

    def interrupt(self, error: SliceError) -> None:
        """Stop the guest at its next epoch check, from any thread (first reason wins)."""
        self._watchdog._interrupt(self, error)

    def rearm(self, *, deadline: float | None, cpu_time: float | None, wall_time: float | None = None) -> None:
        """New limits from now on, for the same run (an engine running many slices in one call:
        each slice gets its own wall deadline and CPU budget). Call it on the guarded thread."""
        self._watchdog._rearm(self, deadline, cpu_time, wall_time)


class Watchdog:
    """A daemon thread that interrupts the guarded store of ``engine`` when it must stop.

    ``guard(store, deadline=..., cpu_time=..., check=...)`` arms it for one run:

    * ``deadline``: a ``time.monotonic()`` instant (e.g. ``SliceContext.deadline``) → ``ESLICETOOSLOW``;
    * ``cpu_time``: seconds of CPU used by the *guarding thread* → ``ECPULIMIT``;
    * ``check``: called every ``poll`` seconds on the watchdog thread; return a ``SliceError``
      to stop the guest with it (no-progress, cancellation, ...).

    ``guard.interrupt(error)`` stops the guest from any thread (e.g. an output callback).

    ``stop``: for an engine made with ``EngineOptions(epoch=False)``, how to stop a guest that has
    no epoch checks: ``Worktime.stop_process``, which ends the whole process with the verdict.
    """

    def __init__(self, engine: "wasmtime.Engine", poll: float = 0.05,
                 stop: Callable[[SliceError], None] | None = None) -> None:
        self.engine = engine
        self.poll = poll
        self.epochs = id(engine) not in _no_epochs
        if not self.epochs and stop is None:
            raise ValueError("an engine without epoch checks needs a stop (Worktime.stop_process) to stop a guest")
        self.stop = stop
        self._cond = threading.Condition()
        self._armed: dict | None = None
        #: When the watchdog thread wakes next (monotonic; inf: only when notified). Waking it costs
        #: the guarded thread a GIL round trip (it showed as ~7 % of a python block's host time at
        #: two per turn): arming, re-arming and disarming wake it only when it would sleep too long.
        self._wakes_at = math.inf
        self._thread = threading.Thread(target=self._run, name="dcp-wasm-watchdog", daemon=True)
        self._thread.start()

    @contextmanager
    def guard(
        self,
        store: "wasmtime.Store",
        *,
        deadline: float | None = None,
        cpu_time: float | None = None,
        check: Callable[[], SliceError | None] | None = None,
        wall_time: float | None = None,
    ) -> Iterator[Guard]:
        guard = Guard(self)
        clock = None
        if cpu_time is not None:
            clock = time.pthread_getcpuclockid(threading.get_ident())
            cpu_deadline = time.clock_gettime(clock) + cpu_time
        with self._cond:
            if self._armed is not None:
                raise RuntimeError("this Watchdog already guards a running store; use one store at a time per engine")
            if self.epochs:
                store.set_epoch_deadline(1)
            self._armed = {
                "guard": guard,
                "deadline": deadline,
                "wall_time": wall_time,  # only for the message: ``deadline`` is what is enforced
                "clock": clock,
                "cpu_deadline": cpu_deadline if clock is not None else None,
                "cpu_time": cpu_time,
                "check": check,
                "limits": 0,  # how many times re-armed: a verdict stands only for the limits it judged
            }
            self._wake_if_late(self._armed)
        try:
            yield guard
        finally:
            with self._cond:
                self._armed = None  # a watchdog asleep on this run finds it gone when it wakes

    def _rearm(self, guard: Guard, deadline: float | None, cpu_time: float | None, wall_time: float | None) -> None:
        with self._cond:
            armed = self._armed
            if armed is None or armed["guard"] is not guard:
                return
            armed["deadline"], armed["wall_time"], armed["cpu_time"] = deadline, wall_time, cpu_time
            armed["limits"] += 1
            armed["clock"] = time.pthread_getcpuclockid(threading.get_ident()) if cpu_time is not None else None
            armed["cpu_deadline"] = time.clock_gettime(armed["clock"]) + cpu_time if cpu_time is not None else None
            # Each slice of a block re-arms, every few ms: a later deadline is read when the
            # watchdog wakes for the earlier one.
            self._wake_if_late(armed)

    def _wake_if_late(self, armed: dict) -> None:
        """Under the lock: wake the watchdog thread if it would next look later than ``armed`` needs."""
        need = armed["deadline"] if armed["deadline"] is not None else math.inf
        if armed["check"] is not None or armed["clock"] is not None:
            need = min(need, time.monotonic() + self.poll)
        if need < self._wakes_at:
            self._cond.notify()

    def _interrupt(self, guard: Guard, error: SliceError, limits: int | None = None) -> None:
        with self._cond:
            if self._armed is None or self._armed["guard"] is not guard or guard.error is not None:
                return
            if limits is not None and self._armed["limits"] != limits:
                return  # judged on limits re-armed since (the slice it judged has ended): judge again
            guard.error = error
            if self.epochs:
                self.engine.increment_epoch()
            else:
                # Under the lock: the guard cannot be disarmed meanwhile, so the slice the verdict
                # names is still the one running (stop writes a frame; nothing there waits on us).
                assert self.stop is not None
                self.stop(error)

    def _run(self) -> None:
        while True:
            with self._cond:
                armed = self._armed
                if armed is None or armed["guard"].error is not None:
                    self._wakes_at = math.inf
                    self._cond.wait()
                    continue
                timeout = self.poll if (armed["check"] or armed["clock"] is not None) else None
                if armed["deadline"] is not None:
                    left = armed["deadline"] - time.monotonic()
                    timeout = left if timeout is None else min(timeout, left)
                if timeout is None or timeout > 0:
                    self._wakes_at = math.inf if timeout is None else time.monotonic() + timeout
                    self._cond.wait(timeout)
                    self._wakes_at = -math.inf  # awake: it reads the current run before sleeping again
                    if self._armed is not armed:
                        continue
            limits = armed["limits"]
            error = self._verdict(armed)
            if error is not None:
                self._interrupt(armed["guard"], error, limits)

    @staticmethod
    def _verdict(armed: dict) -> SliceError | None:
        if armed["deadline"] is not None and time.monotonic() >= armed["deadline"]:
            return exceeded("wall_time", armed["wall_time"])
        if armed["clock"] is not None:
            try:
                used = time.clock_gettime(armed["clock"])
            except OSError:  # the guarded thread is gone
                return None
            if used >= armed["cpu_deadline"]:
                return exceeded("cpu_time", armed["cpu_time"], used=used - armed["cpu_deadline"] + armed["cpu_time"])
        if armed["check"] is not None:
            return armed["check"]()
        return None


_watchdogs: dict[int, Watchdog] = {}


def get_watchdog(engine: "wasmtime.Engine", stop: Callable[[SliceError], None] | None = None) -> Watchdog:
    """The process's shared ``Watchdog`` for ``engine`` (the epoch is engine-wide, so every user of
    one engine must share one watchdog for its one-store-at-a-time check to mean anything).
    ``stop`` is required for an engine without epoch checks (see ``Watchdog``)."""
    with _engines_lock:
        watchdog = _watchdogs.get(id(engine))
        if watchdog is None:
            watchdog = _watchdogs[id(engine)] = Watchdog(engine, stop=stop)
        elif stop is not None:
            watchdog.stop = stop
        return watchdog


# -- store limits and traps --------------------------------------------------------------------
def set_store_limits(
    store: "wasmtime.Store",
    *,
    memory: int | None,
    table_elements: int | None = 1_000_000,
    instances: int | None = 16,
    tables: int | None = 16,
    memories: int | None = 4,
) -> None:
    """Cap what the guest may allocate in ``store`` (``None`` = unlimited).

    ``memory`` is per linear memory, in bytes: ``memory.grow`` beyond it returns -1 (C ``malloc``
    returns NULL); instantiating a module whose initial memory exceeds it fails.
    """

    def cap(value: int | None) -> int:
        return -1 if value is None else int(value)

    store.set_limits(
        memory_size=cap(memory),
        table_elements=cap(table_elements),
        instances=cap(instances),
        tables=cap(tables),
        memories=cap(memories),
    )


def memory_at_quota(
    store: "wasmtime.Store", memory: "wasmtime.Memory | None", limit: int | None, margin: int | None = None
) -> bool:
    """True when ``memory`` is within ``margin`` of ``limit``: a failure now is (almost surely) the quota's.

    wasmtime-py cannot tell us that a ``memory.grow`` was refused, so this is a heuristic: an
    allocator asks for chunks, so after a refused grow the memory sits less than one request
    below the quota. The default margin, ``max(1 MiB, limit / 16, the memory's size)``, catches
    the usual allocation sizes and allocators that grow their heap by doubling (wasi-libc as Zig
    builds it: its next grow is refused once half the quota is in use); a single huge request
    far beyond the quota is not recognised (the guest's own error is reported instead).
    """
    if memory is None or limit is None:
        return False
    size = memory.data_len(store)
    if margin is None:
        margin = max(MiB, limit // 16, size)
    return size + max(margin, WASM_PAGE) > limit


_TRAP_MESSAGES = {
    "STACK_OVERFLOW": "the guest overflowed its stack (too deep recursion?)",
    "MEMORY_OUT_OF_BOUNDS": "the guest accessed memory out of bounds",
    "UNREACHABLE": "the guest aborted (unreachable instruction: abort(), panic or failed assert)",
    "INTEGER_DIVISION_BY_ZERO": "the guest divided an integer by zero",
    "INDIRECT_CALL_TO_NULL": "the guest called a null function pointer",
}


#: How a guest's ``proc_exit`` with a status WASI does not allow is said (wasmtime refuses it
#: without naming the status).
EXIT_NOT_ALLOWED = "a status of 126 or more, which WASI does not allow (0-125)"


def exit_not_allowed(exc: BaseException) -> bool:
    """Whether ``exc`` is wasmtime refusing a ``proc_exit`` status of 126 or more (a negative
    one, as Python's ``os._exit(-1)``, arrives as a large unsigned status)."""
    return "exit with invalid exit status" in str(exc)


def trap_to_error(
    exc: BaseException,
    *,
    interrupted: SliceError | None = None,
    memory_exhausted: bool = False,
    memory: int | None = None,
    fuel: int | None = None,
) -> SliceError:
    """The ``SliceError`` for a wasmtime failure.

    ``interrupted``: the watchdog's ``guard.error`` (it knows *why* the epoch moved);
    ``memory_exhausted``: the guest's memory is at its quota (see ``memory_at_quota``), so a
    trap or a non-zero exit is reported as ``EMEMORYLIMIT``; ``memory``/``fuel``: the limits, for
    the message.

    >>> trap_to_error(RuntimeError("boom")).code
    <ErrorCode.EUNCAUGHT: 'EUNCAUGHT'>
    """
    import wasmtime

    code = getattr(exc, "trap_code", None) if isinstance(exc, wasmtime.Trap) else None
    name = code.name if code is not None else None
    # The backtrace is the useful part of the text; drop wasmtime's hint about its env variable.
    text = "\n".join(line for line in str(exc).strip().splitlines() if "WASMTIME_BACKTRACE_DETAILS" not in line)
    if name == "INTERRUPT" or interrupted is not None:
        if interrupted is not None:
            return interrupted
        return exceeded("wall_time", None)
    if name == "OUT_OF_FUEL":
        return exceeded("fuel", fuel, name="OutOfFuel", stack=text)
    if memory_exhausted:
        return exceeded("memory", memory, what="WebAssembly memory", name="OutOfMemory", stack=text)
    if isinstance(exc, wasmtime.ExitTrap):
        return SliceError(f"the guest exited with status {exc.code}", code=ErrorCode.EUNCAUGHT, name="Exit")
    if exit_not_allowed(exc):
        return SliceError(f"the guest exited with {EXIT_NOT_ALLOWED}", code=ErrorCode.EUNCAUGHT, name="Exit")
    if name is not None:
        return SliceError(_TRAP_MESSAGES.get(name, f"the guest trapped: {name.lower().replace('_', ' ')}"),
                          code=ErrorCode.EUNCAUGHT, name=f"Trap.{name}", stack=text)
    return SliceError(f"the guest failed: {text}", code=ErrorCode.EUNCAUGHT, name=type(exc).__name__, stack=text)
