"""The ``blender`` worktime: each slice renders one frame with real Blender, in an OS-level sandbox.

Work: a .blend file (bytes; ``compute.for_(frames, Path("shot.blend"))``) or a scene script
(Python text Blender runs on its factory scene to build the scene). Datum: a frame number, or
``{"frame": 12, "camera": "Cam2", "seed": 7, "set": {...}}`` (see ``options.py``). Result::

    {"image": b"\\x89PNG...", "format": "PNG", "width": 640, "height": 360, "frame": 12,
     "engine": "CYCLES", "camera": "Camera", "render_time": 0.84, "peak_memory": 23068672}

``prepare`` starts one Blender per job (inside bubblewrap, see ``sandbox.py``), which loads the
work once; ``execute`` sends it one frame at a time over a pipe (``process.py``). A slice that
crashes Blender or runs out of time kills it; the next slice starts a fresh one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping

from dcp_worktimes.errors import ErrorCode, SliceError, WorkError
from dcp_worktimes.limits import exceeded
from dcp_worktimes.worktime import CapturedWork, JobSpec, Probe, SliceContext, Worktime

from . import options as opts
from . import sandbox as sandboxing
from .launch import JobFiles, blend_magic
from .probe import INSTALL_HINT, blender_facts, find_blender
from .process import BlenderDied, BlenderProcess

SCRIPT_REFUSED = ("this worker has no OS-level sandbox for Blender ({why}), so it does not run scene scripts: "
                  "their Python would run with the worker's rights. Install bubblewrap (apt-get install "
                  "bubblewrap), or, for work you trust, start the worker with --trust-work blender")


#: The error codes a frame's error reply may carry (anything else is reported as EUNCAUGHT).
DRIVER_CODES = frozenset({ErrorCode.EUNCAUGHT, ErrorCode.EUNSERIALIZABLE, ErrorCode.EOUTPUTLIMIT})


class BlenderWorktime(Worktime):
    """Renders frames of a .blend file or a scene script with Blender, sandboxed with bubblewrap."""

    name = "blender"
    version = "1.0.0"
    capabilities = {"blender": {}}  # the probe fills in the version, engines and sandbox
    enforces = frozenset({"wall_time", "output"})
    options = opts.OPTIONS
    settings = {"blender": "path of the Blender binary (default: blender on the PATH)"}
    default_for = frozenset({".blend"})
    description = "Renders frames of a .blend file or a scene script with Blender, in a bubblewrap sandbox"

    # -- the deployer's machine -----------------------------------------------------------------
    @classmethod
    def capture_work(cls, work: Any) -> CapturedWork:
        """A ``Path`` to a .blend file becomes its bytes, a ``Path`` to a .py file or a string a
        scene script, bytes must be a .blend file.

        >>> BlenderWorktime.capture_work("import bpy").work
        'import bpy'
        """
        if isinstance(work, str) and work.strip().lower().endswith(".blend") and "\n" not in work.strip():
            raise WorkError(f"the work {work!r} is a string, so it would run as a scene script; to render that file, "
                            f"pass Path({work.strip()!r})")
        if not isinstance(work, (str, bytes, bytearray, memoryview, os.PathLike)):
            raise WorkError(f"the blender worktime cannot use a {type(work).__name__} as work; pass "
                            "pathlib.Path('shot.blend') or a scene script (Python text)")
        captured = super().capture_work(work)  # a path is read here, on the deployer's machine
        data = captured.work
        if isinstance(work, os.PathLike) and Path(work).suffix.lower() == ".blend" and isinstance(data, str):
            data = data.encode("utf-8")  # a .blend file that happened to decode as text is still a .blend file
        if isinstance(data, bytes) and not blend_magic(data):
            raise WorkError(f"the work ({captured.origin}) is not a .blend file (it does not start with BLENDER): save "
                            "the scene from Blender, or pass a scene script (Python text or a .py file)")
        return CapturedWork(data, captured.options, captured.origin)

    @classmethod
    def validate(cls, job: JobSpec) -> None:
        super().validate(job)
        opts.check(job.options)
        work = job.work
        if isinstance(work, (bytes, bytearray)):
            if not blend_magic(bytes(work)):
                raise WorkError("the work is bytes but not a .blend file (it does not start with BLENDER); send a "
                                ".blend file's bytes or a scene script's text")
        elif isinstance(work, str):
            if not work.strip():
                raise WorkError("the work is empty; send a .blend file or a scene script that builds the scene")
            try:
                compile(work, "scene script", "exec")
            except SyntaxError as e:
                raise WorkError(f"the scene script does not compile: {e.msg} (line {e.lineno})") from None
            except ValueError as e:  # NUL bytes
                raise WorkError(f"the scene script does not compile: {e}") from None
        else:
            raise WorkError(f"the work is a {type(work).__name__}; send a .blend file or a scene script")

    # -- the worker -------------------------------------------------------------------------------
    @classmethod
    def probe(cls, config: Mapping[str, Any]) -> Probe:
        """Available when Blender is installed and renders here; advertises its version, the
        engines that render in this machine's sandbox, and whether scene scripts are accepted."""
        blender = find_blender(config)
        if blender is None:
            where = f"no Blender at {config['blender']!r}" if config.get("blender") else "Blender is not installed"
            return Probe({}, unavailable=f"{where}; {INSTALL_HINT}")
        box = sandboxing.probe()
        facts = blender_facts(blender, box)
        if not facts.get("version") or not any(facts["engines"].values()):
            why = next(iter(facts.get("errors", {}).values()), None) or "it did not start"
            return Probe({}, unavailable=f"{blender} cannot render here: {why}")
        caps = {
            "version": facts["version"],
            "engines": dict(facts["engines"]),
            "formats": {f: True for f in opts.FORMATS},
            "denoiser": bool(facts.get("denoiser")),
            "sandbox": box.name,
            "seccomp": box.bwrap is not None and box.seccomp,
            "scene_scripts": box.bwrap is not None or bool(config.get("trusted")),
        }
        return Probe({"blender": caps})

    def __init__(self) -> None:
        self.job: JobSpec | None = None
        self.files: JobFiles | None = None
        self.process: BlenderProcess | None = None
        self.scene: dict[str, Any] = {}
        self.starts = 0  # Blender processes started for the current job (1 + restarts after a failed frame)

    def prepare(self, job: JobSpec) -> None:
        self.release()
        self.job = job
        blender = find_blender(self.config)
        if blender is None:
            raise WorkError(f"Blender is not installed on this worker; {INSTALL_HINT}", code=ErrorCode.ENOWORKTIME)
        self.blender = blender
        self.box = sandboxing.probe()
        if isinstance(job.work, str) and self.box.bwrap is None and not self.config.get("trusted"):
            raise WorkError(SCRIPT_REFUSED.format(why=self.box.reason), code=ErrorCode.ENOWORKTIME)
        self.threads = job.options.get("threads", 1)
        self.scratch_size = opts.scratch_size(job.options)
        self.files = JobFiles.create(job.work, opts.driver_options(job.options))
        self.scene = self._start(deadline=None)

    def _start(self, deadline: float | None) -> dict[str, Any]:
        """Start Blender on the job's files and wait until it has loaded the work; ``WorkError``
        if the work cannot be loaded."""
        assert self.files is not None
        launch = self.files.launch(self.blender, self.box, threads=self.threads, scratch_size=self.scratch_size)
        proc = BlenderProcess.start(launch)
        self.starts += 1
        try:
            ready = proc.ready(deadline)
        except BlenderDied:
            why = proc.exit_description()
            proc.kill()
            if self.box.bwrap and "bwrap:" in why:  # the sandbox itself failed: this worker's problem
                raise WorkError(f"the Blender sandbox could not start here: {why}", code=ErrorCode.ENOWORKTIME) from None
            raise WorkError(f"Blender could not load the work: {why}") from None
        except BaseException:
            proc.kill()
            raise
        if ready["t"] != "ready":
            proc.stop()
            code = ready.get("code") if ready.get("code") in (ErrorCode.EBADWORK, ErrorCode.ENOWORKTIME) else ErrorCode.EBADWORK
            what = "the scene script failed" if self.files.kind == "script" and ready.get("stage") == "load" else \
                "the .blend file could not be loaded" if ready.get("stage") == "load" else "the scene cannot be rendered"
            detail = f"{ready.get('name')}: {ready.get('message')}" if ready.get("stack") else str(ready.get("message"))
            stack = ready.get("stack")
            raise WorkError(f"{what}: {detail}" + (f"\n{_script_frames(stack)}" if stack and self.files.kind == "script"
                                                    else ""), code=code)
        self.process = proc
        return ready

    def execute(self, ctx: SliceContext, datum: Any) -> dict[str, Any]:
        command = opts.frame_command(datum, self.scene)
        if self.process is None or not self.process.alive():
            self.process = None
            try:
                self._start(deadline=ctx.deadline)  # cold again: a failed frame took the last process down
            except TimeoutError:
                raise self._too_slow(ctx, "restarting Blender") from None
            except WorkError as e:  # it loaded before: whatever stops it now is this slice's failure
                raise SliceError(e.message, code=ErrorCode.ECRASH) from None
        proc = self.process
        limit = ctx.limits.output

        def stop() -> SliceError | None:
            if ctx.cancelled:
                return SliceError("the slice was cancelled", code=ErrorCode.ECANCELLED)
            if ctx.over_quota:
                return exceeded("output", limit, what="Blender's console output")
            return None

        try:
            reply, image = proc.render(command, deadline=ctx.deadline, sink=ctx, max_image=limit, stop=stop)
        except TimeoutError:
            self.process = None
            raise self._too_slow(ctx, f"rendering frame {command['frame']}") from None
        except BlenderDied:
            self.process = None
            raise SliceError(f"{proc.exit_description()}\n(while rendering frame {command['frame']})",
                             code=ErrorCode.ECRASH, name="BlenderCrash") from None
        except SliceError:
            if not proc.alive():
                self.process = None
            raise
        if reply["t"] == "error":
            # Only the codes the driver sends for a frame: the work could write a reply of its own.
            code = reply.get("code") if reply.get("code") in DRIVER_CODES else ErrorCode.EUNCAUGHT
            if reply.get("limit") == "scratch":  # the next frame gets a fresh, empty /scratch
                proc.kill()
                self.process = None
                raise exceeded("scratch", self.scratch_size, used=self.scratch_size, what="the sandbox's /scratch",
                               detail=f"{reply.get('name')}: {reply.get('message')}")
            raise SliceError(str(reply.get("message")), code=code, name=str(reply.get("name") or "BlenderError"),
                             stack=_script_frames(reply["stack"]) if isinstance(reply.get("stack"), str) else None)
        return _result(reply, image, command)

    def _too_slow(self, ctx: SliceContext, doing: str) -> SliceError:
        return exceeded("wall_time", ctx.limits.wall_time, detail=doing)

    def release(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
        if self.files is not None:
            self.files.remove()
            self.files = None
        self.starts = 0


def _result(reply: Mapping[str, Any], image: bytes | None, command: Mapping[str, Any]) -> dict[str, Any]:
    """The slice's result from the driver's reply, each field checked (the work shares the pipe)."""
    def number(key: str, kind: type) -> Any:
        value = reply.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise SliceError(f"Blender's reply has no valid {key!r}: the work wrote to the driver's reply pipe",
                             code=ErrorCode.EUNCAUGHT)
        return value

    if reply.get("format") not in opts.FORMATS or image is None:
        raise SliceError("Blender's reply has no valid image: the work wrote to the driver's reply pipe",
                         code=ErrorCode.EUNCAUGHT)
    result: dict[str, Any] = {
        "image": image,
        "format": reply["format"],
        "width": number("width", int),
        "height": number("height", int),
        "frame": command["frame"],
        "engine": str(reply.get("engine")),
        "camera": str(reply.get("camera")),
        "render_time": float(number("render_time", (int, float))),
        "peak_memory": reply.get("peak_memory"),
    }
    if "info" in reply:
        result["info"] = reply["info"]
    return result


def _script_frames(stack: str) -> str:
    """A traceback cut to the scene script's own frames (the driver's are noise to the deployer)."""
    lines = stack.strip().splitlines()
    keep: list[str] = []
    skipping = False
    for line in lines:
        if line.startswith('  File "'):
            skipping = 'File "scene.py"' not in line
        if not skipping:
            keep.append(line)
    return "\n".join(keep)
