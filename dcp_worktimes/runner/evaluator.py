"""The evaluator: the sandboxed child process that runs slices (``python -m dcp_worktimes.runner.evaluator``).

It isolates itself, instantiates one worktime, then serves msgpack frames on stdin/stdout:

=================================================  ==========================================================
supervisor → evaluator                             evaluator → supervisor
=================================================  ==========================================================
(start)                                            ``{t: ready, isolation, pid}``, or ``{t: fatal, error}``
``{op: prepare, job, config}``                     ``{t: prepared, rss}`` / ``{t: prepare_error, error}``
``{op: run, n: [numbers], d: <packed datums>}``    results ``{t: rs, i: [index], v: [bytes], w: [wall], c: [cpu]}``,
                                                   failures ``{t: err, i, e, wall, cpu}``, events
                                                   ``{t: ev, i, k, p}`` (``i``: index in the run), then ``{t: done}``
``{op: cancel}``                                   (slices not started answer ``ECANCELLED``)
``{op: exit}``                                     (the evaluator releases its worktime and exits)
=================================================  ==========================================================

A run's datums arrive as one packed array (``d``, one C-level decode for the whole block; a
worktime with ``packed_datums = True`` gets each datum's raw bytes instead). Each result leaves
packed on its own (its output limit is per slice), and results are sent together in ``rs``
frames, so the host stores them without decoding. File descriptor 1 is re-pointed at stderr before any work runs: a guest that
writes to stdout at C level cannot corrupt the frame stream.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import queue
import sys
import threading
import time
from typing import Any, Callable

from ..errors import ErrorCode, SliceError, WorkError
from ..limits import Limits, exceeded
from ..values import (MAX_DEPTH, SCALARS, UnserializableValue, allow_depth, as_unserializable, check_decodes,
                      allow_big_ints, check_keys, pack, packer, unpack, unpack_all_packed, unpacker)
from ..worktime import Block, JobSpec, SliceContext, Worktime, check_file_names
from . import isolation
from .heartbeat import Heartbeat
from .bounds import MESSAGE_CAP, bound_error, cut
from .redact import host_failure

FLUSH_AFTER = 0.005  # seconds a finished result may wait in the buffer before it is written
#: Seconds between refreshes of the heartbeat's progress time by block slices starting.
BEAT_EVERY = 0.001


class FrameWriter:
    """Buffered, thread-safe frame output. Results are batched; everything else is written soon."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()
        # Finished slices, sent together as one "rs" frame of columns.
        self.results: tuple[list[int], list[bytes], list[float], list[float]] = ([], [], [], [])
        self.first = 0.0
        self.pending_bytes = 0
        self.lock = threading.Lock()
        self.packer = packer()
        self.tick: Callable[[], None] | None = None  # called by the flusher thread every cycle

    def send(self, frame: dict) -> None:
        try:
            data = self.packer.pack(frame)
        except UnicodeEncodeError:  # a lone surrogate in an event: values.pack carries it
            self.packer = packer()
            data = pack(frame)
        with self.lock:
            self._pack_results()
            self.buf += data
            self._flush()

    def result(self, index: int, value: bytes, wall: float, cpu: float) -> None:
        """Queue a finished slice; written within FLUSH_AFTER."""
        with self.lock:
            indexes, values, walls, cpus = self.results
            if not indexes:
                self.first = time.monotonic()
            indexes.append(index)
            values.append(value)
            walls.append(wall)
            cpus.append(cpu)
            self.pending_bytes += len(value)
            if self.pending_bytes > 65536:
                self._pack_results()
                self._flush()

    def results_many(self, indexes: list[int], values: list[bytes], walls: list[float], cpus: list[float]) -> None:
        """Queue many finished slices at once (a block engine's call)."""
        with self.lock:
            cols = self.results
            if not cols[0]:
                self.first = time.monotonic()
            cols[0].extend(indexes)
            cols[1].extend(values)
            cols[2].extend(walls)
            cols[3].extend(cpus)
            self.pending_bytes += sum(map(len, values))
            if self.pending_bytes > 65536 or len(cols[0]) >= 4096:
                self._pack_results()
                self._flush()

    def flush_if_stale(self) -> None:
        with self.lock:
            if self.results[0] and time.monotonic() - self.first > FLUSH_AFTER:
                self._pack_results()
                self._flush()

    def flusher(self) -> None:
        """Thread: finished results never wait longer than ~FLUSH_AFTER, even behind a long slice
        (a result still buffered when the watchdog kills the evaluator would be computed again)."""
        while True:
            time.sleep(FLUSH_AFTER)
            if self.tick is not None:
                self.tick()
            self.flush_if_stale()

    def _pack_results(self) -> None:
        # Results go before whatever frame follows, so the supervisor sees slices finish in order.
        if self.results[0]:
            indexes, values, walls, cpus = self.results
            self.buf += self.packer.pack({"t": "rs", "i": indexes, "v": values, "w": walls, "c": cpus})
            self.results = ([], [], [], [])
            self.pending_bytes = 0

    def flush(self) -> None:
        with self.lock:
            self._pack_results()
            self._flush()

    def _flush(self) -> None:
        data = bytes(self.buf)
        self.buf.clear()
        while data:
            data = data[os.write(self.fd, data):]


class _SliceEvents:
    """Turns a slice's context events into frames: collapses repeated console lines, caps traffic.

    Identical consecutive console lines become one event with a ``same`` count. The line waits
    at most ``CONSOLE_HOLD`` seconds for repeats (the frame writer's flusher thread sends it), and
    any other event sends it first, so the deployer sees events promptly and in order.
    """

    __slots__ = ("out", "index", "cap", "sent", "over", "pending", "since", "lock", "loud")

    #: Seconds a console line waits for identical repeats before it is sent anyway.
    CONSOLE_HOLD = 0.1

    def __init__(self, out: FrameWriter, index: int, cap: int | None) -> None:
        self.lock = threading.Lock()  # the main thread adds, the flusher thread sends stale lines
        self.reset(out, index, cap)

    def reset(self, out: FrameWriter, index: int, cap: int | None) -> "_SliceEvents":
        # One object per evaluator, reset per slice: trivial slices are counted in microseconds.
        self.out, self.index, self.cap = out, index, cap
        self.sent = 0
        self.over = False
        self.loud = False  # whether anything but progress was logged (a block's results then go one by one)
        self.pending: dict | None = None
        self.since = 0.0
        return self

    def __call__(self, kind: str, payload: Any) -> None:
        if self.over:
            return
        if kind != "progress":
            self.loud = True
        if kind == "emit":
            try:
                packed = pack(payload["value"])
            except UnserializableValue as e:
                raise UnserializableValue(f"work.emit({payload['name']!r}, value): {e}") from None
            try:
                check_decodes(packed, below=2)  # inside its frame: the frame, the payload
            except UnserializableValue:
                raise UnserializableValue(
                    f"work.emit({payload['name']!r}, value): the value is nested more than {MAX_DEPTH - 2} levels "
                    "deep (an event carries it two levels down); flatten it") from None
        if kind == "console" and len(payload.get("message") or "") > MESSAGE_CAP:
            payload = {**payload, "message": cut(payload["message"], MESSAGE_CAP)}
        with self.lock:
            p = self.pending
            if kind == "console":
                if p is not None and p["level"] == payload["level"] and p["message"] == payload["message"]:
                    p["same"] += 1
                    return
                self._flush_console()
                self.pending = {**payload, "same": 1}
                self.since = time.monotonic()
                return
            if p is not None:
                self._flush_console()  # what was logged before this event is delivered before it
            self._send(kind, payload)

    def flush_console(self) -> None:
        with self.lock:
            self._flush_console()

    def flush_stale(self) -> None:
        """Flusher thread: send a console line that has waited CONSOLE_HOLD for repeats."""
        if self.pending is not None and time.monotonic() - self.since > self.CONSOLE_HOLD:
            with self.lock:
                if self.pending is not None and time.monotonic() - self.since > self.CONSOLE_HOLD:
                    self._flush_console()

    def _flush_console(self) -> None:
        if self.pending is not None:
            p, self.pending = self.pending, None
            self._send("console", p)

    def _send(self, kind: str, payload: Any) -> None:
        frame = {"t": "ev", "i": self.index, "k": kind, "p": payload}
        if self.cap is not None and kind != "progress":  # progress is throttled, not metered
            self.sent += len(str(payload))
            if self.sent > self.cap:
                self.over = True
                return
        self.out.send(frame)


class Evaluator:
    def __init__(self, worktime: Worktime, out: FrameWriter, hb: Heartbeat) -> None:
        self.worktime = worktime
        self.out = out
        self.hb = hb
        self.job: JobSpec | None = None
        self.cancel = threading.Event()
        self.inbox: "queue.Queue[dict | None]" = queue.Queue()
        self._packer = packer()
        self._beat = lambda: hb.progressed(time.monotonic())  # one closure for every slice
        self._events = _SliceEvents(out, -1, None)
        self.family = False  # whether the worktime keeps child processes between slices
        out.tick = self._events.flush_stale
        cls = type(worktime)
        #: The engine runs many slices per call (``Worktime.execute_block``).
        self.block_engine = cls.execute_block is not Worktime.execute_block
        #: The worktime takes each datum's msgpack bytes, not the decoded value.
        self.packed_datums = cls.packed_datums
        #: Results are Python-made: their dicts may have tuple keys (``Worktime.decoded_results``).
        self.python_results = not cls.decoded_results
        self.lockdown: dict | None = None  # what lockdown.apply did (once, after the first prepare)
        self.block: RunBlock | None = None  # the run an execute_block engine is in
        worktime.stop_process = self._stop

    def _stop(self, error: SliceError) -> None:
        """``Worktime.stop_process``: the host kills this process, ``error`` the running slice's verdict."""
        block = self.block
        if block is not None and block.current >= 0:  # in execute_block: the slice it started last
            index, events = block.current, block._events.get(block.current)
        else:
            index, events = self._events.index, self._events
        if events is not None:
            events.flush_console()  # a line held back for repeats would die with the process
        self.out.send({"t": "stop", "i": index, "e": error.to_dict()})

    def pack(self, value: Any) -> bytes:
        # Same rules as values.pack, with one reusable Packer (the main thread's own).
        try:
            data = self._packer.pack(value)
        except UnserializableValue:
            self._packer = packer()  # a failed pack may leave the packer's buffer dirty
            raise
        except UnicodeEncodeError:  # a lone surrogate: values.pack carries it
            self._packer = packer()
            data = pack(value)
        except (TypeError, ValueError, OverflowError) as e:
            self._packer = packer()
            raise as_unserializable(e) from None
        if type(value) not in SCALARS:
            if len(data) > MAX_DEPTH:  # deep enough to pack but not to decode? (check_decodes)
                check_decodes(data)  # which also finds tuple keys
            elif self.python_results:
                check_keys(data)
        return data

    def reader(self, fd: int) -> None:
        unp = unpacker()
        while True:
            data = os.read(fd, 1 << 16)
            if not data:
                self.inbox.put(None)
                return
            unp.feed(data)
            try:
                for msg in unp:
                    if msg.get("op") == "cancel":
                        self.cancel.set()
                    else:
                        self.inbox.put(msg)
            except Exception as e:  # noqa: BLE001 - a frame this side cannot decode: the host waits for its answer
                self.inbox.put({"op": "undecodable", "why": f"{type(e).__name__}: {e}"})
                return

    def serve(self) -> None:
        while True:
            msg = self.inbox.get()
            if msg is None or msg.get("op") == "exit":
                return
            op = msg.get("op")
            if op == "undecodable":  # end, saying why: the host sees this process die with that reason
                print(f"dcp-worktimes: the evaluator could not decode a frame from the worker: {msg['why']}", file=sys.stderr)
                return
            if op == "prepare":
                self.prepare(msg["job"], msg.get("config") or {})
            elif op == "standby":
                self.standby(msg["hint"], msg.get("config") or {})
            elif op == "run":
                self.cancel.clear()
                self.run(msg["n"], msg["d"])
                self.out.send({"t": "done"})

    def standby(self, hint: dict, config: dict) -> None:
        """A spare evaluator: let the worktime start what the next job needs (no reply; a failure
        only means that ``prepare`` starts it instead)."""
        try:
            self.worktime.config = config
            self.worktime.standby(JobSpec.from_dict(hint))
        except Exception as e:  # noqa: BLE001 - nothing of a job has run; prepare starts afresh
            print(f"dcp-worktimes: standby failed: {type(e).__name__}: {e}", file=sys.stderr)

    def prepare(self, job_dict: dict, config: dict) -> None:
        try:
            if self.job is not None:
                self.worktime.release()
            self.job = JobSpec.from_dict(job_dict)
            check_file_names(self.job.files)  # a ValueError: EBADWORK below
            self.worktime.config = config
            type(self.worktime).validate(self.job)
            self.worktime.prepare(self.job)
        except WorkError as e:
            # ENOWORKTIME from prepare: this machine lacks something (a runtime, a model), nothing
            # is wrong with the work: the worker gives the slices back instead of failing the job.
            fault = e.code == ErrorCode.ENOWORKTIME
            error = SliceError(e.message, code=e.code, worker_fault=fault).to_dict()
            self.out.send({"t": "prepare_error", "error": bound_error(error, job_output(self.job))})
            return
        except SliceError as e:  # a verdict (a limit hit while loading the work: python's boot turn): as it is
            self.out.send({"t": "prepare_error", "error": bound_error(e.to_dict(), job_output(self.job))})
            return
        except ValueError as e:  # the job's own fields (check_file_names, a worktime's parse of the work)
            err = host_failure(e, "", code=ErrorCode.EBADWORK)
            self.out.send({"t": "prepare_error", "error": bound_error(err.to_dict(), job_output(self.job))})
            return
        except Exception as e:  # noqa: BLE001 - this machine's disk, cache, engine install, or the worktime's bug
            # Not proof the work is bad (a worktime says so with WorkError): taken for EBADWORK, one
            # worker with a broken local file cancelled the job for the whole fleet. The worker
            # hands the slices back and stops offering the worktime for a while instead.
            err = host_failure(e, "the worker could not prepare the job", code=ErrorCode.ENOWORKTIME, worker_fault=True)
            self.out.send({"t": "prepare_error", "error": bound_error(err.to_dict(), job_output(self.job))})
            return
        # A worktime that keeps its engine running as a child process (blender) has it counted in
        # its footprint and in each slice's CPU clock: the watchdog measures the whole process tree.
        self.family = _has_children()
        if self.lockdown is None:  # the engine is loaded, the job's mounts made: take the rest away
            self.lockdown = _lock_down(self.worktime)
        # "children": whether any process of ours runs now. With none, and a lockdown that denies
        # new ones, the watchdog need not look for them again (a child could start its own).
        self.out.send({"t": "prepared", "rss": _rss(self.family), "lockdown": self.lockdown,
                       "children": self.family or _has_children()})

    def run(self, numbers: list[int], packed: bytes) -> None:
        job = self.job
        assert job is not None, "run before prepare"
        datums = split_packed(packed) if self.packed_datums else unpack_all_packed(packed)
        if self.block_engine:
            self.block = RunBlock(self, numbers, datums, job)
            try:
                self.block.execute()
            finally:
                self.block = None
        else:
            limits = job.limits
            # An optional worktime hook: the whole batch, before its slices run one by one (map-basic
            # on V8 sends them to its engine process ahead, one round trip per batch, not per slice).
            prefetch = getattr(self.worktime, "prefetch", None)
            if prefetch is not None:
                prefetch(list(zip(numbers, datums)))
            for index, number in enumerate(numbers):
                if self.cancel.is_set():
                    self.out.send({"t": "err", "i": index, "e": {"code": "ECANCELLED", "message": "cancelled"}})
                    continue
                self.one(index, number, datums[index], limits)
        self.hb.idle()

    def one(self, index: int, number: int, datum: Any, limits: Limits) -> None:
        """Run one slice with ``execute`` (worktimes without a block fast path)."""
        events = self._events.reset(self.out, index, limits.output)
        now = time.monotonic()
        cpu0 = _cpu(self.family)
        self.hb.start(index, now, cpu0)
        ctx = SliceContext(number, limits, self.job, sink=events, heartbeat=self._beat, cancel_event=self.cancel)
        try:
            result = self.worktime.execute(ctx, datum)
        except BaseException as e:  # noqa: BLE001 - every failure of the work becomes the slice's error
            # (KeyboardInterrupt and SystemExit too: this process has no terminal, so only the
            # worktime's code raises them)
            self.settle_error(index, e, events, time.monotonic() - now, _cpu(self.family) - cpu0)
            return
        self.settle(index, result, events, limits, time.monotonic() - now, _cpu(self.family) - cpu0)

    def settle(self, index: int, result: Any, events: "_SliceEvents", limits: Limits, wall: float, cpu: float) -> None:
        """Slice ``index`` returned ``result``: pack and check it, then queue it for the supervisor."""
        try:
            if self.cancel.is_set():  # whatever a cancelled slice returns is not its result
                raise SliceError("the slice was cancelled", code=ErrorCode.ECANCELLED)
            value = self.pack(result)
            if events.pending is not None:
                events.flush_console()  # first: the last line counts against the limit too
            if events.over:
                raise exceeded("output", limits.output, used=events.sent, what="console/emit traffic")
            # One budget per slice (bounds.py): the result and what the slice logged and emitted.
            if limits.output is not None and len(value) + events.sent > limits.output:
                raise exceeded("output", limits.output, used=len(value) + events.sent,
                               what="the result" + (" with the slice's console/emit traffic" if events.sent else ""))
        except BaseException as e:  # noqa: BLE001
            self.settle_error(index, e, events, wall, cpu)
            return
        self.out.result(index, value, wall, cpu)

    def settle_error(self, index: int, e: BaseException, events: "_SliceEvents", wall: float, cpu: float) -> None:
        """Slice ``index`` failed with ``e``: send its error with the most specific code."""
        frame: dict
        if isinstance(e, SliceError):
            frame = {"t": "err", "i": index, "e": e.to_dict()}
        elif isinstance(e, UnserializableValue):
            frame = {"t": "err", "i": index, "e": {"code": "EUNSERIALIZABLE", "message": str(e)}}
        elif isinstance(e, MemoryError):
            limit = self.job.limits.memory if self.job is not None else None
            frame = {"t": "err", "i": index, "e": exceeded("memory", limit, what="memory in the worktime").to_dict()}
        elif isinstance(e, RecursionError):
            frame = {"t": "err", "i": index, "e": {"code": "EUNCAUGHT", "message": f"RecursionError: {e}"}}
        else:  # a worktime bug: what failed, never where on the host (redact.py)
            error = host_failure(e, "").to_dict()
            locked = bool(self.lockdown and (self.lockdown.get("seccomp") or {}).get("applied"))
            if isinstance(e, PermissionError) and e.errno == errno.EPERM and locked and not (
                    self.worktime.spawns and self.worktime.network):
                # What a plugin author sees when the lockdown refused a process or a socket.
                error["message"] += (" (the sandbox refuses new processes and sockets to a worktime that does not "
                                     "declare them: Worktime.spawns = True, Worktime.network = True)")
            frame = {"t": "err", "i": index, "e": error}
        events.flush_console()
        # The work wrote the message and stack: within what is left of the slice's budget (bounds.py).
        output = job_output(self.job)
        frame["e"] = bound_error(frame["e"], None if output is None else output - events.sent)
        frame["wall"] = wall
        frame["cpu"] = cpu
        self.out.send(frame)


def job_output(job: JobSpec | None) -> int | None:
    """The job's per-slice byte budget (its output limit), ``None`` when unlimited or unknown."""
    return job.limits.output if job is not None else None


class RunBlock(Block):
    """One run frame executed by an engine's ``execute_block`` (see ``worktime.Block``).

    Results settled during a call are sent when the call returns, with the call's CPU time shared
    among them by wall time: one process-CPU reading per call, not per slice.
    """

    def __init__(self, ev: Evaluator, numbers: list[int], datums: list[Any], job: JobSpec) -> None:
        self.ev = ev
        self.numbers = numbers
        self.datums = datums
        self.job = job
        self.limits = job.limits
        self._pending = list(range(len(numbers)))
        self._pending_set = set(self._pending)
        self._settled: set[int] = set()
        self._events: dict[int, _SliceEvents] = {}
        self._call: list[tuple] = []  # (index, result or error, is_error, wall, events) of this call
        self._mark = 0.0
        self._beat_at = float("-inf")
        self._cpu_mark = 0.0  # the family's CPU clock when this call's outcomes so far began
        self._flushed = False  # this call sent outcomes before it returned (flush)
        self.current = -1  # the slice starting() named last

    @property
    def cancelled(self) -> bool:
        return self.ev.cancel.is_set()

    def pending(self) -> list[int]:
        if self._settled:
            self._pending = [i for i in self._pending if i not in self._settled]
            self._pending_set -= self._settled
            self._settled = set()
        return list(self._pending)

    def context(self, i: int) -> SliceContext:
        events = self._events.get(i)
        if events is None:
            events = self._events[i] = _SliceEvents(self.ev.out, i, self.limits.output)
            self.ev.out.tick = events.flush_stale
        return SliceContext(self.numbers[i], self.limits, self.job, sink=events, heartbeat=self.ev._beat,
                            cancel_event=self.ev.cancel)

    def starting(self, i: int) -> None:
        self.current = i  # a stop_process() now is this slice's verdict
        # The supervisor's no-progress clock is refreshed at most every BEAT_EVERY: it judges in
        # seconds, and a refresh per slice was a tenth of a trivial slice's host time.
        now = time.monotonic()
        if now - self._beat_at >= BEAT_EVERY:
            self._beat_at = now
            self.ev.hb.progressed(now)

    def done(self, i: int, value: Any) -> None:
        self._record(i, value, False)

    def done_many(self, indexes: list[int], values: list[Any]) -> None:
        if not indexes:
            return
        fresh = set(indexes)
        if len(fresh) != len(indexes) or not fresh.isdisjoint(self._settled) or not fresh.issubset(self._pending_set):
            return super().done_many(indexes, values)  # duplicates or settled ones: one by one
        now = time.monotonic()
        wall = (now - self._mark) / len(indexes)
        self._mark = now
        self._call.extend((i, v, False, wall) for i, v in zip(indexes, values))
        self._settled.update(fresh)

    def failed(self, i: int, error: BaseException) -> None:
        self._record(i, error, True)

    def flush(self) -> None:
        if self._call:
            cpu = _cpu(self.ev.family)
            self._send(cpu - self._cpu_mark)
            self._cpu_mark, self._flushed = cpu, True

    def _record(self, i: int, outcome: Any, is_error: bool) -> None:
        if i in self._settled or i not in self._pending_set:
            if not (type(i) is int and 0 <= i < len(self.numbers)):  # a bug of the engine's, not a repeat
                raise IndexError(f"block.{'failed' if is_error else 'done'}({i!r}): this block's slices are "
                                 f"0..{len(self.numbers) - 1} (indexes into block.datums, not slice numbers)")
            return  # settled already: the first outcome stands
        now = time.monotonic()
        self._call.append((i, outcome, is_error, now - self._mark))
        self._mark = now
        self._settled.add(i)

    def execute(self) -> None:
        ev = self.ev
        while True:
            pending = self.pending()
            if not pending:
                return
            if self.cancelled:
                for i in pending:
                    ev.out.send({"t": "err", "i": i, "e": {"code": "ECANCELLED", "message": "cancelled"}})
                return
            now = time.monotonic()
            # The whole family's clock, as the supervisor's CPU watchdog reads it (V8's Deno is a
            # child): one reading per call, shared among the call's slices by wall time.
            self._cpu_mark = _cpu(ev.family)
            self._mark, self._flushed = now, False
            ev.hb.start(pending[0], now, self._cpu_mark, span=len(pending))
            try:
                ev.worktime.execute_block(self)
            except BaseException as e:  # noqa: BLE001 - the engine failed as a whole: the slice it was on
                left = [i for i in pending if i not in self._settled and not any(c[0] == i for c in self._call)]
                if left:
                    self._record(left[0], e, True)
            made_progress = bool(self._call) or self._flushed
            self._send(_cpu(ev.family) - self._cpu_mark)
            if not made_progress:
                raise RuntimeError(f"{type(ev.worktime).__name__}.execute_block returned without settling a slice")

    def _send(self, cpu: float) -> None:
        calls, self._call = self._call, []
        wall_total = sum(c[3] for c in calls) or 1.0
        ev, limits = self.ev, self.limits
        if not ev.cancel.is_set() and not any(e.loud for e in self._events.values()):
            # The usual case (no slice logged anything but progress): pack every result in one go.
            out = self._pack_quiet(calls, cpu / wall_total)
            if out is not None:
                for i in out[0]:
                    self._events.pop(i, None)
                ev.out.results_many(*out)
                return
        for i, outcome, is_error, wall in calls:
            share = cpu * wall / wall_total
            events = self._events.pop(i, None) or _QUIET
            if is_error:
                ev.settle_error(i, outcome, events, wall, share)
            else:
                ev.settle(i, outcome, events, limits, wall, share)

    def _pack_quiet(self, calls: list[tuple], cpu_per_wall: float) -> tuple[list, list, list, list] | None:
        """Indexes, packed values, walls and CPU times of ``calls``, or ``None`` if any of them
        needs the slow path (an error, a result that cannot be packed or is over the limit)."""
        pack_value = self.ev.pack
        limit = self.limits.output
        indexes, values, walls = [], [], []
        try:
            for i, outcome, is_error, wall in calls:
                if is_error:
                    return None
                v = pack_value(outcome)
                if limit is not None and len(v) > limit:
                    return None
                indexes.append(i)
                values.append(v)
                walls.append(wall)
        except Exception:  # noqa: BLE001 - the slow path says which slice and why
            return None
        return indexes, values, walls, [w * cpu_per_wall for w in walls]


class _Quiet:
    """The events of a slice that logged nothing."""

    pending = None
    over = False
    sent = 0

    def flush_console(self) -> None:
        pass


_QUIET: Any = _Quiet()


def split_packed(packed: bytes) -> list[bytes]:
    """The raw msgpack bytes of each item of a packed array, without decoding any of them."""
    import msgpack

    u = msgpack.Unpacker(max_buffer_size=max(len(packed), 1 << 20))
    u.feed(packed)
    n = u.read_array_header()
    out = []
    start = u.tell()
    for _ in range(n):
        u.skip()
        end = u.tell()
        out.append(packed[start:end])
        start = end
    return out


#: ``DCP_WORKTIMES_LOCKDOWN=0`` turns the seccomp/Landlock layer off (to tell whether it is what
#: breaks a new engine); the evaluator reports it as not applied.
ENV_LOCKDOWN = "DCP_WORKTIMES_LOCKDOWN"


def _lock_down(worktime: Worktime) -> dict:
    import tempfile

    from ..cache import cache_root
    from . import lockdown

    if os.environ.get(ENV_LOCKDOWN, "1").strip().lower() in ("0", "off", "false", "no"):
        off = {"applied": False, "reason": f"turned off by {ENV_LOCKDOWN}=0"}
        return {"seccomp": off, "landlock": off}
    if (worktime.config or {}).get("trusted"):
        off = {"applied": False, "reason": "the worker's owner trusts this worktime's work (--trust-work)"}
        return {"seccomp": off, "landlock": off}
    area = isolation.private_area()
    # Where a worktime may write: its private tmpfs, the compile caches; with no private area,
    # the temporary folders its files then live in.
    writable = [area, str(cache_root())] if area else [tempfile.gettempdir(), "/dev/shm", str(cache_root())]
    # Read on the instance: a worktime may decide in prepare (map-basic spawns Deno for V8 only).
    return lockdown.apply(network=bool(worktime.network), spawns=bool(worktime.spawns), writable=writable)


def _rss(family: bool = False) -> int:
    """Resident bytes of this process, plus its live children's when ``family``."""
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    if family:
        rss += sum(_children(lambda p: p.memory_info().rss, fresh=True))
    return rss


def _cpu(family: bool) -> float:
    """CPU seconds of this process and its exited children, plus its live children's when
    ``family``: what the watchdog counts, so each slice is measured from here."""
    t = os.times()
    used = time.process_time() + t.children_user + t.children_system
    if family:
        used += sum(_children(lambda p: sum(p.cpu_times()[:2])))
    return used


def _has_children() -> bool:
    """Whether this process has child processes now (none is reaped: WNOWAIT)."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return True
    except ChildProcessError:
        return False


#: Seconds the list of child processes is reused before it is read again. Listing them scans all
#: of /proc (~2 ms); a block measures its CPU on every call, so the list is kept for a moment (a
#: child started since, such as V8's Deno after a stop, counts from the next refresh on).
FAMILY_REFRESH = 0.5
_family: tuple[float, list] = (float("-inf"), [])


def _children(measure: Callable[[Any], float], fresh: bool = False) -> list[float]:
    import psutil  # only for worktimes with child processes: the others never pay its import

    global _family
    now = time.monotonic()
    listed, family = _family
    if fresh or now - listed > FAMILY_REFRESH:
        try:
            family = psutil.Process().children(recursive=True)
        except (psutil.Error, OSError):  # /proc out of reach (Landlock): the supervisor measures them
            pass
        _family = now, family
    values = []
    for child in family:
        try:
            values.append(measure(child))
        except psutil.Error:  # it ended while we looked
            pass
    return values


def _load_class(ref: str) -> type[Worktime]:
    module, _, qual = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def serve(worktime_cls: type[Worktime] | str, heartbeat_fd: int, parent: int, network: bool) -> None:
    """Be an evaluator on fds 0/1/2 until told to exit (after a plain start or a zygote's fork)."""
    allow_depth()  # a datum or result MAX_DEPTH deep is walked in Python (map-basic's to_js, json)
    allow_big_ints()  # and big ints are written as JSON text (wasi's json content type)
    iso: dict = isolation.apply(network=network, parent_pid=parent)
    # Made now, before any job: a spare evaluator has it ready, and the supervisor learns the
    # host folder to remove once the process is gone.
    iso["area"] = isolation.private_area()
    iso["lockdown"] = "seccomp and Landlock follow the first prepare (reported in its 'prepared' frame)"
    frames_fd = os.dup(1)
    os.dup2(2, 1)  # stray writes to stdout land in stderr, never in the frame stream
    sys.stdout = sys.stderr
    out = FrameWriter(frames_fd)
    hb = Heartbeat(heartbeat_fd)
    try:
        cls = _load_class(worktime_cls) if isinstance(worktime_cls, str) else worktime_cls
        worktime = cls()
    except Exception as e:
        err = host_failure(e, f"cannot start worktime {getattr(worktime_cls, '__name__', worktime_cls)}",
                           code=ErrorCode.ECRASH)
        out.send({"t": "fatal", "error": err.to_dict()})
        return
    ev = Evaluator(worktime, out, hb)
    threading.Thread(target=ev.reader, args=(0,), daemon=True).start()
    threading.Thread(target=out.flusher, daemon=True).start()
    out.send({"t": "ready", "isolation": iso, "pid": os.getpid(), "rss": _rss()})
    ev.serve()
    try:
        worktime.release()
    finally:
        out.flush()
        if ev.family or _has_children():  # what its engine started, detached or not, ends with it
            isolation.end_descendants()  # (a no-op where Landlock hides /proc's list: its children are sealed in)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--worktime", required=True, help="module:Class of the worktime")
    ap.add_argument("--heartbeat-fd", type=int, required=True)
    ap.add_argument("--parent", type=int, required=True)
    ap.add_argument("--network", action="store_true")
    args = ap.parse_args(argv)
    serve(args.worktime, args.heartbeat_fd, args.parent, args.network)


if __name__ == "__main__":
    main()
    # Engines may leave non-daemon threads behind; the frame stream is flushed, so leave now.
    os._exit(0)
