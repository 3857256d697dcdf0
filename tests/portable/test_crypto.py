"""Known-answer tests for lowbw.wire.crypto (RFC 7748, RFC 8439, RFC 4231).

Portable: runs under pytest on CPython and under MicroPython. Each check runs
the plain-Python ``pure_*`` function and, where it differs (CPython with the
``cryptography`` package), the dispatching one too.
"""

from lowbw.wire import crypto
from lowbw.wire.errors import AuthError, EncodeError
from tests.portable.check import raises, unhex

# Need code the device does not freeze (the proxy's side, or names the
# device build leaves out): run on the full tree only (tests/portable/mp_run.py).
FULL_TREE = (
    "test_aead_rfc8439_2_8_2",
    "test_hkdf_matches_noise_definition",
    "test_rekey_is_encrypt_at_max_nonce",
    "test_x25519_rejects_wrong_lengths",
    "test_x25519_rfc7748_6_1_dh",
)


SUNSCREEN = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for "
    b"the future, sunscreen would be it."
)


def _x25519_impls():
    out = [crypto.pure_x25519]
    if crypto.x25519 is not crypto.pure_x25519:
        out.append(crypto.x25519)
    return out


# ---------------------------------------------------------------- RFC 7748


def test_x25519_rfc7748_5_2_vectors():
    vectors = [
        (
            "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
            "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
            "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
        ),
        (
            # u has its top bit set, which X25519 must ignore
            "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
            "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
            "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
        ),
    ]
    for fn in _x25519_impls() + [crypto.pure_x25519_raw]:
        for k, u, out in vectors:
            assert fn(unhex(k), unhex(u)) == unhex(out)


def _iterate(fn, count):
    k = u = b"\x09" + bytes(31)
    for _ in range(count):
        k, u = fn(k, u), k
    return k


def test_x25519_rfc7748_5_2_iterated_once():
    expected = unhex("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079")
    for fn in _x25519_impls():
        assert _iterate(fn, 1) == expected


def test_x25519_rfc7748_5_2_iterated_1000():
    # ~7 s of plain X25519 on MicroPython (unix, x86-64), ~2 s on CPython.
    expected_1000 = unhex("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51")
    assert _iterate(crypto.pure_x25519, 1000) == expected_1000
    if crypto.x25519 is not crypto.pure_x25519:
        assert _iterate(crypto.x25519, 1000) == expected_1000


def test_x25519_rfc7748_6_1_dh():
    a = unhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    a_pub = unhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    b = unhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    b_pub = unhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = unhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert crypto.pure_x25519_base(a) == a_pub
    assert crypto.pure_x25519_base(b) == b_pub
    assert crypto.x25519_base(a) == a_pub
    assert crypto.x25519_keypair(b) == (b, b_pub)
    for fn in _x25519_impls():
        assert fn(a, b_pub) == shared
        assert fn(b, a_pub) == shared


def test_x25519_rejects_low_order_points():
    k = unhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    low_order = [
        bytes(32),  # 0
        b"\x01" + bytes(31),  # 1
        # a point of order 8 (from the list in the Curve25519 "small subgroup" notes)
        unhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
        # p itself, non-canonical 0
        unhex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    ]
    for u in low_order:
        assert crypto.pure_x25519_raw(k, u) == bytes(32)
        for fn in _x25519_impls():
            raises(AuthError, fn, k, u)


def test_x25519_rejects_wrong_lengths():
    for fn in _x25519_impls():
        raises(EncodeError, fn, bytes(31), b"\x09" + bytes(31))
        raises(EncodeError, fn, bytes(32), bytes(33))
    raises(EncodeError, crypto.x25519_keypair, bytes(16))


# ---------------------------------------------------------------- RFC 8439


def test_chacha20_block_rfc8439_2_3_2():
    key = bytes(range(32))
    nonce = unhex("000000090000004a00000000")
    expected = unhex(
        "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
        "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e"
    )
    assert crypto.chacha20_block(key, 1, nonce) == expected


def test_chacha20_encrypt_rfc8439_2_4_2():
    key = bytes(range(32))
    nonce = unhex("000000000000004a00000000")
    expected = unhex(
        "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b"
        "f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8"
        "07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736"
        "5af90bbf74a35be6b40b8eedf2785e42874d"
    )
    assert crypto.chacha20_xor(key, 1, nonce, SUNSCREEN) == expected
    assert crypto.chacha20_xor(key, 1, nonce, expected) == SUNSCREEN


def test_poly1305_rfc8439_2_5_2():
    key = unhex("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b")
    tag = unhex("a8061dc1305136c6c22b8baf0c0127a9")
    assert crypto.poly1305_mac(key, b"Cryptographic Forum Research Group") == tag


def test_aead_rfc8439_2_8_2():
    key = bytes(range(0x80, 0xA0))
    nonce = unhex("070000004041424344454647")
    ad = unhex("50515253c0c1c2c3c4c5c6c7")
    ct = unhex(
        "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
        "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
        "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
        "3ff4def08e4b7a9de576d26586cec64b6116"
    )
    tag = unhex("1ae10b594f09e26a7e902ecbd0600691")
    assert crypto.aead_encrypt_rfc(key, nonce, ad, SUNSCREEN) == ct + tag
    assert crypto.aead_decrypt_rfc(key, nonce, ad, ct + tag) == SUNSCREEN
    raises(AuthError, crypto.aead_decrypt_rfc, key, nonce, ad + b"x", ct + tag)


def _aead_pairs():
    pairs = [(crypto.pure_aead_encrypt, crypto.pure_aead_decrypt)]
    if crypto.aead_encrypt is not crypto.pure_aead_encrypt:
        pairs.append((crypto.aead_encrypt, crypto.aead_decrypt))
    return pairs


def test_aead_noise_nonce_layout():
    key = bytes(range(0x80, 0xA0))
    n = 0x0102030405060708
    nonce = b"\x00\x00\x00\x00" + unhex("0807060504030201")
    expected = crypto.aead_encrypt_rfc(key, nonce, b"ad", b"hello")
    for enc, dec in _aead_pairs():
        assert enc(key, n, b"ad", b"hello") == expected
        assert dec(key, n, b"ad", expected) == b"hello"
        # the largest counter is legal (REKEY uses it); one more is not
        assert len(enc(key, (1 << 64) - 1, b"", bytes(32))) == 48
        raises(EncodeError, enc, key, 1 << 64, b"", b"")
        raises(EncodeError, enc, key, -1, b"", b"")


def test_aead_rejects_tampering_and_truncation():
    key = bytes(range(32))
    for enc, dec in _aead_pairs():
        sealed = enc(key, 7, b"header", b"30 bytes of sensor reading....")
        assert len(sealed) == 30 + 16
        assert dec(key, 7, b"header", sealed) == b"30 bytes of sensor reading...."
        for i in (0, 29, 30, 45):  # first/last ciphertext byte, first/last tag byte
            bad = bytearray(sealed)
            bad[i] ^= 0x01
            raises(AuthError, dec, key, 7, b"header", bytes(bad))
        raises(AuthError, dec, key, 8, b"header", sealed)
        raises(AuthError, dec, key, 7, b"headeR", sealed)
        raises(AuthError, dec, bytes(32), 7, b"header", sealed)
        for cut in (0, 1, 15):
            raises(AuthError, dec, key, 7, b"header", sealed[:cut])
        raises(AuthError, dec, key, 7, b"header", sealed[:-1])
        # empty plaintext is just a tag
        tag_only = enc(key, 0, b"", b"")
        assert len(tag_only) == 16
        assert dec(key, 0, b"", tag_only) == b""
        raises(EncodeError, enc, bytes(31), 0, b"", b"")


def test_rekey_is_encrypt_at_max_nonce():
    key = bytes(range(32))
    expected = crypto.pure_aead_encrypt(key, (1 << 64) - 1, b"", bytes(32))[:32]
    assert crypto.rekey(key) == expected
    assert expected != key


# ---------------------------------------------------------------- RFC 4231


def test_hmac_sha256_rfc4231():
    vectors = [
        (b"\x0b" * 20, b"Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
        (
            b"Jefe",
            b"what do ya want for nothing?",
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        ),
        (b"\xaa" * 20, b"\xdd" * 50, "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
        (
            bytes(range(1, 26)),
            b"\xcd" * 50,
            "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
        ),
        # test case 5 is truncated to 128 bits
        (b"\x0c" * 20, b"Test With Truncation", "a3b6167473100ee06e0c796c2955552b"),
        (
            b"\xaa" * 131,
            b"Test Using Larger Than Block-Size Key - Hash Key First",
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        ),
        (
            b"\xaa" * 131,
            b"This is a test using a larger than block-size key and a larger than block-size data. "
            b"The key needs to be hashed before being used by the HMAC algorithm.",
            "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
        ),
    ]
    for key, data, mac in vectors:
        want = unhex(mac)
        assert crypto.hmac_sha256(key, data)[: len(want)] == want


def test_hkdf_matches_noise_definition():
    # Noise rev 34 §4.3, spelled out with hmac_sha256 (itself checked above).
    ck = bytes(range(32))
    ikm = b"input key material"
    temp = crypto.hmac_sha256(ck, ikm)
    o1 = crypto.hmac_sha256(temp, b"\x01")
    o2 = crypto.hmac_sha256(temp, o1 + b"\x02")
    o3 = crypto.hmac_sha256(temp, o2 + b"\x03")
    assert crypto.hkdf2(ck, ikm) == (o1, o2)
    assert crypto.hkdf3(ck, ikm) == (o1, o2, o3)
    assert crypto.hkdf2(ck, b"") != crypto.hkdf2(ck, b"\x00")
