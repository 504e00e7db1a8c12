"""Fixtures of the blender worktime's tests: real Blender, scenes built at test time, small frames.

Every test here needs the ``blender`` binary (Debian: ``apt-get install blender``); the sandbox
tests also need ``bwrap`` (``apt-get install bubblewrap``). Without them they skip, saying so.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from blender_testing import NO_CAMERA, SCENE, save_scene

def _need(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"needs {binary}: apt-get install {package}")
    return path


@pytest.fixture(scope="session")
def blender() -> str:
    return _need("blender", "blender")


@pytest.fixture(scope="session")
def bwrap(blender) -> str:
    path = _need("bwrap", "bubblewrap")
    from dcp_worktime_blender import sandbox

    box = sandbox.probe()
    if box.bwrap is None:
        pytest.skip(f"bubblewrap cannot sandbox here: {box.reason}")
    return path


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Probes and job stores of this test session live in a temporary folder, never the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DCP_WORKTIMES_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.setenv("DCP_SCHEDULER", f"sqlite:///{tmp_path_factory.mktemp('store')}/jobs.db")
        mp.setenv("DCP_PROGRESS", "0")
        yield


@pytest.fixture(scope="session")
def scene_blend(blender, tmp_path_factory) -> Path:
    return save_scene(blender, SCENE, tmp_path_factory.mktemp("scenes") / "anim.blend")


@pytest.fixture(scope="session")
def no_camera_blend(blender, tmp_path_factory) -> Path:
    return save_scene(blender, NO_CAMERA, tmp_path_factory.mktemp("scenes") / "nocam.blend")


@pytest.fixture(scope="session")
def direct_render(blender, tmp_path_factory):
    """``direct_render(blend, frame, *flags)`` → PNG bytes of ``blender -b BLEND [flags] -f FRAME``:
    the reference each worktime frame must equal."""
    out = tmp_path_factory.mktemp("direct")

    def render(blend: Path, frame: int, *flags: str) -> bytes:
        for old in out.iterdir():
            old.unlink()
        done = subprocess.run([blender, "-b", "--factory-startup", "--disable-autoexec", "-noaudio", str(blend), *flags,
                               "-o", str(out / "frame_####"), "-F", "PNG", "-f", str(frame)],
                              capture_output=True, text=True, timeout=300)
        files = list(out.iterdir())
        assert done.returncode == 0 and len(files) == 1, done.stdout[-2000:]
        return files[0].read_bytes()

    return render
