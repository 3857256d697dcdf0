"""CBOR codec: RFC 8949 Appendix A vectors and error cases (CPython and MicroPython)."""

import struct
from collections import OrderedDict

from lowbw.wire import cbor
from lowbw.wire.errors import DecodeError, EncodeError, LimitError
from tests.portable.check import raises, unhex

# Need code the device does not freeze (the proxy's side, or names the
# device build leaves out): run on the full tree only (tests/portable/mp_run.py).
FULL_TREE = (
    "test_trailing_bytes_and_decode_from",
    "test_unencodable",
)


INF = float("inf")
NAN = float("nan")


def od(*pairs):
    """A map with a fixed order: MicroPython's plain dict does not keep insertion order."""
    return OrderedDict(pairs)


# RFC 8949 Appendix A, every example whose value is in our data model and
# whose encoding is the preferred one: dumps must produce exactly these bytes
# and loads must give the value back.
ROUND_TRIP = [
    (0, "00"),
    (1, "01"),
    (10, "0a"),
    (23, "17"),
    (24, "1818"),
    (25, "1819"),
    (100, "1864"),
    (1000, "1903e8"),
    (1000000, "1a000f4240"),
    (1000000000000, "1b000000e8d4a51000"),
    (18446744073709551615, "1bffffffffffffffff"),
    (-18446744073709551616, "3bffffffffffffffff"),
    (-1, "20"),
    (-10, "29"),
    (-100, "3863"),
    (-1000, "3903e7"),
    (0.0, "f90000"),
    (-0.0, "f98000"),
    (1.0, "f93c00"),
    (1.1, "fb3ff199999999999a"),
    (1.5, "f93e00"),
    (65504.0, "f97bff"),
    (100000.0, "fa47c35000"),
    (3.4028234663852886e38, "fa7f7fffff"),
    (1.0e300, "fb7e37e43c8800759c"),
    (5.960464477539063e-8, "f90001"),
    (0.00006103515625, "f90400"),
    (-4.0, "f9c400"),
    (-4.1, "fbc010666666666666"),
    (INF, "f97c00"),
    (NAN, "f97e00"),
    (-INF, "f9fc00"),
    (False, "f4"),
    (True, "f5"),
    (None, "f6"),
    (b"", "40"),
    (b"\x01\x02\x03\x04", "4401020304"),
    ("", "60"),
    ("a", "6161"),
    ("IETF", "6449455446"),
    ('"\\', "62225c"),
    ("\u00fc", "62c3bc"),
    ("\u6c34", "63e6b0b4"),
    ("\U00010151", "64f0908591"),
    ([], "80"),
    ([1, 2, 3], "83010203"),
    ([1, [2, 3], [4, 5]], "8301820203820405"),
    (list(range(1, 26)), "98190102030405060708090a0b0c0d0e0f101112131415161718181819"),
    ({}, "a0"),
    (od((1, 2), (3, 4)), "a201020304"),
    (od(("a", 1), ("b", [2, 3])), "a26161016162820203"),
    (["a", {"b": "c"}], "826161a161626163"),
    (
        od(("a", "A"), ("b", "B"), ("c", "C"), ("d", "D"), ("e", "E")),
        "a56161614161626142616361436164614461656145",
    ),
]

# Appendix A examples that are well-formed but not in preferred form: loads
# accepts them, dumps would choose the shorter encoding.
DECODE_ONLY = [
    (INF, "fa7f800000"),
    (NAN, "fa7fc00000"),
    (-INF, "faff800000"),
    (INF, "fb7ff0000000000000"),
    (NAN, "fb7ff8000000000000"),
    (-INF, "fbfff0000000000000"),
    (b"\x01\x02\x03\x04\x05", "5f42010243030405ff"),
    ("streaming", "7f657374726561646d696e67ff"),
    ([], "9fff"),
    ([1, [2, 3], [4, 5]], "9f018202039f0405ffff"),
    ([1, [2, 3], [4, 5]], "9f01820203820405ff"),
    ([1, [2, 3], [4, 5]], "83018202039f0405ff"),
    ([1, [2, 3], [4, 5]], "83019f0203ff820405"),
    (list(range(1, 26)), "9f0102030405060708090a0b0c0d0e0f101112131415161718181819ff"),
    ({"a": 1, "b": [2, 3]}, "bf61610161629f0203ffff"),
    (["a", {"b": "c"}], "826161bf61626163ff"),
    ({"Fun": True, "Amt": -2}, "bf6346756ef563416d7421ff"),
    # non-shortest heads are well-formed too
    (0, "1800"),
    (1, "1b0000000000000001"),
    ("a", "780161"),
    (1.0, "fa3f800000"),
    (1.0, "fb3ff0000000000000"),
]

# Appendix A examples outside the data model: tags, undefined, simple values.
REJECTED = [
    "c249010000000000000000",  # 2(h'010000000000000000') bignum
    "c349010000000000000000",  # 3(...) negative bignum
    "f7",  # undefined
    "f0",  # simple(16)
    "f8ff",  # simple(255)
    "c074323031332d30332d32315432303a30343a30305a",  # 0("2013-03-21T20:04:00Z")
    "c11a514b67b0",  # 1(1363896240)
    "c1fb41d452d9ec200000",  # 1(1363896240.5)
    "d74401020304",  # 23(h'01020304')
    "d818456449455446",  # 24(h'6449455446')
    "d82076687474703a2f2f7777772e6578616d706c652e636f6d",  # 32("http://www.example.com")
]


def same(a, b):
    """Equal values, treating NaN as equal to NaN and telling -0.0 from 0.0."""
    if isinstance(a, float) and isinstance(b, float):
        if a != a or b != b:
            return a != a and b != b
        return a == b and struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(a[i], b[i]) for i in range(len(a)))
    if isinstance(a, dict) and isinstance(b, dict):
        return len(a) == len(b) and all(k in b and same(v, b[k]) for k, v in a.items())
    return type(a) is type(b) and a == b


def test_appendix_a_encode():
    for value, hx in ROUND_TRIP:
        got = cbor.dumps(value)
        assert got == unhex(hx), (value, got, hx)


def test_appendix_a_decode():
    for value, hx in ROUND_TRIP + DECODE_ONLY:
        got = cbor.loads(unhex(hx))
        assert same(got, value), (hx, got, value)


def test_appendix_a_outside_model_rejected():
    for hx in REJECTED:
        raises(DecodeError, cbor.loads, unhex(hx))


def test_every_truncation_fails():
    for _, hx in ROUND_TRIP + DECODE_ONLY:
        data = unhex(hx)
        for cut in range(len(data)):
            raises(DecodeError, cbor.loads, data[:cut])


def test_tuple_encodes_as_array_and_bytes_like():
    assert cbor.dumps((1, 2)) == unhex("820102")
    assert cbor.dumps(bytearray(b"\x01")) == unhex("4101")
    assert cbor.dumps(memoryview(b"\x01\x02")) == unhex("420102")
    assert cbor.loads(bytearray(unhex("820102"))) == [1, 2]
    assert cbor.loads(memoryview(unhex("00820102"))[1:]) == [1, 2]


def test_map_keeps_iteration_order():
    assert cbor.dumps(od(("b", 1), ("a", 2))) == unhex("a2616201616102")
    assert cbor.dumps(od((b"k", 1), (-1, 2))) == unhex("a2416b012002")
    assert cbor.loads(unhex("a2616201616102")) == {"a": 2, "b": 1}


def test_integer_range():
    assert cbor.dumps(2**64 - 1) == unhex("1bffffffffffffffff")
    raises(EncodeError, cbor.dumps, 2**64)
    raises(EncodeError, cbor.dumps, -(2**64) - 1)
    raises(EncodeError, cbor.dumps, [1, 2**70])
    assert cbor.dumps(2**32) == unhex("1b0000000100000000")
    assert cbor.dumps(2**32 - 1) == unhex("1affffffff")
    assert cbor.dumps(-(2**32)) == unhex("3affffffff")
    assert cbor.dumps(-256) == unhex("38ff")
    assert cbor.dumps(-257) == unhex("390100")


def test_unencodable():
    raises(EncodeError, cbor.dumps, set([1]))
    raises(EncodeError, cbor.dumps, object())
    raises(EncodeError, cbor.dumps, {1.5: 1})
    raises(EncodeError, cbor.dumps, {None: 1})
    raises(EncodeError, cbor.dumps, {True: 1})
    raises(EncodeError, cbor.dumps, {(1, 2): 1})
    deep = []  # type: list
    for _ in range(cbor.MAX_ENCODE_DEPTH + 1):
        deep = [deep]
    raises(EncodeError, cbor.dumps, deep)


def test_shortest_exact_floats():
    # float16 subnormals and the rounding boundary, computed from bits rather
    # than with struct's 'e' so MicroPython gets them right too.
    cases = [
        (2.0**-24, "f90001"),
        (-(2.0**-24), "f98001"),
        (2.0**-15, "f90200"),
        (2.0**-14, "f90400"),
        (1023 * 2.0**-24, "f903ff"),
        (2.0**-25, "fa33000000"),
        (1.00048828125, "fa3f801000"),  # halfway between two float16s: not exact
        (1.0009765625, "f93c01"),
        (65504.0, "f97bff"),
        (65505.0, "fa477fe100"),
        (65536.0, "fa47800000"),
        (2.0**-149, "fa00000001"),
        (2.0**-126, "fa00800000"),
        (2.0**-150, "fb3690000000000000"),
        (3.4028235677973366e38, "fb47effffff0000000"),
        (2.0**128, "fb47f0000000000000"),
        (0.1, "fb3fb999999999999a"),
        (0.5, "f93800"),
        (21.5, "f94d60"),
        (-(2.0**15), "f9f800"),
        (5e-324, "fb0000000000000001"),
    ]
    for value, hx in cases:
        assert cbor.dumps(value) == unhex(hx), (value, cbor.dumps(value), hx)
        assert same(cbor.loads(unhex(hx)), value), hx


def test_every_float16_decodes_and_reencodes():
    # Every finite float16 is exactly representable, so it must come back in
    # the same two bytes; NaNs collapse to the one canonical NaN.
    for h in range(0, 0x10000, 7):
        data = bytes([0xF9, h >> 8, h & 0xFF])
        value = cbor.loads(data)
        if (h >> 10) & 0x1F == 0x1F and h & 0x3FF:
            assert value != value
            assert cbor.dumps(value) == unhex("f97e00")
        else:
            assert cbor.dumps(value) == data, (h, value)


def test_nan_payloads_collapse():
    for hx in ("f97e01", "fa7fc00001", "fbfff8000000000001"):
        v = cbor.loads(unhex(hx))
        assert v != v
        assert cbor.dumps(v) == unhex("f97e00")


def test_oversized_lengths_fail_fast():
    # A byte string declaring 2**32 bytes, 4 GiB, in a 10-byte input.
    raises(DecodeError, cbor.loads, unhex("5b0000000100000000ff"))
    raises(DecodeError, cbor.loads, unhex("7b00000001000000006161"))
    raises(DecodeError, cbor.loads, unhex("5bffffffffffffffff"))
    # Arrays and maps declaring 2**60 items and pairs.
    raises(LimitError, cbor.loads, unhex("9b100000000000000001"))
    raises(LimitError, cbor.loads, unhex("bb1000000000000000"))
    # Within the item limit but longer than the input: truncation, not a limit.
    raises(DecodeError, cbor.loads, unhex("990100") + b"\x00" * 10, max_items=100000)
    e = raises(DecodeError, cbor.loads, unhex("990100") + b"\x00" * 10, max_items=100000)
    assert not isinstance(e, LimitError)
    raises(DecodeError, cbor.loads, unhex("b90100") + b"\x00" * 300, max_items=100000)


def test_depth_limit():
    nested = unhex("81") * 16 + b"\x00"
    assert cbor.loads(nested) is not None
    raises(LimitError, cbor.loads, unhex("81") * 17 + b"\x00")
    raises(LimitError, cbor.loads, unhex("a10181") * 9 + b"\x00")
    raises(LimitError, cbor.loads, unhex("9f") * 17 + b"\xff" * 17)
    raises(LimitError, cbor.loads, unhex("8180"), max_depth=1)
    assert cbor.loads(unhex("80"), max_depth=1) == []
    raises(LimitError, cbor.loads, unhex("80"), max_depth=0)
    assert cbor.loads(unhex("01"), max_depth=0) == 1


def test_item_limit():
    # Every data item counts: the array itself and its three elements.
    assert cbor.loads(unhex("83010203"), max_items=4) == [1, 2, 3]
    raises(LimitError, cbor.loads, unhex("83010203"), max_items=3)
    # A map counts the map, then each key and each value.
    assert cbor.loads(unhex("a201020304"), max_items=5) == {1: 2, 3: 4}
    raises(LimitError, cbor.loads, unhex("a201020304"), max_items=4)
    # Indefinite arrays and chunked strings are bounded too.
    raises(LimitError, cbor.loads, unhex("9f") + b"\x00" * 100 + b"\xff", max_items=50)
    raises(LimitError, cbor.loads, unhex("5f") + unhex("4100") * 100 + b"\xff", max_items=50)


def test_trailing_bytes_and_decode_from():
    raises(DecodeError, cbor.loads, unhex("0000"))
    raises(DecodeError, cbor.loads, b"")
    obj, end = cbor.decode_from(unhex("830102036161ff"), 0)
    assert obj == [1, 2, 3] and end == 4
    obj, end = cbor.decode_from(unhex("830102036161ff"), 4)
    assert obj == "a" and end == 6
    raises(DecodeError, cbor.decode_from, unhex("830102036161ff"), 6)
    raises(DecodeError, cbor.decode_from, unhex("00"), 2)
    raises(DecodeError, cbor.decode_from, unhex("00"), -1)
    raises(LimitError, cbor.decode_from, unhex("8181818100"), 0, 2)


def test_malformed():
    bad = [
        "1c",  # reserved additional information 28..30
        "1d",
        "1e",
        "3c",
        "5c",
        "fc",
        "1f",  # indefinite integer
        "3f",
        "ff",  # stray break
        "81ff",
        "a1ff",
        "a101",  # map missing a value
        "5f01ff",  # chunk of the wrong major type
        "5f6161ff",
        "7f4161ff",
        "5f5f4100ffff",  # nested indefinite chunk
        "7f",  # indefinite without break
        "9f01",
        "bf0102",
        "bf01ff",  # indefinite map with a key but no value
        "f800",  # simple value below 32 in two-byte form
        "f81f",
        "f820",  # simple(32): well-formed, not in the data model
        "e0",
        "f3",
        "c000",  # tag 0 on an integer
        "df00",
        "a28001",  # array as a map key
        "a1f601",  # null as a map key
        "a1f501",  # true as a map key
        "a1f93c0001",  # float as a map key
        "a2010201",  # duplicate key
        "a2616101616102",
        "bf01020103ff",
    ]
    for hx in bad:
        raises(DecodeError, cbor.loads, unhex(hx))
    raises(DecodeError, cbor.loads, "not bytes")


def test_invalid_utf8_rejected():
    bad_text = [
        "c080",  # overlong NUL
        "c1bf",
        "e08080",  # overlong
        "e09fbf",
        "eda080",  # surrogate
        "edbfbf",
        "f08f8080",  # overlong
        "f4908080",  # above U+10FFFF
        "f5808080",
        "ff",
        "80",
        "e282",  # truncated sequence
        "61e2",
        "c3",
        "c328",
    ]
    for hx in bad_text:
        b = unhex(hx)
        assert not cbor.utf8_valid(b), hx
        raises(DecodeError, cbor.loads, bytes([0x60 + len(b)]) + b)
    good = ["", "41", "c2a0", "efbfbf", "ed9fbf", "ee8080", "f0908080", "f48fbfbf", "e282ac"]
    for hx in good:
        b = unhex(hx)
        assert cbor.utf8_valid(b), hx
        assert cbor.loads(bytes([0x60 + len(b)]) + b) == b.decode("utf-8")
    # A code point split across two chunks of an indefinite text string.
    raises(DecodeError, cbor.loads, unhex("7f61c361bcff"))
    assert cbor.loads(unhex("7f62c3bcff")) == "\u00fc"


def test_nested_round_trip():
    value = {
        "type": "m.room.message",
        "content": {"msgtype": "m.text", "body": "h\u00e9llo \U0001f600"},
        "n": [0, -1, 2**63, -(2**63), 1.5, 0.1, None, True, False, b"\x00\xff"],
        3: {b"k": []},
    }
    assert same(cbor.loads(cbor.dumps(value)), value)
