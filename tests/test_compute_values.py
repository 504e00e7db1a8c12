"""Values on their way from the deployer to the worktimes and back: numpy inputs and arguments,
lone surrogates in strings, and map-basic's Number/BigInt boundary. (The value codec alone is
tested in ``test_values.py``.)"""

from __future__ import annotations

import pytest

from dcp_worktimes import compute
from dcp_worktimes.errors import WorkError
from dcp_worktimes.plugins import get_worktimes

from .test_values import LONE

INSTALLED = set(get_worktimes())
needs_map_basic = pytest.mark.skipif("map-basic" not in INSTALLED, reason="worktime map-basic is not installed")


# -- numpy inputs and arguments ---------------------------------------------------------------------


@needs_map_basic
def test_numpy_arrays_and_scalars_as_inputs_and_arguments(store):
    import numpy as np  # a test dependency: these must run, not skip
    r = compute.for_(np.arange(3), "function(x, a, b){ return [x, a, b] }", [np.int64(5), np.array([1.5, 2.5])],
                     cores=1).exec()
    assert r == [[0, 5, [1.5, 2.5]], [1, 5, [1.5, 2.5]], [2, 5, [1.5, 2.5]]]
    assert r.keys() == ["0", "1", "2"]
    rows = compute.for_(np.array([[1, 2], [3, 4]]), "function(row){ return row[0] + row[1] }", cores=1).exec()
    assert rows == [3, 7]


# -- lone surrogates are text: carried exactly ---------------------------------------------------------

WORKS = {
    "map-basic": "function (x, tail) { progress(); return [x, x + tail, 'made \\ud800 here'] }",
    "python": "def work(x, tail):\n    progress()\n    return [x, (x if isinstance(x, str) else '') + tail, 'made \\ud800 here']\n",
}


@pytest.mark.parametrize("worktime", sorted(WORKS))
def test_lone_surrogates_cross_every_worktime_exactly(store, worktime):
    if worktime not in get_worktimes():
        pytest.skip(f"worktime {worktime} is not installed")
    inputs = ["\ud800", "a\udfffb"]
    results = compute.for_(inputs, WORKS[worktime], ["\ud800"], worktime=worktime).exec()
    assert results == [[x, x + "\ud800", "made \ud800 here"] for x in inputs]
    assert results.key("a\udfffb")[0] == "a\udfffb" and results.keys() == inputs


def test_in_javascript_a_high_and_a_low_surrogate_next_to_each_other_are_one_character(store):
    """JavaScript strings are UTF-16: two code points that form a pair are one character there."""
    r = compute.for_(["\ud83d"], "function (x, low) { progress(); return [x + low, (x + low).length] }", ["\ude00"]).exec()
    assert r == [["\U0001f600", 2]]


def test_lone_surrogates_in_keys_and_nested_values_reach_the_worker(store):
    assert compute.for_(LONE, "", worktime="echo").exec() == LONE


# -- map-basic: Number up to 2**53-1, BigInt above, or BigInt for the whole job --------------------------
CROSSING = {"start": 2**53 - 2, "end": 2**53 + 1}


def test_a_range_crossing_2_53_says_how_to_get_one_type(store):
    r = compute.for_(CROSSING, "function (x) { progress(); return typeof x }").exec()
    assert r == ["number", "number", "bigint", "bigint"]  # documented: Number below, BigInt above
    failed = compute.for_(CROSSING, "function (x) { progress(); return x + 1 }").exec(errors="return")
    assert failed[:2] == [2**53 - 1, 2**53]
    for slot in failed[2:]:
        assert isinstance(slot, compute.SliceFailed) and slot.code == "EUNCAUGHT"
        assert "job.options = {'bigint': True}" in slot.message and "beyond 2**53-1" in slot.message


def test_the_bigint_option_gives_every_slice_a_bigint(store):
    job = compute.for_(CROSSING, "function (x, k) { progress(); return [typeof x, typeof k, x + k] }", [1],
                       options={"bigint": True})
    assert job.exec() == [["bigint", "bigint", 2**53 - 2 + 1 + i] for i in range(4)]
    mixed = compute.for_([1], "function (x) { progress(); return x + 1 }", options={"bigint": True})
    with pytest.raises(compute.JobFailed, match="'bigint' is on.*write 1n"):
        mixed.exec()
    with pytest.raises(WorkError, match="option 'bigint' is True or False"):
        compute.for_([1], "x => x", options={"bigint": "yes"}).exec()
