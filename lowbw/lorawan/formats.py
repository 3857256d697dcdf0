"""The MQTT formats of two LoRaWAN network servers, parsed and built.

``tts-v3`` (The Things Stack v3, MQTT server; MQTT 3.1.1, QoS 0):

- uplinks on ``v3/{app}@{tenant}/devices/{device_id}/up`` (``{app}`` alone on
  open-source deployments): ``end_device_ids{device_id, application_ids
  {application_id}, dev_eui, join_eui, dev_addr}``, ``received_at``,
  ``uplink_message{session_key_id, f_cnt, f_port, frm_payload (base64),
  decoded_payload, rx_metadata[...], settings{data_rate{lora{bandwidth,
  spreading_factor}}, frequency}, consumed_airtime, received_at}``,
  ``simulated``;
- downlinks published to ``.../devices/{device_id}/down/push`` (or
  ``down/replace``): ``{"downlinks": [{"f_port", "frm_payload" | "decoded_payload",
  "priority", "confirmed", "correlation_ids"}]}``;
- outcomes on ``.../down/queued|sent|ack|nack|failed`` with ``downlink_queued``,
  ``downlink_sent``, ``downlink_ack``, ``downlink_nack``, ``downlink_failed
  {downlink, error}``; each downlink keeps the ``correlation_ids`` it was pushed
  with, which is how an outcome finds its command.

``chirpstack-v4`` (ChirpStack v4 MQTT integration, protobuf JSON mapping):

- events on ``application/{application_id}/device/{dev_eui}/event/{up|join|ack|
  txack|log|status|location}``; ``up``: ``deduplicationId``, ``time``,
  ``deviceInfo{tenantId, applicationId, deviceProfileName, deviceName, devEui,
  tags}``, ``devAddr``, ``dr``, ``fCnt``, ``fPort``, ``data`` (base64),
  ``object`` (codec output), ``rxInfo[]``, ``txInfo{frequency, modulation{lora
  {bandwidth, spreadingFactor}}}``;
- downlinks on ``application/{application_id}/device/{dev_eui}/command/down``:
  ``{"id", "devEui", "confirmed", "fPort", "data" | "object"}`` (the topic's
  devEui must match); ``ack`` / ``txack`` events carry ``queueItemId`` = that id,
  a ``log`` event with a ``DOWNLINK_*`` code and ``context.queue_item_id`` a
  failure.

Shapes are from the vendors' documentation and sources (tests/lorawan/fixtures
says which, per sample); ChirpStack's are checked against its own protobuf
definitions (the ``chirpstack-api`` package) in the tests.

Everything from the broker is untrusted: every parser raises ``FormatError``
(with a short reason) for anything it cannot use, and nothing else.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import re
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from lowbw.wire.errors import LowbwError

TTS = "tts-v3"
CHIRPSTACK = "chirpstack-v4"
FORMATS = (TTS, CHIRPSTACK)

MAX_MESSAGE = 64 * 1024  # no network-server message we use comes near this
MAX_FRM_PAYLOAD = 242  # the largest LoRaWAN FRMPayload (EU868 DR7 without repeater: 242 B)
MAX_DEPTH = 16

# Outcome names the bridge reports (docs/lorawan.md "Commands").
SENT, ACKED, NACKED, FAILED, QUEUED = "sent", "acked", "nacked", "failed", "queued"
TTS_OUTCOMES = {
    "queued": (QUEUED, "downlink_queued"),
    "sent": (SENT, "downlink_sent"),
    "ack": (ACKED, "downlink_ack"),
    "nack": (NACKED, "downlink_nack"),
    "failed": (FAILED, "downlink_failed"),
}
CORRELATION_PREFIX = "lowbw:"

_ID_RE = re.compile(r"[a-z0-9](?:[-]?[a-z0-9]){1,35}\Z")
_EUI_RE = re.compile(r"[0-9a-fA-F]{16}\Z")
_TIME_RE = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?([Zz]|[+-]\d\d:?\d\d)\Z"
)


class FormatError(LowbwError):
    """A network-server message that cannot be used (the reason in ``message``)."""


@dataclass
class Uplink:
    fmt: str
    application: str
    device_id: str  # TTS: device_id; ChirpStack: devEui (lowercase hex)
    dev_eui: str | None
    key: str  # the duplicate key (docs/lorawan.md "Exactly once")
    session: str  # f_cnt restarts with a new session
    f_cnt: int | None
    f_port: int | None
    payload: bytes
    decoded: dict[str, Any] | None
    time: float  # Unix seconds: the network server's reception time
    profile: str | None = None
    gateway: str | None = None
    radio: dict[str, int | Decimal | None] = field(default_factory=dict)
    simulated: bool = False


@dataclass
class Outcome:
    fmt: str
    device_id: str
    outcome: str  # QUEUED, SENT, ACKED, NACKED, FAILED
    ref: str | None  # our reference (TTS correlation id, ChirpStack queue item id)
    reason: str = ""


@dataclass
class Other:
    """An event the bridge does not act on (join, status, location, a log line)."""

    fmt: str
    device_id: str
    kind: str
    detail: str = ""


Event = Uplink | Outcome | Other


# ---- helpers ---------------------------------------------------------------------------


def _fail(why: str) -> FormatError:
    return FormatError(why)


def loads(payload: bytes) -> dict[str, Any]:
    """A JSON object from the broker: bounded size and depth, numbers as int/Decimal."""
    if len(payload) > MAX_MESSAGE:
        raise _fail("message of %d bytes (limit %d)" % (len(payload), MAX_MESSAGE))
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail("message is not UTF-8")
    depth = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise _fail("JSON nested deeper than %d" % MAX_DEPTH)
        elif ch in "]}":
            depth -= 1
    try:
        obj = json.loads(text, parse_float=Decimal, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise _fail("not valid JSON (%s)" % str(exc)[:60])
    if not isinstance(obj, dict):
        raise _fail("not a JSON object")
    return obj


def _no_constant(text: str) -> Any:
    raise ValueError("%s is not JSON" % text)


def _obj(parent: dict[str, Any], key: str, required: bool = True) -> dict[str, Any]:
    v = parent.get(key)
    if v is None and not required:
        return {}
    if not isinstance(v, dict):
        raise _fail("%s: expected an object" % key)
    return v


def _str(parent: dict[str, Any], key: str, required: bool = True) -> str | None:
    v = parent.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v or len(v) > 256:
        raise _fail("%s: expected a string" % key)
    return v


def _int(parent: dict[str, Any], key: str, lo: int, hi: int, required: bool = False) -> int | None:
    v = parent.get(key)
    if v is None and not required:
        return None
    if isinstance(v, str) and v.isdigit() and len(v) <= 20:  # protobuf JSON: 64-bit ints as strings
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise _fail("%s: expected an integer in %d..%d" % (key, lo, hi))
    return v


def _num(v: Any) -> int | Decimal | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int | Decimal):
        if isinstance(v, Decimal) and not v.is_finite():
            return None
        return v
    return None


def b64(text: Any, what: str, limit: int = MAX_FRM_PAYLOAD) -> bytes:
    """Strict base64 (RFC 4648, padding optional), at most ``limit`` bytes decoded."""
    if text is None or text == "":
        return b""
    if not isinstance(text, str) or len(text) > 4 * (limit // 3 + 2):
        raise _fail("%s: expected base64 of at most %d bytes" % (what, limit))
    padded = text + "=" * (-len(text) % 4)
    try:
        data = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise _fail("%s: not base64" % what)
    if len(data) > limit:
        raise _fail("%s: %d bytes (limit %d)" % (what, len(data), limit))
    return data


def parse_time(text: Any, what: str = "time") -> float:
    """RFC 3339 (as both network servers write it, up to nanoseconds) -> Unix seconds."""
    if not isinstance(text, str):
        raise _fail("%s: expected an RFC 3339 time" % what)
    m = _TIME_RE.match(text)
    if m is None:
        raise _fail("%s: %r is not an RFC 3339 time" % (what, text[:40]))
    y, mo, d, h, mi, s, frac, tz = m.groups()
    try:
        dt = datetime.datetime(int(y), int(mo), int(d), int(h), int(mi), min(int(s), 59))
    except ValueError:
        raise _fail("%s: %r is not a valid date" % (what, text[:40]))
    if tz in ("Z", "z"):
        offset = 0
    else:
        sign = -1 if tz[0] == "-" else 1
        digits = tz[1:].replace(":", "")
        offset = sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    base = dt.replace(tzinfo=datetime.UTC).timestamp() - offset
    if frac:
        base += int(frac) / 10 ** len(frac)
    return base


def _duration(text: Any) -> Decimal | None:
    """TTS's protobuf Duration ("0.991232s") -> seconds."""
    if not isinstance(text, str) or not text.endswith("s") or len(text) > 24:
        return None
    try:
        d = Decimal(text[:-1])
    except ArithmeticError:
        return None
    return d if d.is_finite() and d >= 0 else None


def check_eui(text: str, what: str = "DevEUI") -> str:
    if not _EUI_RE.match(text):
        raise _fail("%s: %r is not 16 hex digits" % (what, text[:40]))
    return text.lower()


def check_topic_level(text: str, what: str) -> str:
    if not text or any(c in text for c in "/+#\x00") or len(text) > 128:
        raise _fail("%s: %r cannot be a topic level" % (what, text[:40]))
    return text


# ---- subscriptions ---------------------------------------------------------------------


def subscriptions(fmt: str, application: str) -> list[str]:
    """The topic filters the bridge subscribes to."""
    if fmt == TTS:
        base = "v3/%s/devices/+/" % application
        return [base + "up", base + "down/+"]
    return ["application/%s/device/+/event/+" % application]


# ---- parsing ---------------------------------------------------------------------------


def parse(fmt: str, topic: str, payload: bytes) -> Event:
    if fmt == TTS:
        return parse_tts(topic, payload)
    if fmt == CHIRPSTACK:
        return parse_chirpstack(topic, payload)
    raise _fail("unknown format %r" % fmt)


def parse_tts(topic: str, payload: bytes) -> Event:
    levels = topic.split("/")
    if len(levels) < 5 or levels[0] != "v3" or levels[2] != "devices":
        raise _fail("not a The Things Stack topic")
    app, device_id, rest = levels[1], levels[3], levels[4:]
    if rest in (["down", "push"], ["down", "replace"]):
        # Downlinks queued by an application (this bridge among them): not events.
        return Other(TTS, device_id, "/".join(rest))
    msg = loads(payload)
    ids = _obj(msg, "end_device_ids")
    if _str(ids, "device_id") != device_id:
        raise _fail("end_device_ids.device_id is not the topic's %r" % device_id)
    app_ids = _obj(ids, "application_ids")
    app_id = _str(app_ids, "application_id")
    if app_id != app.split("@", 1)[0]:
        raise _fail("application_ids.application_id is not the topic's %r" % app)
    dev_eui = _str(ids, "dev_eui", required=False)
    if dev_eui is not None:
        dev_eui = check_eui(dev_eui)
    if rest == ["up"]:
        return _tts_uplink(app, device_id, dev_eui, ids, msg)
    if len(rest) == 2 and rest[0] == "down" and rest[1] in TTS_OUTCOMES:
        outcome, key = TTS_OUTCOMES[rest[1]]
        body = _obj(msg, key)
        reason = ""
        if outcome == FAILED:
            err = body.get("error")
            down = _obj(body, "downlink")
            if isinstance(err, dict):
                reason = str(err.get("name") or err.get("message_format") or "")[:120]
        else:
            down = body
        ref = None
        corr = down.get("correlation_ids")
        if isinstance(corr, list):
            for c in corr:
                if isinstance(c, str) and c.startswith(CORRELATION_PREFIX):
                    ref = c[len(CORRELATION_PREFIX) :]
                    break
        return Outcome(TTS, device_id, outcome, ref, reason)
    if len(rest) >= 1 and rest[0] in ("join", "down", "service", "location"):
        return Other(TTS, device_id, "/".join(rest))
    raise _fail("unknown The Things Stack topic suffix %r" % "/".join(rest))


def _tts_uplink(
    app: str, device_id: str, dev_eui: str | None, ids: dict[str, Any], msg: dict[str, Any]
) -> Uplink:
    up = _obj(msg, "uplink_message")
    # Protobuf JSON leaves zero values out: a missing f_cnt / f_port is 0.
    f_port = _int(up, "f_port", 0, 255) or 0
    f_cnt = _int(up, "f_cnt", 0, 0xFFFFFFFF) or 0
    data = b64(up.get("frm_payload"), "uplink_message.frm_payload")
    decoded = up.get("decoded_payload")
    if decoded is not None and not isinstance(decoded, dict):
        raise _fail("uplink_message.decoded_payload: expected an object")
    when_text = up.get("received_at") or msg.get("received_at")
    when = parse_time(when_text, "received_at")
    session = up.get("session_key_id")
    if not isinstance(session, str) or not session:
        dev_addr = ids.get("dev_addr")
        session = dev_addr if isinstance(dev_addr, str) else ""
    radio: dict[str, int | Decimal | None] = {}
    best_gw: str | None = None
    rx = up.get("rx_metadata")
    gws = 0
    if isinstance(rx, list):
        best: tuple[Decimal, Decimal] | None = None
        for r in rx[:64]:
            if not isinstance(r, dict):
                continue
            gws += 1
            rssi = _num(r.get("rssi", r.get("channel_rssi")))
            snr = _num(r.get("snr"))
            score = (Decimal(snr) if snr is not None else Decimal(-99), Decimal(rssi or -999))
            if best is None or score > best:
                best = score
                radio["rssi"], radio["snr"] = rssi, snr
                gw_ids = r.get("gateway_ids")
                if isinstance(gw_ids, dict):
                    name = gw_ids.get("gateway_id") or gw_ids.get("eui")
                    best_gw = name if isinstance(name, str) else None
    radio["gateways"] = gws
    settings = up.get("settings") if isinstance(up.get("settings"), dict) else {}
    assert isinstance(settings, dict)
    dr = settings.get("data_rate")
    lora = dr.get("lora") if isinstance(dr, dict) else None
    if isinstance(lora, dict):
        radio["sf"] = _num(lora.get("spreading_factor"))
        bw = _num(lora.get("bandwidth"))
        radio["bw"] = bw
    freq = settings.get("frequency")
    radio["frequency"] = int(freq) if isinstance(freq, str) and freq.isdigit() else _num(freq)
    radio["airtime"] = _duration(up.get("consumed_airtime"))
    radio["f_cnt"] = f_cnt
    radio["f_port"] = f_port
    profile = None
    version = up.get("version_ids")
    if isinstance(version, dict) and isinstance(version.get("model_id"), str):
        profile = version["model_id"]
    key = "tts/%s/%s/%s/%s" % (app, device_id, session, "-" if f_cnt is None else f_cnt)
    return Uplink(
        fmt=TTS,
        application=app,
        device_id=device_id,
        dev_eui=dev_eui,
        key=key,
        session=session,
        f_cnt=f_cnt,
        f_port=f_port,
        payload=data,
        decoded=decoded,
        time=when,
        profile=profile,
        gateway=best_gw,
        radio=radio,
        simulated=msg.get("simulated") is True,
    )


def parse_chirpstack(topic: str, payload: bytes) -> Event:
    levels = topic.split("/")
    if len(levels) != 6 or levels[0] != "application" or levels[2] != "device" or levels[4] != "event":
        raise _fail("not a ChirpStack event topic")
    app, dev_eui, kind = levels[1], check_eui(levels[3], "topic DevEUI"), levels[5]
    msg = loads(payload)
    info = _obj(msg, "deviceInfo")
    eui = _str(info, "devEui")
    assert eui is not None
    if check_eui(eui, "deviceInfo.devEui") != dev_eui:
        raise _fail("deviceInfo.devEui %s is not the topic's %s" % (eui.lower(), dev_eui))
    if _str(info, "applicationId") != app:
        raise _fail("deviceInfo.applicationId is not the topic's %r" % app)
    if kind == "up":
        return _cs_uplink(app, dev_eui, info, msg)
    if kind in ("ack", "txack"):
        ref = _str(msg, "queueItemId", required=False)
        if kind == "txack":
            return Outcome(CHIRPSTACK, dev_eui, SENT, ref)
        acked = msg.get("acknowledged") is True
        return Outcome(CHIRPSTACK, dev_eui, ACKED if acked else NACKED, ref)
    if kind == "log":
        code = msg.get("code")
        level = msg.get("level")
        ctx = msg.get("context") if isinstance(msg.get("context"), dict) else {}
        assert isinstance(ctx, dict)
        ref = ctx.get("queue_item_id")
        desc = str(msg.get("description") or "")[:120]
        if isinstance(code, str) and code.startswith("DOWNLINK") and isinstance(ref, str):
            return Outcome(CHIRPSTACK, dev_eui, FAILED, ref, "%s %s" % (code, desc))
        return Other(CHIRPSTACK, dev_eui, "log", "%s %s %s" % (level, code, desc))
    if kind in ("join", "status", "location", "integration"):
        return Other(CHIRPSTACK, dev_eui, kind)
    raise _fail("unknown ChirpStack event %r" % kind)


def _cs_uplink(app: str, dev_eui: str, info: dict[str, Any], msg: dict[str, Any]) -> Uplink:
    dedup = _str(msg, "deduplicationId")
    assert dedup is not None
    f_port = _int(msg, "fPort", 0, 255) or 0
    f_cnt = _int(msg, "fCnt", 0, 0xFFFFFFFF) or 0
    data = b64(msg.get("data"), "data")
    decoded = msg.get("object")
    if decoded is not None and not isinstance(decoded, dict):
        raise _fail("object: expected an object")
    when = parse_time(msg.get("time"), "time")
    session = msg.get("devAddr") if isinstance(msg.get("devAddr"), str) else ""
    assert isinstance(session, str)
    radio: dict[str, int | Decimal | None] = {}
    best_gw: str | None = None
    rx = msg.get("rxInfo")
    gws = 0
    if isinstance(rx, list):
        best: tuple[Decimal, Decimal] | None = None
        for r in rx[:64]:
            if not isinstance(r, dict):
                continue
            gws += 1
            rssi, snr = _num(r.get("rssi")), _num(r.get("snr"))
            score = (Decimal(snr) if snr is not None else Decimal(-99), Decimal(rssi or -999))
            if best is None or score > best:
                best = score
                radio["rssi"], radio["snr"] = rssi, snr
                gw = r.get("gatewayId")
                best_gw = gw if isinstance(gw, str) else None
    radio["gateways"] = gws
    tx = msg.get("txInfo") if isinstance(msg.get("txInfo"), dict) else {}
    assert isinstance(tx, dict)
    mod = tx.get("modulation")
    lora = mod.get("lora") if isinstance(mod, dict) else None
    if isinstance(lora, dict):
        radio["sf"] = _num(lora.get("spreadingFactor"))
        bw = _num(lora.get("bandwidth"))
        radio["bw"] = bw
    radio["frequency"] = _num(tx.get("frequency"))
    radio["dr"] = _int(msg, "dr", 0, 15) or 0
    radio["f_cnt"] = f_cnt
    radio["f_port"] = f_port
    radio["airtime"] = None
    profile = info.get("deviceProfileName") if isinstance(info.get("deviceProfileName"), str) else None
    return Uplink(
        fmt=CHIRPSTACK,
        application=app,
        device_id=dev_eui,
        dev_eui=dev_eui,
        key="cs/%s" % dedup,
        session=session,
        f_cnt=f_cnt,
        f_port=f_port,
        payload=data,
        decoded=decoded,
        time=when,
        profile=profile,
        gateway=best_gw,
        radio=radio,
    )


# ---- downlinks -------------------------------------------------------------------------


@dataclass
class Downlink:
    f_port: int
    payload: bytes | None = None
    obj: dict[str, Any] | None = None  # for the network server's own encoder
    confirmed: bool = False
    priority: str = "NORMAL"


def new_ref() -> str:
    return str(uuid.uuid4())


def downlink_message(
    fmt: str, application: str, device_id: str, down: Downlink, ref: str, replace: bool = False
) -> tuple[str, bytes]:
    """(topic, payload) that queues ``down`` at the network server; ``ref`` comes back
    with its outcome."""
    if not 1 <= down.f_port <= 223:
        raise _fail("f_port %d: application ports are 1..223" % down.f_port)
    if down.payload is not None and len(down.payload) > MAX_FRM_PAYLOAD:
        raise _fail("downlink of %d bytes (limit %d)" % (len(down.payload), MAX_FRM_PAYLOAD))
    data = base64.b64encode(down.payload or b"").decode("ascii")
    if fmt == TTS:
        check_topic_level(device_id, "device id")
        item: dict[str, Any] = {
            "f_port": down.f_port,
            "priority": down.priority,
            "confirmed": down.confirmed,
            "correlation_ids": [CORRELATION_PREFIX + ref],
        }
        if down.obj is not None:
            item["decoded_payload"] = down.obj
        else:
            item["frm_payload"] = data
        topic = "v3/%s/devices/%s/down/%s" % (application, device_id, "replace" if replace else "push")
        return topic, json.dumps({"downlinks": [item]}, separators=(",", ":")).encode()
    eui = check_eui(device_id)
    body: dict[str, Any] = {"id": ref, "devEui": eui, "confirmed": down.confirmed, "fPort": down.f_port}
    if down.obj is not None:
        body["object"] = down.obj
    else:
        body["data"] = data
    topic = "application/%s/device/%s/command/down" % (application, eui)
    return topic, json.dumps(body, separators=(",", ":")).encode()
