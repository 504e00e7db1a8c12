"""The SQLite scheduler passes the scheduler conformance suite, plus its own storage checks."""

from __future__ import annotations

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
    leases = s.lease("w", {"echo": "1.0.0"}, {}, 2, 30)
    from dcp_worktimes.testing_scheduler import ok

    s.complete([ok(lease) for lease in leases])
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
    leases = s.lease("w", {"echo": "1.0.0"}, {}, 3, 30)
    assert [lease.slice_number for lease in leases] == [0, 1, 2]
    db = sqlite3.connect(tmp_path / "x.db")
    assert db.execute("SELECT COUNT(*) FROM slices").fetchone()[0] == 0  # one lease row, no slice rows
    assert db.execute("SELECT COUNT(*) FROM leases").fetchone()[0] == 1
    s.close()


def test_a_finished_streams_inputs_are_freed_and_its_results_kept(tmp_path):
    from dcp_worktimes.testing_scheduler import ok
    from dcp_worktimes.values import pack, unpack

    s = open_scheduler(f"sqlite:///{tmp_path}/x.db")
    s.submit(make_job("s", stream=True))
    s.add_slices("s", [(n, pack(b"x" * 1000 + bytes([n]))) for n in range(50)])
    s.close_input("s", 50)
    db = sqlite3.connect(tmp_path / "x.db")
    stored = "SELECT COUNT(*) FROM slices WHERE job_id = 's'"
    assert db.execute(stored).fetchone()[0] == 50
    leases = s.lease("w", {"echo": "1.0.0"}, {}, 50, 30)
    s.complete([ok(lease) for lease in leases[:49]])
    assert db.execute(stored).fetchone()[0] == 50  # still running: every input is kept
    s.complete([ok(lease) for lease in leases[49:]])
    assert s.status("s")["status"] == "complete"
    assert db.execute(stored).fetchone()[0] == 0  # one finished job's inputs do not stay on disk
    assert unpack(s.results("s")[49].value) == b"x" * 1000 + bytes([49])
    with pytest.raises(SchedulerError, match="input already closed"):  # nothing can need the rows again
        s.add_slices("s", [(3, pack("again"))])
    s.complete([ok(leases[0])])  # a late duplicate report changes nothing
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
     ("sqlite://:memory:", ":memory:")],
)
def test_urls(url, expected):
    assert parse_url(url) == ("sqlite", expected)


@pytest.mark.parametrize("url, message", [("redis://x", "unsupported scheduler URL scheme 'redis'"),
                                          ("jobs", "cannot read"), ("", "empty")])
def test_bad_urls_say_how_to_fix(url, message):
    with pytest.raises(SchedulerError, match=message) as info:
        parse_url(url)
    assert "sqlite:///" in str(info.value)


V2_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    record BLOB NOT NULL,
    payment REAL NOT NULL,
    created REAL NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    total INTEGER,
    described INTEGER NOT NULL,
    next_slice INTEGER NOT NULL DEFAULT 0,
    pending INTEGER NOT NULL DEFAULT 0,
    distributed INTEGER NOT NULL DEFAULT 0,
    computed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS slices (
    job_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    state INTEGER NOT NULL,
    retry INTEGER NOT NULL DEFAULT 0,
    datum BLOB,
    lease_id TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, n)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS slices_pending ON slices(job_id, retry DESC, n) WHERE state = 0;
CREATE INDEX IF NOT EXISTS slices_lease ON slices(lease_id) WHERE state = 1;
CREATE TABLE IF NOT EXISTS leases (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    worker_id TEXT NOT NULL,
    expires REAL NOT NULL,
    first INTEGER,
    stop INTEGER,
    count INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS leases_expiry ON leases(expires);
CREATE INDEX IF NOT EXISTS leases_worker ON leases(worker_id);
CREATE TABLE IF NOT EXISTS results (
    job_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    value BLOB,
    error BLOB,
    wall REAL, cpu REAL, bytes_in INTEGER, bytes_out INTEGER,
    attempt INTEGER,
    PRIMARY KEY (job_id, n)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS results_seq ON results(job_id, seq);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event BLOB NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    host TEXT, pid INTEGER,
    worktimes BLOB, capabilities BLOB,
    last_seen REAL
);
"""


def test_store_of_format_2_is_migrated(tmp_path):
    """Format 2 (one results row per slice, no lease bitmaps) opens as format 3 with its data."""
    from dcp_worktimes.values import pack, unpack

    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(V2_SCHEMA)
    record = make_job("old", 4).to_dict()
    record["total"] = 4
    db.execute("INSERT INTO jobs (id, record, payment, created, status, total, described, next_slice, distributed, "
               "computed, seq) VALUES ('old', ?, 0, 1, 'running', 4, 1, 4, 4, 1, 3)", (pack(record),))
    db.execute("INSERT INTO events VALUES ('old', 1, ?)", (pack({"type": "accepted", "id": "old"}),))
    db.execute("INSERT INTO results VALUES ('old', 0, 3, 1, ?, NULL, 0.5, 0.25, 1, 1, 1)", (pack("zero"),))
    db.execute("INSERT INTO leases (id, job_id, worker_id, expires, first, stop, count, done) "
               "VALUES ('L', 'old', 'w', 9e99, 0, 4, 4, 1)")
    db.execute("PRAGMA user_version = 2")
    db.close()
    s = open_scheduler(f"sqlite:///{path}")
    r = s.results("old")[0]
    assert unpack(r.value) == "zero" and r.wall_time == 0.5 and r.attempt == 1
    assert [e["type"] for _, e in s.events("old")] == ["accepted", "result"]
    from dcp_worktimes.scheduler import Lease, SliceReport

    # The open lease kept its slices 1..3 (slice 0 is settled: a late report for it is ignored).
    s.complete([(Lease("old", n, pack(n), "L", 1, 0), SliceReport(n, True, pack(n))) for n in range(4)])
    assert {n: unpack(r.value) for n, r in s.results("old").items()} == {0: "zero", 1: 1, 2: 2, 3: 3}
    assert s.status("old")["status"] == "complete"
    s.close()


def test_a_store_locked_by_a_stopped_process_makes_writers_wait_not_crash(tmp_path):
    import sqlite3
    import threading
    import time

    from dcp_worktimes.scheduler import open_scheduler
    from dcp_worktimes.scheduler.sqlite import _Transaction

    path = tmp_path / "locked.db"
    sched = open_scheduler(f"sqlite:///{path}")
    sched._db.execute("PRAGMA busy_timeout = 200")  # exercise several rounds of the retry loop
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # like a worker SIGSTOPped inside a write
    threading.Timer(1.5, lambda: holder.execute("COMMIT")).start()
    t = time.monotonic()
    with _Transaction(sched):
        pass
    assert 1.0 < time.monotonic() - t < 10
    sched.close()
    holder.close()
