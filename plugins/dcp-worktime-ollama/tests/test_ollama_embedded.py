"""The embedded backend: real inference with gemma3 270M in llama.cpp (xllamacpp) inside the evaluators.

The expected texts are what llama.cpp generates when called directly (``llama_direct.py``, a
separate process, no worktime in between) for the same request, written out in full here.
"""

from __future__ import annotations

import json
import secrets
import threading
import time

import psutil
import pytest

from dcp_worktimes.limits import Limits
from dcp_worktimes.runner import EvaluatorPool
from dcp_worktimes.testing import Sample, WorktimeConformance, run
from dcp_worktimes.worktime import JobSpec

from llm_helpers import COUNTING, DIGEST, ENDLESS, HELLO, SAMPLING, direct, hostile

@pytest.fixture(scope="session")
def references(gguf_path) -> dict[str, str]:
    """What llama.cpp itself answers to the hello and progress works' requests."""
    texts = direct(gguf_path, [
        {"prompt": "The capital of France is", **SAMPLING, "temperature": 0, "max_tokens": 6},
        {"prompt": "1, 2, 3, 4, 5,", **SAMPLING, "temperature": 0, "max_tokens": 48},
    ])
    return {"hello": texts[0], "counting": texts[1]}


class TestEmbeddedConformance(WorktimeConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def worker_config(cls, gguf_path):
        return {"ollama": {"model": gguf_path}}

    @pytest.fixture
    def worktime_name(self):
        return "ollama"

    @pytest.fixture
    def hello_work(self, references):
        return Sample(work=json.dumps(HELLO), datum="The capital of France is", expected=references["hello"])

    @pytest.fixture
    def progress_work(self, references):
        return Sample(work=json.dumps(COUNTING), datum=None, expected=references["counting"])

    @pytest.fixture
    def bad_work(self):
        return json.dumps({"model": "gemma3:270m", "prompt": "x", "options": {"temprature": 0}})

    @pytest.fixture
    def hostile_works(self):
        return hostile()


# -- behaviour beyond the kit ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def pool(gguf_path):
    with EvaluatorPool(cores=1, config={"ollama": {"model": gguf_path}}) as p:
        yield p


def slice_of(pool, work: dict, datum, **limits):
    return run(pool, "ollama", json.dumps(work), datum, limits=Limits.parse(**limits) if limits else None)


def test_result_shape_tokens_timings_and_digest(pool, references):
    out = slice_of(pool, {**HELLO, "return": "full"}, "The capital of France is")
    assert out.ok, out.error
    r = out.value
    assert r["text"] == references["hello"]
    assert (r["model"], r["digest"], r["backend"], r["done_reason"]) == ("gemma3:270m", DIGEST, "llama.cpp", "length")
    assert r["tokens"] == {"prompt": 6, "generated": 6}  # <bos> + 5 tokens; exactly num_predict generated
    t = r["timings"]
    assert t["prompt_ms"] > 0 and t["generate_ms"] > 0 and t["total_ms"] >= t["generate_ms"] and t["tokens_per_second"] > 0


def test_chat_messages_and_templated_prompts_match_llama_cpp(pool, gguf_path):
    """Without raw, the prompt goes through the model's chat template, as Ollama's /api/generate does."""
    chat = {"model": "gemma3:270m", "messages": [{"role": "user", "content": "Say {datum}"}], "system": "Be brief.",
            "options": {"temperature": 0, "num_predict": 5}, "return": "text"}
    templated = {"model": "gemma3:270m", "prompt": "Say {datum}", "system": "Be brief.",
                 "options": {"temperature": 0, "num_predict": 5}, "return": "text"}
    expected = direct(gguf_path, [{"messages": [{"role": "system", "content": "Be brief."},
                                                {"role": "user", "content": "Say hello"}],
                                   **SAMPLING, "temperature": 0, "max_tokens": 5}])[0]
    for work in (chat, templated):
        out = slice_of(pool, work, "hello")
        assert out.ok and out.value == expected, out.error


def test_json_schema_format_constrains_and_parses_the_answer(pool):
    schema = {"type": "object", "properties": {"label": {"enum": ["billing", "bug", "other"]}}, "required": ["label"]}
    work = {"model": "gemma3:270m", "prompt": "Ticket: {datum}\nAnswer in JSON.", "format": schema,
            "options": {"temperature": 0, "num_predict": 24}}
    out = slice_of(pool, work, "I was charged twice this month")
    assert out.ok, out.error
    assert out.value["json"]["label"] in ("billing", "bug", "other")
    assert json.loads(out.value["text"]) == out.value["json"]
    short = slice_of(pool, {**work, "options": {"temperature": 0, "num_predict": 2}}, "I was charged twice")
    assert short.error.code == "EUNCAUGHT" and "not valid JSON" in short.error.message and "num_predict=2" in short.error.message


def test_seeded_sampling_is_reproducible_across_evaluators_and_thread_counts(gguf_path):
    """temperature 0, or any temperature with a seed: the same text in every evaluator, whatever its
    thread count (each evaluator is a fresh process with its own copy of the model)."""
    works = [{"model": "gemma3:270m", "prompt": "Once upon a time", "raw": True,
              "options": {"temperature": t, "seed": 42, "num_predict": 16}, "return": "text"} for t in (0, 1.2)]
    texts = []
    for threads in (1, 2):
        with EvaluatorPool(cores=1, config={"ollama": {"model": gguf_path, "llama-threads": str(threads)}}) as p:
            texts.append([run(p, "ollama", json.dumps(w), None).value for w in works])
    assert texts[0] == texts[1]
    assert texts[0][0] != texts[0][1]  # the seeded sample is a sample, not the greedy text
    unseeded = {**works[1], "options": {"temperature": 1.2, "num_predict": 16}}
    with EvaluatorPool(cores=1, config={"ollama": {"model": gguf_path}}) as p:
        samples = {run(p, "ollama", json.dumps(unseeded), None).value for _ in range(3)}
    assert len(samples) > 1  # without a seed, llama.cpp draws a random one: this is what the seed fixes


def test_progress_per_token_as_a_fraction_of_num_predict(pool):
    events = []
    work = {**COUNTING, "options": {"temperature": 0, "num_predict": 40}}
    out = run(pool, "ollama", json.dumps(work), None, events=events)
    assert out.ok, out.error
    values = [p for kind, p in events if kind == "progress" and p is not None]
    assert len(values) >= 3 and values == sorted(values) and 0 < values[0] < values[-1] <= 1.0


def test_wall_time_stops_generation_in_the_engine_and_keeps_the_evaluator(pool):
    job = JobSpec(id=f"wall-{secrets.token_hex(4)}", worktime="ollama", work=json.dumps(ENDLESS),
                  limits=Limits.parse(wall_time="1.5s"))
    t = time.monotonic()
    outs = sorted(pool.map(job, [(0, None), (1, None)]), key=lambda o: o.number)
    elapsed = time.monotonic() - t
    assert [o.error.code for o in outs] == ["ESLICETOOSLOW", "ESLICETOOSLOW"]
    # the engine's own verdict (the host's would say "ran longer than its wall-time limit" and kill
    # the evaluator, so the second slice would have to load the model again)
    assert all("generation ran past" in o.error.message for o in outs)
    assert all(o.wall_time < 2.5 for o in outs)
    assert elapsed < 20


def test_cancel_stops_generation_at_once(pool):
    job = JobSpec(id=f"cancel-{secrets.token_hex(4)}", worktime="ollama", work=json.dumps(ENDLESS))
    started = threading.Event()
    outcome = []
    pool.submit(job, [0], [None], lambda o: outcome.extend(o.slices()),
                lambda kind, n, p: kind == "progress" and p and started.set())
    assert started.wait(60), "no token was generated"
    slot = next(s for s in pool._slots if s.proc is not None and s.proc.job_id == job.id)
    evaluator = psutil.Process(slot.proc.pid)
    t = time.monotonic()
    pool.cancel(job.id)
    while not outcome and time.monotonic() - t < 10:
        time.sleep(0.01)
    assert outcome and outcome[0].error.code == "ECANCELLED"
    assert "generation stopped" in outcome[0].error.message  # the engine stopped, not the host's kill
    assert time.monotonic() - t < 1.0
    cpu = sum(evaluator.cpu_times()[:2])
    time.sleep(1.0)
    assert sum(evaluator.cpu_times()[:2]) - cpu < 0.2  # nothing keeps generating in the background


def test_memory_limit_counts_the_slice_not_the_model(pool):
    """The model (~350 MB resident) is loaded in prepare: a 64 MiB slice limit still runs it."""
    out = slice_of(pool, HELLO, "The capital of France is", memory="64MiB")
    assert out.ok, out.error


def test_model_not_served_is_given_back_not_failed(pool):
    out = slice_of(pool, {**HELLO, "model": "llama3:70b"}, "x")
    assert out.error.code == "ENOWORKTIME" and out.error.worker_fault
    assert "gemma3:270m" in out.error.message and "requirements=" in out.error.message


def test_a_path_as_model_name_is_never_opened(pool, gguf_path):
    out = slice_of(pool, {**HELLO, "model": gguf_path}, "x")
    assert out.error.code == "ENOWORKTIME" and "does not serve the model" in out.error.message


def test_owner_caps_on_tokens_prompt_and_context(gguf_path):
    config = {"ollama": {"model": gguf_path, "max-num-predict": "4", "max-prompt": "1KB", "max-ctx": "1024"}}
    with EvaluatorPool(cores=1, config=config) as p:
        tokens = run(p, "ollama", json.dumps(HELLO), "x")
        assert tokens.error.code == "ENOWORKTIME" and "--max-num-predict" in tokens.error.message
        small = {**HELLO, "options": {"temperature": 0, "num_predict": 2}}
        long = run(p, "ollama", json.dumps(small), "word " * 300)
        assert long.error.code == "EUNCAUGHT" and long.error.name == "PromptTooLong" and "--max-prompt" in long.error.message
        ctx = run(p, "ollama", json.dumps({**small, "options": {"num_predict": 2, "num_ctx": 2048}}), "x")
        assert ctx.error.code == "ENOWORKTIME" and "--max-ctx" in ctx.error.message
        ok = run(p, "ollama", json.dumps({**small, "options": {"temperature": 0, "num_predict": 2, "num_ctx": 256}}), "x")
        assert ok.ok, ok.error


def test_a_prompt_longer_than_the_context_fails_with_llama_cpp_s_reason(pool):
    work = {**HELLO, "options": {"temperature": 0, "num_predict": 2, "num_ctx": 128}}
    out = slice_of(pool, work, "word " * 400)
    assert out.error.code == "EUNCAUGHT" and "context" in out.error.message


def test_probe_advertises_the_model_for_requirements(gguf_path):
    from dcp_worktimes.scheduler.matching import requirements_met

    probe = __import__("dcp_worktime_ollama").OllamaWorktime.probe({"model": gguf_path})
    caps = probe.capabilities
    info = caps["ollama"]["models"]["gemma3:270m"]
    assert info == {"backend": "llama.cpp", "digest": DIGEST, "parameter_size": "268.10M", "quantization": "Q4_K_M",
                    "context_length": 32768, "family": "gemma3"}
    assert caps["ollama"]["digests"] == {DIGEST: True}
    assert requirements_met({"ollama": {"models": {"gemma3:270m": True}}}, caps)
    assert not requirements_met({"ollama": {"models": {"llama3:8b": True}}}, caps)


def test_compute_for_with_a_dict_work_end_to_end(gguf_path, tmp_path, monkeypatch):
    """What a deployer writes: a dict as work, requirements on the model, results in input order."""
    from dcp_worktimes import compute
    from dcp_worktimes.errors import RequirementsError
    from dcp_worktimes.plugins import _probe

    monkeypatch.setenv("DCP_SCHEDULER", f"sqlite:///{tmp_path}/jobs.db")
    monkeypatch.setenv("DCP_PROGRESS", "0")
    monkeypatch.setenv("DCP_OLLAMA_MODEL", gguf_path)  # a local exec passes no dcp-worker flags
    _probe.cache_clear()  # probes are cached per process, and this one depends on the variable just set
    texts = ["The card was charged twice", "The app crashes on start", "Do you ship to Canada?"]
    work = {"model": "gemma3:270m", "prompt": "Support ticket: {datum}\nCategory (billing, bug or other):", "raw": True,
            "format": {"enum": ["billing", "bug", "other"]}, "options": {"temperature": 0, "num_predict": 6},
            "return": "text"}
    job = compute.for_(texts, work, worktime="ollama", requirements={"ollama": {"models": {"gemma3:270m": True}}},
                       cores=1)
    labels = list(job.exec())
    assert len(labels) == 3 and set(labels) <= {"billing", "bug", "other"}
    again = compute.for_(texts[::-1], work, worktime="ollama", cores=1).exec()
    assert list(again) == labels[::-1]  # one evaluator or another, any order: the same answers
    with pytest.raises(RequirementsError, match="llama3:70b"):
        compute.for_(texts, work, worktime="ollama", requirements={"ollama": {"models": {"llama3:70b": True}}},
                     cores=1).exec()
    _probe.cache_clear()
