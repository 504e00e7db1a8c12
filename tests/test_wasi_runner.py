"""The ``wasi`` worktime through the sandboxed runner and the ``dcp-worker slice`` CLI."""

from __future__ import annotations

import json
import os
import shutil
import sys
import subprocess
import threading
import time
from pathlib import Path

import pytest

from dcp_worktimes.limits import Limits
from dcp_worktimes.runner import EvaluatorPool, run_slice
from dcp_worktimes.worktime import JobSpec

PROGRAMS = Path(__file__).resolve().parent / "wasi_programs"
HOSTILE = Path(__file__).resolve().parents[1] / "sandbox" / "hostile"


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DCP_WORKTIMES_CACHE", str(tmp_path_factory.getbasetemp() / "wasm-cache"))


def job(work, limits=Limits(), **kw) -> JobSpec:
    return JobSpec(id=f"wasi-{time.monotonic_ns()}", worktime="wasi", work=work, limits=limits, **kw)


def test_run_slice_returns_the_modules_json_and_console(build):
    events: list = []
    out = run_slice(job(build("sum_json")), [1, 2, 3], on_event=lambda *e: events.append(e))
    assert out.ok, out.error
    assert out.value == {"sum": 6, "count": 3, "argv": []}
    assert any(kind == "console" and p["message"] == "summed 3 numbers" for kind, _, p in events)


def test_pool_runs_many_slices_and_survives_failing_ones(build):
    j = job(build("sum_json"))
    with EvaluatorPool(cores=2) as pool:
        outs = sorted(pool.map(j, [(i, list(range(i))) for i in range(30)]), key=lambda o: o.number)
        assert [o.value["sum"] for o in outs] == [sum(range(i)) for i in range(30)]
        bomb = next(pool.map(job(build("memory_balloon", HOSTILE / "c"), Limits.parse(memory="48MiB")), [(0, None)]))
        assert bomb.error.code == "EMEMORYLIMIT"
        again = next(pool.map(j, [(0, [5])]))
        assert again.ok and again.value["sum"] == 5


def test_infinite_loop_through_the_runner_stops_near_its_wall_limit(build):
    out = run_slice(job(build("infinite_loop"), Limits.parse(wall_time="1s")), None)
    assert out.error.code == "ESLICETOOSLOW"
    assert out.wall_time < 2.0, out.wall_time


def test_cli_slice_prints_the_modules_json_result(build, tmp_path):
    exe = (shutil.which("dcp-worker", path=os.path.dirname(sys.executable)) or shutil.which("dcp-worker")
           or pytest.fail("dcp-worker is not installed in this environment (pip install -e .)"))
    prog = tmp_path / "prog.wasm"
    prog.write_bytes(build("sum_json"))
    proc = subprocess.run([exe, "slice", "--worktime", "wasi", "--work", str(prog), "--datum", "[1,2,3]"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"sum": 6, "count": 3, "argv": []}


def test_cli_slice_reports_the_exit_status(build, tmp_path):
    exe = (shutil.which("dcp-worker", path=os.path.dirname(sys.executable)) or shutil.which("dcp-worker")
           or pytest.fail("dcp-worker is not installed in this environment (pip install -e .)"))
    prog = tmp_path / "exit3.wasm"
    prog.write_bytes(build("exit3"))
    proc = subprocess.run([exe, "slice", "--worktime", "wasi", "--work", str(prog)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "status 3" in proc.stderr and "giving up" in proc.stderr


def test_a_guest_sleeping_in_a_wasi_call_is_stopped_by_the_supervisor(build):
    # The epoch only interrupts running wasm code; the evaluator is killed from outside instead.
    started = time.monotonic()
    out = run_slice(job(build("sleep"), Limits.parse(wall_time="1s")), None)
    assert out.error is not None and out.error.code == "ESLICETOOSLOW", out.error
    assert time.monotonic() - started < 10


# In an evaluator, wasi modules run without epoch checks (~1.6x on tight loops): a slice that must
# stop ends its evaluator process instead (Worktime.stop_process). Each verdict must be the one the
# in-process path gives, for that slice alone, and the slices around it must keep their results.
MISBEHAVE = r"""
#include <stdio.h>
#include <string.h>
int main(void) {
    int mode = 0;
    if (scanf("%d", &mode) != 1) return 2;
    volatile unsigned long spin = 0;
    static char block[1 << 20];
    switch (mode) {
    case 1: for (;;) spin++;                                   /* wall, CPU, no progress */
    case 2: for (;;) { printf("%0512d\n", 7); fflush(stdout); } /* output */
    case 3: { memset(block, 'x', sizeof block);                 /* scratch */
              FILE *f = fopen("/tmp/big", "w");
              for (;;) { fwrite(block, 1, sizeof block, f); fflush(f); spin++; } }
    default: printf("%d\n", mode * 10); return 0;
    }
}
"""


@pytest.mark.parametrize("mode, limits, options, code", [
    (1, Limits.parse(wall_time="1s"), {}, "ESLICETOOSLOW"),
    (1, Limits.parse(wall_time="30s", cpu_time="0.5s"), {}, "ECPULIMIT"),
    (1, Limits.parse(wall_time="30s", progress_timeout="1s"), {}, "ENOPROGRESS"),
    (2, Limits.parse(wall_time="30s", output="256KiB"), {}, "EOUTPUTLIMIT"),
    (3, Limits.parse(wall_time="30s"), {"scratch_size": "4MiB"}, "EOUTPUTLIMIT"),
], ids=["wall", "cpu", "no-progress", "output", "scratch"])
def test_a_slice_stopped_in_an_evaluator_fails_alone_with_its_own_verdict(mode, limits, options, code):
    from dcp_worktimes.worktimes.wasi.toolchain import compile_c

    j = job(compile_c(MISBEHAVE), limits, options=options)
    with EvaluatorPool(cores=1) as pool:
        assert [o.value for o in pool.map(j, [(0, 4)])] == [40]  # the evaluator is up for this job
        before = pool._slots[0].proc.pid
        started = time.monotonic()
        outs = sorted(pool.map(j, [(1, 5), (2, mode), (3, 6)]), key=lambda o: o.number)
        elapsed = time.monotonic() - started
        assert [o.value if o.ok else o.error.code for o in outs] == [50, code, 60], outs[1].error
        assert elapsed < 10, elapsed  # stopped near its limit, not at the 30 s wall
        # the guest had no epoch checks to trap at: its evaluator was ended, a new one ran slice 3
        assert pool._slots[0].proc.pid != before


def test_a_cancelled_slice_in_an_evaluator_stops(build):
    j = job(build("infinite_loop"), Limits.parse(wall_time="30s", progress_timeout=None))
    with EvaluatorPool(cores=1) as pool:
        threading.Timer(0.5, pool.cancel, [j.id]).start()
        started = time.monotonic()
        outs = list(pool.map(j, [(0, None)]))
        assert outs[0].error.code == "ECANCELLED"
        assert time.monotonic() - started < 5


def test_a_verdict_whose_slice_finished_before_the_kill_never_lands_on_the_next_run():
    """The guest goes on until the kill arrives: a slice over its output cap may still finish, and
    its evaluator answer the whole run, before it dies. That evaluator must not take the next run
    (its death would be blamed on the next run's slice). Busy host threads widen the window, as
    other slots' threads do on a worker (without the fix: ~40 % of rounds failed a slice)."""
    from dcp_worktimes.worktimes.wasi.toolchain import compile_c

    src = r"""
    #include <stdio.h>
    #include <string.h>
    static char buf[20000];
    int main(void) { int n = 0; if (scanf("%d", &n) != 1) return 2;
      if (n > 0) { memset(buf, '1', sizeof buf); fwrite(buf, 1, sizeof buf, stdout); return 0; }
      printf("%d\n", -n); return 0; }
    """
    j = job(compile_c(src), Limits.parse(wall_time="30s", output="1KiB"))
    stop = threading.Event()

    def hog() -> None:
        while not stop.is_set():
            pass

    hogs = [threading.Thread(target=hog, daemon=True) for _ in range(3)]
    for t in hogs:
        t.start()
    try:
        with EvaluatorPool(cores=1) as pool:
            for _ in range(25):
                big = next(pool.map(j, [(0, 20000)]))
                assert big.error is not None and big.error.code == "EOUTPUTLIMIT", big.error
                small = sorted(pool.map(j, [(1, -7), (2, -8)]), key=lambda o: o.number)
                assert [o.value if o.ok else o.error.code for o in small] == [7, 8]
    finally:
        stop.set()


def test_json_carries_big_ints_and_says_what_to_do_past_its_reach(build):
    # Python's 4300-digit default failed 10**5000 both ways, telling the deployer to call the
    # host's sys.set_int_max_str_digits(); JSON nested past Python's recursion named that limit.
    from dcp_worktimes.values import MAX_DEPTH, MAX_INT_DIGITS
    from dcp_worktimes.worktimes.wasi.toolchain import compile_c

    cat = compile_c(r"""
    #include <stdio.h>
    int main(void) { int c; while ((c = getchar()) != EOF) if (c != '"') putchar(c == '#' ? '[' : c); return 0; }
    """)
    with EvaluatorPool(cores=1) as pool:
        outs = sorted(pool.map(job(cat), [(0, 10**5000), (1, -(10**199_000)), (2, 10**MAX_INT_DIGITS),
                                          (3, "#" * 100_000)]), key=lambda o: o.number)
    assert outs[0].value == 10**5000 and outs[1].value == -(10**199_000)
    assert outs[2].error.code == "EUNSERIALIZABLE" and "use content_type msgpack" in outs[2].error.message
    assert "set_int_max_str_digits" not in outs[2].error.message
    assert outs[3].error.code == "EUNSERIALIZABLE" and f"nested more than {MAX_DEPTH} levels" in outs[3].error.message
