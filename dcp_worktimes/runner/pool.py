"""The evaluator pool: slices run in sandboxed child processes, under limits, in parallel.

::

    from dcp_worktimes.runner import EvaluatorPool
    from dcp_worktimes.worktime import JobSpec

    job = JobSpec(id="j1", worktime="echo", work="")
    with EvaluatorPool(cores=2) as pool:
        for outcome in pool.map(job, enumerate([1, 2, 3])):                # one slice at a time
            print(outcome.number, outcome.value if outcome.ok else outcome.error)
        pool.submit(job, [0, 1, 2], [1, 2, 3], on_outcome=print)           # a block: Outcome columns

Work arrives in **blocks** (``submit``: a lease's slice numbers and datums), and outcomes leave
as blocks (``Outcome``: columns of numbers, ok flags, packed values, errors, times), so a million
trivial slices cost a few thousand frames and callbacks, not a million.

Each core gets a *slot*: a driver thread and, at any time, at most one evaluator process, spawned
for one job and reused for up to ``max_slices_per_evaluator`` slices of that job but at least
``min_evaluator_life`` seconds (a new job always gets a fresh process: jobs of different
deployers never share one). Slots cut the queued blocks
into runs of adaptive size (~10-50 ms each: many trivial slices per frame, one at a time for slow
ones), so CPU-bound jobs still spread over every evaluator.

A slot prepares its evaluator for a job before it takes any of the job's slices, so slots that
are ready run them meanwhile. A job's first evaluator starts at once, on a slot whose spare
(an evaluator started ahead, when the previous job ended) is up; each further one only when the
job outlasts a prepare. A small job is then done by one evaluator, and the other slots keep their
spares for the next job instead of using them up (``_join``).

One watchdog thread enforces every slice's ``Limits`` from outside the evaluator by reading its
shared-memory heartbeat and ``psutil``: wall time (``ESLICETOOSLOW``), the no-progress timeout
(``ENOPROGRESS``), CPU time (``ECPULIMIT``) and resident memory above the evaluator's footprint
after ``prepare`` (``EMEMORYLIMIT``). A violating evaluator's process group is killed; the
violating slice gets the code, the other unfinished slices of its batch are queued again, and the
slot spawns a fresh evaluator. An evaluator that dies by itself fails its slice with ``ECRASH``.

Time that was not the work's does not count against it: while an evaluator (or a process it
started) is stopped (``SIGSTOP``, a debugger) the watchdog gives no wall-time or no-progress
verdict on it, and such a verdict on a run during which it was stopped, or this whole process was
(a watchdog tick a second late while the process used no CPU: a frozen container, the worker
stopped), runs the slice again instead (at most ``MAX_LOST`` times).
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
from ..recent import Recent
from ..values import UnserializableValue, pack, pack_all, pack_checked, unpack
from ..worktime import JobSpec, Worktime
from . import isolation
from .process import START_TIMEOUT, EvaluatorDied, EvaluatorProcess, Zygote, zygotes_enabled

log = logging.getLogger(__name__)

EventCallback = Callable[[str, int, Any], None]
OutcomeCallback = Callable[["Outcome"], None]

#: Slices of one job an evaluator runs before it is replaced (DCP: 200, for browser sandboxes;
#: ours are processes whose memory the watchdog bounds, so reuse is cheap and safe for longer).
DEFAULT_MAX_SLICES = 10_000
#: Seconds an evaluator lives at least before its slice count retires it: a job of trivial slices
#: would otherwise start a new evaluator (and engine: a Deno process on V8, ~60 ms of CPU) every
#: fraction of a second.
DEFAULT_MIN_LIFE = 10.0
#: Maximum time ``prepare`` may take where the job's limits do not bound it: a job without a
#: wall-time limit, or a worktime that bounds the work's part of ``prepare`` itself and whose own
#: one-time set-up (the python runtime's first compile, ~2 min) belongs to the worker.
DEFAULT_PREPARE_TIMEOUT = 900.0
#: How often the watchdog looks at each running slice.
WATCHDOG_INTERVAL = 0.02
#: A watchdog tick this late means this process was not running (stopped, frozen): a pause.
PAUSE_GAP = 1.0
#: Limits measured in elapsed time: a pause or a stopped evaluator can exceed them for the work.
_ELAPSED_LIMITS = ("wall_time", "progress_timeout")
#: Seconds an evaluator may stay stopped past its slice's wall-time or no-progress limit while
#: this process runs (so not a paused machine): then the verdict is given. Work could SIGSTOP
#: itself and hold its core for ever, unjudged.
STOPPED_GRACE = 10.0
#: A slice whose evaluator died under it while running *another* slice is re-run at most this often.
MAX_LOST = 3
#: Seconds a cancelled slice gets to notice ``ctx.cancelled`` before its evaluator is killed.
CANCEL_GRACE = 0.5
#: Jobs remembered as cancelled/unusable (a long-running worker must not grow without bound).
MEMORY_OF_JOBS = 1000
#: Seconds a spare evaluator (``_Spare``) waits for a job before it exits: an idle worker must not
#: hold an engine process per core forever.
SPARE_IDLE = 300.0
#: A job's first prepare time guess, before this pool has measured any for its worktime.
FIRST_PREPARE_GUESS = 0.05
#: How often a slot waiting to join a job looks again (its queue, its other evaluators' pace).
JOIN_POLL = 0.002
#: The longest a slot with no ready spare leaves a job to an idle slot that has one.
DEFER_AT_MOST = 0.05
#: A worktime whose prepare takes longer starts all of a job's evaluators at once (_join).
QUICK_PREPARE = 0.25


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


@dataclass(slots=True)
class Outcome:
    """What became of some slices of one submitted block, as columns (``numbers[i]`` ↔ ...).

    ``values[i]`` is the msgpack of slice ``numbers[i]``'s result when ``oks[i]``; ``errors[i]``
    its ``SliceError`` otherwise. ``tag`` is what the submitter passed with the block.
    """

    job_id: str
    tag: Any
    numbers: list[int]
    oks: list[bool]
    values: list[bytes | None]
    errors: list[SliceError | None]
    walls: list[float]
    cpus: list[float]
    bytes_in: list[int]
    bytes_out: list[int]

    def __len__(self) -> int:
        return len(self.numbers)

    def slices(self) -> Iterator[SliceOutcome]:
        """The same outcomes one slice at a time."""
        for i, n in enumerate(self.numbers):
            yield SliceOutcome(self.job_id, n, self.oks[i], self.values[i], self.errors[i], self.walls[i], self.cpus[i],
                               self.bytes_in[i], self.bytes_out[i])

    @classmethod
    def failure(cls, job_id: str, tag: Any, numbers: list[int], error: SliceError, wall: float = 0.0,
                bytes_in: list[int] | None = None) -> "Outcome":
        k = len(numbers)
        return cls(job_id, tag, list(numbers), [False] * k, [None] * k, [error] * k, [wall] * k, [0.0] * k,
                   bytes_in or [0] * k, [0] * k)


@dataclass(eq=False, slots=True)
class _Task:
    """A block of slices of one job, queued or running."""

    job: JobSpec
    numbers: list[int]
    datums: list[Any]
    on_outcome: OutcomeCallback
    on_event: EventCallback | None
    tag: Any
    lost: list[int] | None = None  # per slice: times its evaluator died while it waited in a run
    settled: set[int] | None = None  # indexes with an outcome delivered (while running)

    def __len__(self) -> int:
        return len(self.numbers)

    def cut(self, k: int) -> "_Task":
        """The first ``k`` slices as a task of their own (this task keeps the rest)."""
        head = _Task(self.job, self.numbers[:k], self.datums[:k], self.on_outcome, self.on_event, self.tag,
                     self.lost[:k] if self.lost is not None else None)
        del self.numbers[:k], self.datums[:k]
        if self.lost is not None:
            del self.lost[:k]
        return head

    def part(self, indexes: list[int]) -> "_Task":
        lost = [self.lost[i] if self.lost is not None else 0 for i in indexes]
        return _Task(self.job, [self.numbers[i] for i in indexes], [self.datums[i] for i in indexes], self.on_outcome,
                     self.on_event, self.tag, lost)


@dataclass(eq=False)
class _Slot:
    index: int
    proc: EvaluatorProcess | None = None
    psproc: psutil.Process | None = None
    task: _Task | None = None
    limits: Limits | None = None
    grace: float = 0.0
    patience_grace: float = 0.0
    memory_slack: float = 0.0
    busy: bool = False
    preparing_since: float | None = None
    #: Seconds this slot's evaluator could not run (it or this process stopped): only the
    #: watchdog adds to it. ``stopped_mark``: its value as the current prepare began (only the
    #: slot's thread sets it), so a prepare's budget leaves that time out without a shared reset.
    stopped_time: float = 0.0
    stopped_mark: float = 0.0
    preparing: Limits | None = None  # the job's limits bound its prepare (None: only prepare_timeout)
    cancel_at: float | None = None
    batch_size: int = 1
    family: list = field(default_factory=list)  # the evaluator's child processes (engines may spawn)
    ticks: int = 0
    stops: int = 0  # watchdog ticks that found the evaluator or a child of it stopped
    stopped_over: float | None = None  # when the watchdog first found it stopped past a limit (this run)
    looked: float = 0.0  # the watchdog's last look at this slot (monotonic)
    job: JobSpec | None = None  # the job its evaluator serves
    spare: "_Spare | None" = None  # an evaluator started ahead for the next job
    #: Why the evaluator the slot prepared before taking any slice failed (job id, error): the
    #: job's next run here fails with it instead of starting another evaluator.
    prepare_error: "tuple[str, SliceError] | None" = None
    joining: str | None = None  # the job the slot is starting an evaluator for (_join)
    considering: str | None = None  # the job whose _join the slot's thread is in
    joined_at: float = 0.0  # when it began starting that evaluator
    ready_at: float = 0.0  # when its evaluator was prepared for its job
    #: Guards swapping ``proc``/``job``/``spare``: ``release`` (a deployer's thread) retires an idle
    #: slot's evaluator while the slot's own thread may be replacing it for the next job.
    #: Re-entrant: ``_retire`` takes it whether or not its caller holds it.
    lock: threading.RLock = field(default_factory=threading.RLock)
    #: The slot's thread holds an evaluator from ``_ensure`` for its current run (``busy`` and the
    #: prepare before it): ``release`` leaves such a slot alone.
    claimed: bool = False


class _Spare:
    """An evaluator started ahead of a job it does not know yet: forked, isolated and ready (~5 ms
    a job would otherwise wait for, ~2 MB of private memory while it waits), and, for a worktime
    with ``Worktime.standby``, with what that worktime starts for every job (a V8 process). It
    runs no work: it is sent a *hint* (the previous job's options and limits, never its work,
    arguments or data) and then the real job's ``prepare`` as any fresh evaluator would."""

    def __init__(self, pool: "EvaluatorPool", ref: str, network: bool, previous: JobSpec, standby: bool) -> None:
        self.ref = ref
        self.since = time.monotonic()
        self._lock = threading.Lock()
        self._proc: EvaluatorProcess | None = None
        self._closed = False
        self._ready = threading.Event()
        hint = JobSpec(id="", worktime=previous.worktime, options=dict(previous.options), limits=previous.limits)
        config = pool.config.get(previous.worktime, {})
        threading.Thread(target=self._start, args=(pool, network, hint if standby else None, config), daemon=True,
                         name="dcp-spare").start()

    def _start(self, pool: "EvaluatorPool", network: bool, hint: JobSpec | None, config: dict) -> None:
        try:
            proc = EvaluatorProcess(self.ref, network=network, env=pool.env, zygote=pool._zygote(self.ref),
                                    start_timeout=pool.start_timeout)
            if hint is not None:
                proc.send({"op": "standby", "hint": hint.to_dict(), "config": config})
        except (EvaluatorDied, OSError, RuntimeError, UnserializableValue) as e:
            log.debug("no spare evaluator for %s: %s", self.ref, e)
            proc = None
        with self._lock:
            if self._closed and proc is not None:
                threading.Thread(target=proc.close, daemon=True, name="dcp-retire").start()
            else:
                self._proc = proc
        self._ready.set()

    def take(self, ref: str) -> EvaluatorProcess | None:
        """The spare's evaluator for a job of worktime ``ref`` (``None``: none usable; closed)."""
        self._ready.wait()
        with self._lock:
            proc, self._proc, self._closed = self._proc, None, True
        if proc is not None and (proc.zygote is None or proc.zygote.alive()) and ref == self.ref and proc.alive():
            return proc
        if proc is not None:
            threading.Thread(target=proc.close, daemon=True, name="dcp-retire").start()
        return None

    def close(self, wait: bool = False) -> None:
        """Close its evaluator (``wait``: before returning, as the pool's own close does, so that
        its zygote, closed next, reaps it and removes its folder)."""
        with self._lock:
            proc, self._proc, self._closed = self._proc, None, True
        if proc is None:
            return
        if wait:
            proc.close()
        else:
            threading.Thread(target=proc.close, daemon=True, name="dcp-retire").start()


class EvaluatorPool:
    """A pool of sandboxed evaluators (``cores`` of them, default: one per CPU)."""

    def __init__(
        self,
        cores: int | None = None,
        *,
        max_slices_per_evaluator: int = DEFAULT_MAX_SLICES,
        min_evaluator_life: float = DEFAULT_MIN_LIFE,
        prepare_timeout: float = DEFAULT_PREPARE_TIMEOUT,
        # Runs double while one takes under 10 ms (trivial slices) up to this: at 256 the ~0.3 ms
        # between an evaluator's runs left it idle ~10 % of the time (1M trivial QuickJS slices end
        # to end: 225-228k/s at 256, 240-260k/s at 1024, interleaved runs).
        max_batch: int = 1024,
        start_timeout: float = START_TIMEOUT,
        env: dict[str, str] | None = None,
        config: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        check_cores(cores)
        #: The worker owner's settings per worktime name (``Worktime.config`` in the evaluators).
        self.config = {name: dict(c) for name, c in (config or {}).items()}
        self.cores = cores or os.cpu_count() or 1
        self.max_slices = max_slices_per_evaluator
        self.min_life = min_evaluator_life
        self.prepare_timeout = prepare_timeout
        self.max_batch = max_batch
        self.start_timeout = start_timeout
        self.env = env
        self._lock = threading.Condition()
        self._queues: "collections.OrderedDict[str, collections.deque[_Task]]" = collections.OrderedDict()
        self._queued = 0
        self._bad_jobs: Recent[str, SliceError] = Recent(MEMORY_OF_JOBS)
        self._cancelled: Recent[str, None] = Recent(MEMORY_OF_JOBS)
        self._decodable: Recent[str, None] = Recent(MEMORY_OF_JOBS)  # jobs whose spec decodes again (pack_checked)
        self._released: Recent[str, None] = Recent(MEMORY_OF_JOBS)  # jobs over here (release)
        self._pace: Recent[str, float] = Recent(MEMORY_OF_JOBS)  # a job's last run's seconds per slice
        self._prepare_time: dict[str, float] = {}  # per worktime name: recent prepare seconds (moving average)
        self._closed = False
        self._pauses = 0  # watchdog ticks PAUSE_GAP late: this whole process was stopped meanwhile
        self._ticked = time.monotonic()  # the watchdog's last tick, and this process's CPU time then
        self._ticked_cpu = time.process_time()
        self._slots = [_Slot(i) for i in range(self.cores)]
        self._zygotes: dict[str, Zygote | None] = {}
        self._zygote_lock = threading.Lock()
        self._threads = [threading.Thread(target=self._slot_loop, args=(s,), daemon=True, name=f"dcp-slot-{s.index}")
                         for s in self._slots]
        for t in self._threads:
            t.start()
        self._watchdog = threading.Thread(target=self._watch, daemon=True, name="dcp-watchdog")
        self._watchdog.start()
        self._releases: "queue.SimpleQueue[str | None]" = queue.SimpleQueue()
        threading.Thread(target=self._release_loop, daemon=True, name="dcp-release").start()

    def _release_loop(self) -> None:
        # Mount-point folders of evaluators whose supervisor was killed (each pool removes its own).
        isolation.sweep_dead_areas()
        while (job_id := self._releases.get()) is not None:
            try:
                self._retire_idle(job_id)
            except Exception:  # noqa: BLE001 - a spare that cannot start is only a slower next job
                log.exception("releasing the evaluators of job %s failed", job_id)

    # -- public API -----------------------------------------------------------------------------
    def submit(
        self,
        job: JobSpec,
        numbers: list[int],
        datums: list[Any],
        on_outcome: OutcomeCallback,
        on_event: EventCallback | None = None,
        *,
        tag: Any = None,
    ) -> int:
        """Queue a block of slices of ``job``; ``on_outcome(Outcome)`` and ``on_event(kind, number,
        payload)`` run on pool threads (an outcome may cover part of the block). Returns the count."""
        get_worktime(job.worktime)  # unknown worktime: ENOWORKTIME now, not in every slice
        if len(numbers) != len(datums):
            raise ValueError(f"submit: {len(numbers)} slice numbers but {len(datums)} datums")
        if not numbers:
            return 0
        task = _Task(job, list(numbers), list(datums), on_outcome, on_event, tag)
        with self._lock:
            if self._closed:
                raise RuntimeError("the evaluator pool is closed")
            self._cancelled.pop(job.id, None)
            self._released.pop(job.id, None)
            self._queues.setdefault(job.id, collections.deque()).append(task)
            self._queued += len(task)
            self._lock.notify_all()
        return len(task)

    def map(self, job: JobSpec, items: Iterable[tuple[int, Any]], on_event: EventCallback | None = None
            ) -> Iterator[SliceOutcome]:
        """Run slices ``(number, datum)`` and yield their outcomes one by one, in completion order."""
        items = list(items)
        results: "queue.SimpleQueue[Outcome]" = queue.SimpleQueue()
        count = self.submit(job, [n for n, _d in items], [d for _n, d in items], results.put, on_event)
        while count > 0:
            outcome = results.get()
            count -= len(outcome)
            yield from outcome.slices()

    def cancel(self, job_id: str) -> None:
        """Drop the job's queued slices (they complete with ``ECANCELLED``) and stop its running ones."""
        with self._lock:
            self._cancelled[job_id] = None
            dropped = self._queues.pop(job_id, collections.deque())
            self._queued -= sum(len(t) for t in dropped)
            running = [s for s in self._slots if s.busy and s.task is not None and s.task.job.id == job_id]
        for task in dropped:
            self._fail(task, SliceError("the job was cancelled", code=ErrorCode.ECANCELLED))
        for slot in running:
            proc = slot.proc
            if proc is not None:
                slot.cancel_at = time.monotonic()  # the watchdog kills it if it ignores the request
                try:
                    proc.send({"op": "cancel"})
                except EvaluatorDied:
                    pass

    def drop(self, job_id: str, tags: set[Any]) -> None:
        """Drop the queued slices of the blocks of ``job_id`` submitted with one of ``tags`` (they
        complete with ``ECANCELLED``); running ones go on. A worker whose lease was lost (reclaimed
        and handed to another) must not run what is left of it: its results would be thrown away."""
        with self._lock:
            queued = self._queues.get(job_id)
            if not queued:
                return
            dropped = [t for t in queued if t.tag in tags]
            if not dropped:
                return
            self._queues[job_id] = collections.deque(t for t in queued if t.tag not in tags)
            self._queued -= sum(len(t) for t in dropped)
        for task in dropped:
            self._fail(task, SliceError("the slice's lease was lost (it runs elsewhere)", code=ErrorCode.ECANCELLED))

    def unstarted(self, tags: Iterable[Any]) -> dict[Any, list[int]]:
        """The slice numbers of blocks submitted with one of ``tags`` that no evaluator has been
        given yet, by tag (tags with none are left out). A slice that was part of a run, even
        one that ended before reaching it, is not among them: it may have started.

        A worker sends them with its heartbeat, so that a lease that expires because the worker
        died charges an attempt only to the slices that may have run::

            pool.unstarted({"lease-1"})   # {"lease-1": [7, 8, 9]}
        """
        wanted = set(tags)
        out: dict[Any, list[int]] = {}
        with self._lock:
            for queue_ in self._queues.values():
                for task in queue_:
                    if task.tag in wanted and task.lost is None:
                        out.setdefault(task.tag, []).extend(task.numbers)
        return out

    def release(self, job_id: str, wait: bool = True) -> None:
        """The job is over here: its idle evaluators exit now (a warm pool must not keep a finished
        job's state in memory until its slots are needed), and spares start for the next job.
        ``wait=False`` leaves that to the pool's own thread: a deployer about to return its
        results does not wait for threads to start (~1 ms each while evaluators start)."""
        with self._lock:
            # A slot still preparing an evaluator for the job (one that took none of its slices),
            # or running one of its slices now, retires its evaluator when it is done with it.
            self._released[job_id] = None
        if wait:
            self._retire_idle(job_id)
        else:
            self._releases.put(job_id)

    def _retire_idle(self, job_id: str) -> None:
        """Retire the released job's idle evaluators and start spares in their slots, unless the
        job is live again (slices submitted since its release)."""
        with self._lock:
            if job_id not in self._released:
                return
            idle = [(slot, slot.proc) for slot in self._slots
                    if not slot.claimed and slot.proc is not None and slot.proc.job_id == job_id]
        for slot, proc in idle:
            with slot.lock:
                if slot.proc is not proc or slot.claimed:  # its thread is using it, or replaced it
                    continue
                job = slot.job
                self._retire(slot)
                if job is not None:
                    self._stand_by(slot, job)

    def close(self) -> None:
        """Stop: queued slices complete with ``ECANCELLED``, running ones are killed, processes end."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._releases.put(None)
            dropped = [t for q in self._queues.values() for t in q]
            self._queues.clear()
            self._queued = 0
            self._lock.notify_all()
        shutdown = SliceError("the worker shut down before the slice finished", code=ErrorCode.ECANCELLED)
        for task in dropped:
            self._fail(task, shutdown)
        for slot in self._slots:
            proc = slot.proc
            if slot.busy and proc is not None:
                proc.kill(shutdown)
        for t in self._threads:
            t.join(10)
        for slot in self._slots:
            self._retire(slot, wait=True)
            spare, slot.spare = slot.spare, None
            if spare is not None:
                if spare._ready.wait(5.0):  # one still starting closes itself when it is up
                    spare.close(wait=True)
                else:
                    spare.close()
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
    def _next_job(self, slot: _Slot) -> JobSpec | None:
        """The job this slot serves next: the one its evaluator already serves while that has queued
        slices, else the first with any (``None``: the pool closed). Waits for queued slices."""
        with self._lock:
            while not self._queued and not self._closed:
                self._lock.wait()
            if self._closed:
                return None
            current = slot.proc.job_id if slot.proc is not None else None
            job_id = current if current in self._queues and self._queues[current] else None
            if job_id is None:
                job_id = next(k for k, q in self._queues.items() if q)
            return self._queues[job_id][0].job

    def _take(self, slot: _Slot, job_id: str) -> _Task | None:
        """The slot's next run of ``job_id``: up to its batch size of the job's queued slices,
        leaving a fair share for the other slots (``None``: none queued now)."""
        with self._lock:
            q = self._queues.get(job_id)
            if not q:
                return None
            share = math.ceil(self._queued / self.cores)
            head = q[0]
            n = max(1, min(slot.batch_size, share, len(head)))
            if head.lost is not None and head.lost[0] > 0:
                n = 1  # a suspect of a run that died unexplained: alone, so a second death is exact
            task = head.cut(n) if n < len(head) else q.popleft()
            if not q:
                del self._queues[job_id]
            self._queued -= len(task)
            return task

    def _requeue(self, task: _Task) -> None:
        with self._lock:
            q = self._queues.setdefault(task.job.id, collections.deque())
            q.appendleft(task)
            self._queues.move_to_end(task.job.id, last=False)
            self._queued += len(task)
            self._lock.notify_all()

    def _slot_loop(self, slot: _Slot) -> None:
        while True:
            job = self._next_job(slot)
            if job is None:
                return
            if not self._serves(slot, job) and job.id not in self._bad_jobs and job.id not in self._cancelled:
                try:
                    if not self._join(slot, job):
                        continue  # the job's other evaluators ran its queue: keep the spare for the next job
                    # Prepare an evaluator before taking any slice: the slots whose evaluators are
                    # ready run the job's slices meanwhile, instead of some waiting in this slot
                    # for the slowest start.
                    _proc, bad = self._evaluator_for(slot, job)
                    slot.prepare_error = (job.id, bad) if bad is not None else None
                except Exception:  # a bug here must not end the slot's thread: the run below retries
                    log.exception("evaluator slot %d failed to prepare for job %s", slot.index, job.id)
                finally:
                    slot.joining = None
            task = self._take(slot, job.id)
            if task is not None:
                try:
                    self._run(slot, task)
                except Exception as e:  # a bug here must not lose slices silently
                    log.exception("evaluator slot %d failed", slot.index)
                    self._fail(task, SliceError(f"internal error in the worker: {e}", code=ErrorCode.ECRASH),
                               only_unsettled=True)
                    self._retire(slot)
            slot.claimed = False
            # Released while this slot prepared for it or ran its last slices: retire its evaluator
            # now (release() leaves a slot in use alone).
            self._retire_idle(job.id)

    def _join(self, slot: _Slot, job: JobSpec) -> bool:
        """Whether this slot should start an evaluator for ``job`` (then marked ``joining``), or
        leave the job to the evaluators it has (``False``: its queue ran out meanwhile).

        Every job gets fresh evaluators, and each one uses up a spare (a fork, a sandbox, an
        engine start: ~10 ms of CPU, ~50 ms for V8) that the next job then waits for. A small job
        is done by its first evaluator before a second could be prepared, so a second would only
        cost the next job its spare. The first evaluator starts at once, on a slot whose spare is
        up if one is idle. Each further one starts when the job outlasts a prepare: once its
        first evaluator has run it for as long as a prepare takes without emptying its queue, or
        sooner when its queued slices at its measured pace, spread over its evaluators, would
        take longer than that. A worktime whose prepare is slow (a model or scene to load) starts
        them all at once, as a slow prepare is no small job's cost."""
        ref = get_worktime(job.worktime).ref
        prepare = self._prepare_time.get(job.worktime, FIRST_PREPARE_GUESS)
        waited_since = time.monotonic()
        with self._lock:
            slot.considering = job.id
            try:
                while True:
                    if self._closed:
                        return False
                    q = self._queues.get(job.id)
                    if not q:
                        return False
                    now = time.monotonic()
                    helpers = self._others_on(slot, job.id)
                    if not helpers:
                        # Another idle slot whose spare is up starts it (one considering another
                        # job is not idle), unless that takes too long.
                        if (self._spare_up(slot, ref) or now - waited_since >= DEFER_AT_MOST or not any(
                                s is not slot and s.joining is None and not s.busy and s.preparing_since is None
                                and s.considering in (None, job.id) and self._spare_up(s, ref) for s in self._slots)):
                            break
                    elif prepare > QUICK_PREPARE:
                        break
                    else:
                        ready = [s.ready_at for s in helpers if s.joining is None]
                        first_ready = min(ready) if ready else min(s.joined_at for s in helpers) + prepare
                        if now >= first_ready + prepare:
                            break
                        pace = self._pace.get(job.id)
                        if pace is not None and sum(len(t) for t in q) * pace > prepare * len(helpers):
                            break
                    self._lock.wait(JOIN_POLL)
                slot.joining, slot.joined_at = job.id, time.monotonic()
                return True
            finally:
                slot.considering = None

    def _others_on(self, slot: _Slot, job_id: str) -> list[_Slot]:
        """The other slots serving the job or starting an evaluator for it (caller holds the lock)."""
        return [s for s in self._slots if s is not slot and (
            s.joining == job_id or (s.proc is not None and s.proc.job_id == job_id))]

    @staticmethod
    def _spare_up(slot: _Slot, ref: str) -> bool:
        """Whether the slot has a spare for worktime ``ref`` whose process is up."""
        spare = slot.spare
        return spare is not None and spare.ref == ref and spare._ready.is_set()

    def _serves(self, slot: _Slot, job: JobSpec) -> bool:
        """Whether the slot's evaluator is prepared for ``job`` and may run more of its slices."""
        proc = slot.proc
        return proc is not None and proc.job_id == job.id and proc.alive() and (
            proc.slices_run < self.max_slices or time.monotonic() - proc.started < self.min_life)

    def _evaluator_for(self, slot: _Slot, job: JobSpec) -> tuple[EvaluatorProcess | None, SliceError | None]:
        """The slot's evaluator prepared for ``job`` (``_ensure``), or why there is none."""
        try:
            return self._ensure(slot, job), None
        except _JobUnusable as e:
            bad = e.error
            if not bad.worker_fault:  # a fault of this machine may be mended; the work's stays
                self._bad_jobs[job.id] = bad
        except EvaluatorDied as e:
            # An evaluator that cannot start or prepare for this job will not do better on
            # the next run: fail the job's slices at once instead of retrying each.
            bad = e.reason or SliceError("the evaluator failed to start", code=ErrorCode.ECRASH)
            if not self._closed:
                self._bad_jobs[job.id] = bad
            self._retire(slot)
        return None, bad

    def _ensure(self, slot: _Slot, job: JobSpec) -> EvaluatorProcess:
        proc = slot.proc
        if self._serves(slot, job):
            with slot.lock:
                if slot.proc is proc:  # else release() retired it just now: start another below
                    slot.claimed = True
                    return proc
        reg = get_worktime(job.worktime)
        with slot.lock:
            self._retire(slot)
            spare, slot.spare = slot.spare, None
        proc = spare.take(reg.ref) if spare is not None else None
        if proc is None:
            proc = EvaluatorProcess(reg.ref, network=reg.cls.network, env=self.env, zygote=self._zygote(reg.ref),
                                    start_timeout=self.start_timeout)
        with slot.lock:
            slot.proc, slot.psproc, slot.job = proc, psutil.Process(proc.pid), job
            slot.family, slot.ticks = [], 0  # listed at the watchdog's first look, unless sealed
        # Compiling the work is the job's: the watchdog bounds prepare by the job's wall time and
        # memory, unless the worktime bounds the work's part itself ("prepare" in enforces).
        slot.preparing = None if "prepare" in reg.cls.enforces else job.limits
        slot.memory_slack = 0.25 if "memory" in reg.cls.enforces else 0.0
        slot.stopped_mark = slot.stopped_time
        slot.preparing_since = began = time.monotonic()
        try:
            try:
                job_dict = job.to_dict()
                if job.id not in self._decodable:  # once per job: its work may be megabytes
                    pack_checked(job_dict)  # a frame the evaluator cannot decode would leave it waiting
                    self._decodable[job.id] = None
                proc.send({"op": "prepare", "job": job_dict, "config": self.config.get(job.worktime, {})})
            except UnserializableValue as e:
                self._retire(slot)
                raise _JobUnusable(SliceError(f"the job cannot be sent to an evaluator: {e}", code=ErrorCode.EBADWORK))
            msg = next(m for m in proc.frames() if m.get("t") in ("prepared", "prepare_error"))
        finally:
            slot.preparing_since = slot.preparing = None
        if msg["t"] == "prepare_error":
            self._retire(slot)
            raise _JobUnusable(SliceError.from_dict(msg["error"]))
        proc.baseline_rss = int(msg.get("rss") or 0)
        proc.lockdown = msg.get("lockdown") or {}  # seccomp/Landlock, applied after this first prepare
        proc.sealed = not msg.get("children", True) and proc.cannot_spawn()
        slot.ready_at = now = time.monotonic()
        last = self._prepare_time.get(job.worktime)
        self._prepare_time[job.worktime] = now - began if last is None else 0.7 * last + 0.3 * (now - began)
        with slot.lock:
            proc.job_id = job.id
            slot.claimed = True
        enforces = reg.cls.enforces
        slot.grace = 0.5 if "wall_time" in enforces else 0.0
        # The same for the no-progress limit: an engine that judges it itself (V8 hears of progress
        # at most every 50 ms, and its verdict takes a stop) must get there first, or the host's
        # kill of a block-running evaluator, which cannot name the slice, ran it a second time.
        slot.patience_grace = 0.5 if "progress_timeout" in enforces else 0.0
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

    def _stand_by(self, slot: _Slot, job: JobSpec) -> None:
        """Start a spare evaluator for the slot's next job; a job like ``job`` is the likely next
        (its worktime's ``standby`` starts what such a job needs: map-basic's V8 process). Every
        job gets new evaluators, so this takes the fork and the sandbox's set-up out of the next
        job's start. The caller holds ``slot.lock``."""
        if self._closed:
            return
        reg = get_worktime(job.worktime)
        old, slot.spare = slot.spare, _Spare(self, reg.ref, reg.cls.network, job, reg.cls.standby is not Worktime.standby)
        if old is not None:
            old.close()

    def _retire(self, slot: _Slot, wait: bool = False) -> None:
        """Detach the slot's evaluator and close it."""
        with slot.lock:
            proc, slot.proc, slot.psproc, slot.job = slot.proc, None, None, None
        if proc is None:
            return
        if wait:
            proc.close()
        else:  # let it finish its release() while this slot already starts the next evaluator
            threading.Thread(target=proc.close, daemon=True, name="dcp-retire").start()

    def _run(self, slot: _Slot, task: _Task) -> None:
        job = task.job
        bad = self._bad_jobs.get(job.id)
        if bad is None and job.id in self._cancelled:
            bad = SliceError("the job was cancelled", code=ErrorCode.ECANCELLED)
        early, slot.prepare_error = slot.prepare_error, None
        if bad is None and early is not None and early[0] == job.id:
            bad = early[1]
        if bad is None:
            proc, bad = self._evaluator_for(slot, job)
        if bad is None and job.id in self._cancelled:  # cancelled while its evaluator was preparing
            bad = SliceError("the job was cancelled", code=ErrorCode.ECANCELLED)
        if bad is not None:
            self._fail(task, bad)
            return
        try:
            blob = pack_all(task.datums)
        except UnserializableValue:
            # Only the slices whose datums cannot be sent fail; the rest of the block runs.
            task = self._fail_unsendable(task)
            if not len(task):
                return
            blob = pack_all(task.datums)
        # Datums travel as one packed array: each slice's bytes in are its share of it (the
        # array's header, 1, 3 or 5 bytes by msgpack's rules, is no slice's).
        k = len(task)
        q, r = divmod(len(blob) - (1 if k < 16 else 3 if k < 65536 else 5), k)
        sizes = [q + 1] * r + [q] * (k - r)
        started = time.monotonic()
        slot.task, slot.limits, slot.cancel_at, slot.stopped_over, slot.busy = task, job.limits, None, None, True
        task.settled = set() if task.settled is None else task.settled
        numbers = task.numbers
        paused = (self._pauses, slot.stops)  # changed by the end of the run: it was stopped meanwhile
        again: list[int] = []  # slices whose limit verdict the pause excuses: run again
        try:
            proc.send({"op": "run", "n": numbers, "d": blob})
            for msg in proc.frames():
                kind = msg.get("t")
                if kind == "rs":
                    idx = msg["i"]
                    task.settled.update(idx)
                    values = msg["v"]
                    k = len(idx)
                    # A run's results come in order: one slice per column when the indexes are a
                    # range (compared in C), per-item lookups only otherwise.
                    if (k and 0 <= idx[0] and idx[-1] < len(numbers) and idx[-1] - idx[0] == k - 1
                            and idx == list(range(idx[0], idx[0] + k))):
                        ns, ins = numbers[idx[0]:idx[0] + k], sizes[idx[0]:idx[0] + k]
                    else:
                        ns, ins = [numbers[i] for i in idx], [sizes[i] for i in idx]
                    self._deliver(task, Outcome(job.id, task.tag, ns, [True] * k, values, [None] * k, msg["w"], msg["c"],
                                                ins, list(map(len, values))))
                elif kind == "err":
                    i = msg["i"]
                    task.settled.add(i)
                    error = SliceError.from_dict(msg["e"])
                    if self._excused(error, slot, paused, task, i):
                        again.append(i)
                        continue
                    self._deliver(task, Outcome(job.id, task.tag, [numbers[i]], [False], [None], [error],
                                                [msg.get("wall", 0.0)], [msg.get("cpu", 0.0)], [sizes[i]], [0]))
                elif kind == "ev":
                    if task.on_event is not None:
                        try:
                            task.on_event(msg["k"], numbers[msg["i"]], msg["p"])
                        except Exception:
                            log.exception("event callback failed")
                elif kind == "stop":  # the engine cannot stop its guest: end the process (Worktime.stop_process)
                    if msg["i"] not in task.settled:  # a slice that finished meanwhile keeps its outcome
                        proc.kill(SliceError.from_dict(msg["e"]), msg["i"])
                elif kind == "done":
                    break
            proc.slices_run += k
            if proc.killed:  # a verdict came, and every slice answered before the kill took effect
                self._retire(slot)
        except EvaluatorDied as died:
            self._post_mortem(slot, proc, task, died, paused)
        finally:
            slot.busy = False
            if again:  # settled, so no other path delivers them: whatever ended the run
                self._again(task, again)
        elapsed = time.monotonic() - started
        self._pace[job.id] = elapsed / k
        # Adaptive runs: aim for ~10-50 ms per run, so frames are few for trivial slices and slow
        # slices still spread over every evaluator.
        if elapsed < 0.01:
            slot.batch_size = min(slot.batch_size * 2, self.max_batch)
        elif elapsed > 0.05:
            slot.batch_size = max(1, slot.batch_size // 2)

    def _post_mortem(self, slot: _Slot, proc: EvaluatorProcess, task: _Task, died: EvaluatorDied,
                     paused: tuple[int, int]) -> None:
        """The evaluator died during a run: the slice it was running gets the verdict; the others
        not settled yet are run again (a bounded number of times). An engine running a block per
        call (``span`` > 1) cannot say which slice it was on: then none is blamed, and the rest run
        again one at a time, where the next death is exact. A wall-time or no-progress verdict
        that a pause excuses (``paused``: see ``_excused``) blames none either."""
        running, started, _, _, span = proc.heartbeat.last_words()
        index = died.index if died.index is not None else (running if span == 1 else -1)
        reason = died.reason or SliceError("the evaluator died", code=ErrorCode.ECRASH)
        excused = index >= 0 and self._excused(reason, slot, paused, task, index)
        # It died on its own (a crash, os._exit): the processes its engine detached went to init
        # before anyone could list them from it; the watchdog's last list still names them
        # (psutil's kill checks that a pid was not reused since).
        family, slot.family = slot.family, []
        isolation.kill_all(family)
        self._retire(slot)
        slot.batch_size = 1
        settled = task.settled or set()
        again: list[int] = []
        gave_up: list[int] = []
        lost = task.lost if task.lost is not None else [0] * len(task)
        for i in range(len(task)):
            if i in settled:
                continue
            if i == index and excused:  # _excused counted its runs: once more, whatever the others' fate
                lost[i] += 1
                again.append(i)
                continue
            if i == index:
                self._deliver(task, Outcome.failure(task.job.id, task.tag, [task.numbers[i]], reason,
                                                    wall=time.monotonic() - started if started else 0.0))
                continue
            lost[i] += 1
            (gave_up if lost[i] >= MAX_LOST else again).append(i)
        task.lost = lost
        if gave_up:
            self._fail(task.part(gave_up), SliceError(
                f"the evaluator died {MAX_LOST} times while this slice was waiting in its run; last: {reason.message}",
                code=ErrorCode.ECRASH))
        if again and not self._closed:
            self._requeue(task.part(again))
        elif again:
            self._fail(task.part(again), reason)

    def _excused(self, error: SliceError, slot: _Slot, paused: tuple[int, int], task: _Task, i: int) -> bool:
        """Whether ``error``, a verdict on slice ``i`` of the running ``task``, is for time the
        work did not have: a wall-time or no-progress limit, in a run during which this process
        or the slot's evaluator was stopped (``paused``: the counters as the run began). Not once
        the slice has been run again ``MAX_LOST`` times: then the verdict stands."""
        if getattr(error, "limit", None) not in _ELAPSED_LIMITS:
            return False
        # A verdict may arrive before the watchdog's first tick after a pause counts it.
        if paused == (self._pauses, slot.stops) and not self._paused(time.monotonic(), time.process_time()):
            return False
        lost = task.lost[i] if task.lost is not None else 0
        if lost >= MAX_LOST:
            return False
        log.warning("slice %s of job %s ran out of its %s while %s; running it again",
                    task.numbers[i], task.job.id, error.limit.replace("_", " "),
                    "its evaluator was stopped" if paused[1] != slot.stops else "the worker was not running")
        return True

    def _paused(self, now: float, cpu: float) -> bool:
        """This process did not run since the watchdog's last tick (``now``, ``cpu``: the monotonic
        clock and this process's CPU time): the tick is ``PAUSE_GAP`` late, and the process used
        little CPU meanwhile (a C call holding the GIL for as long uses the CPU: no pause)."""
        gap = now - self._ticked
        return gap > PAUSE_GAP and cpu - self._ticked_cpu < 0.5 * gap

    def _again(self, task: _Task, indexes: list[int]) -> None:
        """Queue slices of a run to run again, counting the attempt (``_Task.lost``)."""
        if task.lost is None:
            task.lost = [0] * len(task)
        for i in indexes:
            task.lost[i] += 1
        if self._closed:
            self._fail(task.part(indexes), SliceError("the worker shut down before the slice finished",
                                                      code=ErrorCode.ECANCELLED))
        else:
            self._requeue(task.part(indexes))

    def _fail_unsendable(self, task: _Task) -> _Task:
        """Fail each slice of ``task`` whose datum cannot be packed (``EUNSERIALIZABLE``, saying
        why); the part of ``task`` left to run."""
        sendable = []
        for i, datum in enumerate(task.datums):
            try:
                pack(datum)
            except UnserializableValue as e:
                self._fail(task.part([i]), SliceError(f"a datum cannot be sent to the evaluator: {e}",
                                                      code=ErrorCode.EUNSERIALIZABLE))
            else:
                sendable.append(i)
        return task.part(sendable)

    def _fail(self, task: _Task, error: SliceError, only_unsettled: bool = False) -> None:
        """Every slice of ``task`` (or those not settled yet) fails with ``error``."""
        if only_unsettled and task.settled:
            task = task.part([i for i in range(len(task)) if i not in task.settled])
        if len(task):
            self._deliver(task, Outcome.failure(task.job.id, task.tag, task.numbers, error))

    def _deliver(self, task: _Task, outcome: Outcome) -> None:
        try:
            task.on_outcome(outcome)
        except Exception:
            log.exception("outcome callback failed")

    # -- watchdog -------------------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._closed:
            time.sleep(WATCHDOG_INTERVAL)
            now, cpu = time.monotonic(), time.process_time()
            # This process did not run (stopped, its container frozen), and with it, as a rule,
            # its evaluators: runs in progress now excuse elapsed-time verdicts (_excused), and a
            # prepare's budget does not count the gap.
            if self._paused(now, cpu):
                self._pauses += 1
                for slot in self._slots:
                    slot.stopped_time += now - self._ticked
            self._ticked, self._ticked_cpu = now, cpu
            for slot in self._slots:
                spare = slot.spare
                if spare is not None and now - spare.since > SPARE_IDLE and not slot.busy:
                    with slot.lock:
                        if slot.spare is spare:
                            slot.spare = None
                    spare.close()  # harmless if the slot's thread took it meanwhile: take() won
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
        since = slot.preparing_since  # read once: the slot's thread clears it when the prepare ends
        if since is not None:
            if self._stopped(slot):
                slot.stopped_time += now - (slot.looked or now)  # a stopped evaluator spends none of its budget
            else:
                self._check_prepare(slot, proc, now - since - (slot.stopped_time - slot.stopped_mark))
            slot.looked = now
            return
        slot.looked = now
        if not slot.busy or slot.limits is None:
            return
        if slot.cancel_at is not None and now - slot.cancel_at > CANCEL_GRACE:
            proc.kill(SliceError("the slice was cancelled (and did not stop by itself)", code=ErrorCode.ECANCELLED))
            return
        beat = proc.heartbeat.read()
        if beat is None:  # the evaluator is mid-write: look again next tick
            return
        index, started, last_progress, cpu_start, span = beat
        if index < 0:
            return
        if span != 1:  # an engine running a block: the verdict cannot name the slice (see _post_mortem)
            index = None
        lim = slot.limits
        slot.ticks += 1
        # A stopped evaluator gets no wall-time or no-progress verdict, and its run excuses them
        # (_excused): looked at every 5th tick, and always before such a verdict.
        stopped = slot.ticks % 5 == 0 and self._stopped(slot)
        if stopped:
            slot.stops += 1
        over = None
        if lim.wall_time is not None and now - started > lim.wall_time + slot.grace:
            over = "wall_time"
        elif lim.progress_timeout is not None and now - max(started, last_progress) > lim.progress_timeout + slot.patience_grace:
            over = "progress_timeout"
        if over is not None:
            if stopped or self._stopped(slot):
                slot.stops += not stopped
                if slot.stopped_over is None:
                    slot.stopped_over = now
                elif now - slot.stopped_over > STOPPED_GRACE:  # not excused (_excused): no elapsed-time limit named
                    said = "wall-time" if over == "wall_time" else "no-progress"
                    proc.kill(SliceError(
                        f"the slice's evaluator (or a process it started) stayed stopped (SIGSTOP, a debugger) "
                        f"{STOPPED_GRACE:g} s past its {said} "
                        "limit while the worker ran: the work stopped itself, or something stopped it",
                        code=ErrorCode.ESLICETOOSLOW if over == "wall_time" else ErrorCode.ENOPROGRESS), index)
            else:
                proc.kill(exceeded(over, getattr(lim, over)), index)
            return
        ps = slot.psproc
        if ps is None:
            return
        # Listing children scans all of /proc (~1 ms per 100 processes): not on every tick, and
        # never for a sealed evaluator (it had none after its lockdown and can start none).
        if slot.ticks % 10 == 1 and not proc.sealed:
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


    @staticmethod
    def _stopped(slot: _Slot) -> bool:
        """The slot's evaluator, or a process it started (a V8 evaluator's Deno), is stopped
        (``SIGSTOP``, a debugger). One ``/proc`` read per process and tick."""
        for p in (slot.psproc, *slot.family):
            try:
                if p is not None and p.status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP):
                    return True
            except psutil.Error:
                continue
        return False

    def _check_prepare(self, slot: _Slot, proc: EvaluatorProcess, elapsed: float) -> None:
        """``prepare`` (compiling the work) under the job's wall time and memory, else the pool's budget."""
        lim = slot.preparing
        wall = lim.wall_time if lim is not None and lim.wall_time is not None else None
        if wall is not None and elapsed > wall + 0.5:
            proc.kill(exceeded("wall_time", wall, subject="preparing the job (loading and compiling its work)"))
        elif elapsed > self.prepare_timeout:
            proc.kill(SliceError(f"preparing the job took longer than {self.prepare_timeout:.0f} s (the worker's prepare "
                                 "budget)", code=ErrorCode.ESLICETOOSLOW))
        elif lim is not None and lim.memory is not None and slot.psproc is not None:
            used = slot.psproc.memory_info().rss - proc.start_rss
            if used > lim.memory * (1 + slot.memory_slack):
                proc.kill(exceeded("memory", lim.memory, used=used, what="resident memory",
                                   subject="preparing the job (loading and compiling its work)"))


def _sum(values: Iterable[float]) -> float:
    """Sum over processes that may vanish while we look."""
    total = 0.0
    try:
        for v in values:
            total += v
    except psutil.Error:
        pass
    return total


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


__all__ = ["EvaluatorPool", "Outcome", "SliceOutcome", "run_slice"]
