"""Local execution: run a job's slices on this machine while the deployer follows its events.

``job.exec()`` uses it when no worker is attached::

    with run_local(scheduler, job_id, cores=2):
        for seq, event in follow(scheduler, job_id):   # the Compute API's event loop
            ...

It checks first that an installed worktime can run the job (``ENOWORKTIME`` /
``EREQUIREMENTS`` at once, instead of a job that never moves), then runs a ``Worker`` restricted
to this job in a background thread, and stops it (handing unfinished slices back to the store)
when the block ends. If the worker thread fails, the job is cancelled with the reason, so the
deployer's event loop sees a ``cancel`` event instead of waiting forever.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Iterator

from ..errors import DcpError, ErrorCode, WorktimeNotFound
from ..limits import Limits
from ..plugins import get_worktime
from .base import Scheduler, merge_capabilities, unmet_requirement
from .worker import Worker

log = logging.getLogger(__name__)


def check_runnable_here(scheduler: Scheduler, job_id: str, capabilities: dict | None = None) -> None:
    """Raise at once if no installed worktime can run the job (name, version range, requirements)."""
    job = scheduler.get_job(job_id)
    try:
        reg = get_worktime(job.spec.worktime, job.worktime_range or None)
    except ValueError as e:  # a bad range
        raise WorktimeNotFound(str(e)) from None
    caps = merge_capabilities(reg.probe().capabilities, capabilities)  # the probe's: what this machine has
    missing = unmet_requirement(job.requirements, caps)
    if missing:
        raise DcpError(
            f"this machine cannot run job {job_id}: its requirement {missing} is not met by the installed "
            f"{reg.name} {reg.version} (capabilities {caps}); relax the requirements or run it on a worker that has them",
            code=ErrorCode.EREQUIREMENTS,
        )


@contextmanager
def run_local(
    scheduler: Scheduler,
    job_id: str,
    cores: int | None = None,
    *,
    limits: Limits | None = None,
    capabilities: dict | None = None,
    lease_seconds: float = 10.0,
) -> Iterator[Worker]:
    """Run ``job_id`` on ``cores`` local evaluators (default: all cores) for the duration of the block."""
    check_runnable_here(scheduler, job_id, capabilities)
    job = scheduler.get_job(job_id)
    worker = Worker(scheduler, [job.spec.worktime], cores, capabilities=capabilities, limits=limits, jobs=[job_id],
                    lease_seconds=lease_seconds)
    stop = threading.Event()

    def target() -> None:
        try:
            worker.run(stop)
        except BaseException as e:  # noqa: BLE001
            log.exception("local worker for job %s failed", job_id)
            try:
                scheduler.cancel(job_id, reason=f"the local worker failed: {type(e).__name__}: {e}")
            except Exception:  # noqa: BLE001
                pass

    thread = threading.Thread(target=target, name=f"dcp-local-{job_id}", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        stop.set()
        thread.join(60)
