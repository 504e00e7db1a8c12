"""Schedulers: where jobs, their slices, results and events live (see ``base.py``).

``open_scheduler(url)`` opens one; ``Worker`` (``worker.py``) takes slices from it and runs them;
``run_local`` (``local.py``) runs a job on this machine.
"""

from __future__ import annotations

from .base import (
    ENV_SCHEDULER,
    JobRecord,
    Lease,
    Scheduler,
    SchedulerError,
    SliceReport,
    UnknownJob,
    WorkerInfo,
    default_url,
    open_scheduler,
    requirements_met,
    worker_can_run,
)

__all__ = [
    "ENV_SCHEDULER",
    "JobRecord",
    "Lease",
    "Scheduler",
    "SchedulerError",
    "SliceReport",
    "UnknownJob",
    "WorkerInfo",
    "default_url",
    "open_scheduler",
    "requirements_met",
    "worker_can_run",
]
