"""Per-device-profile payload decoding, reading slots, and commands for the LoRaWAN bridge.

A *profile* (``[lorawan.profile.NAME]`` in the bridge config; docs/lorawan.md)
says what an uplink of a device becomes:

- ``fields``: the fields of the network server's decoded payload
  (``decoded_payload`` / ``object``) that the reading carries, with unit and
  decimal scale;
- ``decoder``: for devices without a payload decoder at the network server, a
  list of integers read from FRMPayload in order, each ``{name, type, unit,
  scale}``; ``type`` is ``u8 i8 u16 i16 u24 i24 u32 i32`` with ``be`` (default)
  or ``le``; the integer is the value in units of 10^-scale (``i16`` 215 with
  scale 1 is 21.5), which is exactly how lowbw sends a scaled value;
- ``radio``: which radio metadata ride along (``RADIO_FIELDS``);
- ``commands``: named downlinks (``reboot = {f_port = 10, hex = "01"}``).

Without ``fields`` or ``decoder`` a device's fields are taken from its first
decoded payload (numbers only; the decimal places give the scale).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from lowbw.lorawan.formats import Downlink, FormatError

# name -> (unit, scale)
RADIO_FIELDS: dict[str, tuple[str, int]] = {
    "rssi": ("dBm", 0),
    "snr": ("dB", 1),
    "sf": ("", 0),
    "bw": ("Hz", 0),
    "dr": ("", 0),
    "frequency": ("Hz", 0),
    "f_cnt": ("", 0),
    "f_port": ("", 0),
    "airtime": ("s", 6),
    "gateways": ("", 0),
}
DEFAULT_RADIO = ("rssi", "snr", "sf", "frequency", "f_cnt", "airtime", "gateways")
MAX_VALUES = 16
OUTCOME_SLOTS = ("downlink_sent", "downlink_acked", "downlink_nacked", "downlink_failed")
UPLINK_SLOT = "uplink"

_TYPE_RE = re.compile(r"([ui])(8|16|24|32)(be|le)?\Z")
_NAME_RE = re.compile(r"[A-Za-z0-9_][\w.-]{0,31}\Z")


@dataclass
class FieldSpec:
    name: str
    unit: str = ""
    scale: int = 0
    type: str | None = None  # decoder fields only

    def schema(self) -> dict[str, Any]:
        return {"name": self.name, "unit": self.unit, "scale": self.scale}


@dataclass
class Profile:
    name: str
    fields: list[FieldSpec] = field(default_factory=list)
    decoder: list[FieldSpec] = field(default_factory=list)
    radio: list[str] = field(default_factory=lambda: list(DEFAULT_RADIO))
    commands: dict[str, Downlink] = field(default_factory=dict)

    def check(self) -> None:
        if self.fields and self.decoder:
            raise ValueError("give fields or decoder, not both")
        for f in self.decoder:
            if f.type is None or not _TYPE_RE.match(f.type):
                raise ValueError("decoder field %s: type %r is not u8/i16/u32le/..." % (f.name, f.type))
        for r in self.radio:
            if r not in RADIO_FIELDS:
                raise ValueError("radio field %r unknown (known: %s)" % (r, ", ".join(RADIO_FIELDS)))
        for f in self.fields + self.decoder:
            if not _NAME_RE.match(f.name):
                raise ValueError("field name %r: 1..32 letters, digits, _ . -" % f.name)
        if len(self.fields) + len(self.decoder) + len(self.radio) > MAX_VALUES:
            raise ValueError("at most %d fields in all (radio fields included)" % MAX_VALUES)


def decode_raw(spec: list[FieldSpec], data: bytes) -> dict[str, Decimal]:
    """Values from ``data`` as the decoder says (integer x 10^-scale, exact); FormatError
    if it is too short."""
    out: dict[str, Decimal] = {}
    pos = 0
    for f in spec:
        m = _TYPE_RE.match(f.type or "")
        assert m is not None
        signed, bits, order = m.group(1) == "i", int(m.group(2)), m.group(3) or "be"
        n = bits // 8
        if pos + n > len(data):
            raise FormatError("payload of %d bytes is too short for the decoder (%s)" % (len(data), f.name))
        raw = int.from_bytes(data[pos : pos + n], "big" if order == "be" else "little", signed=signed)
        out[f.name] = Decimal(raw).scaleb(-f.scale)
        pos += n
    return out


def _scale_of(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return 0
    if isinstance(v, Decimal) and v.is_finite():
        exp = v.normalize().as_tuple().exponent
        return max(0, -int(exp)) if isinstance(exp, int) else 0
    return None


def fields_from_decoded(decoded: dict[str, Any], room: int) -> list[FieldSpec]:
    """A device's fields guessed from its first decoded payload (numbers, sorted by name)."""
    out: list[FieldSpec] = []
    for name in sorted(decoded):
        scale = _scale_of(decoded[name])
        if scale is None or not _NAME_RE.match(name) or len(out) >= room:
            continue
        out.append(FieldSpec(name, "", min(scale, 9)))
    return out


def uplink_slots(payload_fields: list[FieldSpec], radio: list[str]) -> list[dict[str, Any]]:
    """The slots of an auto-enrolled LoRaWAN device: ``uplink`` then the downlink outcomes."""
    names = {f.name for f in payload_fields}
    fields = [f.schema() for f in payload_fields]
    fields += [
        {"name": r, "unit": RADIO_FIELDS[r][0], "scale": RADIO_FIELDS[r][1]} for r in radio if r not in names
    ]
    if not fields:
        fields = [{"name": "f_cnt", "unit": "", "scale": 0}]
    slots = [{"name": UPLINK_SLOT, "fields": fields}]
    for s in OUTCOME_SLOTS:
        slots.append({"name": s, "fields": [{"name": "command", "unit": "", "scale": 0}]})
    return slots


# ---- commands -> downlinks -------------------------------------------------------------


def _payload_of(obj: dict[str, Any]) -> bytes | None:
    if "hex" in obj:
        h = obj["hex"]
        if not isinstance(h, str):
            raise FormatError("hex: expected a string")
        try:
            return bytes.fromhex(h.replace(" ", ""))
        except ValueError:
            raise FormatError("hex: %r is not hex" % h[:40])
    for key in ("base64", "frm_payload", "data"):
        if key in obj:
            v = obj[key]
            if not isinstance(v, str):
                raise FormatError("%s: expected base64 text" % key)
            try:
                return base64.b64decode(v + "=" * (-len(v) % 4), validate=True)
            except (binascii.Error, ValueError):
                raise FormatError("%s: not base64" % key)
    return None


def downlink_from_object(obj: dict[str, Any]) -> Downlink:
    port = obj.get("f_port", obj.get("fPort"))
    if not isinstance(port, int) or isinstance(port, bool):
        raise FormatError("a downlink needs f_port (1..223)")
    payload = _payload_of(obj)
    decoded = obj.get("object", obj.get("decoded_payload"))
    if decoded is not None and not isinstance(decoded, dict):
        raise FormatError("object: expected a JSON object")
    if payload is None and decoded is None:
        raise FormatError("a downlink needs hex, base64 or object")
    confirmed = obj.get("confirmed", False)
    if not isinstance(confirmed, bool):
        raise FormatError("confirmed: expected true or false")
    down = Downlink(
        f_port=port, payload=payload if decoded is None else None, obj=decoded, confirmed=confirmed
    )
    if not 1 <= port <= 223:
        raise FormatError("f_port %d: application ports are 1..223" % port)
    if down.payload is not None and len(down.payload) > 242:
        raise FormatError("downlink of %d bytes (limit 242)" % len(down.payload))
    return down


def parse_command(body: str, profile: Profile | None) -> Downlink:
    """A command's text -> a downlink. Forms (docs/lorawan.md "Commands"):
    a profile's command name (``reboot``), ``PORT HEX [confirmed]`` (``15 beef``),
    or JSON ``{"f_port": 15, "hex"|"base64": ..., "object": {...}, "confirmed": true}``."""
    text = body.strip()
    if not text:
        raise FormatError("empty command")
    if text.startswith("{"):
        try:
            obj = json.loads(text, parse_float=Decimal)
        except ValueError:
            raise FormatError("command is not valid JSON")
        if not isinstance(obj, dict):
            raise FormatError("command is not a JSON object")
        obj = _plain(obj)
        return downlink_from_object(obj)
    words = text.split()
    if profile is not None and words[0] in profile.commands:
        named = profile.commands[words[0]]
        confirmed = named.confirmed or (len(words) > 1 and words[1] == "confirmed")
        return Downlink(named.f_port, named.payload, named.obj, confirmed, named.priority)
    if words[0].isdigit() and len(words) in (2, 3):
        confirmed = len(words) == 3
        if confirmed and words[2] != "confirmed":
            raise FormatError("expected PORT HEX [confirmed]")
        return downlink_from_object({"f_port": int(words[0]), "hex": words[1], "confirmed": confirmed})
    known = ", ".join(sorted(profile.commands)) if profile is not None and profile.commands else "none"
    raise FormatError(
        "unknown command %r (named commands: %s; or PORT HEX, or JSON)" % (words[0][:20], known)
    )


def _plain(obj: Any) -> Any:
    """Decimals back to int/float for the network server's JSON encoder."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, Decimal):
        try:
            return int(obj) if obj == obj.to_integral_value() else float(obj)
        except (InvalidOperation, OverflowError):
            return float(obj)
    return obj
