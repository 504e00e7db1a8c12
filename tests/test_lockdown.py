"""The OS-level layer (``runner/lockdown.py``): each seccomp and Landlock rule holds against native
code running inside a locked-down evaluator (``sandbox/hostile/native/escape.c``), the engines run
under it, and what took effect is reported."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dcp_worktimes.runner import EvaluatorPool
from dcp_worktimes.limits import Limits
from dcp_worktimes.runner.lockdown import describe, landlock_abi
from dcp_worktimes.worktime import JobSpec

ROOT = Path(__file__).resolve().parents[1]
ESCAPE = ROOT / "sandbox" / "hostile" / "native" / "escape.c"
EPERM, EACCES, ENOSYS = -errno.EPERM, -errno.EACCES, -errno.ENOSYS


def _seccomp_missing() -> str | None:
    try:
        import pyseccomp  # noqa: F401
    except (ImportError, RuntimeError, OSError) as e:
        return f"seccomp needs libseccomp2 and pyseccomp (apt-get install libseccomp2; pip install pyseccomp): {e}"
    return None


needs_seccomp = pytest.mark.skipif(_seccomp_missing() is not None, reason=str(_seccomp_missing()))
needs_landlock = pytest.mark.skipif(landlock_abi() < 1, reason="needs a kernel with Landlock (Linux 5.13+, lsm=landlock)")


@pytest.fixture(scope="module")
def escape(tmp_path_factory) -> str:
    compiler = shutil.which("cc") or shutil.which("clang") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("the native probe needs a C compiler (apt-get install clang or gcc)")
    out = tmp_path_factory.mktemp("native") / "escape.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-O1", "-o", str(out), str(ESCAPE), "-lpthread"], check=True)
    return str(out)


@pytest.fixture(scope="module")
def probes():
    from dcp_worktimes.plugins import registry

    from . import probe_worktime

    registry().register_module(probe_worktime, "tests-lockdown")


@pytest.fixture(scope="module")
def locked(escape, probes):
    """``locked(what, arg=None, network=False)`` → the probe's answer inside a locked-down evaluator."""
    pools = {}

    def run(what: str, arg: str | None = None, network: bool = False):
        name = "native-probe-network" if network else "native-probe"
        pool = pools.get(name)
        if pool is None:
            pool = pools[name] = EvaluatorPool(cores=1)
        out = next(pool.map(JobSpec(id=f"{name}-{what}", worktime=name, work=escape), [(0, [what, arg])]))
        assert out.ok, out.error
        run.lockdown = pool._slots[0].proc.lockdown if pool._slots[0].proc else {}
        return out.value

    yield run
    for pool in pools.values():
        pool.close()


@needs_seccomp
@pytest.mark.parametrize("what, arg, expected", [
    ("fork", None, EPERM),
    ("clone3", None, ENOSYS),
    ("exec", "/bin/true", EPERM),
    ("ptrace", None, EPERM),
    ("kill_parent", None, EPERM),
    ("inet", None, EPERM),
    ("inet_high_bits", None, EPERM),
    ("unix", None, EPERM),
    ("packet", None, EPERM),
    ("mount", "/tmp", EPERM),
    ("unshare", None, EPERM),
    ("io_uring", None, EPERM),
    ("bpf", None, EPERM),
    ("userfaultfd", None, EPERM),
])
def test_each_seccomp_rule_holds_against_native_code(locked, what, arg, expected):
    assert locked(what, arg) == expected
    assert locked.lockdown["seccomp"]["applied"] is True


@needs_seccomp
def test_threads_and_socket_pairs_stay_allowed(locked):
    assert locked("thread") == 0  # wasmtime, QuickJS and CPython need threads
    assert locked("socketpair") == 0  # a connected pair reaches nothing outside


@needs_seccomp
def test_a_network_worktime_keeps_its_sockets_but_not_processes(locked):
    assert locked("inet", network=True) >= 0
    assert locked("unix", network=True) >= 0
    assert locked("packet", network=True) == EPERM
    assert locked("fork", network=True) == EPERM
    assert locked.lockdown["seccomp"]["sockets_allowed"] == "AF_UNIX, AF_INET, AF_INET6, AF_NETLINK"


PREBUILT = r"""
import os, socket, sys
from dcp_worktimes.runner import lockdown
lockdown.preload(network=False)  # what a zygote does before it forks evaluators
assert set(lockdown._FILTERS) == {(False, False), (False, True)}, lockdown._FILTERS
zygote = os.getpid()
for _ in range(2):  # two evaluators of one zygote: each completes and loads its own copy
    pid = os.fork()
    if pid == 0:
        report = lockdown.apply_seccomp(network=False, spawns=False)
        taken = (False, False) not in lockdown._FILTERS
        os.kill(os.getpid(), 0)  # its own pid is the one the filter allows, not the zygote's
        try:
            os.kill(zygote, 0)
            outside = "allowed"
        except PermissionError:
            outside = "denied"
        try:
            socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            inet = "allowed"
        except PermissionError:
            inet = "denied"
        print(report["applied"], taken, outside, inet, flush=True)
        os._exit(0)
    os.waitpid(pid, 0)
print("zygote", (False, False) in lockdown._FILTERS, flush=True)  # the zygote's own stays unloaded
"""


@needs_seccomp
def test_a_zygotes_prebuilt_filter_is_completed_by_each_evaluator_for_its_own_pid():
    r = subprocess.run([sys.executable, "-c", PREBUILT], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:3] == ["True True denied denied"] * 2 + ["zygote True"]


@needs_landlock
def test_landlock_confines_files_to_what_the_evaluator_needs(locked, tmp_path):
    canary = tmp_path / "canary.txt"
    canary.write_text("secret")
    assert locked("read", str(canary)) == EACCES  # a host file next to the worker's
    assert locked("read", os.path.expanduser("~/.bashrc")) in (EACCES, -errno.ENOENT)
    assert locked("write", str(tmp_path / "dropped")) == EACCES
    assert not (tmp_path / "dropped").exists()
    assert locked("read", sys.executable) >= 0  # its own Python installation stays readable
    report = locked.lockdown["landlock"]
    assert report["applied"] is True and report["execute"] == "denied" and report["abi"] == landlock_abi()


@needs_landlock
def test_the_folder_the_worker_was_started_in_stays_out_of_reach(escape, probes, tmp_path, monkeypatch):
    # `python -m` puts the current folder first on the evaluators' sys.path, and every sys.path
    # entry was readable: a worker started in / or a home folder let work read every file there.
    canary = tmp_path / "canary.txt"
    canary.write_text("secret")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # where the probe worktime is imported from
    monkeypatch.chdir(tmp_path)
    with EvaluatorPool(cores=1) as pool:
        out = next(pool.map(JobSpec(id="cwd-read", worktime="native-probe", work=escape), [(0, ["read", str(canary)])]))
        assert out.ok, out.error
        assert out.value == EACCES


def test_worktimes_json_reports_the_lockdown_of_each_worktime():
    r = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", "worktimes", "--json"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = {w["name"]: w for w in json.loads(r.stdout)["worktimes"]}
    for name in ("map-basic", "wasi", "echo"):
        lock = rows[name]["lockdown"]
        # map-basic on V8 runs Deno as a child program (started again after a stop): it spawns.
        on_v8 = bool(rows[name]["capabilities"].get("engine", {}).get("v8"))
        assert lock["network"] is False and lock["spawns"] is on_v8
        assert lock["seccomp"]["available"] == (_seccomp_missing() is None)
        assert lock["landlock"]["available"] == (landlock_abi() > 0)
    assert describe(network=True, spawns=False)["seccomp"].get("sockets_allowed", "AF_INET") != "none"


@needs_seccomp
def test_every_built_in_engine_runs_locked_down(build):
    from dcp_worktimes.worktimes.wasi.toolchain import compile_c

    jobs = [JobSpec(id="ld-echo", worktime="echo", work=""),
            JobSpec(id="ld-js", worktime="map-basic", work="x => x + 1"),
            JobSpec(id="ld-wasi", worktime="wasi", work=build("sum_json"))]
    # map-basic on QuickJS (in process) is locked down like the others; on V8 see the test below.
    with EvaluatorPool(cores=1, config={"map-basic": {"js-engine": "quickjs"}}) as pool:
        for job in jobs:
            datum = [1, 2] if job.worktime == "wasi" else 1
            outs = list(pool.map(job, [(i, datum) for i in range(3)]))
            assert all(o.ok for o in outs), [o.error for o in outs]
            proc = pool._slots[0].proc
            lock = proc.lockdown
            assert lock["seccomp"]["applied"] is True, lock
            assert lock["landlock"]["applied"] is (landlock_abi() > 0), lock
            # It has no child process and can start none: the watchdog never scans /proc for them.
            assert proc.sealed and proc.cannot_spawn()
    del compile_c


@needs_seccomp
def test_map_basic_on_v8_keeps_process_creation_and_nothing_else():
    from dcp_worktimes.worktimes.map_basic.engine import missing

    if missing("v8"):
        pytest.skip(missing("v8"))
    job = JobSpec(id="ld-v8", worktime="map-basic", work="x => { for (;;) {} }", limits=Limits.parse(wall_time="1s"))
    with EvaluatorPool(cores=1, config={"map-basic": {"js-engine": "v8"}}) as pool:
        outs = list(pool.map(job, [(i, i) for i in range(2)]))
        # Each stop replaces Deno's sandbox: the second slice needs the engine started again.
        assert [o.error.code for o in outs] == ["ESLICETOOSLOW"] * 2, [o.error for o in outs]
        lock = pool._slots[0].proc.lockdown
        assert lock["seccomp"]["applied"] is True and "ptrace" in lock["seccomp"]["denied"], lock
        assert not pool._slots[0].proc.sealed  # it restarts Deno: the watchdog keeps listing its children
        ok = list(pool.map(JobSpec(id="ld-v8b", worktime="map-basic", work="x => x + 1"), [(0, 1)]))
        assert ok[0].ok and ok[0].value == 2


@needs_seccomp
def test_an_evaluator_with_a_helper_process_is_not_sealed(probes):
    # No new process after the lockdown, but a helper started before it could start its own: the
    # watchdog keeps looking for the evaluator's children (their memory and CPU are the slice's).
    job = JobSpec(id="helper", worktime="helper-at-prepare", work="def work(x):\n    import time; time.sleep(x); return x")
    with EvaluatorPool(cores=1) as pool:
        assert next(pool.map(job, [(0, 0.5)])).value == 0.5
        slot = pool._slots[0]
        assert slot.proc.cannot_spawn() and not slot.proc.sealed
        assert [p.name() for p in slot.family] == ["sleep"]


def test_lockdown_can_be_turned_off_and_says_so(probes, escape, monkeypatch, tmp_path):
    monkeypatch.setenv("DCP_WORKTIMES_LOCKDOWN", "0")
    with EvaluatorPool(cores=1) as pool:
        out = next(pool.map(JobSpec(id="off", worktime="native-probe", work=escape), [(0, ["inet", None])]))
        assert out.ok and out.value >= 0  # a socket again (in the empty network namespace): nothing applied
        assert "DCP_WORKTIMES_LOCKDOWN=0" in pool._slots[0].proc.lockdown["seccomp"]["reason"]
        assert not pool._slots[0].proc.sealed
