"""A worktime package written elsewhere, installed with pip, works without touching dcp-worktimes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "dcp-worktime-upper"
version = "0.3.0"
dependencies = []

[project.entry-points.dcp_worktimes]
upper = "dcp_worktime_upper"

[tool.hatch.build.targets.wheel]
packages = ["dcp_worktime_upper"]
"""

MODULE = '''
from dcp_worktimes import hookimpl
from dcp_worktimes.errors import SliceError
from dcp_worktimes.worktime import Worktime


class Upper(Worktime):
    name = "upper"
    version = "2.1.0"
    capabilities = {"text": {"upper": True}}

    def execute(self, ctx, datum):
        if not isinstance(datum, str):
            raise SliceError("upper wants a string")
        ctx.console("log", "upper-casing")
        return datum.upper()


@hookimpl
def register_worktimes(register):
    register(Upper)
'''


def test_pip_installed_plugin_is_listed_and_runs(tmp_path):
    src = tmp_path / "dcp-worktime-upper"
    (src / "dcp_worktime_upper").mkdir(parents=True)
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "dcp_worktime_upper" / "__init__.py").write_text(textwrap.dedent(MODULE))
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(target), str(src)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    env = {**os.environ, "PYTHONPATH": str(target)}

    listing = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", "worktimes", "--json"],
                             capture_output=True, text=True, env=env, timeout=60)
    rows = {w["name"]: w for w in json.loads(listing.stdout)["worktimes"]}
    assert rows["upper"]["version"] == "2.1.0" and rows["upper"]["provider"] == "dcp-worktime-upper"

    run = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", "slice", "--worktime", "upper", "--work", "",
                          "--datum", '"hello"'], capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == "HELLO" and "[console.log] upper-casing" in run.stderr

    bad = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", "slice", "--worktime", "upper", "--work", "",
                          "--datum", "3"], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 1 and bad.stderr.startswith("EUNCAUGHT: upper wants a string")


@pytest.mark.parametrize("source, said", [
    ("import engine_that_is_not_installed\n", "engine_that_is_not_installed"),
    # SystemExit is no Exception: it ended every command, naming no plugin
    ("import sys\nsys.exit('this engine is not configured')\n", "SystemExit: this engine is not configured"),
])
def test_a_plugin_that_fails_to_import_is_reported_and_skipped(tmp_path, source, said):
    src = tmp_path / "dcp-worktime-broken"
    (src / "dcp_worktime_upper").mkdir(parents=True)
    (src / "pyproject.toml").write_text(PYPROJECT.replace("dcp-worktime-upper", "dcp-worktime-broken"))
    (src / "dcp_worktime_upper" / "__init__.py").write_text(source)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(src)], check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}
    r = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", "worktimes", "--json"], capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode == 0
    body = json.loads(r.stdout)
    assert "echo" in {w["name"] for w in body["worktimes"]}
    assert any("dcp-worktime-broken" in e["plugin"] and said in e["error"] for e in body["plugin_errors"])
    # Said once, as one line naming the plugin (not Python's file:line form pointing into the registry)
    listing = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", "worktimes"], capture_output=True,
                             text=True, env=env, timeout=60)
    assert listing.returncode == 0 and listing.stderr.count(said) == 1, listing.stderr
    assert "dcp-worker: plugin dcp-worktime-broken (entry point 'upper') skipped: " in listing.stderr
    assert "RuntimeWarning" not in listing.stderr and "plugins.py" not in listing.stderr
    run = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", "slice", "--worktime", "echo", "--work", "",
                          "--datum", "[1]"], capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0 and json.loads(run.stdout) == [1], run.stderr
    # And the switch that lets a user start without any third-party plugin:
    r = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", "worktimes", "--json"], capture_output=True,
                       text=True, env={**env, "DCP_WORKTIMES_LOAD_PLUGINS": ""}, timeout=60)
    assert json.loads(r.stdout)["plugin_errors"] == []
