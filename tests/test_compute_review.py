"""Fixes from the Compute API review: huge ranges, numpy inputs, cancel before exec, arguments
checked before deploying, job settings checked like ``requires()``, clearer messages, failure
counts of multi-dimensional jobs. Each test failed before its fix."""

from __future__ import annotations

import sys

import pytest

from types import SimpleNamespace

from dcp_worktimes import compute
from math import floor as fl
from math import sqrt

from dcp_worktimes.compute.results import ResultHandle, SliceFailed, nest
from dcp_worktimes.inputs.ranges import RangeObject
from dcp_worktimes.compute.work import capture as capture_with_worktime


def capture(work):
    """The captured work, as the worktime it defaults to takes it (``.worktime`` names that worktime)."""
    name, captured = capture_with_worktime(work)
    return SimpleNamespace(payload=captured.work, options=captured.options, default_worktime=name)
from dcp_worktimes.errors import ErrorCode, WorkError, WorktimeNotFound
from dcp_worktimes.plugins import get_worktimes
from dcp_worktimes.scheduler import open_scheduler
from dcp_worktimes.values import UnserializableValue

JS = "function(i){ progress(); return i*10 }"
INSTALLED = set(get_worktimes())
needs_map_basic = pytest.mark.skipif("map-basic" not in INSTALLED, reason="worktime map-basic is not installed")
needs_python = pytest.mark.skipif("python" not in INSTALLED, reason="worktime python is not installed")

# -- module-level work for the default-value checks (their source is what is sent) ----------------
SCALE = 2.5
TABLE = {"a": [1, (2,)], "b": b"x", "inf": float("inf")}
UNSENDABLE = object()


def scaled(x, scale=SCALE, *, table=TABLE, k=-1, n=int("3")):
    return [x * scale, table["a"], table["inf"] > 0, k, n]


def scaled_multiline(x,
                     scale=(SCALE
                            * 2), k=1):
    return x * scale + k


def unsendable_default(x, o=UNSENDABLE):
    return x


def kw_unsendable(x, *, o=UNSENDABLE):
    return x


def uses_sqrt(x):
    return sqrt(x)


def uses_aliased_floor(x):
    return fl(x)


scaled_lambda = lambda x, s=SCALE: x * s  # noqa: E731


def deployed_jobs(url):
    with open_scheduler(url) as s:
        return s.list_jobs()


# -- 16: ranges with 2**63 or more slices ----------------------------------------------------------


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


def test_exec_of_a_job_too_large_for_the_store_says_why_before_deploying(store):
    for inputs in ({"start": 0, "end": 10**19}, [{"start": 1, "end": 1e10}, {"start": 1, "end": 1e10}]):
        with pytest.raises(ValueError, match=r"2\*\*63-1.*split the range"):
            compute.for_(inputs, "function(a, b){ return a }").exec()
    assert deployed_jobs(store) == []


# -- 17: numpy inputs and arguments ---------------------------------------------------------------


def test_numpy_scalars_as_range_bounds():
    import numpy as np  # a test dependency: these must run, not skip
    job = compute.for_(np.float64(0.5), np.float64(2.5), JS)
    assert list(job.input_set) == [0.5, 1.5, 2.5]
    assert list(compute.for_(np.int64(1), np.int64(3), JS).input_set) == [1, 2, 3]
    assert list(compute.for_({"start": np.float32(0.5), "end": 2}, JS).input_set) == [0.5, 1.5]


@needs_map_basic
def test_numpy_arrays_and_scalars_as_inputs_and_arguments(store):
    import numpy as np  # a test dependency: these must run, not skip
    r = compute.for_(np.arange(3), "function(x, a, b){ return [x, a, b] }", [np.int64(5), np.array([1.5, 2.5])],
                     cores=1).exec()
    assert r == [[0, 5, [1.5, 2.5]], [1, 5, [1.5, 2.5]], [2, 5, [1.5, 2.5]]]
    assert r.keys() == ["0", "1", "2"]
    rows = compute.for_(np.array([[1, 2], [3, 4]]), "function(row){ return row[0] + row[1] }", cores=1).exec()
    assert rows == [3, 7]


# -- 18, 19: cancel before exec; exec() arguments checked before deploying ------------------------


def test_cancel_before_exec_is_honoured(store):
    job = compute.for_(1, 3, JS)
    job.cancel()
    with pytest.raises(compute.JobCancelled, match="cancelled before"):
        job.exec()
    with pytest.raises(compute.JobCancelled):
        job.deploy()
    assert deployed_jobs(store) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"cores": 0}, "cores"), ({"cores": -2}, "cores"), ({"cores": 1.5}, "cores"), ({"timeout": -1}, "timeout"),
    ({"timeout": 0}, "timeout"), ({"timeout": float("nan")}, "timeout"), ({"timeout": "5"}, "timeout"),
])
def test_bad_exec_arguments_raise_before_deploying(store, kwargs, message):
    with pytest.raises(ValueError, match=message):
        compute.for_(1, 3, JS).exec(**kwargs)
    assert deployed_jobs(store) == []


def test_bad_job_cores_raise_before_deploying(store):
    with pytest.raises(ValueError, match="job.cores"):
        compute.for_(1, 3, JS, cores=0).exec()
    with pytest.raises(ValueError, match=r"exec\(cores=...\)=100000 is more than"):
        compute.for_(1, 3, JS).exec(cores=100_000)
    assert deployed_jobs(store) == []


# -- 23: messages and settings checked like requires() --------------------------------------------


def test_work_between_start_and_end_is_named():
    with pytest.raises(TypeError, match=r"work must come after start, end\[, step\]"):
        compute.for_(1, JS, 3)


def test_resume_of_a_non_string_id_says_what_ids_are(store):
    for bad in (None, 5):
        with pytest.raises(TypeError, match="job ids are strings.*job.id"):
            compute.resume(bad)
    with pytest.raises(ValueError, match="the job id is empty"):
        compute.resume("  ")


def test_scheduler_of_the_wrong_type_is_named(store):
    job = compute.for_(1, 3, JS, scheduler=5)
    with pytest.raises(TypeError, match="scheduler must be a scheduler URL.*got int 5"):
        job.exec()
    with pytest.raises(TypeError, match="scheduler must be a scheduler URL"):
        compute.resume("abc", scheduler=5)


def test_a_list_of_data_dicts_is_data_even_with_a_start_key():
    data = [{"start": 1, "label": "a"}, {"start": 2, "label": "b"}]
    inputs = compute.for_(data, JS).input_set
    assert isinstance(inputs, compute.StreamInput) and list(inputs.batches())[0] == [(0, data[0]), (1, data[1])]
    # dicts with only range keys are still ranges (and their mistakes are still named)
    assert isinstance(compute.for_([{"start": 1, "end": 2}, {"start": 1, "end": 3}], JS).input_set, compute.MultiRange)
    with pytest.raises(compute.RangeError, match="needs end"):
        compute.for_([{"start": 1}, {"start": 1, "end": 3}], JS)


def test_unserializable_options_name_the_option(store):
    job = compute.for_(1, 3, JS, options={"strict": True, "bad": object()})
    with pytest.raises(UnserializableValue, match=r"job.options\['bad'\]"):
        job.exec()
    assert deployed_jobs(store) == []


@pytest.mark.parametrize("settings, message", [
    ({"modules": {"a": 5}}, r"job.modules\['a'\]: source must be str or bytes"),
    ({"modules": {"": "x = 1"}}, "module names must be non-empty strings"),
    ({"modules": ["a.py"]}, "job.modules must be a dict"),
    ({"files": {"a": "text"}}, r"job.files\['a'\] is a str.*encode"),
    ({"files": {"../a": b"x"}}, "relative paths"),
    ({"files": {"a": 5}}, r"job.files\['a'\] must be bytes"),
])
def test_modules_and_files_settings_are_checked(settings, message):
    with pytest.raises(TypeError, match=message):
        compute.for_(1, 3, JS, **settings)
    job = compute.for_(1, 3, JS)
    with pytest.raises(TypeError, match=message):
        for k, v in settings.items():
            setattr(job, k, v)


def test_modules_and_files_changed_in_place_are_checked_before_deploying(store):
    job = compute.for_(1, 3, JS, files={"a.txt": b"x"})
    job.modules["m"] = 5
    with pytest.raises(TypeError, match=r"job.modules\['m'\]"):
        job.exec()
    assert deployed_jobs(store) == []


def test_worktime_without_a_name_is_refused():
    with pytest.raises(TypeError, match="no name before '@'"):
        compute.for_(1, 3, JS, worktime="@^1")
    job = compute.for_(1, 3, JS, worktime="map-basic@^1")
    assert (job.worktime, job.worktime_version) == ("map-basic", "^1")


# -- failure counts of multi-dimensional jobs --------------------------------------------------------


def test_failure_count_of_a_nested_handle_counts_slices():
    ranges = [RangeObject(1, 2), RangeObject(1, 3)]
    failed = [SliceFailed(n, "EUNCAUGHT", "boom") for n in (3, 4, 5)]
    values = [1, 2, 3] + failed
    handle = nest(values, (2, 3), ranges, failed, "j")
    assert "3 of 6 slices failed" in str(compute.JobFailed(handle, failed, "j"))
    assert "1 of 2 slices failed" in str(compute.JobFailed(ResultHandle([1, failed[0]]), failed[:1], "j"))


@needs_map_basic
def test_failure_summary_of_a_multi_dimensional_job(store):
    job = compute.for_([{"start": 1, "end": 2}, {"start": 1, "end": 3}],
                       "function(i, j){ if (i == 2) throw new Error('row two'); return i * j }", cores=1)
    with pytest.raises(compute.JobFailed) as info:
        job.exec()
    assert "3 of 6 slices failed" in str(info.value)
    assert info.value.results[0] == [1, 2, 3] and all(f.code == ErrorCode.EUNCAUGHT for f in info.value.failures)


# -- 20: default values that use module globals; names imported from modules ----------------------


def run_source(work, *args):
    ns: dict = {}
    exec(work.payload, ns)  # the source alone, as the worker gets it: no module globals
    return ns[work.options["function"]](*args)


def test_default_values_travel_as_values():
    w = capture(scaled)
    assert w.payload.startswith("def scaled(x, scale=2.5, *, table={'a': [1, (2,)], 'b': b'x', 'inf': float('inf')}, k=-1, n=3):")
    assert run_source(w, 2) == [5.0, [1, (2,)], True, -1, 3]
    multi = capture(scaled_multiline)
    assert multi.payload.splitlines()[3] == "    return x * scale + k"  # the body keeps its line number
    assert run_source(multi, 2) == 11.0
    assert run_source(capture(scaled_lambda), 2) == 5.0


@pytest.mark.parametrize("fn, param", [(unsendable_default, "o"), (kw_unsendable, "o")])
def test_default_values_outside_the_value_set_are_refused(fn, param):
    with pytest.raises(WorkError, match=rf"default of parameter '{param}'.*\(UNSENDABLE\).*builtins.object.*job argument"):
        capture(fn)


def test_names_imported_from_modules_say_import_it_inside():
    with pytest.raises(WorkError, match=r"import it inside the function: from math import sqrt$"):
        capture(uses_sqrt)
    with pytest.raises(WorkError, match=r"from math import floor as fl"):
        capture(uses_aliased_floor)


@needs_python
def test_default_from_a_global_runs_on_the_python_worktime(store):
    r = compute.for_([1, 2], scaled, cores=1).exec()
    assert r == [[2.5, [1, [2]], True, -1, 3], [5.0, [1, [2]], True, -1, 3]]


def test_more_bad_arguments_are_named_before_deploying(store):
    with pytest.raises(TypeError, match=r"exec\(local=...\) must be True .* got 'no'"):
        compute.for_(1, 3, JS).exec(local="no")
    with pytest.raises(WorktimeNotFound, match="write it as a string"):
        compute.for_(1, 3, JS, worktime_version=1).exec()
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(ValueError, match="nested too deeply"):
        compute.for_([deep], JS).exec()
    assert deployed_jobs(store) == []


def test_exec_with_a_new_cost_updates_a_deployed_jobs_bid(store):
    """seed-compute-api.txt, "Altering Price Parameters": g.exec(compute.safeMarketValue) updates the bid."""
    job = compute.for_(2, 5, JS, cores=1)
    job_id = job.deploy(compute.marketValue)
    assert job.exec({"maxPaymentPerSlice": 5}) == [20, 30, 40, 50]
    with open_scheduler(store) as s:
        assert s.get_job(job_id).payment_per_slice == 5


def test_a_misspelt_worktime_option_fails_before_deploying(store):
    job = compute.for_([1], JS, options={"stirct": True})
    with pytest.raises(WorkError, match="worktime map-basic has no option 'stirct' .did you mean 'strict'.."):
        job.exec()
    assert deployed_jobs(store) == []
    assert compute.for_([1], "x => x", options={"strict": True}).exec() == [1]
