"""Sensor readings payload."""

from lowbw.wire import reading
from lowbw.wire.errors import DecodeError, EncodeError, LimitError
from tests.portable.check import raises, unhex

# Need code the device does not freeze (the proxy's side, or names the
# device build leaves out): run on the full tree only (tests/portable/mp_run.py).
FULL_TREE = (
    "test_bad_payloads",
    "test_batch_with_ages_and_absolute_time",
    "test_largest_batch_round_trips",
    "test_limits",
    "test_measured_at",
    "test_single_reading_now_is_five_bytes",
)



def test_single_reading_now_is_five_bytes():
    p = reading.encode_readings([(0, [21.5], 0)])
    assert p == unhex("82 00 f9 4d 60")
    assert reading.decode_readings(p) == [(0, [21.5], 0)]


def test_scaled_integer_is_smaller_still():
    p = reading.encode_readings([(1, [215], 0)])
    assert p == unhex("82 01 18 d7")


def test_batch_with_ages_and_absolute_time():
    rs = [(0, [21.5], -30), (1, [40, 1013], -2.5), (2, [None], 1795666000)]
    p = reading.encode_readings(rs)
    assert reading.decode_readings(p) == rs


def test_measured_at():
    assert reading.measured_at_ms(0, 1000000) == 1000000
    assert reading.measured_at_ms(-2.5, 1000000) == 997500
    assert reading.measured_at_ms(1700000000, 5) == 1700000000000


def test_bad_payloads():
    cases = [
        b"", b"\x80", b"\x81\x00", b"\x82\x00\x61a", b"\x82\x19\x01\x00\x01",
        b"\x82\xf5\x01", b"\x82\x00\xf5", b"\x82\x81\x00\x01", b"\x81\x83\x00\x00\x01\x01",
        b"\xa1\x00\x00", b"\x82\x20\x01", b"\x82\x00\x01\xff",
    ]
    for c in cases:
        raises(DecodeError, reading.decode_readings, c)
    raises(DecodeError, reading.decode_readings, b"\x81\x83\xf9\x7e\x00\x00\x01")


def test_limits():
    many = [[0, 0, 1]] * (reading.MAX_READINGS + 1)
    from lowbw.wire import cbor
    raises(LimitError, reading.decode_readings, cbor.dumps(many))
    raises(EncodeError, reading.encode_readings, [])
    raises(EncodeError, reading.encode_readings, [(300, [1], 0)])
    raises(EncodeError, reading.encode_readings, [(0, [True], 0)])
    raises(EncodeError, reading.encode_readings, [(0, [], 0)])


def test_largest_batch_round_trips():
    rs = [(i % 256, [i] * reading.MAX_VALUES, -i) for i in range(reading.MAX_READINGS)]
    assert reading.decode_readings(reading.encode_readings(rs)) == [(s, v, t) for s, v, t in rs]
