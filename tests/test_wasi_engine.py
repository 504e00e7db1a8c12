"""The shared wasmtime machinery (``dcp_worktimes.worktimes.wasm_runtime``): engines, disk cache, watchdog, traps."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time

import pytest
import wasmtime

from dcp_worktimes.errors import ErrorCode, SliceError
from dcp_worktimes.worktimes.wasm_runtime import (
    EngineOptions,
    Watchdog,
    cache_dir,
    cache_path,
    cached_module,
    compile_module,
    get_engine,
    memory_at_quota,
    safe_wasm_stack,
    set_store_limits,
    stats,
    trap_to_error,
    wasm_bytes,
)

SPIN = '(module (memory (export "memory") 1) (func (export "spin") (loop $l (br $l))) (func (export "ok") (result i32) (i32.const 7)))'
GROW = '(module (memory (export "memory") 1) (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))'


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DCP_WORKTIMES_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def engine():
    return get_engine(EngineOptions())


@pytest.fixture(scope="module")
def watchdog(engine):
    return Watchdog(engine, poll=0.02)


def instance(engine, text: str):
    module = compile_module(engine, EngineOptions(), wasm_bytes(text)).module
    store = wasmtime.Store(engine)
    return store, module


def test_one_engine_per_options():
    assert get_engine(EngineOptions()) is get_engine(EngineOptions())
    assert get_engine(EngineOptions(fuel=True)) is not get_engine(EngineOptions())


def test_wasm_stack_is_clamped_to_the_thread_stack():
    assert safe_wasm_stack(1 << 40) < 1 << 40
    assert safe_wasm_stack(256 * 1024) == 256 * 1024
    old = threading.stack_size(512 * 1024)
    try:
        assert safe_wasm_stack(1 << 20) <= 256 * 1024
    finally:
        threading.stack_size(old)


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DCP_WORKTIMES_CACHE", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "wasm"


def test_compiled_module_goes_to_disk_and_a_new_process_loads_it(engine, tmp_path):
    wasm = wasm_bytes(SPIN)
    first = compile_module(engine, EngineOptions(), wasm)
    assert first.source == "compiled" and first.path.is_file()
    assert compile_module(engine, EngineOptions(), wasm).source == "memory"
    script = (
        "from dcp_worktimes.worktimes.wasm_runtime import EngineOptions, get_engine, compile_module, wasm_bytes\n"
        f"c = compile_module(get_engine(EngineOptions()), EngineOptions(), wasm_bytes({SPIN!r}))\n"
        "print(c.source)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=os.environ.copy())
    assert out.stdout.strip() == "disk", out.stderr


def test_a_module_known_by_its_digest_loads_from_the_cache_without_its_bytes(engine):
    text = f'(module (func (export "known_{time.monotonic_ns()}")))'
    options = EngineOptions()
    assert cached_module(engine, options, hashlib.sha256(wasm_bytes(text)).hexdigest()) is None  # never compiled
    first = compile_module(engine, options, wasm_bytes(text))
    hit = cached_module(engine, options, first.digest)
    assert hit is not None and hit.source == "memory" and hit.path == first.path == cache_path(options, first.digest)
    script = (
        "from dcp_worktimes.worktimes.wasm_runtime import EngineOptions, get_engine, cached_module\n"
        f"c = cached_module(get_engine(EngineOptions()), EngineOptions(), {first.digest!r})\n"
        "print(c.source, [e.name for e in c.module.exports][0])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=os.environ.copy())
    assert out.stdout.split() == ["disk", text.split('"')[1]], out.stderr


def test_cache_key_includes_the_engine_options(engine):
    wasm = wasm_bytes(SPIN)
    plain = compile_module(engine, EngineOptions(), wasm)
    fuel = compile_module(get_engine(EngineOptions(fuel=True)), EngineOptions(fuel=True), wasm)
    assert plain.path != fuel.path and fuel.source == "compiled"


def test_a_corrupt_cache_entry_is_recompiled(engine):
    text = f'(module (func (export "unique_{time.monotonic_ns()}")))'  # not in this process's memory memo
    first = compile_module(engine, EngineOptions(), wasm_bytes(text))
    assert first.source == "compiled"
    first.path.write_bytes(b"garbage")
    script = (
        "from dcp_worktimes.worktimes.wasm_runtime import EngineOptions, get_engine, compile_module, wasm_bytes\n"
        f"c = compile_module(get_engine(EngineOptions()), EngineOptions(), wasm_bytes({text!r}))\n"
        "print(c.source)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=os.environ.copy())
    assert out.stdout.strip() == "compiled", out.stderr
    assert first.path.read_bytes() != b"garbage"


def test_watchdog_wall_deadline_then_the_instance_is_reusable(engine, watchdog):
    store, module = instance(engine, SPIN)
    with watchdog.guard(store):
        inst = wasmtime.Instance(store, module, [])
    started = time.monotonic()
    with watchdog.guard(store, deadline=time.monotonic() + 0.3) as guard:
        with pytest.raises(wasmtime.Trap) as info:
            inst.exports(store)["spin"](store)
    elapsed = time.monotonic() - started
    err = trap_to_error(info.value, interrupted=guard.error)
    assert err.code == ErrorCode.ESLICETOOSLOW
    assert 0.3 <= elapsed < 1.5
    with watchdog.guard(store):
        assert inst.exports(store)["ok"](store) == 7


def test_watchdog_cpu_budget_and_check_callback(engine, watchdog):
    store, module = instance(engine, SPIN)
    with watchdog.guard(store):
        spin = wasmtime.Instance(store, module, []).exports(store)["spin"]
    with watchdog.guard(store, cpu_time=0.2) as guard, pytest.raises(wasmtime.Trap):
        spin(store)
    assert guard.error.code == ErrorCode.ECPULIMIT
    stop_at = time.monotonic() + 0.2
    stop = lambda: SliceError("told to stop", code=ErrorCode.ECANCELLED) if time.monotonic() > stop_at else None  # noqa: E731
    with watchdog.guard(store, check=stop) as guard, pytest.raises(wasmtime.Trap):
        spin(store)
    assert guard.error.code == ErrorCode.ECANCELLED


def test_watchdog_guards_one_store_at_a_time(engine, watchdog):
    store, _ = instance(engine, SPIN)
    with watchdog.guard(store):
        with pytest.raises(RuntimeError, match="one store at a time"):
            with watchdog.guard(wasmtime.Store(engine)):
                pass


def test_store_memory_limit_and_quota_detection(engine, watchdog):
    store, module = instance(engine, GROW)
    set_store_limits(store, memory=4 << 20)
    with watchdog.guard(store):
        inst = wasmtime.Instance(store, module, [])
        grow = inst.exports(store)["grow"]
        memory = inst.exports(store)["memory"]
        assert not memory_at_quota(store, memory, 4 << 20)
        results = [grow(store, 16) for _ in range(6)]
    assert results[:3] == [1, 17, 33] and results[-1] == -1
    assert memory_at_quota(store, memory, 4 << 20)


def test_fuel_maps_to_cpulimit():
    options = EngineOptions(fuel=True)
    engine = get_engine(options)
    module = compile_module(engine, options, wasm_bytes(SPIN)).module
    store = wasmtime.Store(engine)
    store.set_fuel(10_000)
    with Watchdog(engine).guard(store), pytest.raises(wasmtime.Trap) as info:
        wasmtime.Instance(store, module, []).exports(store)["spin"](store)
    err = trap_to_error(info.value)
    assert err.code == ErrorCode.ECPULIMIT and err.name == "OutOfFuel"


def test_unguarded_store_traps_at_once(engine):
    store, module = instance(engine, SPIN)
    with pytest.raises(wasmtime.Trap) as info:
        wasmtime.Instance(store, module, []).exports(store)["ok"](store)
    assert info.value.trap_code == wasmtime.TrapCode.INTERRUPT


@pytest.mark.parametrize("work, message", [(b"\xff\xfe", "neither"), ("(module (bogus))", "not valid WAT"),
                                           ("missing.wasm", "no such file")])
def test_wasm_bytes_errors(work, message):
    with pytest.raises(ValueError, match=message):
        wasm_bytes(work)


def test_stats_count_compiles(engine):
    before = stats["compiled"]
    compile_module(engine, EngineOptions(), wasm_bytes('(module (func (export "x")))'))
    assert stats["compiled"] == before + 1


def test_one_shared_watchdog_per_engine(engine):
    from dcp_worktimes.worktimes.wasm_runtime import get_watchdog

    assert get_watchdog(engine) is get_watchdog(engine)
    assert get_watchdog(get_engine(EngineOptions(fuel=True))) is not get_watchdog(engine)


def test_the_disk_cache_evicts_least_recently_used_modules(monkeypatch, tmp_path):
    import os
    import time

    from dcp_worktimes.worktimes.wasm_runtime.engine import evict

    for i, name in enumerate(["old", "used", "new"]):
        (tmp_path / f"{name}.cwasm").write_bytes(b"x" * 1000)
        os.utime(tmp_path / f"{name}.cwasm", (time.time() - 100 + i, time.time() - 100 + i))
    os.utime(tmp_path / "used.cwasm")  # loaded just now
    removed = evict(tmp_path, keep=tmp_path / "new.cwasm", limit=2500)
    assert [p.name for p in removed] == ["old.cwasm"]
    assert sorted(p.name for p in tmp_path.glob("*.cwasm")) == ["new.cwasm", "used.cwasm"]


@pytest.mark.parametrize("first, then", [(0.3, 0.9), (10.0, 0.3)])
def test_a_rearmed_deadline_holds_whether_it_moved_later_or_earlier(engine, first, then):
    # Re-arming wakes the watchdog only for an earlier deadline; a later one is read when it wakes
    # for the old one. Either way the guest stops at the new deadline.
    store, module = instance(engine, SPIN)
    dog = Watchdog(engine)
    with dog.guard(store):
        inst = wasmtime.Instance(store, module, [])
    started = time.monotonic()
    with dog.guard(store, deadline=started + first) as guard:
        time.sleep(0.05)  # the watchdog is asleep on the first deadline
        guard.rearm(deadline=started + then, cpu_time=None, wall_time=then)
        with pytest.raises(wasmtime.Trap) as info:
            inst.exports(store)["spin"](store)
    elapsed = time.monotonic() - started
    assert trap_to_error(info.value, interrupted=guard.error).code == ErrorCode.ESLICETOOSLOW
    assert then <= elapsed < then + 1.0, elapsed


def test_a_run_right_after_one_with_a_later_deadline_stops_at_its_own(engine):
    # Disarming does not wake the watchdog (it finds the run gone when it wakes): the next run's
    # earlier deadline must wake it, or the guest would spin until the old deadline.
    store, module = instance(engine, SPIN)
    dog = Watchdog(engine)
    with dog.guard(store):
        inst = wasmtime.Instance(store, module, [])
    with dog.guard(store, deadline=time.monotonic() + 30):
        time.sleep(0.05)  # the watchdog is asleep on the 30 s deadline
    started = time.monotonic()
    with dog.guard(store, deadline=started + 0.3) as guard:
        with pytest.raises(wasmtime.Trap) as info:
            inst.exports(store)["spin"](store)
    assert trap_to_error(info.value, interrupted=guard.error).code == ErrorCode.ESLICETOOSLOW
    assert 0.3 <= time.monotonic() - started < 2.0
