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
    from dcp_worktimes.compute.inputs import input_set

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
