"""Following a deployed job: read its event log, dispatch events to the job's listeners, and say
how the job ended (``Outcome``).

::

    follower = Follower(job, scheduler)
    outcome = follower.run(timeout=None, remote=False)     # Outcome.COMPLETE, ... ; follower.reason says why

Events are dispatched on the calling thread, in the order of the job's log. ``result`` and
``error`` events are read from the store only when someone listens for them (the results
themselves are collected as blocks when the job ends: ``results.collect``).
"""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import ErrorCode
from ..scheduler.base import CANCELLED, COMPLETE, FAILED, FINAL_STATES, Scheduler
from ..values import unpack
from .events import JOB_EVENTS, Event

if TYPE_CHECKING:
    from .job import Job
    from .progress import ProgressBar

#: With ``exec(local=False)``: seconds to wait for a worker to attach before calling the job unschedulable.
REMOTE_GRACE = 30.0
#: Seconds without events after which the follower asks the store for the job's status.
QUIET = 2.0


class Outcome(enum.Enum):
    """How a followed job ended."""

    COMPLETE = "complete"  # every slice has a final report (some may have failed)
    FAILED = "failed"  # the scheduler failed the job (its reason says why)
    CANCELLED = "cancelled"  # cancelled by the deployer, a timeout or the scheduler
    BADWORK = "badwork"  # the work cannot be used at all (EBADWORK): every slice would fail alike
    UNSCHEDULABLE = "unschedulable"  # no attached worker can run the job

    @classmethod
    def of_status(cls, status: str) -> "Outcome":
        return {COMPLETE: cls.COMPLETE, CANCELLED: cls.CANCELLED, FAILED: cls.FAILED}[status]


class Follower:
    """Reads ``job``'s events from ``scheduler`` from where the job last stopped reading."""

    def __init__(self, job: "Job", scheduler: Scheduler, bar: "ProgressBar | None" = None) -> None:
        self.job = job
        self.scheduler = scheduler
        self.bar = bar
        self.reason = ""
        self.bad_work: Mapping[str, Any] | None = None

    def run(self, timeout: float | None, remote: bool = False) -> Outcome:
        """Dispatch events until the job ends.

        ``remote``: slices run on attached workers only, so the store is asked now and then
        whether any live worker can run the job (it then emits ``unschedulable`` instead of a
        silent hang).
        """
        job, sched = self.job, self.scheduler
        deadline = None if timeout is None else time.monotonic() + timeout
        st = sched.status(job.id)
        if st.get("status") in FINAL_STATES:  # e.g. resuming a job that finished meanwhile
            self.reason = str(st.get("reason") or "")
            return Outcome.of_status(st["status"])
        quiet_since = time.monotonic()
        while True:
            per_slice = bool(job.listener_count("result") or job.listener_count("error"))
            events = sched.events(job.id, job._events_after, wait=0.25, results=per_slice)
            for seq, ev in events:
                job._events_after = seq
                ended = self.dispatch(ev)
                if ended is not None:
                    return ended
            now = time.monotonic()
            if events:
                quiet_since = now
            elif now - quiet_since > QUIET:
                quiet_since = now
                if remote:
                    sched.check_schedulable(job.id, grace=REMOTE_GRACE)
                st = sched.status(job.id)
                if st.get("status") in FINAL_STATES:  # the log ended without our final event
                    self.reason = str(st.get("reason") or self.reason)
                    return Outcome.of_status(st["status"])
            if deadline is not None and now > deadline:
                sched.cancel(job.id, f"exec(timeout={timeout}) expired")
                raise TimeoutError(f"job {job.id} did not finish within {timeout} s; it was cancelled")

    def dispatch(self, ev: Mapping[str, Any]) -> Outcome | None:
        """Hand one event to the job's listeners; the ``Outcome`` when it ends the job."""
        job = self.job
        kind = ev.get("type")
        payload = Event({k: v for k, v in ev.items() if k != "type"})
        if kind == "result":
            if job.listener_count("result"):
                raw = payload.pop("value", None)
                payload["result"] = unpack(raw) if isinstance(raw, (bytes, bytearray)) else raw
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
        if kind == "error" and str(payload.get("code")) == ErrorCode.EBADWORK.value:
            # The scheduler stops the job (every other slice would fail the same way); the
            # deployer stops following at the first such error and says why.
            self.bad_work = payload
            self.reason = f"the work is unusable (EBADWORK): {payload.get('message', '')}"
            return Outcome.BADWORK
        if kind == "complete":
            return Outcome.COMPLETE
        if kind == "cancel":
            self.reason = str(payload.get("reason", ""))
            if payload.get("code") == ErrorCode.EBADWORK.value:  # the scheduler stopped unusable work
                return Outcome.BADWORK
            return Outcome.CANCELLED
        if kind == "unschedulable":
            self.reason = str(payload.get("reason", ""))
            return Outcome.UNSCHEDULABLE
        if kind == "readyStateChange" and payload.get("state") == "failed":
            self.reason = str(payload.get("reason", "")) or "see the job's error events"
        return None

    def bad_work_message(self) -> str:
        ev = self.bad_work
        if ev is None:  # known from the scheduler's cancel: its reason carries the engine's message
            msg = self.reason.removeprefix("the work is unusable (EBADWORK): ").strip() or "no message"
            where = "a slice failed with EBADWORK"
        else:
            msg = str(ev.get("message", "")).strip() or "no message"
            where = f"slice {ev.get('sliceNumber')} failed with EBADWORK"
        return (f"job {self.job.id}: the work cannot be used ({where}, so every slice would): {msg}\n"
                "The job was stopped; fix the work and deploy it again")
