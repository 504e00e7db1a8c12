"""Requests and streamed chunks in the OpenAI-compatible dialect llama.cpp speaks.

Used twice with the very same dicts: in-process by the embedded backend (xllamacpp's
``handle_completions`` takes the body and calls back with each chunk) and over HTTP by the
``openai`` server backend (llama.cpp's ``llama-server``, Ollama's ``/v1``, any compatible server).

* ``raw`` prompts go to ``/v1/completions`` (the text as is); templated prompts and chat messages
  to ``/v1/chat/completions`` (the model's chat template), as Ollama's ``/api/generate`` and
  ``/api/chat`` do;
* Ollama's option names become llama.cpp's (``num_predict`` → ``max_tokens``); options the work
  leaves out get **Ollama's documented defaults** (temperature 0.8, top_k 40, top_p 0.9,
  repeat_penalty 1.1 ...), so one work means the same sampling on every backend;
* the prompt cache is off (``cache_prompt: false``): llama.cpp's own documentation says reusing a
  cached prefix can change the logits, and a slice must not depend on what its evaluator ran before;
* ``return_progress`` makes llama.cpp stream chunks while it reads a long prompt, which keep the
  no-progress watchdog fed.
"""

from __future__ import annotations

from typing import Any, Mapping

from .generation import Generation
from .work import Rendered, Work

#: Ollama's defaults for the sampling options (api/types.go DefaultOptions), applied when absent.
OLLAMA_DEFAULTS = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.0, "typical_p": 1.0,
                   "repeat_penalty": 1.1, "repeat_last_n": 64, "presence_penalty": 0.0, "frequency_penalty": 0.0}
_RENAMED = {"num_predict": "max_tokens"}
_LOAD_TIME = {"num_ctx"}  # a context size is chosen when the model is loaded, not per request


def schema_of(fmt: str | Mapping[str, Any] | None) -> dict | None:
    """The JSON schema a ``format`` asks for (Ollama's ``"json"`` means any JSON object)."""
    if fmt is None:
        return None
    return {"type": "object"} if fmt == "json" else dict(fmt)


def request(work: Work, rendered: Rendered, model: str) -> tuple[str, dict[str, Any]]:
    """``(endpoint, body)``: endpoint ``"chat"`` or ``"completions"`` and the streaming request body."""
    body: dict[str, Any] = {"model": model, "stream": True, "stream_options": {"include_usage": True},
                            "cache_prompt": False, "return_progress": True}
    for name, default in OLLAMA_DEFAULTS.items():
        body[name] = work.options.get(name, default)
    for name, value in work.options.items():
        if name not in _LOAD_TIME:
            body[_RENAMED.get(name, name)] = value
    body["max_tokens"] = work.num_predict
    schema = schema_of(work.format)
    if schema is not None:
        body["json_schema"] = schema  # llama.cpp: the grammar that constrains sampling
    if rendered.messages is None and work.raw:
        body["prompt"] = rendered.prompt
        return "completions", body
    messages = rendered.messages
    if messages is None:
        messages = ([{"role": "system", "content": rendered.system}] if rendered.system is not None else [])
        messages.append({"role": "user", "content": rendered.prompt or ""})
    body["messages"] = messages
    if schema is not None:  # the standard way, for servers that do not read json_schema (Ollama's /v1)
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "format", "schema": schema}}
    return "chat", body


def error_of(chunk: Mapping[str, Any]) -> str | None:
    """The error message of an error chunk (llama.cpp sends ``{"error": {...}}`` or ``{"code", "message"}``)."""
    err = chunk.get("error")
    if isinstance(err, Mapping):
        return str(err.get("message") or err)
    if err:
        return str(err)
    if "code" in chunk and "message" in chunk and "choices" not in chunk:
        return str(chunk["message"])
    return None


def feed(chunk: Mapping[str, Any], gen: Generation) -> bool:
    """Feed one streamed chunk to ``gen``; True: stop the stream now."""
    stop = False
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta")
        text = (delta.get("content") if isinstance(delta, Mapping) else None) if "delta" in choice else choice.get("text")
        if text:
            stop = gen.piece(text) or stop
        if choice.get("finish_reason"):
            gen.finish(str(choice["finish_reason"]))
    usage, timings = chunk.get("usage"), chunk.get("timings")
    if isinstance(usage, Mapping) or isinstance(timings, Mapping):
        usage = usage if isinstance(usage, Mapping) else {}
        timings = timings if isinstance(timings, Mapping) else {}
        prompt = usage.get("prompt_tokens")
        gen.finish(None, prompt_tokens=prompt, generated_tokens=usage.get("completion_tokens"),
                   prompt_ms=timings.get("prompt_ms"), generate_ms=timings.get("predicted_ms"))
    if chunk.get("prompt_progress") is not None:
        stop = gen.waiting() or stop
    return stop
