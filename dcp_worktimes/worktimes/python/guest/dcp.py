"""The ``dcp`` module inside the ``python`` worktime's sandbox (Pyodide-compatible surface).

A program-style job::

    import dcp

    def handle(datum, *arguments):
        dcp.progress(0.5)
        print("working on", datum)          # a console event (level "log")
        dcp.work.emit("seen", datum)         # a custom event for job.work.on("seen")
        return datum * 2

    dcp.set_slice_handler(handle)

``progress``, ``work``, ``console``, ``emit`` and ``job`` are also globals of the work itself.
"""

from _dcp_guest import Console, Work, WorkReject, console, emit, progress, set_slice_handler, work

__all__ = ["Console", "Work", "WorkReject", "console", "emit", "progress", "set_slice_handler", "work"]
