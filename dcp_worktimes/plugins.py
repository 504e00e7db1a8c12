"""The worktime registry: built-ins and installed plugins, behind one typed facade.

Use ``get_worktime(name)`` / ``get_worktimes()``, never ``pm.hook`` directly::

    >>> from dcp_worktimes.plugins import get_worktime
    >>> get_worktime("echo").cls.name                     # doctest: +SKIP
    'echo'
    >>> get_worktime("nope")                              # doctest: +SKIP
    WorktimeNotFound: ENOWORKTIME: no worktime named 'nope' is installed; installed: echo 1.0.0 ...

Sources, in order:

* the packages of ``dcp_worktimes.worktimes`` (built-ins, registered by the same hook);
* every entry point of the group ``dcp_worktimes`` (installed plugin packages), unless
  ``DCP_WORKTIMES_LOAD_PLUGINS`` restricts them: a comma-separated list of entry-point or
  distribution names to load; set it to an empty string to load no third-party plugin at all
  (so a broken plugin can still be uninstalled).

A plugin that fails to import (``sys.exit()`` at import included), or whose hook raises, or that
registers something that is not a valid worktime, is reported (``plugin_errors()`` and a warning)
and skipped; the others load. Two providers registering one name are reported the same way, naming
both: a built-in keeps its name, two plugins both lose it (which one a job meant is unknowable).
Asking for a skipped worktime says why it was skipped.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import re
import sys
import threading
import warnings
import functools
from dataclasses import dataclass
from typing import Any, Mapping
from importlib.metadata import entry_points
import pluggy

from . import hookspecs
from .errors import DcpError, DuplicateWorktime, WorktimeNotFound
from .versions import max_satisfying, parse_range, parse_version
from .worktime import LIMIT_NAMES, WORK_KINDS, Probe, Worktime

ENV_LOAD_PLUGINS = "DCP_WORKTIMES_LOAD_PLUGINS"
#: The "file" the registry's warnings name (a plugin skipped): ``dcp-worker`` prints them as its own lines.
PLUGINS_WARN_AS = "dcp-worktimes"
BUILTIN_PROVIDER = "dcp-worktimes"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_SETTING = re.compile(r"^[a-z][a-z0-9-]*$")
#: Names a worktime setting cannot take: ``dcp-worker``'s own flags (a setting becomes ``--NAME``,
#: and one named ``cores`` or ``wall-time`` would take over the owner's flag: a plugin could switch
#: off the worker's limits), and ``trusted``, the key ``--trust-work`` sets in a worktime's config.
RESERVED_SETTINGS = frozenset({
    "arg", "capability", "category", "cores", "cpu-time", "datum", "delete", "errors", "force", "help", "helper",
    "job", "json", "memory-limit", "module", "nworkers", "option", "output", "output-limit", "progress-timeout",
    "quiet", "scheduler", "trust-work", "trusted", "until-idle", "verbose", "version", "wall-time", "work", "worktime",
})
#: What a plugin may raise while it loads and still be only skipped: ``SystemExit`` too (a
#: plugin's ``sys.exit("not configured")`` at import ended every command, naming nothing).
_PLUGIN_FAULTS = (Exception, SystemExit)


@dataclass(frozen=True)
class Registration:
    """A registered worktime class and the package that provided it."""

    cls: type[Worktime]
    provider: str

    @property
    def name(self) -> str:
        return self.cls.name

    @property
    def version(self) -> str:
        return self.cls.version

    @property
    def ref(self) -> str:
        """``module:QualName``: how an evaluator process imports the class again."""
        return f"{self.cls.__module__}:{self.cls.__qualname__}"

    def probe(self, config: Mapping[str, Any] | None = None) -> Probe:
        """``cls.probe(config)``, once per process and config (a probe may start the engine).

        One probe of a worktime at a time: two threads' first jobs may arrive together, and a
        probe need not be thread-safe (map-basic's, through the deno
        package, reads ``sysconfig``, whose first use is not). A probe that raised is not
        remembered: the next call probes again."""
        wrong = _wrong_choice(self.cls, config or {})
        if wrong:
            return Probe({}, unavailable=wrong)
        frozen = _freeze(config or {})
        # One lock per worktime (its probes with any settings share code that need not be
        # thread-safe): a slow first probe (Blender's) holds up no other worktime's.
        with _PROBE_LOCK:
            lock = _PROBE_LOCKS.setdefault(self.cls, threading.Lock())
        with lock:
            try:
                return _probe(self.cls, frozen)
            except _ProbeRaised as e:
                return e.probe

    def cold_start(self) -> str | None:
        """``cls.cold_start()``: what a first job here will spend long on, or ``None`` (also when
        a third-party worktime's method raises or returns no text: the note is a courtesy)."""
        try:
            note = self.cls.cold_start()
        except Exception:  # noqa: BLE001 - never worth failing a command over
            return None
        return note.strip() or None if isinstance(note, str) else None

    def describe(self, config: Mapping[str, Any] | None = None) -> dict:
        d = self.cls.describe(self.probe(config))
        d["provider"] = self.provider
        return d


def _wrong_choice(cls: type[Worktime], config: Mapping[str, Any]) -> str | None:
    """Why ``config`` gives a setting a value outside its ``Worktime.choices`` (compared without
    case, as flags are typed), or ``None``: the host checks them, not each worktime's probe."""
    for name, values in cls.choices.items():
        value = config.get(name)
        if value is not None and str(value).strip().lower() not in {v.lower() for v in values}:
            return f"--{name} ({setting_env(name)}) must be one of {', '.join(values)}, not {value!r}"
    return None


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple) and all(isinstance(i, tuple) and len(i) == 2 and isinstance(i[0], str) for i in value):
        return {k: _thaw(v) for k, v in value}
    return value


#: A worktime setting ``NAME`` may also come from ``DCP_WORKTIMES_<NAME>`` (``js-engine``:
#: ``DCP_WORKTIMES_JS_ENGINE``): ``dcp-worker``'s flags fall back to it, and in-process ``exec()``,
#: which has no flags, reads it.
SETTING_ENV_PREFIX = "DCP_WORKTIMES_"


def setting_env(name: str) -> str:
    """The environment variable of worktime setting ``name``.

    >>> setting_env("js-engine")
    'DCP_WORKTIMES_JS_ENGINE'
    """
    return SETTING_ENV_PREFIX + name.upper().replace("-", "_")


def settings_from_env(cls: type[Worktime]) -> dict[str, str]:
    """The settings of ``cls`` given in the environment (``setting_env``), as ``Worktime.config``."""
    found = {name: os.environ.get(setting_env(name)) for name in cls.settings}
    return {name: value for name, value in found.items() if value}


_PROBE_LOCK = threading.Lock()
_PROBE_LOCKS: dict[type[Worktime], threading.Lock] = {}


class _ProbeRaised(Exception):
    """``_probe``'s way out without a cached answer (``lru_cache`` keeps results, not exceptions)."""

    def __init__(self, probe: Probe) -> None:
        super().__init__(probe.unavailable)
        self.probe = probe


@functools.lru_cache(maxsize=64)
def _probe(cls: type[Worktime], frozen: Any) -> Probe:
    try:
        probe = cls.probe(_thaw(frozen) or {})
    except Exception as e:  # a probe that raises says so instead of taking the worker down
        raise _ProbeRaised(Probe({}, unavailable=f"probing {cls.name} failed: {type(e).__name__}: {e}")) from None
    if not isinstance(probe, Probe):
        return Probe({}, unavailable=f"{cls.__qualname__}.probe() returned {type(probe).__name__}, not a Probe")
    if not _plain(dict(probe.capabilities)):
        return Probe({}, unavailable=f"{cls.__qualname__}.probe() returned capabilities that are not plain data")
    return probe


@dataclass(frozen=True)
class PluginError:
    plugin: str
    error: str


class Registry:
    """Loads plugins once and answers lookups. One process-wide instance: ``registry()``."""

    def __init__(self, load_entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._worktimes: dict[str, Registration] = {}
        self._providers: dict[str, str] = {}  # pluggy plugin name -> distribution that provided it
        self.errors: list[PluginError] = []
        self._filtered: list[str] = []  # plugins left out by DCP_WORKTIMES_LOAD_PLUGINS (named in errors)
        self._skipped: dict[str, str] = {}  # worktime name -> why its registration was refused
        self._load_builtins()
        if load_entry_points:
            self._load_entry_points()
        self._collect()

    # -- loading --------------------------------------------------------------------------------
    def _load_builtins(self) -> None:
        from . import worktimes

        for name in worktimes.BUILTINS:
            modname = f"{worktimes.__name__}.{name}"
            try:
                module = importlib.import_module(modname)
            except _PLUGIN_FAULTS as e:  # a broken built-in removes only itself
                self._report(modname, e)
                continue
            self._register(module, modname, BUILTIN_PROVIDER)

    def _load_entry_points(self) -> None:
        allowed = os.environ.get(ENV_LOAD_PLUGINS)
        allow = None if allowed is None else {a.strip() for a in allowed.split(",") if a.strip()}
        for ep in entry_points(group=hookspecs.PROJECT):
            dist = ep.dist.name if ep.dist is not None else ep.value
            if allow is not None and ep.name not in allow and dist not in allow:
                self._filtered.append(f"{dist} (entry point {ep.name!r})")
                continue
            plugin_name = f"{dist}:{ep.name}"
            if self.pm.has_plugin(plugin_name):
                continue
            try:
                with _stdout_to_stderr():
                    module = ep.load()
            except _PLUGIN_FAULTS as e:
                self._report(f"{dist} (entry point {ep.name!r})", e)
                continue
            if self.pm.is_registered(module):  # two entry points naming one module
                continue
            self._register(module, plugin_name, dist)

    def _who(self, plugin_name: str) -> str:
        """The package that provided a plugin, and its entry point when it has several."""
        provider = self._providers.get(plugin_name, plugin_name)
        _dist, colon, ep = plugin_name.partition(":")
        return f"{provider} (entry point {ep!r})" if colon else provider

    def _register(self, module: object, name: str, provider: str) -> bool:
        try:  # pluggy validates hook signatures here: a bad one removes only this plugin
            self.pm.register(module, name=name)
        except _PLUGIN_FAULTS as e:
            self._report(provider, e)
            return False
        self._providers[name] = provider
        return True

    def register_module(self, module: object, provider: str) -> None:
        """Register an already imported plugin module (tests, embedding applications); again is a no-op."""
        if self.pm.is_registered(module):
            return
        if self._register(module, getattr(module, "__name__", repr(module)), provider):
            self._collect()

    def _collect(self) -> None:
        found: dict[str, Registration] = {}
        skipped: dict[str, str] = {}
        clashed: set[str] = set()  # names two plugins registered: neither keeps it
        hooked = set()
        for impl in self.pm.hook.register_worktimes.get_hookimpls():
            hooked.add(impl.plugin_name)
            provider = self._providers.get(impl.plugin_name, impl.plugin_name)
            batch: list[type] = []
            try:
                with _stdout_to_stderr():
                    impl.function(register=batch.append)
            except _PLUGIN_FAULTS as e:
                self._report(self._who(impl.plugin_name), e)
                continue
            if not batch:
                self._report(self._who(impl.plugin_name), "its register_worktimes hook registered no worktime "
                             "(call register(YourWorktime) in it)")
            for cls in batch:
                try:
                    problem = _validate(cls)
                except Exception as e:  # noqa: BLE001 - a class attribute of a type nothing expects
                    problem = f"{getattr(cls, '__qualname__', cls)!r} cannot be checked ({type(e).__name__}: {e})"
                name = getattr(cls, "name", None)
                if problem:
                    self._report(provider, problem, what=f"worktime {getattr(cls, '__qualname__', cls)!r}")
                    if isinstance(name, str):
                        skipped.setdefault(name, f"{problem} (plugin {provider})")
                    continue
                reg = Registration(cls, provider)
                if name in clashed:  # a third: the name is already nobody's
                    self._report(provider, DuplicateWorktime(f"worktime {name!r} is registered by several plugins "
                                                             f"({skipped[name]})"), what=f"worktime {name!r}")
                    continue
                other = found.get(name)
                if other is None or other.cls is cls:
                    found[name] = reg
                    continue
                # Never run a job on whichever of two came first: say so, and keep only a built-in.
                first, second = (reg, other) if provider == BUILTIN_PROVIDER else (other, reg)
                builtin = first.provider == BUILTIN_PROVIDER
                error = DuplicateWorktime(
                    f"worktime {name!r} is registered twice: by {first.provider} ({first.ref}) and by "
                    f"{second.provider} ({second.ref}); " + (
                        f"{second.provider}'s is skipped: uninstall it, or rename its worktime" if builtin else
                        f"neither is used: uninstall one of them or restrict plugins with {ENV_LOAD_PLUGINS}"))
                self._report(second.provider, error, what=f"worktime {name!r}")
                skipped[name] = error.message
                if builtin:
                    found[name] = first
                else:
                    clashed.add(name)
                    del found[name]
        self._worktimes = found
        self._skipped = {name: why for name, why in skipped.items() if name not in found}
        self._report_hookless(hooked)

    def _report_hookless(self, hooked: set[str]) -> None:
        """Warn about plugins that cannot register anything: no ``register_worktimes`` hook, or a
        hook of another name (a typo: pluggy keeps such a hook uncalled, silently)."""
        unknown: dict[str, list[str]] = {}
        for hook_name, caller in vars(self.pm.hook).items():
            if isinstance(caller, pluggy.HookCaller) and not caller.has_spec():
                for impl in caller.get_hookimpls():
                    unknown.setdefault(impl.plugin_name, []).append(hook_name)
        for plugin_name in self._providers:
            if plugin_name in hooked:
                continue
            names = unknown.get(plugin_name)
            said = (f"its hook {', '.join(names)} is not one of dcp-worktimes' (register_worktimes)" if names
                    else "it has no @hookimpl register_worktimes function")
            self._report(self._who(plugin_name), f"{said}, so it registers no worktime")

    def _report(self, plugin: str, error: BaseException | str, what: str = "") -> None:
        """Record and warn that ``plugin`` (or only its ``what``, a worktime class) is skipped:
        ``error`` is the exception it raised, or our own words (a refused registration)."""
        said = error if isinstance(error, str) else str(error) if isinstance(error, DcpError) else \
            f"{type(error).__name__}: {error}"
        err = PluginError(plugin, said)
        if err not in self.errors:
            self.errors.append(err)
            skipped = f"{what} of plugin {plugin} skipped" if what else f"plugin {plugin} skipped"
            # Shown as "dcp-worktimes:0: RuntimeWarning: ...": the line of this file that loads
            # plugins (where warn() would point, with its source line under it) means nothing to users.
            warnings.warn_explicit(f"{skipped}: {err.error}", RuntimeWarning, PLUGINS_WARN_AS, 0, module=__name__)

    # -- lookups --------------------------------------------------------------------------------
    def worktimes(self) -> dict[str, Registration]:
        return dict(sorted(self._worktimes.items()))

    def get(self, name: str, version_range: str | None = None) -> Registration:
        reg = self._worktimes.get(name)
        if reg is None and name in self._skipped:
            raise WorktimeNotFound(f"worktime {name!r} is installed but was not loaded: {self._skipped[name]}")
        if reg is None:
            raise WorktimeNotFound(f"no worktime named {name!r} is installed; {self._installed_hint(name)}")
        if version_range is not None:
            parse_range(version_range)  # a bad range is the caller's error, said as such
            if max_satisfying([reg.version], version_range) is None:
                raise WorktimeNotFound(
                    f"worker does not support {name}@{version_range}: installed {name} is {reg.version}; "
                    f"ask for a range that includes {reg.version} or upgrade the package {reg.provider}"
                )
        return reg

    def _installed_hint(self, name: str) -> str:
        import difflib

        listing = ", ".join(f"{r.name} {r.version}" for r in self.worktimes().values()) or "none"
        hint = f"installed: {listing}."
        close = difflib.get_close_matches(name, list(self._worktimes), n=1, cutoff=0.6)
        if close:  # a typo: never suggest installing a package named after it
            return f"{hint} Did you mean {close[0]!r}?"
        if self._filtered:
            hint += (f" {ENV_LOAD_PLUGINS}={os.environ.get(ENV_LOAD_PLUGINS, '')!r} left out the plugins of "
                     f"{', '.join(self._filtered)}; add the one you need to it, or unset it.")
        # A name to look for, not a command to paste: anyone may publish a package of any name.
        return (f"{hint} To add it, install the package that provides it (worktime plugins are usually named "
                f"dcp-worktime-{name}; check who publishes it before you install it)")


@contextlib.contextmanager
def _stdout_to_stderr():
    """What a plugin prints while it loads goes to stderr: on stdout it would corrupt the output of
    whichever command loaded it (``--json``)."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _validate(cls: object) -> str | None:
    if not (isinstance(cls, type) and issubclass(cls, Worktime)):
        return f"register() expects a Worktime subclass, got {cls!r}"
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        return f"{cls.__qualname__}.name must be a lowercase name such as 'map-basic', got {name!r}"
    if not isinstance(cls.version, str):
        return f"{cls.__qualname__}.version must be a string such as '1.0.0', got {cls.version!r}"
    try:
        parse_version(cls.version)
    except ValueError as e:
        return f"{cls.__qualname__}.version: {e}"
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        return f"{cls.__qualname__} is abstract (implement {missing})"
    if not isinstance(cls.capabilities, dict) or not _plain(cls.capabilities):
        return (f"{cls.__qualname__}.capabilities must be a nested dict of booleans, strings, numbers "
                "and lists of those")
    if cls.options is not None and not (isinstance(cls.options, dict) and all(isinstance(k, str) for k in cls.options)):
        return f"{cls.__qualname__}.options must be None or a dict {{option name: meaning}}, got {cls.options!r:.60}"
    unknown = set(cls.enforces) - LIMIT_NAMES
    if unknown:
        return f"{cls.__qualname__}.enforces names unknown limits {sorted(unknown)}; known: {sorted(LIMIT_NAMES)}"
    if not (isinstance(cls.settings, Mapping) and all(isinstance(k, str) and _SETTING.match(k) and isinstance(v, str)
                                                       for k, v in cls.settings.items())):
        return (f"{cls.__qualname__}.settings must be a dict {{setting name: help}} with lower-case names such as "
                f"'ollama-host', got {cls.settings!r:.60}")
    taken = sorted(RESERVED_SETTINGS.intersection(cls.settings))
    if taken:
        return (f"{cls.__qualname__}.settings has {taken[0]!r}, the name of one of dcp-worker's own flags; name it "
                f"after the worktime instead (e.g. '{cls.name}-{taken[0]}')")
    odd = [k for k, values in cls.choices.items() if k not in cls.settings or not values
           or not all(isinstance(v, str) for v in values)] if isinstance(cls.choices, Mapping) else ["choices"]
    if odd:
        return (f"{cls.__qualname__}.choices must map names in settings to their values as strings, "
                f"such as {{'js-engine': ('v8', 'quickjs')}}; got {odd[0]!r}")
    bad = [k for k in cls.default_for if not (k in WORK_KINDS or (isinstance(k, str) and k.startswith(".")))]
    if bad:
        return (f"{cls.__qualname__}.default_for has {bad[0]!r}: use file suffixes such as '.js' or one of "
                f"{sorted(WORK_KINDS)}")
    if cls.default_range is not None:
        try:
            parse_range(cls.default_range)
        except ValueError as e:
            return f"{cls.__qualname__}.default_range: {e}"
    return _importable(cls)


def _importable(cls: type) -> str | None:
    """Evaluators import the class again by ``module:QualName``: a class they cannot find would
    fail every slice with ECRASH, so it is refused here instead."""
    module, qual = cls.__module__, cls.__qualname__
    if module == "__main__" or "<locals>" in qual:
        where = "in __main__" if module == "__main__" else "inside a function"
        return (f"{qual} is defined {where}, where an evaluator process cannot import it; define the worktime "
                "class at the top level of an importable module (your plugin package)")
    obj: Any = sys.modules.get(module)
    for part in qual.split("."):
        obj = getattr(obj, part, None)
    if obj is not cls:
        return f"{qual} cannot be imported again as {module}:{qual}; define it at the top level of its module"
    return None


def _plain(value: object) -> bool:
    """JSON-like: what the scheduler can store and match requirements against."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return isinstance(value, (bool, str, int, float))


_lock = threading.Lock()
_registry: Registry | None = None


def registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = Registry()
        return _registry


def reset_registry() -> None:
    """Forget loaded plugins (tests, or after installing a package at run time)."""
    global _registry
    with _lock:
        _registry = None


def get_worktimes() -> dict[str, Registration]:
    """Every installed worktime by name."""
    return registry().worktimes()


def get_worktime(name: str, version_range: str | None = None) -> Registration:
    """The worktime ``name`` whose version satisfies ``version_range``; else ``WorktimeNotFound``."""
    return registry().get(name, version_range)


def plugin_errors() -> list[PluginError]:
    return list(registry().errors)

