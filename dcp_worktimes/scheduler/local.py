"""Local execution: run a job's slices on this machine while the deployer follows its events.

``job.exec()`` uses it when no worker is attached::

    with run_local(scheduler, job_id, cores=2):
        for seq, event in follow(scheduler, job_id):   # the Compute API's event loop
            ...

It checks first that an installed worktime can run the job (``ENOWORKTIME`` /
``EREQUIREMENTS`` at once, instead of a job that never moves; the Compute API checks the same
before it stores the job), then runs a ``Worker`` restricted
to this job in a background thread, and stops it (handing unfinished slices back to the store)
when the block ends. If the worker thread fails, the job is cancelled with the reason, so the
deployer's event loop sees a ``cancel`` event instead of waiting forever.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from contextlib import contextmanager
from typing import Iterator

from ..errors import DcpError
from ..limits import Limits
from .base import Scheduler
from .matching import check_runnable_here, local_config
from .worker import Worker

log = logging.getLogger(__name__)


@contextmanager
def run_local(
    scheduler: Scheduler,
    job_id: str,
    cores: int | None = None,
    *,
    limits: Limits | None = None,
    capabilities: dict | None = None,
    config: dict | None = None,
    lease_seconds: float = 10.0,
) -> Iterator[Worker]:
    """Run ``job_id`` on ``cores`` local evaluators (default: all cores) for the duration of the block.

    ``config``: the settings of the job's worktime (``Worktime.config``)."""
    from ..runner.shared import borrow
    from .processes import Helpers, shares

    job = scheduler.get_job(job_id)
    if config is None:  # exec() has no flags: the environment's settings, or a choice the requirements ask for
        config = local_config(job, capabilities)
    check_runnable_here(job, capabilities, config)
    configs = {job.spec.worktime: config or {}}
    split = shares(cores or os.cpu_count() or 1)
    # More cores than one process keeps busy: helper worker processes take their share of the job.
    helpers = Helpers(scheduler.url, split[1:], job=job_id, worktimes=[job.spec.worktime], config=configs,
                      limits={k: v for k, v in (limits.to_dict() if limits else {}).items() if v is not None},
                      capabilities=[f"{k}={json.dumps(v)}" for k, v in _flat(capabilities or {})])
    with borrow(split[0], configs) as pool, helpers:
        worker = Worker(scheduler, [job.spec.worktime], split[0], capabilities=capabilities, limits=limits, jobs=[job_id],
                        lease_seconds=lease_seconds, config=configs, pool=pool)
        try:
            yield from _running(worker, scheduler, job_id)
        finally:
            pool.release(job_id, wait=False)  # the results are what the deployer waits for


def _flat(caps: dict, prefix: str = "") -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for k, v in caps.items():
        out += _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)]
    return out


def _running(worker: Worker, scheduler: Scheduler, job_id: str) -> Iterator[Worker]:
    stop = threading.Event()

    def target() -> None:
        try:
            worker.run(stop)
        except BaseException as e:  # noqa: BLE001
            if not isinstance(e, DcpError):  # a bug: its traceback; ours say what happened in the reason below
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
        worker.wake()
        thread.join(60)
