"""Handshake frames: Noise IK (the normal path) and XX (pairing), as datagrams.

IK, one round trip, first request as 0-RTT payload::

    device -> proxy   0x81 | e(32) | enc(s)(48) | enc(caps(1) | [epoch(4)] | coap request)(+16)
    proxy  -> device  0x82 | e(32) | enc(sid(2) | caps(1) | coap response)(+16)

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

This module is sans-I/O and shared with MicroPython.
"""

from lowbw.wire import frames
from lowbw.wire._compat import const
from lowbw.wire.errors import DecodeError, EncodeError, StateError
from lowbw.wire.noise import HandshakeState

CAPS_TABLE_MASK = const(0x0F)
CAP_DICT_V1 = const(0x10)
CAP_EPOCH = const(0x20)
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


def _split_session(hs, sid, initiator):
    c_send, c_recv = hs.split()
    return frames.Session(c_send.k, c_recv.k, sid, initiator)


class Initiator:
    """Device side of the handshake.

    ``Initiator(s_priv, proxy_pub)`` starts IK; ``Initiator(s_priv, None)``
    starts XX. ``start(request)`` returns the first datagram, ``finish(dgram)``
    reads the proxy's answer and returns ``(session, caps, response)``; for XX,
    ``finish`` returns the third datagram to send instead of a response:
    ``(session, caps, xx3_datagram)``.

    ``epoch`` (an int, 0..2**32-1) announces the device's counter epoch
    (module docstring); it sets CAP_EPOCH in the offered caps. The proxy took
    it if the answer's caps have CAP_EPOCH (for XX, that only says it will read
    it from message 3).
    """

    def __init__(self, s_priv, proxy_pub=None, caps=DEFAULT_CAPS, e_priv=None, random=None, epoch=None):
        self.pattern = "IK" if proxy_pub is not None else "XX"
        self._epoch = _epoch_bytes(epoch)
        self.epoch = epoch
        # The bit says what follows the caps byte, so it follows ``epoch``, never the caller.
        self.caps = (caps | CAP_EPOCH) if epoch is not None else (caps & ~CAP_EPOCH)
        self.hs = HandshakeState(self.pattern, True, s_priv, rs=proxy_pub, prologue=frames.PROLOGUE,
                                 e_priv=e_priv, random=random)
        self.state = 0
        self.request = b""

    def start(self, request=b""):
        if self.state != 0:
            raise StateError("handshake already started")
        self.state = 1
        if self.pattern == "IK":
            return bytes([frames.HS_IK1]) + self.hs.write_message(bytes([self.caps]) + self._epoch + request)
        # XX message 1 is plaintext: no request may ride on it.
        self.request = request
        pad = XX1_MIN_LEN - 1 - DH_LEN - 1
        return bytes([frames.HS_XX1]) + self.hs.write_message(bytes([self.caps]) + bytes(pad))

    def finish(self, datagram):
        if self.state != 1:
            raise StateError("no handshake in flight")
        want = frames.HS_IK2 if self.pattern == "IK" else frames.HS_XX2
        if not datagram or datagram[0] != want:
            raise DecodeError("expected handshake answer 0x%02x" % want)
        payload = self.hs.read_message(bytes(datagram[1:]))
        if len(payload) < 3:
            raise DecodeError("handshake answer payload too short")
        sid = (payload[0] << 8) | payload[1]
        caps = payload[2]
        self.state = 2
        if self.pattern == "IK":
            return _split_session(self.hs, sid, True), caps, bytes(payload[3:])
        msg3 = self.hs.write_message(self._epoch + self.request)
        xx3 = bytes([frames.HS_XX3, sid >> 8, sid & 0xFF]) + msg3
        return _split_session(self.hs, sid, True), caps, xx3

    def remote_static(self):
        return self.hs.remote_static()


class Responder:
    """Proxy side of one handshake (pure-Python; the proxy may use noiseprotocol
    with the same bytes on the wire).

    IK: ``read_init(dgram) -> (device_pub, caps, request)``, then the caller
    checks enrollment and calls ``respond(sid, caps, response) -> (dgram,
    session)``. XX: ``read_init`` returns ``(None, caps, b"")``,
    ``respond(sid, caps)`` gives the XX2 datagram and ``None``, and
    ``read_final(xx3) -> (device_pub, request, session)``.

    ``caps`` is the byte as offered (CAP_EPOCH included); ``request`` never
    holds the epoch. ``self.epoch`` is the device's counter epoch, or None if
    it announced none: set by ``read_init`` (IK) or ``read_final`` (XX). The
    caller adds CAP_EPOCH to the caps it answers once it has recorded it.
    """

    def __init__(self, s_priv, e_priv=None, random=None):
        self.s_priv = s_priv
        self.e_priv = e_priv
        self.random = random
        self.hs = None
        self.pattern = None
        self.sid = None
        self.epoch = None
        self.offered = 0

    def read_init(self, datagram):
        if self.hs is not None:
            raise StateError("handshake already started")
        if not datagram:
            raise DecodeError("empty datagram")
        kind = datagram[0]
        if kind == frames.HS_IK1:
            self.pattern = "IK"
        elif kind == frames.HS_XX1:
            if len(datagram) < XX1_MIN_LEN:
                raise DecodeError("XX message 1 shorter than its padding rule")
            self.pattern = "XX"
        else:
            raise DecodeError("not a handshake initiation")
        self.hs = HandshakeState(self.pattern, False, self.s_priv, prologue=frames.PROLOGUE,
                                 e_priv=self.e_priv, random=self.random)
        payload = self.hs.read_message(bytes(datagram[1:]))
        if len(payload) < 1:
            raise DecodeError("handshake payload lacks caps")
        self.offered = payload[0]
        if self.pattern == "IK":
            self.epoch, request = split_epoch(self.offered, payload[1:])
            return self.hs.remote_static(), self.offered, bytes(request)
        return None, self.offered, b""

    def respond(self, sid, caps, response=b""):
        if self.hs is None or self.sid is not None:
            raise StateError("respond() needs exactly one read_init() first")
        self.sid = sid
        head = bytes([sid >> 8, sid & 0xFF, caps])
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
    """The initiator's ephemeral public key in an IK1/XX1 datagram (for the
    proxy's replay cache: a repeated ephemeral is a replayed handshake)."""
    if len(datagram) < 1 + DH_LEN:
        raise DecodeError("handshake too short")
    return bytes(datagram[1:1 + DH_LEN])
