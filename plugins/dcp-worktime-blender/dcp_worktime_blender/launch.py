"""Starting Blender for a job: its files on disk, its command line, its sandbox.

A job's files live in a private temporary folder of the evaluator (bound read-only at ``/job``
inside the sandbox): the work (``work.blend`` or ``scene.py``), ``driver.py`` and ``spec.json``.
``JobFiles.launch()`` gives the ``Launch`` that ``BlenderProcess.start`` runs::

    files = JobFiles.create(job.work, options)              # writes the folder
    launch = files.launch(blender, sandbox, threads=1, scratch_size=64 << 20)
    proc = BlenderProcess.start(launch)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from . import sandbox as sandboxing
from .process import Launch

DRIVER = Path(__file__).with_name("driver.py")
#: Flags every Blender we start gets, sandbox or not: no user settings or add-ons, no scripts
#: embedded in .blend files, a failing Python script is a failing process, no audio device.
BLENDER_FLAGS = ("-b", "--factory-startup", "--disable-autoexec", "--python-exit-code", "1", "-noaudio")
#: Where the sandbox shows the job's folder (without a sandbox the folder's real path is used).
JOB_MOUNT = "/job"


def blend_magic(data: bytes) -> bool:
    """A .blend file: plain (``BLENDER``), or compressed with gzip (before 3.0) or zstd (3.0+)."""
    return data[:7] == b"BLENDER" or data[:2] == b"\x1f\x8b" or data[:4] == b"\x28\xb5\x2f\xfd"


@dataclass
class JobFiles:
    path: Path
    kind: str  # "blend" or "script"
    options: dict[str, Any]  # what the driver applies inside Blender (``options.driver_options``)

    @classmethod
    def create(cls, work: str | bytes, options: Mapping[str, Any]) -> "JobFiles":
        path = Path(tempfile.mkdtemp(prefix="dcp-blender-"))
        try:
            kind = "script" if isinstance(work, str) else "blend"
            if kind == "script":
                (path / "scene.py").write_text(work, encoding="utf-8")
            else:
                (path / "work.blend").write_bytes(work)
            shutil.copyfile(DRIVER, path / "driver.py")
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        # Readable by the sandbox's user (nobody): the folder is private to us by mkdtemp.
        for entry in (path, *path.iterdir()):
            entry.chmod(0o755 if entry.is_dir() else 0o644)
        return cls(path, kind, dict(options))

    def launch(self, blender: str, box: sandboxing.Sandbox, *, threads: int, scratch_size: int) -> Launch:
        """How to start Blender on these files, inside ``box`` when it has bwrap."""
        root = JOB_MOUNT if box.bwrap else str(self.path)
        out_dir = "/scratch/out" if box.bwrap else str(self.path / "out")
        work = f"{root}/scene.py" if self.kind == "script" else f"{root}/work.blend"
        spec = {"kind": self.kind, "work": work, "options": self.options, "out_dir": out_dir}
        (self.path / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
        (self.path / "spec.json").chmod(0o644)
        argv = [blender, *BLENDER_FLAGS, "-t", str(threads), "--python", f"{root}/driver.py", "--", f"{root}/spec.json"]
        if not box.bwrap:
            return Launch(argv, env=_plain_env(self.path), pdeathsig=True)
        fd = sandboxing.seccomp_fd() if box.seccomp else None
        blender_dir = os.path.dirname(os.path.realpath(blender))
        extra = () if blender_dir.startswith("/usr/") else (blender_dir,)
        argv = sandboxing.command(box.bwrap, argv, str(self.path), scratch_size=scratch_size, seccomp_fd=fd,
                                  extra_ro=extra)
        return Launch(argv, pass_fds=() if fd is None else (fd,), close_after_start=() if fd is None else (fd,),
                      sandboxed=True)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _plain_env(job_dir: Path) -> dict[str, str]:
    """Without a sandbox: the worker's environment, with HOME and TMPDIR in the job's folder so
    Blender's caches and temporary files go away with the job."""
    env = dict(os.environ)
    scratch = job_dir / "home"
    scratch.mkdir(exist_ok=True)
    env.update(HOME=str(scratch), TMPDIR=str(scratch))
    return env
