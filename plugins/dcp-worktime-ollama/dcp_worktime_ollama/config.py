"""The worker owner's settings for the ``ollama`` worktime, and the models they make this worker serve.

Each setting is a ``dcp-worker --NAME VALUE`` flag (``Worktime.settings``); without the flag it is
read from the environment, so a deployer running a job on their own machine
(``compute.for_(...).exec()``, which passes no flags) configures it the same way::

    dcp-worker --worktime ollama --ollama-host http://127.0.0.1:11434 --ollama-models gemma3:270m
    DCP_OLLAMA_MODEL=./models/gemma3-270m-q4_k_m.gguf python classify.py

>>> Config.from_settings({"model": "tiny=/m/a.gguf", "max-num-predict": "64"}, env={}).ggufs
(('tiny', '/m/a.gguf'),)
>>> Config.from_settings({"max-prompt": "lots"}, env={})
Traceback (most recent call last):
ValueError: --max-prompt: cannot read 'lots' as a size; write it like 128MB, 1GiB or 4096B
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

from dcp_worktimes.limits import parse_size

DEFAULT_HOST = "http://127.0.0.1:11434"

SETTINGS = {
    "ollama-host": "URL of the Ollama server (or an OpenAI-compatible one, e.g. llama.cpp's) to run models on "
                   f"(default: $OLLAMA_HOST, else {DEFAULT_HOST} if something answers there)",
    "ollama-api": "how to talk to that server: native (Ollama's /api) or openai (/v1); default: detected",
    "ollama-models": "comma-separated names of the server's models this worker serves (default: all it has); "
                     "a job never makes the worker pull a model",
    "model": "GGUF file(s) for the embedded llama.cpp backend (no server needed): PATH or NAME=PATH, "
             "comma-separated",
    "llama-threads": "CPU threads per evaluator of the embedded backend (default 1: one evaluator per core)",
    "max-num-predict": "the most tokens one slice may generate (default 2048)",
    "max-prompt": "the largest prompt one slice may send, e.g. 64KB (default 256KB)",
    "max-ctx": "the largest context window (options.num_ctx) a job may ask for (default 8192)",
}
DEFAULTS = {"llama-threads": 1, "max-num-predict": 2048, "max-prompt": 256 * 1024, "max-ctx": 8192}


def env_name(setting: str) -> str:
    """The environment variable a setting falls back to: ``OLLAMA_HOST``, else ``DCP_OLLAMA_<NAME>``.

    >>> env_name("ollama-host"), env_name("model"), env_name("ollama-models")
    ('OLLAMA_HOST', 'DCP_OLLAMA_MODEL', 'DCP_OLLAMA_MODELS')
    """
    if setting == "ollama-host":
        return "OLLAMA_HOST"
    return "DCP_OLLAMA_" + setting.removeprefix("ollama-").upper().replace("-", "_")


@dataclass(frozen=True)
class Config:
    """The settings, checked. ``host`` is ``None`` when none was given (the default is then tried
    quietly: a worker without Ollama is fine if it has a GGUF file)."""

    host: str | None = None
    api: str = "auto"
    server_models: tuple[str, ...] | None = None
    ggufs: tuple[tuple[str | None, str], ...] = ()
    threads: int = 1
    max_num_predict: int = 2048
    max_prompt: int = 256 * 1024
    max_ctx: int = 8192

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None, env: Mapping[str, str] | None = None) -> "Config":
        """``ValueError`` naming the flag when a value is unusable."""
        env = os.environ if env is None else env
        given = {k: v for k, v in (settings or {}).items() if k in SETTINGS and v is not None}
        raw = {name: given.get(name, env.get(env_name(name))) for name in SETTINGS}
        raw = {k: v for k, v in raw.items() if v not in (None, "")}

        api = str(raw.get("ollama-api", "auto")).strip().lower()
        if api not in ("auto", "native", "openai"):
            raise ValueError(f"--ollama-api must be native or openai, got {raw['ollama-api']!r}")
        names = raw.get("ollama-models")
        ggufs = []
        for item in _items(raw.get("model")):
            name, sep, path = item.rpartition("=")
            ggufs.append((name.strip() or None, os.path.expanduser(path.strip())) if sep else (None, os.path.expanduser(item)))
        return cls(
            host=str(raw["ollama-host"]).strip() if "ollama-host" in raw else None,
            api=api,
            server_models=None if names is None else tuple(_items(names)),
            ggufs=tuple(ggufs),
            threads=_count(raw, "llama-threads", 1),
            max_num_predict=_count(raw, "max-num-predict", 1),
            max_prompt=_size(raw, "max-prompt"),
            max_ctx=_count(raw, "max-ctx", 16),
        )

    @property
    def server_url(self) -> str:
        return self.host or DEFAULT_HOST


def _items(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _count(raw: Mapping[str, Any], name: str, lowest: int) -> int:
    value = raw.get(name, DEFAULTS[name])
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError(f"--{name} must be a whole number, got {value!r}") from None
    if number < lowest:
        raise ValueError(f"--{name} must be at least {lowest}, got {number}")
    return number


def _size(raw: Mapping[str, Any], name: str) -> int:
    value = raw.get(name, DEFAULTS[name])
    size = parse_size(value, f"--{name}")
    if size is None:
        raise ValueError(f"--{name} must be a size such as 64KB (a prompt cap cannot be 'none')")
    return size
