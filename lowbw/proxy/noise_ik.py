"""The proxy's side of the lowbw handshakes, on the ``noiseprotocol`` package.

The datagrams are exactly those of ``lowbw.wire.handshake`` (module docstring
there): IK ``0x81``/``0x82`` with the first request as 0-RTT payload, XX
``0x83``/``0x84``/``0x85`` for pairing, KK ``0x88``/``0x89`` for the compact
link profile (``rs=``: the device key the key id named), Noise prologue
``frames.PROLOGUE``.
``Responder`` here has the same methods as ``lowbw.wire.handshake.Responder``
and gives byte-identical answers for the same keys (tests/proxy/test_server_noise.py
proves it with fixed ephemerals): like it, ``read_init`` takes the optional
counter epoch and the handshake number off the request and leaves them in
``self.epoch`` and ``self.hsn``; the device keeps the plain-Python state machine, the proxy uses
``noiseprotocol`` as DESIGN.md asks.

What noiseprotocol lacks and this module adds:

* the frame layer: kind byte, XX message 1 padding rule, session id and caps
  in the answer payload, ``frames.Session`` built from the split keys;
* lowbw's error hierarchy: every refusal is ``DecodeError`` (malformed),
  ``AuthError`` (a tag or a DH failed) or ``StateError`` (out of turn), never
  ``InvalidTag``/``ValueError``/a noiseprotocol exception. Lengths are checked
  before noiseprotocol sees a message, because it slices without checking.
* noiseprotocol cannot roll a failed read back: a forged XX message 3 kills
  that pairing handshake (the device starts again). IK has no third message,
  so nothing is lost there.
"""

from __future__ import annotations

import warnings

from cryptography.exceptions import InvalidTag
from noise.connection import Keypair, NoiseConnection
from noise.exceptions import (
    NoiseHandshakeError,
    NoiseInvalidMessage,
    NoiseMaxNonceError,
    NoiseValidationError,
    NoiseValueError,
)

from lowbw.wire import frames, handshake
from lowbw.wire.errors import AuthError, DecodeError, LowbwError, StateError
from lowbw.wire.handshake import XX1_MIN_LEN

DH_LEN = 32
TAG_LEN = 16
MAX_MESSAGE_LEN = 65535
# Fixed bytes of each message after the kind byte (noise.py docstring).
IK1_FIXED = DH_LEN + DH_LEN + TAG_LEN + TAG_LEN
KK1_FIXED = DH_LEN + TAG_LEN
XX3_FIXED = DH_LEN + TAG_LEN + TAG_LEN

_NAMES = {
    "IK": b"Noise_IK_25519_ChaChaPoly_SHA256",
    "KK": b"Noise_KK_25519_ChaChaPoly_SHA256",
    "XX": b"Noise_XX_25519_ChaChaPoly_SHA256",
}

# What noiseprotocol and cryptography raise when a message does not authenticate
# or a key is unusable (low-order point: cryptography refuses the all-zero secret).
_AUTH_FAILURES = (InvalidTag, NoiseInvalidMessage, ValueError, NoiseValueError)
_STATE_FAILURES = (NoiseHandshakeError, NoiseValidationError, NoiseMaxNonceError)


class Responder:
    """One handshake, proxy side (noiseprotocol inside).

    IK: ``read_init(dgram) -> (device_pub, caps, request)``; the caller checks
    enrollment and calls ``respond(sid, caps, response) -> (dgram, session)``.
    XX: ``read_init`` returns ``(None, caps, b"")``, ``respond(sid, caps)`` gives
    the XX2 datagram and ``None``, ``read_final(xx3) -> (device_pub, request,
    session)``. ``e_priv`` fixes the ephemeral key (tests only).
    """

    def __init__(self, s_priv: bytes, e_priv: bytes | None = None, rs: bytes | None = None) -> None:
        if len(s_priv) != DH_LEN:
            raise StateError("static private key must be 32 bytes")
        if e_priv is not None and len(e_priv) != DH_LEN:
            raise StateError("ephemeral private key must be 32 bytes")
        self._s_priv = bytes(s_priv)
        self._e_priv = None if e_priv is None else bytes(e_priv)
        # The device's static key, for KK (the compact profile: the proxy found
        # the device by the key id in clear before any crypto).
        self._rs = None if rs is None else bytes(rs)
        self.mid = -1
        self._conn: NoiseConnection | None = None
        self._hs: object | None = None
        self.pattern: str | None = None
        self.sid: int | None = None
        self.epoch: int | None = None
        self.hsn: int | None = None
        self._offered = 0
        self._failed = False

    # -- helpers -----------------------------------------------------------

    def _start(self, pattern: str) -> NoiseConnection:
        conn = NoiseConnection.from_name(_NAMES[pattern])
        conn.set_as_responder()
        conn.set_prologue(frames.PROLOGUE)
        conn.set_keypair_from_private_bytes(Keypair.STATIC, self._s_priv)
        if pattern == "KK" and self._rs is not None:
            conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, self._rs)
        if self._e_priv is not None:
            with warnings.catch_warnings():
                # noiseprotocol warns about fixed ephemerals; only tests pass one.
                warnings.simplefilter("ignore")
                conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, self._e_priv)
                conn.start_handshake()
        else:
            conn.start_handshake()
        return conn

    def _read(self, conn: NoiseConnection, message: bytes) -> bytes:
        try:
            return bytes(conn.read_message(message))
        except _AUTH_FAILURES:
            self._failed = True
            raise AuthError("handshake message did not authenticate") from None
        except _STATE_FAILURES as exc:
            self._failed = True
            raise StateError("handshake out of order: %s" % type(exc).__name__) from None

    def _write(self, conn: NoiseConnection, payload: bytes) -> bytes:
        try:
            return bytes(conn.write_message(payload))
        except _AUTH_FAILURES:
            # Only a low-order ephemeral from the peer gets here ("ee").
            self._failed = True
            raise AuthError("peer key unusable") from None
        except _STATE_FAILURES as exc:
            self._failed = True
            raise StateError("handshake out of order: %s" % type(exc).__name__) from None

    def _remote_static(self) -> bytes:
        if self.pattern == "KK" and self._rs is not None:
            return self._rs
        hs = self._hs
        rs = getattr(hs, "rs", None)
        public = getattr(rs, "public_bytes", None)
        if not isinstance(public, bytes) or len(public) != DH_LEN:
            raise AuthError("handshake carried no static key")
        return public

    def _session(self, conn: NoiseConnection, sid: int, compact: bool = False) -> frames.Session:
        proto = conn.noise_protocol
        send_key = proto.cipher_state_encrypt.k
        recv_key = proto.cipher_state_decrypt.k
        return frames.Session(send_key, recv_key, sid, False, compact=compact, mid=self.mid)

    # -- the handshake ---------------------------------------------------------

    def read_init(self, datagram: bytes) -> tuple[bytes | None, int, bytes]:
        if self._conn is not None or self._failed:
            raise StateError("handshake already started")
        if not datagram:
            raise DecodeError("empty datagram")
        if len(datagram) - 1 > MAX_MESSAGE_LEN:
            raise DecodeError("handshake message too long")
        kind = datagram[0]
        message = bytes(datagram[1:])
        if kind == frames.HS_IK1:
            pattern = "IK"
            # caps byte included: a payload without it is malformed
            if len(datagram) < 1 + IK1_FIXED + 1:
                raise DecodeError("IK message 1 truncated")
        elif kind == frames.HS_KK1:
            pattern = "KK"
            if self._rs is None:
                raise AuthError("KK message 1 for no known device key")
            if len(datagram) < 1 + handshake.KID_LEN + KK1_FIXED + 1:
                raise DecodeError("KK message 1 truncated")
            message = bytes(datagram[1 + handshake.KID_LEN :])
        elif kind == frames.HS_XX1:
            pattern = "XX"
            if len(datagram) < XX1_MIN_LEN:
                raise DecodeError("XX message 1 shorter than its padding rule")
        else:
            raise DecodeError("not a handshake initiation")
        try:
            conn = self._start(pattern)
        except _AUTH_FAILURES + _STATE_FAILURES:
            raise StateError("cannot set up the handshake") from None
        self._hs = conn.noise_protocol.handshake_state
        payload = self._read(conn, message)
        if not payload:
            self._failed = True
            raise DecodeError("handshake payload lacks caps")
        self._conn = conn
        self.pattern = pattern
        self._offered = payload[0]
        if pattern == "KK":
            try:
                self.epoch, self.hsn, rest = handshake.split_init_payload(payload[0], payload[1:])
                request, self.mid = handshake.kk_request(rest)
            except LowbwError:
                self._failed = True
                raise
            return self._remote_static(), payload[0], request
        if pattern == "IK":
            try:
                self.epoch, self.hsn, request = handshake.split_init_payload(payload[0], payload[1:])
            except LowbwError:
                self._failed = True
                raise
            return self._remote_static(), payload[0], bytes(request)
        return None, payload[0], b""

    def respond(
        self, sid: int, caps: int, response: bytes = b"", floor: int | None = None
    ) -> tuple[bytes, frames.Session | None]:
        conn = self._conn
        if conn is None or self.sid is not None or self._failed:
            raise StateError("respond() needs exactly one read_init() first")
        if not 0 <= sid <= 0xFFFF or not 0 <= caps <= 0xFF:
            raise StateError("session id is 16 bits, caps 8 bits")
        if self.pattern == "KK":
            if sid > frames.C_SID_MAX:
                raise StateError("a compact session id is 15 bits")
            head = handshake.answer_head(sid, caps | handshake.CAP_COMPACT, floor)
            msg = self._write(conn, head + handshake.kk_response(bytes(response)))
            self.sid = sid
            return bytes([frames.HS_KK2]) + msg, self._session(conn, sid, compact=True)
        head = handshake.answer_head(sid, caps, floor)
        if self.pattern == "IK":
            msg = self._write(conn, head + bytes(response))
            self.sid = sid
            return bytes([frames.HS_IK2]) + msg, self._session(conn, sid)
        if response:
            raise StateError("XX message 2 cannot carry a response")
        msg = self._write(conn, head)
        self.sid = sid
        return bytes([frames.HS_XX2]) + msg, None

    def read_final(self, datagram: bytes) -> tuple[bytes, bytes, frames.Session]:
        conn = self._conn
        if self.pattern != "XX" or self.sid is None or conn is None or self._failed:
            raise StateError("read_final() is the third XX message only")
        if len(datagram) < 3 or datagram[0] != frames.HS_XX3:
            raise DecodeError("not an XX message 3")
        if ((datagram[1] << 8) | datagram[2]) != self.sid:
            raise DecodeError("XX message 3 for another session")
        if len(datagram) < 3 + XX3_FIXED:
            raise DecodeError("XX message 3 truncated")
        if len(datagram) - 3 > MAX_MESSAGE_LEN:
            raise DecodeError("handshake message too long")
        payload = self._read(conn, bytes(datagram[3:]))
        self.epoch, request = handshake.split_epoch(self._offered, payload)
        return self._remote_static(), bytes(request), self._session(conn, self.sid)


def init_ephemeral(datagram: bytes) -> bytes:
    """The initiator's ephemeral public key in an IK1/XX1/KK1 datagram (replay cache key)."""
    return bytes(handshake.init_ephemeral(datagram))


__all__ = ["Responder", "init_ephemeral", "LowbwError"]
