"""The embedded backend: a GGUF model run by llama.cpp inside the evaluator (``xllamacpp``).

Chosen over ``llama-cpp-python`` after measuring both on this 2-core machine (README): the same
generation speed (~48 tokens/s for gemma3 270M on one thread), but ``xllamacpp`` installs as a
prebuilt wheel in seconds where ``llama-cpp-python`` compiles for 10-25 minutes, and it embeds
llama.cpp's own server logic: the same OpenAI-compatible requests as the HTTP path, a streaming
callback that stops generation the moment it returns ``True``, thread safety.

The model is loaded once per job (``prepare``), after which its weights are resident, so the
host's memory watchdog (which measures above the footprint after ``prepare``) only counts what a
slice adds: the KV cache it fills and the compute buffers. ``xllamacpp.Server`` always opens an
HTTP listener; ours is a Unix socket whose path is removed at once, so nothing can connect to it
and the evaluator needs no network for this backend.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from dcp_worktimes.errors import ErrorCode, SliceError, WorkError

from . import oai
from .generation import Generation
from .models import ServedModel
from .work import Rendered, Work


def quiet_openmp() -> None:
    """Idle OpenMP threads sleep instead of spinning (a spinning pool starves the other evaluators
    on a shared machine: ~10x slower). libgomp reads this when it is loaded, so call it before
    importing xllamacpp; an owner's own ``OMP_WAIT_POLICY`` wins."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def missing() -> str | None:
    """Why the embedded backend cannot run here (``None`` if it can), without importing it."""
    import importlib.util

    if importlib.util.find_spec("xllamacpp") is None:
        return "the embedded llama.cpp backend needs xllamacpp: pip install 'xllamacpp>=2026.10'"
    return None


class EmbeddedBackend:
    """One GGUF model loaded in this process, serving one slice at a time."""

    def __init__(self, model: ServedModel, num_ctx: int, threads: int) -> None:
        quiet_openmp()
        import xllamacpp as xlc

        self.model = model
        p = xlc.CommonParams()
        p.model.path = model.target
        p.model_alias = {model.name}
        p.n_ctx = num_ctx
        p.n_parallel = 1  # one slice at a time per evaluator: the host runs one evaluator per core
        p.cpuparams.n_threads = threads
        p.cpuparams_batch.n_threads = threads
        p.cache_ram_mib = 0  # no prompt cache across requests (see oai.py: determinism)
        p.warmup = True
        p.fit_params = False  # sizing layers to a GPU's memory: a CPU has none, and it doubles the load time
        p.verbosity = 1  # errors only (they reach the evaluator's stderr, quoted in crash reports)
        p.ui = False
        p.n_threads_http = 1
        p.endpoint_slots = False
        self._dir = tempfile.mkdtemp(prefix="dcp-ollama-")
        p.hostnames = [os.path.join(self._dir, "llama.sock")]
        try:
            self.server = xlc.Server(p)
        except RuntimeError as e:
            self._cleanup()
            raise WorkError(f"llama.cpp could not load {model.target} with a context of {num_ctx} tokens ({e}); "
                            "check the GGUF file, or ask for a smaller options.num_ctx", code=ErrorCode.ENOWORKTIME) from None
        self._cleanup()  # the listener keeps its socket; without a path nobody can connect to it

    def _cleanup(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def generate(self, work: Work, rendered: Rendered, gen: Generation) -> None:
        endpoint, body = oai.request(work, rendered, self.model.name)
        errors: list[str] = []

        def on_chunk(chunk: Any) -> bool:
            # Runs on this thread, inside handle_*completions; returning True stops generation at once.
            if not isinstance(chunk, dict):
                return False
            message = oai.error_of(chunk)
            if message is not None:
                errors.append(message)
                return True
            return oai.feed(chunk, gen)

        handle = self.server.handle_chat_completions if endpoint == "chat" else self.server.handle_completions
        handle(body, on_chunk)
        if errors and gen.stopped is None:
            hint = " (the context window is work.options.num_ctx)" if "context size" in errors[0] else ""
            raise SliceError(f"llama.cpp refused the request: {errors[0]}{hint}", code=ErrorCode.EUNCAUGHT,
                             name="LlamaError")

    def close(self) -> None:
        server, self.server = getattr(self, "server", None), None
        del server  # the destructor stops llama.cpp's loop and frees the model
