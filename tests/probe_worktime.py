"""A test-only worktime that runs host Python *unsandboxed* inside the evaluator process.

It exists to test the evaluator's process-level layers (network namespace, stdout hygiene) as
if an engine had been escaped. Never register it outside tests.
"""

from dcp_worktimes import hookimpl
from dcp_worktimes.worktime import Worktime


class ProbeWorktime(Worktime):
    name = "probe"
    version = "0.0.1"

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




@hookimpl
def register_worktimes(register):
    register(ProbeWorktime)
    register(StuckAtStart)
    register(Unavailable)
    register(BrokenHere)
