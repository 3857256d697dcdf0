"""Differential tests: the plain-Python primitives against `cryptography` and the stdlib.

CPython only. The device runs the ``pure_*`` functions; the proxy runs the
``cryptography``-backed ones; both must agree with each other and with the
reference implementations on random input.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.poly1305 import Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbw.wire import crypto
from lowbw.wire.errors import AuthError

key32 = st.binary(min_size=32, max_size=32)
nonce12 = st.binary(min_size=12, max_size=12)
counters = st.one_of(
    st.integers(0, (1 << 64) - 1), st.sampled_from([0, 1, (1 << 32) - 1, 1 << 32, (1 << 64) - 1])
)
data = st.binary(max_size=300)

# u-coordinates whose X25519 result is all zeros for every clamped scalar
LOW_ORDER = [
    bytes(32),
    b"\x01" + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


def ref_x25519(k: bytes, u: bytes) -> bytes | None:
    try:
        return X25519PrivateKey.from_private_bytes(k).exchange(X25519PublicKey.from_public_bytes(u))
    except ValueError:
        return None


def test_fast_backend_is_active_on_cpython() -> None:
    assert crypto.BACKEND == "cryptography"
    assert crypto.x25519 is not crypto.pure_x25519


@given(key32, nonce12, data, data)
def test_pure_aead_rfc_matches_cryptography(key: bytes, nonce: bytes, ad: bytes, pt: bytes) -> None:
    sealed = ChaCha20Poly1305(key).encrypt(nonce, pt, ad)
    assert crypto.aead_encrypt_rfc(key, nonce, ad, pt) == sealed
    assert crypto.aead_decrypt_rfc(key, nonce, ad, sealed) == pt


@given(key32, counters, data, data)
def test_noise_aead_pure_and_fast_match_cryptography(key: bytes, n: int, ad: bytes, pt: bytes) -> None:
    nonce = bytes(4) + n.to_bytes(8, "little")
    sealed = ChaCha20Poly1305(key).encrypt(nonce, pt, ad)
    for enc, dec in (
        (crypto.pure_aead_encrypt, crypto.pure_aead_decrypt),
        (crypto.aead_encrypt, crypto.aead_decrypt),
    ):
        assert enc(key, n, ad, pt) == sealed
        assert dec(key, n, ad, sealed) == pt


@given(key32, counters, data, data, st.data())
def test_tampering_raises_auth_error(key: bytes, n: int, ad: bytes, pt: bytes, draw: st.DataObject) -> None:
    sealed = crypto.pure_aead_encrypt(key, n, ad, pt)
    pos = draw.draw(st.integers(0, len(sealed) - 1))
    bit = draw.draw(st.integers(0, 7))
    bad = bytearray(sealed)
    bad[pos] ^= 1 << bit
    bad_ad = ad + b"\x00" if not ad else bytes([ad[0] ^ 1]) + ad[1:]
    for dec in (crypto.pure_aead_decrypt, crypto.aead_decrypt):
        with pytest.raises(AuthError):
            dec(key, n, ad, bytes(bad))
        with pytest.raises(AuthError):
            dec(key, n, bad_ad, sealed)
        with pytest.raises(AuthError):
            dec(key, n ^ 1, ad, sealed)
    with pytest.raises(InvalidTag):  # the reference agrees these are forgeries
        ChaCha20Poly1305(key).decrypt(bytes(4) + n.to_bytes(8, "little"), bytes(bad), ad)


@given(key32, counters, st.binary(max_size=15))
def test_short_ciphertext_is_auth_error(key: bytes, n: int, short: bytes) -> None:
    # Decision: shorter than a tag is AuthError, not DecodeError: it did not
    # authenticate, and a receiver treats it like any other forgery (silence).
    for dec in (crypto.pure_aead_decrypt, crypto.aead_decrypt):
        with pytest.raises(AuthError):
            dec(key, n, b"", short)


@given(key32, st.integers(0, (1 << 32) - 8), nonce12, st.binary(max_size=400))
def test_chacha20_matches_cryptography(key: bytes, counter: int, nonce: bytes, pt: bytes) -> None:
    ref = Cipher(algorithms.ChaCha20(key, counter.to_bytes(4, "little") + nonce), None).encryptor()
    assert crypto.chacha20_xor(key, counter, nonce, pt) == ref.update(pt)


@given(key32, st.binary(max_size=200))
def test_poly1305_matches_cryptography(key: bytes, msg: bytes) -> None:
    assert crypto.poly1305_mac(key, msg) == Poly1305.generate_tag(key, msg)


@given(st.binary(max_size=200), st.binary(max_size=300))
def test_hmac_matches_stdlib(key: bytes, msg: bytes) -> None:
    assert crypto.hmac_sha256(key, msg) == hmac.new(key, msg, hashlib.sha256).digest()


@given(st.binary(min_size=32, max_size=32), st.binary(max_size=64))
def test_noise_hkdf_is_rfc5869_with_empty_info(ck: bytes, ikm: bytes) -> None:
    def ref(length: int) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=ck, info=b"").derive(ikm)

    assert b"".join(crypto.hkdf2(ck, ikm)) == ref(64)
    assert b"".join(crypto.hkdf3(ck, ikm)) == ref(96)


@given(key32, st.one_of(key32, st.sampled_from(LOW_ORDER)))
def test_pure_x25519_matches_cryptography(k: bytes, u: bytes) -> None:
    want = ref_x25519(k, u)
    for fn in (crypto.pure_x25519, crypto.x25519):
        if want is None:
            with pytest.raises(AuthError):
                fn(k, u)
        else:
            assert fn(k, u) == want
    if want is None:
        assert crypto.pure_x25519_raw(k, u) == bytes(32)


@given(key32)
def test_pure_x25519_base_matches_cryptography(k: bytes) -> None:
    want = X25519PrivateKey.from_private_bytes(k).public_key().public_bytes_raw()
    assert crypto.pure_x25519_base(k) == want
    assert crypto.x25519_base(k) == want
    assert crypto.x25519_keypair(k) == (k, want)


@settings(max_examples=50)
@given(key32, key32)
def test_pure_x25519_dh_agrees(a: bytes, b: bytes) -> None:
    a_pub, b_pub = crypto.pure_x25519_base(a), crypto.pure_x25519_base(b)
    assert crypto.pure_x25519(a, b_pub) == crypto.pure_x25519(b, a_pub) == ref_x25519(a, b_pub)
