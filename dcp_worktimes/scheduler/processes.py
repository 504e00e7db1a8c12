"""Workers in more than one process, for machines with more cores than one process keeps busy.

A worker's own process does a little per-slice work (leasing, reporting, bookkeeping: about 2 µs
a slice, under one GIL); with trivial slices one process keeps about ``CORES_PER_PROCESS``
evaluators busy. So ``dcp-worker --cores 16`` and ``job.exec()`` on a 16-core machine run
``shares(16) == [4, 4, 4, 4]``: this process with 4 evaluators and three more worker processes
with 4 each, all taking slices from the same store (SQLite in WAL mode, or Redis)::

    with Helpers(url, shares(cores)[1:], job=job_id, worktime="map-basic", config={}):
        ...   # this process runs its own share meanwhile

Helpers are ``dcp-worker`` processes started with ``--helper`` (they die with this process) and,
for one job, ``--job JOB_ID`` (they leave when the job ends). A private in-memory store cannot
be shared: then everything runs here.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

from ..limits import FLAGS
from .base import ENV_SCHEDULER

#: Evaluators one worker process drives; more cores are split over more processes.
CORES_PER_PROCESS = 4
ENV_CORES_PER_PROCESS = "DCP_CORES_PER_PROCESS"
#: Seconds between looks at the helpers; a helper that died is started again at most this many
#: times a minute (one that cannot start must not be started in a loop).
HELPER_CHECK = 1.0
HELPER_RESTARTS = 3

log = logging.getLogger(__name__)


def shares(cores: int) -> list[int]:
    """``cores`` evaluators split over worker processes, this process's share first.

    >>> shares(2), shares(16), shares(10)
    ([2], [4, 4, 4, 4], [4, 3, 3])
    """
    per = max(1, int(os.environ.get(ENV_CORES_PER_PROCESS) or CORES_PER_PROCESS))
    count = -(-cores // per)
    base, extra = divmod(cores, count)
    return [base + (1 if i < extra else 0) for i in range(count)]


def helper_argv(cores: int, *, job: str | None = None, worktimes: list[str] | None = None,
                config: Mapping[str, Mapping[str, Any]] | None = None, limits: Mapping[str, Any] | None = None,
                capabilities: list[str] | None = None, categories: list[str] | None = None,
                until_idle: bool = False) -> list[str]:
    """The command line of one helper worker process (the store's URL goes in its environment,
    ``$DCP_SCHEDULER``: a URL may hold a password, and a command line is visible to every user)."""
    argv = [sys.executable, "-m", "dcp_worktimes.cli", "--cores", str(cores), "--helper"]
    for name in worktimes or []:
        argv += ["--worktime", name]
    if job is not None:
        argv += ["--job", job]
    # ``limits``: parsed values (``Limits``' fields: sizes in bytes, durations in seconds; None: off)
    for name, value in (limits or {}).items():
        argv += [FLAGS[name], "off" if value is None else f"{int(value)}B" if name in ("memory", "output") else repr(value)]
    for item in capabilities or []:
        argv += ["--capability", item]
    for item in categories or []:
        argv += ["--category", item]
    seen: set[str] = set()
    for worktime, settings in (config or {}).items():
        for name, value in settings.items():
            if name == "trusted":
                argv += ["--trust-work", worktime]
            elif name not in seen:  # a setting several worktimes declare is one flag
                seen.add(name)
                argv += [f"--{name}", str(value)]
    if until_idle:
        argv.append("--until-idle")
    return argv


def die_with_parent() -> None:
    """A helper gets SIGTERM when the process that started it dies (it then hands its slices
    back, as on any stop), and exits at once if that already happened."""
    import ctypes

    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent or parent == 1:
        raise SystemExit(0)


@contextmanager
def stopped_by(stop: threading.Event, *signums: int,
               on_signal: Callable[[bool, int], None] | None = None) -> Iterator[None]:
    """Set ``stop`` when one of ``signums`` arrives, for the ``with`` block (main thread only).

    ``on_signal(again, signum)``: called (on the watching thread) for each of them, ``again`` once
    ``stop`` was already set: a second Ctrl-C while the worker hands its slices back to a store
    that does not answer.

    The handler itself does nothing: Python runs handlers in the main thread between any two
    bytecodes, also while it holds ``stop``'s own lock (inside ``stop.wait`` or ``stop.set``), so
    a handler calling ``stop.set()`` could wait for that lock for ever. A helper whose parent died
    got its death signal several times in a row (once per thread of the parent) and hung so, still
    serving jobs. The signal's number reaches a pipe instead (``signal.set_wakeup_fd``), and a
    thread of ours sets ``stop``::

        with stopped_by(stop, signal.SIGINT, signal.SIGTERM):
            worker.run(stop)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = set(signums)
    r, w = os.pipe()
    os.set_blocking(w, False)
    previous_fd = -1

    def watch() -> None:
        try:
            while True:
                data = os.read(r, 64)
                if not data:
                    return
                for signum in (n for n in data if n in wanted):
                    again = stop.is_set()
                    stop.set()
                    if on_signal is not None:
                        on_signal(again, signum)
                if previous_fd >= 0:  # whoever listened before (an asyncio loop, an outer stopped_by) still hears
                    try:
                        os.write(previous_fd, data)
                    except OSError:
                        pass
        except OSError:
            return

    previous: dict[int, Any] = {}
    watcher = threading.Thread(target=watch, name="dcp-signals", daemon=True)
    try:
        previous_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        for sig in signums:
            previous[sig] = signal.signal(sig, lambda *_: None)
        watcher.start()
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(previous_fd)
        os.close(w)  # the watcher reads the end of the pipe and returns
        if watcher.is_alive():
            watcher.join(1.0)
        os.close(r)


def stop_when_over(scheduler: Any, job_id: str, stop: threading.Event, every: float = 1.0) -> None:
    """Set ``stop`` once ``job_id`` has ended (checked on a thread every ``every`` seconds)."""
    from .base import FINAL_STATES, UnknownJob

    def watch() -> None:
        while not stop.wait(every):
            try:
                if scheduler.status(job_id)["status"] in FINAL_STATES:
                    break
            except UnknownJob:
                break
            except Exception:  # noqa: BLE001 - a store hiccup: look again later
                continue
        stop.set()

    threading.Thread(target=watch, name=f"dcp-watch-{job_id[:8]}", daemon=True).start()


class Helpers:
    """Helper worker processes for the duration of a ``with`` block. One that dies (killed, crashed:
    a status other than 0, which a helper told to stop or whose job ended exits with) is started
    again, saying so: its cores would otherwise sit idle for the rest of the worker's life."""

    def __init__(self, url: str | None, cores: list[int], **options: Any) -> None:
        self.argvs = [helper_argv(k, **options) for k in cores] if url and cores else []
        self.env = {**os.environ, ENV_SCHEDULER: url or ""}
        self.procs: list[subprocess.Popen] = []
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    def __enter__(self) -> "Helpers":
        self._stopping.clear()
        self.procs = [self._start(argv) for argv in self.argvs]
        if self.procs:
            self._watcher = threading.Thread(target=self._watch, name="dcp-helpers", daemon=True)
            self._watcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self, argv: list[str]) -> subprocess.Popen:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True,
                                env=self.env)

    def _watch(self) -> None:
        restarts: list[float] = []
        given_up: set[int] = set()
        while not self._stopping.wait(HELPER_CHECK):
            for i, p in enumerate(self.procs):
                code = p.poll()
                if code is None or code == 0 or i in given_up:
                    continue
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < 60]
                how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
                if len(restarts) >= HELPER_RESTARTS:
                    log.warning("helper worker process %d (pid %d) %s; not started again (%d restarts in the last "
                                "minute): this worker runs on fewer cores", i + 1, p.pid, how, len(restarts))
                    given_up.add(i)
                    continue
                restarts.append(now)
                try:
                    self.procs[i] = self._start(self.argvs[i])
                except OSError as e:  # no fork now: try again at the next look
                    log.warning("helper worker process %d (pid %d) %s; starting another failed: %s", i + 1, p.pid,
                                how, e)
                    continue
                # (Started from this thread, its death signal is this thread's end: stop() joins it
                # only as it stops the helpers anyway.)
                log.warning("helper worker process %d (pid %d) %s; started another (pid %d)", i + 1, p.pid, how,
                            self.procs[i].pid)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask each helper to stop (it hands its unfinished slices back), then make sure it has."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []
