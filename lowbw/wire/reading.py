"""The sensor profile's payload: compact readings, expanded by the proxy.

A reading is (slot, values, when). ``slot`` is a small integer the device and
proxy agreed at enrollment (it names the event type, field names and units);
``values`` are numbers; ``when`` says when it was measured. On the wire the
payload of a request to the reading route (``routes.ROUTE_READING``, ``v``)
is one CBOR array in one of two shapes:

    [slot, v1, ..., vn]                     one reading, measured now
    [[t, slot, v1, ..., vn], ...]           one or more readings with times

``t`` is 0 for "now", a negative number for an age in seconds before the
request was sent (the device needs only a monotonic clock), or a positive
number for an absolute Unix time in seconds (a device with a real clock).
The first shape exists because it is the common case and costs nothing for
time: ``[0, 21.5]`` is 5 bytes.

Values are CBOR integers or floats (shortest exact float: float16 when it is
exact). Devices that want exact decimals send scaled integers and the slot's
schema carries the decimal scale (the proxy renders decimal strings, see
docs/PROTOCOL.md "Sensor profile"). ``null`` is allowed for a failed sensor.

Shared with MicroPython.
"""

from lowbw.wire import cbor
from lowbw.wire._compat import const
from lowbw.wire.errors import DecodeError, EncodeError, LimitError

MAX_READINGS = const(64)
MAX_VALUES = const(16)
MAX_SLOT = const(255)


def _check_value(v):
    # bool is a subclass of int on CPython; a sensor value is never a bool.
    if v is None or v is True or v is False:
        return v is None
    return isinstance(v, (int, float))


def encode_readings(readings):
    """CBOR payload for a list of (slot, values, t) tuples; t is 0 for now."""
    if not readings:
        raise EncodeError("no readings")
    if len(readings) > MAX_READINGS:
        raise EncodeError("more than %d readings in one request" % MAX_READINGS)
    for slot, values, t in readings:
        if not (isinstance(slot, int) and 0 <= slot <= MAX_SLOT):
            raise EncodeError("slot must be 0..%d" % MAX_SLOT)
        if not values or len(values) > MAX_VALUES:
            raise EncodeError("1..%d values per reading" % MAX_VALUES)
        for v in values:
            if not _check_value(v):
                raise EncodeError("reading values are numbers or None")
        if not isinstance(t, (int, float)) or t is True or t is False:
            raise EncodeError("reading time must be a number")
    if len(readings) == 1 and readings[0][2] == 0:
        slot, values, _ = readings[0]
        return cbor.dumps([slot] + list(values))
    return cbor.dumps([[t, slot] + list(values) for slot, values, t in readings])


def _reading(items, with_time):
    pos = 1 if with_time else 0
    if len(items) < pos + 2:
        raise DecodeError("reading needs a slot and at least one value")
    if len(items) > pos + 1 + MAX_VALUES:
        raise LimitError("too many values in one reading")
    t = 0
    if with_time:
        t = items[0]
        if not isinstance(t, (int, float)) or t is True or t is False:
            raise DecodeError("reading time must be a number")
        if t != t or t in (float("inf"), float("-inf")):
            raise DecodeError("reading time must be finite")
    slot = items[pos]
    if not isinstance(slot, int) or slot is True or slot is False or not 0 <= slot <= MAX_SLOT:
        raise DecodeError("bad slot")
    values = items[pos + 1:]
    for v in values:
        if not _check_value(v):
            raise DecodeError("reading values are numbers or null")
    return (slot, values, t)


def decode_readings(payload):
    """List of (slot, values, t) from a reading-route payload; DecodeError if malformed."""
    obj = cbor.loads(payload, max_depth=3, max_items=1 + MAX_READINGS * (MAX_VALUES + 3))
    if not isinstance(obj, list) or not obj:
        raise DecodeError("readings payload must be a non-empty array")
    if isinstance(obj[0], list):
        if len(obj) > MAX_READINGS:
            raise LimitError("too many readings in one request")
        out = []
        for item in obj:
            if not isinstance(item, list):
                raise DecodeError("mixed reading shapes")
            out.append(_reading(item, True))
        return out
    return [_reading(obj, False)]


def measured_at_ms(t, received_ms):
    """Unix milliseconds a reading was measured, from its ``t`` and the time
    (Unix ms) the proxy received the request."""
    if t == 0:
        return received_ms
    if t < 0:
        return received_ms + int(t * 1000)
    return int(t * 1000)
