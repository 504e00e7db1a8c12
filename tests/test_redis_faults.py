"""Faults with a real redis-server: lost connections and partitions (a loopback proxy cut or
blackholed), a worker SIGKILLed mid-slice, redis-server restarted mid-job (AOF on), the deploying
process killed and its job resumed from another process, workers of different worktimes.

Every job here must end with each slice's result recorded exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("redis", reason="the redis client is not installed (pip install 'dcp-worktimes[redis]')")

from dcp_worktimes.scheduler import open_scheduler
from dcp_worktimes.scheduler.redis.server import RedisServer
from dcp_worktimes.testing_scheduler import drain, make_job, ok, serving, take
from dcp_worktimes.values import pack, unpack

from .redis_fixtures import PASSWORD, require_redis
from .tcp_proxy import Proxy


@pytest.fixture
def proxy(redis_server):
    p = Proxy(redis_server.port)
    yield p
    p.close()


def via(proxy: Proxy, url: str) -> str:
    return url.replace(f"127.0.0.1:{proxy.target}", f"127.0.0.1:{proxy.port}")


def exactly_once(s, job_id: str, total: int) -> dict:
    """Every slice has one result, stored once, and the log has one result event per slice."""
    numbers = [n for batch in s.result_batches(job_id) for n in batch.numbers]
    assert sorted(numbers) == list(range(total)), "a result is missing or stored twice"
    events = [e["sliceNumber"] for _, e in s.events(job_id) if e["type"] in ("result", "error")]
    assert sorted(events) == list(range(total))
    st = s.status(job_id)
    assert st["computed"] + st["failed"] == total and st["status"] == "complete", st
    return s.results(job_id)


# -- lost connections and partitions (the interface, no evaluators) ----------------------------------
def test_a_call_rides_out_a_lost_connection(proxy, redis_url):
    s = open_scheduler(via(proxy, redis_url))
    s.submit(make_job("j", 4))
    proxy.cut()
    threading.Timer(1.5, proxy.heal).start()
    started = time.monotonic()
    leases = take(s, "w", max_slices=4)  # blocks while the link is down, then succeeds
    assert time.monotonic() - started >= 1.0 and len(leases) == 4
    s.report(ok(*leases))
    exactly_once(s, "j", 4)
    s.close()


@pytest.mark.parametrize("quiet", [True, False], ids=["expired-while-nobody-could-call", "expired-while-others-called"])
def test_a_lease_that_expired_while_the_store_was_down_is_spared_for_its_worker(redis_url, quiet):
    # Each outage longer than a lease cost every running slice an attempt: after three, slices
    # failed ECRASH ("its worker died") while their workers ran them. The gap is made by hand:
    # the last call 100 s ago (the server down since), the lease expired 50 s ago, in the gap.
    s = open_scheduler(redis_url)
    s.submit(make_job("j", 2))
    held = take(s, "w-held", max_slices=2)
    client, prefix, now = s._link.client, s._keys.prefix, time.time()
    if quiet:
        client.set(prefix + "clock", repr(now - 100))
    client.zadd(prefix + "leases", {held[0].lease_id: now - 50}, xx=True)
    assert take(s, "w-other", max_slices=2) == [] if quiet else len(take(s, "w-other", max_slices=2)) == 2
    if quiet:  # its worker, back too, extends it and reports: the first attempt counts
        assert s.heartbeat("w-held", [held[0].lease_id], 30) == []
        s.report(ok(*held))
        results = exactly_once(s, "j", 2)
        assert {r.attempt for r in results.values()} == {1}
    else:  # expired while the store answered others: lost, as before
        assert s.heartbeat("w-held", [held[0].lease_id], 30) == [held[0].lease_id]
    s.close()


def test_an_outage_is_logged_once_however_many_calls_ride_it_out_and_its_end_once(proxy, redis_url, caplog):
    # A worker's lease, heartbeat and report threads each logged "unreachable, retrying": one
    # outage read as several, and nothing said when it ended.
    s = open_scheduler(via(proxy, redis_url))
    s.submit(make_job("j", 4))
    proxy.cut()
    threading.Timer(1.5, proxy.heal).start()
    caplog.set_level("WARNING", logger="dcp_worktimes")
    calls = [threading.Thread(target=s.status, args=("j",)) for _ in range(4)]
    for t in calls:
        t.start()
    for t in calls:
        t.join(30)
    said = [r.getMessage() for r in caplog.records if "Redis scheduler" in r.getMessage()]
    assert len([m for m in said if "unreachable" in m]) == 1, said
    assert len([m for m in said if "reachable again (after " in m]) == 1, said
    assert s.status("j")["status"] == "running"
    s.close()


def test_a_partitioned_workers_slices_go_to_another_and_its_late_report_is_ignored(proxy, redis_url):
    cut_off = open_scheduler(via(proxy, redis_url + "&timeout=1s"))
    other = open_scheduler(redis_url)
    cut_off.submit(make_job("j", 6))
    old = take(cut_off, "w-partitioned", max_slices=6, lease_seconds=1.0)
    assert len(old) == 6
    proxy.blackhole()  # no RST, no answer: its calls time out and are retried
    done = threading.Event()

    def late_report() -> None:
        cut_off.report(ok(*old))  # waits out the partition, then lands on an expired lease
        done.set()

    threading.Thread(target=late_report, daemon=True).start()
    time.sleep(1.5)  # the lease expires meanwhile (the server's clock)
    new = drain(other, "w-healthy")
    assert sorted(sl.slice_number for sl in new) == list(range(6)) and {sl.attempt for sl in new} == {2}
    other.report(ok(*new))
    proxy.heal()
    assert done.wait(30)
    assert cut_off.heartbeat("w-partitioned", [old[0].lease_id], 30) == [old[0].lease_id]
    results = exactly_once(other, "j", 6)
    assert {r.worker for r in results.values()} == {"w-healthy"}
    cut_off.close()
    other.close()


# -- real workers -------------------------------------------------------------------------------------
def start_worker(url: str, tmp_path, *args: str, name: str = "w") -> subprocess.Popen:
    """A ``dcp-worker`` process (in its own session: killpg takes its evaluators too)."""
    env = {**os.environ, "DCP_SCHEDULER": url, "DCP_WORKTIMES_CACHE": str(tmp_path / "cache"), "DCP_PROGRESS": "0"}
    log = open(tmp_path / f"{name}.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "dcp_worktimes.cli", *args], env=env, stdout=log, stderr=log,
                            start_new_session=True)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    return proc.wait(60)


def wait_for(predicate, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


SLOW = '{"sleep": 0.02}'  # echo sleeps 20 ms per slice, then returns its datum


def slow_job(job_id: str, n: int):
    job = make_job(job_id, n)
    job.spec.work = SLOW
    return job


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_a_second_signal_quits_a_worker_whose_store_does_not_answer(proxy, redis_url, tmp_path, sig):
    # Its first Ctrl-C waited for the store for up to the URL's retry (5 min) and the next ones
    # did nothing; SIGHUP (its terminal closed) ended it with no summary, status 129.
    worker = start_worker(via(proxy, redis_url), tmp_path, "--worktime", "echo", "--cores", "1")
    log = tmp_path / "w.log"
    wait_for(lambda: b"serving" in log.read_bytes(), 60, "the worker to serve")
    proxy.blackhole()  # its next call waits for an answer that never comes
    time.sleep(1.0)
    os.killpg(worker.pid, sig)
    wait_for(lambda: b"Ctrl-C again to quit at once" in log.read_bytes(), 10, "the first signal's line")
    time.sleep(0.5)
    t = time.monotonic()
    os.killpg(worker.pid, sig)
    assert worker.wait(10) == 130 and time.monotonic() - t < 5
    assert b"quitting now" in log.read_bytes() and b"Traceback" not in log.read_bytes()


def test_a_worker_started_before_its_redis_waits_for_it_then_serves(tmp_path):
    # A fleet's workers may start before their Redis (boot order, a restart): the worker ended at
    # once with "cannot reach", and needed someone to start it again.
    require_redis()
    server = RedisServer(tmp_path / "redis", password=PASSWORD)  # its port chosen, not started yet
    url = server.url("late")
    worker = start_worker(url, tmp_path, "--worktime", "echo", "--cores", "1")
    log = tmp_path / "w.log"
    try:
        wait_for(lambda: b"waiting for it" in log.read_bytes(), 60, "the worker to say it waits")
        assert worker.poll() is None and b"cannot reach the Redis scheduler" in log.read_bytes()
        assert PASSWORD.encode() not in log.read_bytes()
        with server.start():
            wait_for(lambda: b"serving echo" in log.read_bytes(), 60, "the worker to serve")
            s = open_scheduler(url)
            s.submit(make_job("j", 5))
            wait_for(lambda: s.status("j")["status"] == "complete", what="the job to run on it")
            assert [unpack(r.value) for _, r in sorted(s.results("j").items())] == list(range(5))
            assert b"the store answers now" in log.read_bytes()
            assert stop(worker) == 0
            s.close()
    finally:
        stop(worker, signal.SIGKILL)


def test_a_worker_waiting_for_its_store_stops_on_a_signal(tmp_path):
    require_redis()
    server = RedisServer(tmp_path / "redis")  # never started
    worker = start_worker(server.url(), tmp_path, "--worktime", "echo", "--cores", "1")
    log = tmp_path / "w.log"
    try:
        wait_for(lambda: b"waiting for it" in log.read_bytes(), 60, "the worker to say it waits")
        assert stop(worker, signal.SIGINT) == 0
        assert b"stopped before the store could be reached" in log.read_bytes()
        assert b"Traceback" not in log.read_bytes()
    finally:
        stop(worker, signal.SIGKILL)


def test_a_stream_outlasting_the_stores_retry_is_fed_when_it_returns(proxy, redis_url, tmp_path):
    # The feeder gave up when add_slices outlasted the URL's retry; exec() then waited, silent,
    # until the job's feed lease lapsed (10 min), and the job was cancelled as if its deployer died.
    from dcp_worktimes import compute

    worker = start_worker(redis_url, tmp_path, "--worktime", "echo", "--cores", "1")
    box: dict = {}
    accepted = threading.Event()

    def inputs():
        for i in range(40):
            if i == 10:
                accepted.wait(30)  # the job is stored: then the deployer alone loses the store,
                proxy.cut()  # for longer than its retry
                threading.Timer(4.0, proxy.heal).start()
            time.sleep(0.05)
            yield i

    def deploy() -> None:
        try:
            job = compute.for_(inputs(), "", worktime="echo", scheduler=via(proxy, redis_url) + "&retry=1s")
            job.on("accepted", lambda ev: accepted.set())
            box["results"] = list(job.exec(local=False))
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    deployer = threading.Thread(target=deploy, daemon=True)
    deployer.start()
    try:
        deployer.join(90)
        assert not deployer.is_alive(), "exec() still waits"
        assert "error" not in box, box.get("error")
        assert box["results"] == list(range(40))
        assert stop(worker) == 0
    finally:
        proxy.heal()
        stop(worker, signal.SIGKILL)


def test_a_worker_that_lost_its_lease_runs_and_counts_no_more_of_it(redis_url):
    # It ran every slice of a lease reclaimed meanwhile (frozen, cut off) to the end, and counted
    # them as computed though the store ignored them: "11 computed" for a 10-slice job.
    from dcp_worktimes.scheduler.worker import Worker

    s = open_scheduler(redis_url)
    job = make_job("j", 40)
    job.spec.work = '{"sleep": 0.5}'
    s.submit(job)
    # Heartbeats every 0.5 s: it learns of the loss within a slice's time
    worker = Worker(s, ["echo"], cores=1, lease_seconds=1.5)
    with serving(worker):
        wait_for(lambda: worker._open >= 4, 60, "the worker to hold its first slices")
        held = list(worker._inflight)
        s._link.client.zadd(s._keys.prefix + "leases", dict.fromkeys(held, 0), xx=True)  # as if it froze
        taken = take(s, "w-other", max_slices=100)  # reclaims them, and takes them and the rest
        assert len(taken) == 40 - s.status("j")["computed"]
        time.sleep(3.0)  # its lease's other slices would all have run by now
        s.report(ok(*taken))
    mine = sum(r.worker == worker.id for r in s.results("j").values())
    # At most the slice it was running when it learned: not the rest of the lease
    assert worker.completed - mine <= 1, (worker.completed, mine)
    assert s.status("j")["status"] == "complete"
    s.close()


def test_a_worker_killed_mid_slice_loses_nothing_and_duplicates_nothing(redis_url, tmp_path):
    s = open_scheduler(redis_url)
    s.submit(slow_job("j", 300))
    first = start_worker(redis_url, tmp_path, "--worktime", "echo", "--cores", "2", name="first")
    try:
        wait_for(lambda: s.status("j")["computed"] >= 30, what="the first worker's results")
        stop(first, signal.SIGKILL)  # mid-slice: it holds leased, unreported slices
        assert s.status("j")["computed"] < 300
        second = start_worker(redis_url, tmp_path, "--worktime", "echo", "--cores", "2", name="second")
        wait_for(lambda: s.status("j")["status"] == "complete", what="the job to finish on the second worker")
        assert stop(second) == 0
    finally:
        stop(first, signal.SIGKILL)
    results = exactly_once(s, "j", 300)
    assert [unpack(results[n].value) for n in range(300)] == list(range(300))
    assert len({r.worker for r in results.values()}) == 2
    assert any(r.attempt == 2 for r in results.values())  # the killed worker's slices ran again
    s.close()


@pytest.mark.parametrize("how", ["sigterm", "sigkill-fsync-always"])
def test_redis_restarted_mid_job_every_result_once(tmp_path, how):
    require_redis()
    from dcp_worktimes import compute

    fsync = "always" if how == "sigkill-fsync-always" else "everysec"
    with RedisServer(tmp_path / "redis", password=PASSWORD, appendfsync=fsync) as server:
        url = server.url("restart")
        worker = start_worker(url, tmp_path, "--worktime", "echo", "--cores", "2")
        box: dict = {}

        def deploy() -> None:
            try:
                job = compute.for_(range(400), SLOW, worktime="echo", scheduler=url)
                job.on("accepted", lambda ev: box.setdefault("id", job.id))
                box["results"] = list(job.exec(local=False))
            except BaseException as e:  # noqa: BLE001
                box["error"] = e

        deployer = threading.Thread(target=deploy)
        deployer.start()
        try:
            s = open_scheduler(url)
            wait_for(lambda: "id" in box and s.status(box["id"])["computed"] >= 40, what="results before the restart")
            server.restart(signal.SIGTERM if how == "sigterm" else signal.SIGKILL, down=1.0)
            deployer.join(120)
            assert not deployer.is_alive() and "error" not in box, box.get("error")
            assert box["results"] == list(range(400))
            exactly_once(s, box["id"], 400)
            assert worker.poll() is None  # the worker rode it out
            assert stop(worker) == 0
            s.close()
        finally:
            stop(worker, signal.SIGKILL)


DEPLOYER = """
import sys
from dcp_worktimes import compute
job = compute.for_(range(200), sys.argv[2], worktime="echo", scheduler=sys.argv[1])
job.on("accepted", lambda ev: (open(sys.argv[3], "w").write(job.id)))
job.exec(local=False)
"""


def test_a_killed_deployers_job_is_resumed_from_another_process(redis_url, tmp_path):
    from dcp_worktimes import compute

    id_file = tmp_path / "job-id"
    deployer = subprocess.Popen([sys.executable, "-c", DEPLOYER, redis_url, SLOW, str(id_file)],
                                env={**os.environ, "DCP_PROGRESS": "0"}, start_new_session=True)
    worker = start_worker(redis_url, tmp_path, "--worktime", "echo", "--cores", "2")
    try:
        s = open_scheduler(redis_url)
        wait_for(lambda: id_file.exists() and id_file.read_text() and s.status(id_file.read_text())["computed"] >= 20,
                 what="the first results")
        stop(deployer, signal.SIGKILL)
        job_id = id_file.read_text()
        results = compute.resume(job_id, scheduler=redis_url).exec(local=False)
        assert list(results) == list(range(200))
        exactly_once(s, job_id, 200)
        s.close()
    finally:
        stop(deployer, signal.SIGKILL)
        stop(worker, signal.SIGKILL)


def test_workers_get_only_the_jobs_they_match(redis_url, tmp_path):
    s = open_scheduler(redis_url)
    plain = start_worker(redis_url, tmp_path, "--worktime", "echo", "--cores", "1", name="plain")
    gpu = start_worker(redis_url, tmp_path, "--worktime", "echo", "--cores", "1", "--capability", "gpu=true",
                       name="gpu")
    try:
        s.submit(make_job("any", 40))
        s.submit(make_job("needs-gpu", 40, requirements={"gpu": True}))
        s.submit(make_job("no-gpu", 40, requirements={"gpu": False}))
        s.submit(make_job("v2", 5, worktime_range="^2.0.0"))  # echo 1.0.0 everywhere: nobody
        for job_id in ("any", "needs-gpu", "no-gpu"):
            wait_for(lambda: s.status(job_id)["status"] == "complete", what=f"job {job_id}")
        pid = {"plain": plain.pid, "gpu": gpu.pid}
        owners = {job_id: {int(r.worker.split("-")[-2]) for r in s.results(job_id).values()}
                  for job_id in ("needs-gpu", "no-gpu")}
        assert owners == {"needs-gpu": {pid["gpu"]}, "no-gpu": {pid["plain"]}}
        wait_for(lambda: s.status("v2")["status"] == "unschedulable", what="the v2 job's verdict")
        assert "echo@^2.0.0" in s.status("v2")["reason"] and s.status("v2")["distributed"] == 0
    finally:
        stop(plain)
        stop(gpu)
    s.close()


def test_a_deployer_whose_redis_refuses_writes_says_why_and_waits(tmp_path, monkeypatch, caplog):
    """Out of memory, Redis refuses every write, workers' check-ins too: the deployer saw no worker
    and said "waiting for a worker to attach", then gave the job up after job.worker_wait."""
    import redis

    from dcp_worktimes import compute

    require_redis()
    with RedisServer(tmp_path / "redis", password=PASSWORD) as server:
        url = server.url("oom")
        monkeypatch.setenv("DCP_SCHEDULER", url)
        monkeypatch.setenv("DCP_PROGRESS", "0")
        raw = redis.Redis(port=server.port, password=PASSWORD)
        job = compute.for_(range(3), "", worktime="echo", worker_wait=1)
        job.deploy()
        s = open_scheduler(url)
        assert s.writes_refused() is None
        raw.config_set("maxmemory", 1)  # less than it uses: every write is refused
        said = s.writes_refused()
        assert said is not None and "out of memory" in said and "maxmemory" in said and PASSWORD not in said
        ended: list[BaseException] = []

        def run() -> None:
            try:
                job.exec(local=False, timeout=120)
            except BaseException as e:  # noqa: BLE001 - the test reads it
                ended.append(e)

        thread = threading.Thread(target=run)
        with caplog.at_level("WARNING", logger="dcp_worktimes"):
            thread.start()
            wait_for(lambda: any("out of memory" in r.getMessage() for r in caplog.records), 30, "the deployer to say why")
            time.sleep(3)  # three worker_waits: the job is not given up while the store refuses writes
            assert thread.is_alive() and not ended
            assert not any("to attach" in r.getMessage() for r in caplog.records)
            raw.config_set("maxmemory", 0)
            thread.join(60)
        assert len(ended) == 1 and isinstance(ended[0], compute.RequirementsError), ended  # now nobody runs it
        s.close()
        raw.close()


def test_a_redis_that_may_evict_any_key_is_warned_about_once(tmp_path, caplog):
    import redis

    require_redis()
    with RedisServer(tmp_path / "redis", password=PASSWORD) as server:
        raw = redis.Redis(port=server.port, password=PASSWORD)
        url = server.url("evicting")
        with caplog.at_level("WARNING", logger="dcp_worktimes"):
            open_scheduler(url).close()  # no maxmemory: nothing is ever evicted
            raw.config_set("maxmemory", 1 << 30)
            raw.config_set("maxmemory-policy", "volatile-lru")  # only keys that expire anyway
            open_scheduler(url).close()
            assert not [r for r in caplog.records if "evicts keys" in r.getMessage()]
            raw.config_set("maxmemory-policy", "allkeys-lru")
            open_scheduler(url).close()
            open_scheduler(url).close()
        said = [r.getMessage() for r in caplog.records if "evicts keys" in r.getMessage()]
        assert len(said) == 1 and "allkeys-lru" in said[0] and "noeviction" in said[0] and PASSWORD not in said[0]
        with open_scheduler(url) as s:  # full, it evicts and takes writes: not "refusing writes"
            raw.config_set("maxmemory", 1)
            assert s.writes_refused() is None
            raw.config_set("maxmemory-policy", "noeviction")
            assert "out of memory" in s.writes_refused()
        raw.close()


def test_a_read_only_replica_is_named_as_such_not_unreachable(redis_server, tmp_path, caplog):
    # It was retried for the URL's whole retry as "unreachable".
    import logging

    require_redis()
    with RedisServer(tmp_path / "replica") as replica:
        replica_url = replica.url("ro") + "&retry=1s"
        s = open_scheduler(replica_url)
        s._link.client.replicaof("127.0.0.1", redis_server.port)
        caplog.set_level(logging.WARNING)
        with pytest.raises(Exception, match="is a read-only replica .*point --scheduler and DCP_SCHEDULER at its primary"):
            s.submit(make_job("j", 2))
        assert "unreachable" not in caplog.text
        s._link.client.replicaof("NO", "ONE")
        s.close()


def test_one_signal_stops_a_worker_whose_store_does_not_answer_within_seconds(proxy, redis_url, tmp_path):
    # It waited out the URL's retry for the call it was in, then again to say goodbye: 10 minutes,
    # past systemd's stop timeout, for a worker holding no slice.
    from dcp_worktimes.scheduler.worker import STOP_GRACE

    worker = start_worker(via(proxy, redis_url), tmp_path, "--worktime", "echo", "--cores", "1")
    log = tmp_path / "w.log"
    try:
        wait_for(lambda: b"serving" in log.read_bytes(), 60, "the worker to serve")
        proxy.cut()  # refused from now on
        time.sleep(1.0)
        t = time.monotonic()
        os.killpg(worker.pid, signal.SIGTERM)
        assert worker.wait(STOP_GRACE + 30) == 0
        assert time.monotonic() - t < STOP_GRACE + 30 and b"Traceback" not in log.read_bytes()
    finally:
        proxy.heal()
        stop(worker, signal.SIGKILL)


def test_a_stream_whose_inputs_the_server_lost_is_cancelled_saying_so_when_it_closes(redis_url):
    # A server restarted from an older snapshot lost inputs the deployer had sent: the job took
    # the total and waited for ever for slices nobody would lease.
    s = open_scheduler(redis_url)
    s.submit(make_job("lost-in", stream=True))
    s.add_slices("lost-in", [(n, pack(n)) for n in range(10)])
    s._link.client.hdel(s._keys.prefix + "sd:lost-in", "3", "4")  # what the rollback took
    s.close_input("lost-in", 10)
    st = s.status("lost-in")
    assert st["status"] == "cancelled", st
    cancel = [e for _, e in s.events("lost-in") if e["type"] == "cancel"]
    assert cancel and "lost 2 of the job's 10 inputs" in cancel[0]["reason"] and "deploy the job again" in cancel[0]["reason"]
    s.close()


def test_a_server_rolled_back_to_an_older_snapshot_tells_each_result_once(tmp_path, caplog):
    # Its event sequence restarted from the snapshot's: result events were told twice (slices
    # run again) and others skipped (new events reusing numbers the deployer had read).
    import collections
    import logging

    require_redis()
    from dcp_worktimes import compute

    with RedisServer(tmp_path / "redis", password=PASSWORD, extra={"appendonly": "no"}) as server:
        url = server.url("rollback")
        worker = start_worker(url, tmp_path, "--worktime", "echo", "--cores", "2")
        told: collections.Counter = collections.Counter()
        box: dict = {}

        def deploy() -> None:
            try:
                job = compute.for_(range(300), SLOW, worktime="echo", scheduler=url)
                job.on("accepted", lambda ev: box.setdefault("id", job.id))
                job.on("result", lambda ev: told.update([ev["sliceNumber"]]))
                box["results"] = list(job.exec(local=False))
            except BaseException as e:  # noqa: BLE001
                box["error"] = e

        caplog.set_level(logging.WARNING)
        deployer = threading.Thread(target=deploy)
        deployer.start()
        try:
            s = open_scheduler(url)
            wait_for(lambda: "id" in box and s.status(box["id"])["computed"] >= 40, what="results before the snapshot")
            s._link.client.save()
            wait_for(lambda: s.status(box["id"])["computed"] >= 120, what="results after the snapshot")
            server.restart(signal.SIGKILL, down=0.5)  # back to the snapshot: 80 results and their events gone
            deployer.join(120)
            assert not deployer.is_alive() and "error" not in box, box.get("error")
            assert box["results"] == list(range(300))
            assert sorted(told) == list(range(300)) and max(told.values()) == 1, told.most_common(3)
            assert "lost recent writes" in caplog.text
            stop(worker)
            s.close()
        finally:
            stop(worker, signal.SIGKILL)
