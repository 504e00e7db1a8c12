import math

import pytest

from dcp_worktimes.values import UnserializableValue, pack, pack_checked, printable, unpack, unpack_all

VALUES = [
    None, True, False, 0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**64) - 1, 2**200, -(3**150),
    0.1, -0.0, 1e308, float("inf"), float("-inf"), "", "héllo \u0000 ☃", b"", bytes(range(256)),
    [], [1, [2, [3, b"x"]]], {}, {"a": {"b": [None, 2**70]}, "": b"\xff"}, {1: "int key", 2**80: "big key"},
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_round_trip_is_exact(value):
    back = unpack(pack(value))
    assert back == value and type(back) is type(value)


def test_nan_round_trips():
    assert math.isnan(unpack(pack(float("nan"))))


def test_tuples_arrive_as_lists():
    assert unpack(pack((1, (2, 3)))) == [1, [2, 3]]


@pytest.mark.parametrize("bad, word", [(object(), "object"), ({1, 2}, "set"), ([1, {"x": 1j}], "complex")])
def test_unsupported_values_name_their_type(bad, word):
    with pytest.raises(UnserializableValue, match=word):
        pack(bad)


def test_integers_of_any_size_even_past_the_decimal_digit_limit():
    huge = -(10**5000) + 7
    assert unpack(pack([huge])) == [huge]


# -- lone surrogates are text: carried exactly ---------------------------------------------------------
LONE = ["\ud800", "a\udfffb", "\udcff\ud800", {"k\ud800": ["\udc00"]}]


def test_values_carry_lone_surrogates_exactly():
    for value in LONE:
        assert unpack(pack(value)) == value
    assert unpack(pack("plain")) == "plain" and pack("plain") == b"\xa5plain"  # the fast path is untouched
    assert printable("bad \udcff") == "bad \ufffd" and printable("pair \ud83d\ude00") == "pair \U0001f600"


def test_a_tuple_key_is_refused_where_it_would_come_back_as_a_list():
    data = pack({(1, 2): 3})  # msgpack writes the tuple as an array
    with pytest.raises(UnserializableValue, match="dict keys must be None, bool, int, float, str or bytes"):
        unpack(data)
    with pytest.raises(UnserializableValue, match="dict keys must be"):
        pack_checked({"a": [{(1,): 1}]})
    assert unpack(pack_checked({1: [1, 2]})) == {1: [1, 2]}
    # Stored before results were checked: reading it says what is wrong, not "unhashable type"
    with pytest.raises(UnserializableValue, match="dict keys must be"):
        unpack_all([pack(1), data])
