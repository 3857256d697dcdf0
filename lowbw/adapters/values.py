"""Named values from a sensor or a broker -> readings of an enrolled device.

Both adapters receive values by *name* (``temperature=21.5`` on a UART, a JSON
object on an MQTT topic) and must turn them into readings ``(slot, [v1, ...])``
of a device config (``lowbw.device.config``), whose slots list their fields in
order. The rules, shared by the serial gateway's line mode and the MQTT bridge:

* ``slot.field`` (``climate.temperature``) names a field of one slot directly.
* Otherwise slots are filled greedily, the slot with the most fields first (in
  config order among equals): a slot is used when ALL its fields are present,
  and each name is used once. With slots ``temperature`` (temperature) and
  ``climate`` (temperature, humidity), ``temperature=21.5 humidity=40`` is one
  ``climate`` reading and ``temperature=21.5`` alone a ``temperature`` reading.
* A name that belongs to a slot that could not be filled is an error naming
  what is missing (``slot climate needs humidity``); nothing of that input is
  sent. Names that belong to no slot are an error in strict mode (serial
  lines: a typo must not vanish silently) and ignored otherwise (MQTT objects
  commonly carry extras such as ``rssi``).

Values become what the device sends, exactly: with a field's ``scale`` s, a
decimal that is a whole number of 10^-s travels as that integer (``21.5`` at
scale 1 is 215; the proxy renders ``"21.5"``), anything else as a float (the
proxy renders its shortest repr). ``null``/``n/a`` is a failed sensor (None).
NaN, infinities, booleans and text that is not a number are errors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from lowbw.wire.errors import DecodeError

# A CBOR integer the device can send (and the proxy renders) without surprise.
INT_LIMIT = 2**63
NULL_WORDS = ("null", "none", "n/a", "na", "-")

Value = int | float | None
Reading = tuple[int, list[Value]]


class MappingError(DecodeError):
    """An input value or set of names does not fit the device's slots (the message says why)."""


def to_value(raw: object, scale: int = 0, name: str = "value") -> Value:
    """The number a device sends for ``raw`` (text, Decimal, int, float or None) at ``scale``."""
    if raw is None:
        return None
    if isinstance(raw, bool):
        raise MappingError("%s: %s is not a number" % (name, "true" if raw else "false"))
    if isinstance(raw, str):
        text = raw.strip()
        if text.lower() in NULL_WORDS:
            return None
        try:
            dec = Decimal(text)
        except (InvalidOperation, ValueError):
            shown = text if len(text) <= 24 else text[:21] + "..."
            raise MappingError("%s: %r is not a number" % (name, shown))
    elif isinstance(raw, Decimal):
        dec = raw
    elif isinstance(raw, int):
        dec = Decimal(raw)
    elif isinstance(raw, float):
        if not math.isfinite(raw):
            raise MappingError("%s: %r is not a finite number" % (name, raw))
        dec = Decimal(repr(raw))
    else:
        raise MappingError("%s: a %s is not a number" % (name, type(raw).__name__))
    if not dec.is_finite():
        raise MappingError("%s: %s is not a finite number" % (name, dec))
    try:
        scaled = dec.scaleb(scale)
        if scaled == scaled.to_integral_value():
            whole = int(scaled)
            if -INT_LIMIT < whole < INT_LIMIT:
                return whole
    except (InvalidOperation, OverflowError):
        pass
    f = float(dec)
    if not math.isfinite(f):
        raise MappingError("%s: %s is out of range" % (name, dec))
    return f


class SlotMapper:
    """Maps ``{name: raw value}`` to readings of one device config.

    ``slots`` is ``DeviceConfig.slots``: ``[(slot name, [(field, unit, scale), ...]), ...]``.
    ``rename`` maps input names to field names first (``{"t": "temperature"}``).
    """

    def __init__(
        self,
        slots: Sequence[tuple[str, Sequence[tuple[str, str, int]]]],
        rename: Mapping[str, str] | None = None,
        strict: bool = True,
    ) -> None:
        self.slots = [(str(s[0]), [(str(f[0]), int(f[2])) for f in s[1]]) for s in slots]
        self.rename = dict(rename or {})
        self.strict = strict
        self.by_name = {name: i for i, (name, _fields) in reversed(list(enumerate(self.slots)))}
        # Most fields first; config order among equals (sorted is stable).
        self.order = sorted(range(len(self.slots)), key=lambda i: -len(self.slots[i][1]))
        self.field_names = {f for _s, fields in self.slots for f, _scale in fields}

    def slot_index(self, ref: str | int) -> int:
        """A slot by name or index (an int, or digits); MappingError if there is none."""
        if isinstance(ref, int) and not isinstance(ref, bool):
            if 0 <= ref < len(self.slots):
                return ref
        elif isinstance(ref, str):
            if ref in self.by_name:
                return self.by_name[ref]
            if ref.isdigit() and int(ref) < len(self.slots):
                return int(ref)
        raise MappingError("no slot %r (slots: %s)" % (ref, ", ".join(n for n, _f in self.slots)))

    def fields_of(self, slot: int) -> list[str]:
        return [f for f, _scale in self.slots[slot][1]]

    def one(self, slot: int, raw: object) -> Reading:
        """A reading of a one-field slot from a single value."""
        name, fields = self.slots[slot]
        if len(fields) != 1:
            raise MappingError(
                "slot %s has %d fields (%s): send them by name"
                % (name, len(fields), ", ".join(f for f, _s in fields))
            )
        return slot, [to_value(raw, fields[0][1], fields[0][0])]

    def for_slot(self, slot: int, values: Mapping[str, object]) -> Reading:
        """A reading of ``slot`` taking each of its fields from ``values`` (extra names ignored)."""
        named = self._renamed(values)
        name, fields = self.slots[slot]
        missing = [f for f, _s in fields if f not in named and "%s.%s" % (name, f) not in named]
        if missing:
            raise MappingError("slot %s needs %s" % (name, ", ".join(missing)))
        out: list[Value] = []
        for f, scale in fields:
            raw = named["%s.%s" % (name, f)] if "%s.%s" % (name, f) in named else named[f]
            out.append(to_value(raw, scale, f))
        return slot, out

    def map(self, values: Mapping[str, object]) -> list[Reading]:
        """Readings for a set of named values (module docstring); MappingError says why not."""
        named = self._renamed(values)
        if not named:
            raise MappingError("no values")
        remaining = dict(named)
        got: dict[int, dict[str, object]] = {}
        for key in list(remaining):
            if "." in key:
                sname, fname = key.split(".", 1)
                slot = self.slot_index(sname)
                if fname not in self.fields_of(slot):
                    raise MappingError(
                        "slot %s has no field %s (fields: %s)"
                        % (self.slots[slot][0], fname, ", ".join(self.fields_of(slot)))
                    )
                got.setdefault(slot, {})[fname] = remaining.pop(key)
        for slot, part in got.items():
            missing = [f for f in self.fields_of(slot) if f not in part]
            if missing:
                raise MappingError("slot %s needs %s" % (self.slots[slot][0], ", ".join(missing)))
        for slot in self.order:
            if slot in got:
                continue
            fields = self.fields_of(slot)
            if all(f in remaining for f in fields):
                got[slot] = {f: remaining.pop(f) for f in fields}
        if remaining:
            partial = [k for k in remaining if k in self.field_names]
            if partial:
                key = partial[0]
                needs = []
                for slot in self.order:
                    fields = self.fields_of(slot)
                    if key in fields:
                        needs.append(
                            "slot %s needs %s"
                            % (self.slots[slot][0], ", ".join(f for f in fields if f not in remaining))
                        )
                raise MappingError("%s alone fills no slot: %s" % (key, "; ".join(needs)))
            if self.strict or not got:
                raise MappingError(
                    "unknown field%s %s (fields: %s)"
                    % (
                        "s" if len(remaining) > 1 else "",
                        ", ".join(sorted(remaining)),
                        ", ".join(sorted(self.field_names)),
                    )
                )
        readings: list[Reading] = []
        for slot in sorted(got):
            part = got[slot]
            readings.append((slot, [to_value(part[f], scale, f) for f, scale in self.slots[slot][1]]))
        return readings

    def _renamed(self, values: Mapping[str, object]) -> dict[str, object]:
        out: dict[str, object] = {}
        for key, raw in values.items():
            k = self.rename.get(key, key)
            if k in out:
                raise MappingError("%s given twice" % k)
            out[k] = raw
        return out


def describe(mapper: SlotMapper, readings: Sequence[Reading]) -> str:
    """``climate(215, 40)`` for logs."""
    return ", ".join(
        "%s(%s)" % (mapper.slots[slot][0], ", ".join("null" if v is None else repr(v) for v in vals))
        for slot, vals in readings
    )


def is_scalar(obj: Any) -> bool:
    """True if a decoded JSON/CBOR item is a single value rather than an object or array."""
    return not isinstance(obj, (dict, list, tuple))


def when_from_timestamp(raw: object, now_mono: float, now_wall: float, name: str = "time") -> float:
    """The monotonic time of a Unix timestamp (seconds, or milliseconds if > 1e11).

    A time in the future is taken as now: the proxy would otherwise date the
    reading after it was received.
    """
    v = to_value(raw, 0, name)
    if v is None:
        raise MappingError("%s: null is not a time" % name)
    ts = float(v)
    if ts > 1e11:
        ts /= 1000.0
    if ts <= 0:
        raise MappingError("%s: %s is not a Unix time" % (name, v))
    age = now_wall - ts
    return now_mono - (age if age > 0 else 0.0)


def unix_from_timestamp(raw: object, now_wall: float, name: str = "time") -> float:
    """Unix seconds of a stated measurement time (seconds, or milliseconds if > 1e11).

    A time in the future is taken as now: the proxy would otherwise date the
    reading after it was received.
    """
    v = to_value(raw, 0, name)
    if v is None:
        raise MappingError("%s: null is not a time" % name)
    if isinstance(v, int) and v > 10**11:
        return min(v / 1000.0, now_wall)  # exact ms: one division, no float product
    ts = float(v)
    if ts > 1e11:
        ts /= 1000.0
    if ts <= 0:
        raise MappingError("%s: %s is not a Unix time" % (name, v))
    return min(ts, now_wall)
