"""The worktime conformance kit: one test suite every worktime runs (fsspec style).

Subclass ``WorktimeConformance`` in your worktime package's tests and override its fixtures::

    # tests/test_conformance.py of dcp-worktime-upper (the Upper of worktime.py's docstring)
    import pytest
    from dcp_worktimes.testing import WorktimeConformance, Sample

    class TestUpper(WorktimeConformance):
        @pytest.fixture
        def worktime_name(self):
            return "upper"

        @pytest.fixture
        def hello_work(self):
            return Sample(work="upper", datum="hi", expected="HI")

        @pytest.fixture
        def hostile_works(self):
            # Only the cases the engine can express. Hostile works run with the datum None,
            # which Upper refuses with a SliceError (EUNCAUGHT), as "throw" expects.
            return {"throw": "upper"}

Every test runs real slices through the sandboxed runner (``EvaluatorPool``) and checks the
contract: the worktime is registered with a semver version, hello-world works (repeatedly, in a
reused evaluator), progress reaches the no-progress watchdog, bad work fails the job once with
``EBADWORK``, and each hostile case in ``HOSTILE_CASES`` fails **with its code, within a bounded
wall time**, leaving the worker healthy (the next hello-world slice succeeds) and the worker's
own memory unaffected. Cases a worktime omits are reported as skipped, never as passed.
"""

from __future__ import annotations

import queue
import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
import pytest

from .limits import Limits
from .plugins import get_worktime
from .runner import EvaluatorPool, Outcome, SliceOutcome
from .worktime import JobSpec


#: The longest any single conformance slice may take (the first compile of a big engine included).
RUN_TIMEOUT = 900.0


@dataclass
class Sample:
    """A work with one datum and the result it must give."""

    work: str | bytes
    datum: Any
    expected: Any
    arguments: list[Any] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HostileCase:
    """What a hostile work must end in: one of ``codes`` (any failure if empty) within ``bound`` s."""

    codes: frozenset[str]
    limits: dict[str, Any]
    bound: float
    description: str


#: The hostile corpus every worktime is run against (sources in ``sandbox/hostile/<lang>/``).
HOSTILE_CASES: dict[str, HostileCase] = {
    "infinite_loop": HostileCase(frozenset({"ESLICETOOSLOW"}), {"wall_time": "1s"}, 4.0,
                                 "spins forever: stopped at the wall-time limit"),
    "memory_balloon": HostileCase(frozenset({"EMEMORYLIMIT"}), {"memory": "64MiB", "wall_time": "60s"}, 30.0,
                                  "allocates without bound: stopped at the memory quota"),
    "deep_recursion": HostileCase(frozenset(), {"wall_time": "20s", "memory": "256MiB"}, 30.0,
                                  "recurses without bound: fails cleanly with any code"),
    "huge_output": HostileCase(frozenset({"EOUTPUTLIMIT"}), {"output": "1MiB", "wall_time": "30s"}, 30.0,
                               "returns more than the output quota"),
    "never_progress": HostileCase(frozenset({"ENOPROGRESS"}), {"progress_timeout": "1s", "wall_time": "30s"}, 6.0,
                                  "runs long without calling progress()"),
    "throw": HostileCase(frozenset({"EUNCAUGHT"}), {}, 15.0, "throws / raises an error"),
    "cpu_burn": HostileCase(frozenset({"ECPULIMIT"}), {"cpu_time": "1s", "wall_time": "60s"}, 15.0,
                            "burns CPU for 10 s: stopped at the CPU-time limit"),
    "crash": HostileCase(frozenset({"ECRASH"}), {}, 15.0,
                         "kills its own evaluator process (where the engine can express that at all)"),
    "unserializable": HostileCase(frozenset({"EUNSERIALIZABLE"}), {}, 15.0,
                                  "returns a value that cannot cross the boundary losslessly"),
    "file_access": HostileCase(frozenset(), {"wall_time": "20s"}, 30.0,
                               "reads a host file (datum: its path): the content must never come back"),
    "network_access": HostileCase(frozenset(), {"wall_time": "20s"}, 30.0,
                                  "connects to a host socket (datum: [host, port]): no connection may arrive"),
    "process_access": HostileCase(frozenset(), {"wall_time": "20s"}, 30.0,
                                  "starts a process that would create the file named by the datum"),
    "unlinked_scratch": HostileCase(frozenset({"EOUTPUTLIMIT"}), {"wall_time": "60s"}, 30.0,
                                    "writes 1 GiB into a scratch file it unlinked but keeps open: stopped at the "
                                    "scratch cap (64 MiB by default)"),
    "sparse_scratch": HostileCase(frozenset({"EOUTPUTLIMIT"}), {"wall_time": "60s"}, 30.0,
                                  "fills the holes of a 1 TiB sparse scratch file: stopped at the scratch cap"),
    "fd_hoard": HostileCase(frozenset(), {"wall_time": "30s"}, 40.0,
                            "opens files until it runs out of descriptors: any outcome, the worker keeps serving"),
}

#: Cases only a worktime whose guests have a writable file system (a scratch ``/tmp``) can express.
FILE_SYSTEM_CASES = frozenset({"unlinked_scratch", "sparse_scratch", "fd_hoard"})


def run(pool: EvaluatorPool, name: str, work: str | bytes, datum: Any, *, arguments: list | None = None,
        options: dict | None = None, limits: Limits | None = None, events: list | None = None) -> SliceOutcome:
    """Run one slice of a fresh job on ``pool`` and return its outcome."""
    job = JobSpec(id=f"conformance-{secrets.token_hex(4)}", worktime=name, work=work, arguments=list(arguments or []),
                  options=dict(options or {}), limits=limits or Limits())
    sink = (lambda kind, n, payload: events.append((kind, payload))) if events is not None else None
    got: "queue.SimpleQueue[Outcome]" = queue.SimpleQueue()
    pool.submit(job, [0], [datum], got.put, sink)
    try:  # bounded: a worktime that hangs the runner fails the test instead of hanging the suite
        return next(got.get(timeout=RUN_TIMEOUT).slices())
    except queue.Empty:
        pool.cancel(job.id)
        raise AssertionError(f"{name}: no outcome within {RUN_TIMEOUT:g}s; the runner or the worktime hangs") from None


class WorktimeConformance:
    """Base class of a worktime's conformance tests. Override the fixtures; keep the tests."""

    # -- fixtures to override -------------------------------------------------------------------
    @pytest.fixture
    def worktime_name(self) -> str:
        raise NotImplementedError("override the worktime_name fixture with your worktime's name")

    @pytest.fixture
    def hello_work(self) -> Sample:
        raise NotImplementedError("override hello_work: a work, a datum and its expected result")

    @pytest.fixture
    def progress_work(self) -> Sample | None:
        """A work that runs ~1.5 s calling progress() often (or ``None`` if the engine cannot wait)."""
        return None

    @pytest.fixture
    def bad_work(self) -> str | bytes | None:
        """A work that cannot be prepared (does not compile), or ``None``."""
        return None

    @pytest.fixture
    def hostile_works(self) -> dict[str, str | bytes]:
        """Case name (see ``HOSTILE_CASES``) → work. Omit cases the engine cannot express."""
        return {}

    @pytest.fixture
    def job_options(self) -> dict[str, Any]:
        return {}

    @pytest.fixture(scope="class")
    @classmethod
    def worker_config(cls) -> dict[str, dict[str, Any]]:
        """The worker owner's settings per worktime name (``Worktime.config``), e.g.
        ``{"ollama": {"model": "/path/model.gguf"}}``."""
        return {}

    # -- shared machinery -----------------------------------------------------------------------
    @pytest.fixture(scope="class")
    @classmethod
    def pool(cls, worker_config):
        with EvaluatorPool(cores=1, config=worker_config) as pool:
            yield pool

    @pytest.fixture(autouse=True)
    def _available(self, worktime_name: str, worker_config) -> None:
        """A worktime that cannot run on this machine skips the kit, saying why (the probe's reason
        names what to install); it is never counted as passing."""
        probe = get_worktime(worktime_name).probe(worker_config.get(worktime_name))
        if not probe.available:
            pytest.skip(f"{worktime_name} is not available on this machine: {probe.unavailable}")

    # -- the contract ---------------------------------------------------------------------------
    def test_registered(self, worktime_name: str, worker_config) -> None:
        reg = get_worktime(worktime_name)
        desc = reg.describe(worker_config.get(worktime_name))
        assert desc["available"], desc["unavailable"]
        assert desc["name"] == worktime_name
        assert get_worktime(worktime_name, f"^{reg.version.split('.')[0]}.0.0" if not reg.version.startswith("0.") else "*")
        assert isinstance(desc["capabilities"], dict)
        assert reg.provider

    def test_hello_world(self, pool, worktime_name: str, hello_work: Sample, job_options) -> None:
        out = run(pool, worktime_name, hello_work.work, hello_work.datum, arguments=hello_work.arguments,
                  options={**job_options, **hello_work.options})
        assert out.ok, out.error
        assert out.value == hello_work.expected
        assert out.bytes_in > 0 and out.bytes_out > 0

    def test_evaluator_reused_across_slices(self, pool, worktime_name: str, hello_work: Sample, job_options) -> None:
        job = JobSpec(id=f"reuse-{secrets.token_hex(4)}", worktime=worktime_name, work=hello_work.work,
                      arguments=hello_work.arguments, options={**job_options, **hello_work.options})
        outs = sorted(pool.map(job, [(i, hello_work.datum) for i in range(20)]), key=lambda o: o.number)
        assert [o.number for o in outs] == list(range(20))
        assert all(o.ok and o.value == hello_work.expected for o in outs), [o.error for o in outs if not o.ok]

    def test_progress_feeds_the_watchdog(self, pool, worktime_name: str, progress_work: Sample | None, job_options) -> None:
        if progress_work is None:
            pytest.skip(f"{worktime_name} provides no progress_work")
        events: list = []
        limits = Limits.parse(progress_timeout="0.7s", wall_time="30s")
        out = run(pool, worktime_name, progress_work.work, progress_work.datum, arguments=progress_work.arguments,
                  options={**job_options, **progress_work.options}, limits=limits, events=events)
        assert out.ok, out.error
        assert out.value == progress_work.expected
        assert any(kind == "progress" for kind, _ in events), events

    def test_bad_work_fails_the_job(self, pool, worktime_name: str, bad_work, job_options) -> None:
        if bad_work is None:
            pytest.skip(f"{worktime_name} provides no bad_work")
        job = JobSpec(id=f"bad-{secrets.token_hex(4)}", worktime=worktime_name, work=bad_work, options=job_options)
        t = time.monotonic()
        outs = list(pool.map(job, [(i, i) for i in range(5)]))
        assert all(not o.ok and o.error.code == "EBADWORK" for o in outs), [o.error for o in outs]
        assert outs[0].error.message
        assert time.monotonic() - t < 60

    @pytest.mark.parametrize("case", sorted(HOSTILE_CASES))
    def test_hostile(self, case: str, pool, worktime_name: str, hostile_works, hello_work: Sample, job_options,
                     tmp_path) -> None:
        if case not in hostile_works:
            pytest.skip(f"{worktime_name} cannot express the hostile case {case!r}")
        spec = HOSTILE_CASES[case]
        datum: Any = None
        check = None
        if case == "file_access":
            token = secrets.token_hex(16)
            canary = tmp_path / "canary.txt"
            canary.write_text(token)
            datum = str(canary)
            check = lambda out: not (out.ok and token in repr(out.value))  # noqa: E731
        elif case == "network_access":
            server = socket.socket()
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            server.setblocking(False)
            datum = ["127.0.0.1", server.getsockname()[1]]

            def check(out):
                try:
                    server.accept()
                    return False
                except BlockingIOError:
                    return True
                finally:
                    server.close()
        elif case == "process_access":
            marker = tmp_path / "marker"
            datum = str(marker)
            check = lambda out: not marker.exists()  # noqa: E731

        me = psutil.Process()
        rss_before = me.memory_info().rss
        t = time.monotonic()
        out = run(pool, worktime_name, hostile_works[case], datum, options=job_options,
                  limits=Limits.parse(**spec.limits))
        elapsed = time.monotonic() - t
        assert elapsed < spec.bound, f"{case}: took {elapsed:.1f}s, bound {spec.bound}s"
        if spec.codes:
            assert not out.ok, f"{case}: expected {sorted(spec.codes)}, got result {out.value_bytes[:80]!r}"
            assert out.error.code in spec.codes, f"{case}: expected {sorted(spec.codes)}, got {out.error}"
        elif case == "deep_recursion":
            assert not out.ok, f"{case}: expected a clean failure, got a result"
        if check is not None:
            assert check(out), f"{case}: the sandbox let the work reach the host ({out.error or out.value_bytes[:80]!r})"
        # The worker itself is unharmed: its memory did not balloon, and the next slice works.
        assert me.memory_info().rss - rss_before < 64 << 20
        again = run(pool, worktime_name, hello_work.work, hello_work.datum, arguments=hello_work.arguments,
                    options={**job_options, **hello_work.options})
        assert again.ok and again.value == hello_work.expected, again.error
