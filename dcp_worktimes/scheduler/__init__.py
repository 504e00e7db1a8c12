"""Schedulers: where jobs, their slices, results and events live (see ``base.py``).

``open_scheduler(url)`` opens one (``sqlite.py``: the embedded store, the default);
``Worker`` / ``run_worker`` (``worker.py``) take slices from it and run them on sandboxed
evaluators; ``run_local`` (``local.py``) runs one job on this machine for ``job.exec()``.
Every backend passes ``dcp_worktimes.testing_scheduler.SchedulerConformance``.
"""

from __future__ import annotations

from .base import (
    ENV_SCHEDULER,
    JobRecord,
    Lease,
    Report,
    ResultBatch,
    Scheduler,
    SchedulerError,
    SliceReport,
    UnknownJob,
    WorkerInfo,
    default_url,
    open_scheduler,
)
from .matching import check_runnable_here, merge_capabilities, requirements_met, unmet_requirement, worker_can_run

__all__ = [
    "ENV_SCHEDULER",
    "JobRecord",
    "Lease",
    "Scheduler",
    "SchedulerError",
    "Report",
    "ResultBatch",
    "SliceReport",
    "UnknownJob",
    "WorkerInfo",
    "default_url",
    "open_scheduler",
    "check_runnable_here",
    "merge_capabilities",
    "requirements_met",
    "unmet_requirement",
    "worker_can_run",
    "Worker",
    "run_worker",
    "run_local",
]


def __getattr__(name: str):
    # The worker side pulls in the plugin registry and the runner: import it only when asked.
    if name in ("Worker", "run_worker"):
        from . import worker

        return getattr(worker, name)
    if name == "run_local":
        from .local import run_local

        return run_local
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
