"""Frames rendered through the sandboxed runner with real Blender, compared with direct renders."""

from __future__ import annotations

import secrets
import threading
import time

import pytest
from blender_testing import pixels

from dcp_worktimes.errors import WorkError
from dcp_worktimes.limits import Limits
from dcp_worktimes.runner import EvaluatorPool
from dcp_worktimes.testing import run
from dcp_worktimes.worktime import JobSpec, SliceContext

from dcp_worktime_blender import BlenderWorktime

PNG = b"\x89PNG\r\n\x1a\n"
#: A frame that takes minutes: a million samples, and no adaptive sampling to stop early.
ENDLESS = {"frame": 1, "set": {"scene.cycles.use_adaptive_sampling": False}}


@pytest.fixture(scope="module")
def pool(blender):
    with EvaluatorPool(cores=2) as p:
        yield p


def job(work, options=None, limits=None) -> JobSpec:
    return JobSpec(id=f"blender-{secrets.token_hex(4)}", worktime="blender", work=work, options=dict(options or {}),
                   limits=limits or Limits())


def render(pool, work, datums, options=None, limits=None, events=None):
    """Outcomes of one job over ``datums``, in order."""
    j = job(work, options, limits)
    sink = (lambda kind, n, payload: events.append((n, kind, payload))) if events is not None else None
    return sorted(pool.map(j, list(enumerate(datums)), sink), key=lambda o: o.number)


def test_cycles_frames_equal_direct_blender_renders(pool, scene_blend, direct_render):
    frames = [1, 3, 6]
    outs = render(pool, scene_blend.read_bytes(), frames)
    assert all(o.ok for o in outs), [o.error for o in outs]
    seen = []
    for frame, out in zip(frames, outs):
        r = out.value
        assert r["image"][:8] == PNG and r["format"] == "PNG"
        assert (r["width"], r["height"], r["frame"], r["engine"]) == (64, 64, frame, "CYCLES")
        assert r["render_time"] > 0 and r["peak_memory"] > 1 << 20
        mode, size, data = pixels(r["image"])
        assert size == (64, 64)
        assert (mode, size, data) == pixels(direct_render(scene_blend, frame)), f"frame {frame} differs"
        seen.append(data)
    assert len(set(seen)) == 3  # the cube moves: each frame is its own picture


def test_workbench_frames_equal_direct_blender_renders(pool, scene_blend, direct_render):
    outs = render(pool, scene_blend.read_bytes(), [2, 5], options={"engine": "BLENDER_WORKBENCH"})
    assert all(o.ok for o in outs), [o.error for o in outs]
    for frame, out in zip([2, 5], outs):
        assert out.value["engine"] == "BLENDER_WORKBENCH"
        assert pixels(out.value["image"]) == pixels(direct_render(scene_blend, frame, "-E", "BLENDER_WORKBENCH"))


def test_options_set_size_and_format(pool, scene_blend):
    out = render(pool, scene_blend.read_bytes(), [1], options={"resolution": [48, 32], "percentage": 50,
                                                             "engine": "BLENDER_WORKBENCH"})[0]
    assert out.ok, out.error
    assert (out.value["width"], out.value["height"]) == (24, 16)
    assert pixels(out.value["image"])[1] == (24, 16)
    jpeg = render(pool, scene_blend.read_bytes(), [1], options={"file_format": "JPEG", "samples": 1})[0]
    assert jpeg.ok and jpeg.value["format"] == "JPEG" and jpeg.value["image"][:3] == b"\xff\xd8\xff"
    exr = render(pool, scene_blend.read_bytes(), [1], options={"file_format": "OPEN_EXR", "samples": 1})[0]
    assert exr.ok and exr.value["format"] == "OPEN_EXR" and exr.value["image"][:4] == b"\x76\x2f\x31\x01"


def test_datum_camera_seed_and_overrides(pool, scene_blend, direct_render):
    base = scene_blend.read_bytes()
    outs = render(pool, base, [
        3,
        {"frame": 3, "camera": "Cam2"},
        {"frame": 3, "seed": 7},
        {"frame": 3, "set": {'objects["Cube"].scale': [0.3, 0.3, 0.3], "scene.render.film_transparent": True}},
        3,  # after the overrides: the same picture as the first
    ])
    assert all(o.ok for o in outs), [o.error for o in outs]
    plain, cam2, seeded, overridden, again = (pixels(o.value["image"]) for o in outs)
    assert outs[1].value["camera"] == "Cam2" and cam2 != plain
    assert seeded != plain  # Cycles noise follows the seed
    assert overridden != plain and overridden[0] == "RGBA"
    assert again == plain == pixels(direct_render(scene_blend, 3))


def test_scene_script_with_a_datum_hook(pool):
    script = """
import bpy
scene = bpy.context.scene
scene.render.engine = "BLENDER_WORKBENCH"
scene.render.resolution_x = scene.render.resolution_y = 32
scene.frame_end = 10

def dcp_datum(scene, datum):
    bpy.data.objects["Cube"].scale = (datum["size"],) * 3
    return {"size": datum["size"], "objects": len(scene.objects)}
"""
    outs = render(pool, script, [{"frame": 2, "size": 0.5}, {"frame": 2, "size": 1.5}])
    assert all(o.ok for o in outs), [o.error for o in outs]
    assert [o.value["info"] for o in outs] == [{"size": 0.5, "objects": 3}, {"size": 1.5, "objects": 3}]
    assert pixels(outs[0].value["image"]) != pixels(outs[1].value["image"])


def test_progress_fractions_and_console_lines_come_from_blender(pool, scene_blend):
    # Big enough that sampling lasts several progress intervals on a fast machine too (at 64x64 and
    # 64 samples a render ends inside the first 0.1 s interval, so no fraction ever goes out).
    events: list = []
    out = render(pool, scene_blend.read_bytes(), [1], options={"samples": 256, "resolution": [256, 256]},
                 events=events)[0]
    assert out.ok, out.error
    fractions = [p for _, kind, p in events if kind == "progress" and p is not None]
    assert fractions, events
    assert all(0 < f <= 1 for f in fractions) and fractions == sorted(fractions)
    console = [p["message"] for _, kind, p in events if kind == "console"]
    assert not any(m.startswith("Fra:") for m in console)  # progress lines are progress, not console


def test_one_blender_per_job_renders_every_frame(blender, scene_blend):
    """The fast path, in process: prepare starts Blender once, each execute is a frame over the pipe."""
    wt = BlenderWorktime()
    spec = job(scene_blend.read_bytes())
    wt.prepare(spec)
    folder = wt.files.path
    try:
        pid = wt.process.proc.pid
        frames = [wt.execute(SliceContext(i, spec.limits, spec), frame)["frame"] for i, frame in enumerate([1, 2, 3, 4])]
        assert frames == [1, 2, 3, 4]
        assert wt.starts == 1 and wt.process.proc.pid == pid and wt.process.frames == 4
    finally:
        wt.release()
    assert wt.process is None and not folder.exists()


# -- failures with clear codes ------------------------------------------------------------------
def test_no_camera_fails_the_job(pool, no_camera_blend):
    outs = render(pool, no_camera_blend.read_bytes(), [1, 2])
    assert all(o.error.code == "EBADWORK" for o in outs)
    assert "no camera" in outs[0].error.message


def test_corrupt_blend_fails_the_job(pool):
    outs = render(pool, b"BLENDER-v304RENDthis is not a blend file" * 10, [1])
    assert outs[0].error.code == "EBADWORK"
    assert "could not be loaded" in outs[0].error.message


def test_frame_outside_the_scene_is_refused(pool, scene_blend):
    out, ok = render(pool, scene_blend.read_bytes(), [99, 2])
    assert out.error.code == "EUNCAUGHT" and out.error.name == "FrameOutOfRange"
    assert "frame 99" in out.error.message and "1-6" in out.error.message
    assert ok.ok


def test_bad_datums_name_what_a_datum_is(pool, scene_blend):
    outs = render(pool, scene_blend.read_bytes(), ["twelve", {"frame": 1, "camra": "Cam2"}, {"frame": 1, "camera": "Nope"},
                                                   {"frame": 1, "set": {'objects["Nope"].location': [0, 0, 0]}}, 1])
    texts = [(o.error.name, o.error.message) if not o.ok else None for o in outs]
    assert texts[0][0] == "BadDatum" and "frame number" in texts[0][1]
    assert texts[1][0] == "BadDatum" and "'camra'" in texts[1][1]
    assert texts[2][0] == "NoCamera" and "Cam2" in texts[2][1]
    assert texts[3][0] == "BadOverride" and "Nope" in texts[3][1]
    assert outs[4].ok


def test_a_frame_over_the_wall_time_is_stopped_and_the_next_renders(pool, scene_blend):
    j = job(scene_blend.read_bytes(), {"samples": 1 << 20}, Limits.parse(wall_time="2s"))
    slow = next(pool.map(j, [(0, ENDLESS)]))
    assert slow.error.code == "ESLICETOOSLOW" and "rendering frame 1" in slow.error.message
    fast = render(pool, scene_blend.read_bytes(), [1], options={"samples": 1})[0]
    assert fast.ok


def test_bad_options_are_refused_before_anything_runs(scene_blend):
    work = scene_blend.read_bytes()
    for options, words in [({"engine": "cycles"}, "did you mean 'CYCLES'"), ({"resolution": [64]}, "[width, height]"),
                           ({"samples": 0}, "samples"), ({"file_format": "TIFF"}, "PNG, JPEG, OPEN_EXR"),
                           ({"percentage": 2000}, "percentage"), ({"sampels": 4}, "did you mean 'samples'")]:
        with pytest.raises(WorkError) as e:
            BlenderWorktime.validate(job(work, options))
        assert words in str(e.value)
    for work, words in [(b"PK\x03\x04zip", "not a .blend"), ("def f(:", "does not compile"), ("  ", "empty")]:
        with pytest.raises(WorkError) as e:
            BlenderWorktime.validate(job(work))
        assert words in str(e.value)


def test_capture_work(scene_blend, tmp_path):
    from pathlib import Path

    assert BlenderWorktime.capture_work(scene_blend).work == scene_blend.read_bytes()
    script = tmp_path / "scene.py"
    script.write_text("import bpy\n")
    assert BlenderWorktime.capture_work(script).work == "import bpy\n"
    (tmp_path / "fake.blend").write_bytes(b"not blender")
    with pytest.raises(WorkError, match="not a .blend file"):
        BlenderWorktime.capture_work(tmp_path / "fake.blend")
    with pytest.raises(WorkError, match=r"pass Path\('shot.blend'\)"):
        BlenderWorktime.capture_work("shot.blend")
    with pytest.raises(WorkError, match="does not exist"):
        BlenderWorktime.capture_work(Path("missing.blend"))
    assert ".blend" in BlenderWorktime.default_for


@pytest.mark.parametrize("when", ["rendering", "loading"])
def test_a_cancelled_slice_stops(pool, scene_blend, when):
    """Cancelled while Blender renders (the evaluator kills it) or while it still loads the .blend."""
    j = job(scene_blend.read_bytes(), {"samples": 1 << 20})
    got = []
    done, rendering = threading.Event(), threading.Event()
    pool.submit(j, [0], [ENDLESS], lambda o: (got.extend(o.slices()), done.set()), lambda kind, n, p: rendering.set())
    if when == "rendering":
        assert rendering.wait(60)  # a first progress event: the frame is being rendered
    else:
        time.sleep(0.3)  # an evaluator has taken the slice; Blender takes a second or more to load
    pool.cancel(j.id)
    assert done.wait(60)
    assert got[0].error.code == "ECANCELLED"


def test_output_limit_refuses_a_big_image(pool, scene_blend):
    # 256×256 of Cycles noise at one sample: a PNG of ~37 KB.
    out = render(pool, scene_blend.read_bytes(), [1], options={"resolution": [256, 256], "samples": 1},
                 limits=Limits.parse(output="16KiB"))[0]
    assert out.error.code == "EOUTPUTLIMIT" and out.error.limit == "output" and "the rendered image is" in out.error.message


def test_run_helper_sees_the_result(pool, scene_blend):
    out = run(pool, "blender", scene_blend.read_bytes(), 2, options={"samples": 1})
    assert out.ok and out.value["frame"] == 2


def test_dcp_worker_slice_writes_the_frame(scene_blend, tmp_path, direct_render):
    import json
    import subprocess
    import sys

    out = tmp_path / "frame3.png"
    r = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", "slice", "--worktime", "blender", "--work", str(scene_blend),
                        "--datum", "3", "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    meta = json.loads(r.stdout)
    assert meta["image"] == {"$file": str(out)} and meta["frame"] == 3 and meta["width"] == 64
    assert pixels(out.read_bytes()) == pixels(direct_render(scene_blend, 3))
