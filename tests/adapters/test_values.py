"""Names -> slots, exact values, the line protocol and MQTT payloads (no I/O)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lowbw.adapters.line_protocol import LineError, LineSplitter, parse_line
from lowbw.adapters.mqtt_bridge import decode_payload
from lowbw.adapters.values import MappingError, SlotMapper, to_value, when_from_timestamp
from lowbw.wire import cbor
from lowbw.wire.errors import LowbwError

SLOTS = [
    ("temperature", [("temperature", "°C", 1)]),
    ("climate", [("temperature", "°C", 1), ("humidity", "%", 0)]),
    ("pressure", [("pressure", "hPa", 0)]),
]


@pytest.mark.parametrize(
    "raw,scale,want",
    [
        ("21.5", 1, 215),
        ("21.50", 1, 215),
        ("-0.05", 2, -5),
        ("21.55", 1, 21.55),
        ("40", 0, 40),
        ("700", -2, 7),
        ("750", -2, 750.0),
        (Decimal("1013.25"), 0, 1013.25),
        (21.5, 1, 215),
        (7, 0, 7),
        (7, 2, 700),
        ("null", 1, None),
        ("n/a", 0, None),
        (None, 0, None),
        ("1e3", 0, 1000),
        ("123456789012345678901234567890", 0, 1.2345678901234568e29),
    ],
)
def test_values_are_exact_scaled_integers_when_they_can_be(raw, scale, want):
    got = to_value(raw, scale)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize(
    "raw", ["abc", "NaN", "inf", "-Infinity", "", "1,5", True, float("nan"), [1], {"a": 1}]
)
def test_non_numbers_are_refused_with_the_field_name(raw):
    with pytest.raises(MappingError) as exc:
        to_value(raw, 0, "temperature")
    assert "temperature" in exc.value.message


def test_greedy_mapping_prefers_the_slot_with_most_fields():
    m = SlotMapper(SLOTS)
    assert m.map({"temperature": "21.5", "humidity": "40"}) == [(1, [215, 40])]
    assert m.map({"temperature": "21.5"}) == [(0, [215])]
    assert m.map({"temperature": "21.5", "humidity": "40", "pressure": "1013"}) == [
        (1, [215, 40]),
        (2, [1013]),
    ]
    assert m.map({"climate.temperature": "20", "climate.humidity": "41", "temperature": "19"}) == [
        (0, [190]),
        (1, [200, 41]),
    ]


def test_mapping_errors_say_what_is_missing_or_unknown():
    m = SlotMapper(SLOTS)
    with pytest.raises(MappingError, match="humidity alone fills no slot: slot climate needs temperature"):
        m.map({"humidity": "40"})
    with pytest.raises(MappingError, match="unknown field tmp"):
        m.map({"tmp": "4"})
    with pytest.raises(MappingError, match="no slot 'nope'"):
        m.map({"nope.temperature": "4"})
    with pytest.raises(MappingError, match="slot climate needs humidity"):
        m.map({"climate.temperature": "4"})
    lenient = SlotMapper(SLOTS, strict=False)
    assert lenient.map({"temperature": "4", "rssi": "-70"}) == [(0, [40])]
    with pytest.raises(MappingError, match="unknown field"):
        lenient.map({"rssi": "-70"})


def test_rename_and_fixed_slots():
    m = SlotMapper(SLOTS, rename={"t": "temperature", "h": "humidity"})
    assert m.map({"t": "22", "h": "50"}) == [(1, [220, 50])]
    assert m.for_slot(1, {"t": 22, "h": 50, "rssi": 1}) == (1, [220, 50])
    assert m.one(2, "1000.5") == (2, [1000.5])
    with pytest.raises(MappingError, match="slot climate has 2 fields"):
        m.one(1, "3")
    with pytest.raises(MappingError, match="temperature given twice"):
        m.map({"t": "1", "temperature": "2"})
    assert m.slot_index("pressure") == 2 and m.slot_index("1") == 1 and m.slot_index(0) == 0


def test_line_protocol():
    assert parse_line("temperature=21.5 humidity=40\r") == {"temperature": "21.5", "humidity": "40"}
    assert parse_line("temperature=21.5,humidity=40;pressure=1000") == {
        "temperature": "21.5",
        "humidity": "40",
        "pressure": "1000",
    }
    assert parse_line('{"temperature": 21.5, "humidity": null}') == {
        "temperature": Decimal("21.5"),
        "humidity": None,
    }
    assert parse_line("   ") is None and parse_line("# comment") is None
    for bad, why in [
        ("temperature", "is not name=value"),
        ("=5", "is not name=value"),
        ("t=1 t=2", "given twice"),
        ('{"t": [1]}', "expected a number"),
        ("{broken", "not valid JSON"),
        ('{"t": NaN}', "NaN is not a number"),
        ("9x=1", "is not a field name"),
    ]:
        with pytest.raises(LineError, match=why):
            parse_line(bad)
    with pytest.raises(LineError, match="expected a JSON object"):
        parse_line("[1, 2]", "json")


def test_line_splitter_is_bounded():
    s = LineSplitter(max_line=8)
    assert s.feed(b"a=1\nb=") == [b"a=1"]
    assert s.feed(b"2\r\n") == [b"b=2"]
    assert s.feed(b"x" * 20) == [] and s.too_long == 1 and len(s.buf) == 0
    assert s.feed(b"yyy\nc=3\n") == [b"c=3"]
    assert s.lines == 3


@given(st.binary(max_size=200))
def test_garbage_lines_parse_or_raise_our_error(data):
    m = SlotMapper(SLOTS)
    for line in LineSplitter(64).feed(data + b"\n"):
        try:
            values = parse_line(line.decode("utf-8", "replace"))
            if values is not None:
                m.map(values)
        except LowbwError:
            pass


@pytest.mark.parametrize(
    "payload,kind,want",
    [
        (b"21.5", "auto", Decimal("21.5")),
        (b" 40\n", "auto", 40),
        (b"21.5", "number", "21.5"),
        (b'{"temperature": 21.5}', "auto", {"temperature": Decimal("21.5")}),
        (b"null", "auto", None),
        (b"n/a", "auto", None),
        (bytes(cbor.dumps(21.5)), "auto", 21.5),
        (
            bytes(cbor.dumps({"temperature": 215, "humidity": 40})),
            "auto",
            {"temperature": 215, "humidity": 40},
        ),
        (bytes(cbor.dumps(7)), "cbor", 7),
    ],
)
def test_mqtt_payloads(payload, kind, want):
    assert decode_payload(payload, kind) == want


@pytest.mark.parametrize(
    "payload,kind,why",
    [
        (b"", "auto", "empty payload"),
        (b"hello", "auto", "not a number, JSON or CBOR"),
        (b"hello", "json", "not JSON"),
        (b"\xff\xfe", "number", "not UTF-8"),
        (bytes(cbor.dumps({1: 2})), "cbor", "keys must be text"),
        (b"\x1c", "cbor", "not CBOR"),
    ],
)
def test_bad_mqtt_payloads_say_why(payload, kind, why):
    with pytest.raises(MappingError, match=why):
        decode_payload(payload, kind)


@given(st.binary(max_size=100), st.sampled_from(["auto", "number", "json", "cbor"]))
def test_garbage_payloads_decode_or_raise_our_error(data, kind):
    m = SlotMapper(SLOTS, strict=False)
    try:
        obj = decode_payload(data, kind)
        if isinstance(obj, dict):
            m.map(obj)
        else:
            m.map({"temperature": obj})
    except LowbwError:
        pass


def test_timestamps():
    assert when_from_timestamp("1000", 50.0, 1010.0) == 40.0
    assert when_from_timestamp(1_700_000_000_000, 100.0, 1_700_000_010.0) == 90.0
    assert when_from_timestamp(2000, 50.0, 1010.0) == 50.0  # the future is now
    with pytest.raises(MappingError):
        when_from_timestamp(None, 0.0, 0.0)
    with pytest.raises(MappingError, match="not a Unix time"):
        when_from_timestamp(-5, 0.0, 0.0)
