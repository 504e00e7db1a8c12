"""The error vocabulary of dcp-worktimes.

Codes are DCP's where DCP has one (``ENOPROGRESS``, ``ESLICETOOSLOW``, ``EUNCAUGHT``, ...) and
ours for the quotas DCP does not enforce. Every error carries a ``code`` and a message that says
what to do next; the CLI turns them into one-line messages in exactly one place (``cli.py``).

The tree is deliberately tiny::

    DcpError
    ├── WorktimeNotFound      ENOWORKTIME: unknown worktime / no version satisfies the range
    ├── DuplicateWorktime     two plugins register the same name
    ├── RequirementsError     EREQUIREMENTS: nobody (or not this machine) meets the job's requirements
    ├── WorkError             the job's work itself is unusable (does not compile, ...)
    └── SliceError            one slice failed; ``code`` says why
        └── LimitExceeded     it went over a limit; ``limit`` says which (``limits.exceeded`` words it)
"""

from __future__ import annotations

from enum import Enum


class ErrorCode(str, Enum):
    """Error codes that reach the deployer. ``str`` so they compare equal to plain strings."""

    def __str__(self) -> str:
        return self.value

    # DCP's codes.
    ENOPROGRESS = "ENOPROGRESS"  # no progress() for longer than the progress timeout
    ESLICETOOSLOW = "ESLICETOOSLOW"  # wall-time limit of the slice exceeded
    EUNCAUGHT = "EUNCAUGHT"  # the work threw / raised
    EWORKREJECT = "EWORKREJECT"  # the work called work.reject(reason)
    ENOWORKTIME = "ENOWORKTIME"  # no installed worktime matches the job
    ENOSLICEHANDLER = "ENOSLICEHANDLER"  # a program-style work never set a slice handler
    ERANGE = "ERANGE"  # result lookup with a key that is not an input
    ENOFUNDS = "ENOFUNDS"  # invalid cost profile
    # Ours: the quotas DCP never enforced, and failures DCP folds into EUNCAUGHT.
    EMEMORYLIMIT = "EMEMORYLIMIT"  # memory quota (engine or resident set) exceeded
    ECPULIMIT = "ECPULIMIT"  # CPU-time quota exceeded
    EOUTPUTLIMIT = "EOUTPUTLIMIT"  # encoded result (or console/emit traffic) over quota
    ECRASH = "ECRASH"  # the evaluator process died (signal, abort, exit)
    EUNSERIALIZABLE = "EUNSERIALIZABLE"  # result cannot cross the sandbox boundary losslessly
    EBADWORK = "EBADWORK"  # the work does not compile / is not a function
    ECANCELLED = "ECANCELLED"  # the slice was cancelled by the deployer or the worker
    EREQUIREMENTS = "EREQUIREMENTS"  # no worker can satisfy the job's requirements


#: Final slice errors that say the work itself is unusable, whichever slice met them: the scheduler
#: stops the job at the first (every other slice would fail the same way) and ``exec()`` raises one
#: ``WorkError`` with that code. A program that never sets a slice handler is one too: it is known
#: when the program loads, before any slice.
UNUSABLE_WORK_CODES = frozenset({ErrorCode.EBADWORK.value, ErrorCode.ENOSLICEHANDLER.value})


class DcpError(Exception):
    """Base of every dcp-worktimes error: a ``code`` plus a message that says what to do next."""

    code: ErrorCode | str = "EDCP"

    def __init__(self, message: str, *, code: ErrorCode | str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        code = self.code.value if isinstance(self.code, ErrorCode) else self.code
        return f"{code}: {self.message}"


class WorktimeNotFound(DcpError):
    """No installed worktime has this name (or none satisfies the version range)."""

    code = ErrorCode.ENOWORKTIME


class DuplicateWorktime(DcpError):
    """Two plugins registered the same worktime name."""

    code = "EDUPLICATEWORKTIME"


class RequirementsError(DcpError):
    """Requirements that are malformed, or that no available worker (or this machine) can meet."""

    code = ErrorCode.EREQUIREMENTS


class WorkError(DcpError):
    """The job's work cannot be used at all: fail the job once, not every slice."""

    code = ErrorCode.EBADWORK


class SliceError(DcpError):
    """One slice failed. ``stack`` is the guest's own trace (JS stack, Python traceback) if any.

    Worktimes raise it from ``execute`` with the most specific code they know::

        raise SliceError("out of fuel after 10^9 instructions", code=ErrorCode.ECPULIMIT)
    """

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | str = ErrorCode.EUNCAUGHT,
        stack: str | None = None,
        name: str | None = None,
        worker_fault: bool = False,
    ) -> None:
        super().__init__(message, code=code)
        self.stack = stack
        self.name = name  # the guest's error class name ("TypeError", "ZeroDivisionError")
        #: The worker, not the work, is at fault (its runtime is missing, its disk is full): the
        #: slice goes back to the scheduler unrun instead of failing, and the worker stops offering
        #: this worktime for a minute (a deployer whose job no other worker can run is told why).
        self.worker_fault = worker_fault

    def to_dict(self) -> dict:
        code = self.code.value if isinstance(self.code, ErrorCode) else str(self.code)
        d = {"code": code, "message": self.message, "stack": self.stack, "name": self.name}
        if self.worker_fault:
            d["worker_fault"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SliceError":
        if d.get("limit") in LIMIT_CODES:
            return LimitExceeded(d.get("message", ""), limit=d["limit"], stack=d.get("stack"), name=d.get("name"))
        return cls(d.get("message", ""), code=d.get("code", "EUNCAUGHT"), stack=d.get("stack"), name=d.get("name"),
                   worker_fault=bool(d.get("worker_fault")))


#: The code of each limit a slice can exceed (``LimitExceeded.limit``): the ``Limits`` fields, plus
#: the caps some engines add (``scratch``: the job's scratch folder; ``fuel``: an instruction budget).
LIMIT_CODES = {
    "wall_time": ErrorCode.ESLICETOOSLOW,
    "progress_timeout": ErrorCode.ENOPROGRESS,
    "cpu_time": ErrorCode.ECPULIMIT,
    "fuel": ErrorCode.ECPULIMIT,
    "memory": ErrorCode.EMEMORYLIMIT,
    "output": ErrorCode.EOUTPUTLIMIT,
    "scratch": ErrorCode.EOUTPUTLIMIT,
}


class LimitExceeded(SliceError):
    """A slice went over one of its limits: ``limit`` names it (a key of ``LIMIT_CODES``), as data.

    Build it with ``dcp_worktimes.limits.exceeded``, which words every limit the same way
    wherever it is enforced (the engine, the evaluator, the host's watchdog)::

        raise exceeded("wall_time", 2.0)
    """

    def __init__(self, message: str, *, limit: str, stack: str | None = None, name: str | None = None) -> None:
        super().__init__(message, code=LIMIT_CODES[limit], stack=stack, name=name)
        self.limit = limit

    def to_dict(self) -> dict:
        return {**super().to_dict(), "limit": self.limit}
