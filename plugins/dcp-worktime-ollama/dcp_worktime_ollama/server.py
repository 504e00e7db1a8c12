"""Server backends: Ollama's native API (the official ``ollama`` client) and OpenAI-compatible servers.

``--ollama-host`` names the server. Its API is detected (``GET /api/version`` answers on Ollama;
``GET /v1/models`` on llama.cpp's ``llama-server`` and other OpenAI-compatible servers) unless
``--ollama-api`` says which. Either way the worker only **uses** the models the server has: it
never pulls one (a job naming a model the server lacks is given back, ``ENOWORKTIME``).

Generation streams. Stopping a slice (cancelled, or past its wall time) closes the HTTP stream,
and both Ollama and llama.cpp's server stop generating when their client disconnects (checked in
the tests: the server's CPU goes idle and its next request is served at once).
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from dcp_worktimes.errors import ErrorCode, SliceError, WorkError

from . import oai
from .config import Config
from .generation import Generation
from .gguf import parameter_size
from .models import NATIVE, OPENAI, ServedModel
from .work import Rendered, Work


class ServerUnavailable(Exception):
    """The server does not answer, or has nothing to serve; the message says which and how to fix it."""


def base_url(host: str) -> str:
    """``host`` as a URL the way the ollama client reads ``OLLAMA_HOST`` (no scheme: http, port 11434).

    >>> base_url("127.0.0.1"), base_url("http://127.0.0.1:8080/"), base_url(":5000")
    ('http://127.0.0.1:11434', 'http://127.0.0.1:8080', 'http://127.0.0.1:5000')
    """
    host = host.strip()
    scheme_given = "://" in host
    parts = urlsplit(host if scheme_given else f"http://{host}")
    hostname = parts.hostname or "127.0.0.1"
    if ":" in hostname:
        hostname = f"[{hostname}]"
    port = parts.port or (None if scheme_given else 11434)
    netloc = f"{hostname}:{port}" if port else hostname
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


def api_key() -> str:
    """The bearer token servers may require (``OLLAMA_API_KEY``, as the ollama client reads it)."""
    return os.environ.get("OLLAMA_API_KEY") or "none"


def detect_api(config: Config, timeout: float) -> str:
    """``native`` or ``openai`` (``ServerUnavailable`` when neither answers)."""
    import httpx

    url = base_url(config.server_url)
    if config.api != "auto":
        return config.api
    try:
        with httpx.Client(timeout=timeout, headers={"Authorization": f"Bearer {api_key()}"}) as client:
            r = client.get(f"{url}/api/version")
            if r.status_code == 200 and "version" in _json(r):
                return "native"
            r = client.get(f"{url}/v1/models")
            if r.status_code == 200 and "data" in _json(r):
                return "openai"
            raise ServerUnavailable(f"the server at {url} is neither Ollama (/api/version) nor OpenAI-compatible "
                                    f"(/v1/models answered {r.status_code}); check --ollama-host")
    except httpx.HTTPError as e:
        raise ServerUnavailable(f"no Ollama server answers at {url} ({type(e).__name__}: {e or 'no answer'}); "
                                "start one ('ollama serve') or point --ollama-host / OLLAMA_HOST at it") from None


def _json(response: Any) -> dict:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def server_models(config: Config, timeout: float = 3.0) -> dict[str, ServedModel]:
    """The server's models this worker serves (``--ollama-models`` filters them)."""
    api = detect_api(config, timeout)
    url = base_url(config.server_url)
    try:
        found = _list_native(url, timeout) if api == "native" else _list_openai(url, timeout)
    except ServerUnavailable:
        raise
    except Exception as e:  # the clients' own errors: connection, HTTP status, bad JSON
        raise ServerUnavailable(f"listing the models of the server at {url} failed: {type(e).__name__}: {e}") from None
    if config.server_models is not None:
        missing = [n for n in config.server_models if n not in found]
        if missing:
            have = ", ".join(sorted(found)) or "none"
            raise ServerUnavailable(f"--ollama-models names {', '.join(missing)}, which the server at {url} does not "
                                    f"have (it has: {have}); pull it there ('ollama pull {missing[0]}') or fix the list")
        found = {n: found[n] for n in config.server_models}
    if not found:
        raise ServerUnavailable(f"the server at {url} has no models; pull one there ('ollama pull gemma3:270m')")
    return found


def _list_native(url: str, timeout: float) -> dict[str, ServedModel]:
    import ollama

    client = ollama.Client(host=url, timeout=timeout)
    out: dict[str, ServedModel] = {}
    for m in client.list().models:
        if not m.model:
            continue
        details = m.details
        context = None
        try:  # the context length is only in /api/show's model_info: "<architecture>.context_length"
            info = client.show(m.model).modelinfo or {}
            context = info.get(f"{info.get('general.architecture')}.context_length")
        except Exception:  # noqa: BLE001 - an old server without model_info: advertise without it
            pass
        model = ServedModel(m.model, NATIVE, m.model, m.digest, getattr(details, "parameter_size", None),
                            getattr(details, "quantization_level", None),
                            int(context) if isinstance(context, int) else None, getattr(details, "family", None))
        out[m.model] = model
        if m.model.endswith(":latest"):  # Ollama resolves "gemma3" to "gemma3:latest"
            out.setdefault(m.model.removesuffix(":latest"), model)
    return out


def _list_openai(url: str, timeout: float) -> dict[str, ServedModel]:
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=api_key(), max_retries=0, timeout=timeout)
    out: dict[str, ServedModel] = {}
    for m in client.models.list().data:
        extra = m.model_dump()
        meta = extra.get("meta") if isinstance(extra.get("meta"), dict) else {}  # llama.cpp's server says more
        params = meta.get("n_params")
        size = parameter_size(params) if isinstance(params, int) else None
        ctx = meta.get("n_ctx_train")
        out[m.id] = ServedModel(m.id, OPENAI, m.id, None, size, meta.get("ftype"), ctx if isinstance(ctx, int) else None)
    return out


class ServerBackend:
    """Generation on a server, one streamed request per slice (``native`` or ``openai`` API)."""

    def __init__(self, config: Config, model: ServedModel, num_ctx: int | None) -> None:
        self.model = model
        self.url = base_url(config.server_url)
        self.num_ctx = num_ctx
        # No read timeout: a slice's wall-time limit bounds the wait (the host kills a stalled
        # evaluator, which closes the connection); a dead server is found by the connect timeout.
        # Each client takes its own HTTP library's Timeout (ollama: httpx; openai 1.x: httpx, 2.x
        # and later: httpx2, re-exported as openai.Timeout): one library's object fails the other.
        if model.backend == NATIVE:
            import httpx
            import ollama

            self.client: Any = ollama.Client(host=self.url, timeout=httpx.Timeout(None, connect=10.0))
            self._preload()
        else:
            import openai

            self.client = openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key(), max_retries=0,
                                        timeout=openai.Timeout(None, connect=10.0))

    def _preload(self) -> None:
        """Load the model into the server's memory now (an empty prompt does only that), so the
        first slice does not wait for it without progress. A missing model is this worker's lack."""
        import ollama

        try:
            self.client.generate(model=self.model.target, prompt="", stream=False,
                                 options={"num_ctx": self.num_ctx} if self.num_ctx else None)
        except ollama.ResponseError as e:
            code = ErrorCode.ENOWORKTIME if e.status_code == 404 else ErrorCode.EBADWORK
            raise WorkError(f"the Ollama server at {self.url} cannot load {self.model.target}: {e.error}", code=code) from None
        except ConnectionError as e:
            raise WorkError(f"the Ollama server at {self.url} does not answer: {e}", code=ErrorCode.ENOWORKTIME) from None

    def generate(self, work: Work, rendered: Rendered, gen: Generation) -> None:
        try:
            if self.model.backend == NATIVE:
                self._native(work, rendered, gen)
            else:
                self._openai(work, rendered, gen)
        except SliceError:
            raise
        except Exception as e:
            raise _server_error(e, self.url) from None

    def _native(self, work: Work, rendered: Rendered, gen: Generation) -> None:
        options = {k: v for k, v in work.options.items()}
        options["num_predict"] = work.num_predict
        if self.num_ctx:
            options["num_ctx"] = self.num_ctx
        fmt = work.format if work.format is not None else None
        if rendered.messages is not None:
            stream = self.client.chat(model=self.model.target, messages=rendered.messages, format=fmt, options=options,
                                      stream=True)
        else:
            stream = self.client.generate(model=self.model.target, prompt=rendered.prompt, system=rendered.system,
                                          raw=work.raw or None, format=fmt, options=options, stream=True)
        try:
            for part in stream:
                text = part.message.content if rendered.messages is not None else part.response
                if (text and gen.piece(text)) or (not text and not part.done and gen.waiting()):
                    return  # closing the stream (finally) makes Ollama stop generating
                if part.done:
                    gen.finish(part.done_reason, part.prompt_eval_count, part.eval_count,
                               _ms(part.prompt_eval_duration), _ms(part.eval_duration))
        finally:
            stream.close()

    def _openai(self, work: Work, rendered: Rendered, gen: Generation) -> None:
        endpoint, body = oai.request(work, rendered, self.model.target)
        body.pop("stream")
        model = body.pop("model")
        if endpoint == "chat":
            stream = self.client.chat.completions.create(model=model, messages=body.pop("messages"), stream=True,
                                                         extra_body=body)
        else:
            stream = self.client.completions.create(model=model, prompt=body.pop("prompt"), stream=True, extra_body=body)
        try:
            for chunk in stream:
                if oai.feed(chunk.model_dump(exclude_none=True), gen):
                    return  # closing the stream (finally) makes the server stop generating
        finally:
            stream.close()

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a client that failed to open
            pass


def _ms(ns: Any) -> float | None:
    return ns / 1e6 if isinstance(ns, (int, float)) else None


def _server_error(e: Exception, url: str) -> SliceError:
    """A client's exception as a slice error. A server that stopped answering is this worker's
    fault (the slice goes back to the scheduler); a refusal carries the server's own reason (too
    long a prompt, a bad option ...)."""
    import httpx
    import openai

    status = getattr(e, "status_code", None)
    message = getattr(e, "error", None) or getattr(e, "message", None) or str(e) or type(e).__name__
    if isinstance(e, (ConnectionError, httpx.TransportError, openai.APIConnectionError)):
        return SliceError(f"the server at {url} stopped answering ({type(e).__name__}: {message})",
                          code=ErrorCode.ECRASH, worker_fault=True)
    if isinstance(status, int) and status >= 500:
        return SliceError(f"the server at {url} failed (HTTP {status}): {message}", code=ErrorCode.ECRASH)
    return SliceError(f"the server at {url} refused the request: {message}", code=ErrorCode.EUNCAUGHT,
                      name=type(e).__name__)
