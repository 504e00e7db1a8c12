"""What this machine's Blender can do: its version and the engines that really render here.

Rendering a 16×16 frame with each engine, inside the same sandbox jobs get, takes seconds (EEVEE
needs a GPU context: on a machine without one it may fall back to software EGL, or fail), so the
answer is cached on disk under ``$DCP_WORKTIMES_CACHE/blender`` (default: the user cache dir),
keyed by the binary (path, size, modification time), the sandbox and this plugin's driver::

    >>> facts = blender_facts("/usr/bin/blender", sandbox.probe())     # doctest: +SKIP
    >>> facts["version"], facts["engines"]                               # doctest: +SKIP
    ('3.4.1', {'CYCLES': True, 'BLENDER_WORKBENCH': True, 'BLENDER_EEVEE': True})
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from dcp_worktimes.errors import SliceError

from . import sandbox as sandboxing
from .launch import DRIVER, JobFiles
from .process import BlenderDied, BlenderProcess

INSTALL_HINT = "install Blender (Debian/Ubuntu: apt-get install blender) or give its path with dcp-worker --blender PATH"
#: The engines probed, by the name the probe reports them under.
PROBED_ENGINES = ("CYCLES", "BLENDER_WORKBENCH", "BLENDER_EEVEE")
#: A scene script for the probe: the factory scene (cube, light, camera) is all it needs.
PROBE_SCENE = "import bpy\nbpy.context.scene.frame_end = 1\n"
PROBE_TIMEOUT = 180.0
SANDBOX = Path(sandboxing.__file__)
CACHE_FORMAT = 1


def find_blender(config: Mapping[str, Any]) -> str | None:
    """The Blender binary: the worker's ``--blender`` setting, else ``blender`` on the PATH."""
    given = config.get("blender")
    if given:
        path = shutil.which(str(given)) or (str(given) if os.access(str(given), os.X_OK) else None)
        return os.path.abspath(path) if path else None
    return shutil.which("blender")


def cache_dir() -> Path:
    from dcp_worktimes.worktimes.wasm_runtime import cache_dir as worktimes_cache

    return worktimes_cache().parent / "blender"


def blender_facts(blender: str, box: sandboxing.Sandbox) -> dict[str, Any]:
    """``{"version", "denoiser", "engines": {name: bool}, "errors": {name: why}}`` for this binary in this
    sandbox: from the cache, or probed (and cached) now."""
    import hashlib  # here: OpenSSL (~4 MB) for a deployer that never probes Blender

    st = os.stat(blender)
    key = json.dumps([CACHE_FORMAT, os.path.realpath(blender), st.st_size, st.st_mtime_ns, box.name, box.seccomp,
                      hashlib.sha256(DRIVER.read_bytes() + SANDBOX.read_bytes()).hexdigest()])
    # One file per binary: a new key (Blender upgraded, another sandbox) overwrites the old answer.
    path = cache_dir() / f"probe-{hashlib.sha256(os.path.realpath(blender).encode()).hexdigest()[:32]}.json"
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("key") == key:
            return cached["facts"]
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    facts = _probe_engines(blender, box)
    if facts.get("version"):  # a probe that could not start Blender at all is not worth keeping
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".probe-")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"key": key, "facts": facts, "probed": time.time()}, f)
            os.replace(tmp, path)
        except OSError:
            pass  # an unwritable cache only costs a probe per worker start
    return facts


def _probe_engines(blender: str, box: sandboxing.Sandbox) -> dict[str, Any]:
    results: dict[str, tuple[bool, dict, str | None]] = {}

    def one(engine: str) -> None:
        results[engine] = _render_once(blender, box, engine)

    # In parallel: each is a Blender start plus one tiny frame, EEVEE's the slowest by far.
    threads = [threading.Thread(target=one, args=(e,), daemon=True) for e in PROBED_ENGINES]
    for t in threads:
        t.start()
    for t in threads:
        t.join(PROBE_TIMEOUT + 10)
    ready = next((r for _, r, _ in results.values() if r), {})
    return {
        "version": ready.get("blender"),
        "denoiser": bool(ready.get("denoiser")),
        "engines": {e: bool(results.get(e, (False,))[0]) for e in PROBED_ENGINES},
        "errors": {e: r[2] for e, r in results.items() if not r[0]},
    }


def _render_once(blender: str, box: sandboxing.Sandbox, engine: str) -> tuple[bool, dict, str | None]:
    """``(rendered, the driver's ready facts, why not)`` for one engine."""
    files = JobFiles.create(PROBE_SCENE, {"engine": engine, "resolution": [16, 16], "samples": 1, "file_format": "PNG"})
    proc = None
    deadline = time.monotonic() + PROBE_TIMEOUT
    try:
        proc = BlenderProcess.start(files.launch(blender, box, threads=1, scratch_size=16 << 20))
        ready = proc.ready(deadline)
        if ready.get("t") != "ready":
            return False, {}, str(ready.get("message"))
        reply, image = proc.render({"frame": 1, "set": {}, "hook": False}, deadline=deadline, sink=_Quiet(),
                                   max_image=16 << 20, stop=lambda: None)
        if reply.get("t") != "frame" or not image or image[:8] != b"\x89PNG\r\n\x1a\n":
            return False, ready, str(reply.get("message") or "no image")
        return True, ready, None
    except (BlenderDied, TimeoutError, OSError, SliceError) as e:
        why = proc.exit_description() if proc is not None and isinstance(e, BlenderDied) else f"{type(e).__name__}: {e}"
        return False, {}, why
    finally:
        if proc is not None:
            proc.stop()
        files.remove()


class _Quiet:
    def progress(self, value: Any = None) -> bool:
        return True

    def console(self, level: str, *args: Any) -> None:
        pass
