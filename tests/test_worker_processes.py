"""Workers in more than one process: a machine with more cores than one worker process keeps busy
splits them over helper worker processes (``scheduler/processes.py``)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from dcp_worktimes import compute
from dcp_worktimes.scheduler import open_scheduler
from dcp_worktimes.scheduler.processes import ENV_CORES_PER_PROCESS, helper_argv, shares
from dcp_worktimes.testing_scheduler import make_job


def test_cores_are_split_into_processes_this_ones_share_first(monkeypatch):
    assert shares(2) == [2] and shares(4) == [4]
    assert shares(16) == [4, 4, 4, 4] and shares(10) == [4, 3, 3]
    monkeypatch.setenv(ENV_CORES_PER_PROCESS, "1")
    assert shares(3) == [1, 1, 1]


def test_helper_command_lines_carry_the_workers_settings():
    argv = helper_argv(3, job="j1", worktimes=["map-basic"],
                       config={"map-basic": {"js-engine": "v8", "trusted": True}},
                       limits={"wall_time": 30.0, "memory": 2**30}, capabilities=["machine.gpu=false"])
    assert argv[argv.index("--cores") + 1] == "3" and "--helper" in argv and argv[argv.index("--job") + 1] == "j1"
    assert argv[argv.index("--memory-limit") + 1] == f"{2**30}B" and argv[argv.index("--wall-time") + 1] == "30.0"
    assert argv[argv.index("--js-engine") + 1] == "v8" and argv[argv.index("--trust-work") + 1] == "map-basic"


def test_dcp_worker_s_helpers_apply_the_limits_it_read(tmp_path):
    # The flags' text went to the helpers with a "B" added: 100MiB became "100MiBB" (read as
    # 100 MB, not MiB) and "off" became "offB", which a helper refused: it exited, was restarted
    # three times and the worker ran on fewer cores.
    env = {**os.environ, "DCP_SCHEDULER": f"sqlite:///{tmp_path}/jobs.db", ENV_CORES_PER_PROCESS: "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dcp_worktimes.cli", "--worktime", "echo", "--cores", "2",
                             "--memory-limit", "100MiB", "--output-limit", "off", "--wall-time", "1m"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 30
        helpers: list = []
        while not helpers and time.monotonic() < end:
            helpers = [p for p in psutil.Process(proc.pid).children() if "--helper" in p.cmdline()]
            time.sleep(0.1)
        assert helpers, "no helper process started"
        argv = helpers[0].cmdline()
        assert argv[argv.index("--memory-limit") + 1] == f"{100 * 2**20}B"
        assert argv[argv.index("--output-limit") + 1] == "off" and argv[argv.index("--wall-time") + 1] == "60.0"
        time.sleep(2.0)
        assert helpers[0].is_running() and helpers[0].status() != psutil.STATUS_ZOMBIE  # it took the flags
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_exec_on_more_cores_than_one_process_drives_uses_helper_processes(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_CORES_PER_PROCESS, "1")
    url = f"sqlite:///{tmp_path}/jobs.db"
    job = compute.for_(range(200), '{"pid": true, "sleep": 0.03}', worktime="echo", scheduler=url)
    results = job.exec(cores=2, progress=False)
    assert [v[0] for v in results] == list(range(200))
    with open_scheduler(url) as s:
        workers = {r.worker for r in s.results(job.id).values()}
    assert len(workers) == 2  # this process's worker and one helper took slices
    time.sleep(0.5)
    helpers = [p for p in psutil.Process().children() if "--helper" in " ".join(p.cmdline())]
    assert helpers == []  # gone with the job


def test_a_helper_hands_its_slices_back_when_its_parent_dies(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/jobs.db"
    with open_scheduler(url) as s:
        job = make_job("slow", 40)
        job.spec.work = '{"sleep": 0.2}'
        s.submit(job)
    env = {**os.environ, ENV_CORES_PER_PROCESS: "1", "DCP_PROGRESS": "0"}
    parent = subprocess.Popen([sys.executable, "-m", "dcp_worktimes.cli", "--scheduler", url, "--cores", "2",
                               "--worktime", "echo"], env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        helpers: list = []
        while time.monotonic() < deadline and not helpers:
            helpers = [p for p in psutil.Process(parent.pid).children() if "--helper" in " ".join(p.cmdline())]
            time.sleep(0.1)
        assert helpers, "the worker started no helper process"
        with open_scheduler(url) as s:
            while s.status("slow")["computed"] < 4 and time.monotonic() < deadline:
                time.sleep(0.1)
        os.killpg(parent.pid, signal.SIGKILL)  # the whole worker, helpers included, dies at once...
        parent.wait(10)
        psutil.wait_procs(helpers, timeout=10)
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in helpers)
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
    # ...and a new worker finishes the job: nothing lost, nothing twice.
    with open_scheduler(url) as s:
        from dcp_worktimes.scheduler.worker import Worker

        Worker(s, ["echo"], cores=2, lease_seconds=2).run(until_idle=True)
        assert s.status("slow")["status"] == "complete" and sorted(s.results("slow")) == list(range(40))


STOP_UNDER_ITS_OWN_LOCK = """
import os, signal, threading, time
from dcp_worktimes.scheduler.processes import stopped_by
stop = threading.Event()
with stopped_by(stop, signal.SIGTERM):
    with stop._cond:  # the main thread holds the event's lock, as inside stop.wait() or stop.set()
        for _ in range(3):  # several in a row, as a dead parent's death signal comes (once per thread)
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # Python runs the handler here, between two bytecodes
    assert stop.wait(5)
print("stopped")
"""


def test_a_stop_signal_arriving_while_the_main_thread_holds_the_stop_events_lock_stops_the_worker():
    # A handler calling stop.set() waited for that lock for ever: a helper whose parent died hung
    # so, still serving jobs (it outlived the test that killed its parent by an hour).
    r = subprocess.run([sys.executable, "-c", STOP_UNDER_ITS_OWN_LOCK], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == "stopped", r.stderr


def test_a_helper_that_dies_is_started_again_and_the_log_says_so_with_the_time(tmp_path):
    # Its death went unnoticed: its cores sat idle for the rest of the worker's life, and the log
    # still said "and 1 more worker process".
    env = {**os.environ, ENV_CORES_PER_PROCESS: "1", "DCP_SCHEDULER": f"sqlite:///{tmp_path}/jobs.db"}
    parent = subprocess.Popen([sys.executable, "-m", "dcp_worktimes.cli", "--cores", "2", "--worktime", "echo"],
                              env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        def helpers() -> list:
            found = []
            for p in psutil.Process(parent.pid).children():
                try:
                    if "--helper" in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                        found.append(p)
                except psutil.Error:  # the dead one, not reaped yet
                    pass
            return found

        deadline = time.monotonic() + 60
        while not helpers() and time.monotonic() < deadline:
            time.sleep(0.1)
        (first,) = helpers()
        first.kill()
        while time.monotonic() < deadline and [p.pid for p in helpers()] in ([], [first.pid]):
            time.sleep(0.1)
        (second,) = helpers()
        assert second.pid != first.pid
    finally:
        os.killpg(parent.pid, signal.SIGTERM)
        _, err = parent.communicate(timeout=30)
    line = next(l for l in err.splitlines() if "helper worker process 1" in l)
    assert re.match(rf"\d\d:\d\d:\d\d helper worker process 1 \(pid {first.pid}\) was killed by signal 9; started another "
                    rf"\(pid {second.pid}\)$", line), err


NESTED_STOPS = """
import os, signal, threading, time
from dcp_worktimes.scheduler.processes import stopped_by
outer, inner = threading.Event(), threading.Event()
with stopped_by(outer, signal.SIGINT, signal.SIGTERM):
    with stopped_by(inner, signal.SIGTERM):
        os.kill(os.getpid(), signal.SIGINT)  # not the inner block's: the outer one still hears it
        assert outer.wait(5) and not inner.is_set()
    os.kill(os.getpid(), signal.SIGTERM)
    assert outer.wait(5)
print("heard")
"""


def test_a_stop_signal_an_inner_block_does_not_want_still_reaches_the_outer_one():
    r = subprocess.run([sys.executable, "-c", NESTED_STOPS], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == "heard", r.stderr
