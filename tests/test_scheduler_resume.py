"""Acceptance: SIGKILL the deployer mid-job, ``compute.resume(id).exec()`` in a new process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from dcp_worktimes.scheduler import open_scheduler
from dcp_worktimes.values import unpack

pytest.importorskip("dcp_worktime_echo")

N = 120

DEPLOYER = textwrap.dedent("""
    import sys
    from dcp_worktimes import compute
    job = compute.for_(0, %d, '{"sleep": 0.03}', worktime="echo", scheduler=sys.argv[1])
    job.deploy()
    print(job.id, flush=True)
    job.exec(cores=2)
    print("finished", flush=True)
""" % (N - 1))

RESUMER = textwrap.dedent("""
    import json, sys
    from dcp_worktimes import compute
    from dcp_worktimes.scheduler.sqlite import SqliteScheduler

    # Observe (not replace) which slices this process leases, i.e. runs again.
    leased = []
    real_lease = SqliteScheduler.lease
    def lease(self, *args, **kwargs):
        out = real_lease(self, *args, **kwargs)
        leased.extend(n for block in out for n in block.numbers)
        return out
    SqliteScheduler.lease = lease

    results = compute.resume(sys.argv[2], scheduler=sys.argv[1]).exec(cores=2)
    print(json.dumps({"values": list(results), "leased": leased}))
""")


def test_kill_deployer_then_resume_in_new_process(tmp_path):
    url = f"sqlite:///{tmp_path}/jobs.db"
    deployer = subprocess.Popen([sys.executable, "-c", DEPLOYER, url], stdout=subprocess.PIPE, text=True,
                                start_new_session=True)
    try:
        job_id = deployer.stdout.readline().strip()
        assert job_id, "the deployer printed no job id"
        s = open_scheduler(url)
        deadline = time.monotonic() + 120
        while s.status(job_id)["computed"] < 30 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(deployer.pid, signal.SIGKILL)  # the deployer, its local worker and its evaluators
        deployer.wait(10)
    finally:
        if deployer.poll() is None:
            os.killpg(deployer.pid, signal.SIGKILL)
    before = s.results(job_id)
    assert 30 <= len(before) < N, f"kill came too late or too early: {len(before)} results"
    assert s.status(job_id)["status"] == "running"

    out = subprocess.run([sys.executable, "-c", RESUMER, url, job_id], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["values"] == list(range(N))  # same final results
    leased = report["leased"]
    assert not set(leased) & set(before), "completed slices were run again"
    assert set(leased) | set(before) == set(range(N))
    after = s.results(job_id)
    assert sorted(after) == list(range(N))
    for n, r in before.items():  # the results computed before the kill are the ones kept
        assert after[n].value == r.value and unpack(after[n].value) == n
    assert s.status(job_id)["status"] == "complete"
    s.close()
