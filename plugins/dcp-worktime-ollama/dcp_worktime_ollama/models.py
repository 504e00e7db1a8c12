"""The models a worker serves, by name, and what it advertises about each.

``catalog(config)`` lists them: the GGUF files given with ``--model`` (embedded llama.cpp) and the
models of the server at ``--ollama-host`` (all of them, or those named by ``--ollama-models``).
A name both provide is served by the GGUF file (no network needed). The capabilities built from
it let a job ask for a model with ``requirements={"ollama": {"models": {"gemma3:270m": True}}}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import Config

#: The three ways a model is run: in the evaluator, or on a server speaking Ollama's or OpenAI's API.
EMBEDDED, NATIVE, OPENAI = "llama.cpp", "ollama", "openai"


@dataclass(frozen=True)
class ServedModel:
    """One model this worker serves. ``name`` is what jobs ask for; ``target`` what the backend calls
    it (a GGUF path, or the server's own model name)."""

    name: str
    backend: str
    target: str
    digest: str | None = None
    parameter_size: str | None = None
    quantization: str | None = None
    context_length: int | None = None
    family: str | None = None

    def capability(self) -> dict[str, Any]:
        """What the scheduler sees about it (plain values only; unknown ones left out)."""
        info = {"backend": self.backend, "digest": self.digest, "parameter_size": self.parameter_size,
                "quantization": self.quantization, "context_length": self.context_length, "family": self.family}
        return {k: v for k, v in info.items() if v not in (None, "")}


class ModelsUnavailable(Exception):
    """No model can be served with this configuration; the message says why and what to do."""


def embedded_models(config: Config) -> dict[str, ServedModel]:
    """The GGUF files of ``--model``, read (header only) and hashed (cached); ``ModelsUnavailable``
    naming the file when one cannot be used."""
    import os

    from .gguf import GgufError, file_digest, read_gguf

    out: dict[str, ServedModel] = {}
    for name, path in config.ggufs:
        if not os.path.isfile(path):
            raise ModelsUnavailable(f"--model {path}: no such file; give the path of a .gguf model file")
        try:
            info = read_gguf(path)
            digest = file_digest(path)
        except (GgufError, OSError) as e:
            raise ModelsUnavailable(f"--model {path}: {e}") from None
        for alias in ([name] if name else info.names):
            out.setdefault(alias, ServedModel(alias, EMBEDDED, os.path.abspath(path), digest, info.parameter_size,
                                              info.quantization, info.context_length or None, info.architecture or None))
    return out


def catalog(config: Config, timeout: float = 3.0) -> dict[str, ServedModel]:
    """Every model this worker serves, by name; ``ModelsUnavailable`` saying why when none."""
    from .server import ServerUnavailable, server_models

    models = embedded_models(config) if config.ggufs else {}
    try:
        served = server_models(config, timeout)
    except ServerUnavailable as e:
        if config.host is not None or not models:  # an owner's explicit server must work
            hint = "" if config.host is not None else (
                "; or run models without a server: --model path/to/model.gguf")
            raise ModelsUnavailable(f"{e}{hint}") from None
        served = {}
    for name, model in served.items():
        models.setdefault(name, model)
    if not models:
        raise ModelsUnavailable("no model to serve: the server lists none of the names given with --ollama-models "
                                f"({', '.join(config.server_models or ())}); check the names with 'ollama list'")
    return models


def capabilities(models: dict[str, ServedModel], config: Config) -> dict[str, Any]:
    """``{"ollama": {"models": {name: info}, "digests": {digest: True}, "backends": {...}, caps}}``."""
    return {"ollama": {
        "models": {name: m.capability() for name, m in sorted(models.items())},
        "digests": {m.digest: True for m in models.values() if m.digest},
        "backends": {m.backend: True for m in models.values()},
        "max_num_predict": config.max_num_predict,
        "max_ctx": config.max_ctx,
    }}
