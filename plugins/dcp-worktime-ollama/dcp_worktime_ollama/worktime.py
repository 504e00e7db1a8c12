"""The ``ollama`` worktime: each slice fills a prompt template with its datum and runs a language model.

Work is **data, not code** (see ``work.py``): a model name, a prompt template or chat messages,
a system prompt, options, an answer format. The worker serves models on one of two backends:

* an **Ollama server** (``--ollama-host``; the official ``ollama`` client, streaming) or any
  OpenAI-compatible server such as llama.cpp's (``--ollama-api openai``, detected by default);
* the **embedded** llama.cpp (``--model path.gguf``; ``xllamacpp``), for workers without a server.

Every slice returns the same shape, whatever the backend::

    {"text": " Paris", "model": "gemma3:270m", "digest": "sha256:a5fd...", "backend": "llama.cpp",
     "done_reason": "length", "tokens": {"prompt": 6, "generated": 2},
     "timings": {"prompt_ms": 71.4, "generate_ms": 45.2, "total_ms": 120.9, "tokens_per_second": 44.2}}

plus ``"json"`` (the parsed answer) when the work asked for a ``format``; ``"return": "text"``
makes a slice return just the text (or the parsed answer). Example::

    from dcp_worktimes import compute
    job = compute.for_(["The card was charged twice", "The app crashes"],
                       {"model": "gemma3:270m", "prompt": "Ticket: {datum}\\nCategory:", "raw": True,
                        "options": {"temperature": 0, "num_predict": 3, "stop": ["\\n"]}},
                       worktime="ollama")
    job.exec()
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from dcp_worktimes.errors import ErrorCode, SliceError, WorkError
from dcp_worktimes.worktime import CapturedWork, JobSpec, Probe, SliceContext, Worktime

from .config import SETTINGS, Config
from .generation import Generation
from .work import Work


class OllamaWorktime(Worktime):
    """LLM inference per slice: a prompt template over the inputs, on Ollama or an embedded llama.cpp."""

    name = "ollama"
    version = "1.0.0"
    capabilities = {"ollama": {}}
    # The engine stops generation itself at the wall-time limit (and on cancel), keeping the
    # evaluator and its loaded model; every other limit is the host's. "prepare": the work is data
    # (parsed under size caps), and what prepare spends time and memory on is loading the model the
    # worker's owner chose, so the job's limits do not bound it (the worker's prepare budget does).
    enforces = frozenset({"wall_time", "prepare"})
    # Evaluators reach a server on this machine (or the owner's network) when one is configured.
    network = True
    description = "LLM inference: a prompt template over the inputs, on an Ollama server or an embedded llama.cpp"
    options: Mapping[str, str] = {}  # everything is in the work (see work.py)
    settings = SETTINGS

    # -- deployer side ----------------------------------------------------------------------------
    @classmethod
    def capture_work(cls, work: Any) -> CapturedWork:
        """A dict (or its JSON text, or a path to a .json file) → the work's canonical JSON text.

        >>> OllamaWorktime.capture_work({"prompt": "{datum}?", "model": "gemma3:270m"}).work
        '{"model":"gemma3:270m","prompt":"{datum}?"}'
        """
        if isinstance(work, Mapping):
            parsed = Work.parse(work)
            return CapturedWork(parsed.canonical(), origin=f"a request for {parsed.model}")
        try:
            captured = super().capture_work(work)
        except WorkError:
            raise WorkError(f"the ollama worktime takes its work as a dict such as {{\"model\": \"gemma3:270m\", "
                            f"\"prompt\": \"... {{datum}}\"}}, got {type(work).__name__}") from None
        parsed = Work.parse(captured.work)
        return CapturedWork(parsed.canonical(), origin=f"a request for {parsed.model} ({captured.origin})")

    @classmethod
    def validate(cls, job: JobSpec) -> None:
        super().validate(job)
        Work.parse(job.work)

    # -- worker side ------------------------------------------------------------------------------
    @classmethod
    def probe(cls, config: Mapping[str, Any]) -> Probe:
        """Available when at least one model can be served: the GGUF files of ``--model`` (with
        xllamacpp installed) and/or the models of the server at ``--ollama-host``."""
        from .embedded import missing
        from .models import ModelsUnavailable, capabilities, catalog

        try:
            cfg = Config.from_settings(config)
        except ValueError as e:
            return Probe({}, unavailable=str(e))
        if cfg.ggufs and (why := missing()):
            return Probe({}, unavailable=why)
        try:
            models = catalog(cfg)
        except ModelsUnavailable as e:
            return Probe({}, unavailable=str(e))
        return Probe(capabilities(models, cfg))

    @classmethod
    def preload(cls) -> None:
        """In the zygote: import llama.cpp (no threads start until a model is loaded)."""
        from .embedded import missing, quiet_openmp

        quiet_openmp()
        if missing() is None:
            import xllamacpp  # noqa: F401  (imported for the forked evaluators)

    def __init__(self) -> None:
        self.job: JobSpec | None = None
        self.work: Work | None = None
        self.backend: Any = None
        self.served: Any = None
        self.cfg: Config | None = None

    def prepare(self, job: JobSpec) -> None:
        """Check the work against this worker's caps, find its model, and load it (embedded) or make
        the server load it (Ollama), so the first slice does not pay for it."""
        from .models import EMBEDDED, ModelsUnavailable, catalog, embedded_models

        self.release()
        self.job = job
        work = Work.parse(job.work)
        try:
            cfg = Config.from_settings(self.config)
        except ValueError as e:
            raise WorkError(f"this worker's ollama settings are unusable: {e}", code=ErrorCode.ENOWORKTIME) from None
        if work.num_predict > cfg.max_num_predict:
            raise WorkError(f"the work asks for up to {work.num_predict} tokens per slice (options.num_predict); this "
                            f"worker allows at most {cfg.max_num_predict} (its owner sets that with dcp-worker "
                            "--max-num-predict)", code=ErrorCode.ENOWORKTIME)
        try:  # the GGUF files first: finding a model there needs no server
            models = embedded_models(cfg) if cfg.ggufs else {}
            if work.model not in models:
                models = catalog(cfg)
        except ModelsUnavailable as e:
            raise WorkError(f"this worker cannot serve models now: {e}", code=ErrorCode.ENOWORKTIME) from None
        served = models.get(work.model)
        if served is None:
            names = ", ".join(sorted(models)) or "none"
            raise WorkError(f"this worker does not serve the model {work.model!r} (it serves: {names}); deploy with "
                            f"requirements={{'ollama': {{'models': {{{work.model!r}: True}}}}}} so that only workers "
                            "that have it take the job", code=ErrorCode.ENOWORKTIME)
        num_ctx = work.options.get("num_ctx")
        if num_ctx is not None and num_ctx > cfg.max_ctx:
            raise WorkError(f"the work asks for a context of {num_ctx} tokens (options.num_ctx); this worker allows at "
                            f"most {cfg.max_ctx} (dcp-worker --max-ctx)", code=ErrorCode.ENOWORKTIME)
        if num_ctx is not None and served.context_length and num_ctx > served.context_length:
            raise WorkError(f"options.num_ctx={num_ctx} is more than {work.model}'s context of "
                            f"{served.context_length} tokens")
        if served.backend == EMBEDDED:
            from .embedded import EmbeddedBackend

            default_ctx = min(4096, cfg.max_ctx, served.context_length or 4096)
            self.backend = EmbeddedBackend(served, num_ctx or default_ctx, cfg.threads)
        else:
            from .server import ServerBackend

            self.backend = ServerBackend(cfg, served, num_ctx)
        self.work, self.served, self.cfg = work, served, cfg

    def execute(self, ctx: SliceContext, datum: Any) -> Any:
        work, cfg = self.work, self.cfg
        if work is None or cfg is None or self.backend is None:
            raise SliceError("execute() before prepare()", code=ErrorCode.ECRASH)
        rendered = work.render(datum)
        if rendered.size > cfg.max_prompt:
            raise SliceError(f"this slice's prompt is {rendered.size} bytes, more than the {cfg.max_prompt} this "
                             "worker accepts (its owner sets that with dcp-worker --max-prompt); send shorter texts",
                             code=ErrorCode.EUNCAUGHT, name="PromptTooLong")
        gen = Generation(ctx, work.num_predict)
        gen.waiting()
        self.backend.generate(work, rendered, gen)
        gen.raise_if_stopped()
        text = gen.text
        parsed: Any = None
        if work.format is not None:
            try:
                parsed = json.loads(text)
            except ValueError:
                summary = gen.summary()
                why = (f"; it stopped at options.num_predict={work.num_predict} tokens, raise it"
                       if summary["done_reason"] == "length" else "")
                raise SliceError(f"the model's answer is not valid JSON{why}: {text[:200]!r}", code=ErrorCode.EUNCAUGHT,
                                 name="FormatError") from None
        if work.returns == "text":
            return parsed if work.format is not None else text
        result: dict[str, Any] = {"text": text}
        if work.format is not None:
            result["json"] = parsed
        result.update(model=work.model, digest=self.served.digest, backend=self.served.backend, **gen.summary())
        return result

    def release(self) -> None:
        backend, self.backend = self.backend, None
        if backend is not None:
            backend.close()
        self.job = self.work = self.served = self.cfg = None
