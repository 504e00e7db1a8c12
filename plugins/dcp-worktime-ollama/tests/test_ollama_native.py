"""The native Ollama API (``/api/generate``, ``/api/chat``), against a real Ollama server.

No Ollama server can be installed on this project's machines (only client libraries are on the
registries), so this tier runs where one exists::

    OLLAMA_TEST_HOST=http://127.0.0.1:11434 OLLAMA_TEST_MODEL=gemma3:270m python -m pytest plugins/dcp-worktime-ollama

(the model must be pulled there first: ``ollama pull gemma3:270m``). Without ``OLLAMA_TEST_HOST``
every test here is skipped, saying so; none is faked.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time

import pytest

from dcp_worktimes.limits import Limits
from dcp_worktimes.runner import EvaluatorPool
from dcp_worktimes.testing import Sample, WorktimeConformance, run
from dcp_worktimes.worktime import JobSpec
from dcp_worktime_ollama import OllamaWorktime

from llm_helpers import hostile

HOST = os.environ.get("OLLAMA_TEST_HOST")
MODEL = os.environ.get("OLLAMA_TEST_MODEL", "gemma3:270m")

pytestmark = pytest.mark.skipif(
    not HOST, reason="set OLLAMA_TEST_HOST=http://HOST:11434 to a real Ollama (with OLLAMA_TEST_MODEL pulled, default "
                     "gemma3:270m) to run the native-API tier; no Ollama server can be installed on this machine")


@pytest.fixture(scope="session")
def ollama_client():
    import ollama

    client = ollama.Client(host=HOST)
    names = [m.model for m in client.list().models]
    if MODEL not in names:
        pytest.skip(f"the Ollama at {HOST} does not have {MODEL} (it has {', '.join(names) or 'none'}); "
                    f"run 'ollama pull {MODEL}' there")
    return client


def work(**extra) -> dict:
    return {"model": MODEL, "prompt": "{datum}", "raw": True, "options": {"temperature": 0, "seed": 1, "num_predict": 6},
            "return": "text", **extra}


def reference(client, prompt: str, num_predict: int) -> str:
    """Ollama's own answer to the same request, through the official client directly."""
    return client.generate(model=MODEL, prompt=prompt, raw=True,
                           options={"temperature": 0, "seed": 1, "num_predict": num_predict}).response


CONFIG = {"ollama": {"ollama-host": HOST, "ollama-api": "native", "ollama-models": MODEL}}


class TestNativeConformance(WorktimeConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def worker_config(cls):
        return CONFIG

    @pytest.fixture
    def worktime_name(self):
        return "ollama"

    @pytest.fixture
    def hello_work(self, ollama_client):
        return Sample(work=json.dumps(work()), datum="The capital of France is",
                      expected=reference(ollama_client, "The capital of France is", 6))

    @pytest.fixture
    def progress_work(self, ollama_client):
        w = work(options={"temperature": 0, "seed": 1, "num_predict": 48})
        return Sample(work=json.dumps(w), datum="1, 2, 3, 4, 5,", expected=reference(ollama_client, "1, 2, 3, 4, 5,", 48))

    @pytest.fixture
    def bad_work(self):
        return json.dumps({"model": MODEL, "prompt": "x", "format": "yaml"})

    @pytest.fixture
    def hostile_works(self):
        cases = {k: v.replace("gemma3:270m", MODEL) for k, v in hostile().items()}
        del cases["cpu_burn"]  # Ollama burns the CPU, not the evaluator
        return cases


@pytest.fixture(scope="module")
def pool():
    with EvaluatorPool(cores=1, config=CONFIG) as p:
        yield p


def test_models_are_advertised_with_ollama_s_digest(ollama_client):
    listed = {m.model: m for m in ollama_client.list().models}
    caps = OllamaWorktime.probe(CONFIG["ollama"]).capabilities["ollama"]
    info = caps["models"][MODEL]
    assert info["backend"] == "ollama" and info["digest"] == listed[MODEL].digest
    assert info["parameter_size"] == listed[MODEL].details.parameter_size
    assert isinstance(info.get("context_length"), int) and caps["digests"][listed[MODEL].digest] is True


def test_full_result_from_ollama(pool, ollama_client):
    out = run(pool, "ollama", json.dumps(work(**{"return": "full"})), "The capital of France is")
    assert out.ok, out.error
    r = out.value
    assert r["text"] == reference(ollama_client, "The capital of France is", 6)
    assert r["backend"] == "ollama" and r["digest"] == {m.model: m.digest for m in ollama_client.list().models}[MODEL]
    assert r["tokens"]["generated"] <= 6 and r["tokens"]["prompt"] > 0 and r["timings"]["generate_ms"] > 0


def test_chat_and_json_format(pool):
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Give a JSON object with a key 'city' for {datum}"}],
            "format": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            "options": {"temperature": 0, "seed": 1, "num_predict": 32}}
    out = run(pool, "ollama", json.dumps(chat), "France")
    assert out.ok, out.error
    assert isinstance(out.value["json"]["city"], str)


def test_determinism_with_a_seed(pool):
    w = json.dumps(work(options={"temperature": 1.0, "seed": 7, "num_predict": 12}))
    assert len({run(pool, "ollama", w, "Once upon a time").value for _ in range(2)}) == 1


def test_timeout_and_cancel_stop_generation(pool):
    endless = json.dumps(work(options={"temperature": 0, "num_predict": 2048}))
    out = run(pool, "ollama", endless, "1, 2, 3,", limits=Limits.parse(wall_time="2s"))
    assert out.error.code == "ESLICETOOSLOW" and "generation ran past" in out.error.message
    job = JobSpec(id=f"cancel-{secrets.token_hex(4)}", worktime="ollama", work=endless)
    started, outcome = threading.Event(), []
    pool.submit(job, [0], ["1, 2, 3,"], lambda o: outcome.extend(o.slices()),
                lambda kind, n, p: kind == "progress" and p and started.set())
    assert started.wait(60)
    pool.cancel(job.id)
    deadline = time.monotonic() + 5
    while not outcome and time.monotonic() < deadline:
        time.sleep(0.01)
    assert outcome and outcome[0].error.code == "ECANCELLED"


def test_the_openai_path_of_ollama():
    config = {"ollama": {"ollama-host": HOST, "ollama-api": "openai", "ollama-models": MODEL}}
    with EvaluatorPool(cores=1, config=config) as p:
        out = run(p, "ollama", json.dumps(work(**{"return": "full"})), "The capital of France is")
    assert out.ok, out.error
    assert out.value["backend"] == "openai" and out.value["tokens"]["generated"] > 0


def test_a_model_the_server_lacks_is_never_pulled(pool, ollama_client):
    before = {m.model for m in ollama_client.list().models}
    out = run(pool, "ollama", json.dumps(work(model="all-minilm:22m")), "x")
    assert out.error.code == "ENOWORKTIME"
    assert {m.model for m in ollama_client.list().models} == before
