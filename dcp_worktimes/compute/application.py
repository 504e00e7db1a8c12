"""Applications (DCP's "Application Handles"): named, versioned work functions published to the
scheduler, and jobs built from them by name.

Publishing (DCP's form 1, ``new Application(name, version, publishWallet)``)::

    from dcp_worktimes import compute

    app = compute.Application("videoProcessor", "1.0.0", identity)   # identity: a secret you keep
    app.categories = ["video"]                     # DCP's "hashTags": workers may serve only some
    app.description = "frame filters"
    app.define_function("enhance", ["./ffmpeg.js"], enhance_fn)       # DCP: defineFunction(name, requires, work)
    stabilize = app.define_function("stabilize", stabilize_fn, worktime="python")
    stabilize.requires({"machine": {"gpu": True}})                    # requirements of this function
    app.publish()                                  # 'videoProcessor@1.0.0'

Using a published application (form 2, ``new Application(name, versionRange)``)::

    vp = compute.Application("videoProcessor", "^1.0.0")
    job = vp.for_(frames, "stabilize")             # every compute.for_ form; the work is a function name
    results = job.exec(compute.marketPrice)

Rules (the scheduler keeps them, ``Scheduler.publish_application``): a published version never
changes, so an update is a new version; the identity that first published a name is the only
one that may publish its next versions (the store keeps a fingerprint of it, never the identity
itself). Locally nobody reviews a publish (DCP's staff do): ``publish()`` makes the version
usable at once. ``Application(name, range)`` resolves the highest published version within the
npm range each time it builds a job; the job records which (``job.application``), workers started
with ``--category`` serve only jobs of applications carrying one of their categories, and
``compute.resume`` re-attaches to such a job like to any other.

The identity is any secret ``str``/``bytes`` (a passphrase, a key) or the path of a key file. On
the embedded store, which lives on your machine, it keeps projects from overwriting each other's
applications by mistake; it is not a signature.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import WorkError
from ..inputs import input_set
from ..scheduler.base import AppFunction, ApplicationRecord, Scheduler
from ..scheduler.matching import check_categories, merge_capabilities
from ..versions import parse_range, parse_version
from ..worktime import CapturedWork
from .settings import check_requirements, check_scheduler, read_modules

if TYPE_CHECKING:
    from .job import Job

__all__ = ["Application", "ApplicationFunction", "identity_fingerprint"]

#: Job settings a function fixes when it is defined (a job built from it cannot change them).
FUNCTION_SETTINGS = frozenset({"worktime", "worktime_version", "custom_worktime", "requirements", "limits", "options",
                               "modules", "files"})


def identity_fingerprint(identity: Any) -> str:
    """What the store keeps of a publishing identity: a SHA-256 fingerprint (hex)."""
    if isinstance(identity, os.PathLike):
        path = Path(identity).expanduser()
        if not path.is_file():
            raise ValueError(f"the identity {os.fspath(identity)!r} is not a file; pass a key file's path, or the "
                             "identity itself as a str or bytes")
        data = path.read_bytes()
    elif isinstance(identity, str):
        data = identity.encode("utf-8", "surrogatepass")
    elif isinstance(identity, (bytes, bytearray, memoryview)):
        data = bytes(identity)
    else:
        raise TypeError(f"an application identity is a secret str or bytes, or the Path of a key file; got "
                        f"{type(identity).__name__}")
    if not data:
        raise ValueError("the application identity is empty; use a secret only you have (a passphrase or a key)")
    import hashlib  # here: it loads OpenSSL (~4 MB), which a deployer otherwise never needs

    return hashlib.sha256(b"dcp-worktimes application identity\0" + data).hexdigest()


class ApplicationFunction:
    """A function of an application being defined (``define_function`` returns it)."""

    def __init__(self, app: "Application", name: str, job: "Job") -> None:
        self.application = app
        self.name = name
        self._job = job  # a job that is never deployed: it holds and checks the function's settings

    def requires(self, requirements: Mapping[str, Any]) -> "ApplicationFunction":
        """The requirements of every job built from this function (DCP: ``fn.requires({machine:
        {gpu: true}})``), merged into what it already requires. Returns the function."""
        self._job.requirements = check_requirements(merge_capabilities(self._job.requirements, requirements))
        return self

    @property
    def requirements(self) -> dict:
        return self._job.requirements

    def _record(self) -> AppFunction:
        from .deploy import work_spec

        spec, worktime_range = work_spec(self._job)
        return AppFunction(spec=spec, worktime_range=worktime_range,
                           requirements=check_requirements(self._job.requirements))

    def __repr__(self) -> str:
        return f"<function {self.name} of application {self.application.name} {self.application.version}>"


class Application:
    """``compute.Application(name, version, identity)`` to define and publish;
    ``compute.Application(name, version_range)`` to build jobs from published functions.

    ``scheduler``: where the application is published/read (a URL or ``Scheduler``; default
    ``$DCP_SCHEDULER`` or the per-user store); jobs built from it use the same one.
    """

    def __init__(self, name: str, version: str | None = None, identity: Any = None, *, scheduler: Any = None) -> None:
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise TypeError(f"compute.Application(name, ...): the name is a non-empty string without surrounding "
                            f"spaces, got {name!r}")
        check_scheduler(scheduler)
        self.name = name
        self.scheduler = scheduler
        self._owner: str | None = None
        self._functions: dict[str, ApplicationFunction] = {}
        self.description: str | None = None
        self.link: str | None = None
        self._categories: list[str] = []
        if identity is not None:  # form 1: define and publish this exact version
            if not isinstance(version, str):
                raise TypeError(f"compute.Application({name!r}, version, identity): the version to publish is a string "
                                f"such as '1.0.0', got {version!r}")
            try:
                parse_version(version)
            except ValueError as e:
                raise ValueError(f"compute.Application({name!r}, {version!r}, identity): {e}; a published version is "
                                 "exact (ranges such as '^1.0.0' are for using an application)") from None
            self._owner = identity_fingerprint(identity)
        elif version is not None:
            try:
                parse_range(version)
            except ValueError as e:
                raise ValueError(f"compute.Application({name!r}, {version!r}): {e}") from None
        self.version = version

    # -- public properties ("optional, public, probably displayed during mining") -------------------
    @property
    def categories(self) -> list[str]:
        """DCP's "hashTags": words workers choose to serve (``dcp-worker --category video``)."""
        return self._categories

    @categories.setter
    def categories(self, value: Any) -> None:
        self._categories = check_categories(value, "application categories")

    hashTags = categories  # noqa: N815 - DCP's name

    # -- form 1: define and publish -------------------------------------------------------------------
    def define_function(self, name: str, requires: Any, work: Any = None, **settings: Any) -> ApplicationFunction:
        """Define a function of this application version; returns it (``.requires(...)`` sets its requirements).

        DCP's order is ``(name, requires, work)``: ``requires`` lists the modules the work loads
        (paths of module files or ``{name: source}`` dicts, as ``job.requires``); without
        modules, write ``define_function(name, work)``. ``settings``: what the function fixes for
        every job built from it: ``worktime``, ``worktime_version``, ``custom_worktime``,
        ``requirements``, ``limits``, ``options``, ``files``.
        """
        from .job import Job

        if self._owner is None:
            raise TypeError(
                f"application {self.name}: this handle uses published versions; to define functions and publish, "
                f"create it with the version and your identity: compute.Application({self.name!r}, '1.0.0', identity)")
        if not isinstance(name, str) or not name.strip():
            raise TypeError(f"define_function(name, ...): the name is a non-empty string, got {name!r}")
        if name in self._functions:
            raise ValueError(f"application {self.name} {self.version} already defines {name!r}; each name once")
        if work is None:
            requires, work = (), requires
        elif isinstance(requires, (str, os.PathLike, Mapping)):
            requires = [requires]
        unknown = set(settings) - FUNCTION_SETTINGS - {"modules"}
        if unknown:
            raise TypeError(f"define_function: unknown setting(s) {', '.join(sorted(unknown))}; a function fixes "
                            f"{', '.join(sorted(FUNCTION_SETTINGS))}")
        modules = dict(settings.pop("modules", None) or {})
        modules.update(read_modules(requires))
        job = Job(input_set([]), work, None, modules=modules, **settings)
        fn = ApplicationFunction(self, name, job)
        fn._record()  # every check of the work now (compiles nothing; the worktime's cheap refusals)
        self._functions[name] = fn
        return fn

    defineFunction = define_function  # noqa: N815 - DCP's name

    def publish(self) -> str:
        """Store this version with its functions; returns its id, ``"name@version"`` (DCP's
        request id; locally nobody reviews it, so it is usable at once)."""
        if self._owner is None:
            raise TypeError(f"application {self.name}: publishing needs the version and your identity: "
                            f"compute.Application({self.name!r}, '1.0.0', identity)")
        if not self._functions:
            raise ValueError(f"application {self.name} {self.version} has no functions; "
                             "define one with app.define_function(name, work) before publishing")
        public = {k: v for k, v in (("description", self.description), ("link", self.link)) if v is not None}
        record = ApplicationRecord(name=self.name, version=str(self.version), owner=self._owner,
                                   functions={n: f._record() for n, f in self._functions.items()},
                                   categories=list(self._categories), public=public)
        with self._scheduler() as sched:
            sched.publish_application(record)
        return f"{self.name}@{self.version}"

    # -- form 2: jobs from published functions ----------------------------------------------------------
    def record(self) -> ApplicationRecord:
        """The published version this handle resolves to now (the highest within its range)."""
        with self._scheduler() as sched:
            return sched.get_application(self.name, self.version)

    def for_(self, *args: Any, **settings: Any) -> "Job":
        """A job running a published function over an input set: every form of ``compute.for_``,
        with the function's name where the work goes (``vp.for_(frames, "stabilize")``).

        ``settings`` are job settings (``cores``, ``public``, ...); ``requirements`` add to the
        function's, ``options`` and ``limits`` override its own per key.
        """
        from . import _make_job, parse_for

        inputs, function, arguments = parse_for(args, f"Application({self.name!r}).for_")
        if not isinstance(function, str):
            raise TypeError(f"Application({self.name!r}).for_(inputs, function_name): the work of an application job "
                            f"is the name of one of its functions, got {type(function).__name__}")
        fixed = set(settings) & {"worktime", "worktime_version", "custom_worktime", "modules", "files"}
        if fixed:
            raise TypeError(f"{', '.join(sorted(fixed))}: fixed by the application's function; define a new version "
                            "of the application to change them")
        app = self.record()
        fn = app.functions.get(function)
        if fn is None:
            import difflib

            close = difflib.get_close_matches(function, list(app.functions), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise WorkError(f"application {app.name} {app.version} has no function {function!r}{hint}; its functions: "
                            f"{', '.join(sorted(app.functions))}")
        spec = fn.spec
        requirements = merge_capabilities(fn.requirements, settings.pop("requirements", None) or {})
        options = {**spec.options, **(settings.pop("options", None) or {})}
        limits = settings.pop("limits", None)
        if self.scheduler is not None:
            settings.setdefault("scheduler", self.scheduler)
        origin = f"function {function} of application {app.name} {app.version}"
        job = _make_job(inputs, CapturedWork(spec.work, {}, origin), arguments,
                        {**settings, "worktime": spec.worktime})
        job.worktime_version = fn.worktime_range
        from ..plugins import get_worktimes

        # Published work was checked when it was published; a worktime only remote workers have
        # (defined with custom_worktime) is not refused here: exec(local=False) waits for them.
        job.custom_worktime = spec.worktime not in get_worktimes()
        job.modules = dict(spec.modules)
        job.files = dict(spec.files)
        job.options = options
        job.requirements = check_requirements(requirements)
        job.limits = spec.limits if limits is None else (
            limits if not isinstance(limits, Mapping) else _override(spec.limits, limits))
        job.application = {"name": app.name, "version": app.version, "function": function,
                           "categories": list(app.categories)}
        return job

    # -- helpers ---------------------------------------------------------------------------------
    def _scheduler(self) -> Any:
        """The store (as a context manager): this handle's, else ``compute.default.scheduler``'s, else the default."""
        from contextlib import nullcontext

        from ..scheduler import open_scheduler
        from . import default

        where = self.scheduler if self.scheduler is not None else getattr(default, "scheduler", None)
        check_scheduler(where)
        if isinstance(where, Scheduler):
            return nullcontext(where)
        return open_scheduler(os.fspath(where) if isinstance(where, os.PathLike) else where)

    def __repr__(self) -> str:
        form = "to publish" if self._owner is not None else "published"
        return f"<Application {self.name} {self.version or '(newest)'} {form}>"


def _override(base: Any, values: Mapping[str, Any]) -> Any:
    from ..limits import Limits

    return Limits.parse(base, **values)
