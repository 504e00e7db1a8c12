"""One slice's generation as it streams in, whatever the backend: text, progress, and when to stop.

A backend feeds a ``Generation`` as chunks arrive: ``piece(text)`` per generated token,
``waiting()`` while the prompt is being read, ``finish(...)`` with the engine's own counts and
timings. Each call answers whether to stop **now**: the slice was cancelled or ran past its
wall-time limit. The backend then stops the engine at once (returns ``True`` from the llama.cpp
callback, or closes the HTTP stream, which makes the server stop generating) and the slice fails
with the precise code, leaving the evaluator and its loaded model ready for the next slice.

Example (what a backend does)::

    gen = Generation(ctx, num_predict=8)
    for chunk in stream:
        if gen.piece(chunk_text):
            stream.close()
            break
    gen.raise_if_stopped()
"""

from __future__ import annotations

import time
from typing import Any

from dcp_worktimes.errors import ErrorCode, SliceError
from dcp_worktimes.worktime import SliceContext


class Generation:
    """The state of one slice's generation (see the module docstring)."""

    __slots__ = ("ctx", "num_predict", "parts", "pieces", "started", "first_at", "last_at", "done_reason",
                 "prompt_tokens", "generated_tokens", "prompt_ms", "generate_ms", "stopped")

    def __init__(self, ctx: SliceContext, num_predict: int) -> None:
        self.ctx = ctx
        self.num_predict = num_predict
        self.parts: list[str] = []
        self.pieces = 0
        self.started = time.monotonic()
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.done_reason: str | None = None
        self.prompt_tokens: int | None = None
        self.generated_tokens: int | None = None
        self.prompt_ms: float | None = None
        self.generate_ms: float | None = None
        self.stopped: SliceError | None = None

    # -- what backends call -------------------------------------------------------------------
    def piece(self, text: str) -> bool:
        """A generated piece (one token as the engines stream them). True: stop now."""
        now = time.monotonic()
        if self.first_at is None:
            self.first_at = now
        self.last_at = now
        if text:
            self.parts.append(text)
        self.pieces += 1
        self.ctx.progress(min(1.0, self.pieces / self.num_predict))
        return self.must_stop()

    def waiting(self) -> bool:
        """The engine is alive but has no token yet (reading the prompt). True: stop now."""
        self.ctx.progress()
        return self.must_stop()

    def finish(self, reason: str | None, prompt_tokens: int | None = None, generated_tokens: int | None = None,
               prompt_ms: float | None = None, generate_ms: float | None = None) -> None:
        """The engine's final word: why it stopped (``stop``/``length``) and its own counts (ms)."""
        self.done_reason = reason or self.done_reason
        self.prompt_tokens = _int(prompt_tokens, self.prompt_tokens)
        self.generated_tokens = _int(generated_tokens, self.generated_tokens)
        self.prompt_ms = _float(prompt_ms, self.prompt_ms)
        self.generate_ms = _float(generate_ms, self.generate_ms)

    def must_stop(self) -> bool:
        if self.stopped is not None:
            return True
        if self.ctx.cancelled:
            self.stopped = SliceError("the slice was cancelled; generation stopped", code=ErrorCode.ECANCELLED)
        else:
            left = self.ctx.time_left()
            if left is not None and left <= 0:
                self.stopped = SliceError(
                    f"generation ran past the slice's wall-time limit of {self.ctx.limits.wall_time:g}s after "
                    f"{self.pieces} tokens and was stopped; ask for fewer tokens (options.num_predict), send "
                    "shorter prompts, or raise the limit (wall_time / --wall-time)", code=ErrorCode.ESLICETOOSLOW)
        return self.stopped is not None

    def raise_if_stopped(self) -> None:
        if self.stopped is None:
            self.must_stop()  # a stop asked while the engine was silent (reading a long prompt)
        if self.stopped is not None:
            raise self.stopped

    # -- what the worktime reads --------------------------------------------------------------
    @property
    def text(self) -> str:
        return "".join(self.parts)

    def summary(self) -> dict[str, Any]:
        """Token counts and timings (ms): the engine's where it reports them, else measured here."""
        end = self.last_at or time.monotonic()
        prompt_ms = self.prompt_ms
        if prompt_ms is None and self.first_at is not None:
            prompt_ms = (self.first_at - self.started) * 1000
        generate_ms = self.generate_ms
        if generate_ms is None and self.first_at is not None:
            generate_ms = (end - self.first_at) * 1000
        generated = self.generated_tokens if self.generated_tokens is not None else self.pieces
        return {
            "done_reason": self.done_reason or ("length" if generated >= self.num_predict else "stop"),
            "tokens": {"prompt": self.prompt_tokens, "generated": generated},
            "timings": {"prompt_ms": _round(prompt_ms), "generate_ms": _round(generate_ms),
                        "total_ms": _round((time.monotonic() - self.started) * 1000),
                        "tokens_per_second": _round(generated / (generate_ms / 1000)) if generate_ms else None},
        }


def _int(value: Any, default: int | None) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _float(value: Any, default: float | None) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
