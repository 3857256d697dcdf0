"""SLIP: any frames survive any chunking; any byte soup decodes without raising."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lowbw.wire import slip
from lowbw.wire.errors import DecodeError


@given(st.lists(st.binary(min_size=1, max_size=60), max_size=8), st.lists(st.integers(1, 20), max_size=30))
def test_round_trip_any_chunking(frames: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(slip.encode(f) for f in frames)
    d = slip.Decoder()
    got: list[bytes] = []
    pos = 0
    for c in cuts:
        got.extend(d.feed(wire[pos:pos + c]))
        pos += c
    got.extend(d.feed(wire[pos:]))
    assert got == frames


@given(st.binary(max_size=300), st.integers(1, 64))
def test_garbage_never_raises_and_stays_bounded(data: bytes, limit: int) -> None:
    d = slip.Decoder(max_frame=limit)
    for f in d.feed(data):
        assert 0 < len(f) <= limit
        try:
            slip.split_addressed(f)
        except DecodeError:
            pass
    assert len(d.buf) <= limit
