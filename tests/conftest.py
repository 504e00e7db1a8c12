"""Fixtures shared by several test modules."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# No test may write to the user's own job store (the per-user one under XDG_DATA_HOME, which a
# test that forgets its store, or a command it runs, would open): the whole run, subprocesses
# included, gets a data folder of its own. Tests choose their stores with the ``store`` fixture.
os.environ["XDG_DATA_HOME"] = _DATA_HOME = tempfile.mkdtemp(prefix="dcp-worktimes-tests-data-")


@pytest.fixture(scope="session", autouse=True)
def _remove_data_home():
    """The run's data folder goes at its end (a fixture, not atexit: forked evaluators exit too)."""
    yield
    shutil.rmtree(_DATA_HOME, ignore_errors=True)

from .python_runtime import PYTHON_CACHE
from .redis_fixtures import redis_server, redis_url  # noqa: F401 - fixtures of the Redis scheduler's tests

WASI_PROGRAMS = Path(__file__).resolve().parent / "wasi_programs"


@pytest.fixture(scope="session")
def cc(tmp_path_factory):
    """``cc(path)`` → WebAssembly bytes of a C file, compiled for wasm32-wasi (Zig from pip, or clang; cached per run)."""
    from dcp_worktimes.worktimes.wasi.toolchain import ToolchainMissing, compile_c

    cache = tmp_path_factory.getbasetemp() / "wasi-cc"

    def cc(path: Path) -> bytes:
        try:
            return compile_c(Path(path).read_text(), cache=cache)
        except ToolchainMissing as e:
            pytest.fail(f"the wasi tests compile C to WebAssembly and need the toolchain: {e}")

    return cc


@pytest.fixture(scope="session")
def build(cc):
    """``build("sum_json")`` → wasm bytes of tests/wasi_programs/sum_json.c (``where=`` another folder)."""

    def build(name: str, where: Path = WASI_PROGRAMS) -> bytes:
        return cc(where / f"{name}.c")

    return build


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A private embedded job store for the test (and no progress bars)."""
    url = f"sqlite:///{tmp_path}/jobs.db"
    monkeypatch.setenv("DCP_SCHEDULER", url)
    monkeypatch.setenv("DCP_PROGRESS", "0")
    return url


@pytest.fixture(scope="module")
def python_cache():
    """The session's compiled-module cache, whatever an earlier test set DCP_WORKTIMES_CACHE to."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DCP_WORKTIMES_CACHE", PYTHON_CACHE)
        yield PYTHON_CACHE


@pytest.fixture(scope="module")
def warm(python_cache):
    """The compiled runtime (compiled here at most once per session, with progress on stderr)."""
    import sys

    from dcp_worktimes.worktimes.python.compiled import load

    import time

    last = [float("-inf")]

    def show(fraction, message):
        if time.monotonic() - last[0] >= 10 or fraction == 1.0:  # elapsed time while compiling, then the end
            last[0] = time.monotonic()
            print(f"[python worktime] {message}", file=sys.stderr)

    return load(show)
