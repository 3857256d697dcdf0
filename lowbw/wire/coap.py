"""CoAP message codec (RFC 7252 §3) and the option helpers lowbw uses.

Message layout (all integers big-endian)::

    byte 0      Ver(2 bits, =1) | Type(2 bits) | TKL(4 bits, token length 0..8)
    byte 1      Code: class(3 bits) . detail(5 bits), written "c.dd"
    bytes 2-3   Message ID
    TKL bytes   Token
    options     each: Delta(4 bits) | Length(4 bits), then 0/1/2 bytes of
                extended delta, 0/1/2 bytes of extended length, then the value
    0xFF        payload marker, only if a payload (>= 1 byte) follows
    rest        payload

A delta or length nibble of 0..12 is the value itself; 13 means one more byte
holding value-13 (13..268); 14 means two more bytes holding value-269
(269..65804); 15 is reserved (only the 0xFF payload marker has both nibbles 15).
Option numbers are the running sum of the deltas, so options are written in
ascending order and the same number may repeat. Because every value has exactly
one shortest encoding and the encoder always uses it, ``encode(decode(b)) == b``
for every ``b`` that decodes.

``Message.options`` is a list of ``(number, bytes)`` in ascending number order,
the raw wire values; the helpers below interpret Uri-Path, Content-Format,
Block1/Block2 (RFC 7959), Observe (RFC 7641) and so on. Our sensor profile uses
zero-length tokens: the Noise session already tells exchanges apart, and every
token byte costs 80 ms of airtime at 100 bit/s.

Shared verbatim with MicroPython: no dataclasses, enum or typing at runtime.
"""

from lowbw.wire._compat import const
from lowbw.wire.errors import DecodeError, EncodeError, LimitError, StateError

# Message types (RFC 7252 §3).
CON = const(0)
NON = const(1)
ACK = const(2)
RST = const(3)

# Codes are class * 32 + detail.
EMPTY = const(0)
# Methods (RFC 7252 §12.1.1, RFC 8132).
GET = const(1)
POST = const(2)
PUT = const(3)
DELETE = const(4)
FETCH = const(5)
PATCH = const(6)
IPATCH = const(7)
# Responses (RFC 7252 §12.1.2, RFC 7959, RFC 8132, RFC 8516, RFC 8768).
CREATED = const(65)  # 2.01
DELETED = const(66)  # 2.02
VALID = const(67)  # 2.03
CHANGED = const(68)  # 2.04
CONTENT = const(69)  # 2.05
CONTINUE = const(95)  # 2.31
BAD_REQUEST = const(128)  # 4.00
UNAUTHORIZED = const(129)  # 4.01
BAD_OPTION = const(130)  # 4.02
FORBIDDEN = const(131)  # 4.03
NOT_FOUND = const(132)  # 4.04
METHOD_NOT_ALLOWED = const(133)  # 4.05
NOT_ACCEPTABLE = const(134)  # 4.06
REQUEST_ENTITY_INCOMPLETE = const(136)  # 4.08
CONFLICT = const(137)  # 4.09
PRECONDITION_FAILED = const(140)  # 4.12
REQUEST_ENTITY_TOO_LARGE = const(141)  # 4.13
UNSUPPORTED_CONTENT_FORMAT = const(143)  # 4.15
UNPROCESSABLE_ENTITY = const(150)  # 4.22
TOO_MANY_REQUESTS = const(157)  # 4.29
INTERNAL_SERVER_ERROR = const(160)  # 5.00
NOT_IMPLEMENTED = const(161)  # 5.01
BAD_GATEWAY = const(162)  # 5.02
SERVICE_UNAVAILABLE = const(163)  # 5.03
GATEWAY_TIMEOUT = const(164)  # 5.04
PROXYING_NOT_SUPPORTED = const(165)  # 5.05
HOP_LIMIT_REACHED = const(168)  # 5.08

# Option numbers (RFC 7252 §12.2, RFC 7641, RFC 7959, RFC 8613, RFC 8768, RFC 9175).
IF_MATCH = const(1)
URI_HOST = const(3)
ETAG = const(4)
IF_NONE_MATCH = const(5)
OBSERVE = const(6)
URI_PORT = const(7)
LOCATION_PATH = const(8)
OSCORE = const(9)
URI_PATH = const(11)
CONTENT_FORMAT = const(12)
MAX_AGE = const(14)
URI_QUERY = const(15)
HOP_LIMIT = const(16)
ACCEPT = const(17)
LOCATION_QUERY = const(20)
BLOCK2 = const(23)
BLOCK1 = const(27)
SIZE2 = const(28)
PROXY_URI = const(35)
PROXY_SCHEME = const(39)
SIZE1 = const(60)
ECHO = const(252)
NO_RESPONSE = const(258)
REQUEST_TAG = const(292)

MAX_OPTION_NUMBER = const(65535)  # the registry's range; larger sums are rejected
MAX_OPTION_LENGTH = const(65804)  # 65535 + 269, the largest the length field can say
MAX_TOKEN_LENGTH = const(8)
MAX_OBSERVE = const(0xFFFFFF)


class Message:
    """One CoAP message: ``mtype``, ``code``, ``mid``, ``token``, ``options``, ``payload``."""

    def __init__(self, mtype=CON, code=EMPTY, mid=0, token=b"", options=None, payload=b""):
        self.mtype = mtype
        self.code = code
        self.mid = mid
        self.token = token
        self.options = [] if options is None else list(options)
        self.payload = payload

    def encode(self):
        return encode(self)

    def get(self, number):
        """All values of option ``number``, in wire order."""
        return [v for n, v in self.options if n == number]

    def first(self, number, default=None):
        for n, v in self.options:
            if n == number:
                return v
        return default

    def add_option(self, number, value=b""):
        """Insert after any options numbered <= number, keeping the list in wire order."""
        if isinstance(value, str):
            value = value.encode("utf-8")
        opts = self.options
        i = len(opts)
        while i and opts[i - 1][0] > number:
            i -= 1
        opts.insert(i, (number, bytes(value)))

    def remove_option(self, number):
        self.options = [o for o in self.options if o[0] != number]

    def set_option(self, number, value):
        """Replace every ``number`` option by one with ``value`` (None just removes)."""
        self.remove_option(number)
        if value is not None:
            self.add_option(number, value)

    def is_request(self):
        return 1 <= self.code < 32

    def is_response(self):
        return 64 <= self.code < 192

    def __eq__(self, other):
        if not isinstance(other, Message):
            return NotImplemented
        return (
            self.mtype == other.mtype
            and self.code == other.code
            and self.mid == other.mid
            and bytes(self.token) == bytes(other.token)
            and self.options == other.options
            and bytes(self.payload) == bytes(other.payload)
        )

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __repr__(self):
        return "<Message %s %s mid=%d token=%s options=%r payload=%d B>" % (
            ("CON", "NON", "ACK", "RST")[self.mtype & 3],
            code_str(self.code),
            self.mid,
            bytes(self.token).hex(),
            self.options,
            len(self.payload),
        )


def code_str(code):
    """``"2.04"`` for 68."""
    return "%d.%02d" % (code >> 5, code & 31)


def make_code(cls, detail):
    return (cls << 5) | detail


def _ext_len(v):
    if v < 13:
        return 0
    if v < 269:
        return 1
    return 2


def encoded_size(msg):
    """Bytes ``msg`` takes on the wire; raises EncodeError if it cannot be encoded."""
    mt = msg.mtype
    code = msg.code
    mid = msg.mid
    tkl = len(msg.token)
    if not (0 <= mt <= 3 and 0 <= code <= 255 and 0 <= mid <= 0xFFFF):
        raise EncodeError("type, code or message ID out of range")
    if tkl > MAX_TOKEN_LENGTH:
        raise EncodeError("token longer than 8 bytes")
    if code == EMPTY and (tkl or msg.options or msg.payload):
        # RFC 7252 §4.1: an Empty message is the 4-byte header and nothing else.
        raise EncodeError("empty message (0.00) with token, options or payload")
    n = 4 + tkl
    prev = 0
    for num, val in msg.options:
        if num < prev or num > MAX_OPTION_NUMBER:
            raise EncodeError("options out of order or number out of range: %r" % (num,))
        ln = len(val)
        if ln > MAX_OPTION_LENGTH:
            raise EncodeError("option value too long")
        n += 1 + _ext_len(num - prev) + _ext_len(ln) + ln
        prev = num
    if msg.payload:
        n += 1 + len(msg.payload)
    return n


def _put_ext(buf, i, v):
    if v < 13:
        return i
    if v < 269:
        buf[i] = v - 13
        return i + 1
    v -= 269
    buf[i] = v >> 8
    buf[i + 1] = v & 0xFF
    return i + 2


def _nibble(v):
    if v < 13:
        return v
    return 13 if v < 269 else 14


def encode_into(msg, buf, offset=0):
    """Write ``msg`` into the preallocated ``buf`` at ``offset``; return the end offset."""
    end = offset + encoded_size(msg)
    if end > len(buf):
        raise EncodeError("buffer too small")
    tok = msg.token
    tkl = len(tok)
    buf[offset] = 0x40 | (msg.mtype << 4) | tkl
    buf[offset + 1] = msg.code
    buf[offset + 2] = msg.mid >> 8
    buf[offset + 3] = msg.mid & 0xFF
    i = offset + 4
    buf[i : i + tkl] = tok
    i += tkl
    prev = 0
    for num, val in msg.options:
        d = num - prev
        ln = len(val)
        buf[i] = (_nibble(d) << 4) | _nibble(ln)
        i = _put_ext(buf, i + 1, d)
        i = _put_ext(buf, i, ln)
        buf[i : i + ln] = val
        i += ln
        prev = num
    pl = msg.payload
    if pl:
        buf[i] = 0xFF
        buf[i + 1 : end] = pl
    return end


def encode(msg):
    buf = bytearray(encoded_size(msg))
    encode_into(msg, buf, 0)
    return bytes(buf)


def decode(data):
    """Parse one datagram. Raises DecodeError (LimitError if a length overruns the input)."""
    n = len(data)
    if n < 4:
        raise DecodeError("shorter than the 4-byte CoAP header")
    b0 = data[0]
    if b0 >> 6 != 1:
        raise DecodeError("CoAP version is not 1")
    tkl = b0 & 15
    if tkl > MAX_TOKEN_LENGTH:
        raise DecodeError("reserved token length %d" % tkl)
    code = data[1]
    if code == EMPTY and n != 4:
        raise DecodeError("empty message (0.00) is not just a header")
    i = 4 + tkl
    if i > n:
        raise LimitError("token runs past the end")
    msg = Message((b0 >> 4) & 3, code, (data[2] << 8) | data[3], bytes(data[4:i]))
    opts = msg.options
    num = 0
    while i < n:
        b = data[i]
        i += 1
        if b == 0xFF:
            if i == n:
                raise DecodeError("payload marker with no payload")
            msg.payload = bytes(data[i:])
            break
        d = b >> 4
        ln = b & 15
        if d == 13:
            if i >= n:
                raise DecodeError("option delta cut short")
            d = data[i] + 13
            i += 1
        elif d == 14:
            if i + 2 > n:
                raise DecodeError("option delta cut short")
            d = ((data[i] << 8) | data[i + 1]) + 269
            i += 2
        elif d == 15:
            raise DecodeError("reserved option delta 15")
        if ln == 13:
            if i >= n:
                raise DecodeError("option length cut short")
            ln = data[i] + 13
            i += 1
        elif ln == 14:
            if i + 2 > n:
                raise DecodeError("option length cut short")
            ln = ((data[i] << 8) | data[i + 1]) + 269
            i += 2
        elif ln == 15:
            raise DecodeError("reserved option length 15")
        num += d
        if num > MAX_OPTION_NUMBER:
            raise DecodeError("option number beyond 65535")
        if ln > n - i:
            raise LimitError("option value runs past the end")
        opts.append((num, bytes(data[i : i + ln])))
        i += ln
    return msg


# --- responses -------------------------------------------------------------------


def make_response(request, code, payload=b"", options=(), mid=None):
    """Response to ``request``: piggybacked on the ACK of a CON, or a NON needing ``mid``."""
    if request.mtype == CON:
        resp = Message(ACK, code, request.mid, request.token)
    elif request.mtype == NON:
        if mid is None:
            raise StateError("a response to a NON request needs its own message ID")
        resp = Message(NON, code, mid, request.token)
    else:
        raise StateError("ACK and RST messages are not answered")
    for num, val in options:
        resp.add_option(num, val)
    resp.payload = payload
    return resp


def make_ack(msg):
    """Empty ACK for a CON (the response follows separately)."""
    return Message(ACK, EMPTY, msg.mid)


def make_rst(msg):
    """RST: we got ``msg`` but cannot or will not process it."""
    return Message(RST, EMPTY, msg.mid)


# --- option values ---------------------------------------------------------------


def uint_encode(value, maxlen=4):
    """Shortest big-endian form; 0 is the empty string (RFC 7252 §3.2)."""
    if value < 0:
        raise EncodeError("negative uint option")
    ln = 0
    v = value
    while v:
        v >>= 8
        ln += 1
    if ln > maxlen:
        raise EncodeError("uint option value too large")
    return value.to_bytes(ln, "big")


def uint_decode(value, maxlen=4):
    """Leading zero bytes are allowed on receipt; more than ``maxlen`` bytes is 4.02."""
    if len(value) > maxlen:
        raise DecodeError("uint option longer than %d bytes" % maxlen, BAD_OPTION)
    return int.from_bytes(bytes(value), "big")


def get_uint(msg, number, default=None, maxlen=4):
    v = msg.first(number)
    return default if v is None else uint_decode(v, maxlen)


def set_uint(msg, number, value, maxlen=4):
    msg.set_option(number, None if value is None else uint_encode(value, maxlen))


def _text(value, lo, hi):
    if not lo <= len(value) <= hi:
        raise DecodeError("string option length out of range", BAD_OPTION)
    try:
        return str(bytes(value), "utf-8")
    except (UnicodeError, ValueError):
        raise DecodeError("string option is not UTF-8", BAD_OPTION)


def _get_texts(msg, number):
    return [_text(v, 0, 255) for v in msg.get(number)]


def _set_texts(msg, number, items):
    msg.remove_option(number)
    for s in items:
        b = s.encode("utf-8")
        if len(b) > 255:
            raise EncodeError("path or query segment longer than 255 bytes")
        msg.add_option(number, b)


def uri_path(msg):
    return _get_texts(msg, URI_PATH)


def set_uri_path(msg, segments):
    _set_texts(msg, URI_PATH, segments)


def uri_query(msg):
    return _get_texts(msg, URI_QUERY)


def set_uri_query(msg, items):
    _set_texts(msg, URI_QUERY, items)


def location_path(msg):
    return _get_texts(msg, LOCATION_PATH)


def set_location_path(msg, segments):
    _set_texts(msg, LOCATION_PATH, segments)


def proxy_uri(msg):
    v = msg.first(PROXY_URI)
    return None if v is None else _text(v, 1, 1034)


def set_proxy_uri(msg, uri):
    if uri is not None and not 1 <= len(uri.encode("utf-8")) <= 1034:
        raise EncodeError("Proxy-Uri must be 1..1034 bytes")
    msg.set_option(PROXY_URI, uri)


def etag(msg):
    v = msg.first(ETAG)
    if v is not None and not 1 <= len(v) <= 8:
        raise DecodeError("ETag must be 1..8 bytes", BAD_OPTION)
    return v


def set_etag(msg, tag):
    if tag is not None and not 1 <= len(tag) <= 8:
        raise EncodeError("ETag must be 1..8 bytes")
    msg.set_option(ETAG, tag)


def content_format(msg):
    return get_uint(msg, CONTENT_FORMAT, None, 2)


def set_content_format(msg, cf):
    set_uint(msg, CONTENT_FORMAT, cf, 2)


def accept(msg):
    return get_uint(msg, ACCEPT, None, 2)


def set_accept(msg, cf):
    set_uint(msg, ACCEPT, cf, 2)


def max_age(msg):
    """Seconds, or None if absent (RFC 7252 then means 60)."""
    return get_uint(msg, MAX_AGE)


def set_max_age(msg, seconds):
    set_uint(msg, MAX_AGE, seconds)


def observe(msg):
    return get_uint(msg, OBSERVE, None, 3)


def set_observe(msg, value):
    """0 registers, 1 deregisters; in notifications a 24-bit sequence number."""
    if value is not None and not 0 <= value <= MAX_OBSERVE:
        raise EncodeError("Observe value out of 0..2**24-1")
    set_uint(msg, OBSERVE, value, 3)


def size1(msg):
    return get_uint(msg, SIZE1)


def set_size1(msg, size):
    set_uint(msg, SIZE1, size)


def size2(msg):
    return get_uint(msg, SIZE2)


def set_size2(msg, size):
    set_uint(msg, SIZE2, size)


def block_size(szx):
    return 1 << (szx + 4)


def block_encode(num, more, szx):
    """Block1/Block2 value (RFC 7959 §2.2): NUM(<=20 bits) | M | SZX(3 bits)."""
    if not 0 <= szx <= 6:
        raise EncodeError("SZX must be 0..6 (7 is reserved)")
    if not 0 <= num < 1 << 20:
        raise EncodeError("block number out of 0..2**20-1")
    return uint_encode((num << 4) | (8 if more else 0) | szx, 3)


def block_decode(value):
    """``(num, more, szx)``; SZX 7 is reserved and answered with 4.00 (RFC 7959 §2.2)."""
    v = uint_decode(value, 3)
    szx = v & 7
    if szx == 7:
        raise DecodeError("reserved block SZX 7")
    return (v >> 4, bool(v & 8), szx)


def block1(msg):
    v = msg.first(BLOCK1)
    return None if v is None else block_decode(v)


def set_block1(msg, num, more, szx):
    msg.set_option(BLOCK1, block_encode(num, more, szx))


def block2(msg):
    v = msg.first(BLOCK2)
    return None if v is None else block_decode(v)


def set_block2(msg, num, more, szx):
    msg.set_option(BLOCK2, block_encode(num, more, szx))
