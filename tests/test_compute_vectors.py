"""Every vector of ``shared/spec/compute-for-vectors.md``, executed on real worktimes.

Each vector runs on ``map-basic`` (JavaScript, as written in the spec) and on ``python`` (the
equivalent Python function). A worktime that is not installed skips its cases with that reason,
so these run as soon as the worktime lands. V16 (resume after SIGKILL) is in
``test_compute_resume.py``; the input-side checks of the same vectors are in
``test_compute_inputs.py`` and ``test_compute_api.py``.
"""

from __future__ import annotations

import time

import pytest

from dcp_worktimes import compute
from dcp_worktimes.errors import ErrorCode, WorkError, WorktimeNotFound
from dcp_worktimes.plugins import get_worktimes

INSTALLED = set(get_worktimes())


def _param(name):
    return pytest.param(name, marks=pytest.mark.skipif(name not in INSTALLED, reason=f"worktime {name} is not installed"))


WORKTIMES = [_param("map-basic"), _param("python")]


# -- the Python equivalents of the spec's JavaScript (module-level: their source is sent) --------

def v1(i):
    progress()  # noqa: F821 - a sandbox global of the python worktime
    return i * 10


def v13(i, a, b):
    return i + a + b


def v14_silent(x):
    import time

    t = time.time()
    while time.time() - t < 3:
        pass
    return x


def v14_short(x):
    import time

    t = time.time()
    while time.time() - t < 1.5:
        pass
    return x


def v18(b):
    return bytes(255 - x for x in b)


WORK = {
    "V1": {"map-basic": "function(i){ progress(); return i*10 }", "python": v1},
    "identity": {"map-basic": "i => i", "python": lambda i: i},
    "V3": {"map-basic": "g => g[1]-g[0]", "python": lambda g: g[1] - g[0]},
    "V5": {"map-basic": "(i,j) => i*j", "python": lambda i, j: i * j},
    "V7": {"map-basic": "f => f + 's are yummy!'", "python": lambda f: f + "s are yummy!"},
    "V13": {"map-basic": "function(i, a, b){ return i + a + b }", "python": v13},
    "V14": {"map-basic": "function(x){ const t = Date.now(); while (Date.now() - t < 3000) {} return x }",
            "python": v14_silent},
    "V14-short": {"map-basic": "function(x){ const t = Date.now(); while (Date.now() - t < 1500) {} return x }",
                  "python": v14_short},
    "V18": {"map-basic": "b => { const o = new Uint8Array(b.length); for (let k = 0; k < b.length; k++) o[k] = 255 - b[k]; return o }",
            "python": v18},
}


def job(worktime, *args, **settings):
    settings.setdefault("cores", 2)
    return compute.for_(*args, worktime=worktime, **settings)


@pytest.mark.parametrize("wt", WORKTIMES)
def test_v1_handle(store, wt):
    r = job(wt, 1, 3, WORK["V1"][wt]).exec()
    assert r == [10, 20, 30]
    assert r.entries() == [["1", 10], ["2", 20], ["3", 30]]
    assert r.fromEntries() == {"1": 10, "2": 20, "3": 30}
    assert r.keys() == ["1", "2", "3"]
    assert r.values() == [10, 20, 30]
    assert r.key(2) == 20


@pytest.mark.parametrize("wt", WORKTIMES)
def test_v2_step_overflow(store, wt):
    assert job(wt, {"start": 10, "end": 13, "step": 2}, WORK["identity"][wt]).exec() == [10, 12]


@pytest.mark.parametrize("wt", WORKTIMES)
def test_v3_group(store, wt):
    assert job(wt, {"start": 10, "end": 13, "group": 2}, WORK["V3"][wt]).exec() == [1, 1]


@pytest.mark.parametrize("wt", WORKTIMES)
def test_v4_step_three(store, wt):
    r = job(wt, {"start": 0, "end": 1000, "step": 3}, WORK["identity"][wt]).exec()
    assert len(r) == 334 and r[-1] == 999 and r[:3] == [0, 3, 6]


@pytest.mark.parametrize("wt", WORKTIMES)
def test_v5_multi_dimensional(store, wt):
    assert job(wt, [{"start": 1, "end": 2}, {"start": 3, "end": 5}], WORK["V5"][wt]).exec() == [[3, 4, 5], [6, 8, 10]]


@pytest.mark.parametrize("source", [
    "import dcp\n\ndef h(i, j):\n    return i * j\n\ndcp.set_slice_handler(h)\n",  # Pyodide-style program
    "def helper(a):\n    return a\n\n\ndef work(i, j):\n    return helper(i) * j\n",  # helpers beside `work`
    "lambda i, j: i * j",
], ids=["program", "helpers", "lambda"])
@pytest.mark.skipif("python" not in INSTALLED, reason="worktime python is not installed")
def test_v5_multi_dimensional_python_work_in_every_form(store, source):
    assert job("python", [{"start": 1, "end": 2}, {"start": 3, "end": 5}], source).exec() == [[3, 4, 5], [6, 8, 10]]


@pytest.mark.parametrize("wt", WORKTIMES)
def test_v6_list(store, wt):
    assert job(wt, [123, 456], WORK["identity"][wt]).exec() == [123, 456]


@pytest.mark.parametrize("wt", WORKTIMES)
def test_v7_generator(store, wt):
    def fruit_list():
        yield "banana"
        yield "orange"
        yield "apple"

    r = job(wt, fruit_list(), WORK["V7"][wt]).exec()
    assert r == ["bananas are yummy!", "oranges are yummy!", "apples are yummy!"]


@pytest.mark.parametrize("wt", WORKTIMES)
def test_v8_exact_decimals(store, wt):
    r = job(wt, {"start": 0.1, "end": 0.5, "step": 0.1}, WORK["identity"][wt]).exec()
    assert r == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert r.keys() == ["0.1", "0.2", "0.3", "0.4", "0.5"]


@pytest.mark.parametrize("wt", WORKTIMES)
def test_v9_step_and_group(store, wt):
    assert job(wt, {"start": 1, "end": 9, "step": 3, "group": 2}, WORK["identity"][wt]).exec() == [[1, 4], [7]]


@pytest.mark.parametrize("wt", WORKTIMES)
def test_v10_v11_bad_ranges(store, wt):
    with pytest.raises(compute.RangeError, match="step must approach end"):
        job(wt, {"start": 1, "end": 3, "step": -1}, WORK["identity"][wt])
    for group in (0, 1.5):
        with pytest.raises(compute.RangeError, match="group must be a positive integer"):
            job(wt, {"start": 1, "end": 10, "group": group}, WORK["identity"][wt])


@pytest.mark.parametrize("wt", WORKTIMES)
def test_v12_huge_range_is_instant(store, wt):
    t0 = time.perf_counter()
    j = job(wt, {"start": 0, "end": 10**12}, WORK["identity"][wt])
    assert time.perf_counter() - t0 < 1.0
    assert len(j.input_set) == 10**12 + 1


@pytest.mark.parametrize("wt", WORKTIMES)
def test_v13_extra_arguments(store, wt):
    assert job(wt, 1, 3, WORK["V13"][wt], [10, 100]).exec() == [111, 112, 113]


@pytest.mark.parametrize("wt", WORKTIMES)
def test_v14_no_progress(store, wt):
    r = job(wt, [1], WORK["V14"][wt], limits={"progress_timeout": "1s"}).exec(errors="return")
    assert isinstance(r[0], compute.SliceFailed), r
    assert r[0].code == ErrorCode.ENOPROGRESS
    # the job can turn the watchdog off
    assert job(wt, [1], WORK["V14-short"][wt], limits={"progress_timeout": None}).exec() == [1]


@pytest.mark.parametrize("wt", WORKTIMES)
def test_v15_cost_profiles(store, wt):
    with pytest.raises(compute.CostProfileError) as info:
        job(wt, [1], WORK["identity"][wt]).exec({})
    assert info.value.code == ErrorCode.ENOFUNDS
    assert job(wt, [1], WORK["identity"][wt]).exec(0) == [1]
    assert job(wt, [2], WORK["identity"][wt]).exec(123) == [2]


@pytest.mark.parametrize("wt", WORKTIMES)
def test_v17_unknown_worktime(store, wt):
    j = job(wt, [1], WORK["identity"][wt])
    j.worktime = "no-such-worktime"
    j.custom_worktime = False
    with pytest.raises(WorktimeNotFound) as info:
        j.exec()
    assert info.value.code == ErrorCode.ENOWORKTIME and wt in str(info.value)


@pytest.mark.parametrize("wt", WORKTIMES)
def test_v18_bytes_round_trip(store, wt):
    data = bytes(range(256)) * 4
    r = job(wt, [data, b"", b"\x00"], WORK["V18"][wt]).exec()
    assert r == [bytes(255 - x for x in data), b"", b"\xff"]
    assert all(type(v) is bytes for v in r)
    assert job(wt, [data], WORK["identity"][wt]).exec() == [data]


DIMS = [{"start": 1, "end": 2}, {"start": 3, "end": 4}]


@pytest.mark.parametrize("wt", [_param("map-basic")])
def test_multi_dimensional_js_forms(store, wt):
    # a whole file whose last statement declares the function (the seed's own example)
    assert job(wt, DIMS, "// squares\nfunction workFn(i, j) {\n  progress();\n  return i * j\n}\n").exec() == [[3, 4], [6, 8]]
    assert job(wt, DIMS, "(i, j, a) => i * j + a", [100]).exec() == [[103, 104], [106, 108]]
    strict = job(wt, DIMS, "function(i, j){ undeclared = 1; return i }", options={"strict": True})
    r = strict.exec(errors="return")
    assert r[0][0].code == "EUNCAUGHT" and "undeclared" in r[0][0].message
    thrown = job(wt, DIMS, "function(i, j){\n  throw new Error('at line 2')\n}").exec(errors="return")[1][1]
    assert "at line 2" in thrown.message and "<input>:2:" in (thrown.stack or "")  # the user's line numbers


@pytest.mark.parametrize("wt", [_param("map-basic")])
def test_unusable_work_is_one_error_not_one_per_slice(store, wt):
    # Work that does not compile fails every slice the same way: exec() raises one WorkError with
    # the engine's message, whatever errors= says, and stops the job at the first EBADWORK.
    for errors in ("raise", "return"):
        with pytest.raises(WorkError) as info:
            job(wt, DIMS, "42").exec(errors=errors)
        text = str(info.value)
        assert info.value.code == ErrorCode.EBADWORK and "must evaluate to a function" in text
        assert text.count("must evaluate to a function") == 1 and "slices failed" not in text


@pytest.mark.parametrize("wt", [_param("map-basic")])
def test_unusable_work_cancels_the_remaining_slices(store, wt):
    # A million slices: failing them all one by one would take minutes; the first EBADWORK stops it.
    j = job(wt, {"start": 0, "end": 10**6 - 1}, "function(x){ return x +* }")
    t0 = time.monotonic()
    with pytest.raises(WorkError, match="does not compile"):
        j.exec()
    assert time.monotonic() - t0 < 30
    st = compute.resume(j.id).status()
    assert st["status"] == "cancelled" and "EBADWORK" in st.get("reason", "")
    assert st["computed"] == 0 and st["failed"] < 10**6


@pytest.mark.skipif("map-basic" not in INSTALLED, reason="worktime map-basic is not installed")
def test_the_specs_requirements_examples_on_map_basic(store):
    """seed-compute-api.txt: "any worker which can interpret ES7 but is not SpiderMonkey will match"."""
    assert job("map-basic", [1, 2], "x => x * 2", requirements={"engine": {"es7": True, "spidermonkey": False}}).exec() == [2, 4]
    with pytest.raises(compute.RequirementsError, match="engine.spidermonkey=true"):
        job("map-basic", [1], "x => x", requirements={"engine": {"es7": True, "spidermonkey": True}}).exec()
