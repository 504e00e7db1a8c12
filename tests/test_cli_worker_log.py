"""``dcp-worker`` as its owner runs it: what it prints while serving, and its exit
statuses, against real worker processes."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import pytest

from dcp_worktimes import cli as cli_module
from dcp_worktimes import compute

FAIL_THIRD = '{"throw": "boom", "when": 3}'


def dcp_worker(store: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "DCP_SCHEDULER": store})


def deploy(n: int, work: str = "", **settings) -> str:
    return compute.for_({"start": 1, "end": n}, work, worktime="echo", **settings).deploy(local=False)


def test_a_serving_worker_logs_jobs_failures_and_a_summary(store):
    job_id = deploy(50, FAIL_THIRD, public={"name": "demo"})
    r = dcp_worker(store, "--until-idle", "-w", "echo", "--cores", "1")
    assert r.returncode == 0, r.stderr
    log = r.stderr
    start = log.splitlines()[0]
    assert "serving echo 1.0.0 on 1 core;" in start and "scheduler sqlite:///" in start
    assert "<Sqlite" not in log and "1 cores" not in log  # no Python repr, no "1 cores"
    short = job_id[:8]
    assert f"job {short} started: echo, 50 slices, 'demo'" in log
    assert f"job {short} slice 2 failed: EUNCAUGHT: boom" in log
    finished = next(line for line in log.splitlines() if f"job {short} finished here" in line)
    assert "49 computed, 1 failed (EUNCAUGHT x1)" in finished and "slices/s" in finished and "job failed" in finished
    assert "stopped after" in log and "49 slices computed, 1 failed, in 1 job" in log
    assert re.match(r"\d\d:\d\d:\d\d ", start)  # every line says when
    assert r.stdout == ""  # stdout stays free for machine output


def test_serving_an_in_memory_store_is_refused(store):
    # Nobody could deploy to it: the worker waited for ever on a store of its own.
    r = dcp_worker(store, "--until-idle", "-w", "echo", "--scheduler", "sqlite://:memory:", timeout=30)
    assert r.returncode == 2 and "in-memory store" in r.stderr and "sqlite:///path/jobs.db" in r.stderr


def test_trusting_a_worktime_the_worker_does_not_serve_says_it_does_nothing(store):
    r = dcp_worker(store, "--until-idle", "-w", "echo", "--trust-work", "python")
    assert r.returncode == 0, r.stderr
    assert "--trust-work python does nothing: this worker serves only echo" in r.stderr
    served = dcp_worker(store, "--until-idle", "-w", "echo", "--trust-work", "echo")
    assert "does nothing" not in served.stderr


def test_verbose_logs_every_slice_and_quiet_only_failures(store):
    deploy(3, FAIL_THIRD)
    verbose = dcp_worker(store, "--until-idle", "-w", "echo", "-v").stderr
    assert sorted(re.findall(r"slice (\d): ok in", verbose)) == ["0", "1"] and "slice 2 failed: EUNCAUGHT" in verbose
    deploy(3, FAIL_THIRD)
    quiet = dcp_worker(store, "--until-idle", "-w", "echo", "-q").stderr
    assert "started:" not in quiet and "finished here" not in quiet
    assert "slice 2 failed: EUNCAUGHT: boom" in quiet and "2 slices computed, 1 failed" in quiet
    both = dcp_worker(store, "--until-idle", "-v", "-q")
    assert both.returncode == 2 and "contradict" in both.stderr


def test_the_live_status_line_on_a_terminal(store):
    deploy(30, '{"sleep": 0.05}')
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "dcp_worktimes.cli", "--until-idle", "-w", "echo", "--cores", "1"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower,
                            env={**os.environ, "DCP_SCHEDULER": store, "COLUMNS": "150"})
    os.close(follower)
    out = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 5)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the worker closed the terminal
            break
        if not chunk:
            break
        out += chunk
    proc.wait(30)
    os.close(leader)
    text = out.decode("utf-8", "replace")
    assert proc.returncode == 0
    assert "serving echo on 1 core" in text and "slices/s" in text and "leased" in text  # the status line
    assert "\x1b[2K" in text  # redrawn in place
    assert "30 slices computed, 0 failed" in text  # and the summary stays


@pytest.mark.parametrize("args, status", [
    (["worktimes", "--json"], 0),
    (["slice", "-w", "echo", "--work", FAIL_THIRD, "--datum", "3"], 1),  # the work throws
    (["slice", "-w", "echo", "--work", '{"bogus": 1}'], 1),  # EBADWORK: the work is unusable
    (["slice", "-w", "nope", "--work", ""], 2),  # ENOWORKTIME
    (["slice", "-w", "echo", "--work", "", "--datum", "[1,"], 2),  # bad --datum
    (["--no-such-flag"], 2),
    (["--category", "not a word", "--until-idle"], 2),
    (["resume", "0123456789abcdef"], 2),  # ENOJOB
    (["jobs", "--scheduler", "sqlite:///no/such/dir/jobs.db"], 2),
])
def test_exit_statuses(store, args, status):
    deploy(1)  # the store exists
    r = dcp_worker(store, *args)
    assert r.returncode == status, (r.returncode, r.stderr)
    if status == 2:
        assert "Traceback" not in r.stderr


def test_a_failed_or_cancelled_job_exits_1_when_resumed(store):
    failed = deploy(3, FAIL_THIRD)
    r = dcp_worker(store, "resume", failed)
    assert r.returncode == 1 and "slice 2: EUNCAUGHT: boom" in r.stderr
    cancelled = deploy(3)
    compute.resume(cancelled).cancel("enough")
    r = dcp_worker(store, "resume", cancelled)
    assert r.returncode == 1 and "cancelled" in r.stderr


def test_an_internal_error_exits_3_with_the_traceback(store, monkeypatch, capsys):
    def broken(**_kw):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli_module.worktimes_cmd, "callback", broken)
    monkeypatch.setattr(sys, "argv", ["dcp-worker", "worktimes"])
    with pytest.raises(SystemExit) as exit_info:
        cli_module.main()
    assert exit_info.value.code == 3
    err = capsys.readouterr().err
    assert "RuntimeError: a bug" in err and "internal error" in err


def test_ctrl_c_exits_130_during_a_command_and_0_when_serving(store):
    slow = subprocess.Popen([sys.executable, "-m", "dcp_worktimes.cli", "slice", "-w", "echo", "--work", '{"sleep": 60}'],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    serving = subprocess.Popen([sys.executable, "-m", "dcp_worktimes.cli", "--scheduler", store, "-w", "echo"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import psutil

    from dcp_worktimes.scheduler import open_scheduler

    # Signal each once it is past its start-up (a slow machine may take longer than any fixed
    # sleep): the command once its slice runs in an evaluator, the worker once it has registered.
    s = open_scheduler(store)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (psutil.Process(slow.pid).children() and s.workers()):
        time.sleep(0.05)
    s.close()
    time.sleep(0.2)
    for proc in (slow, serving):
        proc.send_signal(signal.SIGINT)
    assert slow.wait(30) == 130
    assert serving.wait(30) == 0 and "stopped after" in serving.stderr.read()


def test_help_and_readme_agree_on_the_exit_statuses():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    help_text = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", "--help"], capture_output=True, text=True,
                               timeout=60).stdout
    for code in cli_module.EXIT_STATUSES:
        assert re.search(rf"^\| {code} \|", readme, re.M), f"README lacks exit status {code}"
        assert re.search(rf"^\s+{code}\s", help_text, re.M), f"--help lacks exit status {code}"
    for flag in ("--category", "--verbose", "--quiet", "--until-idle", "--cores"):
        assert flag in help_text, flag
    for name in cli_module.cli.commands:
        assert f"dcp-worker {name}" in readme and name in help_text, name
    commands = (cli_module.cli, *cli_module.cli.commands.values())
    flags = {opt for command in commands for param in command.params for opt in param.opts
             if opt.startswith("--") and not (param.name or "").startswith(cli_module._SETTING_PREFIX)
             and not getattr(param, "hidden", False)}  # hidden: internal (helper worker processes)
    flags.add("--trust-work")  # added at start-up with the installed worktimes' settings
    missing = sorted(flag for flag in flags if not re.search(re.escape(flag) + r"\b", readme))
    assert not missing, f"flags in --help that the README does not mention: {missing}"


def test_a_retryable_failure_is_not_counted_as_a_failed_slice():
    # "40 computed, 6 failed (ECRASH x6)" for a job that completed with no failure: each evaluator
    # death was an attempt the scheduler ran again.
    import io

    from rich.console import Console

    from dcp_worktimes.scheduler.base import Report
    from dcp_worktimes.worker_log import WorkerLog

    out = io.StringIO()
    log = WorkerLog(console=Console(file=out, width=300), live=False)
    crash = {"code": "ECRASH", "message": "the evaluator died (SIGKILL)"}
    boom = {"code": "EUNCAUGHT", "message": "boom"}
    log.slices_done("j" * 32, Report("j" * 32, "l", [0, 1, 2], [True, False, False], [b"\x01", None, None],
                                     [None, crash, boom], [0.1] * 3, [0.1] * 3, [1] * 3, [1] * 3))
    log.job_finished("j" * 32, {"status": "running"})
    log.stop()
    text = out.getvalue()
    assert "slice 1 failed (retryable: the scheduler runs it again until the job's max_attempts): ECRASH" in text
    assert "slice 2 failed: EUNCAUGHT: boom" in text
    assert "1 computed, 1 failed, 1 retryable failures (ECRASH x1, EUNCAUGHT x1)" in text or \
        "1 computed, 1 failed, 1 retryable failures (EUNCAUGHT x1, ECRASH x1)" in text
    assert "1 slices computed, 1 failed, 1 retryable failures, in 0 jobs" in text
