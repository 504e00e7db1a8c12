"""Helpers of the blender worktime's tests (a uniquely named module: plugin test folders are not packages)."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest

HOSTILE = Path(__file__).resolve().parents[3] / "sandbox" / "hostile" / "blender"

#: The test scene: Cycles, 64×64, 4 samples, frames 1-6, a cube sliding along x, two cameras.
SCENE = """
import bpy
scene = bpy.context.scene
scene.render.engine = "CYCLES"
scene.render.resolution_x = scene.render.resolution_y = 64
scene.render.resolution_percentage = 100
scene.render.image_settings.file_format = "PNG"
scene.frame_start, scene.frame_end = 1, 6
scene.cycles.samples = 4
scene.cycles.use_denoising = False
cube = bpy.data.objects["Cube"]
cube.location.x = -1.5
cube.keyframe_insert("location", frame=1)
cube.location.x = 1.5
cube.keyframe_insert("location", frame=6)
camera = bpy.data.objects["Camera"]
cam2 = bpy.data.objects.new("Cam2", camera.data.copy())
cam2.location = (0.0, -9.0, 1.0)
cam2.rotation_euler = (1.5, 0.0, 0.0)
scene.collection.objects.link(cam2)
"""

#: The scene without any camera.
NO_CAMERA = SCENE + """
for name in ("Camera", "Cam2"):
    bpy.data.objects.remove(bpy.data.objects[name])
"""


def save_scene(blender: str, script: str, path: Path) -> Path:
    """Run ``script`` in a real Blender on its factory scene and save the result as ``path``."""
    code = script + f"\nbpy.ops.wm.save_as_mainfile(filepath={str(path)!r})\n"
    done = subprocess.run([blender, "-b", "--factory-startup", "-noaudio", "--python-exit-code", "1",
                           "--python-expr", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and path.is_file(), done.stdout[-2000:] + done.stderr[-2000:]
    return path



def pixels(data: bytes) -> tuple[str, tuple[int, int], bytes]:
    """``(mode, size, raw pixels)`` of an image: frames compare by pixels, since PNG metadata
    holds the render date and the .blend's path."""
    Image = pytest.importorskip("PIL.Image", reason="the tests decode frames with Pillow: pip install Pillow")
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.mode, im.size, im.tobytes()


def hostile(case: str) -> str:
    return (HOSTILE / f"{case}.py").read_text(encoding="utf-8")
