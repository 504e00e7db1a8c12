"""``dcp-worker``: run a worker, run one slice, list worktimes and jobs.

Library errors become CLI errors here and only here (``main``): one line, the code, what to do.
Sizes and durations take human units (``--memory-limit 256MB``, ``--wall-time 30s``).

Exit statuses (``EXIT_STATUSES``, also in ``dcp-worker --help`` and the README):

====  =====================================================================================
0     success (a serving worker stopped with Ctrl-C, SIGTERM or SIGHUP included)
1     the slice or the job failed: the work's error, a limit, unusable work (``EBADWORK``), a
      job that failed or was cancelled
2     usage or input error: a bad flag, value or ``--datum``, an unknown worktime, job or
      application, a scheduler URL or store that cannot be used, a worktime this machine cannot run
3     internal error: a bug in dcp-worktimes or a plugin (the traceback is printed; please report it)
130   interrupted (Ctrl-C) while running a command, or a serving worker's second Ctrl-C (quit at once)
====  =====================================================================================
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
import os
import reprlib
import signal
import stat
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import click

from .errors import DcpError, WorkError
from .limits import FLAGS, Limits, check_cores
from .values import KEY_RULE, KEY_TYPES, MAX_INT_DIGITS
from .scheduler import processes

#: ``dcp-worker``'s exit statuses (the module docstring says when each is used).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_STATUSES = {
    EXIT_OK: "success",
    EXIT_FAILED: "the slice or the job failed (work error, limit, EBADWORK, failed/cancelled job)",
    EXIT_USAGE: "usage or input error (flag, value, --datum; unknown worktime/job/application)",
    EXIT_INTERNAL: "internal error: a bug (traceback printed; please report it)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}
#: Error codes that mean "the job failed" (exit 1), not "the command was wrong" (exit 2).
_JOB_FAILURE_CODES = frozenset({"EBADWORK", "ECANCELLED", "EJOBFAILED"})

_LIMIT_HELP = {
    "wall_time": "Wall-time limit per slice, e.g. 30s, 2m (ESLICETOOSLOW).",
    "cpu_time": "CPU-time limit per slice, e.g. 10s (ECPULIMIT).",
    "memory": "Memory limit per slice, e.g. 256MB, 1GiB (EMEMORYLIMIT).",
    "output": "Result size limit per slice, e.g. 16MB (EOUTPUTLIMIT).",
    "progress_timeout": "No-progress watchdog, e.g. 30s; 'off' disables it for every job (ENOPROGRESS).",
}


def limit_options(f):
    for name, help_text in reversed(_LIMIT_HELP.items()):
        f = click.option(FLAGS[name], name, default=None, metavar="VALUE", help=help_text)(f)
    return f


#: Parameter-name prefix of the flags made from worktimes' ``settings`` (``--ollama-host``).
_SETTING_PREFIX = "setting__"


def _setting_params() -> list[click.Option]:
    """One ``--NAME VALUE`` flag per setting the installed worktimes declare (``Worktime.settings``),
    plus ``--trust-work NAME``. Built at start-up, so ``--help`` lists what is installed."""
    from .plugins import get_worktimes, setting_env

    helps: dict[str, list[str]] = {}
    for reg in get_worktimes().values():
        for name, text in reg.cls.settings.items():
            helps.setdefault(name, []).append(f"{reg.name}: {text}")
    params = [click.Option([f"--{name}", _SETTING_PREFIX + name.replace("-", "_")], default=None, metavar="VALUE",
                           envvar=setting_env(name), show_envvar=True, help="; ".join(texts))
              for name, texts in sorted(helps.items())]
    params.append(click.Option(["--trust-work", "trusted"], multiple=True, metavar="WORKTIME",
                               help="Run this worktime's work without the OS-level sandbox it asks for (only for "
                                    "work you trust: its author then has this user's rights on this machine)."))
    return params


def _worktime_config(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{worktime: {setting: value}}`` from the setting flags given (``Worktime.config``)."""
    from .plugins import get_worktime, get_worktimes

    given = {k[len(_SETTING_PREFIX):].replace("_", "-"): v for k, v in params.items()
             if k.startswith(_SETTING_PREFIX) and v is not None}
    config: dict[str, dict[str, Any]] = {}
    for reg in get_worktimes().values():
        mine = {name: value for name, value in given.items() if name in reg.cls.settings}
        if mine:
            config[reg.name] = mine
    for name in params.get("trusted") or ():
        get_worktime(name)  # a typo names the installed worktimes
        config.setdefault(name, {})["trusted"] = True
    return config


def _check_settings(config: dict[str, dict[str, Any]]) -> None:
    """A setting that makes its worktime unavailable (``--js-engine spidermonkey``) is a usage
    error, exit status 2: the worker would otherwise start without that worktime, saying so only
    in its log. A worktime unavailable without the setting too (its server is down, its engine
    missing) is left to the log, as at any other start."""
    from .plugins import get_worktime

    for name, settings in config.items():
        given = {k: v for k, v in settings.items() if k != "trusted"}
        if not given:
            continue
        reg = get_worktime(name)
        probe = reg.probe(settings)
        if not probe.available and reg.probe({k: v for k, v in settings.items() if k not in given}).available:
            # The probe's words name the flag and its environment variable: the value came from either.
            raise click.BadParameter(f"{name}: {probe.unavailable}")


def _with_settings(command: click.Command) -> click.Command:
    command.params.extend(_setting_params())
    return command


def _limits(base: Limits | None = None, **values: Any) -> Limits:
    given = {k: v for k, v in values.items() if v is not None}
    try:
        return Limits.parse(base, **given)
    except ValueError as e:
        text = str(e)
        for name, flag in FLAGS.items():  # "memory: ..." names the field; here the user wrote the flag
            if text.startswith(name + ":"):
                text = flag + text[len(name):]
        raise click.BadParameter(text) from None


def _to_json(value: Any) -> Any:
    """Results as JSON: bytes become {"$bytes": base64}; NaN/±Infinity {"$float": "nan" | "inf" | "-inf"}
    (tagged, so they cannot be mistaken for the strings "nan" and "inf"); an int too long to print
    in decimal (``MAX_INT_DIGITS``) {"$int": "0x..."} (hexadecimal is linear to write). A dict that
    looks like a tag (its one key is one of ``_TAGS``) is itself tagged, {"$object": {...}}, and one
    with a key that is not a string is {"$map": [[key, value], ...]} (``str(k)`` made ``1`` and
    ``"1"`` one key, dropping a value), so no value prints like another, and ``--datum`` reads each
    back as it was."""
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, _WrittenTo):
        return {"$file": str(value)}
    if isinstance(value, _Failed):
        return value.to_json()
    if type(value) is int and value.bit_length() > _MAX_INT_BITS:
        return {"$int": hex(value)}
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": str(value)}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        if any(type(k) is not str for k in value):
            return {"$map": [[_to_json(k), _to_json(v)] for k, v in value.items()]}
        out = {k: _to_json(v) for k, v in value.items()}
        return {"$object": out} if len(out) == 1 and next(iter(out)) in _TAGS else out
    return value


#: The keys of the tags above (and of ``--output``'s ``$file``): a dict made of one of them alone
#: is wrapped in a tag of its own.
_TAGS = frozenset({"$bytes", "$float", "$int", "$file", "$error", "$object", "$map"})


def _from_json(value: Any, what: str) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$object"}:  # a dict that looks like a tag, as itself
            inner = value["$object"]
            if not isinstance(inner, dict):
                raise click.BadParameter(f'{what}: {{"$object": ...}} must hold an object, got {reprlib.repr(inner)}')
            return {k: _from_json(v, what) for k, v in inner.items()}
        if set(value) == {"$map"}:  # a dict whose keys are not all strings
            pairs = value["$map"]
            if not (isinstance(pairs, list) and all(isinstance(p, list) and len(p) == 2 for p in pairs)):
                raise click.BadParameter(f'{what}: {{"$map": ...}} must hold a list of [key, value] pairs, '
                                         f'got {reprlib.repr(pairs)}')
            out: dict = {}
            for k, v in pairs:
                key = _from_json(k, what)
                if not isinstance(key, KEY_TYPES):
                    raise click.BadParameter(f'{what}: {{"$map": ...}} key {reprlib.repr(key)}: {KEY_RULE}')
                out[key] = _from_json(v, what)
            return out
        if set(value) == {"$float"}:
            if value["$float"] not in ("nan", "inf", "-inf"):
                raise click.BadParameter(f'{what}: {{"$float": ...}} must be "nan", "inf" or "-inf", got {value["$float"]!r}')
            return float(value["$float"])
        if set(value) == {"$int"}:
            try:
                return int(value["$int"], 16)
            except (TypeError, ValueError):
                raise click.BadParameter(f'{what}: {{"$int": ...}} must be a hexadecimal integer such as "0x1f", '
                                         f'got {reprlib.repr(value["$int"])}') from None
        if set(value) == {"$bytes"}:
            data = value["$bytes"]
            try:
                if not isinstance(data, str):
                    raise ValueError("not a string")
                return base64.b64decode(data, validate=True)
            except (ValueError, binascii.Error) as e:
                raise click.BadParameter(f'{what}: {{"$bytes": ...}} must hold base64 text ({e})') from None
        return {k: _from_json(v, what) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v, what) for v in value]
    return value


#: The most the CLI reads from one file or from standard input (``--work``, ``--module``,
#: ``--datum @FILE`` / ``-``, ...): a stray ``@/dev/urandom`` must not eat the machine's memory.
MAX_INPUT = 256 * 1024 * 1024


def _read_bounded(source: str | None, what: str) -> bytes:
    """The bytes of file ``source`` (``None``: standard input), at most ``MAX_INPUT`` of them;
    ``click.BadParameter`` for a bigger or unreadable one."""
    from .limits import format_size

    name = "standard input" if source is None else repr(source)
    try:
        if source is None:
            data = sys.stdin.buffer.read(MAX_INPUT + 1)
        else:
            with open(source, "rb") as f:
                data = f.read(MAX_INPUT + 1)
    except OSError as e:
        raise click.BadParameter(f"{what}: cannot read {name}: {e.strerror}") from None
    if len(data) > MAX_INPUT:
        raise click.BadParameter(f"{what}: {name} holds more than {format_size(MAX_INPUT)}, the most the CLI reads "
                                 "from one input; split the input or deploy it with the Compute API")
    return data


def _text(data: bytes, what: str, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise click.BadParameter(f"{what}: {source} is not UTF-8 text (byte {e.start}); JSON must be text") from None


def _parse_json(text: str, what: str) -> Any:
    """JSON from the text, or from a file (``@path``) or standard input (``-``) for big values.

    At most ``MAX_INPUT`` bytes, nested at most ``values.MAX_DEPTH`` levels deep."""
    from .values import MAX_DEPTH, MAX_INT_DIGITS, UnserializableValue, pack_decodable

    if text == "-":
        text = _text(_read_bounded(None, what), what, "standard input")
        if not text.strip():
            raise click.BadParameter(f"{what} -: standard input was empty; pipe the JSON in, e.g. "
                                     f"echo 42 | dcp-worker slice ... {what} -")
    elif text.startswith("@"):
        text = _text(_read_bounded(text[1:], what), what, repr(text[1:]))
    try:
        value = _from_json(json.loads(text), what)
    except RecursionError:
        raise click.BadParameter(f"{what}: the JSON is nested more than {MAX_DEPTH} levels deep") from None
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"{what} must be JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                                 "quote strings: '\"text\"'; @FILE reads a file, - reads standard input") from None
    except ValueError as e:
        if "int_max_str_digits" not in str(e) and "Exceeds the limit" not in str(e):
            raise
        raise click.BadParameter(f"{what}: an integer of more than {MAX_INT_DIGITS:,} decimal digits; write it as "
                                 '{"$int": "0x..."} (hexadecimal digits)') from None
    try:
        pack_decodable(value)  # what cannot cross the sandbox boundary is refused here, not mid-run
    except UnserializableValue as e:
        raise click.BadParameter(f"{what}: {e}") from None
    return value


_WORK_SUFFIXES = (".js", ".mjs", ".cjs", ".wasm", ".wat", ".py", ".json", ".blend")


def _read_work(work: str, what: str | None = None) -> str | bytes:
    """A path to an existing file is read (bytes for binary files); anything else is the work itself."""
    path = Path(work)
    try:
        is_file = len(work) < 4096 and "\n" not in work and path.is_file()
    except OSError:
        is_file = False
    if not is_file:
        looks_like_path = work and not any(c in work for c in " \t(){};=") and (
            work.endswith(_WORK_SUFFIXES) or work.startswith(("/", "./", "../", "~")))
        if looks_like_path:
            what = "a directory, not a file" if os.path.isdir(work) else "there is no such file"
            raise click.BadParameter(f"--work {work!r} looks like a file path, but {what}")
        return work
    data = _read_bounded(work, "--work" if what is None else what)
    if data[:4] == b"\0asm":  # a WebAssembly binary, even one whose bytes all happen to be UTF-8
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Limits are the most a job may use on this worker (defaults: wall 1h, memory 2GiB, "
                    "output 64MiB, progress timeout 30s, CPU unlimited); a job may ask for less, and either "
                    "side may turn the no-progress watchdog off.\n\n"
                    "\b\nExit statuses:\n" + "\n".join(f"  {code:<4} {text}" for code, text in EXIT_STATUSES.items()))
@click.option("--worktime", "-w", "worktimes", multiple=True, help="Worktime(s) to offer (default: all installed).")
@click.option("--cores", "--nworkers", type=click.IntRange(min=1), default=None, help="Evaluator processes (default: one per CPU).")
@click.option("--scheduler", "scheduler_url", default=None, envvar="DCP_SCHEDULER",
              help="Scheduler URL, e.g. sqlite:///path/jobs.db (default: the per-user embedded store).")
@click.option("--capability", "capabilities", multiple=True, metavar="PATH=VALUE",
              help="Extra capability, e.g. machine.gpu=false (matched against job requirements).")
@click.option("--category", "categories", multiple=True, metavar="NAME",
              help="Serve only jobs of applications in this category, e.g. video (repeatable; DCP's hashTags). "
                   "Default: every job.")
@click.option("--until-idle", is_flag=True, help="Exit once no job has slices left for this worker.")
@click.option("-v", "--verbose", is_flag=True, help="A log line for every slice, not only for jobs and new kinds of failure.")
@click.option("-q", "--quiet", is_flag=True, help="Log the start line, failed slices and the final summary only (no job lines, no status line).")
@click.option("--job", "job", default=None, hidden=True, help="Serve only this job, until it ends (exec()'s helpers).")
@click.option("--helper", is_flag=True, hidden=True, help="A helper process of another worker: die with it.")
@limit_options
@click.version_option(package_name="dcp-worktimes")
@click.pass_context
def cli(ctx: click.Context, worktimes, cores, scheduler_url, capabilities, categories, until_idle, verbose, quiet, job,
        helper, **limits) -> None:
    """Run a dcp-worktimes worker: take slices from the scheduler and run them in sandboxed worktimes.

    \b
    dcp-worker --worktime map-basic --cores 2 --memory-limit 1GiB
    dcp-worker slice --worktime echo --work '' --datum '[1, 2]'
    dcp-worker worktimes --json
    """
    if ctx.invoked_subcommand is not None:
        given = [n for n in ("worktimes", "cores", "capabilities", "categories", "until_idle", "verbose", "quiet")
                 if ctx.params.get(n)]
        # A setting taken from its environment variable was not given here: the subcommand reads it too.
        given += [n.removeprefix(_SETTING_PREFIX) for n, v in limits.items() if v not in (None, ())
                  and ctx.get_parameter_source(n) is not click.core.ParameterSource.ENVIRONMENT]
        if given:
            flags = ", ".join("--" + n.replace("_", "-") for n in given)
            raise click.UsageError(f"{flags} belong to the worker itself, not to '{ctx.invoked_subcommand}'; "
                                   f"put them after the subcommand if it has them (dcp-worker {ctx.invoked_subcommand} --help)")
        return
    from .scheduler.worker import STOP_GRACE, Worker
    from .worker_log import WorkerLog

    if verbose and quiet:
        raise click.UsageError("-v/--verbose and -q/--quiet contradict each other; give one")
    try:
        check_cores(cores, "--cores")
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    caps: dict[str, Any] = {}
    given: dict[str, tuple[str, Any]] = {}  # each capability's dotted path -> (the flag that set it, its value)
    for item in capabilities:
        key, sep, raw = item.partition("=")
        parts = key.split(".")
        if not sep or not key or not all(p.strip() for p in parts):
            raise click.BadParameter(f"capability {item!r} must look like machine.gpu=true (names joined by dots)",
                                     param_hint="--capability")
        # machine.gpu=true and machine.gpu.vram=8 cannot both hold: a value is no group of values
        value = _capability_value(item, raw)
        for other, (earlier, earlier_value) in given.items():
            if (key + ".").startswith(other + ".") != (other + ".").startswith(key + ".") or (
                    other == key and earlier_value != value):
                shorter = min(other, key, key=len)
                raise click.BadParameter(f"capabilities {earlier!r} and {item!r} disagree: {shorter} cannot be both "
                                         "a value and a group of values" if other != key else
                                         f"capabilities {earlier!r} and {item!r} give {key} two values",
                                         param_hint="--capability")
        given[key] = (item, value)
        node = caps
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    # A worker serves strangers: a job may ask for less than the worker's limits, never for more,
    # and "unlimited" in a job means "the worker's maximum". The maxima default to Limits();
    # the worker's owner raises them with the flags ('off' for none).
    config = _worktime_config(limits)
    _check_settings(config)
    limits = {k: v for k, v in limits.items() if not k.startswith(_SETTING_PREFIX) and k != "trusted"}
    worker_limits = _limits(None, **limits)
    from .scheduler.base import default_store_path

    if _store_path(scheduler_url) == ":memory:" and not job:
        # Each process opening it gets a store of its own: no deployer, nor this worker's helpers, could reach it.
        raise click.BadParameter("an in-memory store (sqlite://:memory:) lives in one process: no deployer can give "
                                 "this worker jobs there. Serve a file (sqlite:///path/jobs.db) or a Redis URL, the "
                                 "same one the deployers use", param_hint="--scheduler")
    unserved = sorted({n for n, s in config.items() if s.get("trusted")} - set(worktimes)) if worktimes else []
    if unserved and not helper:
        click.echo(f"dcp-worker: --trust-work {', '.join(unserved)} does nothing: this worker serves only "
                   f"{', '.join(worktimes)} (add --worktime {unserved[0]} to serve it)", err=True)
    target = os.path.abspath(_store_path(scheduler_url))
    if helper:
        processes.die_with_parent()
    elif not _store_exists(scheduler_url) and (os.path.isdir(os.path.dirname(target)) or target == default_store_path()):
        # A typo in --scheduler would otherwise wait forever on an empty store nobody deploys to.
        # (A store whose folder does not exist is refused by open_scheduler, saying so.)
        click.echo(f"dcp-worker: no job store at {_store_path(scheduler_url)} yet; creating an empty one (deployers must use the same "
                   "--scheduler / DCP_SCHEDULER)", err=True)
    scheduler = _open_to_serve(scheduler_url, say=not helper, wait=not until_idle)
    if scheduler is None:
        return
    split = [cores or os.cpu_count() or 1] if helper else processes.shares(cores or os.cpu_count() or 1)
    # A helper process logs nothing: its slices are in the store, and its parent speaks for the worker.
    log = None if helper else WorkerLog(verbosity=-1 if quiet else 1 if verbose else 0)
    worker = Worker(scheduler, list(worktimes) or None, split[0], capabilities=caps, limits=worker_limits, config=config,
                    categories=list(categories) or None, events=log, jobs=[job] if job else None)
    stop = threading.Event()
    scheduler.give_up_after(stop, STOP_GRACE)  # stopped while the store does not answer: seconds, not 10 min
    if job:
        processes.stop_when_over(scheduler, job, stop)
    helpers = processes.Helpers(scheduler.url, split[1:], job=job, worktimes=list(worktimes), config=config,
                                # what this process read from the flags, not their text: one reading for all
                                limits={k: getattr(worker_limits, k) for k, v in limits.items() if v is not None},
                                capabilities=list(capabilities),
                                categories=list(categories), until_idle=until_idle)
    try:
        with processes.stopped_by(stop, signal.SIGINT, signal.SIGTERM, signal.SIGHUP,
                                  on_signal=None if helper else _on_stop_signal), helpers:
            if log is not None:  # "serving" once a signal stops it the usual way
                log.start(worker, _store_url(scheduler_url), helpers=len(helpers.argvs), helper_cores=sum(split[1:]))
            worker.run(stop, until_idle=until_idle)
    finally:
        scheduler.close()
        if log is not None:
            log.stop()


def _flatten(caps: Any, prefix: str = "") -> list[str]:
    if not isinstance(caps, dict):
        return [f"{prefix}={json.dumps(caps)}"] if caps is not True else [prefix]
    out: list[str] = []
    for k, v in caps.items():
        out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    return out


@cli.command("worktimes")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def worktimes_cmd(as_json: bool, **settings: Any) -> None:
    """List installed worktimes: name, version, capabilities (with the settings given) and package;
    a worktime that cannot run on this machine says why."""
    from .plugins import get_worktimes, plugin_errors

    config = _worktime_config(settings)
    rows = [reg.describe(config.get(name)) for name, reg in get_worktimes().items()]
    errors = [{"plugin": e.plugin, "error": e.error} for e in plugin_errors()]
    if as_json:
        click.echo(json.dumps({"worktimes": rows, "plugin_errors": errors}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table("name", "version", "package", "capabilities", box=None)
    for r in rows:
        caps = " ".join(_flatten(r["capabilities"])) or "-"
        table.add_row(r["name"], r["version"], r["provider"],
                      caps if r["available"] else Text(f"not available here: {r['unavailable']}", style="yellow"))
    _print_table(table)
    console = Console()
    for e in errors:
        if not any(e["error"] in shown for shown in _SHOWN_WARNINGS):  # not said at start-up already
            console.print(Text(f"plugin {e['plugin']} skipped: {e['error']}", style="yellow"))


@cli.command("slice")
@click.option("--worktime", "-w", required=True, help="Worktime name, e.g. map-basic, wasi, python, echo.")
@click.option("--work", default="", help="The work: a file path, or the work text itself (none for worktimes "
                                       "that take none, such as echo).")
@click.option("--datum", default="null", show_default=True,
              help="The slice's input as JSON ({\"$bytes\": base64} for bytes); @FILE reads a file, - reads stdin.")
@click.option("--arg", "args", multiple=True, help="An extra work argument, as JSON (repeatable).")
@click.option("--module", "modules", multiple=True, metavar="NAME=PATH", help="A module the work may require/import.")
@click.option("--option", "options", multiple=True, metavar="KEY=JSON", help="A worktime option, e.g. strict=true.")
@limit_options
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as a JSON object.")
@click.option("--output", "-o", "output_file", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the result's bytes to this file: a bytes result, or the one bytes field of a dict "
                   "result (a rendered frame's image); the rest of a dict is printed as JSON.")
def slice_cmd(worktime, work, datum, args, modules, options, as_json, output_file, **limits) -> None:
    """Run one slice in a sandboxed evaluator and print its result (exit status 1 if it fails)."""
    from .plugins import get_worktime
    from .runner import run_slice
    from .worktime import JobSpec

    stdin = [flag for flag, value in (("--datum", datum), *(("--arg", a) for a in args)) if value == "-"]
    if len(stdin) > 1:  # the second would read an empty, already-read standard input
        raise click.UsageError(f"{' and '.join(stdin)} both read standard input (-); only one can: put the other "
                               "in a file (@FILE) or on the command line")
    config = _worktime_config(limits).get(worktime, {})
    limits = {k: v for k, v in limits.items() if not k.startswith(_SETTING_PREFIX) and k != "trusted"}
    reg = get_worktime(worktime)
    probe = reg.probe(config)
    if not probe.available:
        raise DcpError(f"worktime {worktime} cannot run on this machine: {probe.unavailable}", code="ENOWORKTIME")
    note = reg.cold_start()
    mods: dict[str, str | bytes] = {}
    for m in modules:
        name, sep, path = m.partition("=")
        if not sep or not name.strip() or not Path(path).is_file():
            raise click.BadParameter(f"--module {m!r}: write NAME=PATH, a module name and an existing file")
        mods[name] = _read_work(path, f"--module {name}")
    opts: dict[str, Any] = {}
    for o in options:
        key, sep, raw = o.partition("=")
        if not sep:
            raise click.BadParameter(f"--option {o!r}: write KEY=JSON, e.g. strict=true")
        opts[key] = _parse_json(raw, f"--option {key}")
    job = JobSpec(id="cli-slice", worktime=worktime, work=_read_work(work),
                  arguments=[_parse_json(a, "--arg") for a in args], modules=mods, options=opts,
                  limits=_limits(None, **limits))
    try:
        reg.cls.check_options(job.options)  # a misspelt --option is the command line's mistake (exit 2)
    except WorkError as e:
        raise click.BadParameter(e.message, param_hint="--option") from None

    def on_event(kind: str, number: int, payload: Any) -> None:
        if kind == "console":
            same = f" (x{payload['same']})" if payload.get("same", 1) > 1 else ""
            click.echo(f"[console.{payload['level']}] {payload['message']}{same}", err=True)
        elif kind == "emit":
            click.echo(f"[emit {payload['name']}] {json.dumps(_to_json(payload['value']))}", err=True)

    value = _parse_json(datum, "--datum")
    if output_file is not None:  # before the slice runs (a render may take minutes), not after
        folder = os.path.dirname(os.path.abspath(output_file))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
            why = "does not exist" if not os.path.isdir(folder) else "is not writable"
            raise click.BadParameter(f"the folder {folder} {why}; create it or write elsewhere", param_hint="--output")
    if note:  # said once every argument is read: a bad one fails at once, not after the wait
        click.echo(f"dcp-worker: {worktime}: {note}", err=True)
    out = run_slice(job, value, on_event, config=config)
    result = out.value if out.ok else None
    unwritten = False
    if out.ok and output_file is not None:  # not "output": that is --output-limit's (limit_options)
        try:
            result = _write_output(result, output_file)
        except (click.BadParameter, OSError) as e:  # the slice ran: its result is printed, not lost
            unwritten = True
            why = e.format_message() if isinstance(e, click.BadParameter) else f"{e.strerror}: {output_file}"
            click.echo(f"dcp-worker: --output: {why}; the result is printed instead", err=True)
    if as_json:
        body: dict[str, Any] = {"ok": out.ok, "wall_time": out.wall_time, "cpu_time": out.cpu_time,
                                "bytes_in": out.bytes_in, "bytes_out": out.bytes_out}
        if out.ok:
            body["result"] = _to_json(result)
        else:
            body["error"] = out.error.to_dict()  # type: ignore[union-attr]
        click.echo(json.dumps(body))
    elif out.ok:
        click.echo(json.dumps(_to_json(result)))
    else:
        err = out.error
        click.echo(f"{err.code}: {err.message}", err=True)  # type: ignore[union-attr]
        if err.stack:  # type: ignore[union-attr]
            click.echo(err.stack, err=True)  # type: ignore[union-attr]
    if not out.ok:
        sys.exit(EXIT_FAILED)
    if unwritten:
        sys.exit(EXIT_USAGE)


class _Failed:
    """A failed slice in ``resume``'s output: printed as ``{"$error": {"code": ..., "message": ...}}``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def to_json(self) -> dict:
        return {"$error": {"code": str(getattr(self.error, "code", "") or type(self.error).__name__),
                           "message": str(getattr(self.error, "message", None) or self.error)}}


class _WrittenTo(str):
    """Where ``--output`` wrote bytes: printed as the tag ``{"$file": path}`` (``_to_json``)."""


def _write_output(value: Any, path: str) -> Any:
    """``--output``: write a bytes result, or the single bytes field of a dict result, to ``path``;
    return what is left to print: ``{"$file": path}`` in place of the bytes written (``_WrittenTo``)."""
    if isinstance(value, bytes):
        field, data, rest = None, value, _WrittenTo(path)
    else:
        fields = [k for k, v in value.items() if isinstance(v, bytes)] if isinstance(value, dict) else []
        if len(fields) != 1:
            what = (f"a dict with {len(fields)} bytes fields ({', '.join(map(str, fields))})" if fields
                    else f"a {type(value).__name__} with no bytes")
            raise click.BadParameter(f"it writes a bytes result, or the one bytes field of a dict result; this result "
                                     f"is {what}: leave out --output to print it as JSON", param_hint="--output")
        field, data = fields[0], value[fields[0]]
        rest = {**value, field: _WrittenTo(path)}
    Path(path).write_bytes(data)
    click.echo(f"wrote {len(data)} bytes{f' ({field})' if field else ''} to {path}", err=True)
    return rest


@cli.command("warmup")
@click.option("--worktime", "-w", "names", multiple=True, help="Worktime(s) to warm up (default: all installed).")
def warmup_cmd(names) -> None:
    """Compile and cache what worktimes need before their first slice (e.g. the python runtime)."""
    from rich.console import Console

    from .plugins import get_worktime, get_worktimes

    regs = [get_worktime(n) for n in names] if names else list(get_worktimes().values())
    console = Console(stderr=True, highlight=False)
    for reg in regs:
        started = time.monotonic()
        if console.is_terminal:
            # A spinner and the elapsed time: an engine compile reports nothing until it ends, so a
            # bar would be a guess (the python runtime's sat at 99 % for 90 s).
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                          transient=True) as bar:
                task = bar.add_task(f"{reg.name}: warming up", total=None)
                reg.cls.warmup(lambda message, _t=task, _r=reg: bar.update(_t, description=f"{_r.name}: {message}"))
        else:
            click.echo(f"{reg.name}: warming up ...", err=True)
            reg.cls.warmup(lambda message, _r=reg: click.echo(f"  {_r.name}: {message}", err=True))
        click.echo(f"{reg.name}: ready ({time.monotonic() - started:.1f} s)", err=True)


_SCHEDULER_OPTION = click.option("--scheduler", "scheduler_url", default=None, envvar="DCP_SCHEDULER",
                                 help="Scheduler URL (default: the per-user embedded store).")


def _scheduler_url(own: str | None) -> str | None:
    """The store a subcommand acts on: its own --scheduler, else the one given before the command
    name, else $DCP_SCHEDULER (both options read it: the environment must not beat a flag)."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    if ctx.get_parameter_source("scheduler_url") is ParameterSource.COMMANDLINE or ctx.parent is None:
        return own
    return ctx.parent.params.get("scheduler_url") or own


#: Characters of a job's status reason that ``dcp-worker jobs`` shows in its table.
REASON_SHOWN = 200


@cli.command("jobs")
@_SCHEDULER_OPTION
@click.option("--delete", "delete", multiple=True, metavar="JOB_ID", help="Forget a finished job and its stored data.")
@click.option("--force", is_flag=True, help="With --delete: also cancel and delete jobs that are still running.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def jobs_cmd(scheduler_url: str | None, delete: tuple[str, ...], force: bool, as_json: bool) -> None:
    """List the scheduler's jobs with their status (or delete some)."""
    from .scheduler import open_scheduler

    if force and not delete:
        raise click.UsageError("--force only goes with --delete JOB_ID (it deletes running jobs too)")
    url = _scheduler_url(scheduler_url)
    if not _store_exists(url):
        if url:  # a typo in --scheduler must not look like "all my jobs are gone", nor create a store
            raise click.UsageError(f"no job store at {_store_path(url)}; check --scheduler / DCP_SCHEDULER")
        if delete:
            raise click.UsageError(f"no job store at {_store_path(url)} yet, so no job {delete[0]!r} to delete")
        click.echo("[]" if as_json else "no jobs yet (nothing was deployed to the per-user store)")
        return
    # Listing only reads: a store on a full or read-only disk can still be listed.
    with open_scheduler(url, read_only=not delete) as sched:
        from .scheduler.base import FINAL_STATES

        for job_id in delete:
            job_id = _full_job_id(sched, job_id)
            st = sched.status(job_id)  # an unknown id is an error that says so, not a silent no-op
            if st["status"] not in FINAL_STATES and not force:
                raise click.UsageError(
                    f"job {job_id} is still {st['status']} ({st['computed']} of {st['total'] or '?'} slices computed); "
                    "its deployer would fail. Pass --force to cancel and delete it")
            sched.delete_job(job_id)
            click.echo(f"deleted job {job_id}", err=True)
        if delete:
            return
        rows = sched.job_summaries()
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    from rich.text import Text

    table = Table("worktime", "status", "computed", "failed", "total", "name", box=None)
    table.add_column("id", no_wrap=True, overflow="fold")  # the full id is what compute.resume needs
    from .runner.bounds import cut

    for r in rows:
        # A reason may quote a whole store error: its head in the table (--json has all of it)
        cells = (r["worktime"], r["status"] + (f" ({cut(str(r['reason']), REASON_SHOWN)})" if r.get("reason") else ""),
                 str(r["computed"]), str(r["failed"]), str(r["total"] if r["total"] is not None else "?"),
                 str((r.get("public") or {}).get("name", "")), r["id"])
        # Job names come from strangers: Text (never markup) with control characters escaped.
        table.add_row(*(Text(_printable(c)) for c in cells))
    _print_table(table)


@cli.command("applications")
@_SCHEDULER_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def applications_cmd(scheduler_url: str | None, as_json: bool) -> None:
    """List published applications: name, version, categories (what --category serves) and functions."""
    from .scheduler import open_scheduler

    url = _scheduler_url(scheduler_url)
    if not _store_exists(url):
        if url:
            raise click.UsageError(f"no job store at {_store_path(url)}; check --scheduler / DCP_SCHEDULER")
        click.echo("[]" if as_json else "no applications yet (nothing was published to the per-user store)")
        return
    with open_scheduler(url) as sched:
        apps = sched.list_applications()
    rows = [{"name": a.name, "version": a.version, "categories": a.categories, "functions": sorted(a.functions),
             "description": a.public.get("description")} for a in apps]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table("name", "version", "categories", "functions", "description", box=None)
    for r in rows:  # published by strangers: Text, never markup
        table.add_row(*(Text(_printable(str(c))) for c in (r["name"], r["version"], ", ".join(r["categories"]) or "-",
                                                           ", ".join(r["functions"]), r["description"] or "")))
    _print_table(table)


@cli.command("resume")
@click.argument("job_id")
@_SCHEDULER_OPTION
@click.option("--cores", type=click.IntRange(min=1), default=None, help="Evaluators to run here (default: all cores).")
@click.option("--errors", type=click.Choice(["raise", "return"]), default="raise", show_default=True,
              help="'return' prints failed slices in place instead of failing.")
def resume_cmd(job_id: str, scheduler_url: str | None, cores: int | None, errors: str) -> None:
    """Finish a deployed job on this machine and print its results as JSON (completed slices are not rerun)."""
    from . import compute

    url = _scheduler_url(scheduler_url)
    if not _store_exists(url):
        raise click.UsageError(f"no job store at {_store_path(url)}, so no job {job_id!r}; check --scheduler / DCP_SCHEDULER")
    from .scheduler import open_scheduler

    with open_scheduler(url, read_only=True) as sched:
        job_id = _full_job_id(sched, job_id)
    try:
        results = compute.resume(job_id, scheduler=url).exec(cores=cores, errors=errors)
    except compute.JobFailed as e:
        first, _, _ = str(e).rpartition("\nThe completed results")
        raise JobFailedExit(f"{first}\nRun with --errors return to print every result, with the failed "
                                   "slices as {\"$error\": {\"code\": ..., \"message\": ...}} in place") from None
    except compute.JobCancelled as e:
        if errors == "return" and e.results is not None:  # what completed, the rest as ECANCELLED tags
            _print_results(e.results)
        raise
    _print_results(results)  # with --errors return, failed slices in place (exit 0, as exec(errors="return") returns)


def _print_results(results: Any) -> None:
    """A job's results as JSON on stdout; a failed slice is a tag (a work may well return
    ``{"error": ...}`` itself)."""
    click.echo(json.dumps(_to_json([_Failed(v) if isinstance(v, BaseException) else v for v in results])))


class JobFailedExit(click.ClickException):
    """A job that failed, said as the CLI says it (exit status 1, not 2)."""

    exit_code = EXIT_FAILED


_BOOLEAN_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


#: Longest wait between two tries to reach the store at a serving worker's start.
START_RETRY_MAX = 30.0


def _open_to_serve(url: str | None, say: bool = True, wait: bool = True) -> Any:
    """The store a serving worker takes its jobs from, waited for while its Redis cannot be
    reached (not started yet, restarting): a fleet's workers may start before their Redis does,
    and a worker that gives up at once would then need someone to restart it. Tries again at 1 s
    doubling to ``START_RETRY_MAX``, saying so once and when the store answers. Anything else
    (bad credentials, a wrong URL, a SQLite file that is read-only or on a full disk), and
    anything with ``wait=False`` (``--until-idle``: a script wants its answer), ends the worker at
    once. Returns ``None`` when a stop signal came meanwhile."""
    from .scheduler import open_scheduler
    from .scheduler.base import StoreUnavailable, default_url
    from .scheduler.urls import parse_url

    if not wait or parse_url(url or default_url())[0] != "redis":
        return open_scheduler(url)
    stop, pause, since = threading.Event(), 1.0, None
    with processes.stopped_by(stop, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        while True:
            try:
                scheduler = open_scheduler(url)
            except StoreUnavailable as e:
                if since is None:
                    since = time.monotonic()
                    if say:
                        click.echo(f"dcp-worker: {e.message}; waiting for it (tries again every {START_RETRY_MAX:.0f} s "
                                   "at most; Ctrl-C stops)", err=True)
            else:
                if since is not None and say:
                    click.echo(f"dcp-worker: the store answers now (after {time.monotonic() - since:.0f} s)", err=True)
                return scheduler
            if stop.wait(pause):
                if say:
                    click.echo("dcp-worker: stopped before the store could be reached", err=True)
                return None
            pause = min(pause * 2, START_RETRY_MAX)


def _on_stop_signal(again: bool, signum: int) -> None:
    """Ctrl-C, SIGTERM or SIGHUP (its terminal closed) while serving: stop, handing the slices
    back; a second one quits at once (a store that does not answer could hold the first for as
    long as its ``retry``)."""
    if signum == signal.SIGHUP:
        # The terminal is gone: every write to it would fail (EIO) and end the worker with a
        # traceback before it hands its slices back. Its output goes nowhere from now on.
        null = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            # A terminal is a character device (isatty fails on one that hung up); a log file or
            # a pipe still takes the worker's last lines.
            if stat.S_ISCHR(os.fstat(fd).st_mode):
                os.dup2(null, fd)
        os.close(null)
    log = logging.getLogger("dcp_worktimes.cli")
    if not again:
        log.warning("stopping: finishing the slices' reports and handing back the rest (Ctrl-C again to quit at once)")
        return
    log.warning("quitting now: the slices this worker held run again elsewhere once their leases expire")
    logging.shutdown()
    os._exit(EXIT_INTERRUPTED)


def _capability_value(item: str, raw: str) -> Any:
    """``machine.gpu=no`` is ``False`` (a non-empty string would count as having one); numbers
    and JSON strings are read as JSON; anything else stays a string (``machine.arch=x86_64``)."""
    text = raw.strip()
    if not text:
        raise click.BadParameter(f"capability {item!r} has no value; write e.g. machine.gpu=true or machine.gpu=false")
    if text.lower() in _BOOLEAN_WORDS:
        return _BOOLEAN_WORDS[text.lower()]
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, (dict, list)) or value is None:
        raise click.BadParameter(f"capability {item!r}: give one value (true/false, a number or a word), not {text}")
    return value


def _store_url(url: str | None) -> str:
    """The scheduler as a URL a user can paste into --scheduler / DCP_SCHEDULER."""
    from .scheduler.base import default_url
    from .scheduler.urls import parse_url

    from .scheduler.urls import redact_url

    kind, target = parse_url(url or default_url())
    if kind == "redis":
        return redact_url(target)  # never the password
    return f"{kind}://{target}" if target == ":memory:" else f"{kind}:///{target.lstrip('/')}"


def _print_table(table: Any) -> None:
    """A rich table on stdout. Piped into grep or a file there is no terminal width to fit: no
    cell is cut, and no line carries the padding of the widest row."""
    from rich.console import Console

    if sys.stdout.isatty():
        Console().print(table)
        return
    out = io.StringIO()
    Console(file=out, width=100_000).print(table)
    for line in out.getvalue().splitlines():
        click.echo(line.rstrip())


#: The fewest characters of a job id that stand for it (the worker's log shows this many).
SHORT_ID = 8


def _full_job_id(sched: Any, given: str) -> str:
    """``given``, or the one stored job id it begins, given at least ``SHORT_ID`` characters; an
    unknown or ambiguous id is left for the command to report (ambiguous: naming the candidates)."""
    from .scheduler.base import UnknownJob

    given = given.strip()
    try:
        sched.status(given)
        return given
    except UnknownJob:
        pass
    if len(given) < SHORT_ID:  # `jobs --delete a --force` must not delete whichever job begins with "a"
        return given
    matches = [row["id"] for row in sched.job_summaries() if row["id"].startswith(given)]
    if len(matches) > 1:
        raise click.UsageError(f"job id {given!r} begins {len(matches)} jobs ({', '.join(matches[:5])}"
                               f"{', ...' if len(matches) > 5 else ''}); give more of it")
    return matches[0] if matches else given


def _store_path(url: str | None) -> str:
    from .scheduler.base import default_url
    from .scheduler.urls import parse_url

    return parse_url(url or default_url())[1]


def _store_exists(url: str | None) -> bool:
    """Whether the job store is there (read-only commands must not create one by accident)."""
    from .scheduler.base import default_url
    from .scheduler.urls import parse_url

    kind, target = parse_url(url or default_url())
    return kind != "sqlite" or target == ":memory:" or os.path.exists(target)


def _printable(text: str) -> str:
    """``text`` with control characters (terminal escapes, newlines) shown as escapes."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


#: Ints longer than that (in bits, to spare a conversion to find out) print as {"$int": "0x..."}.
_MAX_INT_BITS = int(MAX_INT_DIGITS * math.log2(10)) - 4


#: The registry's warnings this process printed (``dcp-worker worktimes`` does not list them again).
_SHOWN_WARNINGS: list[str] = []


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
                  line: str | None = None, _default: Any = warnings.showwarning) -> None:
    """The package's own warnings (a plugin skipped) as one ``dcp-worker:`` line, without the
    file, line and source line Python adds: those point into the registry, not the plugin."""
    from .plugins import PLUGINS_WARN_AS

    text = str(message)
    if not (issubclass(category, RuntimeWarning) and filename == PLUGINS_WARN_AS):
        _default(message, category, filename, lineno, file, line)
        return
    _SHOWN_WARNINGS.append(text)
    click.echo("dcp-worker: " + text, err=True)


def main() -> None:
    from .values import allow_big_ints, allow_depth

    warnings.showwarning = _show_warning

    allow_big_ints()
    # Values nest up to MAX_DEPTH levels (values.py); reading and printing them as JSON takes a few
    # Python frames per level.
    allow_depth()
    for command in (cli, slice_cmd, worktimes_cmd):
        _with_settings(command)
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.exceptions.Exit as e:  # --help, --version
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(EXIT_FAILED if isinstance(e, JobFailedExit) else EXIT_USAGE)
    except DcpError as e:
        click.echo(f"dcp-worker: {e}", err=True)
        sys.exit(EXIT_FAILED if str(getattr(e.code, "value", e.code)) in _JOB_FAILURE_CODES else EXIT_USAGE)
    except TimeoutError as e:
        click.echo(f"dcp-worker: {e}", err=True)
        sys.exit(EXIT_FAILED)
    except (ValueError, OSError) as e:
        click.echo(f"dcp-worker: {e}", err=True)
        sys.exit(EXIT_USAGE)
    except Exception:  # noqa: BLE001 - a bug: say so, with the traceback, and a status of its own
        import traceback

        traceback.print_exc()
        click.echo("dcp-worker: internal error (a bug in dcp-worktimes or a plugin); please report it with the "
                   "traceback above", err=True)
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    main()
