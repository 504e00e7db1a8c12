"""Faults of the job store's disk, injected for real: a small tmpfs that fills up, a file system
remounted read-only (both in a user + mount namespace the test makes), a file damaged in the middle.

Every raw ``sqlite3`` error becomes a ``SchedulerError`` naming the store and what is wrong;
``StoreUnavailable`` (retryable) for what may pass, ``StoreDamaged`` for what will not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from dcp_worktimes.scheduler import SchedulerError, StoreDamaged, StoreUnavailable, open_scheduler
from dcp_worktimes.scheduler.base import JobRecord
from dcp_worktimes.testing_scheduler import ok, take
from dcp_worktimes.worktime import JobSpec


def _namespaces_work() -> str | None:
    if shutil.which("unshare") is None:
        return "needs unshare from util-linux (apt-get install util-linux)"
    r = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"needs unprivileged user namespaces (unshare -Urm failed: {r.stderr.strip()})"
    return None


needs_namespaces = pytest.mark.skipif(_namespaces_work() is not None, reason=str(_namespaces_work()))

PRELUDE = """
import json, os, sys, subprocess
from dcp_worktimes.scheduler import SchedulerError, StoreUnavailable, open_scheduler
from dcp_worktimes.scheduler.base import JobRecord
from dcp_worktimes.testing_scheduler import ok, take
from dcp_worktimes.worktime import JobSpec
d = sys.argv[1]
url = f"sqlite:///{d}/jobs.db"

def job(i, work=""):
    return JobRecord(id=f"j{i}", spec=JobSpec(id=f"j{i}", worktime="echo", work=work),
                     input={"kind": "range", "start": 0, "end": 4, "step": 1})

def caught(call):
    try:
        call()
    except SchedulerError as e:
        return {"type": type(e).__name__, "message": e.message, "retryable": e.retryable, "code": str(e.code)}
    return None

out = {}
"""


def in_small_fs(script: str, size: str = "384k", remount_ro: bool = False, tmp_path=None) -> dict:
    """Run ``script`` (after PRELUDE) with ``d`` a fresh tmpfs of ``size`` in its own mount namespace."""
    body = PRELUDE + textwrap.dedent(script) + "\nprint(json.dumps(out))\n"
    path = tmp_path / "script.py"
    path.write_text(body)
    shell = (f'd=$(mktemp -d) && mount -t tmpfs -o size={size} tmpfs "$d" && '
             f'{sys.executable} {path} "$d"')
    r = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", shell],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "DCP_PROGRESS": "0"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@needs_namespaces
def test_a_full_disk_is_a_retryable_store_error_naming_the_store_and_the_store_recovers(tmp_path):
    got = in_small_fs("""
        filler = os.path.join(d, "filler")
        s = open_scheduler(url)
        s.submit(job(0))
        leases = take(s, "w", max_slices=4)
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # fill the disk to the last byte
        try:
            while True:
                os.write(fd, b"x" * 4096)
        except OSError:
            os.close(fd)
        i = 1
        while (err := caught(lambda: s.submit(job(i, "x" * 20000)))) is None:
            i += 1
        out["deploy"] = err
        out["report"] = caught(lambda: s.report(ok(*leases)))
        os.unlink(filler)  # space comes back
        out["report_again"] = caught(lambda: s.report(ok(*leases)))
        out["deploy_again"] = caught(lambda: s.submit(job(10_000)))
        out["computed"] = s.status("j0")["computed"]
    """, tmp_path=tmp_path)
    for key in ("deploy", "report"):
        err = got[key]
        assert err is not None, key
        assert err["type"] == "StoreUnavailable" and err["retryable"] and err["code"] == "ESTOREUNAVAILABLE", err
        assert "/jobs.db cannot grow" in err["message"] and "is full" in err["message"], err
    assert got["report_again"] is None and got["deploy_again"] is None
    assert got["computed"] == 4  # each result recorded once, after the retry


@needs_namespaces
def test_a_read_only_store_refuses_writes_clearly_and_can_still_be_listed(tmp_path):
    got = in_small_fs("""
        s = open_scheduler(url)
        s.submit(job(0))
        s.close()
        subprocess.run(["mount", "-o", "remount,ro", d], check=True)
        out["open"] = caught(lambda: open_scheduler(url))
        ro = open_scheduler(url, read_only=True)
        out["listed"] = [j["id"] for j in ro.job_summaries()]
        out["write"] = caught(lambda: ro.submit(job(1)))
        ro.close()
        env = {**os.environ, "DCP_SCHEDULER": url}
        r = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", "jobs", "--json"], capture_output=True,
                           text=True, env=env)
        out["cli"] = [r.returncode, r.stdout, r.stderr]
        r = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", "jobs", "--delete", "j0", "--force"],
                           capture_output=True, text=True, env=env)
        out["cli_delete"] = [r.returncode, r.stderr]
    """, tmp_path=tmp_path)
    for key in ("open", "write"):
        err = got[key]
        assert err is not None and err["type"] == "StoreUnavailable" and err["retryable"], (key, err)
        assert "/jobs.db cannot be written" in err["message"] and "read-only" in err["message"], err
    assert got["listed"] == ["j0"]
    code, stdout, stderr = got["cli"]
    assert code == 0 and [j["id"] for j in json.loads(stdout)] == ["j0"], stderr
    code, stderr = got["cli_delete"]
    assert code == 2 and "cannot be written" in stderr and "Traceback" not in stderr, stderr


def _store_with_jobs(path, n: int = 30) -> None:
    s = open_scheduler(f"sqlite:///{path}")
    for i in range(n):
        s.submit(JobRecord(id=f"j{i}", spec=JobSpec(id=f"j{i}", worktime="echo", work="w" * 3000),
                           input={"kind": "range", "start": 0, "end": 3, "step": 1}))
    s.report(ok(*take(s, "w", max_slices=90)))
    s.close()


def test_a_store_damaged_mid_file_is_a_store_damaged_error_not_a_codec_error(tmp_path):
    path = tmp_path / "jobs.db"
    _store_with_jobs(path)
    size = path.stat().st_size
    assert size > 64 * 1024
    with open(path, "r+b") as f:  # every page but the first (the header) is garbage
        f.seek(4096)
        f.write(os.urandom(size - 4096))
    with pytest.raises(StoreDamaged) as info:
        s = open_scheduler(f"sqlite:///{path}", read_only=True)
        s.job_summaries()
        [s.results(f"j{i}") for i in range(30)]
    assert str(path) in info.value.message and "damaged" in info.value.message and not info.value.retryable
    r = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", "jobs"], capture_output=True, text=True,
                       env={**os.environ, "DCP_SCHEDULER": f"sqlite:///{path}"}, timeout=60)
    assert r.returncode == 2 and "ESTOREDAMAGED" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_stored_records_that_do_not_decode_are_a_store_damaged_error(tmp_path):
    import sqlite3

    path = tmp_path / "jobs.db"
    _store_with_jobs(path, 2)
    with sqlite3.connect(path) as db:  # pages intact, a record's bytes not (a bit rot SQLite cannot see)
        db.execute("UPDATE jobs SET record = x'c1c1c1' WHERE id = 'j1'")
        db.execute("UPDATE results SET data = x'ffff' WHERE job_id = 'j0'")
    s = open_scheduler(f"sqlite:///{path}", read_only=True)
    for call in (lambda: s.results("j0"), lambda: s.get_job("j1")):
        with pytest.raises(StoreDamaged, match="damaged"):
            call()
    # The listing shows the damaged job as such (to be deleted), and the others as they are.
    listed = {row["id"]: row for row in s.job_summaries()}
    assert listed["j1"]["status"] == "damaged" and "jobs --delete" in listed["j1"]["reason"]
    assert listed["j0"]["status"] != "damaged"
    s.close()


def test_a_job_whose_record_is_damaged_is_skipped_and_the_others_run(tmp_path, caplog):
    # Every worker ended at once with ESTOREDAMAGED, healthy jobs waiting.
    import sqlite3

    from dcp_worktimes.scheduler.worker import Worker
    from dcp_worktimes.testing_scheduler import make_job

    path = tmp_path / "jobs.db"
    s = open_scheduler(f"sqlite:///{path}")
    s.submit(make_job("broken", 3, payment_per_slice=9.0))  # leased first: the higher bid
    s.submit(make_job("fine", 3))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE jobs SET record = x'c1c1c1' WHERE id = 'broken'")
    s.close()
    s = open_scheduler(f"sqlite:///{path}")
    with caplog.at_level("WARNING", logger="dcp_worktimes"):
        Worker(s, ["echo"], cores=1).run(until_idle=True)
    assert s.status("fine")["status"] == "complete"
    assert sum("skipping job broken" in r.getMessage() for r in caplog.records) == 1
    s.close()


def test_a_store_in_a_folder_that_does_not_exist_is_refused_not_created(tmp_path):
    missing = tmp_path / "no" / "such"
    with pytest.raises(SchedulerError, match="does not exist.*mkdir -p"):
        open_scheduler(f"sqlite:///{missing}/jobs.db")
    assert not (tmp_path / "no").exists()
    r = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", "--until-idle"], capture_output=True, text=True,
                       env={**os.environ, "DCP_SCHEDULER": f"sqlite:///{missing}/jobs.db"}, timeout=60)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("where, words", [("a folder", "is a folder, not a file"), ("/dev/null", "not a regular file")])
def test_a_store_path_that_is_no_file_says_so(tmp_path, where, words):
    # It said "disk I/O error; check the disk" or "read-only or not ours".
    path = str(tmp_path) if where == "a folder" else where
    for read_only in (False, True):
        with pytest.raises(SchedulerError, match=words):
            open_scheduler(f"sqlite:///{path}", read_only=read_only)


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_serving_worker_whose_store_file_is_deleted_or_replaced_stops_saying_so(tmp_path, how):
    # It went on serving the unlinked file, silently, while deployers used a new store at the path.
    import threading

    from dcp_worktimes.scheduler.worker import Worker

    path = tmp_path / "jobs.db"
    s = open_scheduler(f"sqlite:///{path}")
    worker = Worker(s, ["echo"], cores=1, lease_seconds=1.5)  # it checks at each check-in, every 0.5 s
    failed: list = []
    thread = threading.Thread(target=lambda: failed.append(pytest.raises(SchedulerError, worker.run)), daemon=True)
    thread.start()
    time.sleep(1.0)
    if how == "replaced":  # made beside it, then moved onto its path at once (as a restore would)
        open_scheduler(f"sqlite:///{tmp_path / 'new.db'}").close()
        os.replace(tmp_path / "new.db", path)
    else:
        path.unlink()
    thread.join(20)
    s.close()
    assert failed and f"was {how}" in str(failed[0].value) and "start it again" in str(failed[0].value)


def test_store_errors_are_scheduler_errors():
    assert issubclass(StoreUnavailable, SchedulerError) and issubclass(StoreDamaged, SchedulerError)
    assert StoreUnavailable.retryable and not StoreDamaged.retryable and not SchedulerError.retryable


@needs_namespaces
def test_a_worker_keeps_its_results_through_a_full_disk_and_writes_them_when_space_returns(tmp_path):
    got = in_small_fs("""
        import logging, threading, time
        from dcp_worktimes.scheduler.worker import Worker

        said = []
        class Said(logging.Handler):
            def emit(self, record):
                said.append(record.getMessage())
        logging.getLogger("dcp_worktimes.scheduler.worker").addHandler(Said())
        logging.getLogger("dcp_worktimes.scheduler.worker").propagate = False

        s = open_scheduler(url)
        s.submit(JobRecord(id="j0", spec=JobSpec(id="j0", worktime="echo", work='{"sleep": 0.25}'),
                           input={"kind": "range", "start": 0, "end": 8, "step": 1}))  # 9 slices: DCP ranges end inclusive
        w = Worker(open_scheduler(url), worktimes=["echo"], cores=1, lease_seconds=120)
        t = threading.Thread(target=w.run, kwargs={"until_idle": True}, daemon=True)
        t.start()
        while s.status("j0")["distributed"] == 0:  # leased: now the disk fills up
            time.sleep(0.02)
        fd = os.open(os.path.join(d, "filler"), os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"x" * 4096)
        except OSError:
            os.close(fd)
        deadline = time.monotonic() + 30
        while w.store_trouble is None and time.monotonic() < deadline:  # the slices end, the report fails
            time.sleep(0.05)
        out["trouble"] = w.store_trouble.message if w.store_trouble else None
        time.sleep(1.0)  # an outage of more than one retry
        out["alive_during"] = t.is_alive()
        out["computed_during"] = s.status("j0")["computed"]
        os.unlink(os.path.join(d, "filler"))  # space comes back
        t.join(20)
        out["alive_after"] = t.is_alive()
        out["error"] = repr(w.error) if w.error else None
        out["status"] = s.status("j0")
        out["results"] = {str(n): r.ok for n, r in s.results("j0").items()}
        out["completed"] = w.completed
        out["said"] = said
    """, size="4m", tmp_path=tmp_path)
    assert got["trouble"] is not None and "is full" in got["trouble"], got
    assert got["alive_during"] and not got["alive_after"] and got["error"] is None, got
    assert got["computed_during"] < 9, got  # the outage held results back ...
    assert got["status"]["computed"] == 9 and got["status"]["status"] == "complete", got["status"]
    # ... which were kept and written once the disk had room: each slice once, none run again
    assert got["completed"] == 9 and got["results"] == {str(n): True for n in range(9)}, got
    failing = [m for m in got["said"] if "job store is failing" in m]
    assert len(failing) == 1 and "is full" in failing[0] and "kept" in failing[0], got["said"]
    assert any("works again" in m for m in got["said"]), got["said"]


def test_another_program_s_sqlite_database_is_named_as_such_and_left_untouched(tmp_path):
    # It failed with "no such column: id" from inside, after switching the file to WAL mode.
    import sqlite3

    path = tmp_path / "notes.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE jobs (x)")
        db.execute("CREATE TABLE notes (y)")
    for read_only in (False, True):
        with pytest.raises(SchedulerError, match="is a SQLite database, but not a dcp-worktimes job store "
                                                 r"\(it has the tables jobs, notes\)"):
            open_scheduler(f"sqlite:///{path}", read_only=read_only)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master ORDER BY name")] == ["jobs", "notes"]


def test_an_empty_file_is_no_store_to_read_but_becomes_one_when_written(tmp_path):
    path = tmp_path / "jobs.db"
    path.touch()
    with pytest.raises(SchedulerError, match="no job store at .* yet: the file is empty"):
        open_scheduler(f"sqlite:///{path}", read_only=True)
    with pytest.raises(SchedulerError, match="private store inside one process"):
        open_scheduler("sqlite:///:memory:", read_only=True)
    with open_scheduler(f"sqlite:///{path}") as s:
        assert s.list_jobs() == []


def test_threads_making_one_new_store_at_once_all_open_it(tmp_path):
    # Two threads' first jobs make the store together: one read the other's tables before its
    # format number ("not a dcp-worktimes job store"), or was refused WAL mode ("locked").
    import threading

    for rep in range(10):
        url = f"sqlite:///{tmp_path}/{rep}.db"
        barrier, errors = threading.Barrier(6), []

        def open_it() -> None:
            barrier.wait()
            try:
                with open_scheduler(url) as s:
                    s.list_jobs()
            except Exception as e:  # noqa: BLE001 - collected for the assertion
                errors.append(e)

        threads = [threading.Thread(target=open_it) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []


@pytest.mark.parametrize("user_version", [3, 4])
def test_another_program_s_database_with_a_user_version_of_its_own_is_not_taken(tmp_path, user_version):
    # At user_version 4 (this store format's number) it was opened as a store: switched to WAL and
    # given our tables; at 3 it was called "written by another version of dcp-worktimes".
    import sqlite3

    path = tmp_path / "places.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE moz_places (id INTEGER PRIMARY KEY, url TEXT)")
        db.execute(f"PRAGMA user_version = {user_version}")
    with pytest.raises(SchedulerError, match="not a dcp-worktimes job store"):
        open_scheduler(f"sqlite:///{path}")
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["moz_places"]


def test_a_store_made_before_the_application_id_opens_and_gets_it(tmp_path):
    import sqlite3

    from dcp_worktimes.scheduler.sqlite.schema import APPLICATION_ID

    path = tmp_path / "jobs.db"
    open_scheduler(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA application_id = 0")  # as the versions before the mark left it
    for read_only in (True, False):
        open_scheduler(f"sqlite:///{path}", read_only=read_only).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID


FILE_SIZE_CAPPED = """
import resource, signal, sys
from dcp_worktimes.scheduler import open_scheduler
from dcp_worktimes.scheduler.base import JobRecord, StoreUnavailable
from dcp_worktimes.worktime import JobSpec
s = open_scheduler(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # as a shell's `ulimit -f` leaves writes failing with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
try:
    for i in range(100):
        s.submit(JobRecord(id=f"j{i}", spec=JobSpec(id=f"j{i}", worktime="echo", work="w" * 20000),
                           input={"kind": "range", "start": 0, "end": 3, "step": 1}))
except StoreUnavailable as e:
    print(e.message)
"""


def test_a_store_at_the_file_size_limit_says_so_not_check_the_disk(tmp_path):
    r = subprocess.run([sys.executable, "-c", FILE_SIZE_CAPPED, f"sqlite:///{tmp_path}/jobs.db"], capture_output=True,
                       text=True, timeout=60)
    assert "file larger than 200,000 bytes (its file-size limit, `ulimit -f`)" in r.stdout, (r.stdout, r.stderr)
