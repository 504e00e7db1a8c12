"""The blender worktime runs the host's conformance kit, its hostile cases written as scene scripts
(``sandbox/hostile/blender/``) whose ``dcp_datum`` hook misbehaves while a frame is prepared."""

from __future__ import annotations

import io

import pytest
from blender_testing import HOSTILE, hostile

from dcp_worktimes.testing import HOSTILE_CASES, Sample, WorktimeConformance

#: The hello-world scene: the factory scene rendered small and fast.
HELLO = "import bpy\nbpy.context.scene.frame_end = 10\n"


class Frame:
    """Equal to a blender result dict holding a ``size`` PNG of frame ``frame`` (render time and
    peak memory vary from run to run, so the kit's ``==`` compares through this)."""

    def __init__(self, frame: int, size: tuple[int, int]) -> None:
        self.frame, self.size = frame, size

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, dict) or other.get("format") != "PNG" or other.get("frame") != self.frame:
            return False
        from PIL import Image

        with Image.open(io.BytesIO(other["image"])) as im:
            return im.format == "PNG" and im.size == self.size == (other["width"], other["height"])

    def __repr__(self) -> str:
        return f"<PNG frame {self.frame} {self.size[0]}x{self.size[1]}>"


@pytest.mark.usefixtures("bwrap")
class TestBlenderConformance(WorktimeConformance):
    @pytest.fixture
    def worktime_name(self):
        return "blender"

    @pytest.fixture
    def job_options(self):
        return {"engine": "CYCLES", "resolution": [32, 32], "samples": 1}

    @pytest.fixture
    def hello_work(self):
        pytest.importorskip("PIL", reason="the tests decode frames with Pillow: pip install Pillow")
        return Sample(work=HELLO, datum=3, expected=Frame(3, (32, 32)))

    @pytest.fixture
    def progress_work(self):
        # ~1.5 s of Cycles on 64×64 without adaptive sampling: Blender prints few sample lines in
        # the background, the rest of the time its CPU use keeps the watchdog fed.
        return Sample(work=HELLO, datum={"frame": 1, "set": {"scene.cycles.use_adaptive_sampling": False}},
                      expected=Frame(1, (64, 64)), options={"resolution": [64, 64], "samples": 3000})

    @pytest.fixture
    def bad_work(self):
        return b"BLENDER-v304RENDnot really a blend file" * 4

    @pytest.fixture
    def hostile_works(self):
        return {case: hostile(case) for case in HOSTILE_CASES if (HOSTILE / f"{case}.py").exists()}


def test_the_whole_hostile_kit_is_covered():
    assert {p.stem for p in HOSTILE.glob("*.py")} >= set(HOSTILE_CASES)
