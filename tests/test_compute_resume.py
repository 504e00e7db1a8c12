"""V16: ``compute.resume(job_id)`` in a new process after the deployer was SIGKILLed mid-job
gives the same final results, and slices already computed are not run again.

The deployer runs in a subprocess (``exec()`` with local evaluators); once some results are
stored it is killed with SIGKILL. This test process then resumes the job. Every slice emits a
custom ``ran`` event when it runs: the resumed run must emit none for the slices whose results
were stored before the kill.

A deployer killed while it still streams a generator's inputs leaves a job nobody can finish:
the store ends it once its feed lease lapses, keeping its results. ``compute.resume`` of something
that is not a job id says what job ids are.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from dcp_worktimes import compute
from dcp_worktimes.plugins import get_worktimes
from dcp_worktimes.scheduler import open_scheduler
from dcp_worktimes.values import unpack

N = 40

WORKS = {
    "echo": json.dumps({"sleep": 0.25, "emit": {"ran": 1}}),
    "map-basic": "function(i){ const t = Date.now(); while (Date.now() - t < 250) { progress() } "
                 "work.emit('ran', i); return i }",
    "python": "def slow(i):\n    import time\n    time.sleep(0.25)\n    progress()\n    work.emit('ran', i)\n    return i\n",
}

DEPLOYER = textwrap.dedent("""
    import sys
    from dcp_worktimes import compute
    worktime, work, idfile, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    job = compute.for_(0, n - 1, work, worktime=worktime, cores=1, progress=False)
    job.on("accepted", lambda ev: open(idfile, "w").write(ev.id))
    job.exec()
    print("finished before being killed")
""")


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.mark.parametrize("worktime", sorted(WORKS))
def test_v16_resume_after_sigkill(tmp_path, monkeypatch, worktime):
    if worktime not in get_worktimes():
        pytest.skip(f"worktime {worktime} is not installed")
    url = f"sqlite:///{tmp_path}/jobs.db"
    monkeypatch.setenv("DCP_SCHEDULER", url)
    monkeypatch.setenv("DCP_PROGRESS", "0")
    idfile = tmp_path / "job-id.txt"
    proc = subprocess.Popen([sys.executable, "-c", DEPLOYER, worktime, WORKS[worktime], str(idfile), str(N)],
                            env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        job_id = _wait_for(lambda: idfile.exists() and idfile.read_text(), 60, "the job to be accepted")
        with open_scheduler(url) as s:
            _wait_for(lambda: s.status(job_id)["computed"] >= 4, 90, "some results")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            before = s.results(job_id)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    done_before = {n for n, rep in before.items() if rep.ok}
    assert 4 <= len(done_before) < N

    job = compute.resume(job_id)
    reran = []
    job.work.on("ran", lambda ev: reran.append(ev.sliceNumber))
    results = job.exec(cores=2)
    assert results == list(range(N))
    assert results.keys() == [str(i) for i in range(N)]
    assert not (set(reran) & done_before), f"slices {sorted(set(reran) & done_before)} were computed twice"
    assert set(reran) | done_before == set(range(N))


FEEDER = textwrap.dedent("""
    import sys, time
    from dcp_worktimes import compute
    from dcp_worktimes.compute import deploy
    deploy.FEED_LEASE, deploy.FEED_REFRESH, deploy.STREAM_BATCH = float(sys.argv[2]), 0.1, 1

    def endless():  # a slow source that never ends: only this process could send the rest
        i = 0
        while True:
            yield i
            i += 1
            time.sleep(0.2)

    job = compute.for_(endless(), "", worktime="echo", cores=1, progress=False)
    job.on("accepted", lambda ev: open(sys.argv[1], "w").write(ev.id))
    job.exec()
""")


def test_a_deployer_killed_mid_stream_ends_its_job_with_the_reason(tmp_path, monkeypatch):
    """The deployer of a never-ending stream is SIGKILLed: nothing will ever close its input. Once
    its feed lease has lapsed, the next worker's lease call ends the job (cancelled, saying why),
    the results it computed stay, and resuming it still says why it cannot be."""
    from dcp_worktimes.errors import DcpError
    from dcp_worktimes.scheduler.base import feed_lost_reason

    feed_lease = 1.5
    url = f"sqlite:///{tmp_path}/jobs.db"
    monkeypatch.setenv("DCP_SCHEDULER", url)
    monkeypatch.setenv("DCP_PROGRESS", "0")
    idfile = tmp_path / "job-id.txt"
    proc = subprocess.Popen([sys.executable, "-c", FEEDER, str(idfile), str(feed_lease)], env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        job_id = _wait_for(lambda: idfile.exists() and idfile.read_text(), 30, "the job to be accepted")
        with open_scheduler(url) as s:
            def poll() -> str:
                """Lease as a worker polling the store would (which runs the reclaim); the job's status."""
                s.return_slices(s.lease("w-after", {"echo": "1.0.0"}, {}, 1, 30))
                return s.status(job_id)["status"]

            _wait_for(lambda: s.status(job_id)["computed"] >= 3, 30, "some results")
            time.sleep(feed_lease + 0.5)  # alive for longer than its feed lease: its renewals keep the job
            assert poll() == "running"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            killed = time.monotonic()
            _wait_for(lambda: poll() != "running", feed_lease + 5, "the job to end")
            assert time.monotonic() - killed < feed_lease + 1.5  # the lease, plus a reclaim interval
            st = s.status(job_id)
            computed = s.results(job_id)
            (summary,) = s.job_summaries()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert st["status"] == "cancelled" and st["total"] is None
    assert (summary["status"], summary["reason"]) == ("cancelled", st["reason"])
    said = re.fullmatch(r"the deployer stopped while sending its input stream \((\d+) inputs had arrived\); "
                        r"the rest existed only in that process: deploy the job again", st["reason"])
    assert said and st["reason"] == feed_lost_reason(int(said[1]))
    assert int(said[1]) >= st["distributed"] >= len(computed) >= 3
    assert all(rep.ok and unpack(rep.value) == n for n, rep in computed.items())  # computed before: kept
    with pytest.raises(DcpError, match="input stream was not fully sent") as info:
        compute.resume(job_id)
    assert info.value.code == "ENORESUME"


def test_a_sqlite_store_goes_by_the_deployer_s_process_on_its_machine(tmp_path, monkeypatch):
    """Its job is not ended while the deployer lives, stopped past its feed lease (Ctrl-Z, a
    machine asleep), and is ended as soon as it dies, long before the lease would lapse."""
    url = f"sqlite:///{tmp_path}/jobs.db"
    monkeypatch.setenv("DCP_SCHEDULER", url)
    monkeypatch.setenv("DCP_PROGRESS", "0")
    idfile = tmp_path / "job-id.txt"

    def start(lease: float) -> tuple[subprocess.Popen, str]:
        idfile.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", FEEDER, str(idfile), str(lease)], env=dict(os.environ),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return proc, _wait_for(lambda: idfile.exists() and idfile.read_text(), 30, "the job to be accepted")

    with open_scheduler(url) as s:
        def poll(job_id: str) -> str:
            s.return_slices(s.lease("w-after", {"echo": "1.0.0"}, {}, 1, 30))
            return s.status(job_id)["status"]

        proc, job_id = start(0.5)
        try:
            os.kill(proc.pid, signal.SIGSTOP)
            time.sleep(2.0)  # four leases
            assert poll(job_id) == "running"
            os.kill(proc.pid, signal.SIGCONT)
        finally:
            proc.kill()
            proc.wait(10)
        _wait_for(lambda: poll(job_id) == "cancelled", 5, "the job of the killed deployer to end")

        proc, job_id = start(600)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        _wait_for(lambda: poll(job_id) == "cancelled", 5, "the job to end long before its 10-minute lease")


@pytest.mark.parametrize("stream", [True, False])
def test_ctrl_c_says_what_became_of_the_job(tmp_path, monkeypatch, stream):
    """Ctrl-C in exec(): a job with all its inputs stored stays, and the note says how to resume
    it; one still streaming a generator is cancelled at once, saying why (the note said "resume
    it", which could never work, and the job lingered until its feed lease lapsed)."""
    url = f"sqlite:///{tmp_path}/jobs.db"
    monkeypatch.setenv("DCP_SCHEDULER", url)
    monkeypatch.setenv("DCP_PROGRESS", "0")
    idfile = tmp_path / "job-id.txt"
    script = FEEDER.replace("compute.for_(endless()", "compute.for_(endless() if sys.argv[3] == 'stream' else "
                            "range(10**6)").replace('"", worktime="echo"', "'{\"sleep\": 0.05}', worktime=\"echo\"")
    proc = subprocess.Popen([sys.executable, "-c", script, str(idfile), "60", "stream" if stream else "range"],
                            env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        job_id = _wait_for(lambda: idfile.exists() and idfile.read_text(), 30, "the job to be accepted")
        with open_scheduler(url) as s:
            _wait_for(lambda: s.status(job_id)["computed"] >= 2, 30, "some results")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "KeyboardInterrupt" in err
    with open_scheduler(url) as s:
        st = s.status(job_id)
    if stream:
        assert st["status"] == "cancelled" and "interrupted while sending its input stream" in st["reason"]
        assert f"job {job_id} was cancelled: it was interrupted while its input stream" in err
    else:
        assert st["status"] == "running"
        assert f"continue it with compute.resume('{job_id}').exec()" in err


def test_resume_of_a_non_string_id_says_what_ids_are(store):
    for bad in (None, 5):
        with pytest.raises(TypeError, match="job ids are strings.*job.id"):
            compute.resume(bad)
    with pytest.raises(ValueError, match="the job id is empty"):
        compute.resume("  ")


def test_resume_takes_an_id_read_from_a_file_with_its_newline(store, tmp_path):
    job = compute.for_([1, 2], "function(i){ progress(); return i }")
    job.exec(cores=1)
    (tmp_path / "job-id.txt").write_text(job.id + "\n")
    again = compute.resume((tmp_path / "job-id.txt").read_text())
    assert again.id == job.id and list(again.exec()) == [1, 2]


def test_results_the_store_lost_are_errors_not_none(store):
    # A Redis results key deleted or evicted, a store rolled back: exec() returned None in the
    # lost slices' places, for a job reported complete.
    import sqlite3

    job = compute.for_(range(40), '{"sleep": 0.02}', worktime="echo")
    assert list(job.exec(cores=1)) == list(range(40))
    db = sqlite3.connect(store[len("sqlite:///"):])
    (kept,) = db.execute("SELECT COUNT(*) FROM results WHERE job_id = ?", (job.id,)).fetchone()
    assert kept >= 2, "the test needs several result batches"
    db.execute("DELETE FROM results WHERE job_id = ? AND last = (SELECT MIN(last) FROM results WHERE job_id = ?)",
               (job.id, job.id))
    db.commit()
    db.close()
    again = compute.resume(job.id).exec(errors="return")
    lost = [r for r in again if getattr(r, "code", None) == "ESTORELOST"]
    assert lost and all("no longer has this slice's result" in r.message for r in lost)
    assert None not in list(again)
    assert [r for r in again if not hasattr(r, "code")] == [n for n in range(40) if n not in {r.slice_number for r in lost}]
