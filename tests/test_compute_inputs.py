"""Input sets of the Compute API: ranges, multi-dimensional ranges, streams, distributions.

The vectors V2-V4 and V8-V12 of ``shared/spec/compute-for-vectors.md`` are checked here on the
input side (which datums the slices get); ``test_compute_vectors.py`` runs them through workers.
"""

from __future__ import annotations

import statistics
import sys
import time
import tracemalloc

import pytest

from dcp_worktimes import compute
from dcp_worktimes.compute import stats
from dcp_worktimes.inputs import StreamInput, input_set, input_set_from_description
from dcp_worktimes.inputs.ranges import MultiRange, RangeError, RangeObject, js_number_string

JS = "function(i){ progress(); return i*10 }"


def datums(s):
    return [s.nth(i) for i in range(len(s))]


# -- ranges -----------------------------------------------------------------------------------


def test_v2_step_overflow_stops_before_end():
    assert datums(input_set({"start": 10, "end": 13, "step": 2})) == [10, 12]


def test_v3_group_gives_lists_of_consecutive_values():
    assert datums(input_set({"start": 10, "end": 13, "group": 2})) == [[10, 11], [12, 13]]


def test_v4_last_value_is_the_largest_multiple_of_step_not_past_end():
    r = input_set({"start": 0, "end": 1000, "step": 3})
    assert len(r) == 334
    assert r.nth(333) == 999 and r.nth(-1) == 999


def test_v8_decimal_steps_are_exact():
    r = input_set({"start": 0.1, "end": 0.5, "step": 0.1})
    values = datums(r)
    assert values == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert all(type(v) is float for v in values)
    assert 0.30000000000000004 not in values
    assert [js_number_string(v) for v in values] == ["0.1", "0.2", "0.3", "0.4", "0.5"]


def test_ints_stay_ints_and_floats_stay_floats():
    assert [type(v) for v in datums(input_set({"start": 1, "end": 3}))] == [int, int, int]
    assert datums(input_set({"start": 1.0, "end": 2, "step": 0.5})) == [1.0, 1.5, 2.0]
    assert type(input_set({"start": 1.0, "end": 2}).nth(0)) is float


def test_v9_step_and_group_together():
    assert datums(input_set({"start": 1, "end": 9, "step": 3, "group": 2})) == [[1, 4], [7]]


def test_descending_range_defaults_to_a_negative_step():
    assert datums(input_set({"start": 3, "end": 1})) == [3, 2, 1]
    assert datums(input_set({"start": 3, "end": 1, "step": -2})) == [3, 1]


def test_v10_step_moving_away_from_end_is_an_error_naming_the_fix():
    with pytest.raises(RangeError, match=r"step must approach end.*step=1"):
        input_set({"start": 1, "end": 3, "step": -1})
    with pytest.raises(RangeError, match="must not be 0"):
        input_set({"start": 1, "end": 3, "step": 0})


@pytest.mark.parametrize("group", [0, 1.5, -2, "2", True])
def test_v11_group_must_be_a_positive_integer(group):
    with pytest.raises(RangeError, match="group must be a positive integer"):
        input_set({"start": 1, "end": 10, "group": group})


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), None, "ten", [1]])
def test_non_finite_or_non_numeric_bounds_are_refused(bad):
    with pytest.raises(RangeError, match="range end"):
        input_set({"start": 1, "end": bad})


def test_unknown_range_keys_and_missing_end_are_named():
    with pytest.raises(RangeError, match=r"unknown keys \['stop'\]"):
        input_set({"start": 1, "stop": 3})
    with pytest.raises(RangeError, match="needs end"):
        input_set({"start": 1})


def test_v12_huge_range_is_instant_and_holds_no_per_slice_memory():
    compute.for_({"start": 0, "end": 1}, "function(i){ progress(); return i }")  # first-use imports: not per job
    tracemalloc.start()
    t0 = time.perf_counter()
    job = compute.for_({"start": 0, "end": 10**12}, "function(i){ progress(); return i }")
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(job.input_set) == 10**12 + 1  # exact
    assert job.input_set.nth(10**12) == 10**12
    assert elapsed < 1.0  # typically ~1 ms; generous for a loaded machine
    assert peak < 2_000_000  # bytes: the work capture and the job object, nothing per slice
    assert sys.getsizeof(job.input_set) < 1000


def test_huge_ranges_have_an_exact_size_and_a_clear_len_error(store):
    job = compute.for_({"start": 0, "end": 10**19}, JS)
    assert "slices=10000000000000000001" in repr(job)
    assert job.input_set.size == 10**19 + 1
    assert job.input_set.nth(10**19) == 10**19
    with pytest.raises(OverflowError, match=r"\.size"):
        len(job.input_set)
    multi = compute.for_([{"start": 1, "end": 1e10}, {"start": 1, "end": 1e10}], "function(a, b){ return a }")
    assert multi.input_set.size == 10**20 and "slices=100000000000000000000" in repr(multi)
    assert multi.input_set.nth(10**20 - 1) == [1e10, 1e10]
    assert multi.status()["total"] == 10**20
    # sizes that fit keep working with len()
    assert len(RangeObject(0, sys.maxsize - 1)) == sys.maxsize


def test_big_integers_are_exact():
    r = input_set({"start": 10**30, "end": 10**30 + 10, "step": 5})
    assert datums(r) == [10**30, 10**30 + 5, 10**30 + 10]


def test_range_description_round_trips_exactly():
    for desc in ({"start": 0.1, "end": 0.5, "step": 0.1}, {"start": 1, "end": 9, "step": 3, "group": 2},
                 {"start": 10**30, "end": 10**30 + 10}, {"start": 1, "end": 2, "step": 1 / 3}):
        r = input_set(desc)
        back = input_set_from_description(r.description())
        assert datums(back) == datums(r)
    # the scheduler's own spelling (plain ints) is accepted too
    assert datums(input_set_from_description({"kind": "range", "start": 0, "end": 9, "step": 1})) == list(range(10))


def test_range_object_class_and_dict_agree():
    assert datums(RangeObject(start=10, end=13, group=2)) == datums(input_set({"start": 10, "end": 13, "group": 2}))
    assert input_set(RangeObject(1, 3)) == RangeObject(1, 3)


# -- float ranges never hold silent duplicates; numpy bounds ----------------------------------


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


def test_numpy_scalars_as_range_bounds():
    import numpy as np  # a test dependency: these must run, not skip
    job = compute.for_(np.float64(0.5), np.float64(2.5), JS)
    assert list(job.input_set) == [0.5, 1.5, 2.5]
    assert list(compute.for_(np.int64(1), np.int64(3), JS).input_set) == [1, 2, 3]
    assert list(compute.for_({"start": np.float32(0.5), "end": 2}, JS).input_set) == [0.5, 1.5]


# -- multi-dimensional ranges and streams -----------------------------------------------------


def test_v5_multi_dimensional_range_is_row_major():
    m = input_set([{"start": 1, "end": 2}, {"start": 3, "end": 5}])
    assert isinstance(m, MultiRange)
    assert m.shape == (2, 3)
    assert datums(m) == [[1, 3], [1, 4], [1, 5], [2, 3], [2, 4], [2, 5]]
    back = input_set_from_description(m.description())
    assert datums(back) == datums(m)


def test_python_ranges_make_multi_dimensional_inputs_as_range_objects_do(store):
    assert compute.for_([range(1, 3), range(3, 6)], JS).input_set.shape == (2, 3)
    job = compute.for_([RangeObject(1, 2), range(3, 5)], "function(i, j){ progress(); return i * j }")
    assert [list(row) for row in job.exec(cores=1)] == [[3, 4], [6, 8]]
    with pytest.raises(RangeError, match=r"dimension 1: range\(0, 0\) is empty"):
        compute.for_([range(1, 3), range(0)], JS)
    with pytest.raises(TypeError, match=r"input 0 .*send list\(range\(1, 3\)\), or make every input a range"):
        compute.for_([range(1, 3), 5], JS).exec(cores=1)  # a list mixing ranges and data is data


def test_multi_dimensional_errors_name_the_dimension():
    with pytest.raises(RangeError, match="dimension 1: .*group"):
        input_set([{"start": 1, "end": 2}, {"start": 3, "end": 5, "group": 0}])


def test_lists_and_generators_become_streams_consumed_in_batches():
    pulled = []

    def gen():
        for i in range(25):
            pulled.append(i)
            yield i

    s = input_set(gen())
    assert isinstance(s, StreamInput)
    with pytest.raises(TypeError):
        len(s)
    batches = s.batches(10)
    first = next(batches)
    assert first == [(i, i) for i in range(10)]
    assert len(pulled) == 10  # lazily: only one batch read so far
    rest = [b for b in batches]
    assert [len(b) for b in rest] == [10, 5]
    assert len(s) == 25 and s.nth(24) == 24
    assert input_set([123, 456]).description() == {"kind": "stream"}
    assert len(input_set([123, 456])) == 2


def test_the_results_follow_the_inputs_sent_not_a_length_read_before(store):
    """A list changed between for_() and exec(), or a __len__ that lies: exec() returned what the
    length said (a result lost, or None for a slice that never existed)."""
    grown = [1, 2]
    job = compute.for_(grown, JS)
    grown.append(3)
    assert list(job.exec(cores=1)) == [10, 20, 30] and job.status()["total"] == 3
    shrunk = [1, 2, 3]
    job = compute.for_(shrunk, JS)
    shrunk.pop()
    r = job.exec(cores=1)
    assert list(r) == [10, 20] and r.entries() == [["1", 10], ["2", 20]]

    class Liar:
        def __len__(self):
            return 5

        def __iter__(self):
            return iter([7, 8])

    assert list(compute.for_(Liar(), JS).exec(cores=1)) == [70, 80]


def test_a_list_of_data_dicts_is_data_even_with_a_start_key():
    data = [{"start": 1, "label": "a"}, {"start": 2, "label": "b"}]
    inputs = compute.for_(data, JS).input_set
    assert isinstance(inputs, compute.StreamInput) and list(inputs.batches())[0] == [(0, data[0]), (1, data[1])]
    # dicts with only range keys are still ranges (and their mistakes are still named)
    assert isinstance(compute.for_([{"start": 1, "end": 2}, {"start": 1, "end": 3}], JS).input_set, compute.MultiRange)
    with pytest.raises(compute.RangeError, match="needs end"):
        compute.for_([{"start": 1}, {"start": 1, "end": 3}], JS)


@pytest.mark.parametrize("bad", ["abc", b"abc", {"a": 1}, 42.5j])
def test_inputs_that_are_almost_always_mistakes_are_refused(bad):
    with pytest.raises((RangeError, TypeError)):
        input_set(bad)


# -- distributions ----------------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda seed: stats.set.random(200, seed=seed),
    lambda seed: stats.set.randomInt(200, 1, 6, seed=seed),
    lambda seed: stats.set.normal(200, 10, 2, seed=seed),
    lambda seed: stats.set.poisson(200, 4.5, seed=seed),
    lambda seed: stats.set.poisson(200, 250.0, seed=seed),
    lambda seed: stats.set.binomial(200, 20, 0.3, seed=seed),
    lambda seed: stats.set.binomial(200, 5000, 0.7, seed=seed),
])
def test_distributions_are_seedable_lazy_and_rebuilt_from_descriptions(make):
    a, b, c = make(7), make(7), make(8)
    assert datums(a) == datums(b)
    assert datums(a) != datums(c)
    back = input_set_from_description(a.description())
    assert back.nth(123) == a.nth(123)
    # index-addressable: slice i does not depend on the others having been drawn
    assert make(7).nth(150) == datums(a)[150]


def test_unseeded_distribution_records_its_seed():
    s = stats.set.normal(10)
    assert isinstance(s.description()["seed"], int)
    assert datums(input_set_from_description(s.description())) == datums(s)


def test_distribution_moments_are_plausible():
    n = 4000
    rnd = datums(stats.set.random(n, seed=1))
    assert all(0 <= x < 1 for x in rnd) and abs(statistics.mean(rnd) - 0.5) < 0.03
    ints = datums(stats.set.randomInt(n, 1, 6, seed=1))
    assert set(ints) == {1, 2, 3, 4, 5, 6}
    norm = datums(stats.set.normal(n, 10, 2, seed=1))
    assert abs(statistics.mean(norm) - 10) < 0.15 and abs(statistics.stdev(norm) - 2) < 0.15
    for lam in (3.0, 400.0):
        p = datums(stats.set.poisson(n, lam, seed=2))
        assert all(isinstance(x, int) and x >= 0 for x in p)
        assert abs(statistics.mean(p) - lam) < 0.1 * lam ** 0.5 * 4
        assert abs(statistics.variance(p) / lam - 1) < 0.15
    for trials, prob in ((30, 0.2), (10000, 0.6)):
        bs = datums(stats.set.binomial(n, trials, prob, seed=3))
        mean, var = trials * prob, trials * prob * (1 - prob)
        assert all(0 <= x <= trials for x in bs)
        assert abs(statistics.mean(bs) - mean) < 4 * (var / n) ** 0.5 + 1e-9
        assert abs(statistics.variance(bs) / var - 1) < 0.15
    assert datums(stats.set.identity(4)) == [0, 1, 2, 3]


def test_huge_distribution_is_lazy():
    t0 = time.perf_counter()
    s = stats.set.normal(10**12, seed=5)
    assert len(s) == 10**12
    assert isinstance(s.nth(10**12 - 1), float)
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize("call, message", [
    (lambda: stats.set.randomInt(5, 6, 1), "high .* must be >= low"),
    (lambda: stats.set.normal(5, 0, -1), "stddev must be >= 0"),
    (lambda: stats.set.binomial(5, 10, 1.5), r"p is a probability"),
    (lambda: stats.set.poisson(5, -1), "poisson lam"),
    (lambda: stats.set.random(-1), "at least 0"),
    (lambda: stats.set.random(2.5), "must be an integer"),
    (lambda: stats.set.normal(5, sigma=1), "unexpected arguments"),
])
def test_distribution_parameters_are_validated(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_the_specs_distribution_example_takes_the_seed_last():
    """seed-compute-api.txt: compute.for(stats.set.poisson(10, 0.1, 100), (i) => i)."""
    s = stats.set.poisson(10, 0.1, 100)
    assert len(s) == 10 and s.seed == 100 and list(s) == list(stats.set.poisson(10, 0.1, seed=100))
    with pytest.raises(ValueError, match="arguments do not fit"):
        stats.set.poisson(10, 0.1, 100, 7)


def test_js_number_strings():
    assert [js_number_string(v) for v in (1, 1.0, 0.5, 1e21, 1e-7, 123456789012.5, -0.0, 2**70)] == [
        "1", "1", "0.5", "1e+21", "1e-7", "123456789012.5", "0", str(2**70)]
    assert js_number_string(1e-5) == "0.00001"
    assert js_number_string([10, 11]) == "10,11"


@pytest.mark.parametrize("value, js", [
    # whole floats past 2**53: JavaScript writes the shortest digits that read back as the same
    # float; the keys had the float's exact binary value ("100000000000000098304")
    (1e20 + 1e5, "100000000000000100000"),
    (123456789012345680000.0, "123456789012345680000"),
    (-2.0**60, "-1152921504606847000"),
    (9007199254740993.0, "9007199254740992"),
    (5e20, "500000000000000000000"),
    # inside lists, every value as String() writes it (dicts and bytes were Python's repr)
    ([{"a": 1}], "[object Object]"),
    ([b"ab"], "97,98"),
    ([[1, 2], {}], "1,2,[object Object]"),
    ([None, "x", [True]], ",x,true"),
])
def test_keys_are_what_string_writes_in_javascript(value, js):
    assert js_number_string(value) == js


def test_keys_of_a_range_of_large_whole_floats_are_the_work_s_own_strings():
    r = compute.for_({"start": 1e20, "end": 1e20 + 3e5, "step": 1e5}, "function (i) { return String(i) }").exec()
    assert r.keys() == list(r) and r.key("100000000000000100000") == "100000000000000100000"


def test_python_ranges_stay_lazy():
    r = input_set(range(10, 0, -3))
    assert isinstance(r, RangeObject) and datums(r) == [10, 7, 4, 1]
    huge = input_set(range(10**15))
    assert len(huge) == 10**15 and huge.nth(10**15 - 1) == 10**15 - 1
    assert isinstance(input_set(range(0)), StreamInput)  # empty: nothing to describe
