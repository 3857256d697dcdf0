"""Interoperability of lowbw.wire.noise with the `noiseprotocol` package.

CPython only. Every test runs twice: with the `cryptography`-backed primitives
(what the proxy runs) and with the plain-Python ones (what the device runs),
swapped into lowbw.wire.crypto for the duration of the test.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import pytest
from cryptography.exceptions import InvalidTag
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection

from lowbw.wire import crypto
from lowbw.wire.errors import AuthError, DecodeError, StateError
from lowbw.wire.noise import HandshakeState

PATTERNS = ["IK", "XX"]
N_MESSAGES = {"IK": 2, "XX": 3}

key32 = st.binary(min_size=32, max_size=32)
prologues = st.binary(max_size=64)
payload = st.binary(max_size=120)
transport = st.lists(st.tuples(st.booleans(), st.binary(max_size=80)), max_size=6)

# noiseprotocol warns whenever an ephemeral key is set by hand; that is the point here.
pytestmark = pytest.mark.filterwarnings("ignore:One of ephemeral keypairs:UserWarning")


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    saved = (crypto.x25519, crypto.aead_encrypt, crypto.aead_decrypt)
    if name == "pure":
        crypto.x25519 = crypto.pure_x25519
        crypto.aead_encrypt = crypto.pure_aead_encrypt
        crypto.aead_decrypt = crypto.pure_aead_decrypt
    try:
        yield
    finally:
        crypto.x25519, crypto.aead_encrypt, crypto.aead_decrypt = saved


def theirs(
    pattern: str, initiator: bool, s: bytes, rs: bytes | None, prologue: bytes, e: bytes | None = None
) -> NoiseConnection:
    conn = NoiseConnection.from_name(b"Noise_%s_25519_ChaChaPoly_SHA256" % pattern.encode())
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_prologue(prologue)
    conn.set_keypair_from_private_bytes(Keypair.STATIC, s)
    if e is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, e)
    if rs is not None:
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, rs)
    conn.start_handshake()
    return conn


def ours(
    pattern: str, initiator: bool, s: bytes, rs: bytes | None, prologue: bytes, e: bytes | None = None
) -> HandshakeState:
    return HandshakeState(
        pattern, initiator, s, rs=rs if initiator and pattern == "IK" else None, prologue=prologue, e_priv=e
    )


class Side:
    """One end of a handshake behind a common face: ours or noiseprotocol's."""

    def __init__(self, obj: HandshakeState | NoiseConnection) -> None:
        self.obj = obj

    def write(self, p: bytes) -> bytes:
        return bytes(self.obj.write_message(p))

    def read(self, m: bytes) -> bytes:
        return bytes(self.obj.read_message(m))

    def hash(self) -> bytes:
        if isinstance(self.obj, HandshakeState):
            return self.obj.handshake_hash()
        return self.obj.get_handshake_hash()

    def done(self) -> bool:
        if isinstance(self.obj, HandshakeState):
            return self.obj.is_done()
        return self.obj.handshake_finished

    def encrypt(self, pt: bytes) -> bytes:
        if isinstance(self.obj, HandshakeState):
            return self.obj.split()[0].encrypt_with_ad(b"", pt)
        return self.obj.encrypt(pt)

    def decrypt(self, ct: bytes) -> bytes:
        if isinstance(self.obj, HandshakeState):
            return self.obj.split()[1].decrypt_with_ad(b"", ct)
        return bytes(self.obj.decrypt(ct))


def handshake(i: Side, r: Side, payloads: list[bytes]) -> list[bytes]:
    sent = []
    writer, reader = i, r
    for p in payloads:
        msg = writer.write(p)
        sent.append(msg)
        assert reader.read(msg) == p
        writer, reader = reader, writer
    assert i.done() and r.done()
    assert i.hash() == r.hash()
    return sent


def exchange(i: Side, r: Side, traffic: list[tuple[bool, bytes]]) -> list[bytes]:
    out = []
    for upward, pt in traffic:
        src, dst = (i, r) if upward else (r, i)
        ct = src.encrypt(pt)
        assert len(ct) == len(pt) + 16
        assert dst.decrypt(ct) == pt
        out.append(ct)
    return out


@pytest.mark.parametrize("impl", ["fast", "pure"])
@pytest.mark.parametrize("pattern", PATTERNS)
@settings(max_examples=15)
@given(
    si=key32,
    sr=key32,
    prologue=prologues,
    payloads=st.lists(payload, min_size=3, max_size=3),
    traffic=transport,
)
def test_mixed_pairs_interoperate(
    impl: str,
    pattern: str,
    si: bytes,
    sr: bytes,
    prologue: bytes,
    payloads: list[bytes],
    traffic: list[tuple[bool, bytes]],
) -> None:
    payloads = payloads[: N_MESSAGES[pattern]]
    sr_pub = crypto.x25519_base(sr)
    si_pub = crypto.x25519_base(si)
    rs = sr_pub if pattern == "IK" else None
    with backend(impl):
        # our initiator, their responder
        i = ours(pattern, True, si, rs, prologue)
        r_conn = theirs(pattern, False, sr, None, prologue)
        handshake(Side(i), Side(r_conn), payloads)
        assert i.remote_static() == sr_pub
        exchange(Side(i), Side(r_conn), traffic)
        # their initiator, our responder
        i_conn = theirs(pattern, True, si, rs, prologue)
        r = ours(pattern, False, sr, None, prologue)
        handshake(Side(i_conn), Side(r), payloads)
        assert r.remote_static() == si_pub
        exchange(Side(i_conn), Side(r), traffic)


@pytest.mark.parametrize("impl", ["fast", "pure"])
@pytest.mark.parametrize("pattern", PATTERNS)
@settings(max_examples=15)
@given(
    si=key32,
    sr=key32,
    ei=key32,
    er=key32,
    prologue=prologues,
    payloads=st.lists(payload, min_size=3, max_size=3),
    traffic=transport,
)
def test_fixed_ephemerals_give_identical_transcripts(
    impl: str,
    pattern: str,
    si: bytes,
    sr: bytes,
    ei: bytes,
    er: bytes,
    prologue: bytes,
    payloads: list[bytes],
    traffic: list[tuple[bool, bytes]],
) -> None:
    payloads = payloads[: N_MESSAGES[pattern]]
    rs = crypto.x25519_base(sr) if pattern == "IK" else None
    with backend(impl):
        oi, orr = (
            Side(ours(pattern, True, si, rs, prologue, ei)),
            Side(ours(pattern, False, sr, None, prologue, er)),
        )
        ti = Side(theirs(pattern, True, si, rs, prologue, ei))
        tr = Side(theirs(pattern, False, sr, None, prologue, er))
        assert handshake(oi, orr, payloads) == handshake(ti, tr, payloads)
        assert oi.hash() == ti.hash()
        assert exchange(oi, orr, traffic) == exchange(ti, tr, traffic)


@pytest.mark.parametrize("impl", ["fast", "pure"])
@settings(max_examples=10)
@given(si=key32, sr=key32, prologue=prologues, msgs=st.lists(st.binary(max_size=40), min_size=1, max_size=4))
def test_split_keys_rekey_and_explicit_nonces(
    impl: str, si: bytes, sr: bytes, prologue: bytes, msgs: list[bytes]
) -> None:
    """The frame layer's use: raw .k with explicit nonces, and REKEY, match noiseprotocol."""
    with backend(impl):
        i = ours("IK", True, si, crypto.x25519_base(sr), prologue)
        r_conn = theirs("IK", False, sr, None, prologue)
        handshake(Side(i), Side(r_conn), [b"", b""])
        send, recv = i.split()
        for n, pt in enumerate(msgs):
            assert bytes(r_conn.decrypt(crypto.aead_encrypt(send.k, n, b"", pt))) == pt
            assert crypto.aead_decrypt(recv.k, n, b"", r_conn.encrypt(pt)) == pt
        r_conn.rekey_outbound_cipher()
        r_conn.rekey_inbound_cipher()
        send.rekey()
        recv.rekey()
        send.set_nonce(len(msgs))
        recv.set_nonce(len(msgs))
        assert bytes(r_conn.decrypt(send.encrypt_with_ad(b"", b"after rekey"))) == b"after rekey"
        assert recv.decrypt_with_ad(b"", r_conn.encrypt(b"back")) == b"back"


@pytest.mark.parametrize("impl", ["fast", "pure"])
@pytest.mark.parametrize("pattern", PATTERNS)
@settings(max_examples=10)
@given(si=key32, sr=key32, prologue=prologues, body=payload, st_data=st.data())
def test_bad_handshake_messages_from_noiseprotocol(
    impl: str, pattern: str, si: bytes, sr: bytes, prologue: bytes, body: bytes, st_data: st.DataObject
) -> None:
    rs = crypto.x25519_base(sr) if pattern == "IK" else None
    with backend(impl):
        i_conn = theirs(pattern, True, si, rs, prologue)
        r = ours(pattern, False, sr, None, prologue)
        m1 = bytes(i_conn.write_message(body))
        if pattern == "IK":
            # truncated below the fixed 96 bytes: DecodeError; garbled: AuthError
            cut = st_data.draw(st.integers(0, 95))
            with pytest.raises(DecodeError):
                r.read_message(m1[:cut])
            pos = st_data.draw(st.integers(0, len(m1) - 1))
            bad = bytearray(m1)
            bad[pos] ^= 1 << st_data.draw(st.integers(0, 7))
            with pytest.raises(AuthError):
                r.read_message(bytes(bad))
        assert r.read_message(m1) == body  # the failures left no trace
        m2 = r.write_message(body)
        assert bytes(i_conn.read_message(m2)) == body
        if pattern == "XX":
            m3 = bytes(i_conn.write_message(b"last"))
            cut = st_data.draw(st.integers(0, 63))
            with pytest.raises(DecodeError):
                r.read_message(m3[:cut])
            bad = bytearray(m3)
            bad[st_data.draw(st.integers(0, len(m3) - 1))] ^= 0x10
            with pytest.raises(AuthError):
                r.read_message(bytes(bad))
            assert r.read_message(m3) == b"last"
        last = m1 if pattern == "IK" else m3
        with pytest.raises(StateError):  # replay to a finished state
            r.read_message(last)


@pytest.mark.parametrize("impl", ["fast", "pure"])
@settings(max_examples=10)
@given(si=key32, sr=key32, wrong=key32, body=payload)
def test_wrong_responder_static_key(impl: str, si: bytes, sr: bytes, wrong: bytes, body: bytes) -> None:
    assume(crypto.x25519_base(wrong) != crypto.x25519_base(sr))
    with backend(impl):
        # their initiator believes in the wrong proxy key: our responder rejects it
        i_conn = theirs("IK", True, si, crypto.x25519_base(wrong), b"")
        r = ours("IK", False, sr, None, b"")
        with pytest.raises(AuthError):
            r.read_message(bytes(i_conn.write_message(body)))
        # our initiator believes in the wrong key: their responder rejects it
        i = ours("IK", True, si, crypto.x25519_base(wrong), b"")
        r_conn = theirs("IK", False, sr, None, b"")
        with pytest.raises(InvalidTag):
            r_conn.read_message(i.write_message(body))
