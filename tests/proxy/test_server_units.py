"""Pure pieces of the proxy: decimal rendering, message numbers, permissions,
command detection, saved session states, link timers. No network."""

from __future__ import annotations

import os
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lowbw.proxy import sensor
from lowbw.proxy.appservice import detect_command
from lowbw.proxy.registry import DeviceRecord
from lowbw.proxy.resources import check_permission
from lowbw.proxy.sessions import decode_state, encode_state
from lowbw.proxy.transport import LinkTuning, SessionAddress
from lowbw.wire import frames
from lowbw.wire.errors import DecodeError


@pytest.mark.parametrize(
    ("value", "scale", "text"),
    [
        (215, 1, "21.5"),
        (-5, 2, "-0.05"),
        (2150, 2, "21.50"),
        (7, -2, "700"),
        (0, 3, "0.000"),
        (40, 0, "40"),
        (21.5, 1, "21.5"),
        (1e-07, 0, "0.0000001"),
        (1e16, 0, "10000000000000000"),
        (0.1, 0, "0.1"),
        (None, 0, None),
        (float("nan"), 0, None),
        (float("inf"), 0, None),
    ],
)
def test_decimal_strings(value, scale, text):
    assert sensor.decimal_string(value, scale) == text


@given(st.integers(-(2**64), 2**64), st.integers(-18, 18))
def test_scaled_integers_are_exact(value, scale):
    text = sensor.decimal_string(value, scale)
    assert text is not None
    assert Decimal(text) == Decimal(value).scaleb(-scale)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_floats_read_back_exactly(value):
    text = sensor.decimal_string(value)
    assert text is not None and "e" not in text.lower()
    assert float(text) == value


def test_render_bodies():
    slots = [
        {"name": "temperature", "fields": [{"name": "temperature", "unit": "°C", "scale": 1}]},
        {
            "name": "climate",
            "fields": [{"name": "temperature", "unit": "°C", "scale": 1}, {"name": "rh"}],
        },
    ]
    one = sensor.render("s1", slots, 0, [215], 9, 123)
    assert one["body"] == "temperature 21.5 °C"
    assert one["org.lowbw.reading"] == {
        "device": "s1",
        "slot": 0,
        "name": "temperature",
        "seq": 9,
        "measured_at": 123,
        "values": [{"name": "temperature", "value": "21.5", "unit": "°C"}],
    }
    two = sensor.render("s1", slots, 1, [None, 40], 10, 124, index=1)
    assert two["body"] == "climate: temperature n/a, rh 40"
    assert two["org.lowbw.reading"]["index"] == 1
    for slot, values in ((2, [1]), (0, [1, 2]), (1, [1])):
        with pytest.raises(sensor.SchemaError):
            sensor.render("s1", slots, slot, values, 0, 0)


@pytest.mark.parametrize(
    ("mid", "top", "full"),
    [
        (0, -1, 0),
        (0x9000, -1, 0x9000),
        (5, 0xFFF0, 0x10005),
        (0xFFF0, 0x10005, 0xFFF0),
        (7, 7, 7),
        (6, 0x10007, 0x10006),
    ],
)
def test_full_message_number(mid, top, full):
    assert sensor.full_msgnum(mid, top) == full


def test_txn_ids_differ_per_device_message_and_index():
    ids = {sensor.txn_id(d, m, i) for d in ("a", "b") for m in (1, 2) for i in (0, 1)}
    assert len(ids) == 8


REC = DeviceRecord(
    name="s1",
    public_key=bytes(32),
    user_id="@lowbw_s1:x.y",
    rooms=["!mine:x.y"],
    event_types=["m.room.message"],
    permissions=[],
)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/_matrix/client/v3/sync", True),
        ("POST", "/_matrix/client/v3/sync", False),
        ("GET", "/_matrix/client/r0/sync", True),
        ("GET", "/_matrix/client/v3/joined_rooms", True),
        ("GET", "/_matrix/client/v3/account/whoami", True),
        ("GET", "/_matrix/client/v3/rooms/%21mine%3Ax.y/messages", True),
        ("GET", "/_matrix/client/v3/rooms/%21other%3Ax.y/messages", False),
        ("PUT", "/_matrix/client/v3/rooms/%21mine%3Ax.y/send/m.room.message/t", True),
        ("PUT", "/_matrix/client/v3/rooms/%21mine%3Ax.y/send/m.reaction/t", False),
        ("PUT", "/_matrix/client/v3/rooms/%21mine%3Ax.y/state/m.room.message/", True),
        ("PUT", "/_matrix/client/v3/rooms/%21mine%3Ax.y/state/m.room.name/", False),
        ("GET", "/_matrix/client/v3/rooms/%21mine%3Ax.y/state/m.room.name/", True),
        ("GET", "/_matrix/client/v3/rooms/%21mine%3Ax.y/state", True),
        ("POST", "/_matrix/client/v3/join/%21mine%3Ax.y", True),
        ("POST", "/_matrix/client/v3/join/%23alias%3Ax.y", False),
        ("POST", "/_matrix/client/v3/rooms/%21mine%3Ax.y/join", True),
        ("POST", "/_matrix/client/v3/rooms/%21mine%3Ax.y/leave", False),
        ("POST", "/_matrix/client/v3/createRoom", False),
        ("POST", "/_matrix/client/v3/user/%40lowbw_s1%3Ax.y/filter", True),
        ("POST", "/_matrix/client/v3/user/%40other%3Ax.y/filter", False),
        ("POST", "/_matrix/client/v3/login", False),
        ("GET", "/_synapse/admin/v1/users", False),
        ("GET", "/_matrix/client/v9/sync", False),
        ("DELETE", "/_matrix/client/v3/devices/X", False),
    ],
)
def test_permissions(method, path, allowed):
    assert (check_permission(method, path, REC) is None) == allowed


def test_create_room_permission():
    rec = DeviceRecord(**{**REC.__dict__, "permissions": ["create_room"]})
    assert check_permission("POST", "/_matrix/client/v3/createRoom", rec) is None


def test_command_detection():
    devices = {"s1": REC}

    def ev(**kw):
        base = {"type": "m.room.message", "room_id": "!mine:x.y", "sender": "@u:x.y", "event_id": "$1"}
        base.update(kw)
        return base

    assert detect_command(ev(content={"body": "!s1 open"}), devices) == ("s1", "open")
    assert detect_command(ev(content={"body": "!s1 "}), devices) is None
    assert detect_command(ev(content={"body": "!s2 open"}), devices) is None
    assert detect_command(ev(content={"body": "s1 open"}), devices) is None
    assert detect_command(ev(content={"body": "!s1 open"}, room_id="!other:x.y"), devices) is None
    assert detect_command(ev(content={"body": "!s1 open"}, sender=REC.user_id), devices) is None
    cmd = ev(type="org.lowbw.command", content={"device": "s1", "body": "reboot"})
    assert detect_command(cmd, devices) == ("s1", "reboot")
    raw = ev(type="org.lowbw.command", content={"device": "s1", "speed": 3})
    assert detect_command(raw, devices) == ("s1", '{"device":"s1","speed":3}')
    assert detect_command("junk", devices) is None
    assert detect_command(ev(content="junk"), devices) is None


def test_saved_state_round_trip():
    session = frames.Session(os.urandom(32), os.urandom(32), 0x1234, False, 77, 40, (1 << 63) | 5, 3)
    addr = SessionAddress(0x1234, session, "s1", 0x12, ("127.0.0.1", 4000), LinkTuning(100))
    restored, caps, sockaddr = decode_state(encode_state(addr))
    assert restored.export_state() == session.export_state()
    assert caps == 0x12 and sockaddr == ("127.0.0.1", 4000)
    for blob in (b"", b"\x80", encode_state(addr)[:-3], b"\x8b" + b"\x02" * 11):
        with pytest.raises(DecodeError):
            decode_state(blob)


def test_link_tuning():
    slow, fast = LinkTuning(100), LinkTuning(1_000_000)
    # The proxy's CONs wait for two 128-byte-block frames each way at 100 bit/s.
    assert slow.ACK_TIMEOUT > 2 * (128 * 8 / 100)
    assert slow.EMPTY_ACK_DELAY == 12.0 > 10.0  # above the reading send timeout
    assert fast.ACK_TIMEOUT < 3 and fast.block_szx == 6 and slow.block_szx == 3
    with pytest.raises(ValueError):
        LinkTuning(0)


def test_airtime_correction_of_reading_arrival() -> None:
    from lowbw.proxy.resources import airtime_ms

    assert airtime_ms(31, 100) == 2480  # a warm reading at 100 bit/s
    assert airtime_ms(110, 100) == 8800
    assert airtime_ms(31, 0) == 0
