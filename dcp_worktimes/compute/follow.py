"""Following a deployed job: read its event log, dispatch events to the job's listeners, and say
how the job ended (``Outcome``).

::

    follower = Follower(job, scheduler)
    outcome = follower.run(timeout=None, remote=False)     # Outcome.COMPLETE, ... ; follower.reason says why

Events are dispatched on the calling thread, in the order of the job's log. ``result`` and
``error`` events are read from the store only when someone listens for them (the results
themselves are collected as blocks when the job ends: ``results.collect``). A follower built
with ``emit=False`` only watches for the job's end (its own cursor; no handler runs, the job's
cursor stays): what an ``exec()`` called from one of the job's own event handlers uses, since that
handler must return before the next event is dispatched.

With ``remote=True`` the follower also watches the attached workers: while none that can run the
job is attached it says what it is waiting for (a ``logging`` warning on ``dcp_worktimes.compute``,
shown on stderr unless logging is configured otherwise), and after ``worker_wait`` seconds of that
it has the scheduler declare the job unschedulable.
"""

from __future__ import annotations

import enum
import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, TypeVar

from ..errors import UNUSABLE_WORK_CODES, ErrorCode
from ..scheduler.base import (CANCELLED, COMPLETE, FAILED, FINAL_STATES, UNUSABLE_WORK_REASON, EventsRewound,
                              Scheduler, StoreUnavailable, unusable_work_reason)
from ..values import UnserializableValue, unpack
from .events import JOB_EVENTS, Event

if TYPE_CHECKING:
    from .job import Job
    from .progress import ProgressBar

#: Seconds without events after which the follower asks the store for the job's status.
QUIET = 2.0
#: Longest wait between two reads of a failing store.
STORE_RETRY_MAX = 10.0
#: Seconds between the "still waiting for a worker" lines.
WAITING_NOTE = 10.0

log = logging.getLogger("dcp_worktimes.compute")
T = TypeVar("T")


def deleted_meanwhile(job_id: str) -> Exception:
    """The error of ``exec()`` for a job deleted from the store while it waited for the job."""
    from .job import JobCancelled

    return JobCancelled(f"job {job_id} is gone from the job store while this process waited for it: deleted "
                        "(dcp-worker jobs --delete, or its keep time passed), or the store lost its data (a Redis "
                        "restarted without persistence); its results went with it: deploy it again", None, job_id)


class Outcome(enum.Enum):
    """How a followed job ended."""

    COMPLETE = "complete"  # every slice has a final report (some may have failed)
    FAILED = "failed"  # the scheduler failed the job (its reason says why)
    CANCELLED = "cancelled"  # cancelled by the deployer, a timeout or the scheduler
    BADWORK = "badwork"  # the work cannot be used at all (EBADWORK): every slice would fail alike
    UNSCHEDULABLE = "unschedulable"  # no attached worker can run the job

    @classmethod
    def of_status(cls, status: str, reason: str | None = None) -> "Outcome":
        """The outcome of a job that ended as ``status``; a cancel for unusable work (the
        scheduler's, with its ``unusable_work_reason``) is ``BADWORK``, as when it was followed."""
        if status == CANCELLED and UNUSABLE_WORK_REASON.match(reason or ""):
            return cls.BADWORK
        return {COMPLETE: cls.COMPLETE, CANCELLED: cls.CANCELLED, FAILED: cls.FAILED}[status]


class Follower:
    """Reads ``job``'s events from ``scheduler`` from where the job last stopped reading."""

    def __init__(self, job: "Job", scheduler: Scheduler, bar: "ProgressBar | None" = None, *, emit: bool = True,
                 worker_wait: float | None = None) -> None:
        self.job = job
        self.scheduler = scheduler
        self.bar = bar
        self.emit = emit
        self.after = job._events_after  # this follower's cursor (the job's too when it emits)
        self.worker_wait = worker_wait
        self.reason = ""
        self.bad_work: Mapping[str, Any] | None = None
        self._waiting_since: float | None = None
        self._taken = False  # a worker took slices of the job: worker_wait no longer applies
        self._last_note = 0.0
        self._refused_note = float("-inf")  # when the store refusing writes was last said
        self._outage: float | None = None  # when reading the store started failing
        #: remote: attached workers run the job, and this follower decides when to give up
        #: (job.worker_wait), not a worker that marked the job unschedulable before that.
        self._remote = False
        self._gave_up: str | None = None  # the reason, once worker_wait ran out
        #: Slices whose result or error event listeners got (1 at the slice's number): after a
        #: store lost writes, slices run again and the log is read again, and none is told twice.
        self._told = bytearray()
        self._replay_until = 0  # the log is read again from 0 up to here (events_rewound)

    def run(self, timeout: float | None, remote: bool = False) -> Outcome:
        """Dispatch events until the job ends.

        ``remote``: slices run on attached workers only, so the follower watches them
        (``watch_workers``): a job no worker can run ends ``UNSCHEDULABLE`` instead of hanging.
        A job deleted from the store meanwhile (``dcp-worker jobs --delete --force``) raises
        ``JobCancelled`` saying so.
        """
        from ..scheduler.base import UnknownJob

        try:
            return self._follow(timeout, remote)
        except UnknownJob:
            raise deleted_meanwhile(self.job.id) from None

    def _follow(self, timeout: float | None, remote: bool) -> Outcome:
        job, sched = self.job, self.scheduler
        self._remote = remote
        deadline = None if timeout is None else time.monotonic() + timeout
        st = self._asking(lambda: sched.status(job.id), deadline)
        if st.get("status") in FINAL_STATES:  # e.g. resuming a job that finished meanwhile
            self.reason = str(st.get("reason") or "")
            return Outcome.of_status(st["status"], self.reason)
        quiet_since = time.monotonic()
        if remote:
            self._asking(lambda: self.watch_workers(quiet_since), deadline)
            if self._gave_up is not None:
                self.reason = self._gave_up
                return Outcome.UNSCHEDULABLE
        while True:
            per_slice = self.emit and bool(job.listener_count("result") or job.listener_count("error"))
            # Redis gone, an I/O error: say so, keep trying (the deadline holds)
            try:
                events = self._asking(lambda: sched.events(job.id, self.after, wait=0.25, results=per_slice), deadline)
            except EventsRewound as e:
                self._events_rewound(e)
                continue
            for seq, ev in events:
                self.after = seq
                if self.emit:
                    job._events_after = seq
                # Up to _replay_until, events were told before the store lost its writes (results
                # are told once by slice): not told again, but one that ends the job still ends it.
                ended = self.dispatch(ev, tell=seq > self._replay_until or ev.get("type") in ("result", "error"))
                if ended is not None:
                    return ended
            now = time.monotonic()
            if events:
                quiet_since = now
            elif now - quiet_since > QUIET:
                quiet_since = now
                if remote:
                    self._asking(lambda: self.watch_workers(now), deadline)
                    if self._gave_up is not None:
                        self.reason = self._gave_up
                        return Outcome.UNSCHEDULABLE
                st = self._asking(lambda: sched.status(job.id), deadline)
                if st.get("status") in FINAL_STATES:  # the log ended without our final event
                    self.reason = str(st.get("reason") or self.reason)
                    return Outcome.of_status(st["status"], self.reason)
            if deadline is not None and now > deadline:
                sched.cancel(job.id, f"exec(timeout={timeout}) expired")
                from .job import JobTimedOut  # here: job imports this module

                raise JobTimedOut(f"job {job.id} did not finish within {timeout} s; it was cancelled", job_id=job.id)

    def _events_rewound(self, e: EventsRewound) -> None:
        """The store lost recent writes: read its log again from the start. Result and error
        events reach listeners once per slice (``_told``); others up to where this follower had
        read are not told again, so those the store logged anew in that stretch are missed."""
        log.warning("job %s: %s; reading its events again (each slice's result once; console and custom events "
                    "logged since the loss up to #%d may be missed)", self.job.id, e.message, self.after)
        self._replay_until = max(self._replay_until, self.after)
        self.after = 0
        if self.emit:
            self.job._events_after = 0

    def _asking(self, call: Callable[[], T], deadline: float | None) -> T:
        """``call()``, tried again while the store fails, as the events are read."""
        while True:
            try:
                answer = call()
            except StoreUnavailable as e:
                self._store_failing(e, deadline)
                continue
            if self._outage is not None:
                log.warning("job %s: the job store answers again after %.1f s", self.job.id,
                            time.monotonic() - self._outage)
                self._outage = None
            return answer

    def _store_failing(self, error: StoreUnavailable, deadline: float | None) -> None:
        now = time.monotonic()
        if self._outage is None:
            self._outage = self._last_note = now
            log.warning("job %s: the job store is failing: %s; the job's events and results wait in the workers "
                        "and the store, retrying", self.job.id, error.message)
        elif now - self._last_note >= WAITING_NOTE:
            self._last_note = now
            log.warning("job %s: the job store is still failing (%.0f s so far): %s", self.job.id,
                        now - self._outage, error.message)
        if deadline is not None and now > deadline:
            raise TimeoutError(f"job {self.job.id} did not finish within the timeout; the job store is failing "
                               f"({error.message}), so it could not be cancelled") from None
        # Back off as the outage lasts: a quarter of it so far, from 0.25 s up to STORE_RETRY_MAX.
        time.sleep(min(STORE_RETRY_MAX, max(0.25, (now - self._outage) / 4)))

    def watch_workers(self, now: float) -> None:
        """``exec(local=False)``: say what the job waits for while no attached worker can run it, and
        give up (the scheduler marks it unschedulable) after ``worker_wait`` seconds of that, unless
        a worker took slices of it already: then workers that stopped checking in are a store that
        fails for a while (their check-ins are writes) or workers paused, not a job nobody can run,
        and the job waits for them."""
        from ..scheduler.matching import worker_can_run

        job, sched = self.job, self.scheduler
        record = sched.get_job(job.id)
        live = sched.workers()
        if any(worker_can_run(record, w.worktimes, w.capabilities, w.categories) is None for w in live):
            self._waiting_since = None
            return
        if not self._taken:
            self._taken = bool(sched.status(job.id).get("distributed"))
        if self._taken:
            if self._waiting_since is None:
                self._waiting_since = self._last_note = now
            elif now - self._last_note >= WAITING_NOTE:
                self._last_note = now
                refused = sched.writes_refused()
                if refused:
                    log.warning("job %s: no worker that can run it has checked in for %.0f s: %s; waiting for "
                                "them", job.id, now - self._waiting_since, refused)
                else:
                    log.warning("job %s: no worker that can run it has checked in for %.0f s (a job store failing, "
                                "or its workers stopped or paused); waiting for them", job.id,
                                now - self._waiting_since)
            return
        refused = sched.writes_refused() if not live else None
        if refused:
            # Workers may well be running: their check-ins are writes, which the store refuses. No
            # job that nobody can run, then: worker_wait counts again once the store takes writes.
            self._waiting_since = None
            if now - self._refused_note >= WAITING_NOTE:
                self._refused_note = now
                log.warning("job %s: no worker has checked in: %s", job.id, refused)
            return
        if self._waiting_since is None:
            self._waiting_since = self._last_note = now
            wanted = f"{record.spec.worktime}{' ' + record.worktime_range if record.worktime_range else ''}"
            found = (f"{len(live)} attached worker(s), none can run it" if live else "no worker is attached")
            patience = (f"giving up after {self.worker_wait:g} s (job.worker_wait)" if self.worker_wait is not None
                        else "waiting as long as it takes (job.worker_wait = None)")
            log.warning("job %s: waiting for a worker with %s%s to attach to the scheduler (%s); start one with "
                        "`dcp-worker --worktime %s` on the same scheduler, or run the job here with exec(); %s",
                        job.id, wanted, _requirements_text(record), found, record.spec.worktime, patience)
        elif now - self._last_note >= WAITING_NOTE:
            self._last_note = now
            left = "" if self.worker_wait is None else f", {max(0.0, self.worker_wait - (now - self._waiting_since)):.0f} s left"
            log.warning("job %s: still waiting for a worker (%.0f s so far%s)", job.id, now - self._waiting_since, left)
        if self.worker_wait is not None and now - self._waiting_since >= self.worker_wait:
            # Marks the job (an "unschedulable" event) unless a worker's check did so already.
            self._gave_up = sched.check_schedulable(job.id, grace=0.0)

    def dispatch(self, ev: Mapping[str, Any], tell: bool = True) -> Outcome | None:
        """Hand one event to the job's listeners (unless ``emit`` is off, or ``tell``); the
        ``Outcome`` when it ends the job."""
        job = self.job
        kind = ev.get("type")
        payload = Event({k: v for k, v in ev.items() if k != "type"})
        if not (self.emit and tell):
            return self._ending(kind, payload)
        if kind in ("result", "error") and not self._first_telling(payload.get("sliceNumber")):
            return self._ending(kind, payload)
        if kind == "result":
            if job.listener_count("result") or job.listener_count("error"):
                raw = payload.pop("value", None)
                try:
                    payload["result"] = unpack(raw) if isinstance(raw, (bytes, bytearray)) else raw
                except UnserializableValue as e:  # stored, but it cannot be read back: that slice's error
                    job.emit("error", Event({"sliceNumber": payload.get("sliceNumber"), "code": "EUNSERIALIZABLE",
                                             "message": f"the result cannot be read back: {e}"}))
                    return None
                if job.listener_count("result"):
                    job.emit("result", payload)
            return None
        if kind == "custom":
            job.work.emit(payload.get("name", ""), payload)
            return None
        if kind == "status":
            job._status = dict(payload)
            if self.bar is not None:
                self.bar.update(payload)
        if kind == "accepted":
            payload.setdefault("id", job.id)
        if kind in JOB_EVENTS:
            job.emit(kind, payload)
        return self._ending(kind, payload)

    def _first_telling(self, number: Any) -> bool:
        """Whether slice ``number``'s outcome is told now for the first time (and mark it told)."""
        if type(number) is not int or number < 0:
            return True
        told = self._told
        if number >= len(told):
            told.extend(bytes(number + 1 - len(told)))
        elif told[number]:
            return False
        told[number] = 1
        return True

    def _ending(self, kind: Any, payload: Mapping[str, Any]) -> Outcome | None:
        """The ``Outcome`` when this event ends the job (and why, in ``reason``)."""
        if kind == "error" and str(payload.get("code")) in UNUSABLE_WORK_CODES:
            # The scheduler stops the job (every other slice would fail the same way); the
            # deployer stops following at the first such error and says why.
            self.bad_work = payload
            self.reason = unusable_work_reason([payload]) or ""
            return Outcome.BADWORK
        if kind == "complete":
            return Outcome.COMPLETE
        if kind == "cancel":
            self.reason = str(payload.get("reason", ""))
            if payload.get("code") == ErrorCode.EBADWORK.value:  # the scheduler stopped unusable work
                return Outcome.BADWORK
            return Outcome.CANCELLED
        if kind == "unschedulable":
            if self._remote and self._gave_up is None and (self.worker_wait is None or self._waiting_since is None
                                                           or time.monotonic() - self._waiting_since < self.worker_wait):
                return None  # a worker's verdict: this deployer waits job.worker_wait (watch_workers)
            self.reason = str(payload.get("reason", ""))
            return Outcome.UNSCHEDULABLE
        if kind == "readyStateChange" and payload.get("state") == "failed":
            self.reason = str(payload.get("reason", "")) or "see the job's error events"
        return None

    def bad_work_code(self) -> str:
        """The code that made the work unusable (``UNUSABLE_WORK_CODES``)."""
        if self.bad_work is not None:
            return str(self.bad_work.get("code"))
        found = UNUSABLE_WORK_REASON.match(self.reason)
        return found.group(1) if found else ErrorCode.EBADWORK.value

    def bad_work_message(self) -> str:
        ev, code = self.bad_work, self.bad_work_code()
        if ev is None:  # known from the scheduler's cancel: its reason carries the engine's message
            msg = self.reason.removeprefix(f"the work is unusable ({code}): ").strip() or "no message"
            where = f"a slice failed with {code}"
        else:
            msg = str(ev.get("message", "")).strip() or "no message"
            where = f"slice {ev.get('sliceNumber')} failed with {code}"
        return (f"job {self.job.id}: the work cannot be used ({where}, so every slice would): {msg}\n"
                "The job was stopped; fix the work and deploy it again")


def _requirements_text(record: Any) -> str:
    from ..scheduler.matching import flat_requirements

    flat = flat_requirements(record.requirements)
    return f" and {', '.join(flat)}" if flat else ""
