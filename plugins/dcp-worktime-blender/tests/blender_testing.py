"""Helpers of the blender worktime's tests (a uniquely named module: plugin test folders are not packages)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

HOSTILE = Path(__file__).resolve().parents[3] / "sandbox" / "hostile" / "blender"


def pixels(data: bytes) -> tuple[str, tuple[int, int], bytes]:
    """``(mode, size, raw pixels)`` of an image: frames compare by pixels, since PNG metadata
    holds the render date and the .blend's path."""
    Image = pytest.importorskip("PIL.Image", reason="the tests decode frames with Pillow: pip install Pillow")
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.mode, im.size, im.tobytes()


def hostile(case: str) -> str:
    return (HOSTILE / f"{case}.py").read_text(encoding="utf-8")
