"""map-basic through the sandboxed runner: conformance kit, hostile JS corpus, event stream, CLI.

Everything runs on both engines: the conformance kit once per engine (two classes), the other
tests through the ``pool`` / ``engine`` fixtures.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dcp_worktimes.limits import Limits
from dcp_worktimes.runner import EvaluatorPool
from dcp_worktimes.testing import FILE_SYSTEM_CASES, HOSTILE_CASES, Sample, WorktimeConformance, run
from dcp_worktimes.values import MAX_DEPTH
from dcp_worktimes.worktime import JobSpec
from dcp_worktimes.worktimes.map_basic.engine import ENGINES, missing

HOSTILE = Path(__file__).resolve().parents[1] / "sandbox" / "hostile" / "js"


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """V8's Deno cache and import map go to a temporary folder, never the user's cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DCP_WORKTIMES_CACHE", str(tmp_path_factory.mktemp("dcp-cache")))
        yield

def hostile(case: str) -> str:
    return (HOSTILE / f"{case}.js").read_text(encoding="utf-8")


class MapBasicConformance(WorktimeConformance):
    @pytest.fixture
    def worktime_name(self):
        return "map-basic"

    @pytest.fixture
    def hello_work(self):
        return Sample(work="function (x, k) { progress(); return [x * k, 2n ** 80n, new Uint8Array([0, 255])] }",
                      datum=7, arguments=[6], expected=[42, 2**80, b"\x00\xff"])

    @pytest.fixture
    def progress_work(self):
        return Sample(work="""async function (x) {
            for (let i = 0; i < 15; i++) { await new Promise(r => setTimeout(r, 100)); progress((i + 1) / 15) }
            return x
        }""", datum=7, expected=7)

    @pytest.fixture
    def bad_work(self):
        return "function (x) { return x * }"

    @pytest.fixture
    def hostile_works(self):
        return {case: hostile(case) for case in HOSTILE_CASES if (HOSTILE / f"{case}.js").exists()}


class TestMapBasicConformanceV8(MapBasicConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def worker_config(cls):
        return {"map-basic": {"js-engine": "v8"}}


class TestMapBasicConformanceQuickJS(MapBasicConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def worker_config(cls):
        return {"map-basic": {"js-engine": "quickjs"}}


def test_the_whole_hostile_kit_is_covered():
    # "crash" needs a way to kill the process from inside; JavaScript has none, which is the point.
    assert {p.stem for p in HOSTILE.glob("*.js")} >= set(HOSTILE_CASES) - {"crash"} - FILE_SYSTEM_CASES


@pytest.fixture(scope="module", params=ENGINES)
def engine(request):
    """The engine under test (``--js-engine``); skipped with the install command if missing."""
    reason = missing(request.param)
    if reason:
        pytest.skip(reason)
    return request.param


@pytest.fixture(scope="module")
def config(engine):
    return {"js-engine": engine}


@pytest.fixture(scope="module")
def pool(config):
    with EvaluatorPool(cores=1, config={"map-basic": config}) as p:
        yield p


def job(work: str, **kw) -> JobSpec:
    return JobSpec(id=f"mb-{time.monotonic_ns()}", worktime="map-basic", work=work, **kw)


def test_events_reach_the_deployer(pool):
    """Async work, require of a job module, work.emit and console all cross the runner's stream."""
    events: list = []
    work = """async function (x) {
        const lib = require('./lib');
        console.log('start', x);
        console.log('start', x);
        await new Promise(r => setTimeout(r, 150));
        progress(0.5);
        work.emit('partial', {half: lib.half(x), raw: new Uint8Array([1, 2])});
        console.warn('done');
        return lib.half(x) * 2;
    }"""
    j = job(work, modules={"lib.js": "exports.half = x => x / 2"})
    out = next(pool.map(j, [(3, 10)], lambda kind, n, payload: events.append((kind, n, payload))))
    assert out.ok, out.error
    assert out.value == 10
    consoles = [p for k, n, p in events if k == "console"]
    assert [c["message"] for c in consoles] == ["start 10", "done"]
    assert consoles[0].get("same") == 2  # the host collapses identical consecutive lines
    assert ("emit", 3, {"name": "partial", "value": {"half": 5, "raw": b"\x01\x02"}}) in events
    assert any(k == "progress" and n == 3 for k, n, p in events)


def test_error_reaches_the_deployer_with_stack(pool):
    out = next(pool.map(job(hostile("throw")), [(0, None)]))
    assert not out.ok and out.error.code == "EUNCAUGHT" and out.error.message == "hostile throw"
    assert out.error.name == "TypeError" and "at inner (<input>:4:" in out.error.stack


def test_reject_code(pool):
    out = next(pool.map(job("x => work.reject('busy')"), [(0, None)]))
    assert not out.ok and out.error.code == "EWORKREJECT" and "busy" in out.error.message


@pytest.mark.parametrize("case, limits, code, bound", [
    ("infinite_loop", {"wall_time": "1s"}, "ESLICETOOSLOW", 2.0),
    ("memory_balloon", {"memory": "64MB", "wall_time": "60s"}, "EMEMORYLIMIT", 20.0),
    ("deep_recursion", {}, "EUNCAUGHT", 20.0),
])
def test_acceptance_limits_and_the_worker_keeps_serving(pool, case, limits, code, bound):
    j = job(hostile(case), limits=Limits.parse(**limits))
    t = time.monotonic()
    outs = sorted(pool.map(j, [(0, None)]), key=lambda o: o.number)
    elapsed = time.monotonic() - t
    assert not outs[0].ok and outs[0].error.code == code, outs[0].error
    # ESLICETOOSLOW: the required bound (< 2 s for a 1 s limit); the engine stops at ~1.0 s.
    assert elapsed < bound, f"{case} took {elapsed:.2f}s"
    follow = next(pool.map(job("x => x + 1"), [(1, 41)]))
    assert follow.ok and follow.value == 42


def test_many_slices_one_job(pool):
    outs = list(pool.map(job("function (x) { return x * x }"), [(i, i) for i in range(200)]))
    assert sorted(o.value for o in outs) == [i * i for i in range(200)]


def test_cli_acceptance(engine):
    exe = shutil.which("dcp-worker", path=str(Path(sys.executable).parent)) or shutil.which("dcp-worker")
    assert exe, "dcp-worker is not installed (pip install -e .)"
    out = subprocess.run(
        [exe, "slice", "--worktime", "map-basic", "--js-engine", engine, "--work", "function(x){ progress(); return x*x }", "--datum", "7"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "49"


def test_spread_datum_option_spreads_list_datums(config):
    from dcp_worktimes.runner import run_slice

    job = JobSpec(id="spread", worktime="map-basic", work="(i, j, k) => [i * j, k]", arguments=["extra"],
                  options={"spread_datum": True})
    assert run_slice(job, [3, 4], config=config).value == [12, "extra"]
    plain = JobSpec(id="plain", worktime="map-basic", work="(d, k) => [d, k]", arguments=["extra"])
    assert run_slice(plain, [3, 4], config=config).value == [[3, 4], "extra"]


def test_console_flood_over_the_output_limit_stops_the_slice_at_once(config):
    from dcp_worktimes.runner import run_slice

    work = 'function (x) { for (let i = 0; i < 1e7; i++) console.log("x".repeat(1000) + i); return 1 }'
    t = time.monotonic()
    out = run_slice(JobSpec(id="flood", worktime="map-basic", work=work,
                            limits=Limits.parse(output="1MB", wall_time="30s")), 0, config=config)
    assert out.error is not None and out.error.code == "EOUTPUTLIMIT", out.error
    assert time.monotonic() - t < 10


def test_an_emit_over_the_output_limit_is_the_hosts_verdict_not_a_catchable_error(pool):
    work = "x => { try { work.emit('big', {s: 'z'.repeat(2e6)}) } catch (e) { return 'caught' } return 1 }"
    out = next(pool.map(job(work, limits=Limits.parse(output="1MB")), [(0, 0)]))
    assert not out.ok and out.error.code == "EOUTPUTLIMIT", out


def test_the_memory_limit_is_the_engines_verdict(pool):
    # The runner's RSS guard sits on top of the evaluator's footprint after prepare, V8's Deno
    # process included: the engine's own heap limit answers first, with its precise message.
    j = job(hostile("memory_balloon"), limits=Limits.parse(memory="64MiB", wall_time="60s"))
    out = next(pool.map(j, [(0, None)]))
    assert not out.ok and out.error.code == "EMEMORYLIMIT" and "JavaScript heap" in out.error.message, out.error
    follow = next(pool.map(job("x => x + 1"), [(1, 41)]))
    assert follow.ok and follow.value == 42


def test_the_runtime_is_out_of_reach_in_a_real_evaluator(pool):
    # The V8-specific hostile cases, inside the evaluator's process layers: nothing of Deno or the
    # host is reachable, no thread can be started, no wait can block the engine's thread.
    outs = list(pool.map(job(hostile("deno_escape"), limits=Limits.parse(wall_time="30s")), [(0, None)]))
    assert outs[0].ok and outs[0].value == [], outs[0].error or outs[0].value
    outs = list(pool.map(job(hostile("threads"), limits=Limits.parse(wall_time="30s")), [(0, None)]))
    assert outs[0].ok and len(outs[0].value) == 3, outs[0].error or outs[0].value


def test_a_batch_keeps_each_slices_events_errors_and_limits(pool):
    work = "x => { console.log('slice ' + x); if (x === 5) throw new Error('five'); if (x === 9) for (;;) {} return x * 2 }"
    events: list = []
    j = job(work, limits=Limits.parse(wall_time="1s"))
    outs = sorted(pool.map(j, [(i, i) for i in range(40)], lambda kind, n, payload: events.append((kind, n, payload))),
                  key=lambda o: o.number)
    assert [o.value for o in outs if o.ok] == [2 * i for i in range(40) if i not in (5, 9)]
    assert outs[5].error.code == "EUNCAUGHT" and "five" in outs[5].error.message
    assert outs[9].error.code == "ESLICETOOSLOW"
    consoles = sorted((n, p["message"]) for k, n, p in events if k == "console")
    assert consoles == [(n, f"slice {n}") for n in range(40)]


def test_a_job_can_require_or_refuse_the_engine(store):
    # The local worker advertises its probe's capabilities: engine.v8 where Deno is installed.
    from dcp_worktimes import compute
    from dcp_worktimes.errors import DcpError

    here = "v8" if missing("v8") is None else "quickjs"
    other = "quickjs" if here == "v8" else "v8"
    job = compute.for_([1, 2], "x => x * 2")
    job.requirements = {"engine": {here: True}}
    assert list(job.exec()) == [2, 4]
    for requirement in ({here: False}, {other: True}):
        job = compute.for_([1, 2], "x => x * 2")
        job.requirements = {"engine": requirement}
        if missing(other) is None:  # both installed: exec() here runs it on the other engine
            assert list(job.exec()) == [2, 4]
        else:
            with pytest.raises(DcpError, match=f"engine.{next(iter(requirement))}="):
                job.exec()


# -- blocks: many slices per call into the engine keep every per-slice semantic ------------------
# The pool doubles its runs while slices are quick, so the later slices of 400 run many per call
# (QuickJS: back to back inside one engine call; V8: sent ahead in one request).

def _outs(pool, work, n=400, **kw):
    events: list = []
    outs = sorted(pool.map(job(work, **kw), [(i, i) for i in range(n)],
                           lambda kind, number, payload: events.append((kind, number, payload))),
                  key=lambda o: o.number)
    return outs, events


def test_a_block_runs_the_jobs_a_synchronous_slice_queued_before_the_next_slice(pool):
    work = ("x => { if (x % 50 === 7) Promise.resolve().then(() => console.log('job of ' + x)); "
            "if (x % 100 === 33) queueMicrotask(() => work.emit('queued', x)); progress(); return x }")
    outs, events = _outs(pool, work)
    consoles = sorted((n, p["message"]) for k, n, p in events if k == "console")
    assert consoles == [(n, f"job of {n}") for n in range(400) if n % 50 == 7]  # each on its own slice
    emitted = sorted((n, p["value"]) for k, n, p in events if k == "emit")
    assert emitted == [(n, n) for n in range(400) if n % 100 == 33]
    assert [o.value for o in outs] == list(range(400))


def test_a_block_runs_a_synchronous_slices_deep_await_chain_before_the_next_slice(pool):
    # An async helper the work does not await: its 300 continuations are the slice's jobs, each
    # queued by the one before it (a turn that only let the jobs queued so far run would cut it).
    work = ("x => { if (x % 40 === 3) (async () => { for (let i = 0; i < 300; i++) await null; "
            "console.log('chain of ' + x) })(); return x }")
    outs, events = _outs(pool, work)
    consoles = sorted((n, p["message"]) for k, n, p in events if k == "console")
    assert consoles == [(n, f"chain of {n}") for n in range(400) if n % 40 == 3]
    assert [o.value for o in outs] == list(range(400))


def test_a_block_drops_the_jobs_a_failed_slice_left_queued(pool):
    # Slices throwing in three queued jobs fail on their first error, and one whose jobs multiply at
    # its wall limit; the rest of their jobs never reach the slices after them.
    work = ("x => { if (x % 50 === 9) for (const m of ['a', 'b', 'c']) queueMicrotask(() => { throw new Error(m + x) }); "
            "if (x === 222) { console.log('flood'); const f = () => { queueMicrotask(f); queueMicrotask(f) }; "
            "queueMicrotask(f) } return x }")
    outs, events = _outs(pool, work, limits=Limits.parse(wall_time="2s"))
    # Dropping the flood's jobs stays within the host's grace: a kill of the block would run it twice.
    assert [n for k, n, p in events if k == "console"] == [222]
    failed = {o.number: o.error for o in outs if not o.ok}
    assert sorted(failed) == sorted([n for n in range(400) if n % 50 == 9] + [222])
    assert all(failed[n].message == f"a{n}" for n in failed if n != 222)
    assert failed[222].code == "ESLICETOOSLOW"  # its jobs ran until its wall limit
    assert [o.value for o in outs if o.ok] == [n for n in range(400) if n not in failed]


def test_a_slice_that_stops_progressing_in_a_block_runs_once_and_holds_back_no_other_result(pool, engine):
    # The host's watchdog, which cannot name the slice a block was on, must leave the verdict to
    # the engine: it killed V8's evaluator first, and the slice ran a second time (its console
    # twice, its verdict at twice the timeout). V8 sends the results before it while it waits.
    work = "x => { progress(); if (x === 2) { console.log('slice 2 starts'); while (true) {} } return x * 2 }"
    events: list = []
    outcomes: list = []
    t0 = time.monotonic()
    all_in = threading.Event()

    def on_outcome(outcome):
        outcomes.extend((time.monotonic() - t0, s) for s in outcome.slices())
        if len(outcomes) >= 6:
            all_in.set()

    pool.submit(job(work, limits=Limits.parse(progress_timeout="2.5s")), list(range(6)), list(range(6)), on_outcome,
                lambda kind, number, payload: events.append((kind, number, payload)))
    assert all_in.wait(30)
    by_number = {s.number: (t, s) for t, s in outcomes}
    assert sorted(by_number) == list(range(6))
    assert [(n, p["message"]) for k, n, p in events if k == "console"] == [(2, "slice 2 starts")]
    err = by_number[2][1].error
    assert err.code == "ENOPROGRESS" and err.message.startswith("no progress() for 2.5 s")
    assert [by_number[n][1].value for n in (0, 1, 3, 4, 5)] == [0, 2, 6, 8, 10]
    if engine == "v8":  # QuickJS holds the envelopes of its engine call's slices until the call ends
        assert by_number[1][0] < by_number[2][0] - 1.0


def test_datums_and_results_nest_as_deep_as_the_value_set_allows(pool):
    # MAX_DEPTH levels both ways, one more is EUNSERIALIZABLE: map-basic walks them in Python
    # (a datum 330 deep failed with a RecursionError, a result 1000 deep too).
    def nest(n):
        v = 0
        for _ in range(n):
            v = [v]
        return v

    def depth(v):  # walked, not compared: == on such lists recurses past this process's limit
        d = 0
        while isinstance(v, list) and len(v) == 1:
            v, d = v[0], d + 1
        return d if v == 0 else -1

    out = run(pool, "map-basic", "x => x", nest(MAX_DEPTH))
    assert out.ok and depth(out.value) == MAX_DEPTH, out.error
    work = "n => { let v = 0; for (let i = 0; i < n; i++) v = [v]; return v }"
    assert depth(run(pool, "map-basic", work, MAX_DEPTH).value) == MAX_DEPTH
    err = run(pool, "map-basic", work, MAX_DEPTH + 1).error
    assert err.code == "EUNSERIALIZABLE" and f"nested more than {MAX_DEPTH} levels" in err.message


def test_a_job_replacing_string_keeps_progress_in_a_block_working(pool):
    # progress() told the host its highest value with the global String: every later slice failed
    # "could not convert string to float: 'x'".
    # (a value going backwards reaches the host at once, with the highest one so far)
    outs, _ = _outs(pool, "x => { if (x === 0) globalThis.String = () => 'x'; progress(0.5); progress(0.25); return x }")
    assert [o.value for o in outs] == list(range(400)), [o.error for o in outs if not o.ok][:2]


def test_a_block_mixes_synchronous_and_promise_slices(pool):
    outs, _ = _outs(pool, "x => x % 3 ? x : Promise.resolve(x * 10).then(v => { progress(); return v })")
    assert [o.value for o in outs] == [n if n % 3 else n * 10 for n in range(400)]


def test_progress_judged_in_a_block_as_slice_by_slice(pool):
    # Backwards and out-of-range values get the same one console note per slice, in every slice.
    outs, events = _outs(pool, "x => { progress(0.5); progress(x % 2 ? 0.25 : 0.75); return x }", n=300)
    assert all(o.ok for o in outs)
    notes = sorted(n for k, n, p in events if k == "console" and "progress went backwards" in p["message"])
    assert notes == [n for n in range(300) if n % 2]


def test_a_slow_slice_in_a_block_is_judged_on_its_own_time(pool):
    # Slice 350 runs 1.5 s calling progress() all along, under a 1 s progress timeout and 3 s wall
    # time: it must pass; slice 360 stops calling progress() and must fail ENOPROGRESS; none other.
    work = ("x => { const t = Date.now(); if (x === 350) while (Date.now() - t < 1500) progress(); "
            "if (x === 360) { progress(); while (Date.now() - t < 5000) {} } return x }")
    outs, _ = _outs(pool, work, limits=Limits.parse(wall_time="3s", progress_timeout="1s"))
    assert outs[350].ok, outs[350].error
    assert outs[360].error is not None and outs[360].error.code == "ENOPROGRESS", outs[360]
    assert [o.number for o in outs if not o.ok] == [360]


def test_a_slice_that_logs_at_the_stack_limit_keeps_every_result_on_its_own_slice(pool):
    # Slice 100's first console.log runs out of stack again and again (each caught one frame up)
    # while the replies of the slices before it are held back: every result stays on its slice.
    work = ("x => { if (x === 100) { const r = (d) => { try { r(d + 1) } catch (e) { console.log('deep') } }; r(0) } "
            "return x }")
    outs, events = _outs(pool, work, n=300)
    assert [o.value for o in outs] == list(range(300)), [o.error for o in outs if not o.ok]
    assert {n for k, n, p in events if k == "console"} == {100}


def test_a_slice_stopped_for_its_own_output_does_not_charge_the_next(pool):
    # Slice 0 goes over its output limit with an emit and ends at once; the stop that follows must
    # not land on slice 1 (running by then, its reply not written yet) nor on slice 2.
    work = ("x => { if (x === 0) { for (let i = 0; i < 5; i++) work.emit('big', 'z'.repeat(400)) } "
            "else { const t = Date.now(); while (Date.now() - t < 200) {} } return x }")
    outs, _ = _outs(pool, work, n=3, limits=Limits.parse(wall_time="5s", output="1KB"))
    assert [(o.number, o.error.code) for o in outs if not o.ok] == [(0, "EOUTPUTLIMIT")]
    assert [o.value for o in outs if o.ok] == [1, 2]


@pytest.mark.parametrize("at", [1, 250])
def test_a_slice_that_ends_the_engine_on_memory_in_a_block_fails_alone(pool, at):
    # V8 ends Deno when the heap is over the limit, with the replies of the slices that finished
    # before it (held back, written together) lost with the process: only the slice that broke the
    # limit fails, and every other one, before or after it, keeps its own result.
    work = ("x => { if (x === %d) { const a = []; for (;;) a.push(new Array(1e5).fill(x)) } return x }" % at)
    outs, _ = _outs(pool, work, n=300, limits=Limits.parse(memory="64MiB", wall_time="60s"))
    assert [(o.number, o.error.code) for o in outs if not o.ok] == [(at, "EMEMORYLIMIT")]
    assert [o.value for o in outs if o.ok] == [n for n in range(300) if n != at]


def test_a_deep_result_in_a_block_fails_only_its_own_slice(pool):
    # The host cannot decode a value nested thousands deep (RecursionError): that slice fails, as it
    # does alone; the slices that ended with it in the same engine call keep their results.
    work = "x => { if (x === 250) { let a = 0; for (let i = 0; i < 5000; i++) a = [a]; return a } return x }"
    outs, _ = _outs(pool, work, n=300)
    assert [o.number for o in outs if not o.ok] == [250], [(o.number, o.error) for o in outs if not o.ok][:3]
    assert [o.value for o in outs if o.ok] == [n for n in range(300) if n != 250]


def test_results_of_every_kind_in_one_block_keep_their_slices(pool):
    # Plain values are settled a run at a time: the slices between them that end otherwise (a
    # value needing tags, a rejection, a result over the output limit, a thrown error) must keep
    # their own outcome and position, and the runs around them their values.
    work = ("x => { if (x % 97 === 3) return 'y'.repeat(5000); if (x % 89 === 4) work.reject('no ' + x); "
            "if (x % 83 === 5) throw new TypeError('bad ' + x); if (x % 79 === 6) return [x, 2n ** 70n]; return {x} }")
    outs, _ = _outs(pool, work, n=600, limits=Limits.parse(output="4KB"))
    assert len(outs) == 600
    for o in outs:
        x = o.number
        if x % 97 == 3:
            assert o.error.code == "EOUTPUTLIMIT" and "4 KB" in o.error.message, o.error
        elif x % 89 == 4:
            assert o.error.code == "EWORKREJECT" and f"no {x}" in o.error.message, o.error
        elif x % 83 == 5:
            assert o.error.code == "EUNCAUGHT" and f"bad {x}" in o.error.message, o.error
        elif x % 79 == 6:
            assert o.value == [x, 2 ** 70], o
        else:
            assert o.value == {"x": x}, o


def test_a_work_replacing_string_split_keeps_each_slice_on_its_datum(pool):
    # Block mode splits the datums' texts itself: job code replacing String.prototype.split must
    # not hand slices each other's datums.
    work = ("x => { if (x === 100) { const s = String.prototype.split; "
            "String.prototype.split = function (...a) { return s.apply(this, a).reverse() } } return x }")
    outs, _ = _outs(pool, work, n=300)
    assert [o.value for o in outs] == list(range(300))


def test_a_slice_after_one_that_left_the_heap_full_fails_on_memory_not_the_evaluator(pool, engine):
    if engine != "quickjs":
        pytest.skip("QuickJS: a heap limit the context keeps between slices")
    # Slice 1 keeps the heap full in a global; slice 2 then cannot even start: it fails EMEMORYLIMIT
    # as it does alone (block mode settled nothing, and the evaluator died: ECRASH).
    work = "x => { if (x === 1) { globalThis.keep = []; try { for (;;) keep.push(new Array(50)) } catch (e) {} } return x }"
    j = job(work, limits=Limits.parse(memory="16MB"))
    outs = [next(pool.map(j, [(n, n)])) for n in range(3)]
    assert outs[0].ok
    assert [o.error.code for o in outs[1:]] == ["EMEMORYLIMIT", "EMEMORYLIMIT"], [o.error for o in outs[1:]]


def test_a_percent_string_counts_for_backwards_progress_in_a_block(pool):
    outs, events = _outs(pool, "x => { progress(0.5); progress('60%'); progress(0.55); return x }", n=200)
    assert all(o.ok for o in outs)
    notes = sorted(n for k, n, p in events if k == "console" and "progress went backwards (0.6 -> 0.55)" in p["message"])
    assert notes == list(range(200))


def test_the_cpu_limit_is_per_slice_when_slices_run_in_blocks(pool):
    # 80 slices of ~40 ms each under a 1 s CPU limit: together far over it, each well under.
    # (V8's engine is a child process: the limit must count its CPU per slice, not since it started.)
    work = "x => { const t = Date.now(); let s = 0; while (Date.now() - t < 40) s += Math.sqrt(x + s); return x }"
    outs, _ = _outs(pool, work, n=80, limits=Limits.parse(cpu_time="1s", wall_time="10s"))
    assert [o.error for o in outs if not o.ok] == []
    assert sum(o.cpu_time for o in outs) > 1.0  # the premise: the job as a whole used more than the limit


def test_v8_starts_deno_ahead_for_the_next_job_and_only_uses_it_when_it_fits():
    """A finished job leaves a spare evaluator whose Deno process is already running (started
    for a job like the last one); a next job with other limits gets an engine of its own."""
    if missing("v8"):
        pytest.skip(missing("v8"))
    with EvaluatorPool(cores=1, config={"map-basic": {"js-engine": "v8"}}) as p:
        big = job("x => x + 1", limits=Limits.parse(memory="512MiB", wall_time="60s"))
        assert next(p.map(big, [(0, 1)])).value == 2
        p.release(big.id)
        spare = p._slots[0].spare
        assert spare is not None
        # The spare's heap would be 512 MiB: this job's 64 MiB must still hold.
        small = job(hostile("memory_balloon"), limits=Limits.parse(memory="64MiB", wall_time="60s"))
        out = next(p.map(small, [(0, None)]))
        assert not out.ok and out.error.code == "EMEMORYLIMIT" and "JavaScript heap" in out.error.message, out.error
        p.release(small.id)
        again = job("x => [x, typeof Deno, typeof globalThis.__dcpLast]", limits=Limits.parse(memory="64MiB"))
        out = next(p.map(again, [(0, 5)]))
        assert out.ok and out.value == [5, "undefined", "undefined"], out.error


def test_map_basic_standby_engine_serves_a_matching_job_only():
    from dcp_worktimes.worktime import SliceContext
    from dcp_worktimes.worktimes.map_basic import MapBasic

    if missing("v8"):
        pytest.skip(missing("v8"))
    wt = MapBasic()
    wt.config = {"js-engine": "v8"}
    try:
        wt.standby(JobSpec(id="", worktime="map-basic", limits=Limits.parse(memory="64MiB")))
        ahead = wt._spare[1]
        assert ahead.alive
        wt.prepare(job("x => x * 3", limits=Limits.parse(memory="64MiB")))
        assert wt._engine is ahead and wt._spare is None
        assert wt.execute(SliceContext(0, Limits()), 7) == 21
        wt.standby(JobSpec(id="", worktime="map-basic", limits=Limits.parse(memory="64MiB")))
        other = wt._spare[1]
        wt.prepare(job("x => x * 3", limits=Limits.parse(memory="128MiB")))
        assert wt._engine is not other and not other.alive  # a different heap: a fresh engine
    finally:
        wt.release()
    wt = MapBasic()
    wt.config = {"js-engine": "quickjs"}
    wt.standby(JobSpec(id="", worktime="map-basic"))
    assert wt._spare is None  # QuickJS starts in a millisecond: nothing to start ahead


def test_a_slice_over_the_cpu_limit_in_a_block_fails_alone(pool):
    # QuickJS starts a block slice's CPU clock at its first interrupt: the spinning slice must still
    # fail on CPU (not wall) time, alone, with the slices of its engine call around it kept.
    work = "x => { if (x === 250) for (;;) {} progress(); return x }"
    outs, _ = _outs(pool, work, n=300, limits=Limits.parse(cpu_time="0.5s", wall_time="20s"))
    assert [(o.number, o.error.code) for o in outs if not o.ok] == [(250, "ECPULIMIT")]
    assert [o.value for o in outs if o.ok] == [n for n in range(300) if n != 250]
