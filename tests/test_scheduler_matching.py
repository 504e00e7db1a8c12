"""Requirements (nested booleans, False = must not have) and worktime/semver matching."""

from __future__ import annotations

import pytest

from dcp_worktimes.scheduler.matching import merge_capabilities, requirements_met, unmet_requirement, worker_can_run
from dcp_worktimes.testing_scheduler import make_job


@pytest.mark.parametrize(
    "requirements, capabilities, missing",
    [
        ({}, {}, None),
        ({"gpu": True}, {"gpu": True}, None),
        ({"gpu": True}, {}, "gpu=true"),
        ({"gpu": False}, {}, None),
        ({"gpu": False}, {"gpu": True}, "gpu=false"),
        ({"machine": {"gpu": True}}, {"machine": {"gpu": True, "cores": 8}}, None),
        ({"machine": {"gpu": True}}, {"machine": {}}, "machine.gpu=true"),
        ({"machine": {"gpu": True}}, {}, "machine.gpu=true"),
        ({"machine": {"gpu": False}}, {}, None),  # a missing section has nothing
        ({"machine": {"gpu": False}}, {"machine": True}, None),  # a non-dict section has no sub-keys
        ({"python": {"numpy": True}, "gpu": False}, {"python": {"numpy": "1.26"}}, None),  # truthy values count
        ({"a": {"b": {"c": False, "d": True}}}, {"a": {"b": {"d": 1}}}, None),
        ({"a": {"b": {"c": False, "d": True}}}, {"a": {"b": {"c": 1, "d": 1}}}, "a.b.c=false"),
    ],
)
def test_requirements(requirements, capabilities, missing):
    assert unmet_requirement(requirements, capabilities) == missing
    assert requirements_met(requirements, capabilities) is (missing is None)


def test_worker_can_run_names_the_problem():
    job = make_job("j", 1, worktime_range="^1.2.0", requirements={"gpu": True})
    assert "no worker has the worktime 'echo'" in worker_can_run(job, {"map-basic": "1.0.0"}, {"gpu": True})
    assert "echo@^1.2.0" in worker_can_run(job, {"echo": "1.1.9"}, {"gpu": True})
    assert "gpu=true" in worker_can_run(job, {"echo": "1.4.0"}, {})
    assert worker_can_run(job, {"echo": "1.4.0"}, {"gpu": True}) is None
    assert worker_can_run(make_job("any", 1), {"echo": "7.0.0"}, {}) is None  # no range: any version


def test_merge_capabilities_is_deep():
    assert merge_capabilities({"a": {"x": True}, "b": 1}, None, {"a": {"y": False}, "b": 2}) == \
        {"a": {"x": True, "y": False}, "b": 2}
