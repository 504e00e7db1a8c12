"""Event emitters for jobs (``job.on``) and their work (``job.work.on``), DCP style.

Handlers receive one ``Event`` (a dict that also allows attribute access: ``ev.sliceNumber``)::

    job.on("result", lambda ev: print(ev.sliceNumber, ev.result))
    job.on("console", lambda ev: print(ev.level, ev.message))
    job.work.on("partial", lambda ev: print(ev.value))     # work.emit("partial", value) in a slice

Job events: ``accepted`` ({id}), ``readyStateChange`` ({state}), ``status`` ({total, distributed,
computed, failed}), ``result`` ({sliceNumber, result}), ``console`` ({level, message, sliceNumber,
same}), ``error`` ({sliceNumber, code, message, stack}), ``noProgress`` ({sliceNumber}),
``progress`` ({sliceNumber, value}), ``complete`` ({computed, failed}), ``cancel`` ({reason}),
``unschedulable`` ({reason}). A handler that raises does not stop the job: the exception is
reported as a ``RuntimeWarning`` and the other handlers still run.
"""

from __future__ import annotations

import traceback
import warnings
from typing import Any, Callable

__all__ = ["Event", "EventEmitter", "JOB_EVENTS"]

JOB_EVENTS = frozenset({
    "accepted", "readyStateChange", "status", "result", "console", "error", "noProgress", "progress",
    "complete", "cancel", "unschedulable",
})


class Event(dict):
    """An event payload: a dict whose keys are also attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class EventEmitter:
    """``on`` / ``once`` / ``off`` / ``emit``. ``known`` limits names (typos are errors) when set."""

    known: frozenset[str] | None = None

    def __init__(self) -> None:
        self._handlers: dict[str, list[tuple[Callable[[Event], Any], bool]]] = {}

    def on(self, event: str, handler: Callable[[Event], Any] | None = None, *, _once: bool = False):
        """Call ``handler(ev)`` on every ``event``. Usable as a decorator: ``@job.on("result")``."""
        if not isinstance(event, str) or not event:
            raise TypeError("on(event, handler): event must be a non-empty string")
        if self.known is not None and event not in self.known:
            raise ValueError(f"unknown event {event!r}; events: {', '.join(sorted(self.known))}. "
                             "Custom events from work.emit() are subscribed with job.work.on(name, fn)")
        if handler is None:
            def deco(fn: Callable[[Event], Any]) -> Callable[[Event], Any]:
                self.on(event, fn, _once=_once)
                return fn
            return deco
        if not callable(handler):
            raise TypeError(f"on({event!r}, handler): handler must be callable, got {handler!r}")
        self._handlers.setdefault(event, []).append((handler, _once))
        return handler

    addListener = on  # noqa: N815 - EventEmitter's names

    def once(self, event: str, handler: Callable[[Event], Any] | None = None):
        return self.on(event, handler, _once=True)

    def off(self, event: str, handler: Callable[[Event], Any]) -> None:
        self._handlers[event] = [(h, o) for h, o in self._handlers.get(event, []) if h is not handler]

    removeListener = off  # noqa: N815

    def listener_count(self, event: str) -> int:
        return len(self._handlers.get(event, []))

    def emit(self, event: str, payload: dict | None = None) -> bool:
        handlers = self._handlers.get(event)
        if not handlers:
            return False
        ev = payload if isinstance(payload, Event) else Event(payload or {})
        for handler, once in list(handlers):
            if once:
                self.off(event, handler)
            try:
                handler(ev)
            except Exception:
                warnings.warn(f"a {event!r} event handler raised:\n{traceback.format_exc()}", RuntimeWarning, stacklevel=2)
        return True
