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


@hookimpl
def register_worktimes(register):
    register(ProbeWorktime)
    register(StuckAtStart)
