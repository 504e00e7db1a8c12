"""The blender worktime's job options and slice datums: what they may hold, checked with clear errors.

Options (``job.options``, one value per job)::

    {"engine": "CYCLES", "resolution": [640, 360], "percentage": 50, "samples": 32,
     "file_format": "PNG", "threads": 2, "scratch_size": "256MiB"}

Datums (one per slice): a frame number, or a dict::

    12
    {"frame": 12, "camera": "Cam2", "seed": 7, "set": {"objects[\\"Cube\\"].location[2]": 1.5}}

``set`` overrides properties for that frame only (data paths from ``bpy.data``, or from the
rendered scene with a ``scene.`` prefix). A scene script that defines ``dcp_datum(scene, datum)``
receives the whole datum, which may then be anything, and may hold keys of its own.
"""

from __future__ import annotations

import difflib
import os
from typing import Any, Mapping

from dcp_worktimes.errors import ErrorCode, SliceError, WorkError

#: Engine names accepted (across Blender versions: EEVEE is BLENDER_EEVEE_NEXT in 4.2-4.x).
ENGINES = ("CYCLES", "BLENDER_WORKBENCH", "BLENDER_EEVEE", "BLENDER_EEVEE_NEXT")
#: Output formats a frame can come back in.
FORMATS = ("PNG", "JPEG", "OPEN_EXR")
MAX_PIXELS = 65536  # Blender's own limit per side
MAX_PERCENTAGE = 1000
MAX_SAMPLES = 1 << 24
DATUM_KEYS = ("frame", "camera", "seed", "set")

OPTIONS: dict[str, str] = {
    "engine": "render engine: " + ", ".join(ENGINES[:3]) + " (BLENDER_EEVEE_NEXT on Blender 4.2-4.x); default: the scene's",
    "resolution": "[width, height] in pixels; default: the scene's",
    "percentage": "resolution scale in percent, 1-1000; default: the scene's",
    "samples": "render samples (Cycles, EEVEE); default: the scene's",
    "file_format": "image format of the result: PNG, JPEG or OPEN_EXR; default: the scene's (PNG if another)",
    "threads": "render threads of each Blender process; default 1 (one evaluator per core)",
    "scratch_size": "size of the sandbox's writable /scratch, e.g. 256MiB; default 64MiB",
}


def check(options: Mapping[str, Any]) -> None:
    """``WorkError`` (``EBADWORK``) for an option value Blender could not use, saying which and why."""
    engine = options.get("engine")
    if engine is not None:
        if not isinstance(engine, str) or engine not in ENGINES:
            close = difflib.get_close_matches(str(engine).upper(), ENGINES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise WorkError(f"options.engine {engine!r} is not a Blender render engine{hint}; use one of {', '.join(ENGINES)}")
    if "resolution" in options:
        value = options["resolution"]
        if (not isinstance(value, (list, tuple)) or len(value) != 2
                or not all(_int(v) and 1 <= v <= MAX_PIXELS for v in value)):
            raise WorkError(f"options.resolution must be [width, height] in whole pixels (1-{MAX_PIXELS}), got {value!r}")
    _whole("percentage", options, 1, MAX_PERCENTAGE)
    _whole("samples", options, 1, MAX_SAMPLES)
    _whole("threads", options, 1, os.cpu_count() or 1)
    fmt = options.get("file_format")
    if fmt is not None and fmt not in FORMATS:
        raise WorkError(f"options.file_format {fmt!r} cannot be returned; use one of {', '.join(FORMATS)}")
    if "scratch_size" in options:
        scratch_size(options)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _whole(name: str, options: Mapping[str, Any], low: int, high: int) -> None:
    if name in options and not (_int(options[name]) and low <= options[name] <= high):
        raise WorkError(f"options.{name} must be a whole number from {low} to {high}, got {options[name]!r}")


def scratch_size(options: Mapping[str, Any]) -> int:
    """Bytes of the sandbox's /scratch: the job's ``scratch_size`` within the worker's cap
    (``DCP_WORKTIMES_SCRATCH_LIMIT``, shared with the WASI worktimes)."""
    from dcp_worktimes.worktimes.wasm_runtime.scratch import scratch_size as capped

    try:
        return capped(options.get("scratch_size"))
    except ValueError as e:
        raise WorkError(f"options.scratch_size: {e}") from None


def driver_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options the driver applies inside Blender (threads and scratch size are the host's)."""
    return {k: (list(v) if k == "resolution" else v) for k, v in options.items()
            if k in ("engine", "resolution", "percentage", "samples", "file_format")}


def frame_command(datum: Any, scene: Mapping[str, Any]) -> dict[str, Any]:
    """The driver's command for one slice's ``datum``, given the loaded scene's ``ready`` facts
    (frame range, cameras, whether the scene script has a ``dcp_datum`` hook).

    >>> frame_command(3, {"frame_start": 1, "frame_end": 6, "frame_current": 1, "hook": False})
    {'frame': 3, 'camera': None, 'seed': None, 'set': {}, 'hook': False}
    """
    hook = bool(scene.get("hook"))
    fields: Mapping[str, Any] = {}
    if _int(datum):
        fields = {"frame": datum}
    elif isinstance(datum, dict):
        fields = datum
        unknown = [k for k in datum if k not in DATUM_KEYS]
        if unknown and not hook:
            raise _bad(f"the datum has the key {unknown[0]!r}; a datum is a frame number or a dict of "
                       f"{', '.join(DATUM_KEYS)} (other keys need a scene script with a dcp_datum(scene, datum) hook)")
    elif not hook:
        raise _bad(f"the datum is a {type(datum).__name__}; give a frame number, or a dict such as "
                   '{"frame": 12, "camera": "Cam2", "seed": 7} (other data needs a scene script with a '
                   "dcp_datum(scene, datum) hook)")
    frame = fields.get("frame", scene.get("frame_current", 1))
    if not _int(frame):
        raise _bad(f"the datum's frame must be a whole number, got {frame!r}")
    start, end = scene.get("frame_start", frame), scene.get("frame_end", frame)
    if not start <= frame <= end:
        raise SliceError(f"frame {frame} is not in the scene's frame range {start}-{end}: render frames of that range, "
                         "or set scene.frame_start/frame_end in the .blend or scene script",
                         code=ErrorCode.EUNCAUGHT, name="FrameOutOfRange")
    camera, seed, overrides = fields.get("camera"), fields.get("seed"), fields.get("set") or {}
    if camera is not None and not isinstance(camera, str):
        raise _bad(f"the datum's camera must be the name of a camera object, got {camera!r}")
    if seed is not None and not (_int(seed) and 0 <= seed < 1 << 31):
        raise _bad(f"the datum's seed must be a whole number from 0 to {(1 << 31) - 1}, got {seed!r}")
    if not isinstance(overrides, dict) or not all(isinstance(k, str) and _plain(v) for k, v in overrides.items()):
        raise _bad('the datum\'s set must map data paths to numbers, strings, booleans or lists of numbers, e.g. '
                   '{"objects[\\"Cube\\"].location[2]": 1.5}')
    command = {"frame": frame, "camera": camera, "seed": seed, "set": overrides, "hook": hook}
    if hook:
        command["datum"] = datum
    return command


def _plain(value: Any) -> bool:
    if isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)


def _bad(message: str) -> SliceError:
    return SliceError(message, code=ErrorCode.EUNCAUGHT, name="BadDatum")
