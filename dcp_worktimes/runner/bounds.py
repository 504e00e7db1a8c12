"""How much a slice may send back: one byte budget for everything, and a cap on each message.

A slice's result, its console lines and custom events, and its error (message and stack, a
``work.reject()`` reason, a load error) all come from the work, so the work decides their size.
Two bounds keep hostile work from filling the job store through any of them:

* **one budget per slice**, the job's output limit (``Limits.output``): the result plus every
  console line and event the slice sent. Going over fails the slice with ``EOUTPUTLIMIT``;
* **a cap on each message** (``MESSAGE_CAP``): an error's message or stack, or one console line,
  longer than that is cut, and the cut says how much it dropped. Errors are cut to what is left
  of the slice's budget too, so a slice that logged up to its limit cannot add a huge error.

    >>> cut("x" * 100, 40)
    'xxxxxxxxxxx ... [89 more characters cut]'
"""

from __future__ import annotations

from typing import Any

#: The most of one error message, stack or console line a slice sends back, in characters.
MESSAGE_CAP = 64 * 1024
#: What a cut error keeps at least, whatever is left of the budget (its first words say what failed).
MESSAGE_FLOOR = 200


def cut(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters: its head, then how many characters were cut."""
    if len(text) <= limit:
        return text
    keep = limit
    while True:  # the marker counts against the limit too
        marker = f" ... [{len(text) - keep} more characters cut]"
        if keep + len(marker) <= limit or keep == 0:
            return text[:keep] + marker
        keep = max(0, limit - len(marker))


def bound_error(error: dict[str, Any], left: int | None) -> dict[str, Any]:
    """An error dict (``SliceError.to_dict()``) with its message and stack cut to ``MESSAGE_CAP``
    and together to ``left`` bytes of the slice's budget (``None``: no budget), never below
    ``MESSAGE_FLOOR`` for the message."""
    message = str(error.get("message") or "")
    stack = error.get("stack")
    room = MESSAGE_CAP if left is None else max(MESSAGE_FLOOR, min(MESSAGE_CAP, left))
    bounded = cut(message, room)
    out = {**error, "message": bounded}
    if isinstance(stack, str):
        # The stack repeats the message in most engines: it gets what the message left, if anything.
        room_left = MESSAGE_CAP if left is None else min(MESSAGE_CAP, max(0, left - len(bounded)))
        out["stack"] = cut(stack, room_left) if room_left >= MESSAGE_FLOOR else None
    return out
