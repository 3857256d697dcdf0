"""Noise (revision 34) handshakes for lowbw: ``Noise_IK/XX_25519_ChaChaPoly_SHA256``.

A spec-shaped, sans-I/O state machine (CipherState, SymmetricState,
HandshakeState, Noise §5) with the handshake patterns kept as data. It is shared
verbatim by the proxy (CPython, where the primitives come from ``cryptography``)
and the device (MicroPython, plain-Python primitives), and interoperates byte
for byte with the ``noiseprotocol`` package.

Handshake messages (DH = 32-byte X25519 public key, TAG = 16-byte Poly1305 tag)
--------------------------------------------------------------------------------
IK, the normal path (the device knows the proxy's static key beforehand)::

    <- s                         pre-message: responder static, hashed, not sent
    ...
    -> e, es, s, ss   e (32) | enc(s_i) (32+16) | enc(payload) (len+16)
    <- e, ee, se      e (32) | enc(payload) (len+16)

Message 1 is 96 + len(payload) bytes and its payload is the 0-RTT request,
encrypted under keys from es and ss: it is authenticated to the initiator's
static key but has no forward secrecy against compromise of the responder's
static key and can be replayed, so the application must treat it as such
(idempotent requests, counters). Message 2 is 48 + len(payload) bytes.

XX, for pairing a device that does not know the proxy key::

    -> e              e (32) | payload (len, plaintext: no key yet)
    <- e, ee, s, es   e (32) | enc(s_r) (48) | enc(payload) (len+16)
    -> s, se          enc(s_i) (48) | enc(payload) (len+16)

Rules this module enforces
--------------------------
- A handshake message is at most 65535 bytes (Noise §3); longer input raises
  LimitError, a longer message to write raises EncodeError.
- Every message is length-checked against its pattern before any byte is used:
  shorter than the fixed part (keys, encrypted keys, payload tag) raises
  DecodeError. A bad tag raises AuthError; so does a DH whose result is all
  zeros (a low-order key from the peer, see crypto.py).
- A message that fails to read leaves the HandshakeState exactly as it was
  before the call. On a lossy, spoofable radio link one garbled or forged
  datagram must not kill a handshake in progress: the genuine message can
  still be read afterwards. (Nothing secret depends on the rejected input.)
- Calls out of turn, or after the handshake finished, raise StateError.
- CipherState refuses to use nonce 2**64-1 (RekeyRequired).

After the last message ``split()`` gives (send, receive) CipherStates for this
side. Their raw keys ``.k`` are what the frame layer feeds to
``crypto.aead_encrypt(k, n, ad, pt)`` with its explicit nonces.
"""

from lowbw.wire import crypto
from lowbw.wire._compat import const
from lowbw.wire.errors import (
    DecodeError,
    EncodeError,
    LimitError,
    LowbwError,
    RekeyRequired,
    StateError,
)

DHLEN = const(32)
HASHLEN = const(32)
TAGLEN = const(16)
MAX_MESSAGE_LEN = const(65535)
_MAX_NONCE = (1 << 64) - 1

# pattern name -> (initiator pre-message, responder pre-message, messages);
# messages alternate initiator -> responder, responder -> initiator, ...
_S = ("s",)
_M2 = ("e", "ee", "se")
PATTERNS = {
    "IK": ((), _S, (("e", "es", "s", "ss"), _M2)),
    "XX": ((), (), (("e",), ("e", "ee", "s", "es"), ("s", "se"))),
    # Compact profile: both static keys known beforehand (standard Noise KK).
    "KK": (_S, _S, (("e", "es", "ss"), _M2)),
}

SUITE = "25519_ChaChaPoly_SHA256"


def protocol_name(pattern):
    return ("Noise_%s_%s" % (pattern, SUITE)).encode()


def _as_bytes(value, length, what):
    if value is None or len(value) != length:
        raise EncodeError("%s must be %d bytes" % (what, length))
    return bytes(value)


class CipherState:
    """Noise §5.1: a key ``k`` (bytes, or None before one is set) and nonce ``n``."""

    def __init__(self, k=None, n=0):
        self.k = k
        self.n = n

    def initialize_key(self, k):
        self.k = k
        self.n = 0

    def has_key(self):
        return self.k is not None

    def set_nonce(self, n):
        self.n = n

    def encrypt_with_ad(self, ad, plaintext):
        if self.k is None:
            return bytes(plaintext)
        if self.n >= _MAX_NONCE:
            raise RekeyRequired("nonce space exhausted")
        out = crypto.aead_encrypt(self.k, self.n, ad, plaintext)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad, ciphertext):
        if self.k is None:
            return bytes(ciphertext)
        if self.n >= _MAX_NONCE:
            raise RekeyRequired("nonce space exhausted")
        out = crypto.aead_decrypt(self.k, self.n, ad, ciphertext)  # AuthError keeps n
        self.n += 1
        return out

    def rekey(self):
        if self.k is None:
            raise StateError("no key to rekey")
        self.k = crypto.rekey(self.k)


class SymmetricState:
    """Noise §5.2: chaining key ``ck``, handshake hash ``h`` and a CipherState."""

    def __init__(self, name):
        if len(name) <= HASHLEN:
            self.h = bytes(name) + bytes(HASHLEN - len(name))
        else:
            self.h = crypto.sha256(name)
        self.ck = self.h
        self.cs = CipherState()

    def mix_key(self, ikm):
        self.ck, temp_k = crypto.hkdf2(self.ck, ikm)
        self.cs.initialize_key(temp_k)

    def mix_hash(self, data):
        self.h = crypto.sha256(self.h + data)

    def mix_key_and_hash(self, ikm):
        self.ck, temp_h, temp_k = crypto.hkdf3(self.ck, ikm)
        self.mix_hash(temp_h)
        self.cs.initialize_key(temp_k)

    def get_handshake_hash(self):
        return self.h

    def encrypt_and_hash(self, plaintext):
        ct = self.cs.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ct)
        return ct

    def decrypt_and_hash(self, ciphertext):
        pt = self.cs.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return pt

    def split(self):
        k1, k2 = crypto.hkdf2(self.ck, b"")
        return CipherState(k1), CipherState(k2)


def _default_random(n):
    import os

    try:
        return os.urandom(n)
    except AttributeError:  # a MicroPython board without os.urandom
        raise StateError("no random source: pass random= to HandshakeState")


class HandshakeState:
    """Noise §5.3 for the patterns in PATTERNS.

    ``s_priv`` is this side's 32-byte static private key (``s_pub`` may be
    passed to save one X25519 on slow devices). ``rs`` is the responder's
    static public key, required for the IK initiator and refused otherwise.
    ``e_priv`` fixes the ephemeral key (tests only); otherwise it is drawn from
    ``random(32)`` when the ``e`` token is written.
    """

    def __init__(
        self,
        pattern,
        initiator,
        s_priv,
        rs=None,
        prologue=b"",
        e_priv=None,
        random=None,
        s_pub=None,
    ):
        if pattern not in PATTERNS:
            raise EncodeError("unsupported handshake pattern %r" % (pattern,))
        pre_i, pre_r, messages = PATTERNS[pattern]
        self.pattern = pattern
        self.initiator = bool(initiator)
        self._messages = messages
        self._index = 0
        self._failed = False
        self._split = None
        self._random = random if random is not None else _default_random

        self.s = _as_bytes(s_priv, DHLEN, "static private key")
        self.s_pub = crypto.x25519_base(self.s) if s_pub is None else _as_bytes(s_pub, DHLEN, "s_pub")
        self.e = None if e_priv is None else _as_bytes(e_priv, DHLEN, "ephemeral private key")
        self.e_pub = None
        self.re = None
        self.rs = None

        remote_pre = pre_r if self.initiator else pre_i
        if "s" in remote_pre:
            self.rs = _as_bytes(rs, DHLEN, "remote static key")
        elif rs is not None:
            raise StateError("pattern %s learns the remote static key in the handshake" % pattern)

        self.ss = SymmetricState(protocol_name(pattern))
        self.ss.mix_hash(bytes(prologue))
        # Pre-message keys, initiator's first (Noise §5.3); only "s" occurs here.
        for pre, is_local in ((pre_i, self.initiator), (pre_r, not self.initiator)):
            for token in pre:
                if token != "s":
                    raise EncodeError("unsupported pre-message token %r" % (token,))
                self.ss.mix_hash(self.s_pub if is_local else self.rs)

    # -- queries -----------------------------------------------------------

    def is_done(self):
        return self._split is not None

    def is_my_turn(self):
        """True when the next step is write_message (False when done or failed)."""
        if self._failed or self._split is not None:
            return False
        return (self._index % 2 == 0) == self.initiator

    def handshake_hash(self):
        return self.ss.h

    def remote_static(self):
        return self.rs

    def split(self):
        """(send, receive) CipherStates for this side, once the handshake is done."""
        if self._split is None:
            raise StateError("handshake not finished")
        c1, c2 = self._split
        return (c1, c2) if self.initiator else (c2, c1)

    # -- helpers -----------------------------------------------------------

    def _check_turn(self, writing):
        if self._failed:
            raise StateError("handshake failed earlier; start a new one")
        if self._split is not None:
            raise StateError("handshake already finished")
        if self.is_my_turn() != writing:
            raise StateError("not this side's turn to %s" % ("write" if writing else "read"))

    def _overhead(self, tokens):
        """Fixed bytes of a message (all but the payload's own length)."""
        keyed = self.ss.cs.has_key()
        size = 0
        for token in tokens:
            if token == "e":
                size += DHLEN
            elif token == "s":
                size += DHLEN + (TAGLEN if keyed else 0)
            else:
                keyed = True
        return size + (TAGLEN if keyed else 0)

    def _dh_token(self, token):
        # Noise §5.3: "es" is DH(e, rs) for the initiator, DH(s, re) for the
        # responder; "se" the mirror image.
        if token == "ee":
            a, b = self.e, self.re
        elif token == "ss":
            a, b = self.s, self.rs
        elif (token == "es") == self.initiator:
            a, b = self.e, self.rs
        else:
            a, b = self.s, self.re
        if a is None or b is None:
            raise StateError("token %s needs a key this side lacks" % token)
        self.ss.mix_key(crypto.x25519(a, b))

    def _finish_message(self):
        self._index += 1
        if self._index == len(self._messages):
            self._split = self.ss.split()

    def _snapshot(self):
        cs = self.ss.cs
        return (self.ss.ck, self.ss.h, cs.k, cs.n, self.re, self.rs, self.e, self.e_pub)

    def _restore(self, snap):
        cs = self.ss.cs
        self.ss.ck, self.ss.h, cs.k, cs.n, self.re, self.rs, self.e, self.e_pub = snap

    # -- the two operations ------------------------------------------------

    def write_message(self, payload=b""):
        """Next handshake message carrying ``payload``; returns its bytes."""
        self._check_turn(True)
        tokens = self._messages[self._index]
        if self._overhead(tokens) + len(payload) > MAX_MESSAGE_LEN:
            raise EncodeError("handshake message would exceed %d bytes" % MAX_MESSAGE_LEN)
        out = []
        try:
            for token in tokens:
                if token == "e":
                    if self.e is None:
                        self.e = _as_bytes(self._random(DHLEN), DHLEN, "random ephemeral key")
                    self.e_pub = crypto.x25519_base(self.e)
                    out.append(self.e_pub)
                    self.ss.mix_hash(self.e_pub)
                elif token == "s":
                    out.append(self.ss.encrypt_and_hash(self.s_pub))
                else:
                    self._dh_token(token)
            out.append(self.ss.encrypt_and_hash(bytes(payload)))
        except LowbwError:
            # Only a bad key the peer sent earlier gets here (XX "ee" on a
            # low-order e): retrying cannot help, so the handshake is dead.
            self._failed = True
            raise
        self._finish_message()
        return b"".join(out)

    def read_message(self, message):
        """Process the peer's next handshake message; return its payload."""
        self._check_turn(False)
        tokens = self._messages[self._index]
        n = len(message)
        if n > MAX_MESSAGE_LEN:
            raise LimitError("handshake message longer than %d bytes" % MAX_MESSAGE_LEN)
        if n < self._overhead(tokens):
            raise DecodeError("handshake message truncated: %d bytes" % n)
        msg = bytes(message)
        snap = self._snapshot()
        pos = 0
        try:
            for token in tokens:
                if token == "e":
                    self.re = msg[pos : pos + DHLEN]
                    pos += DHLEN
                    self.ss.mix_hash(self.re)
                elif token == "s":
                    size = DHLEN + (TAGLEN if self.ss.cs.has_key() else 0)
                    self.rs = self.ss.decrypt_and_hash(msg[pos : pos + size])
                    pos += size
                else:
                    self._dh_token(token)
            payload = self.ss.decrypt_and_hash(msg[pos:])
        except LowbwError:
            self._restore(snap)
            raise
        self._finish_message()
        return payload
