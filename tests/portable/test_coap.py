"""Known-answer tests for lowbw.wire.coap (RFC 7252, RFC 7959, RFC 7641).

Runs on CPython (pytest) and MicroPython (tests/portable/mp_run.py). The byte
strings are built by hand from the message fields given in the RFCs.
"""

from lowbw.wire import coap
from lowbw.wire.coap import Message
from lowbw.wire.errors import DecodeError, EncodeError, LimitError, StateError
from tests.portable.check import raises, unhex

# Need code the device does not freeze (the proxy's side, or names the
# device build leaves out): run on the full tree only (tests/portable/mp_run.py).
FULL_TREE = (
    "test_block_options_in_message",
    "test_code_str",
    "test_content_format_accept_max_age_sizes",
    "test_decode_limit_errors",
    "test_empty_path_segment_and_utf8",
    "test_encode_errors",
    "test_encode_into_preallocated",
    "test_etag_location_proxy_uri",
    "test_make_response_options_sorted",
    "test_option_2048_with_300_byte_value_after_uri_path",
    "test_repeated_options_and_order",
    "test_rfc7252_a_get_temperature_piggybacked",
    "test_rfc7252_a_non_request",
    "test_rfc7252_a_separate_response",
    "test_rfc7252_a_with_token",
    "test_rfc7641_observe",
    "test_rfc7959_block_values",
    "test_rst_and_empty_ack",
    "test_sensor_post_and_piggybacked_changed",
    "test_truncations_and_bit_flips_never_escape",
    "test_uint_minimal",
)



def _rt(msg, hex_text):
    """msg encodes to exactly hex_text and decodes back equal."""
    wire = unhex(hex_text)
    got = msg.encode()
    assert got == wire, got
    assert coap.encode(msg) == wire
    back = coap.decode(wire)
    assert back == msg, back
    return back


# --- RFC 7252 Appendix A exchanges ------------------------------------------------


def test_rfc7252_a_get_temperature_piggybacked():
    # GET (T=CON, Code=0.01, MID=0x7d34), Uri-Path "temperature"
    req = Message(coap.CON, coap.GET, 0x7D34)
    coap.set_uri_path(req, ["temperature"])
    back = _rt(req, "40 01 7d 34 bb 74656d7065726174757265")
    assert coap.uri_path(back) == ["temperature"]
    assert back.is_request() and not back.is_response()
    # 2.05 Content (T=ACK, Code=2.05, MID=0x7d34), Payload "22.3 C"
    resp = coap.make_response(back, coap.CONTENT, b"22.3 C")
    _rt(resp, "60 45 7d 34 ff 32322e332043")
    assert resp.is_response()


def test_rfc7252_a_with_token():
    # Same exchange with Token 0x20: TKL=1 and the token echoed in the ACK.
    req = Message(coap.CON, coap.GET, 0x7D34, b"\x20")
    coap.set_uri_path(req, ["temperature"])
    _rt(req, "41 01 7d 34 20 bb 74656d7065726174757265")
    resp = coap.make_response(req, coap.CONTENT, b"22.3 C")
    _rt(resp, "61 45 7d 34 20 ff 32322e332043")


def test_rfc7252_a_separate_response():
    # CON GET, Token 0x71, MID 0x7d38 -> empty ACK, then CON 2.05 MID 0xad7b -> empty ACK.
    req = Message(coap.CON, coap.GET, 0x7D38, b"\x71")
    coap.set_uri_path(req, ["temperature"])
    _rt(coap.make_ack(req), "60 00 7d 38")
    sep = Message(coap.CON, coap.CONTENT, 0xAD7B, b"\x71", payload=b"22.3 C")
    _rt(sep, "41 45 ad 7b 71 ff 32322e332043")
    _rt(coap.make_ack(sep), "60 00 ad 7b")


def test_rfc7252_a_non_request():
    # NON GET, Token 0x74, MID 0x7d40 -> NON 2.05 with a MID of the server's choosing.
    req = Message(coap.NON, coap.GET, 0x7D40, b"\x74")
    coap.set_uri_path(req, ["temperature"])
    _rt(req, "51 01 7d 40 74 bb 74656d7065726174757265")
    resp = coap.make_response(req, coap.CONTENT, b"22.3 C", mid=0xAD7C)
    _rt(resp, "51 45 ad 7c 74 ff 32322e332043")
    raises(StateError, coap.make_response, req, coap.CONTENT)


def test_rst_and_empty_ack():
    msg = Message(coap.CON, coap.GET, 0xBEEF)
    _rt(coap.make_rst(msg), "70 00 be ef")
    _rt(coap.make_ack(msg), "60 00 be ef")
    raises(StateError, coap.make_response, coap.make_ack(msg), coap.CONTENT)


def test_sensor_post_and_piggybacked_changed():
    # DESIGN.md §4: 4 B header, no token, one 1-byte Uri-Path, marker, 5 B CBOR = 12 B.
    req = Message(coap.CON, coap.POST, 0x0001)
    coap.set_uri_path(req, ["s"])
    req.payload = unhex("82 01 19 01 2c")  # CBOR [1, 300]
    wire = req.encode()
    assert len(wire) == 12
    _rt(req, "40 02 00 01 b1 73 ff 82 01 19 01 2c")
    ack = coap.make_response(coap.decode(wire), coap.CHANGED)
    assert len(ack.encode()) == 4
    _rt(ack, "60 44 00 01")


# --- option header encoding (RFC 7252 §3.1) ----------------------------------------


def test_option_delta_and_length_boundaries():
    # nibble 0..12 inline; 13 -> one extra byte (v-13); 14 -> two extra bytes (v-269)
    cases = [
        (12, 12, "cc"),
        (13, 13, "dd 00 00"),
        (268, 268, "dd ff ff"),
        (269, 269, "ee 0000 0000"),
        (2048, 300, "ee 06f3 001f"),
        (65535, 0, "e0 fef2"),
    ]
    for number, length, head in cases:
        val = bytes((i * 7) & 0xFF for i in range(length))
        msg = Message(coap.NON, coap.CONTENT, 0x1234, options=[(number, val)])
        wire = unhex("50 45 12 34 " + head) + val
        assert msg.encode() == wire, (number, length)
        assert coap.decode(wire) == msg


def test_option_2048_with_300_byte_value_after_uri_path():
    val = b"x" * 300
    msg = Message(coap.CON, coap.PUT, 7, options=[(coap.URI_PATH, b"a"), (2048, val)])
    # second delta is 2048 - 11 = 2037 -> 14, 2037-269 = 0x06e8; length 300 -> 14, 0x001f
    wire = unhex("40 03 00 07 b1 61 ee 06e8 001f") + val
    assert msg.encode() == wire
    assert coap.decode(wire) == msg


def test_repeated_options_and_order():
    msg = Message(coap.CON, coap.GET, 1)
    coap.set_uri_query(msg, ["a=1", "b"])
    coap.set_uri_path(msg, ["_matrix", "client"])
    msg.add_option(coap.URI_HOST, "h")
    assert [n for n, _ in msg.options] == [3, 11, 11, 15, 15]
    wire = _rt(msg, "40 01 00 01 31 68 87 5f6d6174726978 06 636c69656e74 43 613d31 01 62")
    assert coap.uri_path(wire) == ["_matrix", "client"]
    assert coap.uri_query(wire) == ["a=1", "b"]
    coap.set_uri_path(msg, ["x"])
    assert coap.uri_path(msg) == ["x"]
    msg.remove_option(coap.URI_QUERY)
    assert coap.uri_query(msg) == []


def test_empty_path_segment_and_utf8():
    msg = Message(coap.CON, coap.GET, 2)
    coap.set_uri_path(msg, ["", "\u00e9"])
    back = _rt(msg, "40 01 00 02 b0 02 c3a9")
    assert coap.uri_path(back) == ["", "\u00e9"]
    bad = coap.decode(unhex("40 01 00 02 b1 c3"))  # a lone UTF-8 lead byte
    e = raises(DecodeError, coap.uri_path, bad)
    assert e.coap_code == coap.BAD_OPTION
    raises(EncodeError, coap.set_uri_path, msg, ["y" * 256])


# --- uint, Block, Observe --------------------------------------------------------


def test_uint_minimal():
    assert coap.uint_encode(0) == b""
    assert coap.uint_encode(1) == b"\x01"
    assert coap.uint_encode(255) == b"\xff"
    assert coap.uint_encode(256) == b"\x01\x00"
    assert coap.uint_encode(0xFFFFFFFF) == b"\xff\xff\xff\xff"
    raises(EncodeError, coap.uint_encode, 1 << 32)
    raises(EncodeError, coap.uint_encode, -1)
    assert coap.uint_decode(b"") == 0
    assert coap.uint_decode(b"\x00\x00\x01") == 1  # leading zeros accepted on receipt
    raises(DecodeError, coap.uint_decode, b"\x00\x00\x00\x00\x01")


def test_content_format_accept_max_age_sizes():
    msg = Message(coap.CON, coap.FETCH, 3)
    coap.set_content_format(msg, 60)  # application/cbor
    coap.set_accept(msg, 60)
    coap.set_max_age(msg, 0)
    coap.set_size1(msg, 1000)
    coap.set_size2(msg, 70000)
    # 12 Content-Format 60: delta 12, len 1 -> c1 3c; 14 Max-Age 0: delta 2, len 0 -> 20;
    # 17 Accept 60: delta 3 -> 31 3c; 28 Size2 70000 = 0x011170: delta 11, len 3 -> b3;
    # 60 Size1 1000 = 0x03e8: delta 32 -> nibble 13 + byte 19, len 2 -> d2 13
    back = _rt(msg, "40 05 00 03 c1 3c 20 31 3c b3 011170 d2 13 03e8")
    assert coap.content_format(back) == 60
    assert coap.accept(back) == 60
    assert coap.max_age(back) == 0
    assert coap.size1(back) == 1000
    assert coap.size2(back) == 70000
    coap.set_content_format(msg, None)
    assert coap.content_format(msg) is None
    raises(EncodeError, coap.set_content_format, msg, 65536)


def test_rfc7959_block_values():
    # (num, more, size) -> option value, as in the RFC 7959 §3 figures
    cases = [
        ((0, False, 64), "02"),  # 2:0/0/64
        ((0, True, 128), "0b"),  # 2:0/1/128
        ((1, True, 128), "1b"),  # 2:1/1/128
        ((2, False, 128), "23"),  # 2:2/0/128
        ((2, False, 64), "22"),  # late negotiation: 2:2/0/64
        ((4, False, 64), "42"),  # 2:4/0/64
        ((0, True, 1024), "0e"),
        ((15, True, 16), "f8"),
        ((16, False, 16), "0100"),
        ((4095, True, 32), "fff9"),
        ((4096, False, 32), "010001"),
        ((0xFFFFF, True, 1024), "fffffe"),
    ]
    for (num, more, size), hx in cases:
        szx = 0
        while coap.block_size(szx) != size:
            szx += 1
        assert coap.block_encode(num, more, szx) == unhex(hx), (num, more, size)
        assert coap.block_decode(unhex(hx)) == (num, more, szx)
    assert coap.block_encode(0, False, 0) == b""  # 0/0/16 is the empty value
    assert coap.block_decode(b"") == (0, False, 0)
    raises(EncodeError, coap.block_encode, 0, False, 7)
    raises(EncodeError, coap.block_encode, 1 << 20, False, 0)
    raises(DecodeError, coap.block_decode, b"\x07")  # SZX 7 reserved
    raises(DecodeError, coap.block_decode, b"\x00\x00\x00\x08")


def test_block_options_in_message():
    msg = Message(coap.CON, coap.PUT, 0x1235)
    coap.set_uri_path(msg, ["s"])
    coap.set_block1(msg, 1, True, 2)
    coap.set_block2(msg, 0, False, 2)
    # 11 "s"; 23 Block2 0/0/64 = 02: delta 12 -> c1 02; 27 Block1 1/1/64 = 1a: delta 4 -> 41 1a
    back = _rt(msg, "40 03 12 35 b1 73 c1 02 41 1a")
    assert coap.block1(back) == (1, True, 2)
    assert coap.block2(back) == (0, False, 2)
    assert coap.block1(Message()) is None


def test_rfc7641_observe():
    msg = Message(coap.CON, coap.GET, 0x1236)
    coap.set_observe(msg, 0)  # register: empty value
    coap.set_uri_path(msg, ["t"])
    _rt(msg, "40 01 12 36 60 51 74")
    assert coap.observe(msg) == 0
    note = Message(coap.NON, coap.CONTENT, 0x2000)
    coap.set_observe(note, 12)
    _rt(note, "50 45 20 00 61 0c")
    coap.set_observe(note, coap.MAX_OBSERVE)
    _rt(note, "50 45 20 00 63 ffffff")
    assert coap.observe(note) == 0xFFFFFF
    raises(EncodeError, coap.set_observe, note, 1 << 24)
    assert coap.observe(Message()) is None


def test_etag_location_proxy_uri():
    msg = Message(coap.ACK, coap.CREATED, 9)
    coap.set_etag(msg, b"\x01\x02")
    coap.set_location_path(msg, ["r", "1"])
    back = _rt(msg, "60 41 00 09 42 0102 41 72 01 31")
    assert coap.etag(back) == b"\x01\x02"
    assert coap.location_path(back) == ["r", "1"]
    raises(EncodeError, coap.set_etag, msg, b"")
    raises(EncodeError, coap.set_etag, msg, b"123456789")
    req = Message(coap.CON, coap.GET, 10)
    coap.set_proxy_uri(req, "coap://h/x")
    # Proxy-Uri 35: delta 35 -> 13, ext 22; len 10
    _rt(req, "40 01 00 0a da 16 636f61703a2f2f682f78")
    assert coap.proxy_uri(req) == "coap://h/x"
    raises(EncodeError, coap.set_proxy_uri, req, "")


def test_code_str():
    assert coap.code_str(coap.CHANGED) == "2.04"
    assert coap.code_str(coap.GET) == "0.01"
    assert coap.code_str(coap.TOO_MANY_REQUESTS) == "4.29"
    assert coap.code_str(coap.HOP_LIMIT_REACHED) == "5.08"
    assert coap.code_str(coap.CONTINUE) == "2.31"
    assert coap.make_code(4, 4) == coap.NOT_FOUND
    for cls, detail, code in ((2, 1, coap.CREATED), (4, 15, coap.UNSUPPORTED_CONTENT_FORMAT)):
        assert coap.make_code(cls, detail) == code


def test_make_response_options_sorted():
    req = coap.decode(unhex("40 02 00 05 b1 73 ff 01"))
    resp = coap.make_response(req, coap.CREATED, b"ok", [(coap.LOCATION_PATH, b"e"), (coap.ETAG, b"\x07")])
    _rt(resp, "60 41 00 05 41 07 41 65 ff 6f6b")


# --- what the decoder refuses ------------------------------------------------------


def test_decode_errors():
    bad = [
        "",
        "40",
        "40 01 00",
        "00 01 00 00",  # version 0
        "80 01 00 00",  # version 2
        "c0 01 00 00",  # version 3
        "49 01 00 00 000102030405060708",  # TKL 9
        "4f 01 00 00",  # TKL 15
        "40 01 00 00 f0",  # delta 15, length 0
        "40 01 00 00 0f",  # delta 0, length 15
        "40 01 00 00 d0",  # delta 13, extended byte missing
        "40 01 00 00 e0 00",  # delta 14, one of two extended bytes
        "40 01 00 00 0d",  # length 13, extended byte missing
        "40 01 00 00 0e 01",  # length 14, one of two extended bytes
        "40 01 00 00 ff",  # marker and no payload
        "40 01 00 00 b1 73 ff",  # same after an option
        "60 00 00 00 ff 01",  # empty message with payload
        "60 00 00 00 b1 73",  # empty message with option
        "61 00 00 00 01",  # empty message with token
        "40 01 00 00 e0 fef3",  # option number 65536
        "40 01 00 00 e0 fef2 10",  # 65535 then 65536
    ]
    for hx in bad:
        raises(DecodeError, coap.decode, unhex(hx))


def test_decode_limit_errors():
    for hx in (
        "48 01 00 00 0102",  # TKL 8, two token bytes present
        "40 01 00 00 05 0102",  # 5-byte value, 2 present
        "40 01 00 00 0d 00",  # 13-byte value, none present
        "40 01 00 00 0e ffff",  # 65804-byte value
        "40 01 00 00 ee 0000 ffff 00",
    ):
        e = raises(LimitError, coap.decode, unhex(hx))
        assert e.coap_code == coap.REQUEST_ENTITY_TOO_LARGE


def test_decode_accepts_memoryview_and_bytearray():
    wire = unhex("41 01 7d 34 20 bb 74656d7065726174757265 ff 31")
    a = coap.decode(wire)
    assert coap.decode(bytearray(wire)) == a
    assert coap.decode(memoryview(wire)) == a
    assert isinstance(a.payload, bytes) and isinstance(a.token, bytes)
    assert isinstance(a.options[0][1], bytes)


def test_encode_errors():
    raises(EncodeError, coap.encode, Message(coap.CON, coap.GET, 1, b"123456789"))
    raises(EncodeError, coap.encode, Message(4, coap.GET, 1))
    raises(EncodeError, coap.encode, Message(coap.CON, 256, 1))
    raises(EncodeError, coap.encode, Message(coap.CON, coap.GET, 65536))
    raises(EncodeError, coap.encode, Message(coap.CON, coap.GET, -1))
    raises(EncodeError, coap.encode, Message(coap.CON, coap.GET, 1, options=[(11, b""), (3, b"")]))
    raises(EncodeError, coap.encode, Message(coap.CON, coap.GET, 1, options=[(65536, b"")]))
    raises(EncodeError, coap.encode, Message(coap.ACK, coap.EMPTY, 1, payload=b"x"))
    raises(EncodeError, coap.encode, Message(coap.ACK, coap.EMPTY, 1, b"t"))


def test_encode_into_preallocated():
    msg = Message(coap.CON, coap.POST, 0x0102, payload=b"hi")
    coap.set_uri_path(msg, ["s"])
    buf = bytearray(32)
    end = coap.encode_into(msg, buf, 3)
    assert end == 3 + coap.encoded_size(msg) == 3 + 9
    assert bytes(buf[3:end]) == msg.encode()
    raises(EncodeError, coap.encode_into, msg, bytearray(8), 0)


def test_truncations_and_bit_flips_never_escape():
    # Every prefix and every single-byte mutation of a message that uses all the
    # extended forms either decodes (and then re-encodes to the same bytes) or
    # raises DecodeError.
    msg = Message(coap.CON, coap.PUT, 0xA5A5, b"\x01\x02")
    coap.set_uri_path(msg, ["ab"])
    msg.add_option(300, b"\x00" * 14)
    msg.add_option(2048, b"")
    msg.payload = b"\xff\x00"
    wire = msg.encode()
    seen = 0
    for cut in range(len(wire) + 1):
        _decodes_or_raises(wire[:cut])
        seen += 1
    for pos in range(len(wire)):
        for val in (0x00, 0x0D, 0x0E, 0x0F, 0xD0, 0xE0, 0xF0, 0xFF, wire[pos] ^ 0x01):
            _decodes_or_raises(wire[:pos] + bytes((val,)) + wire[pos + 1 :])
            seen += 1
    assert seen > 300


def _decodes_or_raises(data):
    try:
        m = coap.decode(data)
    except DecodeError:
        return
    assert m.encode() == data
