"""``Worktime.cold_start``: a first job that will wait minutes (a compile the cache lacks) is said
before it starts, by ``dcp-worker``, ``dcp-worker slice`` and ``exec()``."""

from __future__ import annotations

import logging

import pytest
from click.testing import CliRunner

from dcp_worktimes import cli, compute
from dcp_worktimes.plugins import get_worktime

NOTE = "building the probe engine once on this machine (a test's note)"


@pytest.fixture(scope="module", autouse=True)
def probes():
    from dcp_worktimes.plugins import registry

    from . import probe_worktime

    registry().register_module(probe_worktime, "tests-cold-start")


def test_slice_says_what_the_first_job_waits_for_then_runs_it(store):
    r = CliRunner().invoke(cli.cli, ["slice", "-w", "cold-probe", "--work", "def work(x): return x + 1", "--datum", "41"])
    assert r.exit_code == 0, r.output
    assert f"dcp-worker: cold-probe: {NOTE}" in r.stderr and r.stdout.strip() == "42"


def test_slice_with_a_bad_argument_fails_before_saying_it(store):
    r = CliRunner().invoke(cli.cli, ["slice", "-w", "cold-probe", "--work", "def work(x): return x", "--datum", "{"])
    assert r.exit_code != 0 and "--datum" in r.stderr
    assert NOTE not in r.stderr  # nothing will wait: the command ends at once


def test_the_serving_worker_says_it_in_its_start_lines(store):
    r = CliRunner().invoke(cli.cli, ["--worktime", "cold-probe", "--worktime", "echo", "--until-idle", "--cores", "1"])
    assert r.exit_code == 0, r.output
    assert f"cold-probe: its first job will wait: {NOTE}" in r.stderr
    assert "echo: its first job will wait" not in r.stderr  # echo has nothing to say


def test_exec_says_it_as_a_warning_of_the_package_logger(store, caplog):
    job = compute.for_([1, 2], "def work(x): return x * 2", worktime="cold-probe")
    with caplog.at_level(logging.WARNING, logger="dcp_worktimes"):
        assert list(job.exec(cores=1)) == [2, 4]
    assert [r.getMessage() for r in caplog.records if NOTE in r.getMessage()] == [f"dcp-worktimes: cold-probe: {NOTE}"]


def test_exec_on_attached_workers_does_not_say_it(store, caplog):
    """Remote workers may well be warm: the deployer's machine says nothing about them."""
    job = compute.for_([1], "def work(x): return x", worktime="cold-probe")
    job.worker_wait = 0.5
    with caplog.at_level(logging.WARNING, logger="dcp_worktimes"):
        with pytest.raises(compute.RequirementsError):  # no worker attached: the job gives up
            job.exec(local=False, timeout=30)
    assert not [r for r in caplog.records if NOTE in r.getMessage()]


@pytest.mark.parametrize("name", ["cold-start-raises", "echo"])
def test_a_worktime_with_nothing_to_say_or_a_broken_note_says_nothing(name):
    assert get_worktime(name).cold_start() is None


def test_python_says_it_compiles_cpython_when_the_cache_lacks_it(tmp_path, monkeypatch):
    from dcp_worktimes.worktimes.python import compiled

    try:
        compiled.find_runtime()
    except compiled.RuntimeMissing as e:
        pytest.skip(f"the python worktime's runtime is not installed: {e}")
    monkeypatch.setattr(compiled, "_done", None)  # as in a process that has not loaded it yet
    monkeypatch.setenv("DCP_WORKTIMES_CACHE", str(tmp_path))
    note = get_worktime("python").cold_start()
    assert note is not None and "compiling CPython" in note and "dcp-worker warmup --worktime python" in note


def test_python_says_nothing_once_compiled(warm):
    assert get_worktime("python").cold_start() is None
