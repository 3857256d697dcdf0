"""Matrix key tables and compress/expand (CPython and MicroPython)."""

# portable: full tree
import hashlib
import json

from lowbw.wire import cbor, keys, keytables
from lowbw.wire.errors import DecodeError, EncodeError, LimitError
from tests.portable.check import raises, unhex

T1 = keys.TABLE_MSC3079_V1
T2 = keys.TABLE_LOWBW_V1


def reference_json():
    here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
    with open(here + "/../data/msc3079-v1.json") as f:
        return json.load(f)


def test_table_ids():
    assert T1 == 1 and T2 == 2
    assert keys.get_table(T1).table_id == 1
    assert keys.get_table(T2).table_id == 2
    for bad in (0, 3, 15, -1, True, False, "1", None, 1.0 + 0.5):
        raises(DecodeError, keys.get_table, bad)


def test_table1_is_the_reference_table():
    ref = reference_json()["cbor_integer_keys_v1"]
    assert keytables.MSC3079_V1 == ref
    t = keys.get_table(T1)
    assert len(t.ids) == len(ref) == len(t.names) == 104
    for name, i in ref.items():
        assert t.ids[name] == i and t.names[i] == name


def test_table2_layout():
    ref = reference_json()["cbor_integer_keys_v1"]
    t = keys.get_table(T2)
    names = keytables.LOWBW_V1
    assert len(set(names)) == len(names), "duplicate key in LOWBW_V1"
    assert len(t.ids) == len(names) and max(t.names) == len(names) - 1 < 256
    for name in ref:
        assert name in t.ids, name  # nothing table 1 can shorten is lost
    hot = (
        "type",
        "content",
        "sender",
        "event_id",
        "origin_server_ts",
        "unsigned",
        "body",
        "msgtype",
        "state_key",
        "events",
        "timeline",
        "next_batch",
        "value",
        "unit",
    )
    for name in hot:
        assert t.ids[name] < 24, name
    # Below 24 is one CBOR byte; 24 and up is two.
    assert len(cbor.dumps(t.ids["type"])) == 1
    assert len(cbor.dumps(t.ids[names[24]])) == 2
    # After the 24 hot keys, the rest of MSC3079 follows in its own order.
    rest = [n for n in sorted(ref, key=lambda n: ref[n]) if n not in names[:24]]
    assert list(names[24 : 24 + len(rest)]) == rest


def test_tables_never_change():
    # A released table is frozen: editing it breaks every peer that uses it.
    d2 = hashlib.sha256("\n".join(keytables.LOWBW_V1).encode()).digest()
    assert d2 == unhex("2c0caed3573fd01bde163d73cb65cec63b7d128ab288f980a46e56a9a8b1b348")
    pairs = sorted(keytables.MSC3079_V1.items(), key=lambda kv: kv[1])
    d1 = hashlib.sha256("\n".join("%s=%d" % kv for kv in pairs).encode()).digest()
    assert d1 == unhex("43fbf6667f2f81e819527e548c127f025fd8593b201247e9985410ed24c2f2d7")


EVENT = {
    "type": "m.room.message",
    "content": {"msgtype": "m.text", "body": "hi", "type": "not a key"},
    "sender": "@a:b",
    "5": "numeric-looking key",
    "x-custom": [{"event_id": "$e"}, 1, "type"],
}


def test_compress_table1():
    got = keys.compress(EVENT, T1)
    assert got == {
        2: "m.room.message",
        3: {28: "m.text", 27: "hi", 2: "not a key"},
        6: "@a:b",
        "5": "numeric-looking key",
        "x-custom": [{1: "$e"}, 1, "type"],
    }
    assert keys.expand(got, T1) == EVENT


def test_compress_table2():
    got = keys.compress(EVENT, T2)
    assert got == {
        0: "m.room.message",
        1: {7: "m.text", 6: "hi", 0: "not a key"},
        2: "@a:b",
        "5": "numeric-looking key",
        "x-custom": [{3: "$e"}, 1, "type"],
    }
    assert keys.expand(got, T2) == EVENT


def test_numeric_looking_key_stays_text():
    for tid in (T1, T2):
        c = keys.compress({"5": 1, "0": 2}, tid)
        assert c == {"5": 1, "0": 2}
        data = cbor.dumps(c)
        assert 5 not in cbor.loads(data) and "5" in cbor.loads(data)
        assert keys.expand(cbor.loads(data), tid) == {"5": 1, "0": 2}


def test_text_key_wins_over_its_id():
    assert keys.expand({3: "from id", "content": "from text"}, T1) == {"content": "from text"}
    assert keys.expand({"content": "from text", 3: "from id"}, T1) == {"content": "from text"}
    assert keys.expand({1: {"x": 1}, "content": [], 2: "t"}, T2) == {"content": [], "sender": "t"}


def test_expand_rejects_unknown_ids_and_key_types():
    raises(DecodeError, keys.expand, {0: 1}, T1)  # table 1 has no id 0
    raises(DecodeError, keys.expand, {105: 1}, T1)
    raises(DecodeError, keys.expand, {178: 1}, T2)
    raises(DecodeError, keys.expand, {-1: 1}, T2)
    raises(DecodeError, keys.expand, [{"a": {2**64: 1}}], T2)
    raises(DecodeError, keys.expand, {b"type": 1}, T2)
    raises(DecodeError, keys.expand, {True: 1}, T2)
    raises(DecodeError, keys.expand, {None: 1}, T2)
    raises(DecodeError, keys.expand, {}, 7)


def test_compress_rejects_non_text_keys():
    raises(EncodeError, keys.compress, {1: "x"}, T1)
    raises(EncodeError, keys.compress, [{"a": {b"k": 1}}], T2)
    raises(DecodeError, keys.compress, {}, 9)


def test_depth_limits():
    v = ["leaf"]  # type: list
    for _ in range(31):
        v = [v]
    assert keys.expand(v, T2) == v
    raises(LimitError, keys.expand, [v], T2)
    assert keys.expand([v], T2, max_depth=33) == [v]
    deep = {"a": "leaf"}  # type: dict
    for _ in range(64):
        deep = {"a": deep}
    raises(EncodeError, keys.compress, deep, T2)


def test_cbor_round_trip_and_sizes():
    send_body = {"msgtype": "m.text", "body": "hello"}
    sizes = {}
    for tid in (T1, T2):
        data = cbor.dumps(keys.compress(send_body, tid))
        assert keys.expand(cbor.loads(data), tid) == send_body
        sizes[tid] = len(data)
    # Both keys are hot in table 2 (one byte each) and two bytes in table 1.
    assert sizes[T1] - sizes[T2] == 2
    assert sizes[T2] < len(cbor.dumps(send_body))


def test_tuples_and_values_untouched():
    assert keys.compress(({"body": 1.5},), T2) == [{6: 1.5}]
    assert keys.compress("body", T2) == "body"
    assert keys.compress(None, T1) is None
    assert keys.expand(b"\x00", T1) == b"\x00"
