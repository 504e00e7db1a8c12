"""The plugin registry: built-ins, entry points, duplicates, broken plugins, the load switch."""

from __future__ import annotations

import types

import pytest

from dcp_worktimes import hookimpl, hookspecs
from dcp_worktimes.errors import WorktimeNotFound
from dcp_worktimes.plugins import ENV_LOAD_PLUGINS, Registry, get_worktime
from dcp_worktimes.worktime import Worktime


def make_plugin(name: str, *classes: type) -> types.ModuleType:
    module = types.ModuleType(name)

    @hookimpl
    def register_worktimes(register):
        for cls in classes:
            register(cls)

    module.register_worktimes = register_worktimes
    return module


class Upper(Worktime):
    name = "upper"
    version = "1.2.3"

    def execute(self, ctx, datum):
        return datum.upper()


class OtherUpper(Upper):
    pass


def test_echo_comes_from_its_entry_point():
    reg = get_worktime("echo")
    assert reg.provider == "dcp-worktime-echo" and reg.version == "1.0.0"
    assert reg.ref == "dcp_worktime_echo:EchoWorktime"


def test_unknown_name_lists_installed_and_the_package_to_install():
    with pytest.raises(WorktimeNotFound) as e:
        get_worktime("luxcore")
    text = str(e.value)
    assert e.value.code == "ENOWORKTIME" and "echo 1.0.0" in text and "usually named dcp-worktime-luxcore; check who publishes it" in text


def test_a_misspelt_name_gets_a_suggestion_not_a_package_to_install():
    with pytest.raises(WorktimeNotFound) as e:
        get_worktime("ecoh")
    assert "Did you mean 'echo'?" in str(e.value) and "pip install" not in str(e.value)


def test_a_worktime_left_out_by_the_plugin_filter_says_so(monkeypatch):
    monkeypatch.setenv(ENV_LOAD_PLUGINS, "nothing-of-that-name")
    with pytest.raises(WorktimeNotFound) as e:
        Registry().get("luxcore")
    text = str(e.value)  # every installed plugin is named (in entry-point order: echo need not be first)
    assert f"{ENV_LOAD_PLUGINS}='nothing-of-that-name' left out the plugins of " in text
    assert "dcp-worktime-echo (entry point 'echo')" in text


def test_version_ranges_use_semver():
    r = Registry()
    r.register_module(make_plugin("p_upper", Upper), "dcp-worktime-upper")
    assert r.get("upper", "^1.0.0").version == "1.2.3"
    assert r.get("upper", ">=0.0.0").name == "upper"
    with pytest.raises(WorktimeNotFound, match=r"does not support upper@\^2.0.0"):
        r.get("upper", "^2.0.0")
    with pytest.raises(ValueError, match="invalid version range"):
        r.get("upper", "one point oh")


def test_two_plugins_of_one_name_are_both_skipped_naming_each_other():
    # It raised DuplicateWorktime from the registry: every command, worktimes --help included, and
    # every exec() of any worktime ended in that traceback.
    r = Registry()
    r.register_module(make_plugin("p_a", Upper), "pkg-a")
    with pytest.warns(RuntimeWarning, match="registered twice"):
        r.register_module(make_plugin("p_b", OtherUpper), "pkg-b")
    assert "upper" not in r.worktimes() and "echo" in r.worktimes()
    assert any("pkg-a" in e.error and "pkg-b" in e.error for e in r.errors)
    with pytest.raises(WorktimeNotFound) as e:
        r.get("upper")
    text = str(e.value)
    assert "installed but was not loaded" in text and "pkg-a" in text and "pkg-b" in text and "pip install" not in text
    with pytest.warns(RuntimeWarning, match="registered by several plugins"):
        r.register_module(make_plugin("p_c", ThirdUpper), "pkg-c")
    assert "upper" not in r.worktimes()


class ThirdUpper(Upper):
    pass


class WasiTaker(Upper):
    name = "wasi"
    version = "9.0.0"


def test_a_plugin_taking_a_built_in_name_loses_it():
    r = Registry()
    with pytest.warns(RuntimeWarning, match="registered twice"):
        r.register_module(make_plugin("p_taker", WasiTaker), "pkg-taker")
    assert r.get("wasi").provider == "dcp-worktimes"
    assert any("pkg-taker's is skipped" in e.error for e in r.errors)


@pytest.mark.parametrize("attrs, message", [
    ({"settings": {"cores": "how many"}}, "'cores', the name of one of dcp-worker's own flags"),
    ({"settings": {"wall-time": "a budget"}}, "'wall-time', the name of one of dcp-worker's own flags"),
    ({"settings": {"trusted": "yes"}}, "'trusted'"),
    ({"settings": {"mode": "m"}, "choices": {"mode": ("fast", 2)}}, "choices must map names in settings"),
    ({"choices": {"mode": ("fast",)}}, "choices must map names in settings"),
])
def test_settings_that_would_take_over_the_workers_flags_are_refused(attrs, message):
    # A plugin's setting named "wall-time" became the flag --wall-time: the owner's limit reached
    # the plugin instead, and slices ran for the default hour.
    cls = type("Flagged", (Upper,), {"name": "flagged", "__module__": __name__, **attrs})
    r = Registry()
    with pytest.warns(RuntimeWarning, match=message):
        r.register_module(make_plugin("p_flagged", cls), "flagged")
    assert "flagged" not in r.worktimes()
    with pytest.raises(WorktimeNotFound, match="installed but was not loaded"):
        r.get("flagged")


def test_no_dcp_worker_flag_can_be_a_setting():
    import click

    from dcp_worktimes import cli
    from dcp_worktimes.plugins import RESERVED_SETTINGS

    settings = {name for reg in Registry().worktimes().values() for name in reg.cls.settings}
    flags: set[str] = set()

    def walk(command: click.Command) -> None:
        flags.update(o[2:] for p in command.params for o in p.opts + p.secondary_opts if o.startswith("--"))
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(cli.cli)
    assert flags - settings - {"trust-work"} <= RESERVED_SETTINGS, "a new flag must be reserved from settings"


@pytest.mark.parametrize("error, said", [
    (RuntimeError("engine missing"), "dcp-worktime-broken skipped: RuntimeError: engine missing"),
    # SystemExit is no Exception: a plugin's sys.exit() ended the process, naming no plugin
    (SystemExit("this engine is not configured"), "dcp-worktime-broken skipped: SystemExit: this engine is not configured"),
])
def test_a_broken_plugin_removes_only_itself(error, said):
    @hookimpl
    def register_worktimes(register):
        raise error

    broken = types.ModuleType("p_broken")
    broken.register_worktimes = register_worktimes
    r = Registry()
    with pytest.warns(RuntimeWarning, match=said):
        r.register_module(broken, "dcp-worktime-broken")
    r.register_module(make_plugin("p_ok", Upper), "dcp-worktime-upper")
    assert "upper" in r.worktimes() and "echo" in r.worktimes()
    assert any("dcp-worktime-broken" in e.plugin and str(error) in e.error for e in r.errors)


def test_invalid_registrations_are_reported_not_fatal():
    class NoVersion(Worktime):
        name = "BadName"
        version = "1"

        def execute(self, ctx, datum):
            return datum

    r = Registry()
    with pytest.warns(RuntimeWarning, match="must be a lowercase name"):
        r.register_module(make_plugin("p_bad", NoVersion), "bad")
    assert "BadName" not in r.worktimes()


@pytest.mark.parametrize("attrs, message", [
    # A number stopped every command (a TypeError from deep in the version parser), built-ins too.
    ({"version": 1.0}, "version must be a string such as '1.0.0', got 1.0"),
    ({"version": 2}, "version must be a string"),
    ({"enforces": 5}, "cannot be checked"),
])
def test_a_registration_of_an_unexpected_type_removes_only_itself(attrs, message):
    cls = type("Odd", (Upper,), {"name": "odd", **attrs})
    r = Registry()
    with pytest.warns(RuntimeWarning, match=message) as said:
        r.register_module(make_plugin("p_odd", cls), "odd")
    assert "odd" not in r.worktimes() and "map-basic" in r.worktimes()
    # Named as the package's, not as a line of the registry's file (shown with its source line)
    assert [w.filename for w in said] == ["dcp-worktimes"]


def test_a_plugin_that_registers_nothing_is_named():
    misspelt = types.ModuleType("p_typo")

    @hookimpl
    def register_worktime(register):  # one letter short: pluggy never calls it
        register(Upper)

    misspelt.register_worktime = register_worktime
    r = Registry()
    with pytest.warns(RuntimeWarning, match=r"pkg-typo skipped: its hook register_worktime is not one of"):
        r.register_module(misspelt, "pkg-typo")
    with pytest.warns(RuntimeWarning, match="pkg-none skipped: its register_worktimes hook registered no worktime"):
        r.register_module(make_plugin("p_none"), "pkg-none")
    assert "upper" not in r.worktimes() and "map-basic" in r.worktimes()


def test_what_a_plugin_prints_as_it_loads_is_kept_off_stdout(capsys):
    @hookimpl
    def register_worktimes(register):
        print("hello from a plugin")  # on stdout it would corrupt `--json` output
        register(Upper)

    chatty = types.ModuleType("p_chatty")
    chatty.register_worktimes = register_worktimes
    r = Registry()
    r.register_module(chatty, "pkg-chatty")
    out, err = capsys.readouterr()
    assert "hello" not in out and "hello from a plugin" in err and "upper" in r.worktimes()


def test_load_plugins_switch(monkeypatch):
    monkeypatch.setenv(ENV_LOAD_PLUGINS, "")
    assert "echo" not in Registry().worktimes()
    monkeypatch.setenv(ENV_LOAD_PLUGINS, "echo")
    assert "echo" in Registry().worktimes()
    monkeypatch.setenv(ENV_LOAD_PLUGINS, "dcp-worktime-echo")
    assert "echo" in Registry().worktimes()


def test_every_hookspec_is_documented_with_an_example():
    specs = [getattr(hookspecs, n) for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "dcp_worktimes_spec")]
    assert specs, "no hookspecs found"
    for spec in specs:
        assert "Example" in (spec.__doc__ or ""), spec.__name__


@pytest.mark.parametrize("attrs, message", [
    ({"capabilities": {"gpu": object()}}, "capabilities must be a nested dict"),
    ({"enforces": frozenset({"wall_time", "magic"})}, "enforces names unknown limits"),
])
def test_capabilities_and_enforces_are_checked(attrs, message):
    cls = type("Odd", (Upper,), {"name": "odd", **attrs})
    r = Registry()
    with pytest.warns(RuntimeWarning, match=message):
        r.register_module(make_plugin("p_odd", cls), "odd")
    assert "odd" not in r.worktimes()


def test_abstract_worktime_is_refused():
    class Half(Worktime):
        name = "half"
        version = "1.0.0"

    r = Registry()
    with pytest.warns(RuntimeWarning, match="abstract"):
        r.register_module(make_plugin("p_half", Half), "half")
    assert "half" not in r.worktimes()


def test_a_hook_with_a_wrong_signature_removes_only_its_plugin():
    @hookimpl
    def register_worktimes(register, extra):
        register(Upper)

    bad = types.ModuleType("p_sig")
    bad.register_worktimes = register_worktimes
    r = Registry()
    with pytest.warns(RuntimeWarning, match="p_sig|extra"):
        r.register_module(bad, "dcp-worktime-sig")
    assert "echo" in r.worktimes() and "upper" not in r.worktimes()


@pytest.mark.parametrize("distribution, module", [
    ("wasmtime", "wasmtime"),  # a package: its dist-info beside the package folder
    ("msgpack", "msgpack"),
    ("quickjs-ng", "_quickjs"),  # a single extension module, and a dash in the distribution's name
    ("dcp-worktimes", "dcp_worktimes"),  # installed editable: no dist-info beside it
])
def test_package_version_is_the_installed_distributions(distribution, module):
    from importlib import metadata

    from dcp_worktimes.cache import package_version

    pytest.importorskip(module)
    assert package_version(distribution, module) == metadata.version(distribution)


def test_package_version_of_a_missing_package_is_none():
    from dcp_worktimes.cache import package_version

    assert package_version("no-such-distribution", "no_such_module_dcp") is None


class Flaky(Worktime):
    """A probe that is not thread-safe: a second probe running beside the first raises."""

    name = "flaky-probe"
    version = "1.0.0"
    running = 0
    failed_once = False

    @classmethod
    def probe(cls, config):
        import time

        from dcp_worktimes.worktime import Probe

        cls.running += 1
        try:
            time.sleep(0.05)
            first = config.get("fail-first") and not cls.failed_once
            if cls.running > 1 or first:
                cls.failed_once = cls.failed_once or bool(first)
                raise TypeError("can only concatenate str (not \"NoneType\") to str")
            return Probe({"flaky": True})
        finally:
            cls.running -= 1

    def execute(self, ctx, datum):
        return datum


def test_probes_run_one_at_a_time_and_one_that_raised_is_not_remembered():
    # Two threads' first map-basic jobs probed at once: the deno package's first sysconfig read
    # is not thread-safe, both probes failed, and the failure was cached: no map-basic job ran in
    # that process again ("this machine cannot run map-basic jobs").
    import threading

    reg = Registry(load_entry_points=False)
    reg.register_module(make_plugin("flaky", Flaky), "flaky")
    got = []
    threads = [threading.Thread(target=lambda: got.append(reg.get("flaky-probe").probe({"n": 1}))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.unavailable for p in got] == [None] * 4
    failed = reg.get("flaky-probe").probe({"fail-first": True})
    assert "probing flaky-probe failed: TypeError" in failed.unavailable
    assert reg.get("flaky-probe").probe({"fail-first": True}).unavailable is None  # probed again


class Tuned(Upper):
    name = "tuned"
    settings = {"tuned-mode": "how to tune"}
    choices = {"tuned-mode": ("fast", "slow")}


def test_a_setting_outside_its_choices_is_refused_by_the_host():
    # It reached the worktime as given: --tuned-mode bogus ran, unless the plugin's own probe checked.
    r = Registry()
    r.register_module(make_plugin("p_tuned", Tuned), "pkg-tuned")
    reg = r.get("tuned")
    probe = reg.probe({"tuned-mode": "bogus"})
    assert probe.unavailable == ("--tuned-mode (DCP_WORKTIMES_TUNED_MODE) must be one of fast, slow, not 'bogus'")
    assert reg.probe({"tuned-mode": "Slow"}).available and reg.probe({}).available
