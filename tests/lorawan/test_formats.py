"""The LoRaWAN formats (lowbw.lorawan.formats, .decoder): fixtures, ChirpStack's own
protobuf definitions, and bad input of every kind."""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbw.lorawan import decoder, formats
from lowbw.lorawan.formats import FormatError, Other, Outcome, Uplink

FIX = Path(__file__).parent / "fixtures"
TTS_APP = "lowbw-sensors"
TTS_DEV = "eui-0004a30b001c0530"
CS_APP = "17c82e96-be03-4f38-aef3-f83d48582d97"
CS_EUI = "0101010101010101"


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIX / name).read_text())
    return data


def raw(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def tts_topic(suffix: str = "up", app: str = TTS_APP + "@ttn", dev: str = TTS_DEV) -> str:
    return "v3/%s/devices/%s/%s" % (app, dev, suffix)


def cs_topic(kind: str = "up", eui: str = CS_EUI) -> str:
    return "application/%s/device/%s/event/%s" % (CS_APP, eui, kind)


def test_chirpstack_fixtures_match_chirpstack_api() -> None:
    json_format = pytest.importorskip("google.protobuf.json_format")
    integration = pytest.importorskip("chirpstack_api.integration")
    for name, cls in [
        ("cs_up.json", integration.UplinkEvent),
        ("cs_txack.json", integration.TxAckEvent),
        ("cs_ack.json", integration.AckEvent),
        ("cs_log_downlink.json", integration.LogEvent),
        ("cs_join.json", integration.JoinEvent),
    ]:
        json_format.Parse((FIX / name).read_text(), cls())  # raises on any unknown field


def test_tts_uplink() -> None:
    ev = formats.parse(formats.TTS, tts_topic(), raw(fixture("tts_up.json")))
    assert isinstance(ev, Uplink)
    assert (
        ev.device_id == TTS_DEV and ev.dev_eui == "0004a30b001c0530" and ev.application == "lowbw-sensors@ttn"
    )
    assert ev.f_cnt == 41 and ev.f_port == 2 and ev.payload == bytes.fromhex("00d72801")
    assert ev.decoded == {
        "temperature": Decimal("21.5"),
        "humidity": 40,
        "battery": Decimal("3.61"),
        "status": "ok",
    }
    assert ev.gateway == "rooftop-gw" and ev.profile == "env-sensor"
    assert ev.radio["rssi"] == -97 and ev.radio["snr"] == Decimal("7.25") and ev.radio["sf"] == 12
    assert ev.radio["frequency"] == 868100000 and ev.radio["airtime"] == Decimal("1.155072")
    assert ev.radio["gateways"] == 2
    assert abs(ev.time - 1708424149.460123456) < 1e-6
    assert ev.key == "tts/lowbw-sensors@ttn/%s/AY28t1y7+H8ySqwT/Fcc3g==/41" % TTS_DEV


def test_chirpstack_uplink() -> None:
    ev = formats.parse(formats.CHIRPSTACK, cs_topic(), raw(fixture("cs_up.json")))
    assert isinstance(ev, Uplink)
    assert ev.device_id == CS_EUI and ev.key == "cs/3ac7e3c4-4401-4b8d-9386-a5c902f9202d"
    assert ev.f_cnt == 12 and ev.profile == "env-sensor" and ev.radio["dr"] == 0 and ev.radio["sf"] == 12
    assert ev.gateway == "0016c001f153a14c" and ev.radio["frequency"] == 868100000
    assert abs(ev.time - 1708424149.460123456) < 1e-6
    # Protobuf JSON leaves zeros out: no fCnt is f_cnt 0.
    msg = fixture("cs_up.json")
    del msg["fCnt"], msg["dr"]
    ev = formats.parse(formats.CHIRPSTACK, cs_topic(), raw(msg))
    assert isinstance(ev, Uplink) and ev.f_cnt == 0 and ev.radio["dr"] == 0


@pytest.mark.parametrize("kind", ["queued", "sent", "ack", "nack", "failed"])
def test_tts_outcomes(kind: str) -> None:
    ev = formats.parse(formats.TTS, tts_topic("down/" + kind), raw(fixture("tts_down_%s.json" % kind)))
    assert isinstance(ev, Outcome) and ev.ref == "REF"
    assert (
        ev.outcome
        == {"queued": "queued", "sent": "sent", "ack": "acked", "nack": "nacked", "failed": "failed"}[kind]
    )
    if kind == "failed":
        assert ev.reason == "application_downlink_too_long"


def test_chirpstack_outcomes_and_other_events() -> None:
    ev = formats.parse(formats.CHIRPSTACK, cs_topic("txack"), raw(fixture("cs_txack.json")))
    assert isinstance(ev, Outcome) and (ev.outcome, ev.ref) == ("sent", "REF")
    ev = formats.parse(formats.CHIRPSTACK, cs_topic("ack"), raw(fixture("cs_ack.json")))
    assert isinstance(ev, Outcome) and ev.outcome == "acked"
    msg = fixture("cs_ack.json")
    del msg["acknowledged"]  # false is left out
    ev = formats.parse(formats.CHIRPSTACK, cs_topic("ack"), raw(msg))
    assert isinstance(ev, Outcome) and ev.outcome == "nacked"
    ev = formats.parse(formats.CHIRPSTACK, cs_topic("log"), raw(fixture("cs_log_downlink.json")))
    assert isinstance(ev, Outcome) and ev.outcome == "failed" and "DOWNLINK_PAYLOAD_SIZE" in ev.reason
    ev = formats.parse(formats.CHIRPSTACK, cs_topic("join"), raw(fixture("cs_join.json")))
    assert isinstance(ev, Other) and ev.kind == "join"


def test_downlinks_validate_against_chirpstack_api() -> None:
    json_format = pytest.importorskip("google.protobuf.json_format")
    integration = pytest.importorskip("chirpstack_api.integration")
    down = formats.Downlink(f_port=15, payload=b"\xbe\xef", confirmed=True)
    topic, payload = formats.downlink_message(formats.CHIRPSTACK, CS_APP, CS_EUI, down, "ref-1")
    assert topic == "application/%s/device/%s/command/down" % (CS_APP, CS_EUI)
    cmd = json_format.Parse(payload.decode(), integration.DownlinkCommand())
    assert (cmd.id, cmd.dev_eui, cmd.f_port, cmd.data, cmd.confirmed) == (
        "ref-1",
        CS_EUI,
        15,
        b"\xbe\xef",
        True,
    )
    down = formats.Downlink(f_port=3, obj={"setpoint": 20})
    _t, payload = formats.downlink_message(formats.CHIRPSTACK, CS_APP, CS_EUI, down, "ref-2")
    cmd = json_format.Parse(payload.decode(), integration.DownlinkCommand())
    assert cmd.object["setpoint"] == 20


def test_tts_downlink_shape() -> None:
    down = formats.Downlink(f_port=15, payload=b"\xbe\xef", confirmed=True)
    topic, payload = formats.downlink_message(formats.TTS, "lowbw-sensors@ttn", TTS_DEV, down, "r1")
    assert topic == tts_topic("down/push")
    assert json.loads(payload) == {
        "downlinks": [
            {
                "f_port": 15,
                "frm_payload": "vu8=",
                "priority": "NORMAL",
                "confirmed": True,
                "correlation_ids": ["lowbw:r1"],
            }
        ]
    }
    topic, _p = formats.downlink_message(formats.TTS, "a", "d", down, "r1", replace=True)
    assert topic.endswith("/down/replace")
    with pytest.raises(FormatError):
        formats.downlink_message(formats.TTS, "a", "d", formats.Downlink(f_port=0, payload=b"x"), "r")
    with pytest.raises(FormatError):
        formats.downlink_message(formats.TTS, "a", "d", formats.Downlink(f_port=1, payload=bytes(243)), "r")
    with pytest.raises(FormatError):
        formats.downlink_message(formats.CHIRPSTACK, "a", "not-an-eui", down, "r")


# ---- bad input -----------------------------------------------------------------------


def _tts_variants() -> list[tuple[str, str, bytes]]:
    good = fixture("tts_up.json")
    out: list[tuple[str, str, bytes]] = [
        ("garbage", tts_topic(), b"\xff\xfe garbage"),
        ("not json", tts_topic(), b"{not json"),
        ("array", tts_topic(), b"[1,2]"),
        ("truncated", tts_topic(), raw(good)[:200]),
        ("NaN", tts_topic(), raw(good).replace(b"21.5", b"NaN")),
        ("deep", tts_topic(), b"[" * 5000 + b"]" * 5000),
        ("huge", tts_topic(), b'{"a": "' + b"x" * (70 * 1024) + b'"}'),
        ("wrong topic", "v3/app/nodevices/x/up", raw(good)),
        ("short topic", "v3/app", raw(good)),
        ("unknown suffix", tts_topic("sideways"), raw(good)),
        ("device mismatch", tts_topic(dev="other-dev"), raw(good)),
        ("app mismatch", tts_topic(app="other-app"), raw(good)),
    ]
    for name, change in [
        ("bad base64", lambda m: m["uplink_message"].__setitem__("frm_payload", "!!!")),
        (
            "oversized payload",
            lambda m: m["uplink_message"].__setitem__("frm_payload", base64.b64encode(bytes(300)).decode()),
        ),
        ("f_cnt string", lambda m: m["uplink_message"].__setitem__("f_cnt", "x")),
        ("f_cnt huge", lambda m: m["uplink_message"].__setitem__("f_cnt", 2**40)),
        ("f_port negative", lambda m: m["uplink_message"].__setitem__("f_port", -1)),
        ("no time", lambda m: (m.pop("received_at"), m["uplink_message"].pop("received_at"))),
        ("bad time", lambda m: m["uplink_message"].__setitem__("received_at", "yesterday")),
        ("bad date", lambda m: m["uplink_message"].__setitem__("received_at", "2024-02-31T00:00:00Z")),
        ("no uplink_message", lambda m: m.pop("uplink_message")),
        ("decoded not object", lambda m: m["uplink_message"].__setitem__("decoded_payload", [1])),
        ("bad dev_eui", lambda m: m["end_device_ids"].__setitem__("dev_eui", "zz")),
        ("no ids", lambda m: m.pop("end_device_ids")),
    ]:
        msg = json.loads(json.dumps(good))
        change(msg)
        out.append((name, tts_topic(), raw(msg)))
    return out


def _cs_variants() -> list[tuple[str, str, bytes]]:
    good = fixture("cs_up.json")
    out: list[tuple[str, str, bytes]] = [
        ("garbage", cs_topic(), b"\x00\x01\x02"),
        ("truncated", cs_topic(), raw(good)[:100]),
        ("topic eui mismatch", cs_topic(eui="0202020202020202"), raw(good)),
        ("topic eui not hex", cs_topic(eui="xyz"), raw(good)),
        ("unknown event", cs_topic("dance"), raw(good)),
        ("short topic", "application/x/device", raw(good)),
    ]
    for name, change in [
        ("bad base64", lambda m: m.__setitem__("data", "@@@")),
        ("no dedup id", lambda m: m.pop("deduplicationId")),
        ("no deviceInfo", lambda m: m.pop("deviceInfo")),
        ("app mismatch", lambda m: m["deviceInfo"].__setitem__("applicationId", "other")),
        ("bad time", lambda m: m.__setitem__("time", 12)),
        ("object not object", lambda m: m.__setitem__("object", "x")),
        ("fPort too big", lambda m: m.__setitem__("fPort", 256)),
    ]:
        msg = json.loads(json.dumps(good))
        change(msg)
        out.append((name, cs_topic(), raw(msg)))
    return out


@pytest.mark.parametrize(
    "fmt,case",
    [(formats.TTS, c) for c in _tts_variants()] + [(formats.CHIRPSTACK, c) for c in _cs_variants()],
    ids=lambda v: v[0] if isinstance(v, tuple) else v,
)
def test_bad_input_raises_format_error(fmt: str, case: tuple[str, str, bytes]) -> None:
    _name, topic, payload = case
    with pytest.raises(FormatError):
        formats.parse(fmt, topic, payload)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([formats.TTS, formats.CHIRPSTACK]), st.binary(max_size=400), st.integers(0, 3000))
def test_fuzz_parsers_decode_or_raise_format_error(fmt: str, junk: bytes, cut: int) -> None:
    base = raw(fixture("tts_up.json" if fmt == formats.TTS else "cs_up.json"))
    topic = tts_topic() if fmt == formats.TTS else cs_topic()
    for payload in (junk, base[:cut] + junk, base[:cut]):
        try:
            formats.parse(fmt, topic, payload)
        except FormatError:
            pass


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
        max_leaves=20,
    )
)
def test_fuzz_structure_substitution(value: Any) -> None:
    """Any field of a good message replaced by any JSON value: parsed or FormatError."""
    for fmt, name, topic in (
        (formats.TTS, "tts_up.json", tts_topic()),
        (formats.CHIRPSTACK, "cs_up.json", cs_topic()),
    ):
        good = fixture(name)
        keys = list(good)
        for k in keys:
            msg = dict(good)
            msg[k] = value
            try:
                formats.parse(fmt, topic, raw(msg))
            except FormatError:
                pass


# ---- decoder and commands ----------------------------------------------------------------


def test_raw_decoder_and_truncation() -> None:
    spec = [
        decoder.FieldSpec("temperature", "°C", 1, "i16"),
        decoder.FieldSpec("humidity", "%", 0, "u8"),
        decoder.FieldSpec("counter", "", 0, "u32le"),
    ]
    assert decoder.decode_raw(spec, bytes.fromhex("ff9c28 01000000")) == {
        "temperature": Decimal("-10.0"),
        "humidity": 40,
        "counter": 1,
    }
    for cut in range(7):
        with pytest.raises(FormatError):
            decoder.decode_raw(spec, bytes.fromhex("ff9c2801000000")[:cut])


def test_fields_from_decoded_and_slots() -> None:
    fields = decoder.fields_from_decoded(
        {"temperature": Decimal("21.5"), "humidity": 40, "status": "ok", "nested": {"a": 1}, "ok": True}, 9
    )
    assert [(f.name, f.scale) for f in fields] == [("humidity", 0), ("temperature", 1)]
    slots = decoder.uplink_slots(fields, ["rssi", "snr"])
    assert [s["name"] for s in slots] == ["uplink", *decoder.OUTCOME_SLOTS]
    assert [f["name"] for f in slots[0]["fields"]] == ["humidity", "temperature", "rssi", "snr"]


def test_commands() -> None:
    prof = decoder.Profile("p", commands={"reboot": formats.Downlink(10, b"\x01", confirmed=True)})
    assert decoder.parse_command("reboot", prof) == formats.Downlink(10, b"\x01", None, True)
    assert decoder.parse_command("15 beef", None) == formats.Downlink(15, b"\xbe\xef")
    assert decoder.parse_command("15 beef confirmed", None).confirmed
    d = decoder.parse_command('{"f_port": 3, "object": {"setpoint": 20.5}}', None)
    assert d.obj == {"setpoint": 20.5} and d.payload is None
    d = decoder.parse_command('{"f_port": 3, "base64": "vu8"}', None)
    assert d.payload == b"\xbe\xef"
    for bad in [
        "",
        "dance",
        "15 zz",
        "0 00",
        "300 00",
        "15",
        '{"f_port": 1}',
        "{bad",
        "[1]",
        '{"f_port": "1", "hex": "00"}',
        '{"f_port": 1, "hex": 5}',
        '{"f_port": 1, "base64": "%%"}',
        '{"f_port": 1, "hex": "00", "confirmed": "yes"}',
        "15 %s" % ("00" * 243),
        "15 beef maybe",
    ]:
        with pytest.raises(FormatError):
            decoder.parse_command(bad, prof)


def test_times() -> None:
    assert formats.parse_time("1970-01-01T00:00:01Z") == 1.0
    assert formats.parse_time("1970-01-01T01:00:01+01:00") == 1.0
    assert abs(formats.parse_time("2024-02-20T10:15:49.460123456+00:00") - 1708424149.460123456) < 1e-6
    for bad in ["", "2024-02-20", "2024-02-20T10:15:49", "2024-13-01T00:00:00Z", 5, None]:
        with pytest.raises(FormatError):
            formats.parse_time(bad)
