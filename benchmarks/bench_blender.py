"""Frames per second through the blender worktime vs Blender on its own, on the same frames.

    python benchmarks/bench_blender.py [--frames 48] [--size 160x90] [--samples 16] [--engine CYCLES]

Needs ``blender`` (Debian: apt-get install blender), ``bwrap`` for the sandbox (apt-get install
bubblewrap) and ``pip install -e plugins/dcp-worktime-blender``. One run, one machine, the same
.blend file (built here: a cube and a sphere moving over a plane) for every row:

* ``blender -b -a``: Blender renders the whole animation itself, all threads: the baseline;
* ``blender -b -f N`` per frame: a new Blender (start + .blend load) for every frame;
* the worktime, one evaluator, ``threads=<cores>``: one sandboxed Blender per job, frames over a pipe;
* the worktime, one evaluator per core, ``threads=1``: what ``dcp-worker`` does by default;
* the worktime with a new evaluator (so a new Blender) per slice: the path the fast path avoids.

Every worktime row counts the whole job: evaluators, Blender start, .blend load, every frame.
The first, third and fourth rows take turns ``--rounds`` times (each reports its median), so a
shared machine's drifting load weighs on them alike.
Then cold and warm figures, in process: ``prepare`` (sandbox + Blender start + .blend load) and
the first frame, against the median of the following frames. Target: multi-frame
jobs through the worktime reach >= 90 % of ``blender -b -a``'s frames per second.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

from _table import print_table  # noqa: E402

SCENE = """
import bpy, math
scene = bpy.context.scene
scene.render.engine = {engine!r}
scene.render.resolution_x, scene.render.resolution_y = {width}, {height}
scene.render.resolution_percentage = 100
scene.render.image_settings.file_format = "PNG"
scene.frame_start, scene.frame_end = 1, {frames}
scene.cycles.samples = {samples}
scene.cycles.use_denoising = False
scene.eevee.taa_render_samples = {samples}
bpy.ops.mesh.primitive_plane_add(size=12, location=(0, 0, -1))
bpy.ops.mesh.primitive_uv_sphere_add(radius=0.7, location=(2, 0, 0))
sphere = bpy.context.object
cube = bpy.data.objects["Cube"]
for frame in (1, {frames}):
    t = (frame - 1) / max(1, {frames} - 1)
    cube.location = (-2 + 4 * t, 0, 0)
    cube.rotation_euler = (0, 0, math.pi * t)
    sphere.location = (2 - 4 * t, 1.5, 0.5 * math.sin(math.pi * t))
    for obj in (cube, sphere):
        obj.keyframe_insert("location", frame=frame)
    cube.keyframe_insert("rotation_euler", frame=frame)
bpy.ops.wm.save_as_mainfile(filepath={path!r})
"""


def blender_cmd(blender: str, *args: str) -> list[str]:
    return [blender, "-b", "--factory-startup", "--disable-autoexec", "-noaudio", *args]


def run(cmd: list[str]) -> float:
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd[:6])} ... failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return time.perf_counter() - t


def through_pool(blend: bytes, frames: int, cores: int, threads: int, **pool_args) -> float:
    from dcp_worktimes.runner import EvaluatorPool
    from dcp_worktimes.worktime import JobSpec

    t = time.perf_counter()
    with EvaluatorPool(cores=cores, **pool_args) as pool:
        job = JobSpec(id=f"bench-{cores}-{threads}-{time.time_ns()}", worktime="blender", work=blend,
                      options={"threads": threads})
        outs = list(pool.map(job, [(i, 1 + i) for i in range(frames)]))
    bad = [o.error for o in outs if not o.ok]
    if bad:
        sys.exit(f"the worktime failed: {bad[0]}")
    return time.perf_counter() - t


def cold_and_warm(blend: bytes, frames: int, threads: int) -> tuple[float, float, float]:
    """In process: (prepare seconds, first frame seconds, median of the other frames)."""
    from dcp_worktime_blender import BlenderWorktime
    from dcp_worktimes.worktime import JobSpec, SliceContext

    wt = BlenderWorktime()
    job = JobSpec(id="bench-cold", worktime="blender", work=blend, options={"threads": threads})
    t = time.perf_counter()
    wt.prepare(job)
    prepare = time.perf_counter() - t
    times = []
    try:
        for frame in range(1, frames + 1):
            t = time.perf_counter()
            wt.execute(SliceContext(frame, job.limits, job), frame)
            times.append(time.perf_counter() - t)
    finally:
        wt.release()
    return prepare, times[0], statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--size", default="160x90", help="WIDTHxHEIGHT in pixels")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--engine", default="CYCLES", choices=["CYCLES", "BLENDER_WORKBENCH", "BLENDER_EEVEE"])
    ap.add_argument("--per-frame", type=int, default=8, help="frames rendered with a new Blender each (rows 2 and 5)")
    ap.add_argument("--rounds", type=int, default=3, help="turns of the three main rows (each row: the median)")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    cores = os.cpu_count() or 1
    blender = os.environ.get("BLENDER", "blender")
    n, k = args.frames, min(args.per_frame, args.frames)
    os.environ.setdefault("DCP_WORKTIMES_CACHE", tempfile.mkdtemp(prefix="dcp-bench-cache-"))

    with tempfile.TemporaryDirectory(prefix="dcp-bench-blender-") as tmp:
        blend_path = str(Path(tmp) / "bench.blend")
        run(blender_cmd(blender, "--python-expr", SCENE.format(engine=args.engine, width=width, height=height,
                                                               frames=n, samples=args.samples, path=blend_path)))
        blend = Path(blend_path).read_bytes()
        out = str(Path(tmp) / "out" / "f_####")
        print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} (1 and 5 min), {cores} cores", file=sys.stderr)

        # The main rows take turns, `--rounds` times, each keeping its median: a shared machine's
        # load drifts, and a row measured only while a neighbour compiles would say nothing.
        rounds: dict[str, list[float]] = {"anim": [], "one": [], "many": []}
        measure = {
            "anim": lambda: run(blender_cmd(blender, blend_path, "-o", out, "-F", "PNG", "-a")),
            "one": lambda: through_pool(blend, n, cores=1, threads=cores),
            "many": lambda: through_pool(blend, n, cores=cores, threads=1),
        }
        for r in range(args.rounds):
            for name in (list(measure) if r % 2 == 0 else reversed(list(measure))):
                rounds[name].append(measure[name]())
        t_anim, t_one, t_many = (statistics.median(rounds[k_]) for k_ in ("anim", "one", "many"))
        t_each = sum(run(blender_cmd(blender, blend_path, "-o", out, "-F", "PNG", "-f", str(f))) for f in range(1, k + 1))
        t_fresh = through_pool(blend, k, cores=1, threads=cores, max_slices_per_evaluator=1)
        prepare, first, warm = cold_and_warm(blend, min(n, 12), threads=cores)
        t_start = run(blender_cmd(blender, blend_path))  # Blender start + .blend load, no render
        print(f"load after: {os.getloadavg()[0]:.2f}", file=sys.stderr)
        spread = {k_: f"{min(v):.1f}-{max(v):.1f}" for k_, v in rounds.items()}

    base = n / t_anim
    rows = [
        (f"blender -b -a ({n} frames, {cores} threads)", base, 1.0),
        (f"blender -b -f N, a new Blender per frame ({k} frames)", k / t_each, k / t_each / base),
        (f"worktime, 1 evaluator, threads={cores} ({n} frames)", n / t_one, n / t_one / base),
        (f"worktime, {cores} evaluators, threads=1 ({n} frames)", n / t_many, n / t_many / base),
        (f"worktime, a new evaluator per slice ({k} frames)", k / t_fresh, k / t_fresh / base),
    ]
    print_table(f"{args.engine} {width}x{height}, {args.samples} samples, {n} frames",
                ["", "frames/s", "vs blender -b -a"], rows,
                note=f"best worktime row: {max(r[2] for r in rows[2:4]):.0%} of blender -b -a (target >= 90 %); "
                     f"medians of {args.rounds} rounds taken in turns, seconds per round: blender -a {spread['anim']}, "
                     f"1 evaluator {spread['one']}, {cores} evaluators {spread['many']}.")
    print_table("cold and warm, in process (threads=%d)" % cores, ["", "seconds"], [
        ("blender -b FILE (start + load, no render)", t_start),
        ("prepare: sandbox + Blender start + .blend load", prepare),
        ("first frame after prepare", first),
        ("warm frame (median of the next ones)", warm),
    ])


if __name__ == "__main__":
    main()
