"""The Compute API: ``from dcp_worktimes import compute``.

(Work in progress: input sets first; ``for_``, jobs and results follow.)
"""

from __future__ import annotations

from . import stats
from .inputs import InputSet, StreamInput, input_set, input_set_from_description
from .ranges import MultiRange, RangeError, RangeObject

__all__ = ["stats", "InputSet", "StreamInput", "input_set", "input_set_from_description",
           "MultiRange", "RangeError", "RangeObject"]
