"""``dcp-worker`` as a user runs it: a real process, real evaluators."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest


def dcp_worker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_worktimes_json_lists_echo_with_its_package():
    r = dcp_worker("worktimes", "--json")
    assert r.returncode == 0, r.stderr
    rows = {w["name"]: w for w in json.loads(r.stdout)["worktimes"]}
    assert rows["echo"]["version"] == "1.0.0" and rows["echo"]["provider"] == "dcp-worktime-echo"
    assert rows["echo"]["capabilities"] == {"echo": True}


def test_worktimes_table():
    r = dcp_worker("worktimes")
    assert r.returncode == 0 and "echo" in r.stdout and "dcp-worktime-echo" in r.stdout


def test_slice_of_a_worktime_that_takes_no_work_needs_no_work_flag():
    r = dcp_worker("slice", "-w", "echo", "--datum", "[1]")
    assert r.returncode == 0 and json.loads(r.stdout) == [1], r.stderr
    needs = dcp_worker("slice", "-w", "python", "--datum", "1")  # one that does says so (or is not installed)
    assert needs.returncode != 0 and ("EBADWORK: the work is an empty string" in needs.stderr
                                      or "cannot run on this machine" in needs.stderr), needs.stderr


def test_slice_prints_the_result():
    r = dcp_worker("slice", "--worktime", "echo", "--work", "", "--datum", '{"a": [1, 2.5, null], "b": {"$bytes": "AP8="}}')
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"a": [1, 2.5, None], "b": {"$bytes": "AP8="}}


def test_slice_json_outcome_and_console_on_stderr():
    r = dcp_worker("slice", "-w", "echo", "--work", '{"console": ["hi", "hi"]}', "--datum", "5", "--json")
    assert r.returncode == 0
    body = json.loads(r.stdout)
    assert body["ok"] and body["result"] == 5 and body["bytes_in"] == 1
    assert "[console.log] hi (x2)" in r.stderr


def test_slice_output_writes_the_result_bytes(tmp_path):
    out = tmp_path / "result.bin"
    r = dcp_worker("slice", "-w", "echo", "--work", "", "--datum", '{"image": {"$bytes": "AP8="}, "n": 1}', "--output", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == b"\x00\xff" and json.loads(r.stdout) == {"image": {"$file": str(out)}, "n": 1}
    r = dcp_worker("slice", "-w", "echo", "--work", '{"output": 0.001}', "--output", str(out))
    assert r.returncode == 0 and out.read_bytes() == b"x" * 1048
    r = dcp_worker("slice", "-w", "echo", "--work", "", "--datum", '{"a": 1}', "--output", str(out))
    assert r.returncode == 2 and "--output: Invalid value for --output: it writes a bytes result" in r.stderr
    assert "a dict with no bytes" in r.stderr and json.loads(r.stdout) == {"a": 1}  # the result is printed, not lost
    # a folder that does not exist is refused before the slice runs (a render may take minutes)
    r = dcp_worker("slice", "-w", "echo", "--work", '{"sleep": 30}', "--datum", '{"$bytes": "AP8="}',
                   "--output", str(tmp_path / "no" / "such" / "x.png"), timeout=20)
    assert r.returncode == 2 and f"the folder {tmp_path / 'no' / 'such'} does not exist" in r.stderr and not r.stdout


def test_a_datum_integer_too_long_says_how_to_write_it(tmp_path):
    (tmp_path / "big.json").write_text("1" * 200_001)
    r = dcp_worker("slice", "-w", "echo", "--datum", f"@{tmp_path / 'big.json'}")
    assert r.returncode == 2 and "more than 200,000 decimal digits" in r.stderr and '{"$int": "0x..."}' in r.stderr
    assert "set_int_max_str_digits" not in r.stderr


def test_slice_output_limit_is_a_limit_not_a_file_name(tmp_path):
    # "--output-limit 1KB" wrote the result to a file named 1KB: both flags filled one parameter.
    r = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", "slice", "-w", "echo", "--work", '{"output": 0.01}',
                        "--output-limit", "1KB"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 1 and "EOUTPUTLIMIT" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_bad_limit_is_named_by_its_flag():
    r = dcp_worker("slice", "-w", "echo", "--work", "", "--datum", "1", "--memory-limit", "2Mushrooms")
    assert r.returncode == 2 and "--memory-limit: cannot read '2Mushrooms' as a size" in r.stderr
    r = dcp_worker("slice", "-w", "echo", "--work", "", "--datum", "1", "--wall-time", "0")
    assert r.returncode == 2 and "--wall-time: must be a positive finite duration" in r.stderr and "use off" in r.stderr


@pytest.mark.parametrize("datum, printed, in_js", [
    ('{"$object": {"$bytes": "aGk="}}', {"$object": {"$bytes": "aGk="}}, "object"),
    ('{"$object": {"$int": "0x10"}}', {"$object": {"$int": "0x10"}}, "object"),
    ('{"$object": {"$object": {"a": 1}}}', {"$object": {"$object": {"a": 1}}}, "object"),
    ('{"$bytes": "aGk="}', {"$bytes": "aGk="}, "bytes"),
    ('{"$int": "0x10"}', 16, "number"),
    ('{"$object": {"$map": 1}}', {"$object": {"$map": 1}}, "object"),
])
def test_an_object_that_looks_like_a_tag_prints_and_reads_back_as_itself(datum, printed, in_js):
    # {"$bytes": "aGk="} as an object printed exactly like the bytes b"hi", and could not be sent.
    r = dcp_worker("slice", "-w", "echo", "--work", "", "--datum", datum)
    assert r.returncode == 0 and json.loads(r.stdout) == printed, r.stderr
    r = dcp_worker("slice", "-w", "map-basic", "--work", "x => x instanceof Uint8Array ? 'bytes' : typeof x",
                   "--datum", datum)
    assert json.loads(r.stdout) == in_js, r.stderr


def test_a_dict_with_keys_that_are_not_strings_prints_every_entry_and_reads_back():
    # str(k) made 1 and "1" one key (an entry was dropped) and printed b"k" as "b'k'".
    printed = [[1, "a"], ["1", "b"], [None, 2], [{"$bytes": "aw=="}, 3], [1.5, 4], [{"$float": "nan"}, 5]]
    datum = json.dumps({"$map": printed})
    r = dcp_worker("slice", "-w", "echo", "--datum", datum)
    assert r.returncode == 0 and json.loads(r.stdout) == {"$map": printed}, r.stderr
    r = dcp_worker("slice", "-w", "echo", "--datum", '{"$map": {"a": 1}}')
    assert r.returncode == 2 and "must hold a list of [key, value] pairs" in r.stderr
    r = dcp_worker("slice", "-w", "echo", "--datum", '{"$map": [[[1, 2], 3]]}')
    assert r.returncode == 2 and "dict keys must be None, bool, int, float, str or bytes" in r.stderr


def test_spin_forever_stops_at_wall_time():
    t = time.monotonic()
    r = dcp_worker("slice", "--worktime", "echo", "--work", '{"spin": -1}', "--wall-time", "2s")
    elapsed = time.monotonic() - t
    assert r.returncode == 1 and r.stderr.startswith("ESLICETOOSLOW: ")
    assert elapsed < 4 + 1.5, elapsed  # 4 s for the slice, plus this interpreter's own start-up


def test_memory_balloon_stops_at_memory_limit():
    r = dcp_worker("slice", "--worktime", "echo", "--work", '{"allocate": 1024}', "--memory-limit", "128MB")
    assert r.returncode == 1 and r.stderr.startswith("EMEMORYLIMIT: ") and "limit of 128 MB" in r.stderr


def test_crash_has_its_own_code():
    r = dcp_worker("slice", "--worktime", "echo", "--work", '{"crash": "segfault"}')
    assert r.returncode == 1 and r.stderr.startswith("ECRASH: ") and "SIGSEGV" in r.stderr


@pytest.mark.parametrize("args, message", [
    (["slice", "--worktime", "nope", "--work", ""], "ENOWORKTIME: no worktime named 'nope'"),
    (["slice", "--worktime", "echo", "--work", "", "--datum", "[1,"], "--datum must be JSON"),
    (["slice", "--worktime", "echo", "--work", "", "--wall-time", "3x"], "cannot read '3x' as a duration"),
    (["slice", "--worktime", "echo", "--work", "", "--memory-limit", "lots"], "cannot read 'lots' as a size"),
    (["slice", "--worktime", "echo", "--work", '{"bogus": 1}'], "EBADWORK: unknown echo action(s) bogus"),
    (["--cores", "0"], "0 is not in the range x>=1"),
    (["slice", "-w", "echo", "--work", "", "--datum", '{"$bytes": "!!"}'], '{"$bytes": ...} must hold base64 text'),
    (["slice", "-w", "echo", "--work", "", "--datum", '{"$bytes": 5}'], '{"$bytes": ...} must hold base64 text'),
    (["slice", "-w", "echo", "--work", "", "--datum", "@/no/such.json"], "--datum: cannot read '/no/such.json'"),
    (["slice", "-w", "echo", "--work", "/no/such/file.json"], "looks like a file path, but there is no such file"),
    (["slice", "-w", "echo", "--work", "/tmp"], "looks like a file path, but a directory, not a file"),
    (["slice", "-w", "echo", "--work", "", "--memory-limit", "1.5"], "'1.5' has no unit; write it like 1.5MB"),
    (["--wall-time", "1s", "slice", "-w", "echo", "--work", ""], "--wall-time belong to the worker itself"),
    (["--capability", "machine.gpu=", "--until-idle"], "capability 'machine.gpu=' has no value"),
    (["--cores", "100000", "--until-idle"], "--cores=100000 is more than 8 evaluators per CPU"),
    (["slice", "-w", "echo", "--work", "", "--datum", '{"$float": "banana"}'], 'must be "nan", "inf" or "-inf"'),
    (["slice", "-w", "wasi", "--work", "(module)", "--option", 'contenttype="raw"'],
     "Invalid value for --option: worktime wasi has no option 'contenttype' (did you mean 'content_type'?)"),
    (["slice", "-w", "echo", "--work", "", "--datum", "[" * 5000 + "]" * 5000], "nested more than 1024 levels deep"),
    (["slice", "-w", "echo", "--work", "", "--datum", "[" * 60000 + "]" * 60000], "nested more than 1024 levels deep"),
    (["slice", "-w", "echo", "--work", "", "--wall-time", "1ns"], "shorter than 100 ms"),
    (["slice", "-w", "echo", "--work", "", "--cpu-time", "1us"], "shorter than 100 ms"),
    (["slice", "-w", "map-basic", "--work", "x => x", "--memory-limit", "16EiB"], "more than the largest limit, 1 PiB"),
    (["slice", "-w", "echo", "--work", "", "--memory-limit", "0"], "--memory-limit: must be positive, got '0'"),
    (["--capability", "machine.gpu={}", "--until-idle"], "give one value"),
    (["--capability", "machine.gpu=true", "--capability", "machine.gpu.vram=8", "--until-idle"],
     "machine.gpu cannot be both a value and a group of values"),
    (["--capability", "machine.gpu.vram=8", "--capability", "machine.gpu=true", "--until-idle"],
     "machine.gpu cannot be both a value and a group of values"),
    (["--capability", "machine..gpu=true", "--until-idle"], "must look like machine.gpu=true"),
    (["jobs", "--force"], "--force only goes with --delete JOB_ID"),
    (["slice", "-w", "map-basic", "--work", "x => x", "--module", f"={__file__}"], "a module name and an existing file"),
    (["--capability", "gpu=true", "--capability", "gpu=false", "--until-idle"], "give gpu two values"),
    (["--capability", "gpu=yes", "--capability", "gpu=no", "--until-idle"], "give gpu two values"),
    (["jobs", "--scheduler", "sqlite:////no/such/dir/jobs.db"], "no job store at /no/such/dir/jobs.db"),
    (["resume", "abc", "--scheduler", "sqlite:////no/such/dir/jobs.db"], "no job store at /no/such/dir/jobs.db"),
])
def test_bad_input_is_one_clear_line(args, message):
    r = dcp_worker(*args)
    assert r.returncode != 0
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_big_datums_come_from_a_file_or_stdin(tmp_path):
    big = list(range(200_000))
    path = tmp_path / "datum.json"
    path.write_text(json.dumps(big))
    r = dcp_worker("slice", "-w", "echo", "--work", "", "--datum", f"@{path}")
    assert r.returncode == 0 and json.loads(r.stdout) == big
    r = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", "slice", "-w", "echo", "--work", "", "--datum", "-"],
                       input='{"from": "stdin"}', capture_output=True, text=True, timeout=60)
    assert json.loads(r.stdout) == {"from": "stdin"}


def test_jobs_shows_the_head_of_a_long_reason_and_json_all_of_it(tmp_path):
    # A submit refused for lack of Redis memory put the whole store error in the status column.
    from dcp_worktimes.scheduler import open_scheduler
    from dcp_worktimes.testing_scheduler import make_job

    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    with open_scheduler(url) as s:
        s.submit(make_job("j", 3))
        s.cancel("j", "the store said: " + "x" * 5000)
    env = {**os.environ, "DCP_SCHEDULER": url}
    table = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", "jobs"], capture_output=True, text=True,
                           env=env, timeout=60)
    line = next(line for line in table.stdout.splitlines() if "cancelled" in line)
    assert "the store said: xxx" in line and "more characters cut]" in line and len(line) < 400, line
    listed = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", "jobs", "--json"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert json.loads(listed.stdout)[0]["reason"].endswith("x" * 5000)


def test_jobs_resume_and_delete(tmp_path):
    store = f"sqlite:///{tmp_path / 'jobs.db'}"
    env = {**os.environ, "DCP_SCHEDULER": store}
    deploy = subprocess.run(
        [sys.executable, "-c", "from dcp_worktimes import compute\n"
         "j = compute.for_(range(4), '', worktime='echo'); j.deploy(); print(j.id)"],
        capture_output=True, text=True, env=env, timeout=60)
    job_id = deploy.stdout.strip()
    assert len(job_id) >= 16, deploy.stderr

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", *args], capture_output=True, text=True,
                              env=env, timeout=120)

    listed = json.loads(cli("jobs", "--json").stdout)
    assert [r["id"] for r in listed] == [job_id] and listed[0]["computed"] == 0
    running = cli("jobs", "--delete", job_id)
    assert running.returncode == 2 and "still running" in running.stderr and "--force" in running.stderr
    r = cli("resume", job_id[:8])  # as the worker's log shows it
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [0, 1, 2, 3]
    assert json.loads(cli("jobs", "--json").stdout)[0]["status"] == "complete"
    bad = cli("resume", "no-such-job")
    assert bad.returncode == 2 and "no job 'no-such-job'" in bad.stderr
    empty = cli("resume", "")
    assert empty.returncode == 2 and "the job id is empty" in empty.stderr and "Traceback" not in empty.stderr
    short = cli("jobs", "--delete", job_id[:4], "--force")  # too short to stand for a job: not deleted
    assert short.returncode == 2 and f"no job '{job_id[:4]}'" in short.stderr
    assert cli("jobs", "--delete", job_id[:8]).returncode == 0
    assert json.loads(cli("jobs", "--json").stdout) == []
    other = subprocess.run(
        [sys.executable, "-c", "from dcp_worktimes import compute\n"
         "j = compute.for_(range(4), '', worktime='echo'); j.deploy(); print(j.id)"],
        capture_output=True, text=True, env=env, timeout=60).stdout.strip()
    assert cli("jobs", "--delete", other, "--force").returncode == 0
    assert json.loads(cli("jobs", "--json").stdout) == []


def test_a_worker_caps_what_a_job_asks_for(tmp_path):
    """A job saying "unlimited" gets the worker's maximum, not the worker's whole machine."""
    import signal
    import time

    store = f"sqlite:///{tmp_path / 'jobs.db'}"
    env = {**os.environ, "DCP_SCHEDULER": store}
    worker = subprocess.Popen([sys.executable, "-m", "dcp_worktimes.cli", "--worktime", "echo", "--cores", "1",
                               "--output-limit", "8MiB"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env)
    try:
        deadline = time.monotonic() + 60
        while "dcp-worker" not in (worker.stderr.readline() or "") and time.monotonic() < deadline:
            pass  # its banner: it has opened the store and is serving
        deployer = subprocess.run(
            [sys.executable, "-c",
             "from dcp_worktimes import compute\n"
             "j = compute.for_([0], '{\"output\": 12}', worktime='echo', limits={'output': None})\n"
             "r = j.exec(local=False, errors='return', progress=False)\n"
             "print(r[0].code if isinstance(r[0], BaseException) else 'ok')"],
            capture_output=True, text=True, env=env, timeout=120)
        assert deployer.stdout.strip() == "EOUTPUTLIMIT", deployer.stdout + deployer.stderr
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)


def test_capability_words_mean_what_they_say():
    from dcp_worktimes.cli import _capability_value

    assert [_capability_value("c", v) for v in ("no", "Off", "false", "yes", "TRUE", "0", "2.5", "x86_64", '"no"')] == \
        [False, False, False, True, True, 0, 2.5, "x86_64", "no"]


def test_a_scheduler_flag_beats_the_environment_wherever_it_is_given(tmp_path):
    a, b = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    deploy = ("from dcp_worktimes import compute\n"
              f"compute.for_([1], '', worktime='echo', scheduler={a!r}).exec()\n"
              f"compute.for_([1, 2], '', worktime='echo', scheduler={b!r}).exec()")
    assert subprocess.run([sys.executable, "-c", deploy], timeout=60).returncode == 0
    env = {**os.environ, "DCP_SCHEDULER": a}

    def totals(*args: str) -> list[int]:
        r = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", *args], capture_output=True, text=True,
                           env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        return [row["total"] for row in json.loads(r.stdout)]

    assert totals("jobs", "--json") == [1]  # the environment alone
    assert totals("--scheduler", b, "jobs", "--json") == [2]  # it listed a.db's jobs
    assert totals("jobs", "--scheduler", b, "--json") == [2]
    assert totals("--scheduler", a, "jobs", "--scheduler", b, "--json") == [2]  # the nearer flag


def test_a_setting_that_makes_its_worktime_unavailable_is_a_usage_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", "--scheduler", f"sqlite:///{tmp_path / 's.db'}",
                        "--js-engine", "spidermonkey", "--until-idle"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "map-basic: --js-engine" in r.stderr and "must be one of v8, quickjs, not 'spidermonkey'" \
        in r.stderr, r.stderr
    assert not (tmp_path / "s.db").exists()  # refused before anything was opened


def test_jobs_table_shows_names_literally_and_whole_when_piped(tmp_path):
    store = f"sqlite:///{tmp_path / 'jobs.db'}"
    env = {**os.environ, "DCP_SCHEDULER": store}
    name = "sweep [/data/run1] [bold]B[/bold] \x1b[31mRED"
    deploy = subprocess.run(
        [sys.executable, "-c", "import sys\nfrom dcp_worktimes import compute\n"
         "j = compute.for_(range(2), '', worktime='echo'); j.public = {'name': sys.argv[1]}; j.deploy(); print(j.id)",
         name], capture_output=True, text=True, env=env, timeout=60)
    job_id = deploy.stdout.strip()
    assert job_id, deploy.stderr
    r = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", "jobs"], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "sweep [/data/run1] [bold]B[/bold] \\x1b[31mRED" in r.stdout  # literal, the escape shown, not sent
    assert "\x1b" not in r.stdout
    row = next(line for line in r.stdout.splitlines() if job_id in line)
    assert row.split()[:3] == ["echo", "running", "0"]  # no cell cut to fit 80 columns


def _ended_job(tmp_path, setup: str, ending: str):
    """A job of echo over [1, 2, 3] run in another process until ``ending`` (an exception of
    ``compute``); ``setup``: lines between making the job ``j`` and running it. Returns the job's
    id and a ``cli(*args)`` running dcp-worker on its store."""
    env = {**os.environ, "DCP_SCHEDULER": f"sqlite:///{tmp_path / 'jobs.db'}", "DCP_PROGRESS": "0"}
    run = subprocess.run(
        [sys.executable, "-c", f"from dcp_worktimes import compute\n{setup}\n"
         f"try:\n    j.exec()\nexcept compute.{ending}:\n    print(j.id)"],
        capture_output=True, text=True, env=env, timeout=120)
    job_id = run.stdout.strip()
    assert job_id, run.stderr

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", *args], capture_output=True, text=True,
                              env=env, timeout=120)

    return job_id, cli


def test_resume_of_a_failed_job_prints_results_with_errors_return(tmp_path):
    job_id, cli = _ended_job(
        tmp_path, "j = compute.for_([1, 2, 3], '{\"throw\": \"two\", \"when\": 2}', worktime='echo', cores=1)",
        "JobFailed")
    r = cli("resume", "--errors", "return", job_id)
    assert r.returncode == 0, r.stderr
    one, two, three = json.loads(r.stdout)
    assert one == 1 and three == 3 and two["$error"]["code"] == "EUNCAUGHT" and "two" in two["$error"]["message"]
    r = cli("resume", job_id)
    assert r.returncode == 1 and "1 of 3 slices failed" in r.stderr and "--errors return" in r.stderr
    assert "exec(errors=" not in r.stderr and "Traceback" not in r.stderr


def test_resume_of_a_cancelled_job_prints_what_completed_with_errors_return(tmp_path):
    # It printed nothing: the completed results could not be had from the command line.
    job_id, cli = _ended_job(
        tmp_path, "j = compute.for_([1, 2, 3], '{\"sleep\": 30, \"when\": 2}', worktime='echo', cores=1)\n"
                  "j.on('result', lambda ev: j.cancel() if ev.sliceNumber == 0 else None)", "JobCancelled")
    r = cli("resume", "--errors", "return", job_id)
    assert r.returncode == 1 and "was cancelled" in r.stderr, r.stderr
    one, two, three = json.loads(r.stdout)
    assert one == 1 and two["$error"]["code"] == three["$error"]["code"] == "ECANCELLED"


def _nested(depth: int) -> str:
    return "[" * depth + "0" + "]" * depth


def test_values_nested_to_the_depth_limit_cross_every_path_and_deeper_ones_are_refused(tmp_path):
    from dcp_worktimes.values import MAX_DEPTH

    (tmp_path / "deep.json").write_text(_nested(MAX_DEPTH))
    r = dcp_worker("slice", "-w", "echo", "--work", "", "--datum", f"@{tmp_path / 'deep.json'}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == _nested(MAX_DEPTH)
    (tmp_path / "deeper.json").write_text(_nested(MAX_DEPTH + 1))
    r = dcp_worker("slice", "-w", "echo", "--work", "", "--datum", f"@{tmp_path / 'deeper.json'}")
    assert r.returncode == 2 and f"nested more than {MAX_DEPTH} levels deep" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr

    # resume prints a stored job's deep results too
    env = {**os.environ, "DCP_SCHEDULER": f"sqlite:///{tmp_path / 'jobs.db'}", "DCP_PROGRESS": "0"}
    run = subprocess.run(
        [sys.executable, "-c", "import json, sys\nsys.setrecursionlimit(10000)\nfrom dcp_worktimes import compute\n"
         f"j = compute.for_([json.loads(open(sys.argv[1]).read())], '', worktime='echo', cores=1)\n"
         "j.exec()\nprint(j.id)", str(tmp_path / "deep.json")],
        capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", "resume", run.stdout.strip()], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[" + _nested(MAX_DEPTH) + "]"


@pytest.mark.parametrize("source", ["@/dev/urandom", "-"])
def test_every_input_the_cli_reads_is_bounded(source):
    from dcp_worktimes.cli import MAX_INPUT

    stdin = subprocess.Popen(["yes", "1"], stdout=subprocess.PIPE) if source == "-" else None
    try:
        r = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", "slice", "-w", "echo", "--work", "",
                            "--datum", source], stdin=stdin.stdout if stdin else subprocess.DEVNULL,
                           capture_output=False, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        if stdin:
            stdin.kill()
            stdin.wait()
    assert r.returncode == 2 and "the most the CLI reads" in r.stderr and "256 MiB" in r.stderr, r.stderr
    assert MAX_INPUT == 256 << 20


def test_a_work_or_module_file_over_the_input_cap_is_refused(tmp_path):
    big = tmp_path / "big.js"
    with open(big, "wb") as f:
        f.truncate((256 << 20) + 1)  # sparse: no disk needed
    r = dcp_worker("slice", "-w", "echo", "--work", str(big))
    assert r.returncode == 2 and "--work" in r.stderr and "the most the CLI reads" in r.stderr, r.stderr
    r = dcp_worker("slice", "-w", "echo", "--work", "", "--module", f"m={big}")
    assert r.returncode == 2 and "--module m" in r.stderr and "the most the CLI reads" in r.stderr, r.stderr


def test_slice_reads_a_wasm_file_whose_bytes_are_all_text_as_a_binary(tmp_path):
    # The smallest module is ASCII (\0asm\1\0\0\0...): it was decoded to text and parsed as WAT.
    module = tmp_path / "min.wasm"
    module.write_bytes(b"\0asm\x01\0\0\0\x01\x04\x01\x60\0\0\x03\x02\x01\0\x07\x0a\x01\x06_start\0\0\x0a\x04\x01\x02\0\x0b")
    r = dcp_worker("slice", "--worktime", "wasi", "--work", str(module), "--datum", "1")
    assert r.returncode == 0 and r.stdout.strip() == "null", r.stderr


def test_slice_prints_an_integer_too_long_for_decimal_in_hexadecimal_and_reads_it_back():
    # 7**1000000 (845,099 digits) ended the command with "Exceeds the limit" and exit status 2.
    r = dcp_worker("slice", "--worktime", "map-basic", "--work", "x => 7n ** 1000000n", "--datum", "1", timeout=120)
    assert r.returncode == 0, r.stderr
    assert int(json.loads(r.stdout)["$int"], 16) == 7**1000000
    back = dcp_worker("slice", "--worktime", "echo", "--work", "", "--datum", '{"$int": "0x1ff"}')
    assert back.returncode == 0 and json.loads(back.stdout) == 511


def test_a_worker_whose_terminal_closes_hands_back_and_exits_cleanly(tmp_path):
    # SIGHUP from a real hang-up: every write to the terminal then fails (EIO), and the worker
    # ended with status 1 and a traceback before it stopped as it should.
    import pty
    import select

    env = {**os.environ, "DCP_SCHEDULER": f"sqlite:///{tmp_path}/jobs.db"}
    pid, fd = pty.fork()
    if pid == 0:  # the child: a session leader whose controlling terminal is the pty
        os.execve(sys.executable, [sys.executable, "-m", "dcp_worktimes.cli", "--worktime", "echo", "--cores", "1"], env)
    seen = b""
    deadline = time.monotonic() + 60
    while b"serving" not in seen and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            try:
                seen += os.read(fd, 4096)
            except OSError:
                break
    assert b"serving" in seen
    os.close(fd)  # the terminal goes away: the kernel sends SIGHUP to the session
    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if not done:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert done and os.waitstatus_to_exitcode(status) == 0


def test_slice_with_an_option_the_worktime_has_not_is_a_usage_error():
    r = dcp_worker("slice", "-w", "map-basic", "--work", "x => x", "--option", "stirct=true", "--datum", "1")
    assert r.returncode == 2 and "Invalid value for --option: worktime map-basic has no option 'stirct' (did you mean " \
        "'strict'?)" in r.stderr, r.stderr


def test_standard_input_is_read_once_and_an_empty_one_is_said():
    two = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", "slice", "-w", "echo", "--datum", "-", "--arg", "-"],
                         input="5", capture_output=True, text=True, timeout=60)
    assert two.returncode == 2 and "--datum and --arg both read standard input" in two.stderr
    empty = subprocess.run([sys.executable, "-m", "dcp_worktimes.cli", "slice", "-w", "echo", "--datum", "-"],
                           input="", capture_output=True, text=True, timeout=60)
    assert empty.returncode == 2 and "--datum -: standard input was empty" in empty.stderr
