"""A small CBOR (RFC 8949) codec for MicroPython and CPython.

Data model (the JSON data model plus byte strings):

=============================  ===========================================
Python                         CBOR
=============================  ===========================================
int in [-2**64, 2**64-1]       major type 0 (unsigned) or 1 (negative)
bytes, bytearray, memoryview   major type 2 (decodes to bytes)
str                            major type 3 (UTF-8, validated on decode)
list, tuple                    major type 4 (decodes to list)
dict                           major type 5; keys int, str or bytes
False, True, None              simple values 20, 21, 22 (0xf4 0xf5 0xf6)
float                          0xf9/0xfa/0xfb: float16/32/64
=============================  ===========================================

Encoding is deterministic and always uses the preferred (shortest) form:
the shortest argument for every head, definite lengths only, and for a float
the shortest of float16/float32/float64 that represents it EXACTLY. Every NaN
becomes 0xf97e00 and the infinities 0xf97c00/0xf9fc00. Maps are written in
the dict's iteration order, without sorting: insertion order on CPython; a
plain MicroPython dict has no stable order, so pass an OrderedDict where the
byte order matters (for hashing or known-answer tests). Integers
outside the CBOR range, and anything else (sets, objects, bool/None/float
map keys), raise EncodeError.

Decoding accepts any well-formed input in the data model, including
non-shortest heads and indefinite-length strings, arrays and maps (the
lengths of chunked strings are summed, but every chunk counts as an item).
It rejects, with DecodeError:

- tags (major type 6): lowbw has no use for them, and a tag a peer sends
  cannot change the meaning of our data, so none are accepted;
- ``undefined`` (0xf7) and every other simple value (0xe0..0xf3, 0xf8 xx):
  they have no JSON counterpart;
- map keys that are not int, text or bytes, and duplicate keys;
- text that is not valid UTF-8 (overlongs, surrogates and code points above
  U+10FFFF too: MicroPython's own decoder lets those through, so we check);
- reserved additional information 28..30, a stray break, trailing bytes
  (``loads`` only), and truncation anywhere.

Limits (LimitError, a DecodeError): ``max_depth`` nested arrays/maps, and
``max_items`` data items in total, where every item counts once: each
integer, string, array, map, map key and map value, the outermost item and
every chunk of an indefinite-length string. A declared length or count is
checked against both the limit and the bytes that remain before anything is
allocated for it, so a 10-byte input that declares a 4 GiB string or 2**60
array elements fails at once.

Floats decode to Python floats (on a port with single-precision floats a
float64 decodes to the nearest float32).
"""

import struct

from lowbw.wire._compat import const
from lowbw.wire.errors import DecodeError, EncodeError, LimitError

MAX_ENCODE_DEPTH = const(64)
DEFAULT_MAX_DEPTH = const(16)
DEFAULT_MAX_ITEMS = const(4096)

_UINT_LIMIT = 1 << 64
_BREAK = const(0xFF)
_F16_NAN = const(0x7E00)


def _probe_lax_utf8():
    # MicroPython's bytes.decode accepts surrogates, overlongs and code points
    # beyond U+10FFFF; CPython's does not. Validate by hand only where needed.
    for bad in (b"\xed\xa0\x80", b"\xc0\x80", b"\xf4\x90\x80\x80"):
        try:
            bad.decode("utf-8")
        except UnicodeError:
            continue
        return True
    return False


_LAX_UTF8 = _probe_lax_utf8()


def utf8_valid(b):
    """True if ``b`` is well-formed UTF-8 (RFC 3629, table 3-7 of Unicode)."""
    n = len(b)
    i = 0
    while i < n:
        c = b[i]
        if c < 0x80:
            i += 1
            continue
        lo = 0x80
        hi = 0xBF
        if 0xC2 <= c <= 0xDF:
            need = 1
        elif c == 0xE0:
            need = 2
            lo = 0xA0
        elif c == 0xED:
            need = 2
            hi = 0x9F
        elif 0xE1 <= c <= 0xEF:
            need = 2
        elif c == 0xF0:
            need = 3
            lo = 0x90
        elif c == 0xF4:
            need = 3
            hi = 0x8F
        elif 0xF1 <= c <= 0xF3:
            need = 3
        else:
            return False
        if i + need >= n:
            return False
        c = b[i + 1]
        if c < lo or c > hi:
            return False
        j = i + 2
        i += need + 1
        while j < i:
            c = b[j]
            if c < 0x80 or c > 0xBF:
                return False
            j += 1
    return True


def _text(b):
    if _LAX_UTF8 and b and max(b) > 0x7F and not utf8_valid(b):
        raise DecodeError("text string is not valid UTF-8")
    try:
        return b.decode("utf-8")
    except UnicodeError:
        raise DecodeError("text string is not valid UTF-8")


# ---------------------------------------------------------------- floats


def _double_bits(x):
    return int.from_bytes(struct.pack(">d", x), "big")


def _float_head(x):
    """(initial byte, argument bytes) of the shortest exact encoding of x.

    Works on the bits of the float64 so it relies neither on struct's 'e'
    format (MicroPython rounds float16 subnormals to zero and wraps overflow)
    nor on OverflowError for out-of-range values.
    """
    bits = _double_bits(x)
    sign = bits >> 63
    exp = (bits >> 52) & 0x7FF
    frac = bits & 0xFFFFFFFFFFFFF
    if exp == 0x7FF:
        if frac:
            return 0xF9, _F16_NAN
        return 0xF9, (sign << 15) | 0x7C00
    if exp == 0:
        if frac == 0:
            return 0xF9, sign << 15
        return 0xFB, bits  # a float64 subnormal is below every float32
    e = exp - 1023
    sig = frac | (1 << 52)
    if -14 <= e <= 15:
        if frac & 0x3FFFFFFFFFF == 0:
            return 0xF9, (sign << 15) | ((e + 15) << 10) | (frac >> 42)
    elif -24 <= e < -14:
        shift = 28 - e
        if sig & ((1 << shift) - 1) == 0:
            return 0xF9, (sign << 15) | (sig >> shift)
    if -126 <= e <= 127:
        if frac & 0x1FFFFFFF == 0:
            return 0xFA, (sign << 31) | ((e + 127) << 23) | (frac >> 29)
    elif -149 <= e < -126:
        shift = -97 - e
        if sig & ((1 << shift) - 1) == 0:
            return 0xFA, (sign << 31) | (sig >> shift)
    return 0xFB, bits


def _half_to_float(h):
    # Built as float64 bits rather than with struct 'e', whose MicroPython
    # implementation is not exact for every input.
    sign = (h >> 15) << 63
    e = (h >> 10) & 0x1F
    f = h & 0x3FF
    if e == 0x1F:
        bits = sign | (0x7FF << 52) | (f << 42)
    elif e:
        bits = sign | ((e - 15 + 1023) << 52) | (f << 42)
    elif f:
        p = 9
        while not f & (1 << p):
            p -= 1
        bits = sign | ((p - 24 + 1023) << 52) | ((f - (1 << p)) << (52 - p))
    else:
        bits = sign
    return struct.unpack(">d", bits.to_bytes(8, "big"))[0]


# ---------------------------------------------------------------- encoder


def _head(out, major, n):
    mt = major << 5
    if n < 24:
        out.append(mt | n)
    elif n < 0x100:
        out.append(mt | 24)
        out.append(n)
    elif n < 0x10000:
        out.append(mt | 25)
        out.extend(n.to_bytes(2, "big"))
    elif n < 0x100000000:
        out.append(mt | 26)
        out.extend(n.to_bytes(4, "big"))
    else:
        out.append(mt | 27)
        out.extend(n.to_bytes(8, "big"))


def _enc(out, obj, depth):
    if obj is None:
        out.append(0xF6)
    elif obj is True:
        out.append(0xF5)
    elif obj is False:
        out.append(0xF4)
    elif isinstance(obj, int):
        if 0 <= obj < _UINT_LIMIT:
            _head(out, 0, obj)
        elif -_UINT_LIMIT <= obj < 0:
            _head(out, 1, -1 - obj)
        else:
            raise EncodeError("integer outside the CBOR range -2**64..2**64-1")
    elif isinstance(obj, str):
        try:
            b = obj.encode("utf-8")
        except UnicodeError:
            raise EncodeError("text is not encodable as UTF-8")
        _head(out, 3, len(b))
        out.extend(b)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        if isinstance(obj, memoryview):
            obj = bytes(obj)  # len() of a memoryview counts elements, not bytes
        _head(out, 2, len(obj))
        out.extend(obj)
    elif isinstance(obj, float):
        ib, arg = _float_head(obj)
        out.append(ib)
        out.extend(arg.to_bytes(2 if ib == 0xF9 else 4 if ib == 0xFA else 8, "big"))
    elif isinstance(obj, (list, tuple)):
        if depth >= MAX_ENCODE_DEPTH:
            raise EncodeError("nesting deeper than %d" % MAX_ENCODE_DEPTH)
        _head(out, 4, len(obj))
        for item in obj:
            _enc(out, item, depth + 1)
    elif isinstance(obj, dict):
        if depth >= MAX_ENCODE_DEPTH:
            raise EncodeError("nesting deeper than %d" % MAX_ENCODE_DEPTH)
        _head(out, 5, len(obj))
        for k, v in obj.items():
            if k is True or k is False or not isinstance(k, (int, str, bytes)):
                raise EncodeError("map keys must be int, str or bytes")
            _enc(out, k, depth + 1)
            _enc(out, v, depth + 1)
    else:
        raise EncodeError("cannot encode %s as CBOR" % type(obj).__name__)


def dumps(obj):
    """The deterministic CBOR encoding of ``obj`` (see the module docstring)."""
    out = bytearray()
    _enc(out, obj, 0)
    return bytes(out)


# ---------------------------------------------------------------- decoder


class _Decoder:
    def __init__(self, data, pos, max_depth, max_items):
        try:
            self.buf = memoryview(data)
        except TypeError:
            raise DecodeError("CBOR input must be bytes-like")
        self.end = len(self.buf)
        if pos < 0 or pos > self.end:
            raise DecodeError("offset outside the input")
        self.pos = pos
        self.max_depth = max_depth
        self.left = max_items

    def _spend(self, n):
        if n > self.left:
            raise LimitError("more than the allowed number of CBOR items")
        self.left -= n

    def _take(self, n):
        p = self.pos
        if n > self.end - p:
            raise DecodeError("truncated CBOR")
        self.pos = p + n
        return p

    def _head(self):
        """(major, ai, argument); argument is None for indefinite length."""
        p = self.pos
        if p >= self.end:
            raise DecodeError("truncated CBOR")
        ib = self.buf[p]
        self.pos = p + 1
        ai = ib & 31
        if ai < 24:
            return ib >> 5, ai, ai
        if ai < 28:
            n = 1 << (ai - 24)
            s = self._take(n)
            if n == 1:
                return ib >> 5, ai, self.buf[s]
            return ib >> 5, ai, int.from_bytes(self.buf[s : s + n], "big")
        if ai == 31:
            return ib >> 5, ai, None
        raise DecodeError("reserved additional information %d" % ai)

    def _at_break(self):
        p = self.pos
        if p >= self.end:
            raise DecodeError("truncated CBOR: indefinite item without break")
        if self.buf[p] == _BREAK:
            self.pos = p + 1
            return True
        return False

    def _string(self, major, n):
        if n is None:
            chunks = []  # type: list
            while not self._at_break():
                m, _, cn = self._head()
                if m != major or cn is None:
                    raise DecodeError("bad chunk in indefinite-length string")
                self._spend(1)
                s = self._take(cn)
                chunk = bytes(self.buf[s : s + cn])
                # RFC 8949 3.2.3: a chunk of text must be whole UTF-8 on its own.
                chunks.append(_text(chunk) if major == 3 else chunk)
            if major == 3:
                return "".join(chunks)
            return b"".join(chunks)
        s = self._take(n)
        b = bytes(self.buf[s : s + n])
        if major == 3:
            return _text(b)
        return b

    def item(self, depth):
        major, ai, v = self._head()
        self._spend(1)
        if major == 0:
            if v is None:
                raise DecodeError("indefinite length on an integer")
            return v
        if major == 1:
            if v is None:
                raise DecodeError("indefinite length on an integer")
            return -1 - v
        if major == 2 or major == 3:
            return self._string(major, v)
        if major == 4 or major == 5:
            if depth >= self.max_depth:
                raise LimitError("CBOR nested deeper than %d" % self.max_depth)
            if major == 4:
                return self._array(v, depth + 1)
            return self._map(v, depth + 1)
        if major == 6:
            raise DecodeError("CBOR tags are not accepted")
        # major 7
        if ai == 20:
            return False
        if ai == 21:
            return True
        if ai == 22:
            return None
        if ai == 25:
            return _half_to_float(v)
        if ai == 26:
            return struct.unpack(">f", v.to_bytes(4, "big"))[0]
        if ai == 27:
            return struct.unpack(">d", v.to_bytes(8, "big"))[0]
        if ai == 31:
            raise DecodeError("unexpected break")
        if ai == 23:
            raise DecodeError("undefined is not accepted")
        if ai == 24 and v < 32:
            raise DecodeError("simple value %d in two-byte form is not well-formed" % v)
        raise DecodeError("simple value %d is not accepted" % v)

    def _array(self, n, depth):
        out = []
        if n is None:
            while not self._at_break():
                out.append(self.item(depth))
            return out
        if n > self.left:
            raise LimitError("array of %d items exceeds the item limit" % n)
        if n > self.end - self.pos:
            raise DecodeError("truncated CBOR: array longer than the input")
        for _ in range(n):
            out.append(self.item(depth))
        return out

    def _map(self, n, depth):
        out = {}  # type: dict
        if n is None:
            while not self._at_break():
                self._pair(out, depth)
            return out
        if 2 * n > self.left:
            raise LimitError("map of %d pairs exceeds the item limit" % n)
        if 2 * n > self.end - self.pos:
            raise DecodeError("truncated CBOR: map longer than the input")
        for _ in range(n):
            self._pair(out, depth)
        return out

    def _pair(self, out, depth):
        k = self.item(depth)
        if k is True or k is False or not isinstance(k, (int, str, bytes)):
            raise DecodeError("map keys must be int, text or bytes")
        if k in out:
            raise DecodeError("duplicate map key")
        out[k] = self.item(depth)


def decode_from(data, offset=0, max_depth=DEFAULT_MAX_DEPTH, max_items=DEFAULT_MAX_ITEMS):
    """Decode one item starting at ``offset``; return (obj, offset just past it)."""
    d = _Decoder(data, offset, max_depth, max_items)
    obj = d.item(0)
    return obj, d.pos


def loads(data, max_depth=DEFAULT_MAX_DEPTH, max_items=DEFAULT_MAX_ITEMS):
    """Decode exactly one item that fills ``data``; trailing bytes are an error."""
    d = _Decoder(data, 0, max_depth, max_items)
    obj = d.item(0)
    if d.pos != d.end:
        raise DecodeError("%d trailing bytes after CBOR item" % (d.end - d.pos))
    return obj
