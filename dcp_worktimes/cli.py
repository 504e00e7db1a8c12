"""``dcp-worker``: run a worker, run one slice, list worktimes and jobs.

Library errors become CLI errors here and only here (``main``): one line, the code, what to do.
Sizes and durations take human units (``--memory-limit 256MB``, ``--wall-time 30s``).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from .errors import DcpError
from .limits import FLAGS, Limits, check_cores
from .scheduler import processes

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
    from .plugins import get_worktimes

    helps: dict[str, list[str]] = {}
    for reg in get_worktimes().values():
        for name, text in reg.cls.settings.items():
            helps.setdefault(name, []).append(f"{reg.name}: {text}")
    params = [click.Option([f"--{name}", _SETTING_PREFIX + name.replace("-", "_")], default=None, metavar="VALUE",
                           help="; ".join(texts)) for name, texts in sorted(helps.items())]
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


def _with_settings(command: click.Command) -> click.Command:
    command.params.extend(_setting_params())
    return command


def _limits(base: Limits | None = None, **values: Any) -> Limits:
    given = {k: v for k, v in values.items() if v is not None}
    try:
        return Limits.parse(base, **given)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _to_json(value: Any) -> Any:
    """Results as JSON: bytes become {"$bytes": base64}; NaN/±Infinity {"$float": "nan" | "inf" | "-inf"}
    (tagged, so they cannot be mistaken for the strings "nan" and "inf")."""
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": str(value)}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    return value


def _from_json(value: Any, what: str) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$float"}:
            if value["$float"] not in ("nan", "inf", "-inf"):
                raise click.BadParameter(f'{what}: {{"$float": ...}} must be "nan", "inf" or "-inf", got {value["$float"]!r}')
            return float(value["$float"])
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


def _parse_json(text: str, what: str) -> Any:
    """JSON from the text, or from a file (``@path``) or standard input (``-``) for big values."""
    if text == "-":
        text = sys.stdin.read()
    elif text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as e:
            raise click.BadParameter(f"{what}: cannot read {text[1:]!r}: {e.strerror}") from None
    try:
        return _from_json(json.loads(text), what)
    except RecursionError:
        raise click.BadParameter(f"{what}: the JSON is nested too deeply (keep it under ~900 levels)") from None
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"{what} must be JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                                 "quote strings: '\"text\"'; @FILE reads a file, - reads standard input") from None


_WORK_SUFFIXES = (".js", ".mjs", ".cjs", ".wasm", ".wat", ".py", ".json")


def _read_work(work: str) -> str | bytes:
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
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Limits are the most a job may use on this worker (defaults: wall 1h, memory 2GiB, "
                    "output 64MiB, progress timeout 30s, CPU unlimited); a job may ask for less, and either "
                    "side may turn the no-progress watchdog off.")
@click.option("--worktime", "-w", "worktimes", multiple=True, help="Worktime(s) to offer (default: all installed).")
@click.option("--cores", "--nworkers", type=click.IntRange(min=1), default=None, help="Evaluator processes (default: one per CPU).")
@click.option("--scheduler", "scheduler_url", default=None, envvar="DCP_SCHEDULER",
              help="Scheduler URL, e.g. sqlite:///path/jobs.db (default: the per-user embedded store).")
@click.option("--capability", "capabilities", multiple=True, metavar="PATH=VALUE",
              help="Extra capability, e.g. machine.gpu=false (matched against job requirements).")
@click.option("--until-idle", is_flag=True, help="Exit once no job has slices left for this worker.")
@click.option("--job", "job", default=None, hidden=True, help="Serve only this job, until it ends (exec()'s helpers).")
@click.option("--helper", is_flag=True, hidden=True, help="A helper process of another worker: die with it.")
@limit_options
@click.version_option(package_name="dcp-worktimes")
@click.pass_context
def cli(ctx: click.Context, worktimes, cores, scheduler_url, capabilities, until_idle, job, helper, **limits) -> None:
    """Run a dcp-worktimes worker: take slices from the scheduler and run them in sandboxed worktimes.

    \b
    dcp-worker --worktime map-basic --cores 2 --memory-limit 1GiB
    dcp-worker slice --worktime echo --work '' --datum '[1, 2]'
    dcp-worker worktimes --json
    """
    if ctx.invoked_subcommand is not None:
        given = [n for n in ("worktimes", "cores", "capabilities", "until_idle") if ctx.params.get(n)]
        given += [n.removeprefix(_SETTING_PREFIX) for n, v in limits.items() if v not in (None, ())]
        if given:
            flags = ", ".join("--" + n.replace("_", "-") for n in given)
            raise click.UsageError(f"{flags} belong to the worker itself, not to '{ctx.invoked_subcommand}'; "
                                   f"put them after the subcommand if it has them (dcp-worker {ctx.invoked_subcommand} --help)")
        return
    from .scheduler import open_scheduler
    from .scheduler.worker import Worker

    try:
        check_cores(cores, "--cores")
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    caps: dict[str, Any] = {}
    for item in capabilities:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"capability {item!r} must look like machine.gpu=true")
        node = caps
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = _capability_value(item, raw)
    # A worker serves strangers: a job may ask for less than the worker's limits, never for more,
    # and "unlimited" in a job means "the worker's maximum". The maxima default to Limits();
    # the worker's owner raises them with the flags ('off' for none).
    config = _worktime_config(limits)
    limits = {k: v for k, v in limits.items() if not k.startswith(_SETTING_PREFIX) and k != "trusted"}
    worker_limits = _limits(None, **limits)
    if helper:
        processes.die_with_parent()
    elif not _store_exists(scheduler_url):
        # A typo in --scheduler would otherwise wait forever on an empty store nobody deploys to.
        click.echo(f"dcp-worker: no job store at {_store_path(scheduler_url)} yet; creating an empty one (deployers must use the same "
                   "--scheduler / DCP_SCHEDULER)", err=True)
    scheduler = open_scheduler(scheduler_url)
    split = [cores or os.cpu_count() or 1] if helper else processes.shares(cores or os.cpu_count() or 1)
    worker = Worker(scheduler, list(worktimes) or None, split[0], capabilities=caps, limits=worker_limits, config=config,
                    jobs=[job] if job else None)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if job:
        processes.stop_when_over(scheduler, job, stop)
    helpers = processes.Helpers(scheduler.url, split[1:], job=job, worktimes=list(worktimes), config=config,
                                limits={k: v for k, v in limits.items() if v is not None}, capabilities=list(capabilities),
                                until_idle=until_idle)
    if not helper:
        click.echo(f"dcp-worker {worker.id}: {', '.join(f'{n} {v}' for n, v in worker.worktimes.items())} "
                   f"on {worker.cores} cores, scheduler {scheduler!r}"
                   + (f" (and {len(helpers.argvs)} more worker processes: {sum(split[1:])} cores)" if helpers.argvs else ""),
                   err=True)
    try:
        with helpers:
            worker.run(stop, until_idle=until_idle)
    finally:
        scheduler.close()
    if not helper:
        click.echo(f"dcp-worker: {worker.completed} slices completed, {worker.failed} failed", err=True)


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
    console = Console()
    console.print(table)
    for e in errors:
        console.print(f"[yellow]plugin {e['plugin']} skipped: {e['error']}[/yellow]")


@cli.command("slice")
@click.option("--worktime", "-w", required=True, help="Worktime name, e.g. map-basic, wasi, python, echo.")
@click.option("--work", required=True, help="The work: a file path, or the work text itself.")
@click.option("--datum", default="null", show_default=True,
              help="The slice's input as JSON ({\"$bytes\": base64} for bytes); @FILE reads a file, - reads stdin.")
@click.option("--arg", "args", multiple=True, help="An extra work argument, as JSON (repeatable).")
@click.option("--module", "modules", multiple=True, metavar="NAME=PATH", help="A module the work may require/import.")
@click.option("--option", "options", multiple=True, metavar="KEY=JSON", help="A worktime option, e.g. strict=true.")
@limit_options
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as a JSON object.")
def slice_cmd(worktime, work, datum, args, modules, options, as_json, **limits) -> None:
    """Run one slice in a sandboxed evaluator and print its result (exit status 1 if it fails)."""
    from .plugins import get_worktime
    from .runner import run_slice
    from .worktime import JobSpec

    config = _worktime_config(limits).get(worktime, {})
    limits = {k: v for k, v in limits.items() if not k.startswith(_SETTING_PREFIX) and k != "trusted"}
    probe = get_worktime(worktime).probe(config)
    if not probe.available:
        raise DcpError(f"worktime {worktime} cannot run on this machine: {probe.unavailable}", code="ENOWORKTIME")
    mods: dict[str, str | bytes] = {}
    for m in modules:
        name, sep, path = m.partition("=")
        if not sep or not Path(path).is_file():
            raise click.BadParameter(f"--module {m!r}: write NAME=PATH with an existing file")
        mods[name] = _read_work(path)
    opts: dict[str, Any] = {}
    for o in options:
        key, sep, raw = o.partition("=")
        if not sep:
            raise click.BadParameter(f"--option {o!r}: write KEY=JSON, e.g. strict=true")
        opts[key] = _parse_json(raw, f"--option {key}")
    job = JobSpec(id="cli-slice", worktime=worktime, work=_read_work(work),
                  arguments=[_parse_json(a, "--arg") for a in args], modules=mods, options=opts,
                  limits=_limits(None, **limits))

    def on_event(kind: str, number: int, payload: Any) -> None:
        if kind == "console":
            same = f" (x{payload['same']})" if payload.get("same", 1) > 1 else ""
            click.echo(f"[console.{payload['level']}] {payload['message']}{same}", err=True)
        elif kind == "emit":
            click.echo(f"[emit {payload['name']}] {json.dumps(_to_json(payload['value']))}", err=True)

    out = run_slice(job, _parse_json(datum, "--datum"), on_event, config=config)
    if as_json:
        body: dict[str, Any] = {"ok": out.ok, "wall_time": out.wall_time, "cpu_time": out.cpu_time,
                                "bytes_in": out.bytes_in, "bytes_out": out.bytes_out}
        if out.ok:
            body["result"] = _to_json(out.value)
        else:
            body["error"] = out.error.to_dict()  # type: ignore[union-attr]
        click.echo(json.dumps(body))
    elif out.ok:
        click.echo(json.dumps(_to_json(out.value)))
    else:
        err = out.error
        click.echo(f"{err.code}: {err.message}", err=True)  # type: ignore[union-attr]
        if err.stack:  # type: ignore[union-attr]
            click.echo(err.stack, err=True)  # type: ignore[union-attr]
    if not out.ok:
        sys.exit(1)


@cli.command("warmup")
@click.option("--worktime", "-w", "names", multiple=True, help="Worktime(s) to warm up (default: all installed).")
def warmup_cmd(names) -> None:
    """Compile and cache what worktimes need before their first slice (e.g. the python runtime)."""
    from .plugins import get_worktime, get_worktimes

    regs = [get_worktime(n) for n in names] if names else list(get_worktimes().values())
    for reg in regs:
        click.echo(f"{reg.name}: warming up ...", err=True)
        reg.cls.warmup(lambda message: click.echo(f"  {reg.name}: {message}", err=True))
        click.echo(f"{reg.name}: ready", err=True)


_SCHEDULER_OPTION = click.option("--scheduler", "scheduler_url", default=None, envvar="DCP_SCHEDULER",
                                 help="Scheduler URL (default: the per-user embedded store).")


@cli.command("jobs")
@_SCHEDULER_OPTION
@click.option("--delete", "delete", multiple=True, metavar="JOB_ID", help="Forget a finished job and its stored data.")
@click.option("--force", is_flag=True, help="With --delete: also cancel and delete jobs that are still running.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def jobs_cmd(scheduler_url: str | None, delete: tuple[str, ...], force: bool, as_json: bool) -> None:
    """List the scheduler's jobs with their status (or delete some)."""
    from .scheduler import open_scheduler

    url = scheduler_url or click.get_current_context().parent.params.get("scheduler_url")  # type: ignore[union-attr]
    if not _store_exists(url):
        if url:  # a typo in --scheduler must not look like "all my jobs are gone", nor create a store
            raise click.UsageError(f"no job store at {_store_path(url)}; check --scheduler / DCP_SCHEDULER")
        if delete:
            raise click.UsageError(f"no job store at {_store_path(url)} yet, so no job {delete[0]!r} to delete")
        click.echo("[]" if as_json else "no jobs yet (nothing was deployed to the per-user store)")
        return
    with open_scheduler(url) as sched:
        from .scheduler.base import FINAL_STATES

        for job_id in delete:
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
    for r in rows:
        cells = (r["worktime"], r["status"] + (f" ({r['reason']})" if r.get("reason") else ""),
                 str(r["computed"]), str(r["failed"]), str(r["total"] if r["total"] is not None else "?"),
                 str((r.get("public") or {}).get("name", "")), r["id"])
        # Job names come from strangers: Text (never markup) with control characters escaped.
        table.add_row(*(Text(_printable(c)) for c in cells))
    # Piped into grep or a file: no terminal width to fit, so never cut a cell.
    Console(width=None if sys.stdout.isatty() else 100_000).print(table)


@cli.command("resume")
@click.argument("job_id")
@_SCHEDULER_OPTION
@click.option("--cores", type=click.IntRange(min=1), default=None, help="Evaluators to run here (default: all cores).")
@click.option("--errors", type=click.Choice(["raise", "return"]), default="raise", show_default=True,
              help="'return' prints failed slices in place instead of failing.")
def resume_cmd(job_id: str, scheduler_url: str | None, cores: int | None, errors: str) -> None:
    """Finish a deployed job on this machine and print its results as JSON (completed slices are not rerun)."""
    from . import compute

    url = scheduler_url or click.get_current_context().parent.params.get("scheduler_url")  # type: ignore[union-attr]
    if not _store_exists(url):
        raise click.UsageError(f"no job store at {_store_path(url)}, so no job {job_id!r}; check --scheduler / DCP_SCHEDULER")
    try:
        results = compute.resume(job_id, scheduler=url).exec(cores=cores, errors=errors)
    except compute.JobFailed as e:
        first, _, _ = str(e).rpartition("\nThe completed results")
        raise click.ClickException(f"{first}\nRun with --errors return to print every result, with the failed "
                                   "slices as {\"error\": ...} in place") from None
    click.echo(json.dumps(_to_json([v if not isinstance(v, BaseException) else {"error": str(v)} for v in results])))


_BOOLEAN_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


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


#: Decimal digits the CLI reads and prints in an integer (Python's default stops at 4300; the
#: conversion is quadratic, so a result from a stranger's slice must not get an unbounded one).
MAX_INT_DIGITS = 200_000


def main() -> None:
    sys.set_int_max_str_digits(MAX_INT_DIGITS)
    for command in (cli, slice_cmd, worktimes_cmd):
        _with_settings(command)
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except DcpError as e:
        click.echo(f"dcp-worker: {e}", err=True)
        sys.exit(2)
    except (ValueError, OSError) as e:
        click.echo(f"dcp-worker: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
