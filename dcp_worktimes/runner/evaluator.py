"""The evaluator: the sandboxed child process that runs slices (``python -m dcp_worktimes.runner.evaluator``).

It isolates itself, instantiates one worktime, then serves msgpack frames on stdin/stdout:

======================================  =====================================================
supervisor → evaluator                  evaluator → supervisor
======================================  =====================================================
``{op: prepare, job, config}``          ``{t: prepared, rss}`` / ``{t: prepare_error, error}``
``{op: run, items: [[n, datum], ...]}`` per slice ``{t: ok, i, v, wall, cpu}`` or ``{t: err, i, e, ...}``,
                                        events ``{t: ev, i, k, p}``, then ``{t: done}``
``{op: cancel}``                        (remaining slices of the batch answer ``ECANCELLED``)
======================================  =====================================================

Datums and results cross as msgpack bytes (``dcp_worktimes.values``), so the host can store them
without decoding. File descriptor 1 is re-pointed at stderr before any work runs: a guest that
writes to stdout at C level cannot corrupt the frame stream.
"""

from __future__ import annotations

import argparse
import importlib
import os
import queue
import sys
import threading
import time
import traceback
from typing import Any, Callable

from ..errors import ErrorCode, SliceError, WorkError
from ..limits import Limits, exceeded
from ..values import UnserializableValue, pack, packer, unpack, unpacker
from ..worktime import JobSpec, SliceContext, Worktime
from . import isolation
from .heartbeat import Heartbeat

FLUSH_AFTER = 0.005  # seconds a finished result may wait in the buffer before it is written


class FrameWriter:
    """Buffered, thread-safe frame output. Results are batched; everything else is written soon."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()
        self.results: list[list] = []  # finished slices, sent together as one "rs" frame
        self.first = 0.0
        self.pending_bytes = 0
        self.lock = threading.Lock()
        self.packer = packer()
        self.tick: Callable[[], None] | None = None  # called by the flusher thread every cycle

    def send(self, frame: dict) -> None:
        data = self.packer.pack(frame)
        with self.lock:
            self._pack_results()
            self.buf += data
            self._flush()

    def result(self, item: list, size: int) -> None:
        """Queue a finished slice ``[index, value_bytes, wall, cpu]``; written within FLUSH_AFTER."""
        with self.lock:
            if not self.results:
                self.first = time.monotonic()
            self.results.append(item)
            self.pending_bytes += size
            if self.pending_bytes > 65536:
                self._pack_results()
                self._flush()

    def flush_if_stale(self) -> None:
        with self.lock:
            if self.results and time.monotonic() - self.first > FLUSH_AFTER:
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
        if self.results:
            self.buf += self.packer.pack({"t": "rs", "r": self.results})
            self.results = []
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

    __slots__ = ("out", "index", "cap", "sent", "over", "pending", "since", "lock")

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
        self.pending: dict | None = None
        self.since = 0.0
        return self

    def __call__(self, kind: str, payload: Any) -> None:
        if self.over:
            return
        if kind == "emit":
            try:
                pack(payload["value"])
            except UnserializableValue as e:
                raise ValueError(f"work.emit({payload['name']!r}, value): {e}") from None
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
        out.tick = self._events.flush_stale

    def pack(self, value: Any) -> bytes:
        # Same rules as values.pack, with one reusable Packer (the main thread's own).
        try:
            return self._packer.pack(value)
        except UnserializableValue:
            self._packer = packer()  # a failed pack may leave the packer's buffer dirty
            raise
        except (TypeError, ValueError, OverflowError) as e:
            self._packer = packer()
            raise UnserializableValue(f"value cannot cross the sandbox boundary: {e}") from None

    def reader(self, fd: int) -> None:
        unp = unpacker()
        while True:
            data = os.read(fd, 1 << 16)
            if not data:
                self.inbox.put(None)
                return
            unp.feed(data)
            for msg in unp:
                if msg.get("op") == "cancel":
                    self.cancel.set()
                else:
                    self.inbox.put(msg)

    def serve(self) -> None:
        while True:
            msg = self.inbox.get()
            if msg is None or msg.get("op") == "exit":
                return
            op = msg.get("op")
            if op == "prepare":
                self.prepare(msg["job"], msg.get("config") or {})
            elif op == "run":
                self.cancel.clear()
                self.run(msg["items"])
                self.out.send({"t": "done"})

    def prepare(self, job_dict: dict, config: dict) -> None:
        try:
            if self.job is not None:
                self.worktime.release()
            self.job = JobSpec.from_dict(job_dict)
            self.worktime.config = config
            type(self.worktime).validate(self.job)
            self.worktime.prepare(self.job)
        except WorkError as e:
            # ENOWORKTIME from prepare: this machine lacks something (a runtime, a model), nothing
            # is wrong with the work: the worker gives the slices back instead of failing the job.
            fault = e.code == ErrorCode.ENOWORKTIME
            self.out.send({"t": "prepare_error", "error": SliceError(e.message, code=e.code, worker_fault=fault).to_dict()})
            return
        except OSError as e:  # the worker's disk, cache or engine install, not the work
            err = SliceError(f"the worker could not prepare the job: {type(e).__name__}: {e}", code=ErrorCode.ENOWORKTIME,
                             worker_fault=True)
            self.out.send({"t": "prepare_error", "error": err.to_dict()})
            return
        except Exception as e:
            err = SliceError(f"{type(e).__name__}: {e}", code=ErrorCode.EBADWORK, stack=traceback.format_exc())
            self.out.send({"t": "prepare_error", "error": err.to_dict()})
            return
        self.out.send({"t": "prepared", "rss": _rss()})

    def run(self, items: list) -> None:
        job = self.job
        assert job is not None, "run before prepare"
        limits = job.limits
        for index, (number, datum_bytes) in enumerate(items):
            if self.cancel.is_set():
                self.out.send({"t": "err", "i": index, "e": {"code": "ECANCELLED", "message": "cancelled"}})
                continue
            self.one(index, number, datum_bytes, limits)
        self.hb.idle()

    def one(self, index: int, number: int, datum_bytes: bytes, limits: Limits) -> None:
        events = self._events.reset(self.out, index, limits.output)
        hb = self.hb
        now = time.monotonic()
        cpu0 = time.process_time()
        hb.start(index, now, cpu0)
        ctx = SliceContext(number, limits, self.job, sink=events, heartbeat=self._beat, cancel_event=self.cancel)
        frame: dict
        try:
            result = self.worktime.execute(ctx, unpack(datum_bytes))
            if self.cancel.is_set():  # whatever a cancelled slice returns is not its result
                raise SliceError("the slice was cancelled", code=ErrorCode.ECANCELLED)
            value = self.pack(result)
            if limits.output is not None and len(value) > limits.output:
                raise exceeded("output", limits.output, used=len(value))
            if events.pending is not None:
                events.flush_console()  # first: the last line counts against the limit too
            if events.over:
                raise exceeded("output", limits.output, used=events.sent, what="console/emit traffic")
            self.out.result([index, value, time.monotonic() - now, time.process_time() - cpu0], len(value))
            return
        except SliceError as e:
            frame = {"t": "err", "i": index, "e": e.to_dict()}
        except UnserializableValue as e:
            frame = {"t": "err", "i": index, "e": {"code": "EUNSERIALIZABLE", "message": str(e)}}
        except MemoryError:
            frame = {"t": "err", "i": index, "e": exceeded("memory", limits.memory, what="memory in the worktime").to_dict()}
        except RecursionError as e:
            frame = {"t": "err", "i": index, "e": {"code": "EUNCAUGHT", "message": f"RecursionError: {e}"}}
        except Exception as e:
            frame = {"t": "err", "i": index, "e": {
                "code": "EUNCAUGHT", "message": f"{type(e).__name__}: {e}", "stack": traceback.format_exc()}}
        events.flush_console()
        frame["wall"] = time.monotonic() - now
        frame["cpu"] = time.process_time() - cpu0
        self.out.send(frame)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _load_class(ref: str) -> type[Worktime]:
    module, _, qual = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def serve(worktime_cls: type[Worktime] | str, heartbeat_fd: int, parent: int, network: bool) -> None:
    """Be an evaluator on fds 0/1/2 until told to exit (after a plain start or a zygote's fork)."""
    iso = isolation.apply(network=network, parent_pid=parent)
    frames_fd = os.dup(1)
    os.dup2(2, 1)  # stray writes to stdout land in stderr, never in the frame stream
    sys.stdout = sys.stderr
    out = FrameWriter(frames_fd)
    hb = Heartbeat(heartbeat_fd)
    try:
        cls = _load_class(worktime_cls) if isinstance(worktime_cls, str) else worktime_cls
        worktime = cls()
    except Exception as e:
        err = SliceError(f"cannot start worktime {worktime_cls}: {type(e).__name__}: {e}", code=ErrorCode.ECRASH,
                         stack=traceback.format_exc())
        out.send({"t": "fatal", "error": err.to_dict()})
        return
    ev = Evaluator(worktime, out, hb)
    threading.Thread(target=ev.reader, args=(0,), daemon=True).start()
    threading.Thread(target=out.flusher, daemon=True).start()
    out.send({"t": "ready", "isolation": iso, "pid": os.getpid()})
    ev.serve()
    try:
        worktime.release()
    finally:
        out.flush()


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
