"""Corners an outside test of the Compute API found (issue 13): lone surrogates, float ranges at
the edge of float precision, duplicate inputs' keys, and map-basic's Number/BigInt boundary."""

from __future__ import annotations

import pytest

from dcp_worktimes import compute
from dcp_worktimes.errors import WorkError
from dcp_worktimes.plugins import get_worktimes
from dcp_worktimes.values import pack, printable, unpack

LONE = ["\ud800", "a\udfffb", "\udcff\ud800", {"k\ud800": ["\udc00"]}]


# -- lone surrogates are text: carried exactly ---------------------------------------------------------
def test_values_carry_lone_surrogates_exactly():
    for value in LONE:
        assert unpack(pack(value)) == value
    assert unpack(pack("plain")) == "plain" and pack("plain") == b"\xa5plain"  # the fast path is untouched
    assert printable("bad \udcff") == "bad \ufffd" and printable("pair \ud83d\ude00") == "pair \U0001f600"


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


# -- float ranges never hold silent duplicates ----------------------------------------------------------
@pytest.mark.parametrize("rng, message", [
    ({"start": 2**70, "end": 2**70 + 1, "step": 0.5}, "adjacent floats are 262144 apart"),
    ({"start": 1e15, "end": 1e15 + 1, "step": 0.1}, "adjacent floats are 0.125 apart"),
    ({"start": 10**400, "end": 10**400 + 1, "step": 0.5}, "beyond the largest float"),
])
def test_a_float_range_that_would_repeat_inputs_is_refused(store, rng, message):
    with pytest.raises(compute.RangeError, match=message):
        compute.for_(rng, "x => x")
    with pytest.raises(compute.RangeError, match="dimension 0: .*" + message):
        compute.for_([rng, {"start": 1, "end": 2}], "(x, y) => x")


def test_huge_integer_and_ordinary_float_ranges_stay_exact(store):
    r = compute.for_({"start": 2**70, "end": 2**70 + 4, "step": 2}, "", worktime="echo").exec()
    assert r == [2**70, 2**70 + 2, 2**70 + 4] and r.keys() == [str(2**70 + k) for k in (0, 2, 4)]
    assert compute.for_({"start": 0.1, "end": 0.5, "step": 0.1}, "", worktime="echo").exec() == [0.1, 0.2, 0.3, 0.4, 0.5]
    big = compute.RangeObject(1e15, 1e15 + 1, 0.25)  # the gap there is 0.125: every value exact
    assert [big.nth(i) for i in range(big.size)] == [1e15, 1e15 + 0.25, 1e15 + 0.5, 1e15 + 0.75, 1e15 + 1]


# -- duplicate inputs: one rule for key() and fromEntries() -----------------------------------------------
def test_duplicate_inputs_key_and_from_entries_agree_on_the_last_slice(store):
    r = compute.for_(["a", "b", "a"], "function (x) { progress(); return x + Math.random() }").exec()
    assert r.entries() == [["a", r[0]], ["b", r[1]], ["a", r[2]]]  # every slice is there
    assert r.fromEntries() == {"a": r[2], "b": r[1]}
    assert r.key("a") == r[2] == r.fromEntries()["a"]


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
