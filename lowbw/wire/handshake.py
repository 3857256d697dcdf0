"""Handshake frames: Noise IK (the normal path) and XX (pairing), as datagrams.

IK, one round trip, first request as 0-RTT payload::

    device -> proxy   0x81 | e(32) | enc(s)(48) | enc(caps(1) | coap request)(+16)
    proxy  -> device  0x82 | e(32) | enc(sid(2) | caps(1) | coap response)(+16)

XX, for a device that does not yet hold the proxy's key (pairing); the proxy
still admits only enrolled device keys::

    device -> proxy   0x83 | e(32) | caps(1) | zero padding (frame >= 100 bytes)
    proxy  -> device  0x84 | e(32) | enc(s)(48) | enc(sid(2) | caps(1))(+16)
    device -> proxy   0x85 | sid(2) | enc(s)(48) | enc(coap request)(+16)

XX message 1 is padded to at least the size of message 2 so an unauthenticated
datagram never draws a larger answer. The Noise prologue is frames.PROLOGUE, so
a lowbw handshake cannot be spliced into another protocol's.

``caps`` agrees table versions and capabilities once per session (never per
request): bits 0..3 the key table id (keys.py), bit 4 the preset body
dictionary, bits 5..7 reserved (sent 0, ignored).

This module is sans-I/O and shared with MicroPython.
"""

from lowbw.wire import frames
from lowbw.wire._compat import const
from lowbw.wire.errors import DecodeError, StateError
from lowbw.wire.noise import HandshakeState

CAPS_TABLE_MASK = const(0x0F)
CAP_DICT_V1 = const(0x10)
CAPS_KNOWN_FLAGS = const(0x10)
# Key table ids of keys.py (TABLE_MSC3079_V1, TABLE_LOWBW_V1). Not imported:
# keys.py pulls in the tables, ~14 KB of heap a device never needs.
SUPPORTED_TABLES = (1, 2)
DEFAULT_CAPS = const(0x02)

XX1_MIN_LEN = const(100)
DH_LEN = const(32)


def negotiate_caps(offered, supported_flags=CAPS_KNOWN_FLAGS):
    """The caps a responder accepts: the offered table if known, else ours; flags both support."""
    table = offered & CAPS_TABLE_MASK
    if table not in SUPPORTED_TABLES:
        table = DEFAULT_CAPS & CAPS_TABLE_MASK
    return table | (offered & supported_flags & 0xF0)


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
    """

    def __init__(self, s_priv, proxy_pub=None, caps=DEFAULT_CAPS, e_priv=None, random=None):
        self.pattern = "IK" if proxy_pub is not None else "XX"
        self.caps = caps
        self.hs = HandshakeState(self.pattern, True, s_priv, rs=proxy_pub, prologue=frames.PROLOGUE,
                                 e_priv=e_priv, random=random)
        self.state = 0
        self.request = b""

    def start(self, request=b""):
        if self.state != 0:
            raise StateError("handshake already started")
        self.state = 1
        if self.pattern == "IK":
            return bytes([frames.HS_IK1]) + self.hs.write_message(bytes([self.caps]) + request)
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
        msg3 = self.hs.write_message(self.request)
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
    """

    def __init__(self, s_priv, e_priv=None, random=None):
        self.s_priv = s_priv
        self.e_priv = e_priv
        self.random = random
        self.hs = None
        self.pattern = None
        self.sid = None

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
        if self.pattern == "IK":
            return self.hs.remote_static(), payload[0], bytes(payload[1:])
        return None, payload[0], b""

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
        request = self.hs.read_message(bytes(datagram[3:]))
        return self.hs.remote_static(), request, _split_session(self.hs, self.sid, False)


def init_ephemeral(datagram):
    """The initiator's ephemeral public key in an IK1/XX1 datagram (for the
    proxy's replay cache: a repeated ephemeral is a replayed handshake)."""
    if len(datagram) < 1 + DH_LEN:
        raise DecodeError("handshake too short")
    return bytes(datagram[1:1 + DH_LEN])
