"""The Redis scheduler's security: ACL users confined to their group, TLS (rediss://) with a CA,
and passwords never in a log line, an event, a listing or an error."""

from __future__ import annotations

import logging
import subprocess

import pytest

pytest.importorskip("redis", reason="the redis client is not installed (pip install 'dcp-worktimes[redis]')")

from dcp_worktimes.scheduler import SchedulerError, open_scheduler
from dcp_worktimes.scheduler.redis.server import RedisServer
from dcp_worktimes.testing_scheduler import make_job, ok, take

from .redis_fixtures import require_redis


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory):
    require_redis()
    acl = ["user default off",
           "user team-a on >pass-a resetkeys ~dcp:team-a:* resetchannels +@all -@admin -@dangerous",
           "user team-b on >pass-b resetkeys ~dcp:team-b:* resetchannels +@all -@admin -@dangerous"]
    server = RedisServer(tmp_path_factory.mktemp("redis-acl"), acl=acl).start()
    yield server
    server.stop()


def test_acl_users_run_jobs_in_their_own_group_only(acl_server):
    a = open_scheduler(acl_server.url("team-a", user="team-a", password="pass-a"))
    b = open_scheduler(acl_server.url("team-b", user="team-b", password="pass-b"))
    a.submit(make_job("ja", 3))
    b.submit(make_job("jb", 2))
    a.report(ok(*take(a, "wa", max_slices=5)))
    assert a.status("ja")["status"] == "complete" and [j.id for j in a.list_jobs()] == ["ja"]
    assert [j.id for j in b.list_jobs()] == ["jb"]
    # team-a's credentials cannot reach team-b's namespace: one clear error, not a traceback.
    with pytest.raises(SchedulerError, match="does not allow this user.*dcp:team-b:\\*") as info:
        open_scheduler(acl_server.url("team-b", user="team-a", password="pass-a")).list_jobs()
    assert "pass-a" not in str(info.value)
    # The same through a script (submit): Redis's words were "The user executing the script can't access..."
    with pytest.raises(SchedulerError, match="does not allow this user.*dcp:team-b:\\*"):
        open_scheduler(acl_server.url("team-b", user="team-a", password="pass-a")).submit(make_job("jx", 2))
    with pytest.raises(SchedulerError, match="refused the credentials"):
        open_scheduler(acl_server.url("team-a", user="team-a", password="pass-b"))
    # The keys refused: the user may be confined to another group than the URL's.
    with pytest.raises(SchedulerError, match=r"CLIENT SETNAME and HELLO .*or the URL's \?group= is not the group"):
        open_scheduler(acl_server.url("team-b", user="team-a", password="pass-a")).list_jobs()
    a.close()
    b.close()


def test_a_url_naming_no_redis_server_or_no_database_of_it_says_so(redis_server):
    import http.server
    import socketserver
    import threading

    web = socketserver.TCPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        with pytest.raises(SchedulerError, match="does not answer as Redis does .*check the port"):
            open_scheduler(f"redis://127.0.0.1:{web.server_address[1]}/0?retry=1s").list_jobs()
    finally:
        web.shutdown()
        web.server_close()
    url = redis_server.url("nodb").replace(f":{redis_server.port}/0", f":{redis_server.port}/99")
    assert "/99" in url
    with pytest.raises(SchedulerError, match="has no database 99 .*16 by default"):
        open_scheduler(url).list_jobs()


def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    require_redis()
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (apt-get install openssl)")
    d = tmp_path_factory.mktemp("tls")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=dcp-worktimes test CA", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    tls = {"cert": str(d / "server.pem"), "key": str(d / "server.key"), "ca": str(d / "ca.pem")}
    server = RedisServer(d / "data", password="tls-secret", tls=tls).start()
    yield server
    server.stop()


def test_rediss_with_a_ca_runs_jobs(tls_server):
    url = tls_server.url("tls")
    assert url.startswith("rediss://") and "ssl_ca_certs=" in url
    s = open_scheduler(url)
    s.submit(make_job("j", 4))
    s.report(ok(*take(s, "w", max_slices=4)))
    assert s.status("j")["status"] == "complete" and sorted(s.results("j")) == [0, 1, 2, 3]
    assert "tls-secret" not in repr(s)
    s.close()


def test_rediss_without_trusting_the_ca_or_plain_redis_on_a_tls_port_fail_clearly(tls_server):
    untrusted = f"rediss://:tls-secret@127.0.0.1:{tls_server.port}/0"
    with pytest.raises(SchedulerError, match="cannot reach the Redis scheduler at rediss://:\\*\\*\\*@") as info:
        open_scheduler(untrusted)
    assert "certificate" in str(info.value).lower() and "tls-secret" not in str(info.value)
    with pytest.raises(SchedulerError, match="cannot reach") as info:
        open_scheduler(f"redis://:tls-secret@127.0.0.1:{tls_server.port}/0?timeout=2s")
    assert "tls-secret" not in str(info.value)


def test_the_password_is_never_in_a_log_line_an_event_a_listing_or_an_error(tmp_path, caplog, monkeypatch):
    require_redis()
    from dcp_worktimes import compute

    secret = "Sup3r-Secret-Pw"
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("DCP_PROGRESS", "0")
    with RedisServer(tmp_path / "redis", password=secret) as server:
        url = server.url("leaks", retry="1s")
        job = compute.for_(range(20), '{"console": ["hello"]}', worktime="echo", scheduler=url)
        assert list(job.exec(cores=1)) == list(range(20))
        s = open_scheduler(url)
        s.submit(make_job("nobody", 1, worktime="no-such-worktime"))
        reason = s.check_schedulable("nobody")
        assert reason and "redis://:***@127.0.0.1" in reason
        seen = [repr(s), repr(s.list_jobs()), repr(s.job_summaries()), reason]
        for j in s.list_jobs():
            seen.append(repr(s.events(j.id)))
        server.stop()  # now every call fails after retry=1s, with warnings on the way
        with pytest.raises(SchedulerError) as info:
            s.status(job.id)
        seen.append(str(info.value))
        assert "unreachable for 1 s" in str(info.value)
    seen.append(caplog.text)
    assert any("unreachable" in r.getMessage() for r in caplog.records)
    for text in seen:
        assert secret not in text


def test_dcp_worker_and_its_helper_processes_never_show_the_password(tmp_path):
    require_redis()
    import os
    import signal
    import sys
    import time

    import psutil

    secret = "Cmd-Line-Secret-9"
    with RedisServer(tmp_path / "redis", password=secret) as server:
        url = server.url("cli")
        s = open_scheduler(url)
        job = make_job("slow", 40)
        job.spec.work = '{"sleep": 0.05}'
        s.submit(job)
        env = {**os.environ, "DCP_SCHEDULER": url, "DCP_CORES_PER_PROCESS": "1", "DCP_PROGRESS": "0"}
        worker = subprocess.Popen([sys.executable, "-m", "dcp_worktimes.cli", "--worktime", "echo", "--cores", "2"],
                                  env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            helpers: list = []
            while not helpers and time.monotonic() < deadline:
                helpers = [p for p in psutil.Process(worker.pid).children(recursive=True)
                           if "--helper" in p.cmdline()]
                time.sleep(0.1)
            assert helpers, "the worker started no helper process"
            for p in [psutil.Process(worker.pid), *helpers]:
                assert secret not in " ".join(p.cmdline())
            while s.status("slow")["status"] != "complete" and time.monotonic() < deadline:
                time.sleep(0.1)
            assert len({r.worker for r in s.results("slow").values()}) == 2  # the helper worked too
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            _, err = worker.communicate(timeout=60)
        assert "redis://:***@127.0.0.1" in err and secret not in err
        s.close()
