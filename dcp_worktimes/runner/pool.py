"""The evaluator pool: slices run in sandboxed child processes, under limits, in parallel.

::

    from dcp_worktimes.runner import EvaluatorPool
    from dcp_worktimes.worktime import JobSpec

    job = JobSpec(id="j1", worktime="echo", work="")
    with EvaluatorPool(cores=2) as pool:
        for outcome in pool.map(job, enumerate([1, 2, 3])):
            print(outcome.number, outcome.value if outcome.ok else outcome.error)

Each core gets a *slot*: a driver thread and, at any time, at most one evaluator process, spawned
for one job and reused for up to ``max_slices_per_evaluator`` slices of that job (a new job always
gets a fresh process: jobs of different deployers never share one). Slots take slices in
adaptive batches (one frame for many trivial slices, one slice at a time for slow ones).

One watchdog thread enforces every slice's ``Limits`` from outside the evaluator by reading its
shared-memory heartbeat and ``psutil``: wall time (``ESLICETOOSLOW``), the no-progress timeout
(``ENOPROGRESS``), CPU time (``ECPULIMIT``) and resident memory above the evaluator's footprint
after ``prepare`` (``EMEMORYLIMIT``). A violating evaluator's process group is killed; the
violating slice gets the code, the other unfinished slices of its batch are queued again, and the
slot spawns a fresh evaluator. An evaluator that dies by itself fails its slice with ``ECRASH``.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

import psutil

from ..errors import ErrorCode, SliceError
from ..limits import Limits, check_cores, exceeded, format_size
from ..plugins import get_worktime
from ..values import UnserializableValue, pack, unpack
from ..worktime import JobSpec
from .process import START_TIMEOUT, EvaluatorDied, EvaluatorProcess, Zygote, zygotes_enabled

log = logging.getLogger(__name__)

EventCallback = Callable[[str, int, Any], None]
OutcomeCallback = Callable[["SliceOutcome"], None]

#: Slices of one job an evaluator runs before it is replaced (DCP: 200, for browser sandboxes;
#: ours are processes whose memory the watchdog bounds, so reuse is cheap and safe for longer).
DEFAULT_MAX_SLICES = 10_000
#: Maximum time ``prepare`` may take (a first compile of a big WebAssembly module takes minutes).
DEFAULT_PREPARE_TIMEOUT = 900.0
#: How often the watchdog looks at each running slice.
WATCHDOG_INTERVAL = 0.02
#: A slice whose evaluator died under it while running *another* slice is re-run at most this often.
MAX_LOST = 3
#: Seconds a cancelled slice gets to notice ``ctx.cancelled`` before its evaluator is killed.
CANCEL_GRACE = 0.5
#: Jobs remembered as cancelled/unusable (a long-running worker must not grow without bound).
MEMORY_OF_JOBS = 1000


@dataclass(slots=True)
class SliceOutcome:
    """What became of one slice. ``value`` decodes ``value_bytes`` (msgpack) on first access."""

    job_id: str
    number: int
    ok: bool
    value_bytes: bytes | None = None
    error: SliceError | None = None
    wall_time: float = 0.0
    cpu_time: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0

    @property
    def value(self) -> Any:
        if not self.ok:
            raise self.error  # type: ignore[misc]
        return unpack(self.value_bytes)  # type: ignore[arg-type]


@dataclass(eq=False, slots=True)
class _Task:
    job: JobSpec
    number: int
    datum: bytes
    on_outcome: OutcomeCallback
    on_event: EventCallback | None
    lost: int = 0


@dataclass(eq=False)
class _Slot:
    index: int
    proc: EvaluatorProcess | None = None
    psproc: psutil.Process | None = None
    batch: list[_Task] = field(default_factory=list)
    limits: Limits | None = None
    grace: float = 0.0
    memory_slack: float = 0.0
    busy: bool = False
    preparing_since: float | None = None
    cancel_at: float | None = None
    batch_size: int = 1
    family: list = field(default_factory=list)  # the evaluator's child processes (engines may spawn)
    ticks: int = 0


class EvaluatorPool:
    """A pool of sandboxed evaluators (``cores`` of them, default: one per CPU)."""

    def __init__(
        self,
        cores: int | None = None,
        *,
        max_slices_per_evaluator: int = DEFAULT_MAX_SLICES,
        prepare_timeout: float = DEFAULT_PREPARE_TIMEOUT,
        max_batch: int = 256,
        start_timeout: float = START_TIMEOUT,
        env: dict[str, str] | None = None,
        config: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        check_cores(cores)
        #: The worker owner's settings per worktime name (``Worktime.config`` in the evaluators).
        self.config = {name: dict(c) for name, c in (config or {}).items()}
        self.cores = cores or os.cpu_count() or 1
        self.max_slices = max_slices_per_evaluator
        self.prepare_timeout = prepare_timeout
        self.max_batch = max_batch
        self.start_timeout = start_timeout
        self.env = env
        self._lock = threading.Condition()
        self._queues: "collections.OrderedDict[str, collections.deque[_Task]]" = collections.OrderedDict()
        self._queued = 0
        self._bad_jobs: "collections.OrderedDict[str, SliceError]" = collections.OrderedDict()
        self._cancelled: "collections.OrderedDict[str, None]" = collections.OrderedDict()
        self._closed = False
        self._slots = [_Slot(i) for i in range(self.cores)]
        self._zygotes: dict[str, Zygote | None] = {}
        self._zygote_lock = threading.Lock()
        self._threads = [threading.Thread(target=self._slot_loop, args=(s,), daemon=True, name=f"dcp-slot-{s.index}")
                         for s in self._slots]
        for t in self._threads:
            t.start()
        self._watchdog = threading.Thread(target=self._watch, daemon=True, name="dcp-watchdog")
        self._watchdog.start()

    # -- public API -----------------------------------------------------------------------------
    def submit(
        self,
        job: JobSpec,
        items: Iterable[tuple[int, Any]],
        on_outcome: OutcomeCallback,
        on_event: EventCallback | None = None,
        *,
        packed: bool = False,
    ) -> int:
        """Queue slices ``(number, datum)`` of ``job``; callbacks run on pool threads. Returns the count.

        With ``packed=True`` the datums are already msgpack bytes (as a scheduler stores them).
        """
        get_worktime(job.worktime)  # unknown worktime: ENOWORKTIME now, not in every slice
        tasks = [_Task(job, n, d if packed else pack(d), on_outcome, on_event) for n, d in items]
        with self._lock:
            if self._closed:
                raise RuntimeError("the evaluator pool is closed")
            self._cancelled.pop(job.id, None)
            self._queues.setdefault(job.id, collections.deque()).extend(tasks)
            self._queued += len(tasks)
            self._lock.notify_all()
        return len(tasks)

    def map(self, job: JobSpec, items: Iterable[tuple[int, Any]], on_event: EventCallback | None = None,
            *, packed: bool = False) -> Iterator[SliceOutcome]:
        """Run slices and yield their outcomes in completion order."""
        results: "queue.SimpleQueue[SliceOutcome]" = queue.SimpleQueue()
        count = self.submit(job, items, results.put, on_event, packed=packed)
        for _ in range(count):
            yield results.get()

    def cancel(self, job_id: str) -> None:
        """Drop the job's queued slices (they complete with ``ECANCELLED``) and stop its running ones."""
        with self._lock:
            _remember(self._cancelled, job_id, None)
            dropped = self._queues.pop(job_id, collections.deque())
            self._queued -= len(dropped)
            running = [s for s in self._slots if s.busy and s.batch and s.batch[0].job.id == job_id]
        for task in dropped:
            self._deliver(task, ok=False, error=SliceError("the job was cancelled", code=ErrorCode.ECANCELLED))
        for slot in running:
            proc = slot.proc
            if proc is not None:
                slot.cancel_at = time.monotonic()  # the watchdog kills it if it ignores the request
                try:
                    proc.send({"op": "cancel"})
                except EvaluatorDied:
                    pass

    def close(self) -> None:
        """Stop: queued slices complete with ``ECANCELLED``, running ones are killed, processes end."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            dropped = [t for q in self._queues.values() for t in q]
            self._queues.clear()
            self._queued = 0
            self._lock.notify_all()
        shutdown = SliceError("the worker shut down before the slice finished", code=ErrorCode.ECANCELLED)
        for task in dropped:
            self._deliver(task, ok=False, error=shutdown)
        for slot in self._slots:
            proc = slot.proc
            if slot.busy and proc is not None:
                proc.kill(shutdown)
        for t in self._threads:
            t.join(10)
        for slot in self._slots:
            self._retire(slot, wait=True)
        with self._zygote_lock:
            zygotes, self._zygotes = list(self._zygotes.values()), {}
        for z in zygotes:
            if z is not None:
                z.close()

    def __enter__(self) -> "EvaluatorPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- slots ----------------------------------------------------------------------------------
    def _take(self, slot: _Slot) -> list[_Task] | None:
        with self._lock:
            while not self._queued and not self._closed:
                self._lock.wait()
            if self._closed:
                return None
            current = slot.proc.job_id if slot.proc is not None else None
            job_id = current if current in self._queues and self._queues[current] else None
            if job_id is None:
                job_id = next(k for k, q in self._queues.items() if q)
            q = self._queues[job_id]
            share = math.ceil(self._queued / self.cores)
            n = max(1, min(slot.batch_size, share, len(q)))
            batch = [q.popleft() for _ in range(n)]
            if not q:
                del self._queues[job_id]
            self._queued -= n
            return batch

    def _requeue(self, tasks: list[_Task]) -> None:
        with self._lock:
            q = self._queues.setdefault(tasks[0].job.id, collections.deque())
            q.extendleft(reversed(tasks))
            self._queues.move_to_end(tasks[0].job.id, last=False)
            self._queued += len(tasks)
            self._lock.notify_all()

    def _slot_loop(self, slot: _Slot) -> None:
        while True:
            batch = self._take(slot)
            if batch is None:
                return
            try:
                self._run_batch(slot, batch)
            except Exception as e:  # a bug here must not lose slices silently
                log.exception("evaluator slot %d failed", slot.index)
                for task in batch:
                    self._deliver(task, ok=False, error=SliceError(f"internal error in the worker: {e}", code=ErrorCode.ECRASH))
                self._retire(slot)

    def _ensure(self, slot: _Slot, job: JobSpec) -> EvaluatorProcess:
        proc = slot.proc
        if proc is not None and proc.job_id == job.id and proc.slices_run < self.max_slices and proc.alive():
            return proc
        self._retire(slot)
        reg = get_worktime(job.worktime)
        proc = EvaluatorProcess(reg.ref, network=reg.cls.network, env=self.env, zygote=self._zygote(reg.ref),
                                start_timeout=self.start_timeout)
        slot.proc, slot.psproc = proc, psutil.Process(proc.pid)
        slot.preparing_since = time.monotonic()  # the watchdog bounds prepare by prepare_timeout
        try:
            try:
                proc.send({"op": "prepare", "job": job.to_dict(), "config": self.config.get(job.worktime, {})})
            except UnserializableValue as e:
                self._retire(slot)
                raise _JobUnusable(SliceError(f"the job cannot be sent to an evaluator: {e}", code=ErrorCode.EBADWORK))
            msg = next(m for m in proc.frames() if m.get("t") in ("prepared", "prepare_error"))
        finally:
            slot.preparing_since = None
        if msg["t"] == "prepare_error":
            self._retire(slot)
            raise _JobUnusable(SliceError.from_dict(msg["error"]))
        proc.baseline_rss = int(msg.get("rss") or 0)
        proc.job_id = job.id
        enforces = reg.cls.enforces
        slot.grace = 0.5 if "wall_time" in enforces else 0.0
        # An engine that meters its own heap reports EMEMORYLIMIT precisely; the process guard then
        # only catches what the engine cannot see, so it gets headroom for the engine's overhead.
        slot.memory_slack = 0.25 if "memory" in enforces else 0.0
        return proc

    def _zygote(self, ref: str) -> Zygote | None:
        """The worktime's zygote, started on first use; ``None`` (plain start) if disabled or broken."""
        if not zygotes_enabled():
            return None
        with self._zygote_lock:
            if self._closed:
                raise EvaluatorDied(SliceError("the evaluator pool is closed", code=ErrorCode.ECANCELLED), None)
            z = self._zygotes.get(ref)
            if z is not None and not z.alive():
                del self._zygotes[ref]
                z.close()
            if ref not in self._zygotes:
                try:
                    self._zygotes[ref] = Zygote(ref, env=self.env)
                except (OSError, RuntimeError) as e:
                    log.warning("starting evaluators without a zygote for %s: %s", ref, e)
                    self._zygotes[ref] = None
            return self._zygotes[ref]

    def _retire(self, slot: _Slot, wait: bool = False) -> None:
        proc, slot.proc, slot.psproc = slot.proc, None, None
        if proc is None:
            return
        if wait:
            proc.close()
        else:  # let it finish its release() while this slot already starts the next evaluator
            threading.Thread(target=proc.close, daemon=True, name="dcp-retire").start()

    def _run_batch(self, slot: _Slot, batch: list[_Task]) -> None:
        job = batch[0].job
        bad = self._bad_jobs.get(job.id)
        if bad is None and job.id in self._cancelled:
            bad = SliceError("the job was cancelled", code=ErrorCode.ECANCELLED)
        if bad is None:
            try:
                proc = self._ensure(slot, job)
            except _JobUnusable as e:
                bad = e.error
                if not bad.worker_fault:  # a fault of this machine may be mended; the work's stays
                    _remember(self._bad_jobs, job.id, bad)
            except EvaluatorDied as e:
                # An evaluator that cannot start or prepare for this job will not do better on
                # the next batch: fail the job's slices at once instead of retrying each.
                bad = e.reason or SliceError("the evaluator failed to start", code=ErrorCode.ECRASH)
                if not self._closed:
                    _remember(self._bad_jobs, job.id, bad)
                self._retire(slot)
        if bad is not None:
            for task in batch:
                self._deliver(task, ok=False, error=bad)
            return

        started = time.monotonic()
        slot.batch, slot.limits, slot.cancel_at, slot.busy = batch, job.limits, None, True
        done: set[int] = set()
        try:
            proc.send({"op": "run", "items": [[t.number, t.datum] for t in batch]})
            for msg in proc.frames():
                kind = msg.get("t")
                if kind == "rs":
                    for i, v, wall, cpu in msg["r"]:
                        done.add(i)
                        self._deliver(batch[i], True, value=v, wall=wall, cpu=cpu)
                elif kind == "ok" or kind == "err":
                    i = msg["i"]
                    done.add(i)
                    task = batch[i]
                    if kind == "ok":
                        v = msg["v"]
                        self._deliver(task, True, value=v, wall=msg.get("wall", 0.0), cpu=msg.get("cpu", 0.0))
                    else:
                        self._deliver(task, False, error=SliceError.from_dict(msg["e"]),
                                      wall=msg.get("wall", 0.0), cpu=msg.get("cpu", 0.0))
                elif kind == "ev":
                    task = batch[msg["i"]]
                    if task.on_event is not None:
                        try:
                            task.on_event(msg["k"], task.number, msg["p"])
                        except Exception:
                            log.exception("event callback failed")
                elif kind == "done":
                    break
            proc.slices_run += len(batch)
        except EvaluatorDied as died:
            self._post_mortem(slot, proc, batch, done, died)
        finally:
            slot.busy = False
        elapsed = time.monotonic() - started
        # Adaptive batching: aim for batches of ~10-50 ms so frames are few and watchdog verdicts exact.
        if elapsed < 0.01:
            slot.batch_size = min(slot.batch_size * 2, self.max_batch)
        elif elapsed > 0.05:
            slot.batch_size = max(1, slot.batch_size // 2)

    def _post_mortem(self, slot: _Slot, proc: EvaluatorProcess, batch: list[_Task], done: set[int],
                     died: EvaluatorDied) -> None:
        running, started, _, _ = proc.heartbeat.last_words()
        index = running if died.index is None else died.index
        reason = died.reason or SliceError("the evaluator died", code=ErrorCode.ECRASH)
        self._retire(slot)
        slot.batch_size = 1
        again: list[_Task] = []
        for i, task in enumerate(batch):
            if i in done:
                continue
            if i == index:
                self._deliver(task, False, error=reason, wall=time.monotonic() - started if started else 0.0)
            else:
                task.lost += 1
                if task.lost >= MAX_LOST:
                    self._deliver(task, False, error=SliceError(
                        f"the evaluator died {task.lost} times while this slice was queued in it; last: {reason.message}",
                        code=ErrorCode.ECRASH))
                else:
                    again.append(task)
        if again and not self._closed:
            self._requeue(again)
        elif again:
            for task in again:
                self._deliver(task, False, error=reason)

    def _deliver(self, task: _Task, ok: bool, value: bytes | None = None, error: SliceError | None = None,
                 wall: float = 0.0, cpu: float = 0.0) -> None:
        outcome = SliceOutcome(task.job.id, task.number, ok, value, error, wall, cpu, len(task.datum),
                               len(value) if value is not None else 0)
        try:
            task.on_outcome(outcome)
        except Exception:
            log.exception("outcome callback failed")

    # -- watchdog -------------------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._closed:
            time.sleep(WATCHDOG_INTERVAL)
            now = time.monotonic()
            for slot in self._slots:
                try:
                    self._check(slot, now)
                except (psutil.Error, OSError, ValueError):
                    continue  # the process just ended; its driver thread handles that
                except Exception:  # a bug here must never silently stop limit enforcement
                    log.exception("watchdog check failed")

    def _check(self, slot: _Slot, now: float) -> None:
        proc = slot.proc
        if proc is None:
            return
        if slot.preparing_since is not None and now - slot.preparing_since > self.prepare_timeout:
            proc.kill(SliceError(f"preparing the job took longer than {self.prepare_timeout:.0f}s", code=ErrorCode.EBADWORK))
            return
        if not slot.busy or slot.limits is None:
            return
        if slot.cancel_at is not None and now - slot.cancel_at > CANCEL_GRACE:
            proc.kill(SliceError("the slice was cancelled (and did not stop by itself)", code=ErrorCode.ECANCELLED))
            return
        beat = proc.heartbeat.read()
        if beat is None:  # the evaluator is mid-write: look again next tick
            return
        index, started, last_progress, cpu_start = beat
        if index < 0:
            return
        lim = slot.limits
        if lim.wall_time is not None and now - started > lim.wall_time + slot.grace:
            proc.kill(exceeded("wall_time", lim.wall_time), index)
            return
        if lim.progress_timeout is not None and now - max(started, last_progress) > lim.progress_timeout:
            proc.kill(exceeded("progress_timeout", lim.progress_timeout), index)
            return
        ps = slot.psproc
        if ps is None:
            return
        slot.ticks += 1
        if slot.ticks % 10 == 1:  # listing children scans /proc: not on every tick
            slot.family = ps.children(recursive=True)
        if lim.memory is not None:
            rss = ps.memory_info().rss + _sum(p.memory_info().rss for p in slot.family)
            allowed = proc.baseline_rss + lim.memory * (1 + slot.memory_slack)
            if rss > allowed:
                proc.kill(exceeded("memory", lim.memory, used=rss - proc.baseline_rss, what="resident memory",
                                   detail=f"on top of the worktime's own {format_size(proc.baseline_rss, like=lim.memory)}"),
                          index)
                return
        if lim.cpu_time is not None:
            t = ps.cpu_times()
            used = t.user + t.system + t.children_user + t.children_system - cpu_start
            used += _sum(sum(p.cpu_times()[:2]) for p in slot.family)
            if used > lim.cpu_time + slot.grace:
                proc.kill(exceeded("cpu_time", lim.cpu_time, used=used), index)


def _sum(values: Iterable[float]) -> float:
    """Sum over processes that may vanish while we look."""
    total = 0.0
    try:
        for v in values:
            total += v
    except psutil.Error:
        pass
    return total


def _remember(memory: "collections.OrderedDict[str, Any]", key: str, value: Any) -> None:
    memory[key] = value
    memory.move_to_end(key)
    while len(memory) > MEMORY_OF_JOBS:
        memory.popitem(last=False)


class _JobUnusable(Exception):
    def __init__(self, error: SliceError) -> None:
        super().__init__(error.message)
        self.error = error


def run_slice(job: JobSpec, datum: Any, on_event: EventCallback | None = None, *,
              env: dict[str, str] | None = None, config: Mapping[str, Any] | None = None) -> SliceOutcome:
    """Run one slice in a fresh sandboxed evaluator and return its outcome (used by ``dcp-worker slice``).

    ``config``: the worker settings of the job's worktime (``Worktime.config``)."""
    with EvaluatorPool(cores=1, env=env, config={job.worktime: config or {}}) as pool:
        return next(pool.map(job, [(0, datum)], on_event))


__all__ = ["EvaluatorPool", "SliceOutcome", "run_slice"]
