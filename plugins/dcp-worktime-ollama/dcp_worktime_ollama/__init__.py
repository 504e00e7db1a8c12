"""The ``ollama`` worktime: LLM inference slices on an Ollama server or an embedded llama.cpp.

Importing this module is cheap (``dcp-worker worktimes`` lists it without loading any engine):
the clients and llama.cpp are imported when a worker probes or prepares a job. See
``worktime.py`` for the contract, ``work.py`` for what a work may say, and the README.
"""

from __future__ import annotations

from dcp_worktimes import hookimpl

from .worktime import OllamaWorktime

__all__ = ["OllamaWorktime"]


@hookimpl
def register_worktimes(register):
    register(OllamaWorktime)
