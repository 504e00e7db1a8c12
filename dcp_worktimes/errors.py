"""The error vocabulary of dcp-worktimes.

Codes are DCP's where DCP has one (``ENOPROGRESS``, ``ESLICETOOSLOW``, ``EUNCAUGHT``, ...) and
ours for the quotas DCP does not enforce. Every error carries a ``code`` and a message that says
what to do next; the CLI turns them into one-line messages in exactly one place (``cli.py``).

The tree is deliberately tiny::

    DcpError
    ├── WorktimeNotFound      ENOWORKTIME: unknown worktime / no version satisfies the range
    ├── DuplicateWorktime     two plugins register the same name
    ├── WorkError             the job's work itself is unusable (does not compile, ...)
    └── SliceError            one slice failed; ``code`` says why
"""

from __future__ import annotations

from enum import Enum


#: ``SliceError.name`` of a scratch-directory cap violation: its code is EOUTPUTLIMIT, but the
#: limit behind it is the scratch size, not ``limits.output``.
SCRATCH_ERROR = "ScratchCap"


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
        #: slice goes back to the scheduler unrun instead of failing.
        self.worker_fault = worker_fault

    def to_dict(self) -> dict:
        code = self.code.value if isinstance(self.code, ErrorCode) else str(self.code)
        d = {"code": code, "message": self.message, "stack": self.stack, "name": self.name}
        if self.worker_fault:
            d["worker_fault"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SliceError":
        return cls(d.get("message", ""), code=d.get("code", "EUNCAUGHT"), stack=d.get("stack"), name=d.get("name"),
                   worker_fault=bool(d.get("worker_fault")))
