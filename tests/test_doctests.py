"""Every example in the package's docstrings runs as written (``>>>`` lines; ``+SKIP`` marks the
ones that need a server or a file). The docstrings are the contract's documentation: an example
that no longer runs is a wrong document."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import dcp_worktimes

MODULES = sorted(m.name for m in pkgutil.walk_packages(dcp_worktimes.__path__, "dcp_worktimes.")
                 if ".guest" not in m.name)  # the python worktime's guest runs inside the sandbox only


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=True, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} fail (above)"
