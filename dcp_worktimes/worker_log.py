"""What ``dcp-worker`` prints while it serves: a line per job started and finished (counts, rate,
how its failures ended), each new kind of failure with its code, ``-v`` a line per slice, ``-q``
failures only; on a terminal, a live status line under the log (rich).

::

    16:02:11 job 1a2b3c4d started: map-basic, 1000 slices, 'frames' (application videoProcessor 1.2.0)
    16:02:12 job 1a2b3c4d slice 17 failed: EUNCAUGHT: boom (-v shows every failed slice)
    16:02:24 job 1a2b3c4d finished here: 998 computed, 2 failed (EUNCAUGHT x2) in 12.3 s, 81 slices/s; job failed
    ⠋ serving map-basic on 2 cores · 1 job · 998 computed, 2 failed · 81 slices/s · 4 leased

``WorkerLog`` is the ``WorkerEvents`` the CLI hands its ``Worker``; every line goes through one
rich console on stderr (stdout stays free for machine output).
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.text import Text

from .scheduler.base import JobRecord, Report, is_retryable
from .scheduler.worker import Worker, WorkerEvents

__all__ = ["WorkerLog", "plural"]

#: Seconds of history the live rate is computed over.
RATE_WINDOW = 10.0


def plural(n: int, word: str) -> str:
    """``plural(1, "core")`` -> ``'1 core'``; ``plural(2, "core")`` -> ``'2 cores'``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f} slices/s" if seconds > 0 and n / seconds >= 10 else (
        f"{n / seconds:.2g} slices/s" if seconds > 0 else "-")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m} min" if hours else f"{m} min {s} s"


@dataclass
class _JobStats:
    label: str
    started: float
    computed: int = 0
    failed: int = 0
    retried: int = 0  # attempts that failed with a retryable error: the scheduler may run them again
    failures: collections.Counter = field(default_factory=collections.Counter)  # code -> count


class _LogLines(logging.Handler):
    """Warnings of the package's loggers, as lines of a ``WorkerLog``."""

    def __init__(self, log: "WorkerLog") -> None:
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.log.line(record.getMessage(), style="yellow", always=True)
        except Exception:  # noqa: BLE001 - logging's own convention: report, never raise
            self.handleError(record)


class WorkerLog(WorkerEvents):
    """``verbosity``: -1 failures only (``-q``), 0 jobs and new kinds of failure, 1 every slice (``-v``).
    ``live``: a status line under the log (``None``: when stderr is a terminal)."""

    def __init__(self, verbosity: int = 0, live: bool | None = None, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)
        self.verbosity = verbosity
        self.live_wanted = self.console.is_terminal if live is None else live
        self.worker: Worker | None = None
        self.jobs: dict[str, _JobStats] = {}
        self.computed = 0
        self.failed = 0
        self.retried = 0
        self.jobs_seen = 0
        self.started = time.monotonic()
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._live: Any = None
        self._handler: _LogLines | None = None
        self._propagated = True

    # -- life cycle ---------------------------------------------------------------------------------
    def start(self, worker: Worker, scheduler_url: str, helpers: int = 0, helper_cores: int = 0) -> None:
        """The start line, then the live status line if wanted. ``helpers``: worker processes
        started beside this one (with ``helper_cores`` evaluators in all)."""
        self.worker = worker
        offered = ", ".join(f"{n} {v}" for n, v in worker.worktimes.items())
        only = f", only categories {', '.join(worker.categories)}" if worker.categories is not None else ""
        more = (f" (and {helpers} more worker process{'' if helpers == 1 else 'es'} with "
                f"{plural(helper_cores, 'core')})" if helpers else "")
        self.line(f"dcp-worker {worker.id}: serving {offered} on {plural(worker.cores, 'core')}{more}{only}; "
                  f"scheduler {scheduler_url}", always=True)
        for name, why in worker.unavailable.items():
            self.line(f"not offering {name}: {why}", always=True)
        for name in worker.worktimes:
            note = worker.registrations[name].cold_start()
            if note:
                self.line(f"{name}: its first job will wait: {note}", always=True)
        # The package's own warnings (a store failing, a helper process restarted) become lines of
        # this log, with the time, instead of bare lines from logging's last-resort handler.
        self._handler = _LogLines(self)
        package = logging.getLogger("dcp_worktimes")
        self._propagated = package.propagate
        package.addHandler(self._handler)
        package.propagate = False
        if self.live_wanted and self.verbosity >= 0:
            from rich.live import Live
            from rich.spinner import Spinner

            self._spinner = Spinner("dots")
            self._live = Live(self, console=self.console, refresh_per_second=4, transient=True,
                              redirect_stdout=False, redirect_stderr=True)
            self._live.start()

    def stop(self) -> None:
        """The live line goes; the summary stays."""
        if self._live is not None:
            self._live.stop()
            self._live = None
        if self._handler is not None:
            package = logging.getLogger("dcp_worktimes")
            package.removeHandler(self._handler)
            package.propagate = self._propagated
            self._handler = None
        elapsed = time.monotonic() - self.started
        retried = f", {self.retried} retryable failures" if self.retried else ""
        self.line(f"dcp-worker: stopped after {_duration(elapsed)}; {self.computed} slices computed, {self.failed} "
                  f"failed{retried}, in {plural(self.jobs_seen, 'job')}", always=True)

    # -- WorkerEvents ----------------------------------------------------------------------------------
    def job_started(self, job: JobRecord) -> None:
        self.jobs_seen += 1
        name = (job.public or {}).get("name")
        app = job.application
        label = f"job {job.id[:8]}"
        details = [job.spec.worktime, plural(job.total, "slice") if job.total is not None else "a stream of slices"]
        if name:
            details.append(repr(str(name)))
        if app:
            details.append(f"application {app.get('name')} {app.get('version')}, function {app.get('function')}")
        self.jobs[job.id] = _JobStats(label, time.monotonic())
        if self.verbosity >= 0:
            self.line(f"{label} started: {', '.join(details)}")

    def slices_done(self, job_id: str, report: Report) -> None:
        stats = self.jobs.get(job_id) or self.jobs.setdefault(job_id, _JobStats(f"job {job_id[:8]}", time.monotonic()))
        now = time.monotonic()
        count = len(report)
        ok = sum(report.oks)
        stats.computed += ok
        self.computed += ok
        self._recent.append((now, count))
        if ok == count and self.verbosity < 1:
            return  # the usual report: counted, nothing to say per slice
        for n, good, error, wall in zip(report.numbers, report.oks, report.errors, report.walls):
            if good:
                if self.verbosity >= 1:
                    self.line(f"{stats.label} slice {n}: ok in {wall * 1000:.0f} ms")
                continue
            # A retryable failure (the evaluator died, work.reject()) is one attempt: the scheduler
            # runs the slice again (up to the job's max_attempts), so it is not counted as failed.
            again = is_retryable(error)
            if again:
                stats.retried += 1
                self.retried += 1
            else:
                stats.failed += 1
                self.failed += 1
            code = str((error or {}).get("code", "EUNCAUGHT"))
            message = str((error or {}).get("message", "")).strip().splitlines()
            first = message[0] if message else ""
            new_kind = code not in stats.failures
            stats.failures[code] += 1
            if self.verbosity >= 1 or new_kind:
                more = "" if self.verbosity >= 1 else " (-v shows every failed slice)"
                verb = "failed (retryable: the scheduler runs it again until the job's max_attempts)" if again else "failed"
                self.line(f"{stats.label} slice {n} {verb}: {code}: {first}{more}", style="yellow", always=True)

    def job_finished(self, job_id: str, status: dict) -> None:
        stats = self.jobs.pop(job_id, None)
        if stats is None or self.verbosity < 0:
            return
        took = time.monotonic() - stats.started
        failures = ""
        if stats.failures:
            failures = " (" + ", ".join(f"{code} x{n}" for code, n in stats.failures.most_common()) + ")"
        state = status.get("status")
        whole = {"complete": "job complete", "failed": "job failed", "cancelled": "job cancelled",
                 "gone": "job gone from the store (deleted, or the store lost it)"}.get(str(state), "the job goes on elsewhere or waits for more input")
        reason = f": {status['reason']}" if state == "cancelled" and status.get("reason") else ""
        done = stats.computed + stats.failed
        retried = f", {stats.retried} retryable failures" if stats.retried else ""
        self.line(f"{stats.label} finished here: {stats.computed} computed, {stats.failed} failed{retried}{failures} in "
                  f"{_duration(took)}, {_rate(done, took)}; {whole}{reason}")

    # -- output -------------------------------------------------------------------------------------
    def line(self, text: str, style: str | None = None, always: bool = False) -> None:
        """One log line with the time (``always``: shown even with ``-q``)."""
        if self.verbosity < 0 and not always:
            return
        out = Text(time.strftime("%H:%M:%S "), style="dim")
        out.append(text, style=style)
        self.console.print(out)

    def rate(self) -> float:
        """Slices per second over the last ``RATE_WINDOW`` seconds."""
        now = time.monotonic()
        while self._recent and now - self._recent[0][0] > RATE_WINDOW:
            self._recent.popleft()
        window = min(RATE_WINDOW, now - self.started)
        return sum(n for _t, n in self._recent) / window if window > 0 else 0.0

    def __rich__(self) -> Any:
        """The live status line (rich calls it on each refresh)."""
        from rich.table import Table

        w = self.worker
        running = w.leased if w is not None else 0
        offered = ", ".join(w.worktimes) if w is not None else ""
        status = Text.assemble(
            (f"serving {offered} on {plural(w.cores if w else 0, 'core')}", "bold"),
            f" · {plural(len(self.jobs), 'job')} · {self.computed} computed",
            (f", {self.failed} failed" if self.failed else "", "yellow"),
            f" · {self.rate():,.0f} slices/s · {running} leased",
        )
        grid = Table.grid(padding=(0, 1))
        grid.add_row(self._spinner, status)
        return grid
