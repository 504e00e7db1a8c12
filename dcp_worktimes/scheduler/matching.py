"""Matching jobs to workers: one function per question, used by every backend, the worker and
the Compute API.

* ``unmet_requirement(requirements, capabilities)``: the first requirement not met (``"gpu=true"``);
* ``worker_can_run(job, worktimes, capabilities)``: why a worker cannot run a job, or ``None``;
* ``check_runnable_here(job)``: raise at once if no installed worktime of *this* machine can run it
  (not installed, no version in the range, its engine missing here, requirements unmet);
* ``merge_capabilities(...)``: deep-merge capability dicts.

>>> unmet_requirement({"gpu": False, "python": {"numpy": True}}, {"python": {"numpy": True}}) is None
True
>>> unmet_requirement({"gpu": True}, {})
'gpu=true'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from ..errors import RequirementsError, WorktimeNotFound
from ..versions import parse_range, parse_version

if TYPE_CHECKING:
    from .base import JobRecord


def requirements_met(requirements: Mapping[str, Any] | None, capabilities: Mapping[str, Any] | None) -> bool:
    """Nested booleans: ``True`` = the capability must be truthy, ``False`` = must be absent/falsy."""
    return unmet_requirement(requirements, capabilities) is None


def unmet_requirement(requirements: Mapping[str, Any] | None, capabilities: Mapping[str, Any] | None,
                      prefix: str = "") -> str | None:
    """The dotted path of the first unmet requirement (``"gpu=true"``), or ``None``."""
    caps = capabilities if isinstance(capabilities, Mapping) else {}
    for key, want in (requirements or {}).items():
        have = caps.get(key)
        path = f"{prefix}{key}"
        if isinstance(want, Mapping):
            # A missing section has nothing: its True entries fail, its False entries hold.
            found = unmet_requirement(want, have if isinstance(have, Mapping) else {}, path + ".")
            if found:
                return found
        elif want and not have:
            return f"{path}=true"
        elif not want and have:
            return f"{path}=false"
    return None


def worker_can_run(job: "JobRecord", worktimes: Mapping[str, str], capabilities: Mapping[str, Any]) -> str | None:
    """Why this worker cannot run ``job`` (a sentence), or ``None`` when it can."""
    name = job.spec.worktime
    version = worktimes.get(name)
    if version is None:
        return f"no worker has the worktime {name!r}"
    if job.worktime_range and parse_version(version) not in parse_range(job.worktime_range):
        return f"worker does not support {name}@{job.worktime_range} (it has {name} {version})"
    missing = unmet_requirement(job.requirements, capabilities)
    if missing:
        return f"no worker meets the requirement {missing}"
    return None


def check_runnable_here(job: "JobRecord", capabilities: Mapping[str, Any] | None = None,
                        config: Mapping[str, Any] | None = None) -> None:
    """Raise at once if this machine cannot run ``job``: ``WorktimeNotFound`` (not installed, no
    version in the range, its engine missing here) or ``EREQUIREMENTS``.

    ``capabilities``: extra ones the local worker adds; ``config``: the worktime's settings.
    """
    from ..plugins import get_worktime

    try:
        reg = get_worktime(job.spec.worktime, job.worktime_range or None)
    except ValueError as e:  # a bad range
        raise WorktimeNotFound(str(e)) from None
    probe = reg.probe(config)
    if not probe.available:
        raise WorktimeNotFound(f"this machine cannot run {reg.name} jobs: {probe.unavailable}; run the job on a "
                               "worker that can (exec(local=False) with a dcp-worker attached)")
    caps = merge_capabilities(probe.capabilities, capabilities)
    missing = unmet_requirement(job.requirements, caps)
    if missing:
        raise RequirementsError(
            f"this machine cannot run job {job.id}: its requirement {missing} is not met by the installed "
            f"{reg.name} {reg.version} (capabilities {caps}); relax job.requirements or run it on a worker that "
            "has them (exec(local=False) with a dcp-worker attached)")


def merge_capabilities(*caps: Mapping[str, Any] | None) -> dict:
    """Deep-merge capability dicts (later wins; nested dicts merge)."""
    out: dict = {}
    for c in caps:
        for k, v in (c or {}).items():
            if isinstance(v, Mapping) and isinstance(out.get(k), dict):
                out[k] = merge_capabilities(out[k], v)
            elif isinstance(v, Mapping):
                out[k] = merge_capabilities(v)
            else:
                out[k] = v
    return out
