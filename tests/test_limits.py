import pytest

from dcp_worktimes.limits import Limits, format_size, parse_duration, parse_size


def test_human_units():
    lim = Limits.parse(wall_time="2s", memory="128MB", output="1GiB", progress_timeout="250ms", cpu_time=3)
    assert (lim.wall_time, lim.memory, lim.output, lim.progress_timeout, lim.cpu_time) == (2.0, 128_000_000, 2**30, 0.25, 3.0)


def test_off_means_unlimited_and_round_trip():
    lim = Limits.parse(progress_timeout="off", wall_time=None, memory="none", cpu_time="Unlimited")
    assert lim.progress_timeout is None and lim.wall_time is None and lim.memory is None and lim.cpu_time is None
    assert Limits.from_dict(lim.to_dict()) == lim


@pytest.mark.parametrize("kw, message", [
    ({"memory": "12XB"}, "memory: cannot read '12XB' as a size"),
    ({"wall_time": -1}, "wall_time: must be a positive"),
    ({"wall_time": "soon"}, "wall_time: cannot read 'soon'"),
    ({"memroy": "1GB"}, "unknown limit 'memroy'"),
    ({"memory": True}, "memory: expected a size"),
    ({"memory": "1.5"}, "has no unit; write it like 1.5MB"),
    ({"memory": 512}, "too little to run anything"),
    # an unset shell variable (--memory-limit "$MEM") lifted the limit as "off" does
    ({"memory": ""}, "memory: the value is empty; give one such as 512MiB, or off for no limit"),
    ({"progress_timeout": "  "}, "progress_timeout: the value is empty; give one such as 30s"),
])
def test_bad_limits_say_what_is_wrong(kw, message):
    with pytest.raises(ValueError, match=message):
        Limits.parse(**kw)


def test_parsers():
    assert parse_size("4096B") == 4096 and parse_size(4096) == 4096 and parse_size("none") is None
    with pytest.raises(ValueError, match="has no unit"):
        parse_size("4096")
    assert parse_duration("2m") == 120.0 and parse_duration("unlimited") is None


@pytest.mark.parametrize("text", ["2Mushrooms", "5Gigglebytes", "1kittens", "1GiBB", "100MiBB", "3 MBs", "1e3KB"])
def test_a_size_with_a_unit_that_is_none_is_refused(text):
    # humanfriendly reads a unit's first letter only: "2Mushrooms" was 2 MB, "1GiBB" 1 GB.
    with pytest.raises(ValueError, match=f"memory: cannot read '{text}' as a size"):
        parse_size(text, "memory")


@pytest.mark.parametrize("text, size", [("1 KB", 1000), ("2k", 2000), ("1.5GB", 1_500_000_000), ("10 bytes", 10),
                                        ("3 kilobytes", 3000), ("1kib", 1024), ("16EiB", 16 * 2**60)])
def test_sizes_in_every_unit_spelling_still_read(text, size):
    assert parse_size(text) == size


def test_sizes_are_shown_in_the_unit_family_the_user_wrote():
    assert format_size(parse_size("128MB")) == "128 MB"
    assert format_size(parse_size("1GiB")) == "1 GiB"
    assert format_size(146_800_000, like=parse_size("128MiB")) == "140 MiB"
    assert format_size(146_800_000, like=parse_size("128MB")) == "146.8 MB"
    assert "memory 128 MB" in Limits.parse(memory="128MB").describe()
