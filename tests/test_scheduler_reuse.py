"""The store a process's jobs keep open between them (``scheduler/reuse.py``): the next job on
the same URL takes it, unless the store is no longer the same file; nothing of one store ever
reaches another."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time

import pytest

from dcp_worktimes import compute
from dcp_worktimes.scheduler import StoreDamaged, open_scheduler, reuse


@pytest.fixture(autouse=True)
def nothing_kept(monkeypatch):
    reuse.close_all()
    monkeypatch.setattr(reuse, "IDLE_SECONDS", 60.0)  # a slow machine's gaps between jobs are not what is tested
    yield
    reuse.close_all()


def _job(url, n=3):
    return compute.for_(range(n), "", worktime="echo", scheduler=url, cores=1)


def _kept(url):
    entry = reuse._idle.get(url)
    return entry[0] if entry else None


def _jobs_in(path):
    with open_scheduler(f"sqlite:///{path}") as s:
        return {j.id for j in s.list_jobs()}


def test_the_next_job_takes_the_store_the_last_one_kept(tmp_path):
    url = f"sqlite:///{tmp_path}/jobs.db"
    first = _job(url)
    assert first.exec(progress=False) == [0, 1, 2]
    kept = _kept(url)
    assert kept is not None and not kept._closed
    second = _job(url)
    assert second.exec(progress=False) == [0, 1, 2]
    assert _kept(url) is kept  # taken and given back: the same connection
    assert _jobs_in(tmp_path / "jobs.db") == {first.id, second.id}
    assert first.status()["computed"] == 3  # an old job's status() takes it again and still reads


def test_a_store_deleted_between_jobs_is_opened_afresh(tmp_path):
    url = f"sqlite:///{tmp_path}/jobs.db"
    _job(url).exec(progress=False)
    kept = _kept(url)
    for f in tmp_path.glob("jobs.db*"):
        f.unlink()
    job = _job(url)
    assert job.exec(progress=False) == [0, 1, 2]
    assert _kept(url) is not kept and _jobs_in(tmp_path / "jobs.db") == {job.id}  # in the new file
    # Never closed: closing would delete "jobs.db-wal" by name, now the new store's.
    assert kept in reuse._abandoned and not kept._closed


def test_a_store_replaced_between_jobs_is_the_one_used(tmp_path):
    url = f"sqlite:///{tmp_path}/jobs.db"
    other = tmp_path / "other"
    other.mkdir()
    elsewhere = _job(f"sqlite:///{other}/jobs.db")
    elsewhere.exec(progress=False)
    reuse.close_all()  # its WAL is in the file now
    _job(url).exec(progress=False)
    for f in tmp_path.glob("jobs.db-*"):
        f.unlink()
    shutil.copy(other / "jobs.db", tmp_path / "jobs.db.new")
    os.replace(tmp_path / "jobs.db.new", tmp_path / "jobs.db")
    kept = _kept(url)
    job = _job(url)
    assert job.exec(progress=False) == [0, 1, 2]
    assert _jobs_in(tmp_path / "jobs.db") == {elsewhere.id, job.id}
    assert kept in reuse._abandoned


def test_an_idle_store_is_closed_soon_after_the_last_job_and_its_file_is_complete(tmp_path, monkeypatch):
    monkeypatch.setattr(reuse, "IDLE_SECONDS", 0.2)
    url = f"sqlite:///{tmp_path}/jobs.db"
    job = _job(url)
    job.exec(progress=False)
    kept = _kept(url)
    deadline = time.monotonic() + 10
    while not kept._closed and time.monotonic() < deadline:  # no other job comes: the closer thread does it
        time.sleep(0.05)
    assert kept._closed and _kept(url) is None
    assert not (tmp_path / "jobs.db-wal").exists()  # checkpointed: the main file alone holds the job
    copy = tmp_path / "copy.db"
    shutil.copy(tmp_path / "jobs.db", copy)
    assert _jobs_in(copy) == {job.id}
    (tmp_path / "jobs.db").write_bytes(b"this is not a database" * 100)  # overwritten in place, now closed
    with pytest.raises(StoreDamaged, match="jobs.db"):
        _job(url).exec(progress=False)


def test_private_in_memory_stores_are_never_kept():
    a = _job("sqlite://:memory:")
    assert a.exec(progress=False) == [0, 1, 2]
    assert reuse._idle == {}


def test_at_most_a_few_stores_are_kept(tmp_path):
    urls = [f"sqlite:///{tmp_path}/{i}.db" for i in range(reuse.MAX_KEPT + 2)]
    for url in urls:
        _job(url, 1).exec(progress=False)
        kept = _kept(url)
    assert len(reuse._idle) == reuse.MAX_KEPT and set(reuse._idle) == set(urls[-reuse.MAX_KEPT:])
    assert not kept._closed
    reuse.close_all()
    assert kept._closed and reuse._idle == {}


def _child(url, parent_kept_id, out):
    sched = reuse.take(url)
    out.put((id(sched) != parent_kept_id, sched.list_jobs() is not None))
    reuse.give_back(url, sched)


def test_a_forked_child_opens_its_own_connection(tmp_path):
    url = f"sqlite:///{tmp_path}/jobs.db"
    _job(url).exec(progress=False)
    kept = _kept(url)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    p = ctx.Process(target=_child, args=(url, id(kept), out))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert out.get(timeout=5) == (True, True)
    assert _kept(url) is kept and not kept._closed  # the parent's is untouched
    assert _job(url).exec(progress=False) == [0, 1, 2]
