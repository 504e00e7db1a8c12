"""Deploying a job: every check that can refuse it, then the store.

``plan(job, cost, local, scheduler)`` validates everything (settings, the worktime through its contract,
requirements against this machine or the attached workers) and returns the ``JobRecord``;
nothing is stored until it returns. ``submit(scheduler, record, job)`` stores it, and for a stream
input starts a ``Feeder`` that pushes the datums in batches and keeps the job's feed lease alive
(``Scheduler.keep_feeding``) until the input is closed::

    record = plan(job, parse_cost(None), True, scheduler)     # raises before anything is stored
    feeder = submit(scheduler, record, job)
"""

from __future__ import annotations

import logging
import reprlib
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable

from ..errors import WorktimeNotFound
from ..inputs import MultiRange, StreamInput, input_size
from ..limits import check_cores
from ..scheduler.base import JobRecord, Scheduler, StoreUnavailable
from ..scheduler.matching import check_runnable_here, worker_can_run
from ..values import UnserializableValue, pack_decodable
from ..worktime import JobSpec
from .cost import CostProfile
from .settings import (
    RequirementsError,
    check_files,
    check_max_attempts,
    check_modules,
    check_options,
    check_public,
    check_requirements,
    check_sendable,
    check_total,
)

if TYPE_CHECKING:
    from .job import Job

#: Datums per ``add_slices`` call for stream inputs ...
STREAM_BATCH = 1000
#: ... or fewer: no datum waits longer than this for the rest of its batch (a slow generator's
#: datums are sent as they come, and its job is deployed with its first datum, not its thousandth).
STREAM_BATCH_SECONDS = 0.5
#: Longest wait between two tries to store a stream's datums while the store fails (the calls
#: themselves ride out a short outage first: a Redis URL's ``retry``).
STORE_RETRY_MAX = 30.0
#: Seconds a stream job's feed lease lasts (``Scheduler.keep_feeding``): a deployer that stops
#: renewing it for this long is taken for dead and its job cancelled. Generous: longer than a
#: Redis outage the store's calls ride out (``retry``, 5 min by default), a busy or swapping
#: machine, a store locked for a while. (A SQLite store on the deployer's machine also watches
#: its process, and ends the job as soon as it is gone.)
FEED_LEASE = 600.0
#: Seconds between renewals of the feed lease: several renewals may fail before it lapses.
FEED_REFRESH = 30.0

log = logging.getLogger(__name__)


def work_spec(job: "Job", job_id: str = "") -> tuple[JobSpec, str | None]:
    """The job's work as workers get it, and its worktime range, after the checks of the work
    itself: the worktime (``ENOWORKTIME`` unless ``custom_worktime``), options, and the worktime's
    own refusals (``Worktime.validate``). ``plan`` uses it; so does publishing an application."""
    from ..plugins import get_worktime

    name = job.worktime
    worktime_range = job.worktime_version
    reg = None
    if not job.custom_worktime:  # ENOWORKTIME before anything about the work itself
        try:
            reg = get_worktime(name, worktime_range or None)
        except ValueError as e:  # a malformed range
            raise WorktimeNotFound(f"job.worktime_version: {e}") from None
    arguments = check_sendable(list(job.arguments), "job arguments")
    options = check_options(job.options)
    captured = job._captured()
    spec_options = {**captured.options, **options}
    if isinstance(job.input_set, MultiRange):
        spec_options["spread_datum"] = True  # work(*datum, *arguments): the contract in dcp_worktimes/inputs
    spec = JobSpec(id=job_id, worktime=name, work=captured.work, arguments=arguments,
                   modules=check_modules(job.modules), files=check_files(job.files), options=spec_options,
                   limits=job.limits)
    if reg is not None:
        if worktime_range is None:
            worktime_range = reg.cls.default_range
        reg.cls.validate(spec)  # the worktime's own refusals (empty work, a misspelt option ...)
    return spec, worktime_range


def plan(job: "Job", cost: CostProfile, local: bool, scheduler: Scheduler) -> JobRecord:
    """The ``JobRecord`` to store for ``job``, after every check that can refuse it."""
    spec, worktime_range = work_spec(job, uuid.uuid4().hex)
    requirements = check_requirements(job.requirements)
    check_cores(job.cores, "job.cores")
    total = input_size(job.input_set)
    check_total(total)
    record = JobRecord(
        id=spec.id, spec=spec, worktime_range=worktime_range, requirements=requirements,
        payment_per_slice=cost.payment_per_slice(total), input=job.input_set.description(),
        # A stream's total is announced by close_input once every datum has been pushed.
        total=None if isinstance(job.input_set, StreamInput) else total,
        public=check_public(job.public), max_attempts=check_max_attempts(job.max_attempts),
        application=dict(job.application) if job.application else None,
    )
    if local:
        check_runnable_here(record)  # ENOWORKTIME / EREQUIREMENTS now, not after the job is stored
    else:
        check_attached_workers(record, scheduler)
    return record


def check_attached_workers(record: JobRecord, scheduler: Scheduler) -> None:
    """``exec(local=False)`` with requirements: refuse at once when attached workers exist and
    none of them can run the job (with none attached yet, the deployer waits for one)."""
    if not record.requirements:
        return
    reasons = []
    for w in scheduler.workers():
        why = worker_can_run(record, w.worktimes, w.capabilities, w.categories)
        if why is None:
            return
        reasons.append(why)
    if reasons:
        raise RequirementsError(
            f"none of the {len(reasons)} attached worker(s) can run the job ({reasons[0]}); relax job.requirements "
            "or start a dcp-worker that meets them")


def pack_batch(batch: list[tuple[int, Any]]) -> list[tuple[int, bytes]]:
    out = []
    for n, datum in batch:
        try:
            out.append((n, pack_decodable(datum)))
        except UnserializableValue as e:
            raise UnserializableValue(f"input {n} ({reprlib.repr(datum)}): {e}") from None
    return out


class Feeder:
    """Pushes a stream input's datums to the store in batches, on its own thread.

    The first batch is read and packed before the job is stored, so the usual mistakes (an input
    that cannot be sent) raise before anything is deployed. A failure later cancels the job with
    the reason, and ``error`` holds it for ``exec()`` to raise.

    While it feeds, a second thread renews the job's feed lease every ``FEED_REFRESH`` s: the
    generator runs on the feeding thread and may take minutes per item, and a deployer that is
    alive must never look dead for that. If this process dies mid-stream the renewals stop and
    the store cancels the job once ``FEED_LEASE`` has passed, or at once where it sees the process
    gone (a SQLite store on this machine): its remaining inputs died with it.
    """

    def __init__(self, stream: StreamInput) -> None:
        self.stream = stream
        self.batches = stream.batches(STREAM_BATCH, STREAM_BATCH_SECONDS)
        try:
            self.first = pack_batch(next(self.batches))
        except StopIteration:
            self.first = []
        self.error: BaseException | None = None
        #: Every datum is stored and the input closed: the job no longer needs this process.
        self.complete = False
        self.stop = threading.Event()
        #: Set once feeding has ended (input closed, failed or stopped): the lease keeper stops.
        self.fed = threading.Event()
        self.thread: threading.Thread | None = None
        self.keeper: threading.Thread | None = None

    def start(self, scheduler: Scheduler, job_id: str) -> None:
        self.keeper = threading.Thread(target=self._keep_lease, args=(scheduler, job_id),
                                       name=f"dcp-feed-lease-{job_id[:8]}", daemon=True)
        self.keeper.start()
        self.thread = threading.Thread(target=self._feed, args=(scheduler, job_id), name=f"dcp-feed-{job_id[:8]}",
                                       daemon=True)
        self.thread.start()

    def _keep_lease(self, scheduler: Scheduler, job_id: str) -> None:
        """Renew the feed lease now and every ``FEED_REFRESH`` s until feeding ends.

        Looked at every second by the wall clock as well: after the machine sleeps, the monotonic
        clock has not moved but the lease (wall clock, in the store) has, and it is renewed at once."""
        lease, refresh = FEED_LEASE, FEED_REFRESH  # read once: a test may shorten them before deploying
        while not self.fed.is_set():
            try:
                scheduler.keep_feeding(job_id, lease, watch_caller=True)
            except Exception as e:  # noqa: BLE001 - a store failing for a while: the next renewal may work
                log.warning("job %s: could not renew the feed lease of its input stream (%s); retrying in %.0f s",
                            job_id, e, refresh)
            renewed, wall = time.monotonic(), time.time()
            while not self.fed.wait(min(1.0, refresh)):
                if time.monotonic() - renewed >= refresh or time.time() - wall >= refresh:
                    break

    def _store(self, call: Callable[[], None], job_id: str) -> None:
        """``call()`` (an ``add_slices`` or ``close_input``, both safe to repeat), tried again while
        the store fails (``StoreUnavailable``), as workers do, until it works or the job ends here:
        the feeder gave up before, and the job waited for its feed lease to lapse, blamed on a
        deployer that was alive."""
        wait, since = 0.5, None
        while True:
            try:
                call()
            except StoreUnavailable as e:
                if since is None:
                    since = time.monotonic()
                    log.warning("job %s: the job store is failing while its input streams in: %s; retrying with "
                                "backoff", job_id, e.message)
                if self.stop.wait(wait):
                    raise
                wait = min(wait * 2, STORE_RETRY_MAX)
                continue
            if since is not None:
                log.warning("job %s: the job store takes its input again after %.1f s", job_id, time.monotonic() - since)
            return

    def _feed(self, scheduler: Scheduler, job_id: str) -> None:
        try:
            if self.first:
                first = self.first
                self._store(lambda: scheduler.add_slices(job_id, first), job_id)
            for batch in self.batches:
                if self.stop.is_set():
                    return
                packed = pack_batch(batch)
                self._store(lambda: scheduler.add_slices(job_id, packed), job_id)
            self.complete = True  # every datum is stored: a Ctrl-C from now on leaves a resumable job
            self._store(lambda: scheduler.close_input(job_id, self.stream.consumed), job_id)
        except BaseException as e:  # noqa: BLE001 - reported by exec() on its own thread
            self.error = e
            try:
                scheduler.cancel(job_id, f"the input stream failed: {type(e).__name__}: {e}")
            except Exception:  # noqa: BLE001
                pass
        finally:
            self.fed.set()
            self.stream.close()  # a thread still reading the source stops at its next datum

    def wait(self) -> None:
        """Until every datum is stored (or feeding failed: ``error``)."""
        if self.thread is not None:
            self.thread.join()

    def close(self) -> None:
        """The job ended (maybe early): stop pushing inputs, and renewing the feed lease (the
        generator may be stuck in an item for long after this)."""
        self.stop.set()
        self.fed.set()
        self.stream.close()
        if self.thread is not None and self.thread.is_alive():
            self.thread.join(10)


def submit(scheduler: Scheduler, record: JobRecord, job: "Job") -> Feeder | None:
    """Store ``record``; for a stream input, read its first batch first and start feeding the rest."""
    feeder = Feeder(job.input_set) if isinstance(job.input_set, StreamInput) else None
    scheduler.submit(record)
    if feeder is not None:
        feeder.start(scheduler, record.id)
    return feeder


__all__ = ["plan", "work_spec", "submit", "Feeder", "check_attached_workers", "STREAM_BATCH", "STREAM_BATCH_SECONDS",
           "FEED_LEASE", "FEED_REFRESH"]
