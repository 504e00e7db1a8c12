"""The conformance kit and the hostile corpus (sandbox/hostile/wat, sandbox/hostile/c) against ``wasi``.

Cases WASI preview 1 cannot even express are omitted (reported as skipped by the kit):
``process_access`` — there is no process creation in WASI (no fork/exec/system in wasi-libc).
``network_access`` runs the WAT probe (sock_accept on every descriptor: no socket is preopened).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dcp_worktimes.testing import Sample, WorktimeConformance

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = ROOT / "sandbox" / "hostile"
PROGRAMS = Path(__file__).resolve().parent / "wasi_programs"

WAT_CASES = ["infinite_loop", "memory_balloon", "deep_recursion", "huge_output", "never_progress", "throw",
             "unserializable", "network_access"]
C_CASES = ["infinite_loop", "memory_balloon", "deep_recursion", "huge_output", "never_progress", "throw",
           "unserializable", "file_access", "cpu_burn"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DCP_WORKTIMES_CACHE", str(tmp_path_factory.getbasetemp() / "wasm-cache"))


class WasiBase(WorktimeConformance):
    @pytest.fixture
    def worktime_name(self):
        return "wasi"

    @pytest.fixture
    def hello_work(self, cc):
        return Sample(work=cc(PROGRAMS / "sum_json.c"), datum=[1, 2, 3], expected={"sum": 6, "count": 3, "argv": []})

    @pytest.fixture
    def progress_work(self, cc):
        return Sample(work=cc(PROGRAMS / "progress.c"), datum=None, expected="done")

    @pytest.fixture
    def bad_work(self):
        return b"\x00asm\x01\x00\x00\x00 this is not a module"


class TestWasiWat(WasiBase):
    """The hostile corpus written in WAT (inline text work)."""

    @pytest.fixture
    def hostile_works(self):
        return {case: (HOSTILE / "wat" / f"{case}.wat").read_text() for case in WAT_CASES}


class TestWasiC(WasiBase):
    """The hostile corpus written in C (wasi-libc), compiled for wasm32-wasi."""

    @pytest.fixture
    def hostile_works(self, cc):
        return {case: cc(HOSTILE / "c" / f"{case}.c") for case in C_CASES}
