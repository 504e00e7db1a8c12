"""The echo worktime runs the conformance kit, plus checks of its own actions."""

from __future__ import annotations

import json

import pytest

from dcp_worktimes.limits import Limits
from dcp_worktimes.runner import EvaluatorPool
from dcp_worktimes.testing import Sample, WorktimeConformance, run


class TestEchoConformance(WorktimeConformance):
    @pytest.fixture
    def worktime_name(self):
        return "echo"

    @pytest.fixture
    def hello_work(self):
        return Sample(work="", datum={"hello": ["world", 2**80, b"\x00\xff"]}, expected={"hello": ["world", 2**80, b"\x00\xff"]})

    @pytest.fixture
    def progress_work(self):
        return Sample(work=json.dumps({"sleep": 1.5}), datum=7, expected=7)

    @pytest.fixture
    def bad_work(self):
        return '{"explode": true}'

    @pytest.fixture
    def hostile_works(self):
        return {
            "infinite_loop": json.dumps({"spin": -1}),
            "memory_balloon": json.dumps({"allocate": 1024}),
            "huge_output": json.dumps({"output": 8}),
            "never_progress": json.dumps({"silent": 60}),
            "throw": json.dumps({"throw": "on purpose"}),
            "unserializable": json.dumps({"unserializable": True}),
            "deep_recursion": json.dumps({"crash": "segfault"}),  # echo's stand-in: a crashed stack
            "cpu_burn": json.dumps({"spin": 10}),
            "crash": json.dumps({"crash": "abort"}),
        }


@pytest.fixture(scope="module")
def pool():
    with EvaluatorPool(cores=2) as p:
        yield p


def test_console_lines_collapse_and_emit_reaches_the_deployer(pool):
    events = []
    work = json.dumps({"console": ["same", "same", "same", "other"], "emit": {"partial": [1, 2]}})
    out = run(pool, "echo", work, 5, events=events)
    assert out.ok and out.value == 5
    console = [p for k, p in events if k == "console"]
    assert console == [{"level": "log", "message": "same", "same": 3}, {"level": "log", "message": "other", "same": 1}]
    assert ("emit", {"name": "partial", "value": [1, 2]}) in events


def test_crash_fails_only_its_slice(pool):
    from dcp_worktimes.worktime import JobSpec

    job = JobSpec(id="crash-one", worktime="echo", work=json.dumps({"crash": "abort", "when": 3}))
    outs = {o.number: o for o in pool.map(job, [(i, i) for i in range(8)])}
    assert outs[3].error.code == "ECRASH" and "SIGABRT" in outs[3].error.message
    assert all(outs[i].ok and outs[i].value == i for i in range(8) if i != 3)


def test_cpu_limit(pool):
    out = run(pool, "echo", json.dumps({"spin": 10}), 1, limits=Limits.parse(cpu_time="0.5s"))
    assert out.error.code == "ECPULIMIT"
