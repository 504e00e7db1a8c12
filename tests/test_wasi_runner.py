"""The ``wasi`` worktime through the sandboxed runner and the ``dcp-worker slice`` CLI."""

from __future__ import annotations

import json
import os
import shutil
import sys
import subprocess
import time
from pathlib import Path

import pytest

from dcp_worktimes.limits import Limits
from dcp_worktimes.runner import EvaluatorPool, run_slice
from dcp_worktimes.worktime import JobSpec

PROGRAMS = Path(__file__).resolve().parent / "wasi_programs"
HOSTILE = Path(__file__).resolve().parents[1] / "sandbox" / "hostile"


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DCP_WORKTIMES_CACHE", str(tmp_path_factory.getbasetemp() / "wasm-cache"))


def job(work, limits=Limits(), **kw) -> JobSpec:
    return JobSpec(id=f"wasi-{time.monotonic_ns()}", worktime="wasi", work=work, limits=limits, **kw)


def test_run_slice_returns_the_modules_json_and_console(build):
    events: list = []
    out = run_slice(job(build("sum_json")), [1, 2, 3], on_event=lambda *e: events.append(e))
    assert out.ok, out.error
    assert out.value == {"sum": 6, "count": 3, "argv": []}
    assert any(kind == "console" and p["message"] == "summed 3 numbers" for kind, _, p in events)


def test_pool_runs_many_slices_and_survives_failing_ones(build):
    j = job(build("sum_json"))
    with EvaluatorPool(cores=2) as pool:
        outs = sorted(pool.map(j, [(i, list(range(i))) for i in range(30)]), key=lambda o: o.number)
        assert [o.value["sum"] for o in outs] == [sum(range(i)) for i in range(30)]
        bomb = next(pool.map(job(build("memory_balloon", HOSTILE / "c"), Limits.parse(memory="48MiB")), [(0, None)]))
        assert bomb.error.code == "EMEMORYLIMIT"
        again = next(pool.map(j, [(0, [5])]))
        assert again.ok and again.value["sum"] == 5


def test_infinite_loop_through_the_runner_stops_near_its_wall_limit(build):
    out = run_slice(job(build("infinite_loop"), Limits.parse(wall_time="1s")), None)
    assert out.error.code == "ESLICETOOSLOW"
    assert out.wall_time < 2.0, out.wall_time


def test_cli_slice_prints_the_modules_json_result(build, tmp_path):
    exe = (shutil.which("dcp-worker", path=os.path.dirname(sys.executable)) or shutil.which("dcp-worker")
           or pytest.fail("dcp-worker is not installed in this environment (pip install -e .)"))
    prog = tmp_path / "prog.wasm"
    prog.write_bytes(build("sum_json"))
    proc = subprocess.run([exe, "slice", "--worktime", "wasi", "--work", str(prog), "--datum", "[1,2,3]"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"sum": 6, "count": 3, "argv": []}


def test_cli_slice_reports_the_exit_status(build, tmp_path):
    exe = (shutil.which("dcp-worker", path=os.path.dirname(sys.executable)) or shutil.which("dcp-worker")
           or pytest.fail("dcp-worker is not installed in this environment (pip install -e .)"))
    prog = tmp_path / "exit3.wasm"
    prog.write_bytes(build("exit3"))
    proc = subprocess.run([exe, "slice", "--worktime", "wasi", "--work", str(prog)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "status 3" in proc.stderr and "giving up" in proc.stderr


def test_a_guest_sleeping_in_a_wasi_call_is_stopped_by_the_supervisor(build):
    # The epoch only interrupts running wasm code; the evaluator is killed from outside instead.
    started = time.monotonic()
    out = run_slice(job(build("sleep"), Limits.parse(wall_time="1s")), None)
    assert out.error is not None and out.error.code == "ESLICETOOSLOW", out.error
    assert time.monotonic() - started < 10
