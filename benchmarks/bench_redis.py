"""End-to-end throughput of the Redis scheduler vs the SQLite one vs bare Redis Streams.

    python benchmarks/bench_redis.py [--slices 100000] [--repeat 3] [--scaling 1,2,4]

Needs ``redis-server`` (``apt-get install redis-server``; a private one is started on a free
loopback port, AOF on) and ``pip install 'dcp-worktimes[redis]'``.

* **Redis backend**: ``compute.for_(0, n-1, 'function(i){ return i }').exec(local=False)`` on a
  ``redis://`` URL, run by ``dcp-worker --worktime map-basic --cores 1`` processes (two, one per
  core of the goal's 2-core machine) started and warmed before the timing: deploy, lease in
  blocks, run on sandboxed QuickJS evaluators (``--js-engine v8`` for V8), report, follow the job's event stream, collect the
  results.
* **SQLite backend**: the same job and the same two workers on a ``sqlite:///`` store.
* **bare Redis Streams**: the same tasks with no scheduler and no sandbox: a producer ``XADD``s one
  entry per task (pipelined), two consumer processes ``XREADGROUP`` them (100 at a time), compute
  the identity in Python, ``XADD`` one result entry each and ``XACK``; the producer reads results
  until it has all. What one-entry-per-task costs on the same server.
* **Scaling**: the Redis backend with 1, 2, 4 worker processes.

``--worktime echo`` runs the same slices without a JavaScript engine: what the stores and the
host's worker loop carry when the work costs nothing.

Medians of ``--repeat`` interleaved rounds (the machine is shared: load drifts within seconds);
``uptime`` is printed before and after.

Goals: >= 200k slices/s end to end on a 2-core machine, and the Redis backend at least
80 % of the SQLite backend in the same run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))

from _table import print_table  # noqa: E402

#: The work of each worktime the benchmark can use: the identity.
WORKS = {"map-basic": "function(i){ return i }", "echo": ""}


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return f"load average {os.getloadavg()}"


class Workers:
    """``count`` dcp-worker processes (one evaluator each) on ``url``."""

    def __init__(self, url: str, count: int, worktime: str) -> None:
        from dcp_worktimes.scheduler import open_scheduler

        env = {**os.environ, "DCP_SCHEDULER": url, "DCP_PROGRESS": "0"}
        self.procs = [subprocess.Popen([sys.executable, "-m", "dcp_worktimes.cli", "--worktime", worktime,
                                        "--cores", "1"], env=env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True) for _ in range(count)]
        with open_scheduler(url) as s:
            deadline = time.monotonic() + 60
            while len(s.workers()) < count:
                if time.monotonic() > deadline:
                    raise RuntimeError("the dcp-worker processes did not attach within 60 s")
                time.sleep(0.05)

    def close(self) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in self.procs:
            p.wait(60)


def server_cpu(port: int) -> float:
    """CPU seconds the redis-server process has used so far."""
    import redis

    info = redis.Redis(port=port).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def e2e(url: str, n: int, worktime: str) -> float:
    from dcp_worktimes import compute

    t = time.perf_counter()
    results = compute.for_(0, n - 1, WORKS[worktime], worktime=worktime, scheduler=url).exec(local=False)
    elapsed = time.perf_counter() - t
    values = list(results)
    assert len(values) == n and values[0] == 0 and values[-1] == n - 1
    return elapsed


# -- bare Redis Streams ------------------------------------------------------------------------------
def _consumer(port: int, name: str, stop_at: int) -> None:
    import redis

    r = redis.Redis(port=port)
    while True:
        got = r.xreadgroup("workers", name, {"tasks": ">"}, count=100, block=1000)
        if not got:
            if int(r.get("done") or 0) >= stop_at:
                return
            continue
        entries = got[0][1]
        pipe = r.pipeline(transaction=False)
        for entry_id, fields in entries:
            pipe.xadd("results", {"i": fields[b"i"], "v": int(fields[b"i"])})  # the identity, as JSON work would
            pipe.xack("tasks", "workers", entry_id)
        pipe.execute()


def bare_streams(port: int, n: int, consumers: int = 2) -> float:
    import redis

    r = redis.Redis(port=port)
    r.delete("tasks", "results", "done")
    r.xgroup_create("tasks", "workers", id="0", mkstream=True)
    procs = [multiprocessing.Process(target=_consumer, args=(port, f"c{i}", n)) for i in range(consumers)]
    for p in procs:
        p.start()
    t = time.perf_counter()
    for start in range(0, n, 1000):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(n, start + 1000)):
            pipe.xadd("tasks", {"i": i})
        pipe.execute()
    seen = 0
    last = "0-0"
    while seen < n:
        got = r.xread({"results": last}, count=10_000, block=1000)
        if got:
            entries = got[0][1]
            seen += len(entries)
            last = entries[-1][0]
    elapsed = time.perf_counter() - t
    r.set("done", n)
    for p in procs:
        p.join(30)
    r.delete("tasks", "results")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scaling", default="1,2,4", help="worker process counts for the scaling rows")
    ap.add_argument("--worktime", default="map-basic", choices=sorted(WORKS),
                    help="echo: the same slices without a JavaScript engine (what the stores and the host carry)")
    ap.add_argument("--js-engine", default="quickjs", choices=["quickjs", "v8"],
                    help="map-basic's engine in the workers (default: QuickJS, what `pip install dcp-worktimes` "
                         "gives; V8 where the deno package is installed, as the test extra does)")
    args = ap.parse_args()
    os.environ["DCP_PROGRESS"] = "0"
    os.environ["DCP_WORKTIMES_JS_ENGINE"] = args.js_engine  # the workers', as their --js-engine
    from dcp_worktimes.scheduler.redis.server import RedisServer

    n, wt = args.slices, args.worktime
    before = uptime()
    with tempfile.TemporaryDirectory() as tmp:
        with RedisServer(os.path.join(tmp, "redis")) as server:
            stores = {"redis": server.url("bench"), "sqlite": f"sqlite:///{tmp}/bench.db"}
            times: dict[str, list[float]] = {"redis": [], "sqlite": [], "streams": []}
            cpu: list[float] = []  # the Redis server's CPU seconds per Redis-backend run
            for _ in range(args.repeat):
                for kind, url in stores.items():
                    pool = Workers(url, 2, wt)  # only the measured store's workers are alive
                    try:
                        e2e(url, 1000, wt)  # warm: evaluators forked, the work compiled once
                        used = server_cpu(server.port)
                        times[kind].append(e2e(url, n, wt))
                        if kind == "redis":
                            cpu.append(server_cpu(server.port) - used)
                    finally:
                        pool.close()
                times["streams"].append(bare_streams(server.port, n))
            scaling: dict[int, list[float]] = {}
            counts = [int(c) for c in args.scaling.split(",") if c.strip()]
            for _ in range(args.repeat):
                for count in counts:
                    pool = Workers(stores["redis"], count, wt)
                    try:
                        e2e(stores["redis"], 1000, wt)
                        scaling.setdefault(count, []).append(e2e(stores["redis"], n, wt))
                    finally:
                        pool.close()
    after = uptime()

    t = {k: statistics.median(v) for k, v in times.items()}
    rows = [
        ("Redis backend, 2 dcp-worker processes", t["redis"], n / t["redis"], f"{t['sqlite'] / t['redis']:.2f}x",
         f"{t['streams'] / t['redis']:.2f}x"),
        ("SQLite backend, 2 dcp-worker processes", t["sqlite"], n / t["sqlite"], "1.00x",
         f"{t['streams'] / t['sqlite']:.2f}x"),
        ("bare Redis Streams, one entry per task, 2 consumers", t["streams"], n / t["streams"],
         f"{t['sqlite'] / t['streams']:.2f}x", "1.00x"),
    ]
    for count, runs in scaling.items():
        secs = statistics.median(runs)
        rows.append((f"Redis backend, {count} worker process{'es' if count > 1 else ''}", secs, n / secs,
                     f"{t['sqlite'] / secs:.2f}x", f"{t['streams'] / secs:.2f}x"))
    ratio = t["sqlite"] / t["redis"]
    note = (f"{n:,} trivial {wt} slices end to end{' on ' + args.js_engine if wt == 'map-basic' else ''}, median of {args.repeat}; cores: {os.cpu_count()}.\n"
            f"redis-server CPU per Redis-backend run: {statistics.median(cpu):.2f} s "
            f"({statistics.median(cpu) / t['redis']:.0%} of one core while it ran).\n"
            f"before: {before}\nafter:  {after}\n"
            f"Goals: >= 200k slices/s end to end: {'met' if n / t['redis'] >= 200_000 else 'NOT met'} "
            f"({n / t['redis']:,.0f}/s); Redis >= 80 % of SQLite: {'met' if ratio >= 0.8 else 'NOT met'} ({ratio:.0%}).")
    print_table("Redis scheduler: end-to-end throughput",
                ("setup", "seconds", "slices/s", "vs SQLite", "vs bare Streams"), rows, note)


if __name__ == "__main__":
    main()
