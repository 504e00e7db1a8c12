"""The ``wasi`` worktime: each slice runs a WebAssembly command module under wasmtime.

The slice ABI (stdin/argv/stdout/exit status, the optional ``dcp`` imports) is in ``abi.py`` and
documented for work authors in ``sandbox/wasi.md``. Quick use, in-process::

    from dcp_worktimes.worktime import JobSpec, SliceContext
    from dcp_worktimes.worktimes.wasi import WasiWorktime

    wt = WasiWorktime()
    wt.prepare(JobSpec(id="j", worktime="wasi", work=open("sum.wasm", "rb").read()))
    wt.execute(SliceContext(0, wt.job.limits, wt.job), [1, 2, 3])   # -> what the module printed

Per job: the module is compiled once (disk-cached, see ``dcp_worktimes.worktimes.wasm_runtime``), its imports
resolved once (``InstancePre``), the job's files written once to a directory mounted read-only
at ``/job``. Per slice: a fresh ``Store`` (fresh instance, fresh memory), an empty scratch
directory at ``/tmp`` (emptied afterwards), the datum on stdin, no environment, no sockets.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import weakref
from pathlib import Path, PurePosixPath
from typing import Any

from ...errors import ErrorCode, SliceError, WorkError
from ...limits import MiB, exceeded
from ..wasm_runtime import (
    EXIT_NOT_ALLOWED,
    EngineOptions,
    compile_module,
    exit_not_allowed,
    get_engine,
    get_watchdog,
    memory_at_quota,
    set_store_limits,
    trap_to_error,
    wasm_bytes,
)
from ..wasm_runtime.scratch import ScratchCap, make_scratch, remove_tree, scratch_size
from ...worktime import CapturedWork, JobSpec, SliceContext, Worktime
from . import abi

#: Guest paths of the two preopened directories.
SCRATCH_GUEST, FILES_GUEST = "/tmp", "/job"
STDERR_TAIL = 2048

_ALLOWED_IMPORTS = {"dcp": {"progress", "console", "emit"}}
class _Slice:
    """Per-slice state the host imports and output callbacks reach."""

    def __init__(self, ctx: SliceContext, output_cap: int | None) -> None:
        self.ctx = ctx
        self.cap = output_cap
        self.stdout = bytearray()
        self.stderr_tail = bytearray()
        self.console_bytes = 0
        self.last_progress = time.monotonic()
        self.guard = None  # set once the watchdog guard is armed
        self.console = abi.LineSplitter(lambda line: self.log("log", line))

    def over(self, what: str, used: int) -> None:
        if self.guard is not None:
            self.guard.interrupt(exceeded("output", self.cap, used=used, what=what))

    def on_stdout(self, chunk: bytes) -> None:
        if self.cap is not None and len(self.stdout) + len(chunk) > self.cap:
            self.over("stdout (the result)", len(self.stdout) + len(chunk))
            return
        self.stdout += chunk

    def on_stderr(self, chunk: bytes) -> None:
        self.stderr_tail += chunk
        if len(self.stderr_tail) > STDERR_TAIL:
            del self.stderr_tail[:-STDERR_TAIL]
        self.console.write(chunk)

    def log(self, level: str, message: str) -> None:
        self.console_bytes += len(message)
        if self.cap is not None and self.console_bytes > self.cap:
            self.over("console output", self.console_bytes)
            return
        self.ctx.console(level, message)


class WasiWorktime(Worktime):
    """WebAssembly (WASI preview 1) command modules on wasmtime: datum on stdin, result on stdout."""

    name = "wasi"
    version = "1.0.0"
    decoded_results = True  # from JSON or msgpack: no tuple keys (Worktime.decoded_results)
    description = "WebAssembly/WASI command modules on wasmtime: datum on stdin, result on stdout"
    # Nested booleans, as the scheduler's requirement matching expects.
    capabilities = {
        "wasm": {"wasi_preview1": True, "simd": True, "exceptions": True, "fuel": True},
        "wasi": {"command": True, "json": True, "msgpack": True, "raw": True},
    }
    enforces = frozenset({"wall_time", "cpu_time", "memory", "output", "progress_timeout", "stack"})
    default_for = frozenset({"bytes", ".wasm", ".wat"})

    @classmethod
    def capture_work(cls, work: Any) -> CapturedWork:
        """A module as bytes, a ``.wasm`` file as bytes (even when its bytes happen to be UTF-8),
        WebAssembly text (``.wat``) as text."""
        if isinstance(work, os.PathLike) and os.fspath(work).lower().endswith(".wasm"):
            path = Path(work).expanduser()
            if path.is_file():
                return CapturedWork(path.read_bytes(), origin=f"file {path.name}")
        captured = super().capture_work(work)
        if isinstance(captured.work, bytes) and captured.work[:4] != b"\0asm":
            # Bytes default to this worktime: JavaScript sent as bytes by mistake would otherwise
            # be deployed, then fail in a worker talking of WAT.
            try:
                wasm_bytes(captured.work, paths=False)
            except ValueError as e:
                raise WorkError(f"the work is bytes, which run on the wasi worktime as a WebAssembly module, but these "
                                f"are neither a wasm binary (starting with \\0asm) nor WebAssembly text ({e}); send "
                                "JavaScript or Python source as a str, or set job.worktime") from None
        return captured
    options = {"content_type": "json (default), msgpack or raw: how the datum and result are encoded",
               "fuel": "a deterministic instruction budget per slice (ECPULIMIT when spent)",
               "scratch_size": "the cap on the slice's /tmp, e.g. 64MB"}

    def __init__(self) -> None:
        self.job: JobSpec | None = None
        self._files_dir: str | None = None
        self._slice_root: str | None = None
        self._stdin_path: str | None = None
        self._current: _Slice | None = None
        self._scratch_kernel = False  # the scratch is a tmpfs of the cap (make_scratch)

    # -- per job ---------------------------------------------------------------------------
    def prepare(self, job: JobSpec) -> None:
        import wasmtime

        self.release()
        _sweep_dead_processes_dirs()
        _register_settle()
        _live.add(self)
        self.job = job
        options = job.options or {}
        self.content_type = abi.content_type(options.get("content_type"))
        self.argv = abi.argv(list(job.arguments))
        self.fuel = _fuel(options.get("fuel"))
        try:
            self.scratch_size = scratch_size(options.get("scratch_size"))
        except ValueError as e:
            raise WorkError(str(e)) from None
        # In an evaluator the host ends on request, a slice that must stop ends the process
        # (stop_process) instead of trapping at an epoch check: the checks at every loop back-edge
        # cost ~1.6x on tight numeric loops, an interrupted slice costs one evaluator restart.
        stop = self.stop_process
        self.engine_options = EngineOptions(fuel=self.fuel is not None, exceptions=True, epoch=stop is None)
        self.engine = get_engine(self.engine_options)
        self.watchdog = get_watchdog(self.engine, stop=stop)
        try:
            wasm = wasm_bytes(job.work, paths=False)
        except (ValueError, OSError) as e:
            raise WorkError(f"wasi work must be a wasm module (bytes) or WAT text: {e}") from None
        try:
            self.compiled = compile_module(self.engine, self.engine_options, wasm)
        except wasmtime.WasmtimeError as e:
            raise WorkError(f"the wasm module does not validate: {e}") from None
        module = self.compiled.module
        self._check_module(module)
        linker = wasmtime.Linker(self.engine)
        linker.define_wasi()
        self._define_dcp(linker)
        try:
            self.pre = linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as e:
            raise WorkError(f"the module's imports cannot be satisfied: {e}") from None
        self._files_dir = _write_files(job.files) if job.files else None
        self._slice_dir()  # now: mounting the scratch is not possible once the evaluator is locked down

    def _check_module(self, module) -> None:
        bad = []
        for imp in module.imports:
            if imp.module == "wasi_snapshot_preview1":
                continue
            if imp.name not in _ALLOWED_IMPORTS.get(imp.module, ()):
                bad.append(f"{imp.module}.{imp.name}")
        if bad:
            raise WorkError(
                f"the module imports {', '.join(bad)}; a wasi work may import only wasi_snapshot_preview1.* and "
                "dcp.progress/console/emit (see sandbox/wasi.md)"
            )
        start = next((e for e in module.exports if e.name == "_start"), None)
        if start is None:
            raise WorkError("the module exports no _start: build a WASI *command* (e.g. clang --target=wasm32-wasi "
                            "with a main function, or cargo build --target wasm32-wasip1 for a bin crate)")
        import wasmtime

        kind = start.type
        if not isinstance(kind, wasmtime.FuncType) or kind.params or kind.results:
            what = (f"a function taking {len(kind.params)} and returning {len(kind.results)} value(s)"
                    if isinstance(kind, wasmtime.FuncType) else f"a {type(kind).__name__.removesuffix('Type').lower()}")
            raise WorkError(f"the module's _start is {what}; a WASI command's _start is a function with no parameters "
                            "and no results (what main() compiles to)")

    def _define_dcp(self, linker) -> None:
        import wasmtime

        f64, i32 = wasmtime.ValType.f64(), wasmtime.ValType.i32()

        def read(caller, ptr: int, length: int) -> bytes:
            memory = caller.get("memory")
            if not isinstance(memory, wasmtime.Memory):
                raise wasmtime.Trap("dcp imports need the module to export its memory as 'memory'")
            if ptr < 0 or length < 0 or ptr + length > memory.data_len(caller):
                raise wasmtime.Trap(f"dcp import given an out-of-bounds string ({ptr}, {length})")
            return bytes(memory.read(caller, ptr, ptr + length))

        def progress(value: float) -> None:
            s = self._current
            if s is not None:
                s.last_progress = time.monotonic()
                s.ctx.progress(abi.progress_value(value))

        def console(caller, level: int, ptr: int, length: int) -> None:
            s = self._current
            if s is not None:
                name = abi.CONSOLE_LEVELS[level] if 0 <= level < len(abi.CONSOLE_LEVELS) else "log"
                s.log(name, read(caller, ptr, length).decode("utf-8", "replace"))

        def emit(caller, name_ptr: int, name_len: int, value_ptr: int, value_len: int) -> None:
            s = self._current
            if s is None:
                return
            name = read(caller, name_ptr, name_len).decode("utf-8", "replace")
            raw = read(caller, value_ptr, value_len)
            s.console_bytes += len(raw)
            if s.cap is not None and s.console_bytes > s.cap:
                s.over("console output and emitted events", s.console_bytes)
                return
            try:
                value = json.loads(raw) if raw.strip() else None
            except (ValueError, RecursionError) as e:
                raise wasmtime.Trap(f"dcp.emit({name!r}): the value is not JSON: {abi.why(e)}") from None
            s.ctx.emit(name or "message", value)

        linker.define_func("dcp", "progress", wasmtime.FuncType([f64], []), progress)
        linker.define_func("dcp", "console", wasmtime.FuncType([i32, i32, i32], []), console, access_caller=True)
        linker.define_func("dcp", "emit", wasmtime.FuncType([i32] * 4, []), emit, access_caller=True)

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # interpreter shutdown: modules may already be gone
            pass

    def release(self) -> None:
        _live.discard(self)
        if self._files_dir:
            remove_tree(self._files_dir)
            self._files_dir = None
        if self._slice_root:
            from ...runner import isolation

            isolation.unmount(os.path.join(self._slice_root, "scratch"))
            remove_tree(self._slice_root)
            self._slice_root = None
        if self._stdin_path:
            try:
                os.unlink(self._stdin_path)
            except FileNotFoundError:
                pass
            self._stdin_path = None

    # -- per slice ---------------------------------------------------------------------------
    def execute(self, ctx: SliceContext, datum: Any) -> Any:
        import wasmtime

        if self.job is None:
            raise RuntimeError("prepare(job) must run before execute()")
        _register_settle()
        limits = ctx.limits
        stdin = self.content_type.encode(datum)
        state = _Slice(ctx, limits.output)
        workdir = self._slice_dir()
        scratch = os.path.join(workdir, "scratch")
        store = None
        try:
            stdin_path = self._stdin_path
            with open(stdin_path, "wb") as f:
                f.write(stdin)

            wasi = wasmtime.WasiConfig()
            wasi.argv = self.argv  # and no env: nothing of the host leaks in
            wasi.stdin_file = stdin_path
            wasi.stdout_custom = state.on_stdout
            wasi.stderr_custom = state.on_stderr
            wasi.preopen_dir(scratch, SCRATCH_GUEST, True)
            if self._files_dir:
                wasi.preopen_dir(self._files_dir, FILES_GUEST, False)

            store = wasmtime.Store(self.engine)
            store.set_wasi(wasi)
            set_store_limits(store, memory=_linear_memory_quota(limits.memory))
            if self.fuel is not None:
                store.set_fuel(self.fuel)

            instance = None
            self._current = state
            scratch_cap = ScratchCap(scratch, self.scratch_size, kernel=self._scratch_kernel)
            check = _checker(state, limits, scratch_cap)
            failure: BaseException | None = None
            exit_status = 0
            with self.watchdog.guard(store, deadline=ctx.deadline, cpu_time=limits.cpu_time, check=check,
                                     wall_time=limits.wall_time) as guard:
                state.guard = guard
                try:
                    instance = self.pre.instantiate(store)
                    instance.exports(store)["_start"](store)
                except wasmtime.ExitTrap as e:
                    exit_status = e.code
                except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
                    failure = e
                    # proc_exit with a status WASI does not allow (126 and up, unnamed): an exit all the same
                    if exit_not_allowed(e):
                        failure, exit_status = None, _STATUS_NOT_ALLOWED
                finally:
                    self._current = None
                    state.console.flush()
            interrupted = guard.error
            quota_hit = False
            if instance is not None and (failure is not None or exit_status != 0):
                memory = instance.exports(store).get("memory")
                quota_hit = isinstance(memory, wasmtime.Memory) and memory_at_quota(
                    store, memory, _linear_memory_quota(limits.memory))
            # Done with the guest: its open files (thousands, if it hoards them) close now, so that
            # the host has descriptors for the scratch walk below.
            store.close()
            if interrupted is not None and (failure is not None or interrupted.code == ErrorCode.EOUTPUTLIMIT):
                raise interrupted
            if self._scratch_kernel or failure is not None or exit_status != 0:
                # A write past the scratch cap failed in the guest (ENOSPC): whatever the guest made
                # of that, the slice went over its cap. (A kernel-capped scratch is one statvfs to
                # read; a host folder is walked only after a failure.)
                full = scratch_cap.measure()
                if full is not None:
                    raise _with_stderr(full, state)
            if failure is not None:
                err = trap_to_error(failure, memory_exhausted=quota_hit, memory=limits.memory, fuel=self.fuel)
                if instance is None and err.code == ErrorCode.EUNCAUGHT:
                    # instantiation itself failed: a feature this engine does not offer (shared
                    # memory, ...) is the module's fault; an initial memory/table above the quota is ours
                    text = str(failure)
                    if "disabled" in text or "not supported" in text or "unsupported" in text:
                        err = SliceError(f"the module needs something this worktime does not offer: {text}",
                                         code=ErrorCode.EBADWORK)
                    else:
                        err = SliceError(f"the module cannot be instantiated within the slice's limits: {text}",
                                         code=ErrorCode.EMEMORYLIMIT if "memory" in text else ErrorCode.EUNCAUGHT)
                raise _with_stderr(err, state)
            if exit_status != 0:
                tail = state.stderr_tail.decode("utf-8", "replace").strip()
                if quota_hit:
                    raise SliceError(f"the module ran out of memory at its quota and exited with status {exit_status}; "
                                     "raise limits.memory", code=ErrorCode.EMEMORYLIMIT, name="OutOfMemory",
                                     stack=tail or None)
                shown = f"; stderr ends with: {tail[-500:]}" if tail else " (stderr was empty)"
                status = EXIT_NOT_ALLOWED if exit_status == _STATUS_NOT_ALLOWED else f"status {exit_status}"
                raise SliceError(f"the module exited with {status}{shown}", code=ErrorCode.EUNCAUGHT,
                                 name=f"ExitStatus{exit_status if exit_status >= 0 else ''}", stack=tail or None)
            return self.content_type.decode(bytes(state.stdout))
        finally:
            # The store owns the guest's open files (thousands, if it hoards them): close them before
            # the scratch directory is emptied, which needs descriptors of its own. Closed, not only
            # dropped: a traceback on its way out still holds the frames that refer to it.
            if store is not None:
                store.close()
            store = instance = guard = None
            state.guard = None
            _empty_scratch(scratch)
            try:
                os.truncate(self._stdin_path, 0)
            except (OSError, TypeError):
                pass

    def _slice_dir(self) -> str:
        """This instance's private slice directory: ``stdin`` (outside the guest's view) and
        ``scratch`` (the guest's /tmp). Creating and deleting a directory per slice costs ~1 ms on
        ext4, more than the whole rest of a trivial slice; an emptied scratch directory is
        indistinguishable from a fresh one (WASI preview 1 cannot change modes or owners), so
        each slice empties it instead (see ``_empty_scratch``)."""
        if self._slice_root is None or not os.path.isdir(os.path.join(self._slice_root, "scratch")):
            from ...runner import isolation

            # In an evaluator: on its private tmpfs, gone with the process however it dies.
            area = isolation.private_area()
            self._slice_root = tempfile.mkdtemp(prefix=_prefix("slice"), dir=area)
            self._scratch_kernel = make_scratch(os.path.join(self._slice_root, "scratch"), self.scratch_size)
            # Rewriting a file on ext4 costs ~0.2 ms (a quarter of a trivial slice); on tmpfs ~10 µs.
            # The datum is in memory anyway, so keep its stdin copy in memory too when we can
            # (truncated after every slice, so an idle evaluator holds no datum in /dev/shm).
            fd, self._stdin_path = tempfile.mkstemp(prefix=_prefix("stdin"), dir=area or _shm() or self._slice_root)
            os.close(fd)
        return self._slice_root


# -- host-side directories: named by owner pid, swept when the owner is gone -----------------
# An evaluator killed by the supervisor (wall time, RSS) never runs release(); the next
# evaluator to prepare a job removes what dead processes left behind.
_OWNED = re.compile(r"^dcp-wasi-(?:slice|stdin|files)-(\d+)-")
_swept = False
_live: "weakref.WeakSet[WasiWorktime]" = weakref.WeakSet()


def _prefix(kind: str) -> str:
    return f"dcp-wasi-{kind}-{os.getpid()}-"


def _shm() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _sweep_dead_processes_dirs() -> None:
    from ...runner import isolation

    global _swept
    if _swept:
        return
    _swept = True
    for base in {tempfile.gettempdir(), _shm()} - {None}:
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            m = _OWNED.match(name)
            if m is None or isolation.pid_alive(int(m.group(1))):
                continue
            remove_tree(os.path.join(base, name))


_settle_registered = False


def _settle_at_exit() -> None:
    """Give wasmtime's runtime threads a moment to drop our output callbacks before Python
    finalises: they call back into Python from foreign (tokio) threads, and one doing so during
    finalisation aborts with "panic in a function that cannot unwind" (seen in ~1 of 3 processes
    that exit right after a slice). Evaluators leave with os._exit and never get here."""
    import gc

    for worktime in list(_live):
        worktime.release()
    gc.collect()
    time.sleep(0.05)


def _register_settle() -> None:
    global _settle_registered
    if not _settle_registered:
        import atexit

        atexit.register(_settle_at_exit)
        _settle_registered = True


def _linear_memory_quota(memory: int | None) -> int | None:
    """The linear-memory cap: the slice's memory limit minus headroom for the engine's own RSS,
    so the guest's malloc fails (EMEMORYLIMIT from the engine) before the host's RSS watchdog
    has to kill the evaluator."""
    if memory is None:
        return None
    return max(64 * 1024, memory - min(16 * MiB, memory // 8))


#: The exit status of a proc_exit wasmtime refuses (126 and up: it does not say which).
_STATUS_NOT_ALLOWED = -1

#: The largest instruction budget wasmtime can hold.
MAX_FUEL = 2**64 - 1


def _fuel(value: Any) -> int | None:
    if value is None:
        return None
    try:
        fuel = int(float(value)) if isinstance(value, str) else int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: 1e400 is infinity
        fuel = 0
    if fuel <= 0 or isinstance(value, bool):
        raise WorkError(f"options.fuel must be a positive instruction budget such as 1e9, got {value!r}")
    if fuel > MAX_FUEL:  # wasmtime keeps it in 64 bits: more wrapped around to almost none
        raise WorkError(f"options.fuel is at most {MAX_FUEL:,} (2**64 - 1) instructions, got {value!r}; leave it out for "
                        "no instruction budget")
    return fuel


def _checker(state: _Slice, limits, scratch_guard: ScratchCap):
    """The watchdog's periodic check: cancellation, no-progress, scratch-directory size."""

    def check() -> SliceError | None:
        now = time.monotonic()
        if state.ctx.cancelled:
            return SliceError("the slice was cancelled", code=ErrorCode.ECANCELLED)
        timeout = limits.progress_timeout
        if timeout is not None and now - state.last_progress > timeout:
            return exceeded("progress_timeout", timeout)
        return scratch_guard.check()

    return check


def _empty_scratch(scratch: str) -> None:
    """Delete whatever the slice left in its scratch directory (usually nothing: one scandir)."""
    try:
        with os.scandir(scratch) as it:
            left = [entry.path for entry in it]
    except FileNotFoundError:
        return
    for path in left:
        remove_tree(path)





def _with_stderr(err: SliceError, state: _Slice) -> SliceError:
    tail = state.stderr_tail.decode("utf-8", "replace").strip()
    if tail:
        err.stack = f"{err.stack}\n--- stderr ---\n{tail}" if err.stack else tail
    return err


def _write_files(files: dict[str, bytes | str]) -> str:
    """The job's files in a fresh directory (mounted read-only at /job for every slice)."""
    from ...runner import isolation

    root = tempfile.mkdtemp(prefix=_prefix("files"), dir=isolation.private_area())
    try:
        for name, content in files.items():
            rel = PurePosixPath(name)
            if rel.is_absolute() or ".." in rel.parts or not rel.parts or "\0" in name:
                raise WorkError(f"job file name {name!r} must be a relative path without '..'")
            data = content.encode() if isinstance(content, str) else bytes(content)
            target = Path(root, *rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            target.chmod(0o444)
    except BaseException:
        remove_tree(root)
        raise
    return root
