"""The SQLite scheduler passes the scheduler conformance suite, plus its own storage checks."""

from __future__ import annotations

import os
import sqlite3

import pytest

from dcp_worktimes.scheduler import SchedulerError, open_scheduler
from dcp_worktimes.scheduler.sqlite import SqliteScheduler
from dcp_worktimes.scheduler.urls import parse_url
from dcp_worktimes.testing_scheduler import SchedulerConformance, make_job


class TestSqliteScheduler(SchedulerConformance):
    @pytest.fixture
    def scheduler(self, tmp_path):
        s = open_scheduler(f"sqlite:///{tmp_path}/jobs.db")
        yield s
        s.close()

    @pytest.fixture
    def reopen(self, tmp_path):
        return lambda: open_scheduler(f"sqlite:///{tmp_path}/jobs.db")


class TestSqliteInMemory(SchedulerConformance):
    @pytest.fixture
    def scheduler(self):
        s = SqliteScheduler(":memory:")
        yield s
        s.close()


def test_wal_mode_and_results_as_msgpack_bytes(tmp_path):
    path = tmp_path / "x.db"
    s = open_scheduler(f"sqlite:///{path}")
    s.submit(make_job("j1", 2))
    from dcp_worktimes.testing_scheduler import ok, take

    s.report(ok(*take(s, "w", max_slices=2)))
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    (data,) = db.execute("SELECT data FROM results").fetchone()  # one row for the reported batch
    from dcp_worktimes.values import unpack

    ns, oks, values = unpack(data)[:3]
    assert ns == [0, 1] and oks == [True, True] and values == [b"\x00", b"\x01"]  # the worker's bytes as sent
    s.close()


def test_huge_range_is_not_materialised(tmp_path):
    s = open_scheduler(f"sqlite:///{tmp_path}/x.db")
    from dcp_worktimes.inputs import input_set

    from dcp_worktimes.scheduler import JobRecord
    from dcp_worktimes.worktime import JobSpec

    desc = input_set({"start": 0, "end": 10**12}).description()
    s.submit(JobRecord(id="big", spec=JobSpec(id="big", worktime="echo"), input=desc))
    assert s.status("big")["total"] == 10**12 + 1
    (lease,) = s.lease("w", {"echo": "1.0.0"}, {}, 3, 30)
    assert lease.numbers == [0, 1, 2] and lease.datums == [0, 1, 2]
    db = sqlite3.connect(tmp_path / "x.db")
    assert db.execute("SELECT COUNT(*) FROM slices").fetchone()[0] == 0  # one lease row, no slice rows
    assert db.execute("SELECT COUNT(*) FROM leases").fetchone()[0] == 1
    s.close()


def test_a_finished_streams_inputs_are_freed_and_its_results_kept(tmp_path):
    from dcp_worktimes.testing_scheduler import ok, take
    from dcp_worktimes.values import pack, unpack

    s = open_scheduler(f"sqlite:///{tmp_path}/x.db")
    s.submit(make_job("s", stream=True))
    s.add_slices("s", [(n, pack(b"x" * 1000 + bytes([n]))) for n in range(50)])
    s.close_input("s", 50)
    db = sqlite3.connect(tmp_path / "x.db")
    stored = "SELECT COUNT(*) FROM slices WHERE job_id = 's'"
    assert db.execute(stored).fetchone()[0] == 50
    leases = take(s, "w", max_slices=50)
    s.report(ok(*leases[:49]))
    assert db.execute(stored).fetchone()[0] == 50  # still running: every input is kept
    s.report(ok(*leases[49:]))
    assert s.status("s")["status"] == "complete"
    assert db.execute(stored).fetchone()[0] == 0  # one finished job's inputs do not stay on disk
    assert unpack(s.results("s")[49].value) == b"x" * 1000 + bytes([49])
    with pytest.raises(SchedulerError, match="input already closed"):  # nothing can need the rows again
        s.add_slices("s", [(3, pack("again"))])
    s.report(ok(leases[0]))  # a late duplicate report changes nothing
    assert s.status("s")["computed"] == 50 and len(s.results("s")) == 50
    s.close()


def test_a_new_bid_is_seen_by_every_process_on_the_store(tmp_path):
    a, b = open_scheduler(f"sqlite:///{tmp_path}/x.db"), open_scheduler(f"sqlite:///{tmp_path}/x.db")
    a.submit(make_job("j", 2, payment_per_slice=1.0))
    assert b.get_job("j").payment_per_slice == 1.0  # b caches the record now
    a.set_payment("j", 4.0)
    assert b.get_job("j").payment_per_slice == 4.0
    a.close()
    b.close()


def test_default_url_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DCP_SCHEDULER", f"sqlite:///{tmp_path}/env.db")
    with open_scheduler() as s:
        assert s.path == f"{tmp_path}/env.db"


@pytest.mark.parametrize(
    "url, expected",
    [("sqlite:////tmp/a.db", "/tmp/a.db"), ("sqlite:///tmp/a.db", "/tmp/a.db"), ("/tmp/a.db", "/tmp/a.db"),
     ("sqlite://:memory:", ":memory:"), ("SQLite:///tmp/a.db", "/tmp/a.db"), ("sqlite:///tmp/my%20jobs.db", "/tmp/my jobs.db"),
     # ~ is the home folder (it became a folder named ~ in the current one)
     ("sqlite://~/jobs.db", os.path.expanduser("~/jobs.db")), ("sqlite:///~/jobs.db", os.path.expanduser("~/jobs.db"))],
)
def test_urls(url, expected):
    assert parse_url(url) == ("sqlite", expected)


@pytest.mark.parametrize("name", ["job#1.db", "what?.db", "p%41.db", "~backup/jobs.db", "a b.db"])
def test_a_stores_own_url_opens_that_store_again(tmp_path, name):
    # Helper processes are given it: "job#1.db" made them fail, "p%41.db" open pA.db.
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    with open_scheduler(f"{tmp_path}/{name}") as s:  # a plain path ending in .db
        assert parse_url(s.url) == ("sqlite", str(tmp_path / name))
    assert parse_url("sqlite:////~backup/jobs.db") == ("sqlite", "/~backup/jobs.db")  # no one's home folder


@pytest.mark.parametrize("url, message", [("postgres://admin:hunter2@x/db", "unsupported scheduler URL scheme 'postgres'"),
                                          ("jobs", "cannot read"), ("", "empty"),
                                          # it made a file named "x.db?mode=ro"
                                          ("sqlite:///tmp/x.db?mode=ro", r"has a query or fragment \('\?mode=ro'\)")])
def test_bad_urls_say_how_to_fix(url, message):
    with pytest.raises(SchedulerError, match=message) as info:
        parse_url(url)
    assert "sqlite:///" in str(info.value) and "redis://" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_a_store_of_another_format_is_refused_saying_what_to_do(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY)")
    db.execute("PRAGMA user_version = 2")
    db.close()
    with pytest.raises(SchedulerError, match="store format 2.*move it away or choose another store"):
        open_scheduler(f"sqlite:///{path}")
    with sqlite3.connect(path) as db:  # refused, not rewritten
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2


def test_feed_leases_left_the_store_format_as_it_was(tmp_path):
    """Feed leases live in a table of their own, created IF NOT EXISTS: a store written before it
    existed opens (also read-only, as `dcp-worker jobs` opens it) and its stream jobs, which have no
    feed lease, never expire; the format number is unchanged, so older versions still open stores
    this one wrote (they leave the table alone)."""
    import time

    from dcp_worktimes.scheduler.base import feed_lost_reason
    from dcp_worktimes.scheduler.sqlite.schema import SCHEMA_VERSION
    from dcp_worktimes.testing_scheduler import take
    from dcp_worktimes.values import pack

    path = tmp_path / "x.db"
    s = open_scheduler(f"sqlite:///{path}")
    s.submit(make_job("old", stream=True))
    s.add_slices("old", [(0, pack(0)), (1, pack(1))])
    s.close()
    with sqlite3.connect(path) as db:  # the store as the version before feed leases left it
        db.execute("DROP TABLE feed_leases")
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    ro = open_scheduler(f"sqlite:///{path}", read_only=True)
    assert [(j["id"], j["status"], j["total"]) for j in ro.job_summaries()] == [("old", "running", None)]
    ro.close()

    s = open_scheduler(f"sqlite:///{path}")
    s.submit(make_job("new", stream=True))
    s.keep_feeding("new", 0.2)
    take(s, "w1", max_slices=1)
    time.sleep(0.7)
    take(s, "w1")
    assert s.status("old")["status"] == "running"  # no feed lease: its deployer may still send the rest
    assert s.status("new") == {"total": None, "distributed": 0, "computed": 0, "failed": 0, "status": "cancelled",
                               "reason": feed_lost_reason(0)}
    s.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("SELECT COUNT(*) FROM feed_leases").fetchone()[0] == 0  # ended: its row went too


def test_a_store_locked_by_a_stopped_process_makes_writers_wait_not_crash(tmp_path):
    import sqlite3
    import threading
    import time

    from dcp_worktimes.scheduler import open_scheduler

    path = tmp_path / "locked.db"
    sched = open_scheduler(f"sqlite:///{path}")
    sched._store.db.execute("PRAGMA busy_timeout = 200")  # exercise several rounds of the retry loop
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # like a worker SIGSTOPped inside a write
    threading.Timer(1.5, lambda: holder.execute("COMMIT")).start()
    t = time.monotonic()
    with sched._store.tx():
        pass
    assert 1.0 < time.monotonic() - t < 10
    # Opening the store while it is locked does not wait (it waited 60 s in silence, then failed):
    # an existing store needs no write to open.
    holder.execute("BEGIN IMMEDIATE")
    t = time.monotonic()
    again = open_scheduler(f"sqlite:///{path}")
    assert time.monotonic() - t < 5 and again.job_summaries() == []  # opened, and it reads
    holder.execute("COMMIT")
    again.close()
    sched.close()
    holder.close()


def test_an_event_committed_between_the_two_reads_of_events_is_not_skipped(tmp_path):
    # Events and results are separate tables, written by separate commits (another process's
    # worker): both landing between the deployer's SELECT of events and its SELECT of results made
    # it skip the event for good (console and custom events lost, 3 runs in 5 with two workers).
    from dcp_worktimes.testing_scheduler import ok, take

    url = f"sqlite:///{tmp_path}/jobs.db"
    deployer, worker = open_scheduler(url), open_scheduler(url)
    deployer.submit(make_job("j", 2))
    after = deployer.events("j")[-1][0]
    first, second = take(worker)
    worker.report(ok(first))
    reads = deployer._reads
    real = reads.db

    class Between:  # the worker's two commits land right after the deployer read the events
        in_transaction = property(lambda self: real.in_transaction)

        def execute(self, sql, *args):
            cursor = real.execute(sql, *args)
            if sql.startswith("SELECT seq, event FROM events") and not fired:
                fired.append(True)
                worker.post_events("j", [{"type": "console", "sliceNumber": 1, "level": "log", "message": "hi"}])
                worker.report(ok(second))
            return cursor

    fired: list = []
    reads.db = Between()
    try:
        seen = deployer.events("j", after)
    finally:
        reads.db = real
    seen += deployer.events("j", seen[-1][0])
    kinds = [e["type"] for _, e in seen]
    assert fired and kinds.count("console") == 1 and kinds.count("result") == 2, kinds
    deployer.close()
    worker.close()


LEASE_IN_ANOTHER_PID_NAMESPACE = """
import os, sys, time
# The next process here gets a pid that no process has outside (as after a few hundred starts).
with open("/proc/sys/kernel/ns_last_pid", "w") as f:
    f.write(str(int(sys.argv[2]) - 1))
if os.fork() == 0:
    from dcp_worktimes.scheduler import open_scheduler
    s = open_scheduler(sys.argv[1])
    leases = s.lease("w-inside", {"echo": "1.0.0"}, {}, 5, 30.0)
    print(os.getpid(), len(leases[0]) if leases else 0, flush=True)
    time.sleep(30)
    os._exit(0)
os.wait()
"""


def test_a_worker_in_another_pid_namespace_on_this_host_keeps_its_leases(tmp_path):
    # Its pid does not exist here (unshare -p, bubblewrap, a container sharing the host name):
    # this process took it for a dead worker of this machine and expired its leases at once, so
    # two such workers threw each other's work away until every slice failed "lost 3 times".
    import shutil
    import subprocess
    import sys

    from dcp_worktimes.testing_scheduler import take

    if shutil.which("unshare") is None or subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                                                         capture_output=True).returncode != 0:
        pytest.skip("this machine cannot start a process in a new pid namespace (unshare --pid needs root)")
    url = f"sqlite:///{tmp_path}/jobs.db"
    s = open_scheduler(url)
    s.submit(make_job("j", 10))
    import psutil

    absent = next(p for p in range(max(psutil.pids()) + 1000, 1 << 22) if not psutil.pid_exists(p))
    inside = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", sys.executable, "-c",
                               LEASE_IN_ANOTHER_PID_NAMESPACE, url, str(absent)], stdout=subprocess.PIPE, text=True)
    try:
        assert inside.stdout.readline().split() == [str(absent), "5"]
        got = take(s, "w-here", max_slices=10)  # a lease call here looks for dead workers of this machine
        assert sorted(sl.slice_number for sl in got) == [5, 6, 7, 8, 9]  # not the other worker's 0..4
        assert take(s, "w-here") == []
    finally:
        inside.kill()
        inside.wait()
        s.close()
