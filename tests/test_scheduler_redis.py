"""The Redis scheduler passes the scheduler conformance suite against a real redis-server, plus
its own checks: URLs and credentials, storage shapes (no key per slice), namespaces, expiry."""

from __future__ import annotations

import pytest

pytest.importorskip("redis", reason="the redis client is not installed (pip install 'dcp-worktimes[redis]')")

from dcp_worktimes.scheduler import open_scheduler
from dcp_worktimes.testing_scheduler import SchedulerConformance

from .redis_fixtures import require_redis


class TestRedisScheduler(SchedulerConformance):
    @pytest.fixture
    def scheduler(self, redis_url):
        s = open_scheduler(redis_url)
        yield s
        s.close()

    @pytest.fixture
    def reopen(self, redis_url):
        return lambda: open_scheduler(redis_url)


# -- URLs, credentials, errors ----------------------------------------------------------------------
def test_urls_are_parsed_and_shown_without_password(monkeypatch):
    from dcp_worktimes.scheduler.redis.connection import DEFAULT_KEEP, parse_redis_url
    from dcp_worktimes.scheduler.urls import parse_url

    assert parse_url("redis://:pw@h:1/2") == ("redis", "redis://:pw@h:1/2")
    assert parse_url("rediss://h") == ("redis", "rediss://h")
    t = parse_redis_url("rediss://alice:p%40ss%3Aw@db.example:6390/3?group=physics&keep=2h&retry=30s")
    assert (t.host, t.port, t.db, t.username, t.password, t.tls, t.group) == \
        ("db.example", 6390, 3, "alice", "p@ss:w", True, "physics")
    assert (t.keep, t.retry, t.prefix) == (7200.0, 30.0, "dcp:physics:")
    assert t.shown == "rediss://alice:***@db.example:6390/3?group=physics&keep=2h&retry=30s"
    assert "p@ss" not in repr(t)
    d = parse_redis_url("redis://localhost")
    assert (d.port, d.db, d.group, d.keep, d.password, d.shown) == (6379, 0, "default", DEFAULT_KEEP, None,
                                                                    "redis://localhost")
    assert parse_redis_url("redis://h?keep=forever").keep == 0
    monkeypatch.setenv("DCP_REDIS_PASSWORD", "from-env")
    assert parse_redis_url("redis://h").password == "from-env"
    assert parse_redis_url("redis://:in-url@h").password == "in-url"


@pytest.mark.parametrize("url, message", [
    ("redis://:pw@h/teamA", "database number.*group=NAME"),
    ("redis://:pw@h/0?grup=x", "unknown option 'grup'"),
    ("redis://:pw@h/0?ssl_ca_certs=/etc/hostname", "needs TLS; write rediss://"),
    ("rediss://:pw@h/0?ssl_ca_certs=/no/such/ca.pem", "does not exist"),
    ("redis://:pw@h/0?group=a:b", "group 'a:b' must be"),
    ("redis://:pw@h/0?keep=soon", "keep='soon' is not a duration"),
    ("redis://:pw@:6379/0", "names no host"),
    ("redis://:pw@h:port/0", "port is not a number"),
    ("redis://:pw@h:99999/0", r"port is out of range \(1-65535\)"),
])
def test_bad_redis_urls_say_what_is_wrong_without_the_password(url, message):
    from dcp_worktimes.scheduler import SchedulerError

    with pytest.raises(SchedulerError, match=message) as info:
        open_scheduler(url)
    assert "pw" not in str(info.value).replace("pw@", "")  # shown as :***@
    assert ":***@" in str(info.value)


def test_unreachable_server_at_start_is_one_clear_error_naming_the_url():
    import time

    from dcp_worktimes.scheduler import SchedulerError
    from dcp_worktimes.scheduler.redis.server import free_port

    require_redis()
    url = f"redis://:topsecret@127.0.0.1:{free_port()}/0?group=g"
    started = time.monotonic()
    with pytest.raises(SchedulerError) as info:
        open_scheduler(url)
    text = str(info.value)
    assert time.monotonic() - started < 10  # one try, no retry loop at start
    assert f"redis://:***@127.0.0.1:{url.split(':')[3].split('/')[0]}/0?group=g" in text
    assert "is redis-server running" in text and "topsecret" not in text


def test_wrong_password_is_refused_saying_so(redis_server):
    from dcp_worktimes.scheduler import SchedulerError

    with pytest.raises(SchedulerError, match="refused the credentials") as info:
        open_scheduler(redis_server.url(password="not-the-password"))
    assert "not-the-password" not in str(info.value)
    with pytest.raises(SchedulerError, match="refused the credentials"):
        open_scheduler(redis_server.url(password=""))


def test_without_the_redis_client_the_error_says_what_to_install(monkeypatch):
    import sys

    from dcp_worktimes.scheduler import SchedulerError

    for name in [m for m in sys.modules if m == "redis" or m.startswith(("redis.", "dcp_worktimes.scheduler.redis"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis -> ImportError
    with pytest.raises(SchedulerError, match=r"pip install 'dcp-worktimes\[redis\]'"):
        open_scheduler("redis://localhost:6379/0")


# -- storage shapes ---------------------------------------------------------------------------------
def keys_of(scheduler) -> list[str]:
    client = scheduler._link.client
    return sorted(k.decode() for k in client.scan_iter(match=scheduler.target.prefix + "*", count=1000))


def test_a_huge_range_is_leased_in_blocks_without_a_key_per_slice(redis_url):
    from dcp_worktimes.inputs import input_set
    from dcp_worktimes.scheduler import JobRecord
    from dcp_worktimes.testing_scheduler import ok, split
    from dcp_worktimes.worktime import JobSpec

    s = open_scheduler(redis_url)
    desc = input_set({"start": 0, "end": 10**12}).description()
    s.submit(JobRecord(id="big", spec=JobSpec(id="big", worktime="echo"), input=desc))
    assert s.status("big")["total"] == 10**12 + 1
    blocks = [b for _ in range(5) for b in s.lease("w", {"echo": "1.0.0"}, {}, 2000, 30)]
    assert [len(b) for b in blocks] == [2000] * 5 and blocks[-1].numbers[-1] == 9999
    assert blocks[3].datums[:2] == [6000, 6001]
    for b in blocks[:4]:
        s.report(ok(*split([b])))
    prefix = s.target.prefix
    keys = keys_of(s)
    # One hash per lease still held, one of each kind per job or group: no key per slice (req: one per
    # lease call, for five minutes, to answer a retried call).
    kinds: dict[str, int] = {}
    for k in keys:
        kind = k[len(prefix):].split(":")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    assert set(kinds) <= {"jobs", "queue", "wake", "leases", "clock", "quiet", "workers", "seen", "host", "req", "job",
                          "ev", "res", "jl", "wl", "lease"}, kinds
    assert {kind: count for kind, count in kinds.items() if kind != "req"} == dict.fromkeys(set(kinds) - {"req"}, 1)
    assert s._link.client.llen(prefix + "res:big") == 4  # a list element per reported batch
    assert s.status("big")["computed"] == 8000
    s.close()


def test_a_finished_streams_inputs_are_freed_and_its_results_kept(redis_url):
    from dcp_worktimes.scheduler import SchedulerError
    from dcp_worktimes.testing_scheduler import make_job, ok, take
    from dcp_worktimes.values import pack, unpack

    s = open_scheduler(redis_url)
    s.submit(make_job("s", stream=True))
    s.add_slices("s", [(n, pack(b"x" * 1000 + bytes([n]))) for n in range(50)])
    s.close_input("s", 50)
    client, prefix = s._link.client, s.target.prefix
    assert client.hlen(prefix + "sd:s") == 50
    leases = take(s, "w", max_slices=50)
    s.report(ok(*leases[:49]))
    assert client.hlen(prefix + "sd:s") == 50  # still running: every input is kept
    s.report(ok(*leases[49:]))
    assert s.status("s")["status"] == "complete"
    assert not [k for k in keys_of(s) if k.startswith((prefix + "sd:", prefix + "sq:", prefix + "lease:"))]
    assert unpack(s.results("s")[49].value) == b"x" * 1000 + bytes([49])
    with pytest.raises(SchedulerError, match="input already closed"):
        s.add_slices("s", [(3, pack("again"))])
    s.report(ok(leases[0]))
    assert s.status("s")["computed"] == 50 and len(s.results("s")) == 50
    s.close()


def test_groups_are_separate_namespaces(redis_server):
    from dcp_worktimes.scheduler import UnknownJob
    from dcp_worktimes.testing_scheduler import make_job, take

    a, b = open_scheduler(redis_server.url(group="ns-a")), open_scheduler(redis_server.url(group="ns-b"))
    a.submit(make_job("shared-id", 3))
    b.submit(make_job("shared-id", 2))  # the same id in another group is another job
    assert [j.id for j in a.list_jobs()] == ["shared-id"] and a.status("shared-id")["total"] == 3
    assert b.status("shared-id")["total"] == 2
    assert len(take(b, "wb", max_slices=10)) == 2  # b's worker never sees a's slices
    assert a.status("shared-id")["distributed"] == 0
    assert {w.id for w in a.workers()} == set() and {w.id for w in b.workers()} == {"wb"}
    b.delete_job("shared-id")
    with pytest.raises(UnknownJob, match="group 'ns-b'"):
        b.status("shared-id")
    assert a.status("shared-id")["total"] == 3
    a.close()
    b.close()


def test_finished_jobs_expire_after_keep(redis_server):
    import time

    from dcp_worktimes.scheduler import UnknownJob
    from dcp_worktimes.testing_scheduler import make_job, ok, take

    s = open_scheduler(redis_server.url(group="expiring", keep="1s"))
    s.submit(make_job("done", 2))
    s.submit(make_job("running", 2))
    s.report(ok(*[sl for sl in take(s, "w", max_slices=4) if sl.job_id == "done"]))
    assert s.status("done")["status"] == "complete"
    # PTTL, not TTL: TTL rounds to whole seconds and reads 0 once half of the second has gone
    ttl = s._link.client.pttl(s.target.prefix + "job:done")
    assert 0 < ttl <= 1000 and s._link.client.pttl(s.target.prefix + "job:running") == -1
    time.sleep(1.6)
    with pytest.raises(UnknownJob):
        s.status("done")
    assert [j.id for j in s.list_jobs()] == ["running"]
    assert s._link.client.zscore(s.target.prefix + "jobs", "done") is None  # the listing forgot it too
    s.close()


def test_a_lease_call_retried_after_a_lost_reply_takes_nothing_twice(redis_url):
    import msgpack

    from dcp_worktimes.testing_scheduler import make_job

    s = open_scheduler(redis_url)
    s.submit(make_job("j", 10))
    engine = s._leases
    args = ["w", msgpack.packb({"worktimes": {}, "capabilities": {}}), "", "1", "30.0", "4", "fixed-token", "j"]
    first = msgpack.unpackb(engine.run("lease", "lease", args), raw=True)
    again = msgpack.unpackb(engine.run("lease", "lease", args), raw=True)  # the reply of the first was "lost"
    assert first[1] == again[1] and first[1][0][3:5] == [0, 4]
    assert s.status("j")["distributed"] == 4
    s.close()


# -- the command line -------------------------------------------------------------------------------
def test_dcp_worker_jobs_resume_and_delete_on_redis(redis_url):
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "DCP_SCHEDULER": redis_url, "DCP_PROGRESS": "0"}

    def run(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-c", code] if code else [sys.executable, "-m", "dcp_worktimes.cli", *args]
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)

    job_id = run(code="from dcp_worktimes import compute\n"
                      "j = compute.for_(range(4), '', worktime='echo'); j.deploy(); print(j.id)").stdout.strip()
    assert len(job_id) >= 16
    listed = json.loads(run("jobs", "--json").stdout)
    assert [r["id"] for r in listed] == [job_id] and listed[0]["computed"] == 0
    running = run("jobs", "--delete", job_id)
    assert running.returncode == 2 and "still running" in running.stderr
    r = run("resume", job_id)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [0, 1, 2, 3]
    assert json.loads(run("jobs", "--json").stdout)[0]["status"] == "complete"
    table = run("jobs", "--scheduler", redis_url)
    assert job_id in table.stdout and "complete" in table.stdout
    assert run("jobs", "--delete", job_id).returncode == 0
    assert json.loads(run("jobs", "--json").stdout) == []


def test_dcp_worker_with_an_unreachable_redis_says_so_in_one_line():
    import subprocess
    import sys

    from dcp_worktimes.scheduler.redis.server import free_port

    require_redis()
    url = f"redis://:hush-hush@127.0.0.1:{free_port()}/0"
    # Commands that want an answer now: listing jobs, and a worker run --until-idle (a script's)
    for args in (["jobs", "--scheduler", url], ["--worktime", "echo", "--until-idle", "--scheduler", url]):
        r = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", *args], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode != 0 and "cannot reach the Redis scheduler at redis://:***@127.0.0.1" in r.stderr
        assert "Traceback" not in r.stderr and "hush-hush" not in r.stderr + r.stdout
    # A serving worker says so in one line too, then waits for its Redis (until a signal stops it)
    import signal

    w = subprocess.Popen([sys.executable, "-m", "dcp_worktimes.cli", "--worktime", "echo", "--scheduler", url],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = w.stderr.readline()
    w.send_signal(signal.SIGINT)
    out, rest = w.communicate(timeout=60)
    assert "cannot reach the Redis scheduler at redis://:***@127.0.0.1" in first and "waiting for it" in first
    assert w.returncode == 0 and "Traceback" not in rest and "hush-hush" not in first + rest + out


def test_an_idle_worker_is_woken_by_work_from_another_machine(redis_url):
    import subprocess
    import sys
    import time

    s = open_scheduler(redis_url)
    assert s.wait_for_work(0.3) is False  # nothing new: waits it out
    code = ("import sys; from dcp_worktimes.scheduler import open_scheduler; "
            "from dcp_worktimes.testing_scheduler import make_job; open_scheduler(sys.argv[1]).submit(make_job('j', 3))")
    proc = subprocess.Popen([sys.executable, "-c", code, redis_url])
    started = time.monotonic()
    woken = False
    while not woken and time.monotonic() - started < 30:
        woken = s.wait_for_work(0.02)  # the worker's own rhythm: short waits
    proc.wait(30)
    assert woken and proc.returncode == 0
    assert s.status("j")["total"] == 3
    s.close()


@pytest.mark.parametrize("desc", [
    {"start": -5, "end": 20, "step": 3}, {"start": 0.5, "end": 3.5, "step": 0.5}, {"start": 2**70, "end": 2**70 + 5},
    [{"start": 0, "end": 2}, {"start": 10, "end": 12}],
])
def test_leased_datums_are_the_inputs_own(redis_url, desc):
    from dcp_worktimes.inputs import input_set
    from dcp_worktimes.testing_scheduler import make_job

    s = open_scheduler(redis_url)
    inputs = input_set(desc)
    job = make_job("j")
    job.input = inputs.description()
    s.submit(job)
    blocks = s.lease("w", {"echo": "1.0.0"}, {}, 10**6, 30)
    datums = [d for b in blocks for d in b.datums]
    assert datums == [inputs.nth(i) for i in range(len(inputs))]
    assert [type(d) for d in datums] == [type(inputs.nth(i)) for i in range(len(inputs))]
    s.close()


def test_a_report_mixing_outcomes_strays_and_duplicates_counts_each_slice_once(redis_url):
    from dcp_worktimes.scheduler import Report
    from dcp_worktimes.testing_scheduler import make_job
    from dcp_worktimes.values import pack, unpack

    s = open_scheduler(redis_url)
    s.submit(make_job("j", 8, max_attempts=2))
    (run,) = s.lease("w", {"echo": "1.0.0"}, {}, 6, 30)  # slices 0..5 as one run
    crash = {"code": "ECRASH", "message": "died"}
    uncaught = {"code": "EUNCAUGHT", "message": "boom"}
    numbers = [0, 1, 1, 2, 3, 7, 4]  # 1 twice, 7 is not this lease's
    oks = [True, True, True, False, False, True, True]
    errors = [None, None, None, crash, uncaught, None, None]
    s.report([Report(run.job_id, run.lease_id, numbers, oks, [pack(n) if ok else None for n, ok in zip(numbers, oks)],
                     errors, [0.5] * 7, [0.25] * 7, [1] * 7, [1] * 7)])
    results = s.results("j")
    assert sorted(results) == [0, 1, 3, 4]  # 2 went back (ECRASH, attempt 1 of 2); 7 was a stray
    assert not results[3].ok and results[3].error["code"] == "EUNCAUGHT" and unpack(results[4].value) == 4
    assert all(r.attempt == 1 and r.worker == "w" and r.wall_time == 0.5 for r in results.values())
    assert s.status("j")["computed"] == 3 and s.status("j")["failed"] == 1
    blocks = s.lease("w2", {"echo": "1.0.0"}, {}, 10, 30)  # the retry first, then the fresh rest
    assert [(b.numbers, b.attempts) for b in blocks] == [([2], [2]), ([6, 7], [1, 1])]
    retry, fresh = blocks
    s.report([Report.ok(retry, [2], [pack("two")]), Report.ok(fresh, [6, 7], [pack(6), pack(7)]),
              Report.ok(run, [5, 2], [pack(5), pack("stale")])])  # 2 of the old run is no longer its
    results = s.results("j")
    assert unpack(results[2].value) == "two" and results[2].attempt == 2 and results[2].worker == "w2"
    assert sorted(results) == list(range(8)) and s.status("j")["status"] == "failed"  # slice 3 failed
    events = [e for _, e in s.events("j") if e["type"] in ("result", "error")]
    assert sorted(e["sliceNumber"] for e in events) == list(range(8))
    s.close()


def test_a_worker_downloads_a_jobs_work_and_files_only_to_run_it(redis_url):
    from dcp_worktimes.testing_scheduler import make_job, take

    s = open_scheduler(redis_url)
    big = make_job("big-files", 3, worktime="python")
    big.spec.files = {"model.bin": b"\x01" * 2_000_000}
    s.submit(big)
    s.submit(make_job("small", 3))
    client = open_scheduler(redis_url)  # a worker elsewhere: nothing cached
    stats = s._link.client

    def sent() -> int:
        return int(stats.info("stats")["total_net_output_bytes"])

    before = sent()
    got = [sl.job_id for _ in range(5) for sl in take(client, "echo-only", max_slices=10)]
    assert got == ["small"] * 3  # the python job was matched (and skipped) without its record
    assert sent() - before < 200_000
    assert client.get_job("big-files").spec.files["model.bin"][:1] == b"\x01"  # who runs it gets it
    assert sent() - before > 2_000_000
    s.close()
    client.close()
