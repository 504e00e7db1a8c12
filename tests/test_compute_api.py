"""Compute API pieces on the deployer's side: argument forms, job settings and ``exec()``
arguments checked before deployment, work capture, result handles, cost profiles, events. Most
need no worker; a few run a small job to show the same behaviour end to end. Vectors V1 (handle
methods), V10/V11 (via for_), V13 (argument form), V15 and V17 live here; execution is in
``test_compute_vectors.py``."""

from __future__ import annotations

import collections
from decimal import Decimal
import enum
import math
import pathlib
import pathlib as pl
from math import floor as fl
from math import pow
from math import sqrt

import pytest

from types import SimpleNamespace

from dcp_worktimes import compute
from dcp_worktimes.compute.cost import CostProfileError, parse_cost
from dcp_worktimes.compute.results import ResultHandle, ResultKeyError, SliceFailed, nest
from dcp_worktimes.compute.work import capture as capture_with_worktime


def capture(work):
    """The captured work, as the worktime it defaults to takes it (``.worktime`` names that worktime)."""
    name, captured = capture_with_worktime(work)
    return SimpleNamespace(payload=captured.work, options=captured.options, default_worktime=name)
from dcp_worktimes.errors import ErrorCode, WorkError, WorktimeNotFound
from dcp_worktimes.inputs.ranges import RangeObject
from dcp_worktimes.plugins import get_worktimes
from dcp_worktimes.scheduler import open_scheduler
from dcp_worktimes.values import MAX_DEPTH, UnserializableValue

JS = "function(i){ progress(); return i*10 }"
INSTALLED = set(get_worktimes())
needs_map_basic = pytest.mark.skipif("map-basic" not in INSTALLED, reason="worktime map-basic is not installed")
needs_python = pytest.mark.skipif("python" not in INSTALLED, reason="worktime python is not installed")



def plan(job, local=True):
    """The JobRecord ``exec()`` would store, after every check (nothing is stored)."""
    from dcp_worktimes.compute.deploy import plan as deploy_plan

    return deploy_plan(job, compute.parse_cost(None), local, job._scheduler())

def deployed_jobs(url):
    with open_scheduler(url) as s:
        return s.list_jobs()


# -- for_ forms and bad calls -----------------------------------------------------------------


def test_forms_build_the_same_inputs():
    assert list(compute.for_(1, 3, JS).input_set) == [1, 2, 3]
    assert list(compute.for_(1, 5, 2, JS).input_set) == [1, 3, 5]
    assert list(compute.for_({"start": 1, "end": 3}, JS).input_set) == [1, 2, 3]
    assert list(compute.for_(compute.RangeObject(1, 3), JS).input_set) == [1, 2, 3]
    assert compute.for_([{"start": 1, "end": 2}, {"start": 3, "end": 5}], JS).input_set.shape == (2, 3)
    assert len(compute.for_(compute.stats.set.random(4, seed=1), JS).input_set) == 4
    job = compute.for_(1, 3, "function(i, a, b){ return i + a + b }", [10, 100])  # V13's form
    assert job.arguments == [10, 100]
    assert list(compute.do(3, JS).input_set) == [0, 1, 2]
    # work= and arguments= as keywords, as compute.do takes them
    for job in (compute.for_([1, 2], JS, arguments=[5]), compute.for_([1, 2], work=JS, arguments=[5]),
                compute.for_(1, 2, work=JS, arguments=[5])):
        assert len(job.input_set) == 2 and job.arguments == [5] and job._work_source == JS


@pytest.mark.parametrize("call, message", [
    (lambda: compute.for_(JS, [1, 2]), "inputs come first"),
    (lambda: compute.for_(1, 3), "work is missing"),
    (lambda: compute.for_(1, JS), "needs start and end"),
    (lambda: compute.for_(1, 3, JS, 10), r"must be a list.*\[10\]"),
    (lambda: compute.for_([1, 2], JS, (1,), [2]), "too many arguments"),
    (lambda: compute.for_([1, 2], 42), "expected the work"),
    (lambda: compute.for_([1], JS, inputs=[2]), r"inputs= cannot be given by keyword.*by position"),
    (lambda: compute.for_(start=1, end=3, work=JS), r"start=, end= cannot be given by keyword"),
    (lambda: compute.for_([1], JS, work=JS), "the work is given twice"),
    (lambda: compute.for_([1], JS, [5], arguments=[5]), "arguments= is given twice"),
    (lambda: compute.for_({"start": 1, "end": 3, "step": -1}, JS), "step must approach end"),
    (lambda: compute.for_({"start": 1, "end": 10, "group": 0}, JS), "group must be a positive integer"),
    (lambda: compute.for_({"start": 1, "end": 10, "group": 1.5}, JS), "group must be a positive integer"),
    (lambda: compute.for_("abc", JS), "inputs come first"),
    (lambda: compute.for_([1], JS, nonsense=1), "unknown job setting 'nonsense'"),
    (lambda: compute.do(0, JS), "positive integer"),
])
def test_bad_calls_raise_at_once_naming_the_fix(call, message):
    with pytest.raises((TypeError, ValueError)) as info:
        call()
    assert __import__("re").search(message, str(info.value)), str(info.value)


def test_work_between_start_and_end_is_named():
    with pytest.raises(TypeError, match=r"work must come after start, end\[, step\]"):
        compute.for_(1, JS, 3)


def test_v17_unknown_worktime_lists_installed_ones_before_deployment(store):
    job = compute.for_([1, 2], JS)
    job.worktime = "no-such-worktime"
    with pytest.raises(WorktimeNotFound) as info:
        job.exec()
    assert info.value.code == ErrorCode.ENOWORKTIME
    assert "no-such-worktime" in str(info.value) and "installed:" in str(info.value)
    assert "echo" in str(info.value)  # the reference worktime is installed in the dev environment
    assert deployed_jobs(store) == []


def test_worktime_range_that_nothing_satisfies_is_enoworktime(store):
    job = compute.for_([1], "", worktime="echo@^9.0.0")
    assert job.worktime == "echo" and job.worktime_version == "^9.0.0"
    with pytest.raises(WorktimeNotFound, match=r"echo@\^9.0.0"):
        job.exec()
    job.worktime_version = "not a range"
    with pytest.raises(WorktimeNotFound, match="npm-style range"):
        job.exec()
    assert deployed_jobs(store) == []


def test_v15_cost_profile_without_payment_fields_is_enofunds(store):
    job = compute.for_([1, 2], "", worktime="echo")
    with pytest.raises(CostProfileError) as info:
        job.exec({})
    assert info.value.code == ErrorCode.ENOFUNDS
    assert "maxPaymentPerSlice" in str(info.value) and "maxTotalPayment" in str(info.value)
    assert deployed_jobs(store) == []


def test_cost_profiles():
    assert parse_cost(0).max_total_payment == 0.0
    assert parse_cost(123).max_total_payment == 123.0
    assert parse_cost(None) is compute.marketValue
    assert parse_cost("safeMarketValue") is compute.safeMarketValue
    assert parse_cost({"maxPaymentPerSlice": 0.5}).payment_per_slice(10) == 0.5
    assert parse_cost({"maxTotalPayment": 10}).payment_per_slice(4) == 2.5
    # both caps hold: 10 slices at 0.5 would pay 5, over the total of 1
    assert parse_cost({"maxPaymentPerSlice": 0.5, "maxTotalPayment": 1}).payment_per_slice(10) == 0.1
    assert parse_cost({"maxPaymentPerSlice": 0.05, "maxTotalPayment": 1}).payment_per_slice(10) == 0.05
    # a stream of unknown length: the market rate within the total, not the free rate
    market = parse_cost(compute.marketValue).payment_per_slice(None)
    assert parse_cost(100).payment_per_slice(None) == market > 0
    assert parse_cost(market / 10).payment_per_slice(None) == market / 10
    assert parse_cost(compute.safeMarketValue).payment_per_slice(5) > parse_cost(compute.marketValue).payment_per_slice(5)
    for bad in ({}, {"maxTotalPayment": None}, -1, math.inf, "cheap", {"price": 1}, True, [1]):
        with pytest.raises(CostProfileError) as info:
            parse_cost(bad)
        assert info.value.code == ErrorCode.ENOFUNDS


@pytest.mark.parametrize("requirements, message", [
    ({"machine": {"gpu": "yes"}}, "must be True"),
    (["gpu"], "must be a dict of booleans"),
])
def test_malformed_requirements_are_refused_before_deployment(store, requirements, message):
    job = compute.for_([1], "", worktime="echo")
    job.requirements = requirements
    with pytest.raises(compute.RequirementsError, match=message):
        job.exec()
    assert deployed_jobs(store) == []


def test_unsatisfiable_requirements_are_refused_before_deployment(store):
    job = compute.for_([1], "", worktime="echo", requirements={"machine": {"gpu": True}})
    with pytest.raises(compute.RequirementsError) as info:
        job.exec()
    assert "machine.gpu=true" in str(info.value) and "relax job.requirements" in str(info.value)
    assert deployed_jobs(store) == []
    # "must not have" is satisfiable here: echo advertises {"echo": True} only
    ok = compute.for_([1], "", worktime="echo", requirements={"machine": {"gpu": False}})
    plan(ok).spec  # validates without raising


def test_unserializable_arguments_and_inputs_are_refused_before_deployment(store):
    with pytest.raises(TypeError, match="job arguments"):
        compute.for_([1], "", [object()], worktime="echo").exec()
    with pytest.raises(TypeError, match="input 1"):
        compute.for_([1, {1, 2}], "", worktime="echo").exec()
    assert deployed_jobs(store) == []


def test_a_datum_as_deep_as_the_value_set_allows_is_sent_one_deeper_is_refused_by_name(store):
    v = 0
    for _ in range(MAX_DEPTH):
        v = [v]
    (back,) = compute.for_([v], "", worktime="echo").exec()
    depth = 0
    while isinstance(back, list) and len(back) == 1:  # walked: == would recurse past the test's limit
        back, depth = back[0], depth + 1
    assert (back, depth) == (0, MAX_DEPTH)
    with pytest.raises(TypeError, match=f"input 0 .*nested more than {MAX_DEPTH} levels"):
        compute.for_([[v]], "", worktime="echo").exec()
    empty = []  # innermost empty: msgpack packs it at one level more than it unpacks (every worker died)
    for _ in range(MAX_DEPTH):
        empty = [empty]
    with pytest.raises(TypeError, match=f"input 1 .*nested more than {MAX_DEPTH} levels"):
        compute.for_([1, empty], "", worktime="echo").exec()


@pytest.mark.parametrize("inputs, args, where", [
    ([1, 2], [{(1, 2): 3}], "job arguments"),
    ([1, {"ok": {(1, 2): "a"}}, 3], [], "input 1"),
    ((x for x in [1, 2, {frozenset([1]): "a"}]), [], "input 2"),  # a stream: pushed in batches
    ([1, collections.defaultdict(int, {(1, 2): 3})], [], "input 1"),  # a dict subclass is walked too
])
def test_a_dict_key_that_cannot_come_back_is_refused_and_the_store_stays_usable(store, inputs, args, where):
    # A tuple key travels as a list, which no decoder can make a key of: the job record or the
    # datum stored with it could not be read again (by the store's every lease, by evaluators).
    with pytest.raises(TypeError, match=f"{where}.*dict keys must be None, bool, int, float, str or bytes"):
        compute.for_(inputs, "", args, worktime="echo").exec()
    assert deployed_jobs(store) == []
    assert list(compute.for_([1, {1: "a", None: "b", 2.5: "c", b"k": "d"}], "", worktime="echo").exec()) == [
        1, {1: "a", None: "b", 2.5: "c", b"k": "d"}]


def test_keys_of_str_and_int_subclasses_travel_as_their_base_type(store):
    Colour = enum.StrEnum("Colour", {"RED": "red"})
    Size = enum.IntEnum("Size", {"BIG": 3})
    (back,) = compute.for_([{Colour.RED: 1, Size.BIG: 2}], "", worktime="echo").exec()
    assert back == {"red": 1, 3: 2} and [type(k) for k in back] == [str, int]


def test_python_function_with_a_js_worktime_is_refused(store):
    def double(x):
        return 2 * x

    job = compute.for_([1], double)
    assert job.worktime == "python"  # a Python function picks the python worktime
    job.worktime = "echo"
    with pytest.raises(WorkError, match="Python functions run on the 'python' worktime"):
        job.exec()


def test_empty_js_work_is_refused():
    with pytest.raises(WorkError, match="empty string"):
        plan(compute.for_([1], "   ")).spec


def test_limits_and_public_settings():
    job = compute.for_([1], JS, limits={"wall_time": "2s", "memory": "64MB", "progress_timeout": None})
    assert job.limits.wall_time == 2.0 and job.limits.memory == 64_000_000 and job.limits.progress_timeout is None
    with pytest.raises(ValueError, match="unknown limit"):
        job.limits = {"walltime": 1}
    job.public = {"name": "x", "colour": "red"}
    with pytest.raises(TypeError, match="job.public"):
        plan(job).spec


def test_requires_ships_modules(tmp_path):
    mod = tmp_path / "refiner.js"
    mod.write_text("exports.refine = (x, j) => x * j")
    job = compute.for_([1], JS, worktime="echo").requires(str(mod), {"other": "exports.x = 1"}, third="exports.y = 2")
    spec = plan(job).spec
    assert spec.modules == {"refiner": "exports.refine = (x, j) => x * j", "other": "exports.x = 1", "third": "exports.y = 2"}
    with pytest.raises(WorkError, match="no such file"):
        job.requires(str(tmp_path / "missing.js"))


def test_requires_finds_module_files_as_require_does_and_names_packages(tmp_path, monkeypatch):
    # The spec's example 11 lists "./ffmpeg" for ./ffmpeg.js and "core/serializer", a package of
    # DCP's package manager: the first said "no such file", the second gave no hint why.
    (tmp_path / "ffmpeg.js").write_text("exports.enhance = (f) => f")
    monkeypatch.chdir(tmp_path)
    assert plan(compute.for_([1], JS, worktime="echo").requires("./ffmpeg")).spec.modules == {
        "ffmpeg": "exports.enhance = (f) => f"}
    with pytest.raises(WorkError, match=r"'core/serializer' is, in DCP, a package pre-published .* ship its source "
                                        r"with \{'core/serializer': source\}"):
        compute.for_([1], JS).requires("core/serializer")
    with pytest.raises(WorkError, match=r"requires\('./missing'\): no such file \(nor ./missing.js\)"):
        compute.for_([1], JS).requires("./missing")
    for nothing in ("", ".", "./", "/"):  # no file name to add .js to: the same kind of error
        with pytest.raises(WorkError, match=r"requires\("):
            compute.for_([1], JS).requires(nothing)


def test_multi_dimensional_jobs_ask_for_spread_arguments():
    spec = plan(compute.for_([{"start": 1, "end": 2}, {"start": 3, "end": 5}], "", worktime="echo")).spec
    assert spec.options["spread_datum"] is True
    assert "spread_datum" not in plan(compute.for_([1, 2], "", worktime="echo")).spec.options


def test_events_reject_unknown_names():
    job = compute.for_([1], JS)
    with pytest.raises(ValueError, match="job.work.on"):
        job.on("reslut", print)
    seen = []
    job.work.on("anything", seen.append)  # custom events have free names
    job.work.emit("anything", {"value": 1})
    assert seen == [{"value": 1}] and seen[0].value == 1


# -- job settings and exec() arguments, checked before deploying -------------------------------


def test_exec_of_a_job_too_large_for_the_store_says_why_before_deploying(store):
    for inputs in ({"start": 0, "end": 10**19}, [{"start": 1, "end": 1e10}, {"start": 1, "end": 1e10}]):
        with pytest.raises(ValueError, match=r"2\*\*63-1.*split the range"):
            compute.for_(inputs, "function(a, b){ return a }").exec()
    assert deployed_jobs(store) == []


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


HUGE = 10**400  # a Python int no float holds: float(HUGE) raises OverflowError


@pytest.mark.parametrize("call, error, message", [
    # the spec: "Any interface which accepts a cost profile ... must also handle ... BigNums"
    (lambda: compute.for_(1, 3, JS).exec(HUGE), CostProfileError, r"the payment is too large \(1000"),
    (lambda: compute.for_(1, 3, JS).exec({"maxTotalPayment": HUGE}), CostProfileError, "maxTotalPayment is too large"),
    (lambda: compute.for_(1, 3, JS).exec(Decimal("1e400")), CostProfileError, "payment is too large"),
    (lambda: compute.for_(1, 3, JS).exec(Decimal("sNaN")), CostProfileError, "must be a finite amount"),
    (lambda: compute.for_(1, 3, JS).exec(timeout=HUGE), ValueError, "positive finite number of seconds"),
    (lambda: compute.for_(1, 3, JS, worker_wait=HUGE).exec(local=False), ValueError, "job.worker_wait must be a finite"),
    (lambda: compute.for_(1, 3, JS, limits={"wall_time": HUGE}).exec(), ValueError, "wall_time: must be a positive finite"),
    (lambda: compute.stats.set.normal(3, HUGE, 1), ValueError, "mean must be a finite number that fits a float"),
    (lambda: compute.stats.set.poisson(3, -HUGE), ValueError, "must be a finite number that fits a float"),
])
def test_numbers_too_large_for_a_float_are_refused_by_name_not_overflow_error(store, call, error, message):
    with pytest.raises(error, match=message) as info:
        call()
    assert "OverflowError" not in repr(info.value) and len(str(info.value)) < 400
    assert deployed_jobs(store) == []


def test_bad_job_cores_raise_before_deploying(store):
    with pytest.raises(ValueError, match="job.cores"):
        compute.for_(1, 3, JS, cores=0).exec()
    with pytest.raises(ValueError, match=r"exec\(cores=...\)=100000 is more than"):
        compute.for_(1, 3, JS).exec(cores=100_000)
    assert deployed_jobs(store) == []


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
    if "wasi" in INSTALLED:  # JavaScript as bytes: bytes mean wasi, and these are no module
        with pytest.raises(WorkError, match=r"(?s)the work is bytes, which run on the wasi worktime.*as a str"):
            compute.for_([1], JS.encode()).exec()
    assert deployed_jobs(store) == []


def test_scheduler_of_the_wrong_type_is_named(store):
    job = compute.for_(1, 3, JS, scheduler=5)
    with pytest.raises(TypeError, match="scheduler must be a scheduler URL.*got int 5"):
        job.exec()
    with pytest.raises(TypeError, match="scheduler must be a scheduler URL"):
        compute.resume("abc", scheduler=5)


def test_unserializable_options_name_the_option(store):
    job = compute.for_(1, 3, JS, options={"strict": True, "bad": object()})
    with pytest.raises(UnserializableValue, match=r"job.options\['bad'\]"):
        job.exec()
    job = compute.for_(1, 3, JS, public={"name": object()})
    with pytest.raises(UnserializableValue, match=r"job.public\['name'\]: a value of type builtins.object"):
        job.exec()
    assert deployed_jobs(store) == []


def test_a_misspelt_worktime_option_fails_before_deploying(store):
    job = compute.for_([1], JS, options={"stirct": True})
    with pytest.raises(WorkError, match="worktime map-basic has no option 'stirct' .did you mean 'strict'.."):
        job.exec()
    assert deployed_jobs(store) == []
    assert compute.for_([1], "x => x", options={"strict": True}).exec() == [1]


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


# -- work capture ------------------------------------------------------------------------------

GLOBAL_K = 3


def square(x):
    return x * x


def recursive_fib(n):
    return n if n < 2 else recursive_fib(n - 1) + recursive_fib(n - 2)


def uses_math(x):
    return math.sqrt(x)


def uses_an_alias(x):
    return pl.PurePath(x).name


def test_python_function_source_is_captured_like_tostring():
    w = capture(square)
    assert w.payload == "def square(x):\n    return x * x\n"
    assert w.default_worktime == "python" and w.options == {"function": "square"}
    assert "recursive_fib(n - 1)" in capture(recursive_fib).payload  # self-reference is fine
    lam = capture(lambda x, y=2: x + y)
    assert lam.payload == "def work_fn(x, y=2):\n    return x + y\n" and lam.options == {"function": "work_fn"}


def test_decorators_are_not_sent():
    def deco(f):
        return f

    @deco
    def inc(x):
        return x + 1

    assert capture(inc).payload == "def inc(x):\n    return x + 1\n"


def test_closures_and_globals_are_refused_with_the_fix():
    k = 3

    def closes(x):
        return x * k

    with pytest.raises(WorkError, match=r"closes over 'k'.*job arguments"):
        capture(closes)
    with pytest.raises(WorkError, match=r"global name 'GLOBAL_K'.*job arguments"):
        capture(lambda x: x * GLOBAL_K)
    with pytest.raises(WorkError, match=r"'math'.*import math inside the function"):
        capture(uses_math)
    with pytest.raises(WorkError, match=r"import pathlib as pl inside the function"):
        capture(uses_an_alias)


def test_uncapturable_callables_are_refused():
    import functools

    with pytest.raises(WorkError, match="partial"):
        capture(functools.partial(square, 2))
    with pytest.raises(WorkError, match="not a Python function"):
        capture(len)
    namespace: dict = {}
    exec("def f(x):\n    return x\n", namespace)
    with pytest.raises(WorkError, match="source of 'f' is not available"):
        capture(namespace["f"])


def test_paths_and_bytes(tmp_path):
    js = tmp_path / "w.js"
    js.write_text("x => x")
    assert (capture(js).payload, capture(js).default_worktime) == ("x => x", "map-basic")
    py = tmp_path / "w.py"
    py.write_text("def f(x):\n    return x\n")
    assert capture(py).default_worktime == "python"
    wasm = tmp_path / "w.wasm"
    wasm.write_bytes(b"\0asm\x01\0\0\0")
    assert capture(wasm).payload == b"\0asm\x01\0\0\0" and capture(wasm).default_worktime == "wasi"
    assert capture(b"\0asm\x01\0\0\0").default_worktime == "wasi"
    with pytest.raises(WorkError, match="does not exist"):
        capture(pathlib.Path(tmp_path / "nope.js"))
    with pytest.raises(WorkError, match="cannot use a int as work"):
        capture(3)


# -- default values that use module globals; names imported from modules -----------------------
# module-level work for the default-value checks (their source is what is sent)

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


WEIGHTS = __import__("numpy").array([1, 2])
COUNTS = collections.defaultdict(int)


def array_default(x, w=WEIGHTS):
    return w * x


def defaultdict_default(x, d=COUNTS):
    return d[x]


@pytest.mark.parametrize("fn, kind, base", [(array_default, "numpy.ndarray", "list"),
                                             (defaultdict_default, "collections.defaultdict", "dict")])
def test_a_default_that_would_arrive_as_a_plain_container_is_refused(fn, kind, base):
    # An array default arrived as a list: `w * x` repeated it instead of scaling it, silently.
    with pytest.raises(WorkError, match=rf"default of parameter .* is a {kind}, which would arrive as a plain {base} "
                                        "and behave differently"):
        capture(fn)


def uses_a_shadowed_builtin(x):
    return pow(x, 2)  # math's pow below: a float, where the builtin gives an int


def work(x):  # the name the docs suggest
    work.reject("busy")  # meant as the sandbox's work object, but in the sandbox it is this function


def test_a_module_name_that_shadows_a_builtin_is_refused_as_any_global():
    with pytest.raises(WorkError, match=r"uses the global name 'pow'.*from math import pow"):
        capture(uses_a_shadowed_builtin)
    with pytest.raises(WorkError, match=r"named 'work', which hides the sandbox's 'work' it uses"):
        capture(work)


def defines_classes(x):
    from dataclasses import dataclass

    class Point:
        scale = 2
        doubled = scale * 2  # a class body reads its own names with LOAD_NAME

    @dataclass
    class Pair:  # its body reads __name__ and __annotations__, which nobody wrote
        a: int
        b: int

    pair = Pair(x, Point.doubled)
    return [pair.a, pair.b]


def class_body_uses_a_global(x):
    class Circle:
        r = math.pi * x
    return Circle.r


def class_body_rebinds_a_global(x):
    class Scaled:
        fl = fl(x)  # reads the module's fl before its own exists
    return Scaled.fl


def test_classes_defined_inside_the_work_are_not_taken_for_globals():
    assert capture(defines_classes).default_worktime == "python"
    with pytest.raises(WorkError, match=r"uses the global name 'math'"):  # a real global in a class body still is
        capture(class_body_uses_a_global)
    with pytest.raises(WorkError, match=r"uses the global name 'fl'"):
        capture(class_body_rebinds_a_global)


@needs_python
@pytest.mark.parametrize("work, words", [("x = 5", "defines no function"),
                                         ("def a(x): return x\ndef b(x): return x\n", "2 functions (a, b)")])
def test_a_python_program_with_no_slice_handler_stops_its_job_with_one_error(store, work, words):
    # Every slice failed the same way instead (3000 failures for a 3000-slice job), as EBADWORK used to.
    job = compute.for_(range(300), work, worktime="python", cores=1)
    with pytest.raises(WorkError) as info:
        job.exec()
    assert info.value.code == "ENOSLICEHANDLER" and words in info.value.message
    assert "failed with ENOSLICEHANDLER, so every slice would" in info.value.message
    assert job.status()["status"] == "cancelled" and job.status()["computed"] == 0


@needs_python
def test_a_work_function_defining_a_dataclass_runs_on_the_python_worktime(store):
    assert compute.for_([1, 2], defines_classes, cores=1).exec() == [[1, 4], [2, 4]]


def test_names_imported_from_modules_say_import_it_inside():
    with pytest.raises(WorkError, match=r"import it inside the function: from math import sqrt$"):
        capture(uses_sqrt)
    with pytest.raises(WorkError, match=r"from math import floor as fl"):
        capture(uses_aliased_floor)


@needs_python
def test_default_from_a_global_runs_on_the_python_worktime(store):
    r = compute.for_([1, 2], scaled, cores=1).exec()
    assert r == [[2.5, [1, [2]], True, -1, 3], [5.0, [1, [2]], True, -1, 3]]


# -- result handles ----------------------------------------------------------------------------


def test_v1_handle_methods():
    r = ResultHandle([10, 20, 30], inputs=compute.RangeObject(1, 3))
    assert r == [10, 20, 30]
    assert r.entries() == [["1", 10], ["2", 20], ["3", 30]]
    assert r.fromEntries() == {"1": 10, "2": 20, "3": 30} == r.from_entries()
    assert r.keys() == ["1", "2", "3"]
    assert r.values() == [10, 20, 30]
    assert r.key(2) == 20 and r.key("2") == 20 and r.key(2.0) == 20


def test_missing_key_is_erange_listing_keys():
    r = ResultHandle([10, 20, 30], inputs=[1, 2, 3])
    with pytest.raises(ResultKeyError) as info:
        r.key(7)
    assert info.value.code == ErrorCode.ERANGE
    assert "no slice has the input 7" in str(info.value) and "1, 2, 3" in str(info.value)
    with pytest.raises(KeyError):  # it is a KeyError too, for Python habits
        r.key("x")


def test_decimal_keys_print_like_javascript():
    r = ResultHandle([1, 2, 3], inputs=compute.RangeObject(0.1, 0.3, 0.1))
    assert r.keys() == ["0.1", "0.2", "0.3"]
    assert r.key(0.3) == 3 and r.key("0.3") == 3


def test_nested_handles_for_multi_dimensional_jobs():
    m = compute.MultiRange([{"start": 1, "end": 2}, {"start": 3, "end": 5}])
    r = nest([3, 4, 5, 6, 8, 10], m.shape, m.ranges)
    assert r == [[3, 4, 5], [6, 8, 10]]
    assert r.keys() == ["1", "2"] and r.key(2).keys() == ["3", "4", "5"]
    assert r.key(2).key(4) == 8
    assert r.entries() == [["1", [3, 4, 5]], ["2", [6, 8, 10]]]


def test_failures_in_place():
    f = SliceFailed(1, "EUNCAUGHT", "boom")
    r = ResultHandle([1, f, 3], inputs=[1, 2, 3], failures=[f])
    assert r[1] is f and r.failures == [f]
    err = compute.JobFailed(r, [f], "job1")
    assert "slice 1: EUNCAUGHT: boom" in str(err) and err.results[0] == 1


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


def test_duplicate_inputs_key_and_from_entries_agree_on_the_last_slice(store):
    r = compute.for_(["a", "b", "a"], "function (x) { progress(); return x + Math.random() }").exec()
    assert r.entries() == [["a", r[0]], ["b", r[1]], ["a", r[2]]]  # every slice is there
    assert r.fromEntries() == {"a": r[2], "b": r[1]}
    assert r.key("a") == r[2] == r.fromEntries()["a"]


def test_an_unset_map_basic_version_means_caret_one():
    """dcp-behaviour.md: "unset means map-basic at ^1.0.0"."""
    from dcp_worktimes.scheduler.matching import worker_can_run

    record = plan(compute.for_([1], "x => x"))
    assert record.worktime_range == "^1.0.0"
    assert worker_can_run(record, {"map-basic": "1.4.0"}, {}) is None
    assert "map-basic@^1.0.0" in worker_can_run(record, {"map-basic": "2.0.0"}, {})
    assert "map-basic@^1.0.0" in worker_can_run(record, {"map-basic": "0.9.0"}, {})
    assert plan(compute.for_([1], "", worktime="echo")).worktime_range is None
    pinned = plan(compute.for_([1], "x => x", worktime="map-basic@>=1.0.0"))
    assert pinned.worktime_range == ">=1.0.0"


def test_a_misspelt_job_setting_is_an_error_not_a_silent_new_attribute():
    job = compute.for_([1], "x => x")
    with pytest.raises(AttributeError, match="no setting 'requirments'; did you mean 'requirements'"):
        job.requirments = {"machine": {"gpu": True}}
    with pytest.raises(AttributeError, match="did you mean 'limits'"):
        job.limts = {"wall_time": "1s"}
    job.requirements = {"machine": {"gpu": False}}  # real settings still work
    job.limits = {"wall_time": "2s"}
    assert job.limits.wall_time == 2.0 and job.requirements == {"machine": {"gpu": False}}


def test_a_decorated_work_function_says_it_is_decorated():
    import functools

    def logged(f):
        @functools.wraps(f)
        def wrapper(*a):
            return f(*a)
        return wrapper

    @logged
    def square(x):
        return x * x

    with pytest.raises(WorkError, match=r"'square' is decorated.*square.__wrapped__"):
        capture(square)
    assert capture(square.__wrapped__).payload.startswith("def square(x):")


def test_a_misspelled_worktime_for_a_python_function_names_the_worktime_and_the_fix():
    # It said the function cannot run on "worktime (custom)".
    def double(x):
        return 2 * x

    with pytest.raises(WorktimeNotFound, match=r"no worktime named 'Python' is installed.*Did you mean 'python'\?"):
        compute.for_([1], double, worktime="Python").exec()


def yields(x):
    yield x


def test_a_generator_function_is_refused_at_deploy_not_per_slice():
    with pytest.raises(WorkError, match=r"'yields' is a generator .* return a list instead"):
        capture(yields)


def test_job_file_names_that_no_disk_takes_are_refused_when_set():
    job = compute.for_([1], "function(x){ progress(); return x }")
    with pytest.raises(TypeError, match="'a' cannot be both a file and a folder"):
        job.files = {"a": b"x", "a/b": b"y"}
    with pytest.raises(TypeError, match="name the same file"):
        job.files = {"d/a": b"x", "d//a": b"y"}


def test_a_misspelt_compute_default_is_refused_where_it_is_set():
    # It was kept, and every later for_() raised "unknown job setting" without naming compute.default.
    with pytest.raises(AttributeError, match=r"compute.default.worktimee: unknown job setting; settings: .*worktime"):
        compute.default.worktimee = "python"
    assert "worktimee" not in vars(compute.default)
    compute.for_([1], JS)  # later jobs are unharmed
