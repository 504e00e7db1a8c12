"""The server backend over the OpenAI-compatible API (the one Ollama also serves under /v1), against a
real llama.cpp HTTP server (xllamacpp's, started by the ``llama_server`` fixture on a free port).

The expected texts are the server's own answers to the same requests, sent directly over HTTP.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import threading
import time

import httpx
import pytest

from dcp_worktimes.limits import Limits
from dcp_worktimes.runner import EvaluatorPool
from dcp_worktimes.testing import Sample, WorktimeConformance, run
from dcp_worktimes.worktime import JobSpec
from dcp_worktime_ollama import OllamaWorktime

from llm_helpers import COUNTING, ENDLESS, HELLO, SAMPLING, hostile, serving


def ask(url: str, body: dict) -> str:
    """The server's answer to one request, called directly (non-streaming)."""
    r = httpx.post(f"{url}/v1/completions", json={"model": "gemma3:270m", **body}, timeout=120)
    r.raise_for_status()
    return r.json()["choices"][0]["text"]


@pytest.fixture(scope="session")
def server_references(llama_server) -> dict[str, str]:
    url = llama_server["url"]
    return {"hello": ask(url, {"prompt": "The capital of France is", **SAMPLING, "temperature": 0, "max_tokens": 6}),
            "counting": ask(url, {"prompt": "1, 2, 3, 4, 5,", **SAMPLING, "temperature": 0, "max_tokens": 48})}


class TestServerConformance(WorktimeConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def worker_config(cls, llama_server):
        return {"ollama": {"ollama-host": llama_server["url"]}}

    @pytest.fixture
    def worktime_name(self):
        return "ollama"

    @pytest.fixture
    def hello_work(self, server_references):
        return Sample(work=json.dumps(HELLO), datum="The capital of France is", expected=server_references["hello"])

    @pytest.fixture
    def progress_work(self, server_references):
        return Sample(work=json.dumps(COUNTING), datum=None, expected=server_references["counting"])

    @pytest.fixture
    def bad_work(self):
        return json.dumps({"model": "gemma3:270m", "messages": [{"role": "robot", "content": "x"}]})

    @pytest.fixture
    def hostile_works(self):
        cases = hostile()
        del cases["cpu_burn"]  # the server burns the CPU, not the evaluator: no CPU limit can apply
        return cases


@pytest.fixture(scope="module")
def pool(llama_server):
    with EvaluatorPool(cores=1, config={"ollama": {"ollama-host": llama_server["url"]}}) as p:
        yield p


def cpu(process) -> float:
    t = process.cpu_times()
    return t.user + t.system


def idle_cpu(process, seconds: float = 1.0) -> float:
    """CPU seconds the process used over the next ``seconds``."""
    before = cpu(process)
    time.sleep(seconds)
    return cpu(process) - before


def test_the_api_is_detected_and_models_advertised(llama_server):
    caps = OllamaWorktime.probe({"ollama-host": llama_server["url"]}).capabilities["ollama"]
    assert caps["backends"] == {"openai": True}
    assert caps["models"] == {"gemma3:270m": {"backend": "openai", "parameter_size": "268.10M",
                                              "quantization": "Q4_K - Medium", "context_length": 32768}}


def test_same_engine_same_text_through_the_server_and_embedded(pool, gguf_path):
    """One llama.cpp build, two paths (HTTP server, in the evaluator): the same seeded sample."""
    work = json.dumps({"model": "gemma3:270m", "prompt": "Once upon a time", "raw": True,
                       "options": {"temperature": 1.2, "seed": 42, "num_predict": 16}, "return": "text"})
    via_server = run(pool, "ollama", work, None)
    with EvaluatorPool(cores=1, config={"ollama": {"model": gguf_path}}) as embedded:
        in_process = run(embedded, "ollama", work, None)
    assert via_server.ok and in_process.ok, (via_server.error, in_process.error)
    assert via_server.value == in_process.value


def test_timeout_closes_the_stream_and_the_server_stops_generating(pool, llama_server):
    out = run(pool, "ollama", json.dumps(ENDLESS), None, limits=Limits.parse(wall_time="1.5s"))
    assert out.error.code == "ESLICETOOSLOW" and "generation ran past" in out.error.message
    time.sleep(0.3)  # the server notices the closed connection at its next token
    assert idle_cpu(llama_server["process"]) < 0.3  # generating would be ~1 CPU-second per second
    t = time.monotonic()  # its only slot is free: a new request is served at once
    assert ask(llama_server["url"], {"prompt": "Hi", "max_tokens": 2}) is not None
    assert time.monotonic() - t < 5


def test_a_killed_evaluator_stops_the_server_too(pool, llama_server):
    """The host kills an evaluator's process group (a limit, a shutdown): the kernel closes its
    connection, and llama.cpp's server stops generating for a client that disappeared."""
    job = JobSpec(id=f"kill-{secrets.token_hex(4)}", worktime="ollama", work=json.dumps(ENDLESS))
    started, outcome = threading.Event(), []
    pool.submit(job, [0], [None], lambda o: outcome.extend(o.slices()),
                lambda kind, n, p: kind == "progress" and p and started.set())
    try:
        assert started.wait(60), "no token was generated"
        assert idle_cpu(llama_server["process"], 0.5) > 0.05  # it is generating (a loaded machine gives it less)
        slot = next(s for s in pool._slots if s.proc is not None and s.proc.job_id == job.id)
        os.killpg(slot.proc.pid, signal.SIGKILL)
    except BaseException:
        pool.cancel(job.id)  # never leave 2048 tokens running in front of the next test's slices
        raise
    deadline = time.monotonic() + 10
    while not outcome and time.monotonic() < deadline:
        time.sleep(0.01)
    assert outcome and outcome[0].error.code == "ECRASH"
    time.sleep(0.3)
    assert idle_cpu(llama_server["process"]) < 0.3


def test_cancel_closes_the_stream(pool, llama_server):
    job = JobSpec(id=f"cancel-{secrets.token_hex(4)}", worktime="ollama", work=json.dumps(ENDLESS))
    started, outcome = threading.Event(), []
    pool.submit(job, [0], [None], lambda o: outcome.extend(o.slices()),
                lambda kind, n, p: kind == "progress" and p and started.set())
    assert started.wait(60)
    pool.cancel(job.id)
    deadline = time.monotonic() + 5
    while not outcome and time.monotonic() < deadline:
        time.sleep(0.01)
    assert outcome and outcome[0].error.code == "ECANCELLED" and "generation stopped" in outcome[0].error.message
    time.sleep(0.3)
    assert idle_cpu(llama_server["process"]) < 0.3


def test_the_server_s_refusal_is_the_slice_s_error(pool):
    out = run(pool, "ollama", json.dumps({**HELLO, "options": {"num_predict": 2}}), "word " * 5000)
    assert out.error.code == "EUNCAUGHT" and "exceeds the available context size" in out.error.message


def test_result_comes_from_the_server(pool, server_references):
    out = run(pool, "ollama", json.dumps({**HELLO, "return": "full"}), "The capital of France is")
    assert out.ok, out.error
    r = out.value
    assert (r["text"], r["backend"], r["digest"], r["done_reason"]) == (server_references["hello"], "openai", None, "length")
    assert r["tokens"] == {"prompt": 6, "generated": 6} and r["timings"]["generate_ms"] > 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_owner_s_server_that_does_not_answer_makes_the_worktime_unavailable(gguf_path):
    url = f"http://127.0.0.1:{free_port()}"
    probe = OllamaWorktime.probe({"ollama-host": url, "model": gguf_path})
    assert not probe.available and url in probe.unavailable and "--ollama-host" in probe.unavailable


def test_without_a_server_the_gguf_files_are_served(gguf_path, monkeypatch):
    """No --ollama-host nor OLLAMA_HOST: the default address is tried quietly (no Ollama here)."""
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    probe = OllamaWorktime.probe({"model": gguf_path})
    assert probe.available, probe.unavailable
    assert probe.capabilities["ollama"]["models"]["gemma3:270m"]["backend"] == "llama.cpp"
    # OLLAMA_HOST is the owner's word like --ollama-host: a server named there must answer
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{free_port()}")
    assert not OllamaWorktime.probe({"model": gguf_path}).available


def test_ollama_models_lists_what_the_worker_serves(llama_server):
    probe = OllamaWorktime.probe({"ollama-host": llama_server["url"], "ollama-models": "gemma3:270m,llama3:8b"})
    assert not probe.available and "llama3:8b" in probe.unavailable and "gemma3:270m" in probe.unavailable
    probe = OllamaWorktime.probe({"ollama-host": llama_server["url"], "ollama-models": "gemma3:270m"})
    assert set(probe.capabilities["ollama"]["models"]) == {"gemma3:270m"}


def test_a_server_that_goes_away_gives_the_slice_back(gguf_path):
    """Not the work's fault: the slice is marked worker_fault, so the worker returns it to the
    scheduler (for another worker) instead of failing it."""
    with serving(gguf_path) as server:
        with EvaluatorPool(cores=1, config={"ollama": {"ollama-host": server["url"]}}) as p:
            job = JobSpec(id=f"gone-{secrets.token_hex(4)}", worktime="ollama", work=json.dumps(HELLO))
            first = next(p.map(job, [(0, "Hello")]))
            assert first.ok, first.error
            server["popen"].kill()
            server["popen"].wait()
            second = next(p.map(job, [(1, "Hello")]))
    assert second.error.code == "ECRASH" and second.error.worker_fault
    assert "stopped answering" in second.error.message and server["url"] in second.error.message
