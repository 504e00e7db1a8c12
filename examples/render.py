"""Render a small animation with the blender worktime and assemble it into a GIF and a contact sheet.

    pip install -e plugins/dcp-worktime-blender Pillow     # and: apt-get install blender bubblewrap
    python examples/render.py [--frames 24] [--size 160x120] [--engine CYCLES] [--cores 2] [--out render-out]

The scene is a scene script (Python that Blender runs to build it): a cube and a sphere chasing
each other over a floor. Each frame is one slice; the job's slices run in sandboxed evaluators on
``--cores`` cores of this machine (one Blender per evaluator, loaded once), or on any
``dcp-worker --worktime blender`` attached to the same scheduler. The frames come back in order
as PNG bytes; Pillow turns them into ``animation.gif`` and ``contact-sheet.png``.
"""

from __future__ import annotations

import argparse
import io
import math
import time
from pathlib import Path

from dcp_worktimes import compute

SCENE = """
import bpy, math
scene = bpy.context.scene
scene.frame_start, scene.frame_end = 1, {frames}
scene.cycles.use_denoising = False
world = scene.world
world.use_nodes = True
world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.05, 0.06, 0.09, 1)
bpy.ops.mesh.primitive_plane_add(size=60, location=(0, 0, -1))
floor = bpy.context.object
floor.data.materials.append(bpy.data.materials.new("Floor"))
floor.active_material.diffuse_color = (0.8, 0.75, 0.6, 1)
bpy.ops.mesh.primitive_uv_sphere_add(radius=0.6)
sphere = bpy.context.object
sphere.data.materials.append(bpy.data.materials.new("Red"))
sphere.active_material.diffuse_color = (0.9, 0.1, 0.1, 1)
bpy.ops.object.shade_smooth()
cube = bpy.data.objects["Cube"]
cube.scale = (0.6, 0.6, 0.6)
for frame in range(1, {frames} + 1):
    a = 2 * math.pi * (frame - 1) / {frames}
    cube.location = (2 * math.cos(a), 2 * math.sin(a), -0.4)
    cube.rotation_euler = (0, 0, 2 * a)
    sphere.location = (2 * math.cos(a + math.pi), 2 * math.sin(a + math.pi), -0.4 + abs(math.sin(2 * a)))
    for obj in (cube, sphere):
        obj.keyframe_insert("location", frame=frame)
    cube.keyframe_insert("rotation_euler", frame=frame)
"""


def positive(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def size(text: str) -> tuple[int, int]:
    """argparse type: WIDTHxHEIGHT, each at least 1."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, such as 160x120")
    return int(parts[0]), int(parts[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=positive, default=24)
    ap.add_argument("--size", type=size, default="160x120", help="WIDTHxHEIGHT in pixels")
    ap.add_argument("--engine", default="CYCLES", choices=["CYCLES", "BLENDER_WORKBENCH", "BLENDER_EEVEE"])
    ap.add_argument("--samples", type=positive, default=16)
    ap.add_argument("--cores", type=positive, default=None, help="evaluators on this machine (default: every core)")
    ap.add_argument("--out", default="render-out", help="folder for the frames, the GIF and the contact sheet")
    args = ap.parse_args()
    from PIL import Image  # Pillow: pip install Pillow

    width, height = args.size
    out = Path(args.out)
    (out / "frames").mkdir(parents=True, exist_ok=True)

    job = compute.for_(range(1, args.frames + 1), SCENE.format(frames=args.frames), worktime="blender",
                       options={"engine": args.engine, "resolution": [width, height], "samples": args.samples})
    job.public = {"name": "render example", "description": f"{args.frames} frames of a small animation"}
    t = time.perf_counter()
    frames = job.exec(cores=args.cores)
    elapsed = time.perf_counter() - t
    print(f"{args.frames} frames in {elapsed:.1f} s ({args.frames / elapsed:.2f} frames/s); "
          f"render time per frame in Blender: {sum(f['render_time'] for f in frames) / len(frames):.2f} s")

    images = []
    for f in frames:
        (out / "frames" / f"{f['frame']:04}.png").write_bytes(f["image"])
        images.append(Image.open(io.BytesIO(f["image"])).convert("RGB"))
    images[0].save(out / "animation.gif", save_all=True, append_images=images[1:], duration=80, loop=0)
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    sheet = Image.new("RGB", (columns * width, rows * height), "white")
    for i, im in enumerate(images):
        sheet.paste(im, ((i % columns) * width, (i // columns) * height))
    sheet.save(out / "contact-sheet.png")
    print(f"wrote {out / 'frames'}/*.png, {out / 'animation.gif'} and {out / 'contact-sheet.png'}")


if __name__ == "__main__":
    main()
