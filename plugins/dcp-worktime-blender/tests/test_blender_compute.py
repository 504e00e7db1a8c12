"""What deployers and worker owners do: the Compute API, requirements, and a real dcp-worker process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from blender_testing import pixels

from dcp_worktimes.errors import RequirementsError


@pytest.fixture
def store(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/jobs.db"
    monkeypatch.setenv("DCP_SCHEDULER", url)
    return url


def test_compute_for_a_blend_path_renders_every_frame_in_order(store, scene_blend, direct_render):
    from dcp_worktimes import compute

    job = compute.for_(range(1, 7), scene_blend, options={"engine": "CYCLES", "samples": 4})  # .blend: the blender worktime
    frames = job.exec(cores=2)
    assert [f["frame"] for f in frames] == [1, 2, 3, 4, 5, 6]
    assert pixels(frames[4]["image"]) == pixels(direct_render(scene_blend, 5))


def test_requirements_match_the_probed_engines(store, scene_blend):
    from dcp_worktimes import compute

    job = compute.for_([1], scene_blend, worktime="blender", options={"samples": 1})
    job.requirements = {"blender": {"engines": {"CYCLES": True}}}
    assert job.exec()[0]["frame"] == 1
    job = compute.for_([1], scene_blend, worktime="blender")
    job.requirements = {"blender": {"engines": {"LUXCORE": True}}}
    with pytest.raises(RequirementsError, match="blender.engines.LUXCORE=true"):
        job.exec()


def test_a_scene_script_deploys_as_text(store):
    from dcp_worktimes import compute

    script = "import bpy\nscene = bpy.context.scene\nscene.render.engine = 'BLENDER_WORKBENCH'\nscene.frame_end = 3\n"
    frames = compute.for_(range(1, 4), script, worktime="blender", options={"resolution": [16, 16]}).exec()
    assert [(f["frame"], f["width"], f["engine"]) for f in frames] == [(1, 16, "BLENDER_WORKBENCH"),
                                                                      (2, 16, "BLENDER_WORKBENCH"),
                                                                      (3, 16, "BLENDER_WORKBENCH")]


def test_a_dcp_worker_process_renders_a_deployed_job(store, scene_blend, bwrap):
    from dcp_worktimes import compute
    from dcp_worktimes.scheduler import open_scheduler

    worker = subprocess.Popen([sys.executable, "-m", "dcp_worktimes.cli", "--worktime", "blender", "--cores", "2",
                               "--scheduler", store], start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        s = open_scheduler(store)
        deadline = time.monotonic() + 120  # the worker probes Blender first (cached on disk after)
        while not list(s.workers()) and time.monotonic() < deadline:
            time.sleep(0.1)
        caps = next(iter(s.workers())).capabilities
        assert caps["blender"]["engines"]["CYCLES"] and caps["blender"]["sandbox"] == "bwrap"
        job = compute.for_(range(1, 5), scene_blend, worktime="blender", options={"samples": 1}, scheduler=store)
        job.requirements = {"blender": {"engines": {"CYCLES": True}, "scene_scripts": True}}
        frames = job.exec(local=False)
        assert [f["frame"] for f in frames] == [1, 2, 3, 4]
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(60)
