"""Confinement: Blender's hostile corpus, the process tree the limits see, and workers without a sandbox."""

from __future__ import annotations

import math
import os
import secrets
import threading
import time

import psutil
import pytest
from blender_testing import SCENE, hostile, save_scene

from dcp_worktimes.limits import Limits
from dcp_worktimes.runner import EvaluatorPool
from dcp_worktimes.testing import run
from dcp_worktimes.worktime import JobSpec

OPTIONS = {"engine": "CYCLES", "resolution": [32, 32], "samples": 1}
HELLO = "import bpy\n"


@pytest.fixture(scope="module")
def pool(bwrap):
    with EvaluatorPool(cores=1) as p:
        yield p


def hostile_run(pool, case, datum=None, **limits):
    return run(pool, "blender", hostile(case), datum, options=OPTIONS, limits=Limits.parse(**{"wall_time": "30s", **limits}))


def healthy(pool) -> bool:
    out = run(pool, "blender", HELLO, 1, options=OPTIONS)
    return out.ok and out.value["image"][:4] == b"\x89PNG"


class Blenders:
    """Watches this test process's descendants while a slice runs: every blender/bwrap that
    appears (those alive before, such as other pools' evaluators, are not this test's). A pid is
    looked at again on every pass: bwrap forks the child that then execs Blender, so a pid first
    seen as "bwrap" may be Blender a moment later."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[psutil.Process, str]] = {}
        self._before = {p.pid for p in psutil.Process().children(recursive=True)}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> "Blenders":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.is_set():
            for p in psutil.Process().children(recursive=True):
                try:
                    if p.pid not in self._before and p.name() in ("blender", "bwrap"):
                        known = self.seen.get(p.pid)
                        if known is None or known[0].create_time() == p.create_time():  # not a reused pid
                            self.seen[p.pid] = (known[0] if known else p, p.name())
                except psutil.Error:
                    pass
            time.sleep(0.05)

    def names(self) -> list[str]:
        return [name for _, name in self.seen.values()]

    def alive(self) -> list[str]:
        left = []
        for p, name in self.seen.values():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{p.pid} {name}")
            except psutil.Error:
                pass
        return left

    def gone_within(self, seconds: float) -> bool:
        end = time.monotonic() + seconds
        while self.alive() and time.monotonic() < end:
            time.sleep(0.1)
        return not self.alive()


# -- the Blender cases of the hostile corpus (sandbox/hostile/blender/) -----------------------------
def test_reading_etc_passwd_finds_no_such_file(pool):
    out = hostile_run(pool, "etc_passwd")
    assert out.error.code == "EUNCAUGHT" and out.error.name == "FileNotFoundError"
    assert "root:" not in out.error.message
    assert healthy(pool)


def test_a_socket_to_the_host_is_refused(pool):
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    try:
        out = hostile_run(pool, "network_access", ["127.0.0.1", server.getsockname()[1]])
        assert out.error.code == "EUNCAUGHT" and out.error.name == "PermissionError"  # the seccomp filter
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()


def test_a_fork_bomb_cannot_fork(pool):
    with Blenders() as watch:
        out = hostile_run(pool, "fork_bomb")
    assert out.error.code == "EUNCAUGHT" and out.error.name == "PermissionError"
    assert watch.names().count("blender") <= 1  # no forked copies of Blender
    assert healthy(pool)


def test_writes_outside_scratch_fail_everywhere(pool, tmp_path):
    host_file = tmp_path / "escaped.txt"
    out = hostile_run(pool, "write_outside", str(host_file))
    assert out.ok, out.error
    outcome = out.value["info"]
    assert len(outcome) == 7 and "written" not in outcome.values(), outcome
    assert not host_file.exists()


def test_filling_the_disk_stops_at_the_scratch_cap(pool):
    out = hostile_run(pool, "fill_disk")
    assert out.error.code == "EOUTPUTLIMIT" and out.error.limit == "scratch" and "/scratch" in out.error.message
    assert "No space left" in out.error.message
    assert healthy(pool)  # a fresh Blender, a fresh /scratch


def test_an_endless_loop_is_stopped_at_the_wall_time(pool):
    t = time.monotonic()
    with Blenders() as watch:
        out = hostile_run(pool, "infinite_loop", wall_time="2s")
        assert out.error.code == "ESLICETOOSLOW"
        assert watch.gone_within(5), watch.alive()
    assert time.monotonic() - t < 30
    assert healthy(pool)


def test_a_scene_script_that_never_finishes_loading_fails_the_job(bwrap):
    with EvaluatorPool(cores=1, prepare_timeout=5) as p, Blenders() as watch:
        out = run(p, "blender", hostile("load_forever"), 1, options=OPTIONS)
        assert out.error.code == "ESLICETOOSLOW" and "longer than 5 s" in out.error.message
        assert watch.gone_within(5), watch.alive()


def test_the_sandbox_is_nested_in_the_evaluator(pool):
    """bwrap runs inside the evaluator's own namespaces: Blender sees a new PID namespace (bwrap's
    init is pid 1), user nobody, no capabilities, a loopback-only network, a read-only system."""
    script = """
import os
def dcp_datum(scene, datum):
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {"pid": os.getpid(), "uid": os.getuid(), "caps": status["CapEff"].strip(),
            "nics": sorted(line.split(":")[0].strip() for line in open("/proc/self/net/dev").readlines()[2:]),
            "home": os.path.exists("/home"),
            "passwd": os.path.exists("/etc/passwd"), "root_writable": os.access("/", os.W_OK),
            "scratch_writable": os.access("/scratch", os.W_OK), "processes": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())}
"""
    out = run(pool, "blender", script, 1, options=OPTIONS)
    assert out.ok, out.error
    info = out.value["info"]
    assert info["pid"] == 2 and info["processes"] == [1, 2]
    assert info["uid"] == 65534 and int(info["caps"], 16) == 0
    assert info["nics"] == ["lo"]
    assert not info["home"] and not info["passwd"] and not info["root_writable"] and info["scratch_writable"]


# -- the limits see Blender's whole tree -------------------------------------------------------------
def test_a_slice_killed_by_the_watchdog_leaves_no_blender_behind(pool):
    with Blenders() as watch:
        out = hostile_run(pool, "never_progress", progress_timeout="1s")
        assert out.error.code == "ENOPROGRESS"  # the host killed the evaluator's process group
        assert "blender" in watch.names()
        assert watch.gone_within(5), watch.alive()


def test_memory_of_blender_counts_against_the_slice(pool, scene_blend):
    # Blender's own footprint once the scene is loaded (~250 MB) is the worktime's, not the slice's:
    ok = run(pool, "blender", scene_blend.read_bytes(), 1, limits=Limits.parse(memory="128MiB"))
    assert ok.ok, ok.error
    with Blenders() as watch:
        out = hostile_run(pool, "memory_balloon", memory="128MiB")
        assert out.error.code == "EMEMORYLIMIT"
        assert watch.gone_within(5), watch.alive()


def test_each_slice_is_charged_its_own_cpu_time_not_the_job_s(pool, scene_blend):
    """Blender lives across slices; a slice's CPU limit counts only what Blender used for it (the
    job's total here is several times the per-slice limit)."""
    # Sized from this machine's own figures (a frame costs 40-60 ms of CPU here, ~200 ms for the
    # first of each Blender): the limit is 3x the costliest frame, the job 3x the limit.
    probe = JobSpec(id=f"cpu-{secrets.token_hex(4)}", worktime="blender", work=scene_blend.read_bytes(),
                    options={"samples": 64})
    costs = [o.cpu_time for o in pool.map(probe, [(i, 1 + i % 6) for i in range(6)])]
    limit = max(0.3, 3 * max(costs))
    frames = math.ceil(3 * limit / (sum(costs[1:]) / len(costs[1:])))  # the first frame is no typical one
    job = JobSpec(id=f"cpu-{secrets.token_hex(4)}", worktime="blender", work=scene_blend.read_bytes(),
                  options={"samples": 64}, limits=Limits.parse(cpu_time=f"{limit:.3f}s"))
    outs = list(pool.map(job, [(i, 1 + i % 6) for i in range(frames)]))
    assert all(o.ok for o in outs), [o.error for o in outs if not o.ok][:1]
    total = sum(o.cpu_time for o in outs)
    assert total > 2 * limit, total  # the job as a whole is well over the per-slice limit ...
    assert all(0 < o.cpu_time < limit for o in outs), [o.cpu_time for o in outs]  # ... no slice is


def test_closing_the_pool_ends_every_blender(bwrap, scene_blend):
    with Blenders() as watch:
        with EvaluatorPool(cores=2) as p:
            job = JobSpec(id="close", worktime="blender", work=scene_blend.read_bytes(), options={"samples": 1})
            assert all(o.ok for o in p.map(job, [(i, 1 + i) for i in range(4)]))
            assert "blender" in watch.names()
        assert watch.gone_within(5), watch.alive()


# -- .blend files cannot run their own scripts ---------------------------------------------------------
def test_scripts_inside_a_blend_file_do_not_run(pool, blender, tmp_path, direct_render):
    autorun = SCENE + '''
text = bpy.data.texts.new("autorun.py")
text.write("import bpy\\nbpy.context.scene.render.resolution_x = 16\\n")
text.use_module = True   # a registered text block: Blender runs it when the file loads, if allowed
'''
    blend = save_scene(blender, autorun, tmp_path / "autorun.blend")
    import subprocess

    allowed = subprocess.run([blender, "-b", "--factory-startup", "--enable-autoexec", str(blend), "--python-expr",
                              "import bpy; print('WIDTH', bpy.context.scene.render.resolution_x)"],
                             capture_output=True, text=True, timeout=120).stdout
    assert "WIDTH 16" in allowed  # the file really carries a script that runs when trusted
    out = run(pool, "blender", blend.read_bytes(), 1)
    assert out.ok and out.value["width"] == 64


# -- a worker without a sandbox ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def bare_pool(blender):
    """Evaluators that cannot find bwrap (not on their PATH): no sandbox on this 'worker'."""
    env = {**os.environ, "PATH": "/nonexistent"}
    with EvaluatorPool(cores=1, env=env, config={"blender": {"blender": blender}}) as p:
        yield p


@pytest.fixture(scope="module")
def trusting_pool(blender):
    env = {**os.environ, "PATH": "/nonexistent"}
    with EvaluatorPool(cores=1, env=env, config={"blender": {"blender": blender, "trusted": True}}) as p:
        yield p


def test_without_a_sandbox_scene_scripts_are_refused_saying_why(bare_pool):
    out = run(bare_pool, "blender", HELLO, 1, options=OPTIONS)
    assert out.error.code == "ENOWORKTIME" and out.error.worker_fault
    assert "no OS-level sandbox" in out.error.message and "--trust-work blender" in out.error.message
    assert "apt-get install bubblewrap" in out.error.message


def test_without_a_sandbox_blend_files_still_render(bare_pool, scene_blend):
    out = run(bare_pool, "blender", scene_blend.read_bytes(), 2, options={"samples": 1})
    assert out.ok and out.value["frame"] == 2


def test_a_trusting_owner_runs_scene_scripts_unsandboxed(trusting_pool):
    out = run(trusting_pool, "blender", HELLO, 1, options=OPTIONS)
    assert out.ok and out.value["image"][:4] == b"\x89PNG"
