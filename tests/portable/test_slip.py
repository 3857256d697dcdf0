"""SLIP framing: RFC 1055 escaping, incremental decoding, bounded buffers."""

from lowbw.wire import slip
from lowbw.wire.errors import DecodeError, EncodeError
from tests.portable.check import raises


def test_escaping():
    assert slip.encode(b"\x01\xc0\x02\xdb\x03") == b"\xc0\x01\xdb\xdc\x02\xdb\xdd\x03\xc0"


def test_round_trip_byte_by_byte():
    frames = [b"hello", b"\xc0\xdb\xc0", bytes(range(256))]
    wire = b"".join(slip.encode(f) for f in frames)
    d = slip.Decoder()
    got = []
    for i in range(len(wire)):
        got.extend(d.feed(wire[i:i + 1]))
    assert got == frames and d.frames == 3


def test_noise_before_a_frame_is_a_dropped_frame_not_a_crash():
    d = slip.Decoder()
    # Garbage then END then a good frame: the garbage surfaces as one frame the
    # caller rejects (e.g. split_addressed or the frame layer), then the good one.
    got = d.feed(b"\x99\x98" + slip.encode(b"ok"))
    assert got == [b"\x99\x98", b"ok"]


def test_bad_escape_drops_that_frame_only():
    d = slip.Decoder()
    got = d.feed(b"\xc0ab\xdb\x01cd\xc0" + slip.encode(b"next"))
    assert got == [b"next"] and d.bad_escape == 1


def test_oversize_dropped_and_counted():
    d = slip.Decoder(max_frame=8)
    got = d.feed(slip.encode(b"x" * 9) + slip.encode(b"y" * 8))
    assert got == [b"y" * 8] and d.oversize == 1
    assert len(d.buf) == 0


def test_addressed_frames():
    f = slip.encode_addressed(b"\x01\x02", b"\x00\x00\x2adata")
    (frame,) = slip.Decoder().feed(f)
    assert slip.split_addressed(frame) == (b"\x01\x02", b"\x00\x00\x2adata")
    assert slip.split_addressed(b"\x00\x81") == (b"", b"\x81")
    raises(DecodeError, slip.split_addressed, b"")
    raises(DecodeError, slip.split_addressed, b"\x11" + bytes(40))
    raises(DecodeError, slip.split_addressed, b"\x02\x01\x02")
    raises(EncodeError, slip.encode_addressed, bytes(17), b"x")
