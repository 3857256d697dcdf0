"""Differential and fuzz tests: lowbw.wire.coap against aiocoap 0.4.17.

aiocoap's codec normalises option *values* by the option's registered format
(it decodes and re-encodes them), so the random generator asks aiocoap for each
option number's format and draws only values that survive that:

* UintOption, ContentFormatOption, BlockOption (6, 7, 12, 13, 14, 16, 17, 23,
  27, 28, 60, 258): minimal-length uints (aiocoap drops leading zeros);
* StringOption (3, 8, 11, 15, 20, 35, 39): valid UTF-8 (aiocoap raises
  UnicodeDecodeError otherwise);
* everything else, including unknown, critical and private numbers: any bytes.

aiocoap does not care about repeatability or criticality at the codec level, so
repeats and unknown critical options are drawn freely. Code 0.00 is drawn only
as a bare 4-byte Empty message, which is all RFC 7252 §4.1 allows (we reject
more; aiocoap does not). The places where the two codecs deliberately differ
are pinned in test_known_divergences.
"""

import random
import warnings

from aiocoap import Message as AMessage
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.optiontypes import (
    BlockOption,
    ContentFormatOption,
    OpaqueOption,
    StringOption,
    UintOption,
)
from hypothesis import given
from hypothesis import strategies as st

from lowbw.wire import coap
from lowbw.wire.coap import Message
from lowbw.wire.errors import DecodeError

N_MESSAGES = 1500

_UINT_FORMATS = (UintOption, ContentFormatOption, BlockOption)
_BOUNDARY_NUMBERS = [0, 1, 12, 13, 14, 268, 269, 270, 2048, 65000, 65001, 65535]


def _format(number):
    return OptionNumber(number).format


def _option_number(rng):
    r = rng.random()
    if r < 0.5:
        return rng.randrange(0, 65)
    if r < 0.7:
        return rng.choice([1, 3, 4, 5, 6, 7, 8, 9, 11, 12, 14, 15, 17, 20, 23, 27, 28, 35, 39, 60, 258, 292])
    if r < 0.8:
        return rng.choice(_BOUNDARY_NUMBERS)
    if r < 0.9:
        return rng.randrange(0, 1100)
    return rng.randrange(0, 65536)


def _length(rng):
    r = rng.random()
    if r < 0.7:
        return rng.randrange(0, 13)
    if r < 0.9:
        return rng.randrange(13, 269)
    return rng.randrange(269, 700)


def _value(rng, number):
    fmt = _format(number)
    if fmt in _UINT_FORMATS:
        return coap.uint_encode(rng.randrange(0, 1 << (8 * rng.randrange(0, 5))))
    if fmt is StringOption:
        n = _length(rng)
        text = "".join(
            chr(rng.choice((rng.randrange(0x20, 0x7F), rng.randrange(0xA0, 0x3000)))) for _ in range(n)
        )
        return text.encode("utf-8")
    assert fmt is OpaqueOption, fmt
    return rng.randbytes(_length(rng))


def random_message(rng):
    mtype = rng.randrange(4)
    mid = rng.randrange(0x10000)
    if rng.random() < 0.05:
        return Message(mtype, coap.EMPTY, mid)
    code = rng.randrange(1, 256)
    token = rng.randbytes(rng.randrange(9))
    nums = sorted(_option_number(rng) for _ in range(rng.choice((0, 1, 2, 3, 5, 8))))
    options = [(n, _value(rng, n)) for n in nums]
    payload = rng.randbytes(rng.choice((0, 0, 1, 5, 40, 300)))
    return Message(mtype, code, mid, token, options, payload)


def _fields_of_aiocoap(am):
    return (
        int(am.mtype),
        int(am.code),
        am.mid,
        bytes(am.token),
        [(int(o.number), o.encode()) for o in am.opt.option_list()],
        bytes(am.payload),
    )


def _fields(m):
    return (m.mtype, m.code, m.mid, m.token, m.options, m.payload)


def _to_aiocoap(m):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        am = AMessage(code=m.code, _mtype=m.mtype, _mid=m.mid, _token=m.token, payload=m.payload)
    for number, raw in m.options:
        am.opt.add_option(OptionNumber(number).create_option(decode=raw))
    return am


def test_differential_random_messages():
    rng = random.Random(7252)
    ours_read_by_aiocoap = 0
    aiocoap_read_by_ours = 0
    same_bytes = 0
    extended = 0
    for _ in range(N_MESSAGES):
        m = random_message(rng)
        wire = m.encode()
        # our encoding -> aiocoap's decoder
        assert _fields_of_aiocoap(AMessage.decode(wire)) == _fields(m), (m, wire.hex())
        ours_read_by_aiocoap += 1
        # aiocoap's encoding of the same message -> our decoder
        theirs = _to_aiocoap(m).encode()
        assert _fields(coap.decode(theirs)) == _fields(m), (m, theirs.hex())
        aiocoap_read_by_ours += 1
        # both use the shortest delta/length forms, so the bytes agree too
        assert theirs == wire
        same_bytes += 1
        extended += any(len(v) >= 13 for _, v in m.options) or any(
            b - a >= 13 for (a, _), (b, _) in zip([(0, b"")] + m.options, m.options, strict=False)
        )
    assert ours_read_by_aiocoap >= 1000
    assert aiocoap_read_by_ours >= 1000
    assert same_bytes >= 1000
    assert extended >= 300  # the 13/14 extended forms were really exercised


def test_known_divergences():
    # Non-minimal uint: we keep the raw bytes, aiocoap re-encodes minimally.
    wire = bytes.fromhex("40010001d2010005")  # Max-Age (14) = 00 05
    ours = coap.decode(wire)
    assert ours.options == [(14, b"\x00\x05")] and coap.max_age(ours) == 5
    assert [o.encode() for o in AMessage.decode(wire).opt.option_list()] == [b"\x05"]
    # RFC 7252 §3 format errors that aiocoap lets through and we reject.
    for hx in ("40010001ff", "4f010001", "60000001ff01", "61000001aa"):
        AMessage.decode(bytes.fromhex(hx))
        try:
            coap.decode(bytes.fromhex(hx))
        except DecodeError:
            pass
        else:
            raise AssertionError(hx)


def _check_decode_invariant(data):
    try:
        m = coap.decode(data)
    except DecodeError:
        return False
    # Shortest forms are unique, so anything we accept is canonical.
    assert m.encode() == bytes(data)
    try:
        am = AMessage.decode(bytes(data))
    except UnicodeDecodeError:
        # aiocoap insists on UTF-8 in string options; we leave that to the getters.
        assert any(_format(n) is StringOption for n, _ in m.options)
        return True
    assert (int(am.mtype), int(am.code), am.mid, bytes(am.token), bytes(am.payload)) == (
        m.mtype,
        m.code,
        m.mid,
        m.token,
        m.payload,
    )
    assert [int(o.number) for o in am.opt.option_list()] == [n for n, _ in m.options]
    return True


@given(st.binary(max_size=80))
def test_fuzz_random_bytes(data):
    _check_decode_invariant(data)


@given(st.binary(min_size=4, max_size=80))
def test_fuzz_random_bytes_with_valid_header(data):
    # Force version 1 and a sane TKL so the fuzz reaches the option parser.
    data = bytes([0x40 | (data[0] & 0x37)]) + data[1:]
    _check_decode_invariant(data)


@st.composite
def mutated_messages(draw):
    rng = random.Random(draw(st.integers(0, 2**32)))
    wire = bytearray(random_message(rng).encode())
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(("cut", "set", "insert", "delete")))
        pos = draw(st.integers(0, len(wire)))
        if op == "cut":
            del wire[pos:]
        elif op == "insert":
            wire[pos:pos] = bytes(
                [draw(st.sampled_from((0x00, 0x0D, 0x0E, 0x0F, 0xD0, 0xE0, 0xF0, 0xFF, 0x11)))]
            )
        elif pos < len(wire):
            if op == "delete":
                del wire[pos]
            else:
                wire[pos] = draw(st.integers(0, 255))
    return bytes(wire)


@given(mutated_messages())
def test_fuzz_mutated_messages(data):
    _check_decode_invariant(data)


def test_fuzz_mutation_counts():
    # A seeded sweep so the mutation fuzz has a fixed, counted floor of cases.
    rng = random.Random(7959)
    accepted = rejected = 0
    for _ in range(2000):
        wire = bytearray(random_message(rng).encode())
        pos = rng.randrange(len(wire))
        if rng.random() < 0.5:
            del wire[pos:]
        else:
            wire[pos] = rng.randrange(256)
        if _check_decode_invariant(bytes(wire)):
            accepted += 1
        else:
            rejected += 1
    assert accepted > 100 and rejected > 100
