"""The render driver: runs *inside* Blender, never imported by the plugin.

The evaluator copies this file into the job's read-only folder and starts
``blender -b ... --python /job/driver.py -- /job/spec.json CMD_FD REPLY_FD``. It loads the work
once (a .blend file, or a scene script run on the factory scene), applies the job's options, then
renders one frame per command until its command pipe closes. So Blender starts and loads the
scene once per job, not once per frame.

Wire format, both directions on dedicated pipes (never stdout, which carries Blender's own log):
a frame is a 4-byte big-endian length and that many bytes.

* host -> driver (``cmd_fd``): a pickled dict, ``{"t": "render", "id": n, "frame": ..., ...}``
  (the host is trusted by the driver, not the other way round);
* driver -> host (``reply_fd``): a JSON object; a ``"frame"`` reply is followed by one more frame
  holding the image file's bytes (``"size"`` says how many). The host checks every field: a
  scene script can write to this pipe too.

Blender's own progress lines (``Fra:... | Sample 3/32``) go to stdout, which the host parses.
Before each reply the driver prints a marker line, ``MARK done <id>``, so the host knows when it
has seen every line of that frame.
"""

import ctypes
import errno
import json
import linecache
import os
import pickle
import struct
import sys
import time
import traceback

import bpy

MARK = "\x1edcp-driver"  # marker line: MARK done <id>
HOOK = "dcp_datum"
LENGTH = struct.Struct(">I")
#: Free scratch space below which a just-written image may be truncated.
FULL = 64 << 10
FORMATS = {"PNG": ".png", "JPEG": ".jpg", "OPEN_EXR": ".exr"}
#: Engine names across Blender versions: EEVEE was BLENDER_EEVEE_NEXT in 4.2-4.x, BLENDER_EEVEE again in 5.x.
ENGINE_ALIASES = {
    "BLENDER_EEVEE": ("BLENDER_EEVEE", "BLENDER_EEVEE_NEXT"),
    "BLENDER_EEVEE_NEXT": ("BLENDER_EEVEE_NEXT", "BLENDER_EEVEE"),
}

_libc = ctypes.CDLL(None)


class Refusal(Exception):
    """A failure the host reports with ``code``/``name`` rather than as the work's own exception."""

    def __init__(self, message, code="EUNCAUGHT", name="BlenderError", limit=None):
        super().__init__(message)
        self.code = code
        self.name = name
        self.limit = limit  # the limit exceeded, for the host's wording (``scratch``)


def read_exact(fd, n):
    chunks = []
    while n:
        data = os.read(fd, n)
        if not data:
            return None
        chunks.append(data)
        n -= len(data)
    return b"".join(chunks)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Channel:
    def __init__(self, cmd_fd, reply_fd):
        self.cmd_fd = cmd_fd
        self.reply_fd = reply_fd

    def receive(self):
        head = read_exact(self.cmd_fd, LENGTH.size)
        if head is None:
            return None
        body = read_exact(self.cmd_fd, LENGTH.unpack(head)[0])
        return None if body is None else pickle.loads(body)

    def send(self, message, payload=None):
        data = json.dumps(message, allow_nan=False).encode("utf-8")
        out = LENGTH.pack(len(data)) + data
        if payload is not None:
            out += LENGTH.pack(len(payload)) + payload
        write_all(self.reply_fd, out)


def flush_output():
    """Blender's C code prints through stdio; flush it before a marker so lines arrive in order."""
    sys.stdout.flush()
    sys.stderr.flush()
    _libc.fflush(None)


def mark(what, ident):
    flush_output()
    print("%s %s %s" % (MARK, what, ident), flush=True)


def failure(stage, exc, code="EUNCAUGHT", name=None, limit=None):
    """An error reply; ``stage`` is load (the work), options, or render (one frame)."""
    refusal = isinstance(exc, Refusal)
    limit = exc.limit if refusal else limit
    message = str(exc).strip()
    if message.startswith("Error: "):  # bpy.ops errors repeat Blender's report prefix
        message = message[len("Error: "):].strip()
    return {
        "t": "error",
        "stage": stage,
        "code": exc.code if refusal else code,
        "name": exc.name if refusal else (name or type(exc).__name__),
        "message": message or type(exc).__name__,
        "stack": None if refusal else traceback.format_exc(),
        "limit": limit,
    }


# -- loading ---------------------------------------------------------------------------------
def load(spec):
    """Open the .blend file or run the scene script; return the script's namespace (or {})."""
    if spec["kind"] == "blend":
        # use_scripts=False: scripts and Python drivers inside the file never run (as --disable-autoexec).
        bpy.ops.wm.open_mainfile(filepath=spec["work"], load_ui=False, use_scripts=False)
        return {}
    with open(spec["work"], encoding="utf-8") as f:
        source = f.read()
    namespace = {"__name__": "__main__", "__file__": "scene.py"}
    # Tracebacks then show the script's own lines, as they would for a file.
    linecache.cache["scene.py"] = (len(source), None, source.splitlines(True), "scene.py")
    exec(compile(source, "scene.py", "exec"), namespace)
    return namespace


def apply_options(scene, options):
    render = scene.render
    engine = options.get("engine")
    if engine:
        for name in ENGINE_ALIASES.get(engine, (engine,)):
            try:
                render.engine = name  # the engine list is dynamic (add-ons register engines): just try
                break
            except TypeError:
                pass
        else:
            raise Refusal("this Blender (%s) has no render engine %s" % (bpy.app.version_string, engine),
                          code="ENOWORKTIME")
    if "resolution" in options:
        render.resolution_x, render.resolution_y = options["resolution"]
    if "percentage" in options:
        render.resolution_percentage = options["percentage"]
    if "samples" in options:
        samples = options["samples"]
        if render.engine == "CYCLES":
            scene.cycles.samples = samples
        elif render.engine.startswith("BLENDER_EEVEE"):
            scene.eevee.taa_render_samples = samples
    if "file_format" in options:
        render.image_settings.file_format = options["file_format"]
    if render.image_settings.file_format not in FORMATS:
        # A .blend saved with, say, TIFF output: render what the job can carry, PNG.
        render.image_settings.file_format = "PNG"
    if render.engine == "CYCLES" and scene.cycles.use_denoising and not has_denoiser():
        # Debian's Blender has no OpenImageDenoise: Cycles would stop with an error on every frame.
        scene.cycles.use_denoising = False
        print("dcp: this Blender has no OpenImageDenoise; rendering without denoising")


def has_denoiser():
    try:
        import _cycles
    except ImportError:
        return False
    return bool(getattr(_cycles, "with_openimagedenoise", True))


def describe(scene, namespace):
    cameras = sorted(o.name for o in scene.objects if o.type == "CAMERA")
    if not cameras:
        raise Refusal("the scene %r has no camera: add one (bpy.ops.object.camera_add()) and make it "
                      "scene.camera" % scene.name, code="EBADWORK", name="NoCamera")
    render = scene.render
    return {
        "t": "ready",
        "blender": bpy.app.version_string,
        "scene": scene.name,
        "engine": render.engine,
        "format": render.image_settings.file_format,
        "frame_start": scene.frame_start,
        "frame_end": scene.frame_end,
        "frame_current": scene.frame_current,
        "camera": scene.camera.name if scene.camera else None,
        "cameras": cameras,
        "hook": callable(namespace.get(HOOK)),
        "denoiser": has_denoiser(),
    }


# -- one frame ---------------------------------------------------------------------------------
def resolve(scene, path):
    """``(owner, attribute, index)`` for an override path: ``objects["Cube"].location[2]``
    (from ``bpy.data``) or ``scene.render.film_transparent`` (from the rendered scene)."""
    base, rest = (scene, path[len("scene."):]) if path.startswith("scene.") else (bpy.data, path)
    index = None
    if rest.endswith("]") and "[" in rest:
        head, _, tail = rest.rpartition("[")
        if tail[:-1].isdigit():
            rest, index = head, int(tail[:-1])
    owner_path, _, attribute = rest.rpartition(".")
    if not attribute or not attribute.isidentifier():
        raise Refusal("cannot set %r: write a data path such as objects[\"Cube\"].location[2] or "
                      "scene.render.film_transparent" % path, name="BadOverride")
    try:
        owner = base.path_resolve(owner_path) if owner_path else base
    except ValueError:
        raise Refusal("cannot set %r: %r names nothing in this scene" % (path, owner_path), name="BadOverride") from None
    if not hasattr(owner, attribute):
        raise Refusal("cannot set %r: %s has no property %r" % (path, type(owner).__name__, attribute),
                      name="BadOverride")
    return owner, attribute, index


def snapshot(value):
    if isinstance(value, (str, bytes, set, frozenset)):  # already values, not views
        return value
    try:
        return tuple(value)  # mathutils vectors, colours, arrays: copy, not a live view
    except TypeError:
        return value


def set_value(owner, attribute, index, value):
    if index is None:
        setattr(owner, attribute, value)
    else:
        getattr(owner, attribute)[index] = value


def apply_overrides(scene, overrides, undo):
    for path, value in overrides.items():
        owner, attribute, index = resolve(scene, path)
        # Copied before setting: a vector property reads as a live view of the property.
        old = snapshot(getattr(owner, attribute) if index is None else getattr(owner, attribute)[index])
        try:
            set_value(owner, attribute, index, value)
        except (TypeError, ValueError, AttributeError, IndexError) as e:
            raise Refusal("cannot set %r to %r: %s" % (path, value, e), name="BadOverride") from None
        undo.append((owner, attribute, index, old))


def render(scene, namespace, cmd, out_dir):
    """Render one frame as ``cmd`` says; return ``(reply, image bytes)``. Overrides, camera and
    seed are put back afterwards, so a frame never depends on which frames this process rendered
    before it (a ``dcp_datum`` hook's own changes are the hook's business)."""
    undo = []
    saved_camera, saved_seed = scene.camera, scene.cycles.seed if hasattr(scene, "cycles") else None
    try:
        frame = cmd["frame"]
        scene.frame_set(frame)
        if cmd.get("camera") is not None:
            camera = scene.objects.get(cmd["camera"])
            if camera is None or camera.type != "CAMERA":
                names = ", ".join(sorted(o.name for o in scene.objects if o.type == "CAMERA"))
                raise Refusal("the scene has no camera named %r; its cameras: %s" % (cmd["camera"], names),
                              name="NoCamera")
            scene.camera = camera
        if cmd.get("seed") is not None:
            scene.cycles.seed = cmd["seed"]
        apply_overrides(scene, cmd.get("set") or {}, undo)
        info = None
        if cmd.get("hook"):
            info = namespace[HOOK](scene, cmd.get("datum"))
        if scene.camera is None:
            raise Refusal("the scene has no active camera: name one in the datum ({\"camera\": \"Camera\"}) or set "
                          "scene.camera", name="NoCamera")
        for name in os.listdir(out_dir):
            os.unlink(os.path.join(out_dir, name))
        render = scene.render
        render.filepath = os.path.join(out_dir, "frame")
        started = time.perf_counter()
        bpy.ops.render.render(write_still=True)
        elapsed = time.perf_counter() - started
        written = os.listdir(out_dir)
        disk = os.statvfs(out_dir)
        if disk.f_bavail * disk.f_frsize < FULL:
            raise Refusal("it is full, so frame %d may not have been saved whole" % frame, code="EOUTPUTLIMIT",
                          limit="scratch")
        if len(written) != 1:
            raise Refusal("Blender did not save frame %d (its console lines say why)" % frame)
        with open(os.path.join(out_dir, written[0]), "rb") as f:
            image = f.read()
        scale = render.resolution_percentage / 100.0
        reply = {
            "t": "frame", "id": cmd["id"], "frame": frame, "format": render.image_settings.file_format,
            "width": int(render.resolution_x * scale), "height": int(render.resolution_y * scale),
            "engine": render.engine, "camera": scene.camera.name, "render_time": elapsed, "size": len(image),
        }
        if info is not None:
            reply["info"] = info
        try:
            json.dumps(reply, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise Refusal("%s() returned a value that is not plain JSON data: %s" % (HOOK, e),
                          code="EUNSERIALIZABLE", name="TypeError") from None
        return reply, image
    finally:
        for owner, attribute, index, old in reversed(undo):
            set_value(owner, attribute, index, old)
        scene.camera = saved_camera
        if saved_seed is not None:
            scene.cycles.seed = saved_seed


def serve(spec):
    channel = Channel(spec["cmd_fd"], spec["reply_fd"])
    try:
        namespace = load(spec)
    except BaseException as e:  # a scene script's SystemExit is a failure to build the scene too
        mark("done", 0)
        channel.send(failure("load", e, code="EBADWORK"))
        return
    try:
        scene = bpy.context.scene
        apply_options(scene, spec["options"])
        ready = describe(scene, namespace)
    except BaseException as e:
        ready = failure("options", e, code="EBADWORK")
    mark("done", 0)
    channel.send(ready)
    if ready["t"] != "ready":
        return
    out_dir = spec["out_dir"]
    os.makedirs(out_dir, exist_ok=True)
    while True:
        cmd = channel.receive()
        if cmd is None or cmd.get("t") == "exit":
            return
        payload = None
        try:
            reply, payload = render(scene, namespace, cmd, out_dir)
        except OSError as e:
            full = e.errno == errno.ENOSPC  # the only place it can write is the sandbox's /scratch
            reply = dict(failure("render", e, code="EOUTPUTLIMIT" if full else "EUNCAUGHT", limit="scratch" if full else None),
                         id=cmd["id"])
        except BaseException as e:
            reply = dict(failure("render", e), id=cmd["id"])
        mark("done", cmd["id"])
        channel.send(reply, payload)


def main():
    argv = sys.argv[sys.argv.index("--") + 1:]  # SPEC CMD_FD REPLY_FD
    with open(argv[0], encoding="utf-8") as f:
        spec = json.load(f)
    spec["cmd_fd"], spec["reply_fd"] = int(argv[1]), int(argv[2])
    serve(spec)
    flush_output()


if __name__ == "__main__":
    main()
