"""Sensor readings -> Matrix event content (the sensor profile, proxy side).

A device sends ``[slot, v1, ..., vn]`` (``lowbw.wire.reading``); its enrolled
schema says what slot ``slot`` means::

    {"name": "climate", "fields": [{"name": "temperature", "unit": "°C", "scale": 1},
                                   {"name": "humidity", "unit": "%", "scale": 0}]}

The proxy turns one reading into the content of one ``m.room.message`` event::

    {"msgtype": "m.notice",
     "body": "climate: temperature 21.5 °C, humidity 40 %",
     "org.lowbw.reading": {"device": "sensor1", "slot": 0, "name": "climate",
                           "seq": 4711, "measured_at": 1795666000123,
                           "values": [{"name": "temperature", "value": "21.5", "unit": "°C"},
                                      {"name": "humidity", "value": "40", "unit": "%"}]}}

Values are decimal strings, exact, because Matrix canonical JSON has no floats:

* an integer ``v`` with field scale ``s`` means ``v * 10**-s``: ``215`` at
  scale 1 is ``"21.5"``, ``-5`` at scale 2 is ``"-0.05"``, ``2150`` at scale 2
  is ``"21.50"`` (the scale is the precision, so trailing zeros stay), ``7`` at
  scale -2 is ``"700"``. Computed on integers, never through a float.
* a float is written with Python's shortest repr, the decimal that reads back
  as exactly that float, in positional notation (``1e-07`` -> ``"0.0000001"``,
  ``1e+16`` -> ``"10000000000000000"``); the scale is ignored. NaN and the
  infinities are not numbers a sensor measured: they become null.
* null (a failed sensor) stays JSON null and reads ``n/a`` in the body.

Body: one field named like its slot reads ``temperature 21.5 °C``; otherwise
``slot: field value unit, field value unit``. A missing or empty unit is
left out. A request with several readings makes one event each; they share
``seq`` (the device's message number) and carry ``index`` (0, 1, ...).
``seq`` counts from 0 again when the device starts a new counter epoch.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

from lowbw.wire.errors import DecodeError

EVENT_TYPE = "m.room.message"
CONTENT_KEY = "org.lowbw.reading"
MAX_SCALE = 30


class SchemaError(DecodeError):
    """The reading does not fit the device's schema (unknown slot, wrong number of values)."""


def decimal_string(value: int | float | None, scale: int = 0) -> str | None:
    """The exact decimal text of a reading value (module docstring)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        if scale <= 0:
            return str(value * 10 ** (-scale))
        sign = "-" if value < 0 else ""
        digits = str(abs(value)).rjust(scale + 1, "0")
        return "%s%s.%s" % (sign, digits[:-scale], digits[-scale:])
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        text = format(Decimal(repr(value)), "f")
        # -0.0 and 0.0 are both "0" to a reader; repr keeps the sign, keep it too.
        return text
    raise SchemaError("a reading value is a number or null")


def _field_scale(spec: dict[str, Any]) -> int:
    scale = spec.get("scale", 0)
    if not isinstance(scale, int) or isinstance(scale, bool) or abs(scale) > MAX_SCALE:
        return 0
    return scale


def _field_text(name: str, value: str | None, unit: str) -> str:
    text = "%s %s" % (name, "n/a" if value is None else value)
    if unit and value is not None:
        text += " " + unit
    return text


def slot_schema(slots: list[dict[str, Any]], slot: int) -> dict[str, Any]:
    if not 0 <= slot < len(slots) or not isinstance(slots[slot], dict):
        raise SchemaError("unknown slot %d" % slot)
    return slots[slot]


def render(
    device: str,
    slots: list[dict[str, Any]],
    slot: int,
    values: list[Any],
    seq: int,
    measured_at: int,
    index: int | None = None,
) -> dict[str, Any]:
    """Event content for one reading; SchemaError if it does not fit the schema."""
    schema = slot_schema(slots, slot)
    fields = schema.get("fields")
    if not isinstance(fields, list) or not fields:
        raise SchemaError("slot %d has no fields" % slot)
    if len(values) != len(fields):
        raise SchemaError("slot %d takes %d value(s), got %d" % (slot, len(fields), len(values)))
    slot_name = str(schema.get("name") or "slot%d" % slot)
    out_values = []
    parts = []
    for spec, raw in zip(fields, values, strict=True):
        if not isinstance(spec, dict):
            raise SchemaError("slot %d has a malformed field" % slot)
        name = str(spec.get("name") or "value")
        unit = spec.get("unit") or ""
        if not isinstance(unit, str):
            unit = str(unit)
        value = decimal_string(raw, _field_scale(spec))
        entry: dict[str, Any] = {"name": name, "value": value}
        if unit:
            entry["unit"] = unit
        out_values.append(entry)
        parts.append(_field_text(name, value, unit))
    if len(fields) == 1 and parts and str(fields[0].get("name") or "value") == slot_name:
        body = parts[0]
    else:
        body = "%s: %s" % (slot_name, ", ".join(parts))
    reading: dict[str, Any] = {
        "device": device,
        "slot": slot,
        "name": slot_name,
        "seq": seq,
        "measured_at": measured_at,
        "values": out_values,
    }
    if index is not None:
        reading["index"] = index
    return {"msgtype": "m.notice", "body": body, CONTENT_KEY: reading}


def txn_id(device: str, msgnum: int, index: int, epoch: int = 0) -> str:
    """Matrix transaction ID of reading ``index`` of message ``msgnum``:
    ``lowbw.<device>.<epoch as 8 hex digits>.<msgnum>.<index>``, the same on
    every retry, so a retried send never makes a second event. The counter
    epoch (``lowbw.wire.handshake``; 0 for a device that never announced one)
    keeps the numbers of a device that lost its store and counts from 0 again
    apart from those it used before."""
    return "lowbw.%s.%08x.%d.%d" % (device, epoch, msgnum, index)


def full_msgnum(mid: int, top: int) -> int:
    """The device's full message number: the value with low 16 bits ``mid``
    nearest the highest one seen so far (``top``, -1 before any)."""
    mid &= 0xFFFF
    n = top + ((mid - top + 0x8000) & 0xFFFF) - 0x8000
    if n < 0:
        n += 0x10000
    return n
