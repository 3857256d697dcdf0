"""The HTTP <-> CoAP status table (lowbw.wire.status), on CPython and MicroPython."""

# portable: full tree
from lowbw.wire import coap, status
from lowbw.wire.coap import Message
from lowbw.wire.errors import DecodeError, EncodeError
from tests.portable.check import raises, unhex

ESC = status.HTTP_STATUS_OPTION

# (HTTP status, method, CoAP code as text) for statuses with a natural CoAP twin.
NATURAL = [
    (200, "GET", "2.05"),
    (200, "FETCH", "2.05"),
    (200, "HEAD", "2.05"),
    (200, "OPTIONS", "2.05"),
    (200, "POST", "2.04"),
    (200, "PUT", "2.04"),
    (200, "PATCH", "2.04"),
    (200, "iPATCH", "2.04"),
    (200, "put", "2.04"),
    (200, "DELETE", "2.02"),
    (201, "POST", "2.01"),
    (201, "PUT", "2.01"),
    (304, "GET", "2.03"),
    (400, "POST", "4.00"),
    (401, "GET", "4.01"),
    (403, "PUT", "4.03"),
    (404, "GET", "4.04"),
    (405, "DELETE", "4.05"),
    (406, "GET", "4.06"),
    (409, "PUT", "4.09"),
    (412, "PUT", "4.12"),
    (413, "POST", "4.13"),
    (415, "POST", "4.15"),
    (422, "POST", "4.22"),
    (429, "PUT", "4.29"),
    (500, "GET", "5.00"),
    (501, "GET", "5.01"),
    (502, "GET", "5.02"),
    (503, "PUT", "5.03"),
    (504, "GET", "5.04"),
    (508, "GET", "5.08"),
]

# (HTTP status, method, nearest code, HTTP-Status option value bytes)
ESCAPED = [
    (204, "PUT", "2.04", "cc"),
    (204, "DELETE", "2.02", "cc"),
    (202, "POST", "2.04", "ca"),
    (206, "GET", "2.05", "ce"),
    (100, "GET", "5.02", "64"),
    (101, "GET", "5.02", "65"),
    (301, "GET", "5.02", "012d"),
    (302, "GET", "5.02", "012e"),
    (402, "GET", "4.00", "0192"),
    (407, "GET", "4.01", "0197"),
    (408, "GET", "4.00", "0198"),
    (410, "GET", "4.04", "019a"),
    (418, "GET", "4.00", "01a2"),
    (431, "GET", "4.13", "01af"),
    (451, "GET", "4.03", "01c3"),
    (505, "GET", "5.01", "01f9"),
    (507, "PUT", "5.00", "01fb"),
    (511, "GET", "5.00", "01ff"),
    (599, "GET", "5.00", "0257"),
    (999, "GET", "5.02", "03e7"),
]


def test_natural_table():
    for http, method, text in NATURAL:
        code, opts = status.http_to_coap(http, method)
        assert coap.code_str(code) == text, (http, method, coap.code_str(code))
        assert opts == [], (http, opts)
        assert status.coap_to_http(code, opts) == http


def test_escaped_statuses():
    for http, method, text, hx in ESCAPED:
        code, opts = status.http_to_coap(http, method)
        assert coap.code_str(code) == text, (http, coap.code_str(code))
        assert opts == [(ESC, unhex(hx))], (http, opts)
        assert status.coap_to_http(code, opts) == http
        # a peer that ignores the elective option still sees the right class
        bare = status.coap_to_http(code, [])
        assert bare // 100 == (http // 100 if http // 100 in (2, 4, 5) else 5)


def test_coap_codes_without_http_twin():
    assert status.coap_to_http(coap.BAD_OPTION) == 400
    assert status.coap_to_http(coap.REQUEST_ENTITY_INCOMPLETE) == 400
    assert status.coap_to_http(coap.PROXYING_NOT_SUPPORTED) == 502
    assert status.coap_to_http(coap.CONTINUE) == 200
    assert status.coap_to_http(coap.make_code(4, 31)) == 400
    assert status.coap_to_http(coap.make_code(5, 31)) == 500
    # not response codes: never 0, never a silent 500
    for code in (coap.EMPTY, coap.GET, coap.make_code(1, 0), coap.make_code(3, 1), coap.make_code(6, 0), 255):
        assert status.coap_to_http(code) == 502


def test_escape_option_on_the_wire():
    req = Message(coap.CON, coap.GET, 0x0042)
    code, opts = status.http_to_coap(418, "GET")
    resp = coap.make_response(req, code, b"", opts)
    wire = resp.encode()
    # 65000 - 0 = 65000 -> delta nibble 14, 65000 - 269 = 0xfcdb; length 2
    assert wire == unhex("60 80 00 42 e2 fcdb 01a2")
    back = coap.decode(wire)
    assert status.coap_to_http(back.code, back.options) == 418


def test_retry_after():
    code, opts = status.http_to_coap(429, "PUT", retry_after=30)
    assert code == coap.TOO_MANY_REQUESTS and opts == [(coap.MAX_AGE, b"\x1e")]
    assert status.retry_after_from_options(opts) == 30
    assert status.retry_after_from_options(opts, code) == 30
    code, opts = status.http_to_coap(503, "GET", retry_after=0)
    assert code == coap.SERVICE_UNAVAILABLE and opts == [(coap.MAX_AGE, b"")]
    assert status.retry_after_from_options(opts, code) == 0
    # Max-Age on a 2.05 is freshness, not Retry-After
    code, opts = status.http_to_coap(200, "GET", retry_after=30)
    assert opts == []
    assert status.retry_after_from_options([(coap.MAX_AGE, b"\x1e")], coap.CONTENT) is None
    assert status.retry_after_from_options([]) is None
    assert status.retry_after_to_options(None) == []
    assert status.retry_after_to_options(1.2) == [(coap.MAX_AGE, b"\x02")]  # never early
    assert status.retry_after_to_options(-5) == [(coap.MAX_AGE, b"")]
    assert status.retry_after_to_options(1 << 40) == [(coap.MAX_AGE, b"\xff\xff\xff\xff")]
    assert status.retry_after_to_options(3600) == [(coap.MAX_AGE, b"\x0e\x10")]


def test_retry_after_with_escape_in_order():
    msg = Message(coap.ACK, coap.SERVICE_UNAVAILABLE, 1)
    code, opts = status.http_to_coap(503, "GET", retry_after=120)
    for n, v in opts:
        msg.add_option(n, v)
    assert coap.decode(msg.encode()).options == [(coap.MAX_AGE, b"\x78")]


def test_bad_inputs():
    raises(EncodeError, status.http_to_coap, 99, "GET")
    raises(EncodeError, status.http_to_coap, 1000, "GET")
    raises(DecodeError, status.coap_to_http, coap.NOT_FOUND, [(ESC, b"\x01\xa2"), (ESC, b"\x01\xa2")])
    raises(DecodeError, status.coap_to_http, coap.NOT_FOUND, [(ESC, b"\x00\x63")])  # 99
    raises(DecodeError, status.coap_to_http, coap.NOT_FOUND, [(ESC, b"\x03\xe8")])  # 1000
    raises(DecodeError, status.coap_to_http, coap.NOT_FOUND, [(ESC, b"\x00\x01\xa2")])  # 3 bytes
    # the option must agree with the code's class
    raises(DecodeError, status.coap_to_http, coap.CONTENT, [(ESC, b"\x01\x94")])  # 404 on 2.05
    raises(DecodeError, status.coap_to_http, coap.NOT_FOUND, [(ESC, b"\xcc")])  # 204 on 4.04
    raises(DecodeError, status.coap_to_http, coap.NOT_FOUND, [(ESC, b"\x01\x2d")])  # 301 on 4.04
    assert status.coap_to_http(coap.BAD_GATEWAY, [(ESC, b"\x01\x2d")]) == 301
    raises(DecodeError, status.retry_after_from_options, [(coap.MAX_AGE, b"\x00\x00\x00\x00\x01")])
