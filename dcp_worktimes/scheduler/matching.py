"""Matching jobs to workers: one function per question, used by every backend, the worker and
the Compute API.

* ``unmet_requirement(requirements, capabilities)``: the first requirement not met (``"gpu=true"``);
* ``worker_can_run(job, worktimes, capabilities, categories)``: why a worker cannot run a job, or ``None``;
* ``unschedulable_reason(job, workers, store)``: why none of the live workers can, or ``None``;
* ``check_categories(values)``: application categories (DCP's "hashTags") as stored and matched;
* ``check_runnable_here(job)``: raise at once if no installed worktime of *this* machine can run it
  (not installed, no version in the range, its engine missing here, requirements unmet);
* ``local_config(job)``: the settings this machine runs the job's worktime with;
* ``merge_capabilities(...)``: deep-merge capability dicts.

>>> unmet_requirement({"gpu": False, "python": {"numpy": True}}, {"python": {"numpy": True}}) is None
True
>>> unmet_requirement({"gpu": True}, {})
'gpu=true'
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Iterator, Mapping

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


def flat_requirements(requirements: Mapping[str, Any] | None, prefix: str = "") -> list[str]:
    """``{"machine": {"gpu": True}}`` -> ``["machine.gpu=true"]`` (for messages)."""
    out: list[str] = []
    for key, want in (requirements or {}).items():
        if isinstance(want, Mapping):
            out += flat_requirements(want, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={'true' if want else 'false'}")
    return out


_CATEGORY = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def check_categories(values: Any, where: str = "categories") -> list[str]:
    """Application categories (DCP's "hashTags") as they are stored and matched: lower case, a
    leading ``#`` dropped, each a word of letters, digits, ``.``, ``_``, ``-``; duplicates removed.

    >>> check_categories(["#Video", "video", "audio-fx"])
    ['video', 'audio-fx']
    """
    if isinstance(values, str) or not isinstance(values, (list, tuple, set, frozenset)):
        raise ValueError(f"{where} must be a list of words such as ['video', 'rendering'], got {values!r:.60}")
    out: list[str] = []
    for v in values:
        if not isinstance(v, str):
            raise ValueError(f"{where}: a category is a word such as 'video', got {v!r:.40}")
        word = v.strip().lstrip("#").lower()
        if not _CATEGORY.fullmatch(word):
            raise ValueError(f"{where}: {v!r} is not a category; write a word of letters, digits, '.', '_' or '-' "
                             "(at most 64), such as 'video'")
        if word not in out:
            out.append(word)
    return out


#: The capability under which a worker lists the worktimes it stopped offering for a while after
#: they failed on its machine (``Worker._disable``), with why: ``{name: reason}``. Worktime names
#: cannot start with ``_``, so no worktime's capabilities take this key.
WITHDRAWN = "_withdrawn"


def worker_can_run(job: "JobRecord", worktimes: Mapping[str, str], capabilities: Mapping[str, Any],
                   categories: list[str] | None = None) -> str | None:
    """Why this worker cannot run ``job`` (a sentence), or ``None`` when it can.

    ``categories``: the worker serves only jobs of applications carrying one of them (``None``: any job).
    """
    if categories is not None and not set(job.categories) & set(categories):
        served = ", ".join(categories) or "none"
        has = f"its application's categories are {', '.join(job.categories)}" if job.categories else (
            "it is not an application job, so it has no category")
        return f"no worker serves the job's categories ({has}; a worker started with --category serves only {served})"
    name = job.spec.worktime
    version = worktimes.get(name)
    if version is None:
        withdrawn = capabilities.get(WITHDRAWN)
        why = withdrawn.get(name) if isinstance(withdrawn, dict) else None
        if why:
            return (f"a worker that has the worktime {name!r} stopped offering it for a minute after it failed on its "
                    f"machine ({why})")
        return f"no worker has the worktime {name!r}"
    if job.worktime_range and parse_version(version) not in parse_range(job.worktime_range):
        return f"worker does not support {name}@{job.worktime_range} (it has {name} {version})"
    missing = unmet_requirement(job.requirements, capabilities)
    if missing:
        return f"no worker meets the requirement {missing}"
    return None


def unschedulable_reason(job: "JobRecord", workers: list[Any], store: str) -> str | None:
    """Why none of the live ``workers`` (``WorkerInfo``) can run ``job``, as the store records it
    (``store``: how the message names the scheduler, never with a password), or ``None`` when one can."""
    reasons = [worker_can_run(job, w.worktimes, w.capabilities, w.categories) for w in workers]
    if any(r is None for r in reasons):
        return None
    if not workers:
        return (f"no worker is attached to the scheduler {store}; start one with "
                f"`dcp-worker --worktime {job.spec.worktime} --scheduler {store}` or run the job locally")
    return "; ".join(sorted(set(r for r in reasons if r))) + (
        f" (live workers: {len(workers)}); start a worker that has it, or change the job's worktime/requirements")


def _registration(job: "JobRecord") -> Any:
    from ..plugins import get_worktime

    try:
        return get_worktime(job.spec.worktime, job.worktime_range or None)
    except ValueError as e:  # a bad range
        raise WorktimeNotFound(str(e)) from None


def _choices_meeting(job: "JobRecord", reg: Any, config: Mapping[str, Any],
                     capabilities: Mapping[str, Any] | None) -> Iterator[tuple[str, str, dict]]:
    """Each (setting, value, config) among the worktime's ``choices`` that runs here and meets
    the job's requirements where ``config`` does not."""
    for name, values in reg.cls.choices.items():
        for value in values:
            if config.get(name) == value:
                continue
            candidate = {**config, name: value}
            probe = reg.probe(candidate)
            if probe.available and not unmet_requirement(job.requirements,
                                                         merge_capabilities(probe.capabilities, capabilities)):
                yield name, value, candidate


def local_config(job: "JobRecord", capabilities: Mapping[str, Any] | None = None) -> dict:
    """The settings this machine runs ``job``'s worktime with (``run_local``, ``exec()``): those
    given in the environment (``plugins.settings_from_env``), or, where the job's requirements
    ask for another value of a setting the environment leaves unset (``Worktime.choices``:
    ``requirements={"engine": {"quickjs": True}}`` on a machine that defaults to V8), the first
    value that meets them. A setting given in the environment is the owner's and stays."""
    from ..plugins import settings_from_env

    reg = _registration(job)
    config = settings_from_env(reg.cls)
    if not job.requirements:
        return config
    probe = reg.probe(config)
    if probe.available and not unmet_requirement(job.requirements,
                                                 merge_capabilities(probe.capabilities, capabilities)):
        return config
    for name, _value, candidate in _choices_meeting(job, reg, config, capabilities):
        if name not in config:
            return candidate
    return config


def check_runnable_here(job: "JobRecord", capabilities: Mapping[str, Any] | None = None,
                        config: Mapping[str, Any] | None = None) -> None:
    """Raise at once if this machine cannot run ``job``: ``WorktimeNotFound`` (not installed, no
    version in the range, its engine missing here) or ``EREQUIREMENTS``.

    ``capabilities``: extra ones the local worker adds; ``config``: the worktime's settings (by
    default, ``local_config(job)``, as ``run_local`` uses).
    """
    from ..plugins import setting_env

    reg = _registration(job)
    if config is None:
        config = local_config(job, capabilities)
    probe = reg.probe(config)
    if not probe.available:
        raise WorktimeNotFound(f"this machine cannot run {reg.name} jobs: {probe.unavailable}; run the job on a "
                               "worker that can (exec(local=False) with a dcp-worker attached)")
    caps = merge_capabilities(probe.capabilities, capabilities)
    missing = unmet_requirement(job.requirements, caps)
    if missing:
        # A setting given here that another of its values would meet: say which.
        hint = "".join(f"; it would run with {setting_env(name)}={value} (set here to {config[name]})"
                       for name, value, _ in _choices_meeting(job, reg, config, capabilities) if name in config)
        raise RequirementsError(
            f"this machine cannot run job {job.id}: its requirement {missing} is not met by the installed "
            f"{reg.name} {reg.version} (capabilities {caps}){hint}; relax job.requirements or run it on a worker "
            "that has them (exec(local=False) with a dcp-worker attached)")


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
