"""The work as data: every bad field is refused naming it; templates fill safely; settings parse."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dcp_worktimes.errors import SliceError, WorkError
from dcp_worktimes.worktime import JobSpec
from dcp_worktime_ollama import OllamaWorktime
from dcp_worktime_ollama.config import Config
from dcp_worktime_ollama.gguf import GgufError, file_digest, read_gguf
from dcp_worktime_ollama.work import Work

OK = {"model": "gemma3:270m", "prompt": "Classify: {datum}"}


@pytest.mark.parametrize("work, field", [
    ({"prompt": "x"}, "work.model"),
    ({"model": "", "prompt": "x"}, "work.model"),
    ({"model": "m"}, "work.prompt"),
    ({"model": "m", "prompt": "x", "messages": [{"role": "user", "content": "x"}]}, "exactly one"),
    ({"model": "m", "prompt": 5}, "work.prompt"),
    ({"model": "m", "promt": "x"}, "did you mean 'prompt'"),
    ({"model": "m", "prompt": "x", "options": {"temprature": 0}}, "did you mean 'temperature'"),
    ({"model": "m", "prompt": "x", "options": {"temperature": "hot"}}, "work.options.temperature"),
    ({"model": "m", "prompt": "x", "options": {"temperature": -1}}, "at least 0"),
    ({"model": "m", "prompt": "x", "options": {"num_predict": -1}}, "never generates without bound"),
    ({"model": "m", "prompt": "x", "options": {"num_predict": True}}, "work.options.num_predict"),
    ({"model": "m", "prompt": "x", "options": {"stop": ["", 3]}}, "work.options.stop"),
    ({"model": "m", "prompt": "x", "options": {"seed": 1.5}}, "work.options.seed"),
    ({"model": "m", "prompt": "x", "options": [1]}, "work.options must be an object"),
    ({"model": "m", "messages": []}, "work.messages"),
    ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "work.messages[0].role"),
    ({"model": "m", "messages": [{"role": "user", "content": 1}]}, "work.messages[0].content"),
    ({"model": "m", "messages": [{"role": "user", "text": "x"}]}, "work.messages[0]"),
    ({"model": "m", "prompt": "x", "system": ["a"]}, "work.system"),
    ({"model": "m", "prompt": "x", "raw": "yes"}, "work.raw"),
    ({"model": "m", "prompt": "x", "raw": True, "system": "s"}, "raw=true"),
    ({"model": "m", "prompt": "x", "format": "yaml"}, "work.format"),
    ({"model": "m", "prompt": "x", "format": {"a": [{"b": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}]}},
     "nested"),
    ({"model": "m", "prompt": "x", "return": "all"}, "work.return"),
    ([1, 2], "as a dict"),
])
def test_bad_work_names_the_field(work, field):
    with pytest.raises(WorkError) as e:
        OllamaWorktime.capture_work(work)
    assert e.value.code == "EBADWORK"
    assert field in e.value.message


def test_bad_json_text_and_deep_nesting_are_work_errors():
    for text, what in (("{not json", "not valid JSON"), ("", "needs a work"), ("[" * 100_000, "nested too deeply"),
                       (b"\xff\xfe", "binary")):
        with pytest.raises(WorkError, match=what):
            Work.parse(text)


def test_capture_gives_canonical_json_and_validate_accepts_it():
    a = OllamaWorktime.capture_work({"prompt": "Q: {datum}", "model": "m", "options": {"seed": 1, "temperature": 0}})
    b = OllamaWorktime.capture_work('{"options": {"temperature": 0, "seed": 1}, "model": "m", "prompt": "Q: {datum}"}')
    assert a.work == b.work == '{"model":"m","options":{"seed":1,"temperature":0},"prompt":"Q: {datum}"}'
    OllamaWorktime.validate(JobSpec(id="j", worktime="ollama", work=a.work))
    with pytest.raises(WorkError, match="has no option"):  # the job options are checked too: it reads none
        OllamaWorktime.validate(JobSpec(id="j", worktime="ollama", work=a.work, options={"strict": True}))


def test_capture_reads_a_json_file(tmp_path):
    path = tmp_path / "work.json"
    path.write_text(json.dumps(OK))
    assert json.loads(OllamaWorktime.capture_work(path).work) == OK
    with pytest.raises(WorkError, match="as a dict"):
        OllamaWorktime.capture_work(3.5)


def test_templates_fill_from_the_datum():
    assert Work.parse({"model": "m", "prompt": "{datum}|{{datum}}|{\"k\": 1}"}).render("hi").prompt == 'hi|{datum}|{"k": 1}'
    w = Work.parse({"model": "m", "prompt": "{datum}|{{datum}}|{\"k\": 1}", "system": "sys {lang}"})
    r = w.render({"lang": "fr", "n": 2})
    assert r.system == "sys fr" and r.prompt.startswith('{"lang": "fr", "n": 2}|')
    chat = Work.parse({"model": "m", "messages": [{"role": "user", "content": "Translate {text} to {lang}"}],
                       "system": "Be terse"})
    assert chat.render({"text": "hello", "lang": "fr"}).messages == [
        {"role": "system", "content": "Be terse"}, {"role": "user", "content": "Translate hello to fr"}]


def test_a_datum_cannot_inject_placeholders_or_reach_python():
    w = Work.parse({"model": "m", "prompt": "A {datum} B {x}"})
    assert w.render({"x": "{datum}", "y": 1}).prompt == 'A {"x": "{datum}", "y": 1} B {datum}'
    # not a placeholder at all (attribute syntax is not a name): left as written, never evaluated
    assert Work.parse({"model": "m", "prompt": "{datum.__class__}"}).render("s").prompt == "{datum.__class__}"
    with pytest.raises(SliceError) as e:
        w.render("a string has no x")
    assert e.value.code == "EUNCAUGHT" and "{x}" in e.value.message and "'x' member" in e.value.message
    with pytest.raises(SliceError, match="bytes"):
        Work.parse({"model": "m", "prompt": "{datum}"}).render(b"\x00")


def test_prompt_size_counts_utf8_bytes():
    w = Work.parse({"model": "m", "prompt": "{datum}", "system": "é"})
    assert w.render("ü" * 10).size == 22


def test_settings_parse_with_environment_fallbacks():
    cfg = Config.from_settings({"model": "a.gguf, tiny=/m/b.gguf", "ollama-models": "x,y", "max-prompt": "2KB"},
                               env={"OLLAMA_HOST": "127.0.0.1:9", "DCP_OLLAMA_MAX_NUM_PREDICT": "64"})
    assert cfg.ggufs == ((None, "a.gguf"), ("tiny", "/m/b.gguf"))
    assert cfg.server_models == ("x", "y") and cfg.max_prompt == 2000 and cfg.max_num_predict == 64
    assert cfg.host == "127.0.0.1:9"
    assert Config.from_settings({}, env={}).host is None
    for settings, message in (({"ollama-api": "grpc"}, "--ollama-api"), ({"max-num-predict": "many"}, "--max-num-predict"),
                              ({"llama-threads": "0"}, "at least 1"), ({"max-prompt": "none"}, "cannot be 'none'")):
        with pytest.raises(ValueError, match=message):
            Config.from_settings(settings, env={})


def test_unusable_settings_make_the_worktime_unavailable_with_the_reason(tmp_path):
    assert OllamaWorktime.probe({"max-ctx": "huge"}).unavailable == "--max-ctx must be a whole number, got 'huge'"
    probe = OllamaWorktime.probe({"model": str(tmp_path / "missing.gguf")})
    assert not probe.available and "no such file" in probe.unavailable
    (tmp_path / "notes.txt").write_text("not a model")
    probe = OllamaWorktime.probe({"model": str(tmp_path / "notes.txt")})
    assert not probe.available and "not a GGUF model file" in probe.unavailable


def test_gguf_header_of_the_real_model(gguf_path):
    info = read_gguf(gguf_path)
    assert (info.architecture, info.size_label, info.quantization, info.context_length) == ("gemma3", "270M", "Q4_K_M", 32768)
    assert info.parameters == 268_098_176 and info.parameter_size == "268.10M"
    assert info.names[:2] == ["gemma3:270m", "gemma3:270m-q4_k_m"]
    assert file_digest(gguf_path) == "sha256:a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    # cached under $DCP_WORKTIMES_CACHE (a temporary folder in these tests), not the user's cache
    assert list((Path(os.environ["DCP_WORKTIMES_CACHE"]) / "ollama" / "digests").glob("*.json"))


def test_truncated_gguf_is_refused(gguf_path, tmp_path):
    cut = tmp_path / "cut.gguf"
    with open(gguf_path, "rb") as f:
        cut.write_bytes(f.read(100_000))  # the header (with its 262k-token vocabulary) is longer
    with pytest.raises(GgufError, match="cut.gguf"):
        read_gguf(cut)
