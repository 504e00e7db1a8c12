"""The deployer's progress bar: a rich bar fed by ``status`` events, shown on a terminal.

``DCP_PROGRESS=0``/``1`` forces it off/on (default: on when stdout is a TTY); ``exec(progress=...)``
and ``job.progress`` override both.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping

#: ``DCP_PROGRESS=0``/``1`` forces the progress bar off/on (default: on when stdout is a TTY).
ENV_PROGRESS = "DCP_PROGRESS"


def progress_wanted(explicit: bool | None) -> bool:
    if explicit is not None:
        return bool(explicit)
    env = os.environ.get(ENV_PROGRESS, "").strip().lower()
    if env in ("0", "false", "no", "off"):
        return False
    if env in ("1", "true", "yes", "on"):
        return True
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


class ProgressBar:
    """A rich progress bar fed by ``status`` events (only built when wanted)."""

    def __init__(self, total: int | None, label: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
        self.task = self.progress.add_task(label, total=total)
        self.progress.start()

    def update(self, ev: Mapping[str, Any]) -> None:
        done = (ev.get("computed") or 0) + (ev.get("failed") or 0)
        self.progress.update(self.task, completed=done, total=ev.get("total"))

    def close(self) -> None:
        self.progress.stop()
