"""A test-only worktime that runs host Python *unsandboxed* inside the evaluator process.

It exists to test the evaluator's process-level layers (network namespace, stdout hygiene) as
if an engine had been escaped. Never register it outside tests.
"""

from dcp_worktimes import hookimpl
from dcp_worktimes.worktime import Worktime


class ProbeWorktime(Worktime):
    name = "probe"
    version = "0.0.1"
    spawns = True  # some tests start processes from the work, as an engine that is a program would

    def prepare(self, job):
        self.job = job
        self.fn = {}
        exec(compile(job.work, "<probe>", "exec"), self.fn)

    def execute(self, ctx, datum):
        return self.fn["work"](datum)


class StuckAtStart(ProbeWorktime):
    """Its constructor never returns (a broken engine binding)."""

    name = "stuck-at-start"

    def __init__(self):
        import time

        time.sleep(3600)


class Unavailable(ProbeWorktime):
    """Its engine is never installed: the probe says so."""

    name = "unavailable"

    @classmethod
    def probe(cls, config):
        from dcp_worktimes.worktime import Probe

        return Probe({"frob": True}, unavailable="the frobnicator is not installed; apt-get install frobnicator")


class BrokenHere(ProbeWorktime):
    """Prepares only on machines that have a marker file (``config["marker"]``): elsewhere the
    worker, not the work, is at fault (ENOWORKTIME from prepare)."""

    name = "broken-here"
    settings = {"marker": "a file whose presence makes this machine able to prepare jobs"}

    def prepare(self, job):
        import os

        from dcp_worktimes.errors import ErrorCode, WorkError

        if not os.path.exists(self.config.get("marker", "/nonexistent")):
            raise WorkError("this machine lacks the marker file", code=ErrorCode.ENOWORKTIME)
        super().prepare(job)



class FailsOnHost(ProbeWorktime):
    """Raises a plain exception naming a host file, from ``prepare`` when the work says so, else
    from ``execute``: a worktime bug whose text holds a host path."""

    name = "fails-on-host"

    def prepare(self, job):
        self.job = job
        if job.work == "prepare":
            raise ValueError(f"cannot parse {__file__}")
        if job.work == "prepare-runtime":  # this machine's trouble, not the work's
            raise RuntimeError(f"the local model file {__file__} is corrupt")
        if job.work == "prepare-verdict":  # a limit the work's loading hit (python's boot turn)
            from dcp_worktimes.limits import exceeded

            raise exceeded("wall_time", 0.1, subject="preparing the job")

    def execute(self, ctx, datum):
        raise ValueError(f"cannot parse {__file__}")


class NativeProbe(Worktime):
    """Loads a native shared library (the work: its path) as its "engine" in ``prepare``, then
    each slice calls ``probe(what, arg)`` in it (``datum = [what, arg]``): native code running in
    the evaluator after its lockdown, as an engine escape would."""

    name = "native-probe"
    version = "0.0.1"

    def prepare(self, job):
        import ctypes

        self.lib = ctypes.CDLL(job.work)
        self.lib.probe.restype = ctypes.c_long
        self.lib.probe.argtypes = [ctypes.c_char_p, ctypes.c_char_p]

    def execute(self, ctx, datum):
        what, arg = datum
        return self.lib.probe(what.encode(), (arg or "").encode())


class NetworkNativeProbe(NativeProbe):
    """The same, for a worktime that declares ``network = True``."""

    name = "native-probe-network"
    network = True


class StandbyProbe(ProbeWorktime):
    """Starts a child process in ``standby`` (as map-basic starts Deno) and tells each slice what
    its evaluator was given ahead of the job: ``[hint, engine pid, evaluator pid, work result]``."""

    name = "standby-probe"

    def __init__(self):
        self.hint = None
        self.engine = None

    def standby(self, hint):
        import subprocess

        self.hint = hint.to_dict()
        self.engine = subprocess.Popen(["sleep", "3600"])

    def execute(self, ctx, datum):
        import os

        return [self.hint, self.engine.pid if self.engine else None, os.getpid(), self.fn["work"](datum)]

    def release(self):
        if self.engine is not None:
            self.engine.kill()
            self.engine.wait()
            self.engine = None


class HelperAtPrepare(ProbeWorktime):
    """Starts a helper process while it prepares (before the lockdown), yet does not spawn: the
    lockdown then denies new processes, but not to that helper."""

    name = "helper-at-prepare"
    spawns = False

    def prepare(self, job):
        import subprocess

        super().prepare(job)
        self.helper = subprocess.Popen(["sleep", "60"])

    def release(self):
        self.helper.kill()
        self.helper.wait()


class BlockProbe(ProbeWorktime):
    """Runs the work's ``block(block)`` as its ``execute_block``: an engine's block loop, bugs included."""

    name = "block-probe"

    def prepare(self, job):
        super().prepare(job)
        self.fn["worktime"] = self  # the work may call worktime.stop_process(...)

    def execute_block(self, block):
        self.fn["block"](block)


class ColdProbe(ProbeWorktime):
    """Says that its first job here will wait (``Worktime.cold_start``), as a worktime whose engine
    the cache lacks does."""

    name = "cold-probe"

    @classmethod
    def cold_start(cls):
        return "building the probe engine once on this machine (a test's note)"


class ColdStartRaises(ProbeWorktime):
    """A third-party ``cold_start`` that breaks its contract (it raises)."""

    name = "cold-start-raises"

    @classmethod
    def cold_start(cls):
        raise RuntimeError("the cache folder is unreadable")


@hookimpl
def register_worktimes(register):
    register(BlockProbe)
    register(HelperAtPrepare)
    register(StandbyProbe)
    register(ProbeWorktime)
    register(StuckAtStart)
    register(Unavailable)
    register(BrokenHere)
    register(FailsOnHost)
    register(NativeProbe)
    register(NetworkNativeProbe)
    register(ColdProbe)
    register(ColdStartRaises)

