"""One live WASI CPython interpreter: instantiation, turns, the host door, limits, recycling.

A ``Guest`` is instantiated from the pre-started snapshot (~1 ms), boots the guest bootstrap
(``guest/``), loads the job's work once, then runs each slice as one short *turn* of the
reactor, so imports and module state stay warm between slices of a job::

    compiled = compiled_module.load()
    with GuestDirs.create(files={"data.txt": b"hi"}, modules={"helper": "X = 1"}) as dirs:
        guest = Guest(compiled, dirs, memory=256 << 20)
        guest.start(deadline=time.monotonic() + 60)
        guest.load({"id": "j1", "work": "def f(x): return x + 1", "arguments": [], "options": {}},
                   deadline=time.monotonic() + 60)
        guest.run_slice(ctx, 41)         # -> 42
        guest.close()

The guest sees only: the stdlib zip (read-only, ``/usr/local/lib``), the bootstrap (read-only,
``/dcp/boot``), the job's modules and files (read-only, ``/dcp/modules``, ``/dcp/files``) and a
scratch folder (``/tmp``). There is no socket, process or thread API in WASI preview 1.

Any trap (wall time, no progress, output cap, a wasm fault) or guest ``MemoryError`` leaves the
interpreter unusable or with its memory at the quota: the guest is then marked dead and the
worktime starts a fresh one for the next slice.
"""

from __future__ import annotations

import ctypes
import hashlib
import marshal
import os
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ...errors import ErrorCode, SliceError, WorkError
from ...limits import exceeded, format_size
from ...values import UnserializableValue, pack, printable, unpack, unpack_frame
from ...worktime import CONSOLE_LEVELS
from ..wasm_runtime import Watchdog, memory_at_quota, set_store_limits, trap_to_error
from ..wasm_runtime.scratch import DEFAULT_SCRATCH_SIZE, ScratchCap, make_scratch, remove_tree
from .artifacts import boot_dir, runtime_cache

if TYPE_CHECKING:
    from ...worktime import Block
    import wasmtime

    from ...worktime import SliceContext
    from .compiled import Compiled

#: The first turn: load the bootstrap modules, from code objects the host cached on an earlier
#: start (compiling them in the guest costs ~80 ms per interpreter), else from /dcp/boot. Frames
#: are hand-made msgpack (the codec is not loaded yet): ["boot", name], ["bootcache", name, code].
BOOT = """
def _dcp_boot():
    import marshal, sys, types, _host
    for name in ("_dcp_codec", "_dcp_guest", "dcp"):
        tag = bytes([0xA0 | len(name)]) + name.encode()
        path = "/dcp/boot/" + name + ".py"
        code = _host.call(b"\\x92\\xa4boot" + tag)
        if code:
            code = marshal.loads(code)
        else:
            with open(path, "rb") as f:
                code = compile(f.read(), path, "exec", dont_inherit=True)
            data = marshal.dumps(code)
            _host.call(b"\\x93\\xa9bootcache" + tag + b"\\xc6" + len(data).to_bytes(4, "big") + data)
        module = types.ModuleType(name)
        module.__file__ = path
        sys.modules[name] = module
        exec(code, module.__dict__)
    sys.modules["_dcp_guest"].install()
_dcp_boot()
del _dcp_boot
import _dcp_guest
"""
BOOT_MODULES = ("_dcp_codec", "_dcp_guest", "dcp")
LOAD = "_dcp_guest.load_work()\n"
SLICE = "_dcp_guest.run_slice()\n"
BLOCK = "_dcp_guest.run_block()\n"
#: The door's answer to a block's result frame that ends the turn (any non-empty answer does).
_STOP = b"\xc3"
#: Seconds of slices whose results the guest holds in a block before one frame carries them: one
#: host call (~20 µs through wasmtime-py's trampoline) per stretch, not per slice. A slice's wall
#: and CPU clocks start at the last frame, so this is also how much sooner than its limit a slice
#: may be stopped.
FLUSH_AFTER = 0.002
#: The guest's position cell, ``["at", k]``, whose four bytes of ``k`` the guest then rewrites as a
#: little-endian uint32 (see ``_dcp_guest.run_block``).
_CELL = b"\x92\xa2at\xce\x00\x00\x00\x00"
_MANY = b"\x93\xa4many"
#: ``Guest._running_position``'s answer when the trap came after the running slice was settled.
SETTLED = -1
#: Datums of these types cross to the guest as marshal data in a block (see ``Guest.run_block``).
_MARSHAL_FLAT = frozenset((int, float, str, bool, type(None)))
#: The largest ``many`` frame (several results; the guest sends a bigger one alone): the door's
#: bound before decoding, whatever the job's output limit.
MANY_BYTES = (1 << 16) + 1024
HOST_FAULT = -2  # the door's "host failed" answer: the guest's _host.call raises OSError
_MASK = 0xFFFFFFFF
_U32 = struct.Struct("<I")
_EINVAL, _EFAULT = 28, 21  # WASI errno values
_SUBSCRIPTION = "<QB7xIxxxxQQH6x"  # userdata, tag, clock id or fd, timeout, precision, flags (48 bytes)
_EVENT = "<QHB5xQH6x"  # userdata, error, type, nbytes, flags (32 bytes)

_watchdogs: dict[int, Watchdog] = {}


def _watchdog(engine: "wasmtime.Engine") -> Watchdog:
    """The engine's shared watchdog (``dcp_worktimes.worktimes.wasm_runtime.get_watchdog``), or our own per engine."""
    from .. import wasm_runtime as wasm

    shared = getattr(wasm, "get_watchdog", None)
    if shared is not None:
        return shared(engine)
    wd = _watchdogs.get(id(engine))
    if wd is None:
        wd = _watchdogs[id(engine)] = Watchdog(engine)
    return wd


@dataclass
class GuestDirs:
    """The host folders behind the guest's mounts, made per job and removed with it."""

    root: Path
    files: Path
    modules: Path
    scratch: Path
    #: The scratch is a tmpfs of the job's cap, enforced by the kernel (in an evaluator).
    scratch_kernel: bool = False
    #: A block found /tmp full after several slices: until the next job, blocks send each slice's
    #: result on its own, so that the slice that fills it is the one blamed.
    blame_each: bool = False

    @classmethod
    def create(cls, files: Mapping[str, bytes] | None = None,
               modules: Mapping[str, str | bytes] | None = None,
               scratch_size: int | None = DEFAULT_SCRATCH_SIZE) -> "GuestDirs":
        from ...runner import isolation

        _sweep_orphans()
        # In an evaluator: on its private tmpfs, gone with the process however it dies.
        root = Path(tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{os.getpid()}-", dir=isolation.private_area()))
        dirs = cls(root, root / "files", root / "modules", root / "tmp")
        for d in (dirs.files, dirs.modules):
            d.mkdir(mode=0o700)
        dirs.scratch_kernel = make_scratch(str(dirs.scratch), scratch_size)
        try:
            dirs.fill(files, modules)
        except BaseException:
            dirs.remove()
            raise
        return dirs

    def fill(self, files: Mapping[str, bytes] | None, modules: Mapping[str, str | bytes] | None) -> None:
        """Write the job's files and modules (an interpreter started on the empty folders sees them:
        they are the host side of its mounts)."""
        self.blame_each = False
        for rel, data in (files or {}).items():
            _write_inside(self.files, rel, data, "job file")
        for name, source in (modules or {}).items():
            _write_inside(self.modules, _module_path(name), source, "job module")

    def remove(self) -> None:
        from ...runner import isolation

        if self.scratch_kernel:
            isolation.unmount(str(self.scratch))
        remove_tree(str(self.root))

    def empty_scratch(self) -> None:
        """Delete what the guest left in /tmp (its space returns once its descriptors close)."""
        try:
            names = os.listdir(self.scratch)
        except OSError:
            return
        for name in names:
            remove_tree(str(self.scratch / name))

    def __enter__(self) -> "GuestDirs":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


_DIR_PREFIX = "dcp-python-"
_swept = False


def _sweep_orphans() -> None:
    """Remove job folders left by evaluators that were killed (the supervisor SIGKILLs on quota)."""
    global _swept
    if _swept:
        return
    _swept = True
    for d in Path(tempfile.gettempdir()).glob(f"{_DIR_PREFIX}*-*"):
        try:
            pid = int(d.name[len(_DIR_PREFIX):].split("-", 1)[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            remove_tree(str(d))
        except (ValueError, OSError):
            pass  # not ours, or alive under another user


def _base(memory: "wasmtime.Memory", store: Any) -> int:
    """The address of byte 0 of ``memory`` now (it moves when the memory grows)."""
    return ctypes.addressof(memory.data_ptr(store).contents)


def _guest_frame(data: bytes) -> Any:
    """One frame from the guest. Its bytes are the work's to forge: a malformed frame is the work's
    error (``EUNCAUGHT``); a string that is not UTF-8 is ``EUNSERIALIZABLE`` in a result or an
    emitted value, and replaced by U+FFFD in a console line. Lone surrogates (``'\\udcff'``) are
    text and arrive exactly (``dcp_worktimes.values``: the guest encodes them as the host does)."""
    import msgpack

    frames_at = 2 if data.startswith(_MANY) else None  # ["many", running, [frame, ...]]
    try:
        try:
            return unpack_frame(data, frames_at=frames_at)
        except UnicodeDecodeError:
            frame = unpack_frame(data, unicode_errors="replace", frames_at=frames_at)
            if isinstance(frame, list) and frame and frame[0] == "console":
                return frame
            raise SliceError("a string in the work's result or event is not UTF-8 text (the guest's frame was "
                             "forged?); return bytes for binary data", code=ErrorCode.EUNSERIALIZABLE) from None
    except UnserializableValue as e:  # nested deeper than values.MAX_DEPTH: only a forged frame is
        raise SliceError(str(e), code=ErrorCode.EUNSERIALIZABLE) from None
    except (ValueError, TypeError, msgpack.UnpackException) as e:  # also from the second, lenient unpack
        raise SliceError(f"the work sent the host a malformed frame ({type(e).__name__}: {e})",
                         code=ErrorCode.EUNCAUGHT) from None


def _boot_cache_path(compiled: "Compiled", name: str) -> Path:
    source = (boot_dir() / f"{name}.py").read_bytes()
    runtime = compiled.runtime
    ident = f"{runtime.python_version}:{runtime.sha256.get(runtime.snapshot.name) or runtime.snapshot.stat().st_mtime_ns}"
    key = hashlib.sha256(ident.encode() + b"\0" + source).hexdigest()[:24]
    return runtime_cache() / f"boot-{name}-{key}.marshal"


def _write_atomically(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs the next start a compile


def _module_path(name: str) -> str:
    """``pkg.helper`` → ``pkg/helper.py``; a name already ending in ``.py`` is a file name."""
    if name.endswith(".py"):
        return name
    parts = name.split(".")
    if not all(p.isidentifier() for p in parts):
        raise WorkError(f"job module name {name!r} is not an importable Python module name (like 'helper' or "
                        "'pkg.helper')")
    return "/".join(parts) + ".py"


def _write_inside(base: Path, rel: str, data: str | bytes, what: str) -> None:
    target = (base / rel).resolve()
    if rel.startswith("/") or base.resolve() not in target.parents:
        raise WorkError(f"{what} path {rel!r} must be relative and stay inside the job's folder (no '..')")
    target.parent.mkdir(parents=True, exist_ok=True)
    # A package's parents need __init__.py to be importable as regular packages.
    if what == "job module":
        for parent in target.relative_to(base.resolve()).parents:
            if str(parent) != ".":
                init = base / parent / "__init__.py"
                if not init.exists():
                    init.write_text("")
    target.write_bytes(data.encode("utf-8") if isinstance(data, str) else bytes(data))


class Guest:
    """A WASI CPython instance. Not thread-safe: one turn at a time (the evaluator's one slice)."""

    def __init__(self, compiled: "Compiled", dirs: GuestDirs, *, memory: int | None,
                 scratch_size: int | None = DEFAULT_SCRATCH_SIZE) -> None:
        self.scratch_size = scratch_size
        self.compiled = compiled
        self.dirs = dirs
        self.memory_limit = memory
        self.alive = False
        self.store: Any = None
        self._exports: Any = None
        self._memory: Any = None
        self._handler: Callable[[str, list], bytes | None] | None = None
        self._stop: SliceError | None = None
        self._guard: Any = None
        self._cell: int | None = None  # where the guest's position cell is, in a block's turn
        self._unnamed = False  # a block's turn broke on a frame of several results

    # -- life cycle -----------------------------------------------------------------------------
    def start(self, *, deadline: float | None) -> None:
        """Instantiate the snapshot and boot the bootstrap; ``WorkError`` if that fails."""
        import wasmtime

        engine = self.compiled.engine
        store = wasmtime.Store(engine)
        wasi = wasmtime.WasiConfig()
        wasi.argv = ["python"]
        wasi.env = [("TMPDIR", "/tmp"), ("HOME", "/tmp"), ("PYTHONTZPATH", ""), ("PYTHONHASHSEED", "0")]
        from .compiled import stdlib_folder_for

        wasi.preopen_dir(str(stdlib_folder_for(self.compiled.runtime)), "/usr/local/lib", False)
        wasi.preopen_dir(str(boot_dir()), "/dcp/boot", False)
        wasi.preopen_dir(str(self.dirs.modules), "/dcp/modules", False)
        wasi.preopen_dir(str(self.dirs.files), "/dcp/files", False)
        wasi.preopen_dir(str(self.dirs.scratch), "/tmp", True)
        # stdout/stderr are left unset (discarded): the bootstrap routes print/logging through the
        # door; only raw writes to fd 1/2 are lost, and they cannot flood the host.
        store.set_wasi(wasi)
        self._origin_ns = time.monotonic_ns()  # the guest's monotonic clock counts from about here
        set_store_limits(store, memory=self.memory_limit)
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        i32 = wasmtime.ValType.i32()
        linker.define_func("host", "call", wasmtime.FuncType([i32] * 4, [i32]), self._door, access_caller=True)
        # wasmtime's own poll_oneoff blocks the thread for a whole time.sleep(), where no epoch
        # deadline can reach it: ours sleeps in short steps and returns early once the slice must stop.
        linker.allow_shadowing = True
        linker.define_func("wasi_snapshot_preview1", "poll_oneoff", wasmtime.FuncType([i32] * 4, [i32]),
                           self._poll_oneoff, access_caller=True)
        self.store = store
        try:
            with _watchdog(engine).guard(store, deadline=deadline):
                instance = linker.instantiate(store, self.compiled.module)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            if self.memory_limit is not None and "memory" in str(e).lower():
                raise WorkError(f"the Python sandbox needs more memory than the job's limit of "
                                f"{format_size(self.memory_limit)} just to start (about 48 MiB); raise the memory "
                                "limit to 64 MiB or more (job.limits memory, dcp-worker --memory-limit)",
                                code=ErrorCode.EMEMORYLIMIT) from None
            raise WorkError(f"the Python sandbox failed to start: {e}", code=ErrorCode.ECRASH) from None
        self._exports = instance.exports(store)
        self._memory = self._exports["memory"]
        self.alive = True
        self._turn(BOOT, self._boot_frames, deadline=deadline, what="starting the Python sandbox")

    def _boot_frames(self, op: str, frame: list) -> bytes | None:
        """The BOOT turn's door: serve and keep the bootstrap's code objects.

        Only the BOOT turn, which runs before any work is loaded into the fresh interpreter, may
        write this cache; the key covers the runtime and the bootstrap source.
        """
        name = frame[1] if len(frame) > 1 else None
        if name not in BOOT_MODULES:
            raise SliceError(f"the sandbox asked for an unknown bootstrap module {name!r}", code=ErrorCode.ECRASH)
        path = _boot_cache_path(self.compiled, name)
        if op == "boot":
            try:
                return path.read_bytes()
            except OSError:
                return None
        if op == "bootcache" and len(frame) > 2 and isinstance(frame[2], bytes):
            _write_atomically(path, frame[2])
            return None
        return self._events(None, op, frame)

    def load(self, job: dict, *, deadline: float | None) -> str:
        """Compile the work inside the guest; returns the slice function's name, ``WorkError`` otherwise."""
        job_bytes = pack(job)
        outcome: dict[str, Any] = {}

        def handler(op: str, frame: list) -> bytes | None:
            if op == "job":
                return job_bytes
            if op in ("loaded", "error"):
                outcome[op] = frame[1]
                return None
            return self._events(None, op, frame)

        try:
            self._turn(LOAD, handler, deadline=deadline, what="loading the work")
        except SliceError as e:
            raise WorkError(e.message, code=e.code) from None
        if "error" in outcome:
            err = _guest_error(outcome["error"], LOAD_CODES)
            code = err["code"]
            if code == "EUNCAUGHT":
                code = ErrorCode.EBADWORK  # the work's top level raised: the work is unusable
            message = str(err.get("message"))
            if err.get("name") and code == ErrorCode.EBADWORK and not message.startswith(err["name"]):
                message = f"{err['name']}: {message}"
            if err.get("stack"):
                message = f"{message}\n{err['stack']}"
            if code == "EMEMORYLIMIT":
                self.alive = False
            raise WorkError(message, code=code)
        if "loaded" not in outcome:
            self.alive = False
            raise WorkError("the Python sandbox ended the load turn without an answer", code=ErrorCode.ECRASH)
        return str(outcome["loaded"].get("function"))

    def run_slice(self, ctx: "SliceContext", datum: Any) -> Any:
        """One slice: the work's function on ``datum`` (raises ``SliceError`` with a precise code)."""
        try:
            datum_bytes = pack(datum)
        except UnserializableValue as e:
            raise SliceError(f"the datum cannot enter the sandbox: {e}", code=ErrorCode.EUNSERIALIZABLE) from None
        limits = ctx.limits
        outcome: dict[str, Any] = {}
        state = {"progress": time.monotonic(), "console": 0}

        def handler(op: str, frame: list) -> bytes | None:
            if op == "datum":
                return datum_bytes
            if op in ("result", "error"):
                outcome[op] = frame[1]
                return None
            if op == "progress":
                state["progress"] = time.monotonic()
            return self._events(ctx, op, frame, state)

        scratch = ScratchCap(str(self.dirs.scratch), self.scratch_size, kernel=self.dirs.scratch_kernel)

        def check() -> SliceError | None:
            if ctx.cancelled:
                return SliceError("the slice was cancelled", code=ErrorCode.ECANCELLED)
            pt = limits.progress_timeout
            if pt is not None and time.monotonic() - state["progress"] > pt:
                return exceeded("progress_timeout", pt)
            return scratch.check()  # the guest's /tmp is a host folder: it must not fill the disk

        try:
            self._turn(SLICE, handler, deadline=ctx.deadline, cpu_time=limits.cpu_time, check=check,
                       output_limit=limits.output, wall_time=limits.wall_time, what="running the slice")
        except SliceError as e:
            if getattr(e, "limit", None) is None:
                self._blame_full_scratch(scratch)
            raise
        if "error" in outcome or self.dirs.scratch_kernel:  # kernel-capped: one statvfs, after every slice
            self._blame_full_scratch(scratch)
        if "error" in outcome:
            err = _guest_error(outcome["error"], SLICE_CODES)
            code = err["code"]
            if code == "EMEMORYLIMIT":
                self.alive = False  # wasm memory never shrinks: start the next slice afresh
            raise SliceError(str(err.get("message")), code=code, stack=err.get("stack"), name=err.get("name"))
        if "result" not in outcome:
            self.alive = False
            raise SliceError("the Python sandbox ended the slice without a result", code=ErrorCode.ECRASH)
        return outcome["result"]

    def run_block(self, block: "Block", indexes: list[int]) -> None:
        """Slices ``indexes`` of ``block`` back to back in one turn, for about ``block.budget``
        seconds: the datums go in with one host call, and the results of ``FLUSH_AFTER`` seconds
        of slices come back in one more (``many`` frames), instead of a turn and two calls per slice.

        Per-slice semantics as in ``run_slice``: as each frame arrives the watchdog is re-armed
        with the next slice's wall deadline and CPU budget, its no-progress clock restarts, and
        its events go to its own context (the guest sends held results before any event); a
        limit or a trap fails the running slice only, which the guest's position cell names (the
        interpreter restarts; the slices not settled stay pending in ``block``)."""
        values = [block.datums[i] for i in indexes]
        flush_after = 0.0 if self.dirs.blame_each else FLUSH_AFTER
        if all(type(v) in _MARSHAL_FLAT for v in values):
            # The guest loads these with marshal (C) instead of its pure-Python msgpack: the same
            # values, ~0.7 µs less per datum in the guest.
            datums = b"M" + marshal.dumps([values, flush_after])
        else:
            try:
                datums = pack([values, flush_after])
            except UnserializableValue:  # one datum cannot enter: each gets its own verdict
                block.run_each(self.run_slice, indexes)
                return
        limits = block.limits
        started = time.monotonic()
        running: dict[str, Any] = {"pos": 0, "ctx": None, "asked": False, "stop": False}
        state = {"progress": 0.0, "console": 0}
        scratch = ScratchCap(str(self.dirs.scratch), self.scratch_size, kernel=self.dirs.scratch_kernel)
        full: list[SliceError] = []
        self._cell, self._unnamed = None, False

        def begin(pos: int) -> None:
            block.starting(indexes[pos])
            running["pos"], running["ctx"] = pos, None
            state["progress"], state["console"] = time.monotonic(), 0

        def ctx() -> "SliceContext":
            """The running slice's context, made when it first sends an event (most never do)."""
            if running["ctx"] is None:
                running["ctx"] = block.context(indexes[running["pos"]])
            return running["ctx"]

        def fail(frame: list) -> bool:
            """The running slice's error; True when the turn must end now."""
            err = _guest_error(frame[1], SLICE_CODES)
            code = err["code"]
            block.failed(indexes[running["pos"]], SliceError(str(err.get("message")), code=code,
                                                             stack=err.get("stack"), name=err.get("name")))
            running["pos"] += 1
            if code == "EMEMORYLIMIT":
                self.alive = False  # wasm memory never shrinks: the next slice starts afresh
                return True
            return False

        def settle_many(frames: list, more: bool) -> bytes | None:
            failed = False
            for k, frame in enumerate(frames, running["pos"]):
                if not (type(frame) is list and len(frame) == 3 and frame[0] in ("result", "error")
                        and type(frame[2]) is int and frame[2] == k and k < len(indexes)):
                    self._unnamed = len(frames) > 1
                    raise SliceError("the work sent the host an out-of-turn result frame", code=ErrorCode.EUNCAUGHT)
                failed = failed or frame[0] == "error"
            # Kernel-capped /tmp: one statvfs per frame. Full means a slice went over its cap,
            # whatever it made of that: with one slice in the frame, that one; with several, the
            # culprit is unknown, so none is settled and they run again one frame each.
            verdict = scratch.measure() if failed or self.dirs.scratch_kernel else None
            if verdict is not None:
                full.append(verdict)
                running["stop"] = True
                if len(frames) == 1:
                    block.failed(indexes[running["pos"]], verdict)
                else:
                    self.dirs.blame_each = True
                return _STOP
            done: list[int] = []  # a run of results is settled at once
            values: list[Any] = []
            for frame in frames:
                if frame[0] == "result":
                    done.append(indexes[running["pos"]])
                    values.append(frame[1])
                    running["pos"] += 1
                    continue
                block.done_many(done, values)
                done, values = [], []
                if fail(frame):
                    running["stop"] = True
                    return _STOP
            block.done_many(done, values)
            nxt = running["pos"]
            if nxt >= len(indexes) or (not more and (block.cancelled or time.monotonic() - started > block.budget)):
                running["stop"] = True
                return _STOP
            begin(nxt)
            guard = self._guard
            if guard is not None:
                deadline = None if limits.wall_time is None else time.monotonic() + limits.wall_time
                guard.rearm(deadline=deadline, cpu_time=limits.cpu_time, wall_time=limits.wall_time)
            return None

        def handler(op: str, frame: list) -> bytes | None:
            if op == "block" and not running["asked"]:
                running["asked"] = True
                return datums
            if running["asked"] and not running["stop"]:
                if op == "many" and len(frame) == 3 and type(frame[1]) is bool and type(frame[2]) is list:
                    return settle_many(frame[2], frame[1])
            if op in ("result", "error", "block", "many"):
                raise SliceError(f"the work sent the host an out-of-turn {op!r} frame", code=ErrorCode.EUNCAUGHT)
            if op == "progress":
                state["progress"] = time.monotonic()
            return self._events(ctx() if running["asked"] else None, op, frame, state)

        def check() -> SliceError | None:
            if block.cancelled:
                return SliceError("the slice was cancelled", code=ErrorCode.ECANCELLED)
            pt = limits.progress_timeout
            if pt is not None and time.monotonic() - state["progress"] > pt:
                return exceeded("progress_timeout", pt)
            return scratch.check()

        begin(0)
        deadline = None if limits.wall_time is None else time.monotonic() + limits.wall_time
        try:
            self._turn(BLOCK, handler, deadline=deadline, cpu_time=limits.cpu_time, check=check,
                       output_limit=limits.output, wall_time=limits.wall_time, what="running a slice")
        except SliceError as e:
            if running["stop"] or full:
                return  # every slice it ran was settled (or /tmp blamed) before the turn broke
            if getattr(e, "limit", None) is None:
                try:
                    self._blame_full_scratch(scratch)
                except SliceError as verdict:
                    e = verdict
            unnamed = self._unnamed and not self.dirs.blame_each  # (one result per frame there)
            at = None if unnamed else self._running_position(running["pos"], len(indexes))
            if at is None:  # forged: the slices not settled run again, one frame each, to name the slice
                self.dirs.blame_each = True
                return
            if at != SETTLED:
                block.failed(indexes[at], e)
            return
        finally:
            self._cell = None
            if full:
                self.alive = False
                self.dirs.empty_scratch()
        if not running["stop"]:
            # The turn ended without the running slice's result: the work broke the loop.
            self.alive = False
            block.failed(indexes[running["pos"]], SliceError("the Python sandbox ended the slice without a result",
                                                             code=ErrorCode.ECRASH))

    def _running_position(self, settled: int, count: int) -> int | None:
        """After a trap in a block: the slice the guest was running, from its position cell (the
        held results before it are lost with the interpreter: those slices stay pending and run
        again). ``SETTLED`` when the cell names a slice already settled (a trap between slices,
        or a frame the work forged for itself): no slice left is to blame. ``None`` when the cell
        is not what the guest writes (the work's to forge) and results may have been held: no
        slice can be named."""
        cell, store, memory = self._cell, self.store, self._memory
        if cell is None:  # nothing ran yet: the host's own count
            return settled
        try:
            raw = bytes(memory.read(store, cell, cell + len(_CELL)))
        except Exception:  # noqa: BLE001 - the memory is gone with the store
            raw = b""
        k = int.from_bytes(raw[5:], "little") if raw[:5] == _CELL[:5] else -1
        if 0 <= k < settled:
            return SETTLED
        if settled <= k < count:
            return k
        # Forged. One frame per slice (blame_each): nothing was held, the host's count is exact.
        return settled if self.dirs.blame_each else None

    def _blame_full_scratch(self, scratch: ScratchCap) -> None:
        """A slice that ends with /tmp full went over its cap (the guest met ENOSPC), whatever it
        made of that.
        Its files (and any it unlinked but holds open, which only closing frees) would fail every
        later slice too: the sandbox restarts with an empty /tmp."""
        full = scratch.measure()
        if full is not None:
            self.alive = False
            self.dirs.empty_scratch()
            raise full

    def close(self) -> None:
        self.alive = False
        self._exports = self._memory = None
        store, self.store = self.store, None
        if store is not None:
            # Free the instance, its memory and the guest's open files now: our host functions close
            # a reference cycle through the store, which would keep them until the next GC (an
            # unlinked scratch file held open would keep the scratch full for the next interpreter).
            try:
                store.close()
            except Exception:  # already closed, or wasmtime-py without close()
                pass

    # -- turns and the door ---------------------------------------------------------------------
    def _turn(self, code: str, handler: Callable[[str, list], bytes | None], *, deadline: float | None,
              cpu_time: float | None = None, check: Callable[[], SliceError | None] | None = None,
              output_limit: int | None = None, wall_time: float | None = None, what: str) -> None:
        import wasmtime

        if not self.alive:
            raise SliceError("the Python sandbox is not running", code=ErrorCode.ECRASH)
        store, exports = self.store, self._exports
        data = code.encode()
        self._handler, self._stop, self._output_limit = handler, None, output_limit
        try:
            with _watchdog(self.compiled.engine).guard(store, deadline=deadline, cpu_time=cpu_time,
                                                       check=check, wall_time=wall_time) as guard:
                self._guard = guard
                try:
                    p = exports["host_alloc"](store, len(data)) & _MASK
                    self._memory.write(store, data, p)
                    rc = exports["turn"](store, p, len(data))
                except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
                    self.alive = False
                    if self._stop is not None:
                        raise self._stop from None
                    at_quota = memory_at_quota(store, self._memory, self.memory_limit)
                    err = trap_to_error(e, interrupted=guard.error, memory_exhausted=at_quota, memory=self.memory_limit)
                    if err.code == ErrorCode.EUNCAUGHT and err.name and err.name.startswith("Trap.STACK"):
                        err = SliceError("the work overflowed the sandbox's stack (too deep recursion in C code)",
                                         code=ErrorCode.EUNCAUGHT, name="StackOverflow", stack=err.stack)
                    raise err from None
                stopped = self._stop or guard.error
        finally:
            self._handler = self._guard = None
        if stopped is not None:
            self.alive = False
            raise stopped
        if rc != 0:
            # The guest's bootstrap raised out of its turn: only code in the sandbox runs there, so
            # the work broke it (tampered builtins, a pathological exception), not the worker.
            self.alive = False
            raise SliceError(f"the work broke the Python sandbox while {what} (turn status {rc}); the sandbox "
                             "restarts for the next slice", code=ErrorCode.EUNCAUGHT)

    def _door(self, caller: Any, ptr: int, length: int, out_ptr: int, out_len: int) -> int:
        """``host.call(ptr, len, *out_ptr, *out_len)``: one msgpack frame in, one answer out."""
        try:
            ptr, length, out_ptr, out_len = ptr & _MASK, length & _MASK, out_ptr & _MASK, out_len & _MASK
            memory = self._memory
            size = memory.data_len(caller)
            if ptr + length > size or out_ptr + 4 > size or out_len + 4 > size:
                return HOST_FAULT
            # Raw access through the memory's base address, bounds checked above: wasmtime-py's
            # read/write look the memory up again on every call (~15 µs per frame together).
            base = _base(memory, caller)
            limit = self._output_limit
            if limit is not None and length > limit + 64 and not (
                    length <= MANY_BYTES and ctypes.string_at(base + ptr, len(_MANY)) == _MANY):
                # (several results together may pass one slice's limit: each is held to it on its own)
                self._halt(exceeded("output", limit, used=length, what="a frame (result or event) the work sent"))
                return HOST_FAULT
            data = ctypes.string_at(base + ptr, length)
            try:
                frame = _guest_frame(data)
            except SliceError:
                # Several slices' results: which one the guest forged is not known.
                self._unnamed = data.startswith(_MANY)
                raise
            if not isinstance(frame, list) or not frame or not isinstance(frame[0], str) or self._handler is None:
                return HOST_FAULT
            if frame[0] == "at" and length == len(_CELL):  # a block's position cell: remember where it is
                self._cell, answer = ptr, None
            else:
                answer = self._handler(frame[0], frame)
            if self._stop is not None:
                return HOST_FAULT
            answer = answer or b""
            p = caller["host_alloc"](caller, len(answer)) & _MASK if answer else 0
            if answer and (not p or p + len(answer) > memory.data_len(caller)):
                return HOST_FAULT
            base = _base(memory, caller)  # again: host_alloc may have grown (and moved) the memory
            if answer:
                ctypes.memmove(base + p, answer, len(answer))
            ctypes.memmove(base + out_ptr, _U32.pack(p), 4)
            ctypes.memmove(base + out_len, _U32.pack(len(answer)), 4)
            return 0
        except Exception as e:  # nothing may escape into wasmtime; the turn reports it
            if isinstance(e, UnserializableValue):  # what the work sent (an event too deep): its slice's
                e = SliceError(str(e), code=ErrorCode.EUNSERIALIZABLE)
            self._halt(e if isinstance(e, SliceError) else
                       SliceError(f"the host failed to serve the sandbox: {type(e).__name__}: {e}",
                                  code=ErrorCode.ECRASH))
            return HOST_FAULT

    def _poll_oneoff(self, caller: Any, in_ptr: int, out_ptr: int, n: int, nevents_ptr: int) -> int:
        """WASI ``poll_oneoff`` for a guest without sockets: clocks sleep interruptibly, fds are ready."""
        try:
            in_ptr, out_ptr, n, nevents_ptr = (v & _MASK for v in (in_ptr, out_ptr, n, nevents_ptr))
            if n == 0:
                return _EINVAL
            memory = self._memory
            size = memory.data_len(caller)
            if n > 4096 or in_ptr + 48 * n > size or out_ptr + 32 * n > size or nevents_ptr + 4 > size:
                return _EFAULT
            raw = bytes(memory.read(caller, in_ptr, in_ptr + 48 * n))
            ready, clocks = [], []
            for userdata, tag, which, timeout, _precision, flags in struct.iter_unpack(_SUBSCRIPTION, raw):
                if tag == 0:  # clock
                    if flags & 1:  # absolute time on the subscription's clock
                        now_ns = time.time_ns() if which == 0 else time.monotonic_ns() - self._origin_ns
                        timeout = max(0, timeout - now_ns)
                    clocks.append((timeout, userdata))
                elif tag in (1, 2):  # fd read/write: files and stdio never block
                    ready.append(struct.pack(_EVENT, userdata, 0, tag, 0, 0))
                else:
                    return _EINVAL
            if not ready and clocks:
                wait = min(t for t, _ in clocks)
                until = time.monotonic() + wait / 1e9
                while (left := until - time.monotonic()) > 0:
                    guard = self._guard
                    if self._stop is not None or (guard is not None and guard.error is not None):
                        break  # the guest traps at its next epoch check
                    time.sleep(min(left, 0.01))
                ready = [struct.pack(_EVENT, u, 0, 0, 0, 0) for t, u in clocks if t <= wait]
            memory.write(caller, b"".join(ready), out_ptr)
            memory.write(caller, struct.pack("<I", len(ready)), nevents_ptr)
            return 0
        except Exception:
            return _EINVAL

    def _halt(self, error: SliceError) -> None:
        if self._stop is None:
            self._stop = error
            if self._guard is not None:
                self._guard.interrupt(error)

    def _events(self, ctx: "SliceContext | None", op: str, frame: list, state: dict | None = None) -> bytes | None:
        """progress / console / emit frames, shared by every turn (no context: dropped)."""
        if op == "progress":
            if ctx is not None:
                # In a block the guest passes on only some calls, with the highest value it had.
                highest = frame[2] if len(frame) > 2 and type(frame[2]) in (int, float) else None
                ctx.progress(frame[1] if len(frame) > 1 else None,
                             highest_before=None if highest is None else float(highest))
            return b"\xc3"
        if op == "console":
            level = frame[1] if len(frame) > 1 and frame[1] in CONSOLE_LEVELS else "log"
            # A console line is for people: lone surrogates show as U+FFFD (values carry them exactly).
            message = printable(frame[2]) if len(frame) > 2 and isinstance(frame[2], str) else repr(frame[2:])
            if state is not None:
                state["console"] += len(message)
                limit = self._output_limit
                if limit is not None and state["console"] > limit:
                    self._halt(exceeded("output", limit, used=state["console"], what="console output"))
                    return None
            if ctx is not None:
                ctx.console(level, message)
            return None
        if op == "emit":
            if ctx is not None and len(frame) > 1 and isinstance(frame[1], str) and frame[1]:
                ctx.emit(frame[1], frame[2] if len(frame) > 2 else None)
            return None
        raise SliceError(f"the work sent the host an unknown request {op!r}", code=ErrorCode.EUNCAUGHT)


#: The codes a slice's error from the guest may carry (``_dcp_guest._describe``), and the codes
#: of an error loading the work: the guest runs the job's code, which can send any frame it likes.
SLICE_CODES = frozenset({"EUNCAUGHT", "EMEMORYLIMIT", "EUNSERIALIZABLE", "EWORKREJECT"})
LOAD_CODES = SLICE_CODES | {"EBADWORK", "ENOSLICEHANDLER"}


def _guest_error(err: Any, allowed: frozenset[str]) -> dict[str, Any]:
    """The guest's error dict with a code among ``allowed`` (any other is ``EUNCAUGHT``: a slice
    that forged ``EBADWORK`` stopped its whole job, ``ECANCELLED`` or a list passed as the code)
    and text where text is expected."""
    err = err if isinstance(err, dict) else {}
    code = err.get("code")
    text = {k: (v if v is None or isinstance(v, str) else str(v)) for k in ("name", "stack") for v in [err.get(k)]}
    return {**text, "code": code if isinstance(code, str) and code in allowed else ErrorCode.EUNCAUGHT,
            "message": str(err.get("message"))}
