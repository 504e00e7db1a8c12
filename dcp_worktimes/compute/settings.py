"""Checks of a job's settings: each setting is checked by exactly one function here.

They run when a setting is assigned (``job.modules = ...``) and again when the job is deployed,
and raise ``TypeError``/``ValueError`` (or the ``DcpError`` named) with what to write instead::

    >>> check_arguments([1, 2], "job.arguments")
    [1, 2]
    >>> check_arguments(3, "job.arguments")
    Traceback (most recent call last):
    TypeError: job.arguments: extra work arguments must be a list (work(datum, *arguments)), got int 3; write [3]
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any, Mapping

from ..errors import RequirementsError
from ..limits import to_float
from ..inputs import plain
from ..values import UnserializableValue, pack
from ..worktime import check_file_names

#: Job attributes that ``for_``/``do`` keywords and ``compute.default`` may set.
SETTINGS = frozenset({"worktime", "worktime_version", "custom_worktime", "requirements", "public", "limits", "options",
                      "modules", "files", "max_attempts", "scheduler", "cores", "progress", "worker_wait"})
PUBLIC_KEYS = frozenset({"name", "description", "link"})
#: The scheduler's stores count slices in signed 64-bit integers (SQLite's INTEGER).
MAX_SLICES = 2**63 - 1


def check_arguments(arguments: Any, where: str) -> list[Any]:
    """Extra work arguments (``work(datum, *arguments)``): a list or tuple, returned as a list."""
    if arguments is None:
        return []
    if not isinstance(arguments, (list, tuple)):
        raise TypeError(f"{where}: extra work arguments must be a list (work(datum, *arguments)), got "
                        f"{type(arguments).__name__} {arguments!r:.40}; write [{arguments!r:.40}]")
    return list(arguments)


def check_sendable(value: Any, where: str) -> Any:
    """``value`` in the lossless value set (numpy scalars made plain), or ``UnserializableValue`` naming ``where``."""
    try:
        value = plain(value)
        pack(value)
    except UnserializableValue as e:
        raise UnserializableValue(f"{where}: {e}") from None
    except ValueError as e:  # nested too deeply
        raise ValueError(f"{where}: {e}") from None
    return value


def check_requirements(req: Any, path: str = "requirements") -> dict:
    """Nested dicts of booleans (``{"machine": {"gpu": True}}``)."""
    if not isinstance(req, Mapping):
        raise RequirementsError(
            f"{path} must be a dict of booleans (nested by namespace), e.g. {{'machine': {{'gpu': True}}}}; "
            f"got {type(req).__name__}"
        )
    for k, v in req.items():
        if not isinstance(k, str):
            raise RequirementsError(f"{path} keys must be strings, got {k!r}")
        if isinstance(v, Mapping):
            check_requirements(v, f"{path}.{k}")
        elif not isinstance(v, bool):
            raise RequirementsError(f"{path}.{k} must be True (must have) or False (must not have), or a nested dict; "
                                    f"got {v!r}")
    return dict(req)


def check_modules(modules: Any) -> dict[str, str | bytes]:
    """``job.modules``: ``{name: str or bytes source}``."""
    if not isinstance(modules, Mapping):
        raise TypeError(f"job.modules must be a dict {{name: source}} (or use job.requires()), got {type(modules).__name__}")
    out: dict[str, str | bytes] = {}
    for name, source in modules.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"job.modules: module names must be non-empty strings, got {name!r}")
        if isinstance(source, (bytearray, memoryview)):
            source = bytes(source)
        if not isinstance(source, (str, bytes)):
            raise TypeError(
                f"job.modules[{name!r}]: source must be str or bytes, got {type(source).__name__} {source!r:.40}; "
                "ship a module file with job.requires('path/to/module.py')"
            )
        out[name] = source
    return out


def _module_file(m: str | os.PathLike) -> Path:
    """The file ``requires(m)`` ships, found as ``require`` finds one: the path itself, else with
    ``.js`` added (DCP's example 11 lists ``"./ffmpeg"`` for ``./ffmpeg.js``)."""
    from ..errors import WorkError

    path = Path(m)
    for candidate in (path, path.with_name(path.name + ".js")) if path.name else ():  # "", ".", "/": no file
        if candidate.is_file():
            return candidate
    text = str(m)
    if not text.strip():
        raise WorkError("requires(''): the module path is empty; pass the path of a module file, or "
                        "{'name': source} to ship source text")
    if not isinstance(m, os.PathLike) and not text.startswith((".", "/", "~")):  # require's bare name: a package
        raise WorkError(
            f"requires({text!r}): no such file here (nor {text}.js); a bare name such as {text!r} is, in DCP, a "
            "package pre-published to its package manager, which this scheduler does not have: ship its source "
            f"with {{{text!r}: source}}, or name the file with its path ('./{text}.js')")
    raise WorkError(f"requires({text!r}): no such file (nor {text}.js); pass the path of a module file, or "
                    "{'name': source} to ship source text")


def read_modules(modules: Any, named: Mapping[str, Any] | None = None) -> dict[str, str | bytes]:
    """What ``job.requires(...)`` / ``define_function(name, requires, work)`` ship: paths of module
    files (``"./refiner.js"``, ``Path``: module name = the file's stem), ``{name: source}`` dicts,
    and ``name=source`` keywords."""
    from ..errors import WorkError

    out: dict[str, str | bytes] = {}
    for m in modules:
        if isinstance(m, Mapping):
            out.update(check_modules(m))
        elif isinstance(m, (str, os.PathLike)):
            path = _module_file(m)
            data = path.read_bytes()
            try:
                source: str | bytes = data.decode("utf-8")
            except UnicodeDecodeError:
                source = data
            out.update(check_modules({path.stem: source}))
        else:
            raise TypeError(f"requires() takes module paths or {{name: source}} dicts, got {m!r}")
    out.update(check_modules(named or {}))
    return out


def check_files(files: Any) -> dict[str, bytes]:
    """``job.files``: ``{relative path: bytes}`` the work may read."""
    if not isinstance(files, Mapping):
        raise TypeError(f"job.files must be a dict {{relative path: bytes}}, got {type(files).__name__}")
    out: dict[str, bytes] = {}
    for path, data in files.items():
        if not isinstance(path, str) or not path or path.startswith(("/", "\\")) or ".." in Path(path).parts:
            raise TypeError(f"job.files: keys must be relative paths inside the job's directory such as 'data/a.txt', got {path!r}")
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        if isinstance(data, str):
            raise TypeError(
                f"job.files[{path!r}] is a str; files hold bytes: write {{{path!r}: text.encode()}} "
                "(or ship source the work imports with job.requires())"
            )
        if not isinstance(data, bytes):
            raise TypeError(f"job.files[{path!r}] must be bytes, got {type(data).__name__}")
        out[path] = data
    try:
        check_file_names(out)
    except ValueError as e:
        raise TypeError(str(e)) from None
    return out


def check_options(options: Any) -> dict[str, Any]:
    """``job.options``: a dict of worktime switches with string keys and sendable values (which
    options a worktime reads is the worktime's own check, ``Worktime.validate``)."""
    if not isinstance(options, Mapping):
        raise TypeError(f"job.options must be a dict of worktime switches such as {{'strict': True}}, got {options!r:.40}")
    out = {}
    for key, value in options.items():
        if not isinstance(key, str):
            raise TypeError(f"job.options keys must be strings, got {key!r}")
        out[key] = check_sendable(value, f"job.options[{key!r}]")
    return out


def check_public(public: Any) -> dict:
    if not isinstance(public, Mapping) or set(public) - PUBLIC_KEYS:
        raise TypeError(f"job.public must be a dict with keys from {sorted(PUBLIC_KEYS)}, got {public!r}")
    return {key: check_sendable(value, f"job.public[{key!r}]") for key, value in public.items()}


def check_max_attempts(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"job.max_attempts must be a positive integer, got {value!r}")
    return value


def check_total(total: int | None) -> None:
    if total is not None and total > MAX_SLICES:
        raise ValueError(
            f"this job has {total} slices; a scheduler store counts at most 2**63-1 = {MAX_SLICES} slices per job "
            "(and no machine would finish that many); split the range into smaller jobs or use a larger step/group"
        )


def check_scheduler(value: Any) -> None:
    from ..scheduler import Scheduler

    if value is None or isinstance(value, Scheduler):
        return
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(
            f"scheduler must be a scheduler URL such as 'sqlite:///path/jobs.db', a Scheduler instance or None "
            f"(= $DCP_SCHEDULER or the per-user store), got {type(value).__name__} {value!r:.40}"
        )


def check_timeout(timeout: Any) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not math.isfinite(to_float(timeout)) \
            or timeout <= 0:
        raise ValueError(f"exec(timeout=...) must be a positive finite number of seconds, or None to wait forever; got "
                         f"{timeout!r:.40}")


def check_worker_wait(value: Any) -> float | None:
    """``job.worker_wait``: seconds ``exec(local=False)`` waits for a worker that can run the job (``None``: for ever)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(to_float(value)) or value < 0:
        raise ValueError(f"job.worker_wait must be a finite number of seconds >= 0, or None to wait for a worker for "
                         f"ever; got {value!r:.40}")
    return float(value)


def parse_worktime(value: Any) -> tuple[str | None, str | None]:
    """``"map-basic@^1.0.0"`` → ``("map-basic", "^1.0.0")``; ``None`` → ``(None, None)``."""
    if value is None:
        return None, None
    if not isinstance(value, str) or not value.strip():
        raise TypeError(f"job.worktime must be a worktime name such as 'map-basic', got {value!r}")
    name, _, rng = value.strip().partition("@")
    if not name.strip():
        raise TypeError(f"job.worktime {value!r} has no name before '@'; write e.g. 'map-basic@^1.0.0'")
    return name.strip(), (rng or None)
