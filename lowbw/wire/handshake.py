"""Handshake frames: Noise IK (the normal path) and XX (pairing), as datagrams.

IK, one round trip, first request as 0-RTT payload::

    device -> proxy   0x81 | e(32) | enc(s)(48) | enc(caps(1) | [epoch(4)] | hsn(1..9) | coap request)(+16)
    proxy  -> device  0x82 | e(32) | enc(sid(2) | caps(1) | [floor(1..9)] | coap response)(+16)

XX, for a device that does not yet hold the proxy's key (pairing); the proxy
still admits only enrolled device keys::

    device -> proxy   0x83 | e(32) | caps(1) | zero padding (frame >= 100 bytes)
    proxy  -> device  0x84 | e(32) | enc(s)(48) | enc(sid(2) | caps(1))(+16)
    device -> proxy   0x85 | sid(2) | enc(s)(48) | enc([epoch(4)] | coap request)(+16)

XX message 1 is padded to at least the size of message 2 so an unauthenticated
datagram never draws a larger answer. The Noise prologue is frames.PROLOGUE, so
a lowbw handshake cannot be spliced into another protocol's.

``caps`` agrees table versions and capabilities once per session (never per
request): bits 0..3 the key table id (keys.py), bit 4 the preset body
dictionary, bit 5 ``CAP_EPOCH``, bits 6..7 reserved (sent 0, ignored).

Counter epoch (``CAP_EPOCH``): the proxy names a device's messages by its
message counter, which lives in the device's store. A device that loses its
store starts counting again at 0, and the proxy would take its new messages
for old ones it already delivered. So a device draws a random 32-bit epoch
when it creates a fresh store, and announces it (big-endian, right after the
caps byte of IK message 1, or at the start of XX message 3's payload: XX
message 1 is not authenticated) until a handshake answer carries CAP_EPOCH
back: the proxy echoes the bit only when it has recorded the epoch. A new
epoch restarts the proxy's count for that device. Announcing costs 4 bytes
once per fresh store; ordinary handshakes do not carry it.

Handshake number (``hsn``): every IK message 1 carries, right after the
caps byte and the optional epoch, a number that grows with each handshake the
device starts, as a CBOR unsigned integer head (1 byte below 24, 2 below 256,
3 below 65536, 5 below 2**32, 9 above). The proxy records the highest it
accepted per device and answers only a larger one, so an IK message 1
captured on the air is dead as soon as a newer handshake was accepted, however
many handshakes happened in between (WireGuard does the same with a TAI64N
timestamp). A device keeps its next number in its store; an initiator without
a store (the client-proxy, tests) uses the wall clock in seconds, strictly
increasing within the process (``clock_hsn``).

A device that lost its store (fresh epoch) starts counting again at 0. The
proxy accepts the handshake that announces the new epoch and, when its number
is not above the device's old highest, answers with that highest as ``floor``
(caps bit 6, ``CAP_FLOOR``, set in the answer): the device continues from
floor + 1, so numbers from before the loss stay below every future one.

Cookies (only while the proxy is under load, in the spirit of WireGuard's
cookie reply): the proxy may answer an IK1 or XX1 with ``0x86 | cookie(16)``
instead of doing any Diffie-Hellman work. The device sends the same
initiation again, prefixed: ``0x87 | cookie(16) | IK1-or-XX1 datagram``. The
cookie is a MAC the proxy computes from a secret it rotates, the source
address and the initiation's ephemeral key, so only a sender that receives at
its address can present one; it costs no state at the proxy.

This module is sans-I/O and shared with MicroPython.
"""

from lowbw.wire import crypto, frames
from lowbw.wire._compat import const
from lowbw.wire.errors import AuthError, DecodeError, EncodeError, StateError
from lowbw.wire.noise import HandshakeState

CAPS_TABLE_MASK = const(0x0F)
CAP_DICT_V1 = const(0x10)
CAP_EPOCH = const(0x20)
# In the proxy's answer only: a handshake-number floor follows the caps byte.
CAP_FLOOR = const(0x40)
# The compact link profile (Noise KK, compact transport frames): set by the
# device in KK message 1 and by the proxy in its answer.
CAP_COMPACT = const(0x80)
KID_LEN = const(2)
# Flags negotiate_caps intersects. CAP_EPOCH is not one: it is answered per
# handshake by whoever processed the epoch (see negotiate_caps).
CAPS_KNOWN_FLAGS = const(0x10)
EPOCH_LEN = const(4)
# Key table ids of keys.py (TABLE_MSC3079_V1, TABLE_LOWBW_V1). Not imported:
# keys.py pulls in the tables, ~14 KB of heap a device never needs.
SUPPORTED_TABLES = (1, 2)
DEFAULT_CAPS = const(0x02)

XX1_MIN_LEN = const(100)
DH_LEN = const(32)
HSN_MAX = (1 << 64) - 1

_last_clock_hsn = [0]


def clock_hsn():
    """A handshake number from the wall clock (seconds), strictly increasing in
    this process: for initiators that keep no store (module docstring)."""
    import time

    n = int(time.time())
    last = _last_clock_hsn[0]
    if n <= last:
        n = last + 1
    _last_clock_hsn[0] = n
    return n


def encode_uint(n):
    """A CBOR unsigned-integer head (major type 0) for 0 <= n < 2**64."""
    if not isinstance(n, int) or n is True or n is False or n < 0 or n > HSN_MAX:
        raise EncodeError("a handshake number is an integer 0..2**64-1")
    if n < 24:
        return bytes([n])
    if n < 0x100:
        return bytes([24, n])
    if n < 0x10000:
        return bytes([25]) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes([26]) + n.to_bytes(4, "big")
    return bytes([27]) + n.to_bytes(8, "big")


def split_uint(payload):
    """``(n, rest)``: a CBOR unsigned-integer head off the front of ``payload``.

    DecodeError if it is missing, truncated, not major type 0, or not in
    shortest form (so one number has one encoding)."""
    if len(payload) < 1:
        raise DecodeError("handshake payload lacks its handshake number")
    b0 = payload[0]
    if b0 < 24:
        return b0, payload[1:]
    size = {24: 1, 25: 2, 26: 4, 27: 8}.get(b0)
    if size is None:
        raise DecodeError("handshake number is not a CBOR unsigned integer")
    if len(payload) < 1 + size:
        raise DecodeError("handshake number truncated")
    n = int.from_bytes(bytes(payload[1:1 + size]), "big")
    if n < (24 if size == 1 else 1 << (4 * size)):
        raise DecodeError("handshake number not in shortest form")
    return n, payload[1 + size:]


def split_init_payload(offered, payload):
    """``(epoch or None, hsn, request)`` of an IK message 1 payload after its caps byte."""
    epoch, rest = split_epoch(offered, payload)
    hsn, rest = split_uint(rest)
    return epoch, hsn, rest


def cookied(cookie, datagram):
    """The initiation ``datagram`` (IK1 or XX1) again, carrying a cookie from a cookie reply."""
    if len(cookie) != frames.COOKIE_LEN:
        raise EncodeError("a cookie is %d bytes" % frames.COOKIE_LEN)
    return bytes([frames.HS_COOKIED]) + bytes(cookie) + bytes(datagram)


def parse_cookie_reply(datagram):
    """The cookie in a cookie reply (``0x86 | cookie(16)``); DecodeError otherwise."""
    if len(datagram) != 1 + frames.COOKIE_LEN or datagram[0] != frames.HS_COOKIE_REPLY:
        raise DecodeError("not a cookie reply")
    return bytes(datagram[1:])


def split_cookied(datagram):
    """``(cookie, initiation)`` of a ``0x87`` datagram; DecodeError if it is not one."""
    if len(datagram) < 2 + frames.COOKIE_LEN or datagram[0] != frames.HS_COOKIED:
        raise DecodeError("not a handshake with a cookie")
    inner = datagram[1 + frames.COOKIE_LEN:]
    if inner[0] != frames.HS_IK1 and inner[0] != frames.HS_XX1 and inner[0] != frames.HS_KK1:
        raise DecodeError("a cookie rides only on IK, XX or KK message 1")
    return bytes(datagram[1:1 + frames.COOKIE_LEN]), bytes(inner)


def negotiate_caps(offered, supported_flags=CAPS_KNOWN_FLAGS):
    """The caps a responder accepts: the offered table if known, else ours; flags both support.

    Never CAP_EPOCH: the caller adds it to its answer only after it has
    recorded the epoch the handshake carried (the device stops announcing it
    once it sees the bit).
    """
    table = offered & CAPS_TABLE_MASK
    if table not in SUPPORTED_TABLES:
        table = DEFAULT_CAPS & CAPS_TABLE_MASK
    return table | (offered & supported_flags & 0xF0 & ~CAP_EPOCH)


def split_epoch(caps, payload):
    """``(epoch or None, rest)`` of a handshake payload whose sender offered ``caps``.

    IK message 1 after its caps byte, XX message 3 whole: with CAP_EPOCH in
    ``caps`` the first 4 bytes are the epoch (big-endian). DecodeError if they
    are missing.
    """
    if not caps & CAP_EPOCH:
        return None, payload
    if len(payload) < EPOCH_LEN:
        raise DecodeError("handshake payload lacks its counter epoch")
    return int.from_bytes(bytes(payload[:EPOCH_LEN]), "big"), payload[EPOCH_LEN:]


def _epoch_bytes(epoch):
    if epoch is None:
        return b""
    if not isinstance(epoch, int) or epoch is True or epoch is False or not 0 <= epoch <= 0xFFFFFFFF:
        raise EncodeError("counter epoch is a 32-bit unsigned integer")
    return epoch.to_bytes(EPOCH_LEN, "big")


def answer_head(sid, caps, floor=None):
    """sid | caps(1) | [floor]: the start of IK/XX/KK message 2's payload; the
    sid is 2 bytes, or 1..2 (``frames.sid_bytes``) with CAP_COMPACT."""
    caps &= ~CAP_FLOOR
    head = frames.sid_bytes(sid) if caps & CAP_COMPACT else bytes([sid >> 8, sid & 0xFF])
    if floor is None:
        return head + bytes([caps])
    return head + bytes([caps | CAP_FLOOR]) + encode_uint(floor)


def key_id(static_pub):
    """The 2-byte key id a KK message 1 names its device by: SHA-256 of the
    device's static public key, first 2 bytes (not secret, not unique)."""
    return crypto.sha256(bytes(static_pub))[:KID_LEN]


def kk_request(rest):
    """``(coap request, mid)`` of a KK message 1's request field (after the
    handshake number): empty, or a rule byte and its residue (2-byte MID)."""
    if not rest:
        return b"", -1
    request, mid = frames.expand_up(rest[0], rest[1:], None)
    if mid is None:
        mid = (request[2] << 8) | request[3] if len(request) >= 4 else -1
    return request, mid


def kk_response(response):
    """A KK message 2's response field: empty, or rule byte + residue."""
    if not response:
        return b""
    rule, residue, _ad = frames.compress_down(response)
    return bytes([rule]) + residue


def _split_session(hs, sid, initiator):
    c_send, c_recv = hs.split()
    return frames.Session(c_send.k, c_recv.k, sid, initiator)


class Initiator:
    """Device side of the handshake.

    ``Initiator(s_priv, proxy_pub)`` starts IK, with ``compact=True`` KK (the
    compact link profile); ``Pairing(s_priv)`` starts XX. ``start(request)``
    returns the first datagram, ``finish(dgram)`` reads the proxy's answer and
    returns ``(session, caps, response)``.

    ``epoch`` (an int, 0..2**32-1) announces the device's counter epoch
    (module docstring); it sets CAP_EPOCH in the offered caps. The proxy took
    it if the answer's caps have CAP_EPOCH.

    ``hsn`` is the handshake number IK/KK message 1 carries (module docstring):
    a device passes the next one from its store; None takes ``clock_hsn()``.
    After ``finish``, ``floor`` is the number the proxy asked the device to
    continue above (CAP_FLOOR), else None.
    """

    pattern = "IK"

    def __init__(self, s_priv, proxy_pub=None, caps=DEFAULT_CAPS, e_priv=None, random=None, epoch=None,
                 hsn=None, compact=False):
        if compact:
            self.pattern = "KK"
            caps |= CAP_COMPACT
        self._epoch = _epoch_bytes(epoch)
        self.epoch = epoch
        self.mid = -1
        # (A pairing has one too, never sent: XX message 1 is not authenticated.)
        self.hsn = clock_hsn() if hsn is None else hsn
        self._hsn = encode_uint(self.hsn)
        self.floor = None
        # The bit says what follows the caps byte, so it follows ``epoch``, never the caller.
        self.caps = (caps | CAP_EPOCH) if epoch is not None else (caps & ~CAP_EPOCH)
        self.hs = HandshakeState(self.pattern, True, s_priv, rs=proxy_pub, prologue=frames.PROLOGUE,
                                 e_priv=e_priv, random=random)
        self.state = 0

    def start(self, request=b""):
        if self.state != 0:
            raise StateError("handshake already started")
        self.state = 1
        head = bytes([self.caps]) + self._epoch + self._hsn
        if self.pattern == "IK":
            return bytes([frames.HS_IK1]) + self.hs.write_message(head + request)
        # KK: the request compressed (frames.compress_up, both Message ID bytes).
        if request:
            self.mid = (request[2] << 8) | request[3]
            rule, residue = frames.compress_up(request, True)
            head += bytes([rule]) + residue
        return bytes([frames.HS_KK1]) + crypto.sha256(self.hs.s_pub)[:KID_LEN] + self.hs.write_message(head)

    def finish(self, datagram):
        if self.state != 1:
            raise StateError("no handshake in flight")
        kk = self.pattern == "KK"
        want = frames.HS_KK2 if kk else frames.HS_IK2
        if not datagram or datagram[0] != want:
            raise DecodeError("expected handshake answer 0x%02x" % want)
        payload = self.hs.read_message(bytes(datagram[1:]))
        # sid: 2 bytes; KK: 1 below 0x80, else 2 with the top bit set.
        pos = (1 + (payload[0] >> 7)) if kk and payload else 2
        if len(payload) <= pos:
            raise DecodeError("handshake answer payload too short")
        sid = int.from_bytes(payload[:pos], "big") & (0x7FFF if kk else 0xFFFF)
        caps = payload[pos]
        rest = payload[pos + 1:]
        if caps & CAP_FLOOR:
            self.floor, rest = split_uint(rest)
            caps &= ~CAP_FLOOR
        if kk and rest:
            rest = frames.expand_down(rest[0], rest[1:], self.mid)
        self.state = 2
        c_send, c_recv = self.hs.split()
        return frames.Session(c_send.k, c_recv.k, sid, True, 0, -1, 0, 0, kk, self.mid), caps, bytes(rest)

    def remote_static(self):
        return self.hs.remote_static()


class Pairing(Initiator):
    """Device side of an XX pairing (the device does not hold the proxy key yet):
    ``start(request)`` gives XX message 1 (the request waits for message 3),
    ``finish(xx2)`` returns ``(session, caps, xx3_datagram)``. With ``epoch``
    the answer's CAP_EPOCH only says the proxy will read it from message 3."""

    pattern = "XX"

    def __init__(self, s_priv, caps=DEFAULT_CAPS, e_priv=None, random=None, epoch=None):
        Initiator.__init__(self, s_priv, None, caps, e_priv, random, epoch)
        self.request = b""

    def start(self, request=b""):
        if self.state != 0:
            raise StateError("handshake already started")
        self.state = 1
        # XX message 1 is plaintext: no request may ride on it.
        self.request = request
        pad = XX1_MIN_LEN - 1 - DH_LEN - 1
        return bytes([frames.HS_XX1]) + self.hs.write_message(bytes([self.caps]) + bytes(pad))

    def finish(self, datagram):
        if self.state != 1:
            raise StateError("no handshake in flight")
        if not datagram or datagram[0] != frames.HS_XX2:
            raise DecodeError("expected handshake answer 0x%02x" % frames.HS_XX2)
        payload = self.hs.read_message(bytes(datagram[1:]))
        if len(payload) < 3:
            raise DecodeError("handshake answer payload too short")
        sid = (payload[0] << 8) | payload[1]
        self.state = 2
        msg3 = self.hs.write_message(self._epoch + self.request)
        xx3 = bytes([frames.HS_XX3, sid >> 8, sid & 0xFF]) + msg3
        return _split_session(self.hs, sid, True), payload[2], xx3


class Responder:
    """Proxy side of one handshake (pure-Python; the proxy may use noiseprotocol
    with the same bytes on the wire).

    IK: ``read_init(dgram) -> (device_pub, caps, request)``, then the caller
    checks enrollment and calls ``respond(sid, caps, response) -> (dgram,
    session)``. XX: ``read_init`` returns ``(None, caps, b"")``,
    ``respond(sid, caps)`` gives the XX2 datagram and ``None``, and
    ``read_final(xx3) -> (device_pub, request, session)``.

    ``caps`` is the byte as offered (CAP_EPOCH included); ``request`` never
    holds the epoch or the handshake number. ``self.epoch`` is the device's
    counter epoch, or None if it announced none: set by ``read_init`` (IK) or
    ``read_final`` (XX). ``self.hsn`` is IK message 1's handshake number. The
    caller adds CAP_EPOCH to the caps it answers once it has recorded it, and
    passes ``floor`` to ``respond`` when the device must count above it.
    """

    def __init__(self, s_priv, e_priv=None, random=None, rs=None):
        self.s_priv = s_priv
        self.e_priv = e_priv
        self.random = random
        self.rs = rs
        self.mid = -1
        self.hs = None
        self.pattern = None
        self.sid = None
        self.epoch = None
        self.hsn = None
        self.offered = 0

    def read_init(self, datagram):
        if self.hs is not None:
            raise StateError("handshake already started")
        if not datagram:
            raise DecodeError("empty datagram")
        kind = datagram[0]
        msg = datagram[1:]
        if kind == frames.HS_IK1:
            self.pattern = "IK"
        elif kind == frames.HS_KK1:
            if self.rs is None:
                raise AuthError("KK message 1 for no known device key")
            self.pattern = "KK"
            msg = datagram[1 + KID_LEN:]
        elif kind == frames.HS_XX1:
            if len(datagram) < XX1_MIN_LEN:
                raise DecodeError("XX message 1 shorter than its padding rule")
            self.pattern = "XX"
        else:
            raise DecodeError("not a handshake initiation")
        self.hs = HandshakeState(self.pattern, False, self.s_priv, prologue=frames.PROLOGUE,
                                 e_priv=self.e_priv, random=self.random,
                                 rs=self.rs if self.pattern == "KK" else None)
        payload = self.hs.read_message(bytes(msg))
        if len(payload) < 1:
            raise DecodeError("handshake payload lacks caps")
        self.offered = payload[0]
        if self.pattern == "KK":
            self.epoch, self.hsn, rest = split_init_payload(self.offered, payload[1:])
            request, self.mid = kk_request(rest)
            return self.hs.remote_static(), self.offered, request
        if self.pattern == "IK":
            self.epoch, self.hsn, request = split_init_payload(self.offered, payload[1:])
            return self.hs.remote_static(), self.offered, bytes(request)
        return None, self.offered, b""

    def respond(self, sid, caps, response=b"", floor=None):
        if self.hs is None or self.sid is not None:
            raise StateError("respond() needs exactly one read_init() first")
        self.sid = sid
        if self.pattern == "KK":
            head = answer_head(sid, caps | CAP_COMPACT, floor)
            dgram = bytes([frames.HS_KK2]) + self.hs.write_message(head + kk_response(response))
            c_send, c_recv = self.hs.split()
            return dgram, frames.Session(c_send.k, c_recv.k, sid, False, compact=True, mid=self.mid)
        head = answer_head(sid, caps, floor)
        if self.pattern == "IK":
            dgram = bytes([frames.HS_IK2]) + self.hs.write_message(head + response)
            return dgram, _split_session(self.hs, sid, False)
        if response:
            raise StateError("XX message 2 cannot carry a response")
        return bytes([frames.HS_XX2]) + self.hs.write_message(head), None

    def read_final(self, datagram):
        if self.pattern != "XX" or self.sid is None:
            raise StateError("read_final() is the third XX message only")
        if len(datagram) < 3 or datagram[0] != frames.HS_XX3:
            raise DecodeError("not an XX message 3")
        if ((datagram[1] << 8) | datagram[2]) != self.sid:
            raise DecodeError("XX message 3 for another session")
        payload = self.hs.read_message(bytes(datagram[3:]))
        self.epoch, request = split_epoch(self.offered, payload)
        return self.hs.remote_static(), bytes(request), _split_session(self.hs, self.sid, False)


def init_ephemeral(datagram):
    """The initiator's ephemeral public key in an IK1/XX1/KK1 datagram (for the
    proxy's replay cache: a repeated ephemeral is a replayed handshake)."""
    pos = 1 + KID_LEN if datagram and datagram[0] == frames.HS_KK1 else 1
    if len(datagram) < pos + DH_LEN:
        raise DecodeError("handshake too short")
    return bytes(datagram[pos:pos + DH_LEN])
