"""The ``wasi`` worktime in-process: real modules (inline WAT, and C built for wasm32-wasi)."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from dcp_worktimes.errors import ErrorCode, SliceError, WorkError
from dcp_worktimes.limits import Limits
from dcp_worktimes.values import pack
from dcp_worktimes.worktimes.wasi import WasiWorktime
from dcp_worktimes.worktimes.wasi.toolchain import compile_c
from dcp_worktimes.worktime import JobSpec, SliceContext

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = Path(__file__).resolve().parent / "wasi_programs"
HOSTILE = ROOT / "sandbox" / "hostile"

#: Echoes stdin to stdout: the identity slice, in any content type.
ECHO_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start")
    (local $n i32)
    (loop $copy
      (i32.store (i32.const 0) (i32.const 1024))
      (i32.store (i32.const 4) (i32.const 64512))
      (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16)))
      (local.set $n (i32.load (i32.const 16)))
      (if (local.get $n) (then
        (i32.store (i32.const 4) (local.get $n))
        (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 20)))
        (br $copy))))))
"""


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DCP_WORKTIMES_CACHE", str(tmp_path_factory.getbasetemp() / "wasm-cache"))


def prepared(work, limits: Limits = Limits(), **job) -> WasiWorktime:
    wt = WasiWorktime()
    wt.prepare(JobSpec(id="job", worktime="wasi", work=work, limits=limits, **job))
    return wt


def run(wt: WasiWorktime, datum=None, limits: Limits | None = None, events: list | None = None):
    ctx = SliceContext(0, limits or wt.job.limits, wt.job,
                       sink=(lambda kind, payload: events.append((kind, payload))) if events is not None else None)
    return wt.execute(ctx, datum)


def failure(wt: WasiWorktime, datum=None, limits: Limits | None = None) -> tuple[SliceError, float]:
    started = time.monotonic()
    with pytest.raises(SliceError) as info:
        run(wt, datum, limits)
    return info.value, time.monotonic() - started


# -- the slice ABI ----------------------------------------------------------------------------
def test_c_program_reads_json_datum_and_argv_and_returns_stdout_json(build):
    events: list = []
    wt = prepared(build("sum_json"), arguments=["x", 5, [1, 2]])
    assert run(wt, [1, 2, 3, -10], events=events) == {"sum": -4, "count": 4, "argv": ["x", "5", "[1,2]"]}
    assert ("console", {"level": "log", "message": "summed 4 numbers"}) in events


def test_inline_wat_text_is_work():
    wt = prepared(ECHO_WAT)
    assert run(wt, {"a": [1, 2.5, None, "é"], "big": 2**70}) == {"a": [1, 2.5, None, "é"], "big": 2**70}


def test_a_path_as_work_is_read_by_the_deployer_never_by_the_worker(build, tmp_path):
    from dcp_worktimes import compute

    path = tmp_path / "sum.wasm"
    path.write_bytes(build("sum_json"))
    # On a worker, a file name in the job is refused: it must not read the worker's own files.
    with pytest.raises(WorkError, match="workers never read files named by a job"):
        prepared(str(path))
    secret = tmp_path / "secret.wat"
    secret.write_text("api_key=TOPSECRET\n")
    with pytest.raises(WorkError) as e:
        prepared(str(secret))
    assert "TOPSECRET" not in str(e.value)
    # The deployer's side (the Compute API, dcp-worker slice) reads the file and ships its bytes.
    assert compute.for_([[4, 5]], str(path), worktime="wasi").exec(progress=False) == [{"sum": 9, "count": 2, "argv": []}]


@pytest.mark.parametrize(
    "content_type, datum",
    [("raw", b"\x00\xffbinary"), ("application/octet-stream", b"x"), ("msgpack", [2**80, b"\x00\x01", {"n": None}])],
)
def test_content_types(content_type, datum):
    assert run(prepared(ECHO_WAT, options={"content_type": content_type}), datum) == datum


def test_msgpack_stdin_is_exactly_the_packed_datum():
    assert run(prepared(ECHO_WAT, options={"content_type": "raw"}), pack([1, "a"])) == pack([1, "a"])


def test_empty_stdout_is_null():
    wt = prepared('(module (memory (export "memory") 1) (func (export "_start")))')
    assert run(wt, [1]) is None


def test_exit_status_is_a_slice_error_with_code_and_stderr_tail(build):
    err, _ = failure(prepared(build("exit3")))
    assert err.code == ErrorCode.EUNCAUGHT
    assert "status 3" in err.message and "giving up" in err.message
    assert "something went wrong: giving up" in err.stack


def test_stdout_that_is_not_json_is_unserializable():
    err, _ = failure(prepared((HOSTILE / "wat" / "unserializable.wat").read_text()))
    assert err.code == ErrorCode.EUNSERIALIZABLE and "{not json" in err.message


def test_dcp_imports_progress_console_emit(build):
    events: list = []
    wt = prepared(build("dcp_imports"))
    ctx = SliceContext(0, wt.job.limits, wt.job, sink=lambda kind, payload: events.append((kind, payload)))
    assert wt.execute(ctx, None) == "done"
    assert ctx.progress_calls == 2
    assert ("console", {"level": "warn", "message": "a warning from C"}) in events
    assert ("emit", {"name": "partial", "value": {"rows": 10}}) in events


# -- quotas -----------------------------------------------------------------------------------
def test_infinite_loop_stops_within_one_second_of_its_wall_limit(build):
    limits = Limits.parse(wall_time="1s")
    err, elapsed = failure(prepared(build("infinite_loop"), limits))
    assert err.code == ErrorCode.ESLICETOOSLOW
    assert 1.0 <= elapsed < 2.0, elapsed


def test_malloc_bomb_stops_at_the_memory_quota(build):
    limits = Limits.parse(memory="64MiB")
    err, elapsed = failure(prepared(build("memory_balloon", HOSTILE / "c"), limits))
    assert err.code == ErrorCode.EMEMORYLIMIT, err
    assert "malloc failed after" in (err.stack or "")
    mib = int(err.stack.split("malloc failed after ")[1].split()[0])
    # Not more than the quota; how much of it malloc gets before a request does not fit depends on the
    # libc's allocator (wasi-libc's dlmalloc as clang links it takes ~60 MiB; as Zig builds it, it
    # grows its heap in doubling steps and stops near 20 MiB).
    assert 8 <= mib < 64, mib
    assert elapsed < 10


def test_memory_quota_applies_per_slice_limits(build):
    wt = prepared(build("memory_balloon", HOSTILE / "c"), Limits.parse(memory="512MiB"))
    err, _ = failure(wt, limits=Limits.parse(memory="32MiB"))
    assert err.code == ErrorCode.EMEMORYLIMIT
    assert int(err.stack.split("malloc failed after ")[1].split()[0]) < 32


def test_etc_passwd_open_fails_inside_the_guest(build):
    result = run(prepared(build("read_passwd")))
    assert result["opened"] is False
    # wasi-libc's ENOTCAPABLE (no preopen covers /etc) as clang links it; ENOENT as Zig builds it.
    assert result["errno"] in (76, 44)


def test_escape_attempts_all_fail(build):
    result = run(prepared(build("escape_attempts", HOSTILE / "c"), files={"input.txt": b"x"}))
    assert result == {"etc_passwd": False, "dotdot": False, "tmp_dotdot": False, "proc_self": False,
                      "wrote_job": False, "wrote_existing": False, "env": 0}


def test_preopen_escape_at_the_syscall_level_fails():
    codes = run(prepared((HOSTILE / "wat" / "preopen_escape.wat").read_text()))
    assert len(codes) == 14 and 0 not in codes, codes


def test_job_files_are_read_only_and_scratch_is_fresh_per_slice(build):
    # Only this process's directories, and only new ones: prepare() sweeps what dead evaluators
    # left behind and the GC releases earlier tests' worktimes, so the set may shrink meanwhile.
    def ours() -> set[str]:
        return {path for base in (tempfile.gettempdir(), "/dev/shm")
                for path in glob.glob(os.path.join(base, f"dcp-wasi-*-{os.getpid()}-*"))}

    before = ours()
    wt = prepared(build("files"), files={"input.txt": b"hello files"})
    for _ in range(2):
        assert run(wt) == {"input": "hello files", "marker_existed": False, "scratch_writable": True,
                           "job_writable": False}
        assert os.listdir(os.path.join(wt._slice_root, "scratch")) == []
    files_dir, stdin_path, slice_root = wt._files_dir, wt._stdin_path, wt._slice_root
    assert files_dir and os.path.isdir(files_dir) and os.path.isfile(stdin_path) and os.path.isdir(slice_root)
    wt.release()
    assert not any(os.path.exists(p) for p in (files_dir, stdin_path, slice_root))
    assert ours() - before == set()


def test_scratch_is_emptied_even_of_nested_directories():
    source = r"""
    #include <stdio.h>
    #include <sys/stat.h>
    int main(void) {
        struct stat st;
        int existed = stat("/tmp/a", &st) == 0;
        mkdir("/tmp/a", 0700);
        mkdir("/tmp/a/b", 0700);
        FILE *f = fopen("/tmp/a/b/c.txt", "w");
        fputs("deep", f);
        fclose(f);
        printf("%s\n", existed ? "true" : "false");
        return 0;
    }
    """
    wt = prepared(compile_c(source))
    assert [run(wt) for _ in range(3)] == [False, False, False]
    assert os.listdir(os.path.join(wt._slice_root, "scratch")) == []


def test_scratch_directory_is_size_capped(build):
    source = r"""
    #include <stdio.h>
    #include <string.h>
    int main(void) {
        static char block[1 << 20];
        memset(block, 'x', sizeof block);
        FILE *f = fopen("/tmp/big", "w");
        for (;;) { fwrite(block, 1, sizeof block, f); fflush(f); }
    }
    """
    wt = prepared(compile_c(source), options={"scratch_size": "4MiB"})
    err, elapsed = failure(wt, limits=Limits.parse(wall_time="20s"))
    assert err.code == ErrorCode.EOUTPUTLIMIT and "scratch" in err.message
    assert elapsed < 10


def test_a_scratch_tree_deeper_than_recursion_is_cleaned_and_hurts_no_other_slice(build):
    wasm = build("deep_scratch", HOSTILE / "c")
    wt = prepared(wasm)
    try:  # slice 0 makes 1500 nested directories: stopped if the cap's watchdog measures it meanwhile
        assert run(wt, 0) == 0
    except SliceError as e:
        assert e.code == ErrorCode.EOUTPUTLIMIT and "nested more than 64 levels" in e.message
    assert [run(wt, x) for x in range(1, 4)] == [10, 20, 30]
    assert os.listdir(os.path.join(wt._slice_root, "scratch")) == []
    slice_root = wt._slice_root
    wt.release()
    assert not os.path.exists(slice_root)
    assert run(prepared(wasm), 5) == 50  # the next job on this evaluator is fine too


def test_files_hidden_below_host_path_max_still_count_against_the_scratch_cap(build):
    wt = prepared(build("hidden_scratch", HOSTILE / "c"), options={"scratch_size": "8MiB"})
    err, elapsed = failure(wt, limits=Limits.parse(wall_time="20s"))
    assert err.code == ErrorCode.EOUTPUTLIMIT and "scratch directory /tmp cannot be measured" in err.message, err
    assert elapsed < 10
    slice_root = wt._slice_root
    wt.release()
    assert not os.path.exists(slice_root)  # removed although its paths are longer than PATH_MAX


def test_a_guest_holding_every_descriptor_of_the_process_is_not_failed_for_it():
    # While the guest holds them all, the scratch walk cannot open a directory: that is the host
    # out of descriptors, not an unreadable scratch (it once failed the slice EOUTPUTLIMIT, and
    # the store, kept alive by the error's traceback, held the descriptors for every later test).
    source = r"""
    #include <fcntl.h>
    #include <stdio.h>
    #include <time.h>
    int main(void) {
      int n = 0; while (open("/tmp/f", O_RDONLY | O_CREAT, 0600) >= 0) n++;
      struct timespec a, b; clock_gettime(CLOCK_MONOTONIC, &a);  /* held while the watchdog looks */
      do clock_gettime(CLOCK_MONOTONIC, &b); while ((b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000 < 700);
      printf("%d\n", n); return 0;
    }
    """
    fds = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    from dcp_worktimes.runner import shared
    from dcp_worktimes.scheduler import reuse

    reuse.close_all()
    shared.close_all()
    wt = prepared(compile_c(source), Limits.parse(wall_time="30s"))
    first = run(wt)  # the watchdog's scratch walk ran while the guest held them all
    assert first > 100
    before = fds()
    assert first - 2 <= run(wt) <= first + 2
    assert fds() <= before + 1  # and the guest's descriptors were closed, both times
    assert os.listdir(os.path.join(wt._slice_root, "scratch")) == []


def test_a_guest_that_hoards_file_descriptors_gets_its_result_and_leaves_none_open():
    source = r"""
    #include <fcntl.h>
    #include <stdio.h>
    int main(void) { int n = 0; while (open("/tmp/f", O_RDONLY | O_CREAT, 0600) >= 0) n++; printf("%d\n", n); return 0; }
    """
    fds = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    from dcp_worktimes.runner import shared
    from dcp_worktimes.scheduler import reuse

    # An earlier test's kept store or warm pool (its spares), closed meanwhile, would move the count.
    reuse.close_all()
    shared.close_all()
    wt = prepared(compile_c(source))
    first = run(wt)
    assert first > 100  # it ran out at the process limit, inside the guest
    before = fds()
    # the store closed them all, and the scratch was emptied for this slice (the scratch watchdog
    # itself holds up to two descriptors for a moment while it measures, in either run)
    assert first - 2 <= run(wt) <= first + 2
    assert fds() <= before + 1
    assert os.listdir(os.path.join(wt._slice_root, "scratch")) == []


def test_huge_output_hits_the_output_limit():
    wt = prepared((HOSTILE / "wat" / "huge_output.wat").read_text(), Limits.parse(output="1MiB"))
    err, elapsed = failure(wt)
    assert err.code == ErrorCode.EOUTPUTLIMIT
    assert elapsed < 5


def test_cpu_time_limit(build):
    err, elapsed = failure(prepared(build("infinite_loop"), Limits.parse(wall_time="20s", cpu_time="0.5s")))
    assert err.code == ErrorCode.ECPULIMIT
    assert elapsed < 10


def test_fuel_is_a_deterministic_instruction_budget(build):
    fib = build("fib")
    assert run(prepared(fib, options={"fuel": 10**8}), 20) == 6765
    err, _ = failure(prepared(fib, options={"fuel": 10**5}), 20)
    assert err.code == ErrorCode.ECPULIMIT and "fuel" in err.message
    # same budget, same program: the same verdict every time
    err2, _ = failure(prepared(fib, options={"fuel": 10**5}), 20)
    assert err2.code == ErrorCode.ECPULIMIT


def test_no_progress_watchdog():
    wt = prepared((HOSTILE / "wat" / "never_progress.wat").read_text(),
                  Limits.parse(wall_time="30s", progress_timeout="1s"))
    err, elapsed = failure(wt)
    assert err.code == ErrorCode.ENOPROGRESS
    assert elapsed < 10


def test_cancel_stops_the_guest(build):
    import threading

    wt = prepared(build("infinite_loop"))
    cancel = threading.Event()
    ctx = SliceContext(0, Limits.parse(wall_time="30s", progress_timeout=None), wt.job, cancel_event=cancel)
    threading.Timer(0.3, cancel.set).start()
    with pytest.raises(SliceError) as info:
        wt.execute(ctx, None)
    assert info.value.code == ErrorCode.ECANCELLED


@pytest.mark.parametrize("source", ["wat", "c"])
def test_deep_recursion_fails_cleanly_and_the_worktime_survives(source, build):
    work = (HOSTILE / "wat" / "deep_recursion.wat").read_text() if source == "wat" else build("deep_recursion", HOSTILE / "c")
    err, _ = failure(prepared(work))
    assert err.code == ErrorCode.EUNCAUGHT
    assert run(prepared(ECHO_WAT), [1]) == [1]


def test_an_instance_is_fresh_per_slice_after_a_trap(build):
    wt = prepared(build("memory_balloon", HOSTILE / "c"), Limits.parse(memory="32MiB"))
    for _ in range(2):
        assert failure(wt)[0].code == ErrorCode.EMEMORYLIMIT


# -- bad work ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "work, options, message",
    [
        (b"\x00asm\x01\x00\x00\x00garbage", {}, "does not validate"),
        ("(module (func $f (unknown-op)))", {}, "not valid WAT"),
        ("/nonexistent/prog.wasm", {}, "workers never read files named by a job"),
        ('(module (import "env" "f" (func)) (func (export "_start")))', {}, "env.f"),
        ('(module (func (export "run")))', {}, "_start"),
        (ECHO_WAT, {"content_type": "xml"}, "content_type"),
        (ECHO_WAT, {"fuel": -1}, "fuel"),
        # wasmtime holds fuel in 64 bits: 2**64 wrapped around to almost none (ECPULIMIT at once)
        (ECHO_WAT, {"fuel": 2**64}, "at most 18,446,744,073,709,551,615"),
        # a _start that is no () -> () function failed every slice instead of the job once
        ('(module (global (export "_start") i32 (i32.const 0)))', {}, "_start is a global"),
        ('(module (memory (export "_start") 1))', {}, "_start is a memory"),
        ('(module (func (export "_start") (param i32)))', {}, "_start is a function taking 1 and returning 0"),
    ],
)
def test_bad_work_is_a_work_error_that_says_what_to_do(work, options, message):
    with pytest.raises(WorkError) as info:
        prepared(work, options=options)
    assert message in str(info.value)


def test_bad_job_file_name():
    with pytest.raises(WorkError, match="relative path"):
        prepared(ECHO_WAT, files={"../escape": b"x"})


def test_raw_content_type_rejects_structured_datum():
    with pytest.raises(SliceError) as info:
        run(prepared(ECHO_WAT, options={"content_type": "raw"}), [1, 2])
    assert info.value.code == ErrorCode.EUNSERIALIZABLE


# -- compile once, registry -------------------------------------------------------------------
def test_module_compiles_once_per_job_and_the_disk_cache_survives_a_restart(build, tmp_path):
    from dcp_worktimes.worktimes.wasm_runtime import stats

    work = build("sum_json")
    compiled_before = stats["compiled"]
    wt = prepared(work)
    for i in range(3):
        run(wt, [i])
    assert stats["compiled"] - compiled_before <= 1
    # A fresh process (a restarted worker) finds the compiled module on disk.
    path = tmp_path / "prog.wasm"
    path.write_bytes(work)
    script = (
        "from dcp_worktimes.worktimes.wasi import WasiWorktime\n"
        "from dcp_worktimes.worktime import JobSpec\n"
        "from dcp_worktimes.worktimes.wasm_runtime import stats\n"
        f"WasiWorktime().prepare(JobSpec(id='j', worktime='wasi', work=open({str(path)!r}, 'rb').read()))\n"
        "print(stats['compiled'], stats['loaded_from_disk'])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env=os.environ | {"DCP_WORKTIMES_CACHE": os.environ["DCP_WORKTIMES_CACHE"]})
    assert out.stdout.split() == ["0", "1"], out.stdout + out.stderr


def test_registered_as_builtin_without_importing_wasmtime():
    script = (
        "import sys\n"
        "from dcp_worktimes.plugins import get_worktime\n"
        "reg = get_worktime('wasi')\n"
        "print(reg.cls.name, reg.cls.version, 'wasmtime' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["wasi", "1.0.0", "False"], out.stdout + out.stderr


def test_directories_of_dead_processes_are_swept(tmp_path):
    # A process that dies without release() (an evaluator killed by the supervisor) leaves its
    # slice directory and stdin file behind; the next process to prepare a job removes them.
    script = (
        "import os\n"
        "from dcp_worktimes.worktimes.wasi import WasiWorktime\n"
        "from dcp_worktimes.worktime import JobSpec, SliceContext\n"
        f"wt = WasiWorktime(); job = JobSpec(id='j', worktime='wasi', work={ECHO_WAT!r}, files={{'a': b'x'}})\n"
        "wt.prepare(job); wt.execute(SliceContext(0, job.limits, job), [1])\n"
        "print(wt._slice_root, wt._stdin_path, wt._files_dir, flush=True)\n"
        "os._exit(0)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    left = out.stdout.split()
    assert len(left) == 3 and all(os.path.exists(p) for p in left), out.stdout + out.stderr
    assert os.path.getsize(left[1]) == 0  # the datum does not linger in memory after the slice
    import dcp_worktimes.worktimes.wasi.worktime as module

    module._swept = False
    prepared(ECHO_WAT).release()
    assert not any(os.path.exists(p) for p in left)


def test_release_at_exit_and_on_garbage_collection():
    script = (
        "from dcp_worktimes.worktimes.wasi import WasiWorktime\n"
        "from dcp_worktimes.worktime import JobSpec, SliceContext\n"
        f"job = JobSpec(id='j', worktime='wasi', work={ECHO_WAT!r})\n"
        "kept = WasiWorktime(); kept.prepare(job); kept.execute(SliceContext(0, job.limits, job), 1)\n"
        "gone = WasiWorktime(); gone.prepare(job); gone.execute(SliceContext(0, job.limits, job), 1)\n"
        "print(kept._slice_root, gone._slice_root, flush=True)\n"
        "del gone\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    left = out.stdout.split()
    assert len(left) == 2 and not any(os.path.exists(p) for p in left), out.stdout + out.stderr


def test_scratch_cap_counts_empty_files_and_cannot_be_lifted_by_the_job(monkeypatch):
    from dcp_worktimes.worktimes.wasm_runtime.scratch import scratch_size

    monkeypatch.setenv("DCP_WORKTIMES_SCRATCH_LIMIT", "16MiB")
    assert scratch_size("none") == 16 << 20 and scratch_size("1GiB") == 16 << 20 and scratch_size("1MiB") == 1 << 20
    source = r"""
    #include <stdio.h>
    int main(void) {
        char name[64];
        for (int i = 0; i < 1000000; i++) {
            snprintf(name, sizeof name, "/tmp/f%d", i);
            FILE *f = fopen(name, "w");
            if (!f) return 2;
            fclose(f);
        }
        return 0;
    }
    """
    wt = prepared(compile_c(source), options={"scratch_size": "none", "content_type": "raw"})
    err, elapsed = failure(wt, b"", limits=Limits.parse(wall_time="60s", progress_timeout="off"))
    assert err.code == ErrorCode.EOUTPUTLIMIT and "scratch directory" in err.message
    assert elapsed < 30


def test_a_module_needing_a_disabled_feature_is_bad_work_not_a_memory_error():
    wt = prepared('(module (memory 1 65536 shared) (func (export "_start")))')
    err, _ = failure(wt)
    assert err.code == ErrorCode.EBADWORK and "shared memory" in err.message


@pytest.mark.parametrize("status, words", [(3, "exited with status 3"),
                                           (255, "exited with a status of 126 or more, which WASI does not allow")])
def test_an_exit_status_is_the_slices_error_in_words(status, words):
    # proc_exit(255) is refused by wasmtime itself: it gave a wasm backtrace and "invalid exit status".
    exits = ('(module (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32))) '
             f'(memory (export "memory") 1) (func (export "_start") (call $exit (i32.const {status}))))')
    err, _ = failure(prepared(exits))
    assert err.code == ErrorCode.EUNCAUGHT and words in err.message and "backtrace" not in err.message
