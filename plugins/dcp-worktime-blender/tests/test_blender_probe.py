"""The probe: Blender's version and the engines that render here, cached on disk per binary."""

from __future__ import annotations

import os
import time

from dcp_worktimes.plugins import get_worktime
from dcp_worktimes.scheduler import unmet_requirement

from dcp_worktime_blender import BlenderWorktime, probe, sandbox


def test_probe_advertises_version_engines_and_sandbox(blender, bwrap):
    p = get_worktime("blender").probe({})
    assert p.available, p.unavailable
    caps = p.capabilities["blender"]
    assert caps["version"].count(".") == 2
    assert caps["engines"]["CYCLES"] and caps["engines"]["BLENDER_WORKBENCH"]
    assert caps["sandbox"] == "bwrap" and caps["scene_scripts"] is True
    assert caps["seccomp"] is (sandbox.seccomp_program() is not None)
    assert unmet_requirement({"blender": {"engines": {"CYCLES": True}}}, p.capabilities) is None
    assert unmet_requirement({"blender": {"engines": {"LUXCORE": True}}}, p.capabilities) == "blender.engines.LUXCORE=true"


def test_the_answer_is_cached_on_disk_under_the_cache_dir(blender, bwrap):
    box = sandbox.probe()
    first = probe.blender_facts(blender, box)
    t = time.monotonic()
    again = probe.blender_facts(blender, box)
    assert time.monotonic() - t < 1.0 and again == first  # read, not probed: a probe starts three Blenders
    files = list(probe.cache_dir().glob("probe-*.json"))
    assert files and str(probe.cache_dir()).startswith(os.environ["DCP_WORKTIMES_CACHE"])


def test_a_blender_outside_usr_given_by_setting_is_probed_and_keyed_by_its_file(blender, bwrap, tmp_path, monkeypatch):
    wrapper = tmp_path / "blender-wrapper"  # e.g. an official tarball unpacked in /opt: bound read-only into the sandbox
    wrapper.write_text(f'#!/bin/sh\nexec {blender} "$@"\n')
    wrapper.chmod(0o755)
    p = BlenderWorktime.probe({"blender": str(wrapper)})
    assert p.available and p.capabilities["blender"]["engines"]["CYCLES"], p
    calls = []
    monkeypatch.setattr(probe, "_probe_engines", lambda b, box: calls.append(b) or {"version": "9.9.9", "engines": {}})
    probe.blender_facts(str(wrapper), sandbox.probe())
    assert calls == []  # cached
    os.utime(wrapper, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new binary at the same path
    assert probe.blender_facts(str(wrapper), sandbox.probe())["version"] == "9.9.9" and len(calls) == 1


def test_without_blender_the_worktime_says_how_to_install_it(tmp_path):
    p = BlenderWorktime.probe({"blender": str(tmp_path / "nope")})
    assert not p.available and "no Blender at" in p.unavailable and "apt-get install blender" in p.unavailable


def test_without_bwrap_the_probe_says_so(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    sandbox.probe.cache_clear()
    try:
        box = sandbox.probe()
        assert box.bwrap is None and "apt-get install bubblewrap" in box.reason
    finally:
        sandbox.probe.cache_clear()
