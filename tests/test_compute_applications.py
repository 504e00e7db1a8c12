"""Applications (seed-compute-api.txt, "Application Handles", examples 11 and 12): named,
versioned work functions published to the scheduler store, jobs built from them by name, their
categories served by workers that choose them, and ``compute.resume`` of such a job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from dcp_worktimes import compute
from dcp_worktimes.errors import WorkError
from dcp_worktimes.scheduler import open_scheduler
from dcp_worktimes.scheduler.base import ApplicationRefused, SchedulerError, UnknownApplication

IDENTITY = "a passphrase only the publisher has"


def cube(x):
    return x ** 3


def publish_video_processor(tmp_path, version: str = "1.0.0", identity: str = IDENTITY) -> str:
    """Example 11, adapted: three functions, shared modules from files, one with requirements."""
    (tmp_path / "ffmpeg.js").write_text("exports.scale = function (f, k) { return f * k }")
    (tmp_path / "serializer.js").write_text("exports.tag = function (v) { return 'frame:' + v }")
    requires = [str(tmp_path / "ffmpeg.js"), str(tmp_path / "serializer.js")]
    app = compute.Application("videoProcessor", version, identity)
    app.hashTags = ["#Video", "rendering"]
    app.description = "frame filters"
    app.defineFunction("enhance", requires,
                       "function (f) { progress(); return require('./serializer').tag(require('./ffmpeg').scale(f, 2)) }")
    app.defineFunction("vingette", requires, "function (f) { progress(); return require('./ffmpeg').scale(f, -1) }")
    stabilize = app.defineFunction("stabilize", requires, "function (f) { progress(); return f + 0.5 }")
    stabilize.requires({"machine": {"gpu": True}})
    return app.publish()


def test_example_11_publish_and_12_use(store, tmp_path):
    assert publish_video_processor(tmp_path) == "videoProcessor@1.0.0"
    vp = compute.Application("videoProcessor", "^1.0.0")
    frames = [1, 2, 3]
    assert vp.for_(frames, "enhance").exec(compute.marketPrice) == ["frame:2", "frame:4", "frame:6"]
    job = vp.for_(frames, "stabilize")
    # The function's requirements come with it: this machine has no GPU, so it is refused here.
    assert job.requirements == {"machine": {"gpu": True}}
    with pytest.raises(compute.RequirementsError, match="machine.gpu=true"):
        job.exec(compute.marketPrice)
    job.requirements = {}
    assert job.exec() == [1.5, 2.5, 3.5]
    assert job.application == {"name": "videoProcessor", "version": "1.0.0", "function": "stabilize",
                               "categories": ["video", "rendering"]}
    with open_scheduler(store) as s:
        assert s.get_job(job.id).application["function"] == "stabilize"
        assert s.get_application("videoProcessor").public == {"description": "frame filters"}


def test_every_for_form_works_and_python_functions_too(store):
    app = compute.Application("maths", "1.0.0", IDENTITY)
    app.define_function("square", "function (x, k) { progress(); return x * x + (k || 0) }")
    app.define_function("cube", cube)  # a Python function: the python worktime, as compute.for_ would pick
    app.define_function("tenth", {"lib": "exports.d = 10"}, "function (x) { progress(); return x / require('lib').d }")
    app.publish()
    m = compute.Application("maths", "^1")
    assert m.for_(1, 3, "square").exec() == [1, 4, 9]
    assert m.for_({"start": 2, "end": 6, "step": 2}, "square", [1]).exec() == [5, 17, 37]
    assert m.for_([10, 20], "tenth").exec() == [1, 2]
    r = m.for_(iter([2, 3]), "cube").exec()
    assert r == [8, 27] and r.key(3) == 27


def test_new_versions_are_picked_within_the_range_and_old_ones_stay(store):
    for version, k in (("1.0.0", 1), ("1.1.0", 2), ("2.0.0", 3)):
        app = compute.Application("scale", version, IDENTITY)
        app.define_function("f", f"function (x) {{ progress(); return x * {k} }}")
        app.publish()
    assert compute.Application("scale", "^1.0.0").for_([5], "f").exec() == [10]
    assert compute.Application("scale", "1.0.0").for_([5], "f").exec() == [5]
    assert compute.Application("scale").for_([5], "f").exec() == [15]  # no range: the newest
    again = compute.Application("scale", "1.1.0", IDENTITY)
    again.define_function("f", "function (x) { return 0 }")
    with pytest.raises(ApplicationRefused, match="never changes.*new version"):
        again.publish()
    twin = compute.Application("scale", "1.1.0+rebuilt", IDENTITY)  # semver ranks it equal to 1.1.0
    twin.define_function("f", "function (x) { return 0 }")
    with pytest.raises(SchedulerError, match=r"build metadata, which semver ranks equal to 1.1.0"):
        twin.publish()
    thief = compute.Application("scale", "3.0.0", "someone else")
    thief.define_function("f", "function (x) { return 0 }")
    with pytest.raises(ApplicationRefused, match="another identity"):
        thief.publish()
    assert compute.Application("scale").record().version == "2.0.0"


def test_identity_from_a_key_file(store, tmp_path):
    key = tmp_path / "publisher.key"
    key.write_bytes(os.urandom(32))
    first = compute.Application("keyed", "1.0.0", key)
    first.define_function("f", "x => x")
    first.publish()
    second = compute.Application("keyed", "1.0.1", key)  # the same file: the same identity
    second.define_function("f", "x => x")
    second.publish()
    with pytest.raises(ValueError, match="not a file"):
        compute.Application("keyed", "1.0.2", tmp_path / "missing.key")


@pytest.mark.parametrize("make, error, message", [
    (lambda: compute.Application("a", "^1.0.0", IDENTITY), ValueError, "a published version is exact"),
    (lambda: compute.Application("a", "one", None), ValueError, "invalid version range"),
    (lambda: compute.Application(" a ", "1.0.0", IDENTITY), TypeError, "without surrounding spaces"),
    (lambda: compute.Application("a", "1.0.0", IDENTITY).publish(), ValueError, "has no functions"),
    (lambda: compute.Application("a", "^1").define_function("f", "x => x"), TypeError, "uses published versions"),
    (lambda: compute.Application("a", "1.0.0", "").publish(), ValueError, "identity is empty"),
    (lambda: compute.Application("a", "1.0.0", IDENTITY).define_function("f", "x => x", worktime="nope"),
     Exception, "ENOWORKTIME"),
    (lambda: compute.Application("a", "1.0.0", IDENTITY).define_function("f", "x => x", cores=2),
     TypeError, "unknown setting"),
    (lambda: compute.Application("a", "1.0.0", IDENTITY).define_function("f", "   "), WorkError, "empty"),
])
def test_mistakes_are_refused_with_a_reason(store, make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_using_what_is_not_published_says_what_is(store):
    app = compute.Application("maths", "1.2.0", IDENTITY)
    app.define_function("square", "x => x * x")
    app.publish()
    with pytest.raises(UnknownApplication, match="no application named 'nope'"):
        compute.Application("nope", "^1").for_([1], "square")
    with pytest.raises(UnknownApplication, match=r"no version within '\^2'; published: 1.2.0"):
        compute.Application("maths", "^2").for_([1], "square")
    with pytest.raises(WorkError, match="no function 'sqare' .did you mean 'square'..; its functions: square"):
        compute.Application("maths", "^1").for_([1], "sqare")
    with pytest.raises(TypeError, match="fixed by the application's function"):
        compute.Application("maths", "^1").for_([1], "square", worktime="python")
    with pytest.raises(TypeError, match="name of one of its functions"):
        compute.Application("maths", "^1").for_([1], lambda x: x)


def test_market_price_is_market_value():
    assert compute.marketPrice is compute.marketValue
    assert compute.parse_cost("marketPrice") is compute.marketValue


RESUMER = textwrap.dedent("""
    import json, sys
    from dcp_worktimes import compute
    job = compute.resume(sys.argv[1])
    print(json.dumps({"results": list(job.exec(cores=1)), "application": job.application}))
""")


def test_an_application_job_resumes_in_another_process(store, tmp_path):
    publish_video_processor(tmp_path)
    job = compute.Application("videoProcessor", "^1.0.0").for_([1, 2], "enhance")
    job_id = job.deploy()  # stored, never run here
    out = subprocess.run([sys.executable, "-c", RESUMER, job_id], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["results"] == ["frame:2", "frame:4"]
    assert body["application"]["name"] == "videoProcessor" and body["application"]["function"] == "enhance"


def _worker(store: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dcp_worktimes.cli", "--worktime", "map-basic", "--cores", "1",
                             "--scheduler", store, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        _out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
    return err


def test_workers_choose_the_categories_they_serve(store, tmp_path):
    """``dcp-worker --category``: a worker serving "audio" never takes a video job; one serving
    "video" does; the deployer of the video job is told why it waits meanwhile."""
    publish_video_processor(tmp_path)
    audio = _worker(store, "--category", "audio")
    try:
        job = compute.Application("videoProcessor", "^1").for_([1, 2, 3], "enhance", worker_wait=1)
        t0 = time.monotonic()
        with pytest.raises(compute.RequirementsError, match="categor"):
            job.exec(local=False, timeout=60)
        assert time.monotonic() - t0 < 30
        video = _worker(store, "--category", "Video")
        try:
            job = compute.Application("videoProcessor", "^1").for_([1, 2, 3], "enhance", worker_wait=30)
            assert job.exec(local=False, timeout=90) == ["frame:2", "frame:4", "frame:6"]
            with open_scheduler(store) as s:
                workers = {r.worker for r in s.results(job.id).values()}
            assert len(workers) == 1
        finally:
            _stop(video)
    finally:
        _stop(audio)


def test_dcp_worker_lists_applications(store, tmp_path):
    publish_video_processor(tmp_path)
    r = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", "applications", "--json"], capture_output=True,
                       text=True, timeout=60, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [{"name": "videoProcessor", "version": "1.0.0", "categories": ["video", "rendering"],
                                     "functions": ["enhance", "stabilize", "vingette"], "description": "frame filters"}]
    table = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", "applications"], capture_output=True, text=True,
                           timeout=60, env=dict(os.environ)).stdout
    assert "videoProcessor" in table and "video, rendering" in table


def test_a_function_for_a_worktime_only_remote_workers_have(store):
    app = compute.Application("render", "1.0.0", IDENTITY)
    app.define_function("frame", "render(scene)", worktime="blender-like", custom_worktime=True)
    app.publish()
    job = compute.Application("render").for_([1, 2], "frame", worker_wait=0.5)
    assert job.custom_worktime and job.worktime == "blender-like"
    with pytest.raises(compute.RequirementsError, match="blender-like"):  # deployed, then no worker has it
        job.exec(local=False, timeout=60)
    with pytest.raises(Exception, match="ENOWORKTIME"):  # and this machine cannot run it either
        compute.Application("render").for_([1], "frame").exec()
