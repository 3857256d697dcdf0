"""The Noise suite's primitives, 25519 + ChaChaPoly + SHA256, in plain Python.

The device (MicroPython) has no crypto library beyond ``hashlib.sha256``, so this
module implements X25519 (RFC 7748), ChaCha20 and Poly1305 and their AEAD
(RFC 8439), HMAC-SHA256 (RFC 2104) and the HKDF that Noise uses (Noise rev 34
§4.3). On CPython the proxy serves many devices, so ``x25519``, ``aead_encrypt``
and ``aead_decrypt`` call the ``cryptography`` package when it imports; the plain
versions stay available as ``pure_*`` so tests can check one against the other.

Formats
-------
- X25519 scalars, u-coordinates and shared secrets are 32 bytes little-endian.
  Scalars are clamped (RFC 7748 §5); the top bit of u is ignored and
  non-canonical u (>= 2**255-19) is reduced, as the RFC requires.
- AEAD nonce, Noise layout (Noise §12.3): 4 zero bytes then the 64-bit counter
  ``n`` little-endian, 12 bytes in all. ``n`` may be 0 .. 2**64-1 (2**64-1 is
  used only by REKEY).
- AEAD output: ciphertext (same length as the plaintext) then a 16-byte
  Poly1305 tag.

Error policy
------------
- ``x25519`` raises AuthError when the shared secret is all zeros: the peer
  sent a low-order point, which contributes nothing secret. Noise §12.1 allows
  either processing or rejecting it; ``cryptography`` (and so noiseprotocol)
  rejects it, so we reject it too and the two ends agree.
  ``pure_x25519_raw`` is the unchecked RFC function.
- ``aead_decrypt`` raises AuthError for a bad tag and also for input shorter
  than a tag: both are "this did not authenticate", and a receiver answers both
  the same way (silence), so there is nothing to gain from telling them apart.
- Wrong key/nonce lengths or an out-of-range counter are caller bugs and raise
  EncodeError.

Timing: Python big ints are not constant time, so the plain code can leak
through timing in principle; the tag comparison at least does not stop at the
first differing byte.
"""

import hashlib
import struct

from lowbw.wire._compat import const
from lowbw.wire.errors import AuthError, EncodeError

_P25519 = (1 << 255) - 19
_CLAMP_MASK = ((1 << 255) - 1) ^ 7  # clear bits 0-2 and 255
_A24 = const(121665)
_P1305 = (1 << 130) - 3 - 2  # 2**130 - 5
_R_CLAMP = 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF
_MASK128 = (1 << 128) - 1
_M32 = 0xFFFFFFFF  # no const(): not a small int on 32-bit ports
_MAX_NONCE = (1 << 64) - 1
_ZERO32 = bytes(32)
_ZERO16 = bytes(16)
_SIGMA = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)  # "expand 32-byte k"


# --------------------------------------------------------------------- X25519


def _clamp(scalar32):
    if len(scalar32) != 32:
        raise EncodeError("X25519 scalar must be 32 bytes")
    k = int.from_bytes(scalar32, "little")
    return (k & _CLAMP_MASK) | (1 << 254)


def pure_x25519_raw(scalar32, u32):
    """RFC 7748 X25519 with a Montgomery ladder; returns the raw 32-byte result."""
    k = _clamp(scalar32)
    if len(u32) != 32:
        raise EncodeError("X25519 u-coordinate must be 32 bytes")
    p = _P25519
    x1 = (int.from_bytes(u32, "little") & ((1 << 255) - 1)) % p
    x2 = 1
    z2 = 0
    x3 = x1
    z3 = 1
    swap = 0
    # Branching swap: Python ints are not constant time anyway, and a plain
    # ladder keeps MicroPython at a few ms per scalar multiplication.
    for t in range(254, -1, -1):
        kt = (k >> t) & 1
        if swap ^ kt:
            x2, x3 = x3, x2
            z2, z3 = z3, z2
        swap = kt
        a = x2 + z2
        aa = a * a % p
        b = x2 - z2
        bb = b * b % p
        e = aa - bb
        c = x3 + z3
        d = x3 - z3
        da = d * a % p
        cb = c * b % p
        t1 = da + cb
        x3 = t1 * t1 % p
        t2 = da - cb
        z3 = x1 * (t2 * t2 % p) % p
        x2 = aa * bb % p
        z2 = e * (aa + _A24 * e) % p
    if swap:
        x2, x3 = x3, x2
        z2, z3 = z3, z2
    return (x2 * pow(z2, p - 2, p) % p).to_bytes(32, "little")


def pure_x25519(scalar32, u32):
    """Plain-Python X25519 that rejects an all-zero shared secret (AuthError)."""
    out = pure_x25519_raw(scalar32, u32)
    if out == _ZERO32:
        raise AuthError("X25519 produced the all-zero secret (low-order point)")
    return out


def pure_x25519_base(scalar32):
    """Public key for a private scalar, plain Python."""
    return pure_x25519_raw(scalar32, b"\x09" + bytes(31))


# ------------------------------------------------------------------- ChaCha20


def _chacha_state(key32, counter, nonce12):
    if len(key32) != 32:
        raise EncodeError("ChaCha20 key must be 32 bytes")
    if len(nonce12) != 12:
        raise EncodeError("ChaCha20 nonce must be 12 bytes")
    st = list(_SIGMA)
    st.extend(struct.unpack("<8I", key32))
    st.append(counter & _M32)
    st.extend(struct.unpack("<3I", nonce12))
    return st


def _block_words(st):
    """Run 20 rounds over the 16-word state ``st``; return the output words."""
    x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15 = st
    m = _M32
    # Locals instead of list indexing: about twice as fast on both runtimes.
    for _ in range(10):
        # column rounds
        x0 = (x0 + x4) & m
        x12 ^= x0
        x12 = ((x12 << 16) & m) | (x12 >> 16)
        x8 = (x8 + x12) & m
        x4 ^= x8
        x4 = ((x4 << 12) & m) | (x4 >> 20)
        x0 = (x0 + x4) & m
        x12 ^= x0
        x12 = ((x12 << 8) & m) | (x12 >> 24)
        x8 = (x8 + x12) & m
        x4 ^= x8
        x4 = ((x4 << 7) & m) | (x4 >> 25)

        x1 = (x1 + x5) & m
        x13 ^= x1
        x13 = ((x13 << 16) & m) | (x13 >> 16)
        x9 = (x9 + x13) & m
        x5 ^= x9
        x5 = ((x5 << 12) & m) | (x5 >> 20)
        x1 = (x1 + x5) & m
        x13 ^= x1
        x13 = ((x13 << 8) & m) | (x13 >> 24)
        x9 = (x9 + x13) & m
        x5 ^= x9
        x5 = ((x5 << 7) & m) | (x5 >> 25)

        x2 = (x2 + x6) & m
        x14 ^= x2
        x14 = ((x14 << 16) & m) | (x14 >> 16)
        x10 = (x10 + x14) & m
        x6 ^= x10
        x6 = ((x6 << 12) & m) | (x6 >> 20)
        x2 = (x2 + x6) & m
        x14 ^= x2
        x14 = ((x14 << 8) & m) | (x14 >> 24)
        x10 = (x10 + x14) & m
        x6 ^= x10
        x6 = ((x6 << 7) & m) | (x6 >> 25)

        x3 = (x3 + x7) & m
        x15 ^= x3
        x15 = ((x15 << 16) & m) | (x15 >> 16)
        x11 = (x11 + x15) & m
        x7 ^= x11
        x7 = ((x7 << 12) & m) | (x7 >> 20)
        x3 = (x3 + x7) & m
        x15 ^= x3
        x15 = ((x15 << 8) & m) | (x15 >> 24)
        x11 = (x11 + x15) & m
        x7 ^= x11
        x7 = ((x7 << 7) & m) | (x7 >> 25)

        # diagonal rounds
        x0 = (x0 + x5) & m
        x15 ^= x0
        x15 = ((x15 << 16) & m) | (x15 >> 16)
        x10 = (x10 + x15) & m
        x5 ^= x10
        x5 = ((x5 << 12) & m) | (x5 >> 20)
        x0 = (x0 + x5) & m
        x15 ^= x0
        x15 = ((x15 << 8) & m) | (x15 >> 24)
        x10 = (x10 + x15) & m
        x5 ^= x10
        x5 = ((x5 << 7) & m) | (x5 >> 25)

        x1 = (x1 + x6) & m
        x12 ^= x1
        x12 = ((x12 << 16) & m) | (x12 >> 16)
        x11 = (x11 + x12) & m
        x6 ^= x11
        x6 = ((x6 << 12) & m) | (x6 >> 20)
        x1 = (x1 + x6) & m
        x12 ^= x1
        x12 = ((x12 << 8) & m) | (x12 >> 24)
        x11 = (x11 + x12) & m
        x6 ^= x11
        x6 = ((x6 << 7) & m) | (x6 >> 25)

        x2 = (x2 + x7) & m
        x13 ^= x2
        x13 = ((x13 << 16) & m) | (x13 >> 16)
        x8 = (x8 + x13) & m
        x7 ^= x8
        x7 = ((x7 << 12) & m) | (x7 >> 20)
        x2 = (x2 + x7) & m
        x13 ^= x2
        x13 = ((x13 << 8) & m) | (x13 >> 24)
        x8 = (x8 + x13) & m
        x7 ^= x8
        x7 = ((x7 << 7) & m) | (x7 >> 25)

        x3 = (x3 + x4) & m
        x14 ^= x3
        x14 = ((x14 << 16) & m) | (x14 >> 16)
        x9 = (x9 + x14) & m
        x4 ^= x9
        x4 = ((x4 << 12) & m) | (x4 >> 20)
        x3 = (x3 + x4) & m
        x14 ^= x3
        x14 = ((x14 << 8) & m) | (x14 >> 24)
        x9 = (x9 + x14) & m
        x4 ^= x9
        x4 = ((x4 << 7) & m) | (x4 >> 25)
    return struct.pack(
        "<16I",
        (x0 + st[0]) & m,
        (x1 + st[1]) & m,
        (x2 + st[2]) & m,
        (x3 + st[3]) & m,
        (x4 + st[4]) & m,
        (x5 + st[5]) & m,
        (x6 + st[6]) & m,
        (x7 + st[7]) & m,
        (x8 + st[8]) & m,
        (x9 + st[9]) & m,
        (x10 + st[10]) & m,
        (x11 + st[11]) & m,
        (x12 + st[12]) & m,
        (x13 + st[13]) & m,
        (x14 + st[14]) & m,
        (x15 + st[15]) & m,
    )


def chacha20_block(key32, counter, nonce12):
    """RFC 8439 §2.3: one 64-byte keystream block."""
    return _block_words(_chacha_state(key32, counter, nonce12))


def chacha20_xor(key32, counter, nonce12, data):
    """RFC 8439 §2.4: encrypt or decrypt ``data`` starting at block ``counter``."""
    st = _chacha_state(key32, counter, nonce12)
    n = len(data)
    out = bytearray(n)
    mv = memoryview(data)
    pos = 0
    while pos < n:
        ks = _block_words(st)
        take = n - pos
        if take > 64:
            take = 64
        # XOR as one little-endian big int per block: far cheaper than a byte loop.
        x = int.from_bytes(mv[pos : pos + take], "little") ^ int.from_bytes(ks[:take], "little")
        out[pos : pos + take] = x.to_bytes(take, "little")
        pos += take
        st[12] = (st[12] + 1) & _M32
    return bytes(out)


# ------------------------------------------------------------------- Poly1305


def poly1305_mac(key32, msg):
    """RFC 8439 §2.5: 16-byte one-time authenticator of ``msg``."""
    if len(key32) != 32:
        raise EncodeError("Poly1305 key must be 32 bytes")
    r = int.from_bytes(key32[:16], "little") & _R_CLAMP
    s = int.from_bytes(key32[16:], "little")
    p = _P1305
    acc = 0
    mv = memoryview(msg)
    n = len(msg)
    full = n - (n % 16)
    hibit = 1 << 128
    for i in range(0, full, 16):
        acc = (acc + int.from_bytes(mv[i : i + 16], "little") + hibit) * r % p
    if full < n:
        acc = (acc + int.from_bytes(mv[full:n], "little") + (1 << (8 * (n - full)))) * r % p
    return ((acc + s) & _MASK128).to_bytes(16, "little")


def ct_equal(a, b):
    """Compare without stopping at the first differing byte."""
    if len(a) != len(b):
        return False
    acc = 0
    for i in range(len(a)):
        acc |= a[i] ^ b[i]
    return acc == 0


# ------------------------------------------------------------------ AEAD


def _pad16(n):
    return _ZERO16[: (16 - n % 16) % 16]


def _aead_tag(key32, nonce12, ad, ct):
    otk = chacha20_block(key32, 0, nonce12)[:32]
    mac_data = b"".join((ad, _pad16(len(ad)), ct, _pad16(len(ct)), struct.pack("<QQ", len(ad), len(ct))))
    return poly1305_mac(otk, mac_data)


def aead_encrypt_rfc(key32, nonce12, ad, plaintext):
    """RFC 8439 §2.8 ChaCha20-Poly1305 with a raw 12-byte nonce: ct || tag."""
    ct = chacha20_xor(key32, 1, nonce12, plaintext)
    return ct + _aead_tag(key32, nonce12, ad, ct)


def aead_decrypt_rfc(key32, nonce12, ad, ciphertext):
    """Inverse of aead_encrypt_rfc; AuthError on a bad tag or a short input."""
    if len(ciphertext) < 16:
        raise AuthError("ciphertext shorter than its tag")
    ct = bytes(ciphertext[:-16])
    if not ct_equal(_aead_tag(key32, nonce12, ad, ct), ciphertext[-16:]):
        raise AuthError("bad AEAD tag")
    return chacha20_xor(key32, 1, nonce12, ct)


def noise_nonce(n):
    """Noise's 12-byte ChaChaPoly nonce: 4 zero bytes + 64-bit little-endian n."""
    if n < 0 or n > _MAX_NONCE:
        raise EncodeError("nonce counter out of range")
    return b"\x00\x00\x00\x00" + struct.pack("<Q", n)


def pure_aead_encrypt(key32, n, ad, plaintext):
    """Noise ENCRYPT(k, n, ad, plaintext), plain Python."""
    return aead_encrypt_rfc(key32, noise_nonce(n), ad, plaintext)


def pure_aead_decrypt(key32, n, ad, ciphertext):
    """Noise DECRYPT(k, n, ad, ciphertext), plain Python; AuthError on failure."""
    return aead_open(key32, n, ad, ciphertext, 16, pure_aead_encrypt)


def aead_open(key32, n, ad, body, taglen=16, enc=None):
    """DECRYPT with the tag cut to its first ``taglen`` bytes (16: Noise; 8:
    the compact link profile, docs/PROTOCOL.md), by way of ENCRYPT (``enc``,
    default ``aead_encrypt``): ChaCha20's keystream does not depend on the
    associated data, so encrypting the ciphertext gives the plaintext back,
    and encrypting that gives the full tag to compare. AuthError on failure."""
    m = len(body) - taglen
    if m < 0:
        raise AuthError("ciphertext shorter than its tag")
    if enc is None:
        enc = aead_encrypt
    pt = enc(key32, n, b"", body[:m])[:m]
    if not ct_equal(enc(key32, n, ad, pt)[m:m + taglen], body[m:]):
        raise AuthError("bad AEAD tag")
    return pt


# ---------------------------------------------------------- SHA-256, HMAC, HKDF


def sha256(data):
    return hashlib.sha256(data).digest()


def hmac_sha256(key, data):
    """RFC 2104 HMAC with SHA-256 (MicroPython has no hmac module)."""
    if len(key) > 64:
        key = sha256(key)
    key = key + bytes(64 - len(key))
    kint = int.from_bytes(key, "big")
    ipad = (kint ^ int.from_bytes(b"\x36" * 64, "big")).to_bytes(64, "big")
    opad = (kint ^ int.from_bytes(b"\x5c" * 64, "big")).to_bytes(64, "big")
    inner = hashlib.sha256(ipad)
    inner.update(data)
    outer = hashlib.sha256(opad)
    outer.update(inner.digest())
    return outer.digest()


def hkdf2(ck, ikm):
    """Noise HKDF(chaining_key, input_key_material, 2) -> (out1, out2)."""
    temp = hmac_sha256(ck, ikm)
    o1 = hmac_sha256(temp, b"\x01")
    o2 = hmac_sha256(temp, o1 + b"\x02")
    return o1, o2


def hkdf3(ck, ikm):
    """Noise HKDF(chaining_key, input_key_material, 3) -> (out1, out2, out3)."""
    temp = hmac_sha256(ck, ikm)
    o1 = hmac_sha256(temp, b"\x01")
    o2 = hmac_sha256(temp, o1 + b"\x02")
    o3 = hmac_sha256(temp, o2 + b"\x03")
    return o1, o2, o3


# ------------------------------------------------ dispatch: cryptography if any

x25519 = pure_x25519
aead_encrypt = pure_aead_encrypt
aead_decrypt = pure_aead_decrypt
BACKEND = "pure"

try:
    from cryptography.exceptions import InvalidTag as _InvalidTag
    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PrivateKey as _XPriv,
    )
    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PublicKey as _XPub,
    )
    from cryptography.hazmat.primitives.ciphers.aead import (
        ChaCha20Poly1305 as _ChaChaPoly,
    )
except ImportError:  # MicroPython, or CPython without cryptography
    pass
else:

    def _fast_x25519(scalar32, u32):
        if len(scalar32) != 32 or len(u32) != 32:
            raise EncodeError("X25519 inputs must be 32 bytes")
        try:
            return _XPriv.from_private_bytes(bytes(scalar32)).exchange(_XPub.from_public_bytes(bytes(u32)))
        except ValueError:  # OpenSSL's refusal of the all-zero secret
            raise AuthError("X25519 produced the all-zero secret (low-order point)")

    def _fast_aead_encrypt(key32, n, ad, plaintext):
        if len(key32) != 32:
            raise EncodeError("ChaCha20 key must be 32 bytes")
        return _ChaChaPoly(bytes(key32)).encrypt(noise_nonce(n), bytes(plaintext), bytes(ad))

    def _fast_aead_decrypt(key32, n, ad, ciphertext):
        if len(key32) != 32:
            raise EncodeError("ChaCha20 key must be 32 bytes")
        nonce = noise_nonce(n)
        if len(ciphertext) < 16:
            raise AuthError("ciphertext shorter than its tag")
        try:
            return _ChaChaPoly(bytes(key32)).decrypt(nonce, bytes(ciphertext), bytes(ad))
        except _InvalidTag:
            raise AuthError("bad AEAD tag")

    x25519 = _fast_x25519
    aead_encrypt = _fast_aead_encrypt
    aead_decrypt = _fast_aead_decrypt
    BACKEND = "cryptography"


def x25519_base(scalar32):
    """Public key (u-coordinate) for a 32-byte private scalar."""
    return x25519(scalar32, b"\x09" + bytes(31))


def x25519_keypair(random32):
    """Key pair from 32 random bytes: (private, public). The private key is
    returned as given; X25519 clamps it on every use, as RFC 7748 intends."""
    if len(random32) != 32:
        raise EncodeError("X25519 private key must be 32 bytes")
    priv = bytes(random32)
    return priv, x25519_base(priv)


def rekey(key32):
    """Noise REKEY(k): first 32 bytes of ENCRYPT(k, 2**64-1, b"", 32 zero bytes)."""
    return aead_encrypt(key32, _MAX_NONCE, b"", _ZERO32)[:32]
