"""The guest side of the ``python`` worktime: runs inside CPython-for-WASI, never on the host.

The host (``dcp_worktimes.worktimes.python``) mounts this folder read-only at ``/dcp/boot`` and drives the
interpreter with three kinds of *turns* (short source snippets run by the reactor's ``turn``
export)::

    import sys; sys.path.insert(0, "/dcp/boot"); import _dcp_guest; _dcp_guest.install()
    _dcp_guest.load_work()          # once per instance: fetch the job, compile the work
    _dcp_guest.run_slice()          # once per slice
    _dcp_guest.run_block()          # or many slices in one turn (the host's block fast path)

Everything else crosses the one door the runtime has (``_host.call(frame) -> bytes``): frames are
msgpack lists ``[op, ...]`` (see ``_dcp_codec``). Ops the host answers:

``["job"]``                       → ``{"id", "work", "arguments", "options"}``
``["datum"]``                     → the slice's datum
``["block"]``                     → ``[datums, flush_after]``: a block of slices and how long their
                                    results may wait here before a frame carries them
``["at", k]``                     → nothing; the frame's own bytes then hold the running slice's
                                    position (see ``run_block``)
``["progress", value, highest]``  → ``True`` (``highest``: in a block, the highest value it may not
                                    have heard of)
``["console", level, message]``   → nothing
``["emit", name, value]``         → nothing
``["loaded", info]`` / ``["result", value]`` / ``["error", {code, name, message, stack}]``
``["many", running, [frame, ...]]`` → in a block, the result/error frames of several slices at once

Nothing here trusts the host less than the host trusts the guest: the host decodes guest frames
with its own (safe) msgpack decoder and checks sizes; this module only organises the guest.
"""

import marshal
import sys
import time
import types

import _host

import _dcp_codec as codec

BOOT_DIR = "/dcp/boot"
MODULES_DIR = "/dcp/modules"
FILES_DIR = "/dcp/files"
WORK_FILE = "<work>"
PROGRESS_INTERVAL = 0.05  # seconds between progress frames; the watchdog only needs a heartbeat
#: In a block, plain progress values reach the host at most this often (also a slice's first:
#: its no-progress clock starts with the slice), as map-basic's prelude does.
PROGRESS_QUIET = 0.02
#: In a block, results wait here (held) until their slices have run this long since the last frame,
#: or HELD_BYTES / HELD_COUNT fill: one host call (~20 µs through wasmtime-py) carries them all.
HELD_BYTES = 1 << 16
HELD_COUNT = 256
_MANY = b"\x93\xa4many"  # ["many", running, [frames]]
_RESULT = b"\x93\xa6result"  # ["result", value, k] before its value

_state = types.SimpleNamespace(handler=None, arguments=[], job=None, last_progress=float("-inf"), installed=False,
                               logging=False, spread=False, quiet=False, highest=-1.0, held=[], held_bytes=0,
                               rejected=None)


# -- the door ----------------------------------------------------------------------------------
def _call(*frame):
    if frame[0] == "console" and len(frame[2]) > MESSAGE_CAP:  # one line is cut, as the host cuts it
        frame = (frame[0], frame[1], _cut(frame[2]))
    return _send(codec.encode(list(frame)))


def _send(frame):
    """Send an event or request frame. In a block, the held results of the slices before this one
    go first: the host then counts this one as running, and the frame is its own."""
    if _state.held:
        _send_held(True)
    return _host.call(frame)


def _send_held(running):
    """Send the held result frames of a block as one ``["many", running, frames]`` frame.
    ``running``: a frame of a slice still running follows (an event, or its own result), so the
    host must not end the turn on this one. The host's answer: non-empty to end the turn."""
    held = _state.held
    frame = _MANY + (b"\xc3" if running else b"\xc2") + codec.array_head(len(held)) + b"".join(held)
    held.clear()
    _state.held_bytes = 0
    return _host.call(frame)


def _ask(*frame):
    answer = _call(*frame)
    return codec.decode(answer) if answer else None


# -- console -----------------------------------------------------------------------------------
class _ConsoleStream:
    """``sys.stdout``/``sys.stderr``: each complete line becomes one console event."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, level):
        self.level = level
        self._buf = ""

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._buf += text
        if "\n" in self._buf:
            *lines, self._buf = self._buf.split("\n")
            for line in lines:
                _call("console", self.level, line)
        return len(text)

    def flush(self):
        if self._buf:
            line, self._buf = self._buf, ""
            _call("console", self.level, line)

    def print_text(self, text):
        """What one ``print`` call writes: one console event for it however many lines it has
        (``print(df)``, ``print("a\\nb")``), as one ``console.log`` is one event."""
        self._buf += text
        if "\n" in text:
            lines, _, self._buf = self._buf.rpartition("\n")
            _call("console", self.level, lines)

    @property
    def buffer(self):
        """``sys.stdout.buffer.write(b"...")``: bytes are decoded as UTF-8 (replacing errors)."""
        stream = self

        class _Bytes:
            def write(self, data):
                stream.write(bytes(data).decode("utf-8", "replace"))
                return len(data)

            def flush(self):
                stream.flush()

        return _Bytes()

    def isatty(self):
        return False

    def writable(self):
        return True

    def fileno(self):
        raise OSError("the sandbox console has no file descriptor")


def _log_line(level, args):
    _call("console", level, " ".join(a if isinstance(a, str) else repr(a) for a in args))


class Console:
    """``console.log/debug/info/warn/error(*args)`` as in DCP's JavaScript sandbox."""

    def log(self, *args):
        _log_line("log", args)

    def debug(self, *args):
        _log_line("debug", args)

    def info(self, *args):
        _log_line("info", args)

    def warn(self, *args):
        _log_line("warn", args)

    warning = warn

    def error(self, *args):
        _log_line("error", args)


console = Console()


def _print(*args, sep=" ", end="\n", file=None, flush=False):
    """``print``: to a console stream, one event per call (``_ConsoleStream.print_text``); to
    anything else, as Python prints."""
    stream = sys.stdout if file is None else file
    if type(stream) is not _ConsoleStream:
        return _builtin_print(*args, sep=sep, end=end, file=file, flush=flush)
    for name, value in (("sep", sep), ("end", end)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be None or a string, not {type(value).__name__}")
    stream.print_text((" " if sep is None else sep).join(map(str, args)) + ("\n" if end is None else end))
    if flush:
        stream.flush()


_builtin_print = print


class _OnImportOfLogging:
    """A ``sys.meta_path`` finder that routes ``logging`` to the console as soon as the work
    imports it, mid-slice included (a record logged in the slice that first imported it went
    through ``basicConfig``'s handler to ``sys.stderr``, as an ``error`` line). Importing logging
    at start instead would cost every interpreter start ~30 ms."""

    def find_spec(self, name, path=None, target=None):
        if name != "logging":
            return None
        try:
            sys.meta_path.remove(self)  # once; the real finders find it
        except ValueError:
            pass
        import importlib.util

        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenInstallLogging(spec.loader)
        return spec


class _ThenInstallLogging:
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        _install_logging()

    def __getattr__(self, name):  # get_resource_reader, is_package, ...: the real loader's
        return getattr(self.loader, name)


def _install_logging():
    """Route the root logger to the console, once ``logging`` is imported by anyone: as it is
    (``_OnImportOfLogging``), or at a slice's start if it came in another way (importing it
    ourselves would cost ~30 ms of every interpreter start)."""
    if _state.logging or "logging" not in sys.modules:
        return
    _state.logging = True
    import logging

    levels = ((logging.ERROR, "error"), (logging.WARNING, "warn"), (logging.INFO, "info"), (0, "debug"))

    class ConsoleHandler(logging.Handler):
        def emit(self, record):
            try:
                level = next(name for number, name in levels if record.levelno >= number)
                _call("console", level, self.format(record))
            except Exception:
                self.handleError(record)

    root = logging.getLogger()
    root.handlers[:] = [ConsoleHandler()]


def _install_warnings():
    import warnings

    def showwarning(message, category, filename, lineno, file=None, line=None):
        _call("console", "warn", f"{filename}:{lineno}: {category.__name__}: {message}")

    warnings.showwarning = showwarning


# -- the API the work sees (re-exported by the ``dcp`` module) --------------------------------
def progress(value=None):
    """Report progress (a number in [0, 1], ``'NN%'``, or nothing). Always returns True."""
    now = time.monotonic()
    if _state.quiet:
        # In a block: a plain value (none, or a number not below the slice's highest) goes at most
        # every PROGRESS_QUIET; anything the host must judge (out of range, backwards, a string)
        # goes now, with the highest value so far, so its verdict is that of one call each.
        t = type(value)
        if value is None or ((t is int or t is float) and max(_state.highest, 0.0) <= value <= 1):
            if value is not None:
                _state.highest = value
            if now - _state.last_progress < PROGRESS_QUIET:
                return True
        _state.last_progress = now
        _progress(value, _state.highest if _state.highest >= 0 else None)
        return True
    if now - _state.last_progress >= PROGRESS_INTERVAL or value == 1 or value == "100%":
        _state.last_progress = now
        _progress(value)
    return True


def _progress(value, *highest):
    try:
        _call("progress", value, *highest)
    except codec.Unserializable:  # as JavaScript's progress() does: the host judges its text
        _call("progress", str(value), *highest)


class WorkReject(Exception):
    """Raised by ``work.reject(reason)``: the worker gives the slice back (EWORKREJECT)."""


class Work:
    """``work.emit(name, value)`` and ``work.reject(reason)`` as in DCP."""

    def emit(self, name, value=None):
        if not isinstance(name, str) or not name:
            raise ValueError("work.emit(name, value): name must be a non-empty string")
        _send(b"\x93" + codec.encode("emit") + codec.encode(name) + codec.encode(value, f"emit({name!r}) value"))

    def reject(self, reason=""):
        # Kept, not only raised: the slice is rejected even if the work catches the exception
        # (as in JavaScript), whatever it returns or raises next (_rejection).
        _state.rejected = WorkReject(str(reason))
        raise _state.rejected


work = Work()


def emit(name, value=None):
    work.emit(name, value)


def set_slice_handler(fn):
    """Make ``fn(datum, *job_arguments)`` the function every slice calls (Pyodide-style jobs)."""
    if not callable(fn):
        raise TypeError(f"dcp.set_slice_handler(fn): fn must be callable, got {type(fn).__name__}")
    _state.handler = fn
    return fn


# -- start-up ----------------------------------------------------------------------------------
def install():
    """Console capture, import path, working directory; once per instance."""
    if _state.installed:
        return
    sys.dont_write_bytecode = True  # the mounts are read-only; do not even try
    sys.stdout = _ConsoleStream("log")
    sys.stderr = _ConsoleStream("error")
    import builtins

    builtins.print = _print
    _install_warnings()
    if "logging" not in sys.modules:
        sys.meta_path.insert(0, _OnImportOfLogging())
    if MODULES_DIR not in sys.path:
        sys.path.insert(1, MODULES_DIR)
    import os

    try:
        os.chdir(FILES_DIR)  # relative opens find the job's read-only files
    except OSError:
        pass
    _state.installed = True


def _namespace(job):
    import dcp

    module = types.ModuleType("__work__")
    module.__file__ = WORK_FILE
    module.__builtins__ = __builtins__
    module.__dict__.update(
        dcp=dcp, progress=progress, work=work, console=console, emit=emit,
        job=types.SimpleNamespace(id=job.get("id"), arguments=list(job.get("arguments") or []),
                                  options=dict(job.get("options") or {})),
    )
    sys.modules["__work__"] = module
    return module


def _parse(source):
    import ast

    try:
        return source, ast.parse(source, WORK_FILE)
    except IndentationError:
        import textwrap

        dedented = textwrap.dedent(source)  # inspect.getsource of a method keeps its indentation
        if dedented == source:
            raise
        return dedented, ast.parse(dedented, WORK_FILE)


def _compile_work(job):
    """The slice function described by the job: a function, a def, a lambda, or a program."""
    import ast
    import linecache

    raw = job.get("work") or ""
    source = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    options = job.get("options") or {}
    wanted = options.get("function")
    if not source.strip():
        raise _LoadError("EBADWORK", "the work is empty; send the source of a Python function or of a program "
                                     "that calls dcp.set_slice_handler(fn)")
    try:
        source, tree = _parse(source)
    except SyntaxError as e:
        raise _LoadError("EBADWORK", f"the work does not compile: {e.msg} (line {e.lineno}, column {e.offset})",
                         "SyntaxError") from None
    linecache.cache[WORK_FILE] = (len(source), None, source.splitlines(True), WORK_FILE)
    module = _namespace(job)
    body = tree.body
    # A bare lambda expression: the work is that function.
    if len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Lambda):
        fn = eval(compile(ast.Expression(body[0].value), WORK_FILE, "eval"), module.__dict__)
        return fn, "<lambda>"
    program = "set_slice_handler" in source
    defs = [n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if not program:
        # inspect.getsource keeps decorators, which do not exist in the sandbox: the function
        # itself is the work.
        for node in defs:
            node.decorator_list = []
    exec(compile(tree, WORK_FILE, "exec"), module.__dict__)
    if _state.handler is not None:
        return _state.handler, getattr(_state.handler, "__name__", "handler")
    if program:
        raise _LoadError("ENOSLICEHANDLER", "the program ran without calling dcp.set_slice_handler(fn); call it "
                                            "with the function each slice should run")
    if wanted:
        fn = module.__dict__.get(wanted)
        if not callable(fn):
            raise _LoadError("ENOSLICEHANDLER", f"the work defines no function named {wanted!r} "
                                                "(options['function'])")
        return fn, wanted
    if len(defs) == 1:
        return module.__dict__[defs[0].name], defs[0].name
    if any(n.name == "work" for n in defs) and callable(module.__dict__.get("work")):
        return module.__dict__["work"], "work"  # helpers beside a function named `work`
    if not defs:
        raise _LoadError("ENOSLICEHANDLER", "the work defines no function; send one function's source, or a "
                                            "program that calls dcp.set_slice_handler(fn)")
    names = ", ".join(n.name for n in defs)
    raise _LoadError("ENOSLICEHANDLER", f"the work defines {len(defs)} functions ({names}); name the slice "
                                        "function `work`, or pass options['function'], or call "
                                        "dcp.set_slice_handler(fn)")


class _LoadError(Exception):
    def __init__(self, code, message, name=None):
        super().__init__(message)
        self.code, self.message, self.name = code, message, name


def load_work():
    """Fetch the job from the host and prepare its slice function (reports loaded or error)."""
    # The modules folder may have been filled after this interpreter started (a spare evaluator's):
    # forget any listing of it the import system cached meanwhile.
    sys.path_importer_cache.pop(MODULES_DIR, None)
    try:
        job = _ask("job")
        _state.job = job
        _state.arguments = list(job.get("arguments") or [])
        # Multi-dimensional jobs: the datum holds one value per dimension, one argument each.
        _state.spread = bool((job.get("options") or {}).get("spread_datum"))
        fn, name = _compile_work(job)
    except _LoadError as e:
        _flush()
        _call("error", {"code": e.code, "name": e.name, "message": e.message, "stack": None})
        return
    except BaseException as e:  # noqa: BLE001 - the work's top level may raise anything
        _flush()
        _call("error", _describe(e, "while loading the work"))
        return
    _state.handler = fn
    _install_logging()
    _flush()
    _call("loaded", {"function": name})


def _apply(datum):
    """The slice function's value on ``datum`` (a list spread into arguments with the job's
    ``spread`` option; an ``async def`` driven to completion)."""
    if not _state.logging:
        _install_logging()
    if _state.spread and isinstance(datum, list):
        value = _state.handler(*datum, *_state.arguments)
    else:
        value = _state.handler(datum, *_state.arguments)
    if type(value) not in _PLAIN and hasattr(value, "__await__"):
        value = _await(value)
    return value


_PLAIN = frozenset((int, float, str, bool, bytes, list, dict, type(None)))  # never awaitable


def _rejection():
    """The ``work.reject()`` of the slice that just ended, if it called it (then cleared)."""
    rejected, _state.rejected = _state.rejected, None
    return rejected


def run_slice():
    """Run the slice function on the host's datum; report its result or its error."""
    _state.last_progress = float("-inf")  # the slice's first progress() always reaches the host
    _state.rejected = None
    try:
        frame = codec.encode_frame("result", _apply(_ask("datum")), "result")
    except BaseException as e:  # noqa: BLE001 - every failure becomes a coded error
        _flush()
        _call("error", _describe(_rejection() or e))
        return
    _flush()
    rejected = _rejection()
    if rejected is not None:
        _call("error", _describe(rejected))
        return
    _host.call(frame)


def run_block():
    """Run the slice function on each of the host's datums, back to back in this one turn.

    Each slice ends with its result or error frame, as in ``run_slice``, held here and sent with
    the others of a ``flush_after`` stretch in one ``many`` frame (at once after an error, and
    before any event a slice sends, so that the host always knows which slice it is from). The
    host's answer to a frame is empty to go on, anything else to end the turn (its time budget is
    spent, the job was cancelled). Each frame carries its datum's position ``k``: the host takes
    results only in order. Limits stay per slice: the host re-arms them as each frame arrives
    (for the next slice; held slices ran less than ``flush_after`` in all, so the next one starts
    at most that much after its clock), and after a trap it reads which slice was running from
    ``cell``: that slice fails, the held ones before it run again."""
    answer = _host.call(codec.encode(["block"]))
    # Flat datums come as marshal data (b"M" first; C-speed to load, and the same values), others
    # as msgpack.
    datums, flush_after = marshal.loads(answer[1:]) if answer[:1] == b"M" else codec.decode(answer)
    # ["at", k]: its buffer stays where the host saw it while this bytearray lives unresized; k
    # is written as a little-endian uint32 (the host reads it so).
    cell = bytearray(b"\x92\xa2at\xce\x00\x00\x00\x00")
    _host.call(cell)
    position = memoryview(cell)[5:9].cast("I")  # (while a view exists, the cell cannot be resized)
    held = _state.held
    last = len(datums) - 1
    sent = now = time.monotonic()
    # The loop's own cost is most of a trivial slice's, so what it calls per slice is bound here:
    # the work called straight when it takes the datum alone (as _apply does then), the encoder
    # and the clock; the position k is encoded inline (msgpack's fixint, else uint16: ~0.35 µs a
    # slice less than codec.encode(k) in CPython for WASI).
    direct = not _state.arguments and not _state.spread
    handler, encode, clock, state, plain, modules = _state.handler, codec.encode, time.monotonic, _state, _PLAIN, sys.modules
    fixint = codec.FIXINT
    _state.quiet = True
    try:
        for k, datum in enumerate(datums):
            position[0] = k
            state.last_progress, state.highest = now, -1.0
            failed = False
            try:
                if not state.logging and "logging" in modules:
                    _install_logging()
                if direct:
                    value = handler(datum)
                    if type(value) not in plain and hasattr(value, "__await__"):
                        value = _await(value)
                else:
                    value = _apply(datum)
                frame = _RESULT + encode(value, "result") + (fixint[k] if k < 0x80 else b"\xcd" + k.to_bytes(2, "big")
                                                             if k < 0x10000 else encode(k))
            except BaseException as e:  # noqa: BLE001 - every failure becomes a coded error
                _flush()
                frame = codec.encode(["error", _describe(_rejection() or e), k])
                failed = True
            else:
                out, err = sys.stdout, sys.stderr
                if type(out) is not _ConsoleStream or out._buf or type(err) is not _ConsoleStream or err._buf:
                    _flush()
                if state.rejected is not None:  # work.reject() caught by the work
                    frame = codec.encode(["error", _describe(_rejection()), k])
                    failed = True
            now = clock()
            size = state.held_bytes + len(frame)
            if held and size > HELD_BYTES:
                _send_held(True)
                size = len(frame)
            held.append(frame)
            state.held_bytes = size
            if failed or k == last or now - sent >= flush_after or len(held) >= HELD_COUNT or size >= HELD_BYTES:
                sent = now
                if _send_held(False):
                    return
    finally:
        _state.quiet = False
        held.clear()
        _state.held_bytes = 0
        position.release()


def _await(awaitable):
    """Drive an ``async def`` handler to completion. WASI has no sockets or threads, so asyncio's
    event loop cannot start (no self-pipe); a coroutine that only computes (and awaits other
    coroutines) needs none."""
    steps = awaitable.__await__()
    try:
        while True:
            yielded = steps.send(None)
            if yielded is not None:
                raise RuntimeError("an async slice handler awaited I/O or a timer; the sandbox has no event loop "
                                   "(only computation can be awaited)")
    except StopIteration as done:
        return done.value


def _flush():
    for stream in (sys.stdout, sys.stderr):
        if type(stream) is _ConsoleStream and not stream._buf:
            continue  # ours, with nothing pending (once per slice: skip the call)
        try:
            stream.flush()
        except Exception:
            pass


# -- errors ------------------------------------------------------------------------------------
_RUNTIME = "CPython {v} for WASI with numpy, pandas, scipy, scikit-learn and the standard library"


def _describe(e, when=""):
    """A coded error dict for an exception raised by the work (or by its result's encoding)."""
    name = type(e).__name__
    try:
        message = str(e) or name
    except BaseException:  # noqa: BLE001 - a broken __str__ (recursion, raise) must not hide the error
        message = f"{name} (its message could not be printed)"
    code = "EUNCAUGHT"
    if isinstance(e, MemoryError):
        code = "EMEMORYLIMIT"
        message = f"MemoryError: the work ran out of memory at the job's memory limit ({message})"
    elif isinstance(e, OverflowError) and "index-sized integer" in message:
        # wasm32: sizes are 32-bit, so a request such as [0]*10**10 cannot even be expressed.
        code = "EMEMORYLIMIT"
        message = f"the work asked for more memory than a 32-bit sandbox can hold ({message})"
    elif isinstance(e, codec.Unserializable):
        code = "EUNSERIALIZABLE"
    elif isinstance(e, WorkReject):
        code = "EWORKREJECT"
    elif isinstance(e, SystemExit):
        message = f"the work called sys.exit({e.code!r}); return a value or raise an exception instead"
    elif isinstance(e, ModuleNotFoundError):
        v = ".".join(map(str, sys.version_info[:2]))
        message = (f"No module named {e.name!r}: it is not available in the sandbox ({_RUNTIME.format(v=v)}); "
                   "send your own pure-Python modules with the job (job modules), or use an available package")
    if when:
        message = f"{message} ({when})"
    stack = _stack(e)
    return {"code": code, "name": name, "message": _cut(message), "stack": stack and _cut(stack)}


# The host's cap on one message (dcp_worktimes/runner/bounds.py MESSAGE_CAP): an error bigger than
# a frame may carry would otherwise fail the slice as EOUTPUTLIMIT and lose what it said.
MESSAGE_CAP = 64 * 1024


def _cut(text):
    if len(text) <= MESSAGE_CAP:
        return text
    keep = MESSAGE_CAP - 64
    return f"{text[:keep]} ... [{len(text) - keep} more characters cut]"


#: Frames of the work kept in an error's stack (map-basic keeps 30 too).
STACK_FRAMES = 30


def _stack(e):
    try:
        import traceback

        # The innermost frames only: a RecursionError under a raised recursion limit has tens of
        # thousands, and reading each one's source line took seconds of the slice's time.
        te = traceback.TracebackException.from_exception(e, limit=-STACK_FRAMES)
        te.stack = traceback.StackSummary.from_list(
            [f for f in te.stack if not (f.filename.startswith(BOOT_DIR) or f.filename.startswith("<turn"))])
        if not te.stack and te.__cause__ is None and te.__context__ is None:
            # No frame of the work (the sandbox's own code raised, e.g. packing the result): the
            # message says it all, and a stack would only show the sandbox's internal names.
            return None
        return "".join(te.format())
    except Exception:  # a broken __str__ must not hide the error itself
        return None
