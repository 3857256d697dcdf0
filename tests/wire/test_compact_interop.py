"""The compact link profile against `noiseprotocol`, and its parsers under fuzzing.

What stays standard Noise (the KK handshake, ChaCha20-Poly1305) is checked
byte for byte against `noise.connection`, with both of lowbw's backends (the
`cryptography` one the proxy runs, the plain-Python one the device runs). The
8-byte transport tag is the first half of the Noise tag for the same key,
nonce and associated data: that departure from Noise is checked here too.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection

from lowbw.wire import coap, crypto, frames, handshake
from lowbw.wire.errors import AuthError, DecodeError, LowbwError, ReplayError
from lowbw.wire.noise import HandshakeState

pytestmark = pytest.mark.filterwarnings("ignore:One of ephemeral keypairs:UserWarning")

key32 = st.binary(min_size=32, max_size=32)
K1 = bytes(range(32))
K2 = bytes(range(100, 132))


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


def theirs(initiator: bool, s: bytes, rs: bytes, e: bytes | None = None) -> NoiseConnection:
    conn = NoiseConnection.from_name(b"Noise_KK_25519_ChaChaPoly_SHA256")
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_prologue(frames.PROLOGUE)
    conn.set_keypair_from_private_bytes(Keypair.STATIC, s)
    conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, rs)
    if e is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, e)
    conn.start_handshake()
    return conn


@pytest.mark.parametrize("impl", ["fast", "pure"])
@settings(max_examples=10)
@given(si=key32, sr=key32, p1=st.binary(max_size=60), p2=st.binary(max_size=60))
def test_kk_handshake_states_interoperate(impl: str, si: bytes, sr: bytes, p1: bytes, p2: bytes) -> None:
    si_pub, sr_pub = crypto.x25519_base(si), crypto.x25519_base(sr)
    with backend(impl):
        ours_i = HandshakeState("KK", True, si, rs=sr_pub, prologue=frames.PROLOGUE)
        their_r = theirs(False, sr, si_pub)
        assert bytes(their_r.read_message(ours_i.write_message(p1))) == p1
        assert ours_i.read_message(bytes(their_r.write_message(p2))) == p2
        assert ours_i.handshake_hash() == their_r.get_handshake_hash()
        their_i = theirs(True, si, sr_pub)
        ours_r = HandshakeState("KK", False, sr, rs=si_pub, prologue=frames.PROLOGUE)
        assert ours_r.read_message(bytes(their_i.write_message(p1))) == p1
        assert bytes(their_i.read_message(ours_r.write_message(p2))) == p2
        assert ours_r.handshake_hash() == their_i.get_handshake_hash()


@pytest.mark.parametrize("impl", ["fast", "pure"])
def test_kk_datagrams_are_noise_kk_behind_kind_and_key_id(impl: str) -> None:
    dev, proxy = bytes(range(1, 33)), bytes(range(33, 65))
    dev_pub, proxy_pub = crypto.x25519_base(dev), crypto.x25519_base(proxy)
    e_dev, e_proxy = bytes(range(65, 97)), bytes(range(97, 129))
    msg = coap.Message(coap.CON, coap.POST, 0x0102, b"", ((coap.URI_PATH, b"v"),), b"\x82\x00\x01")
    req = coap.encode(msg)
    with backend(impl):
        init = handshake.Initiator(dev, proxy_pub, e_priv=e_dev, hsn=9, compact=True)
        kk1 = init.start(req)
        assert kk1[0] == frames.HS_KK1 and kk1[1:3] == handshake.key_id(dev_pub)
        their_r = theirs(False, proxy, dev_pub, e_proxy)
        payload = bytes(their_r.read_message(kk1[3:]))
        # caps, hsn, then rule 1: MID (both bytes) and the reading.
        assert payload == bytes([0x82, 9, frames.RULE_READING, 0x01, 0x02, 0x82, 0x00, 0x01])
        answer = bytes(their_r.write_message(bytes([0x2A, 0x82, frames.RULE_READING])))
        session, caps, response = init.finish(bytes([frames.HS_KK2]) + answer)
        assert response == bytes([0x60, 0x44, 0x01, 0x02]) and session.sid == 0x2A and caps == 0x82
        # Transport keys are Noise's Split(); the compact tag is the Noise tag's first 8 bytes.
        n = 0
        ct_full = bytes(their_r.encrypt(b"down"))
        assert crypto.aead_open(session.recv_key, n, b"", ct_full[:-16] + ct_full[-16:-8], 8) == b"down"
        frame = session.seal(b"up", rule=frames.RULE_RAW)
        header, body = frame[:2], frame[2:]
        full = crypto.aead_encrypt(session.send_key, 0, header, b"up")
        assert body == full[:-8]


@given(st.binary(max_size=80))
def test_compact_open_garbage_only_our_errors_and_no_state_change(data: bytes) -> None:
    for session in (frames.Session(K1, K2, 0x2A, True, compact=True),
                    frames.Session(K2, K1, 0x2A, False, compact=True)):
        before = (session.export_state(), session.failures)
        try:
            session.open(data, b"\x00\x01")
        except (DecodeError, AuthError):
            pass
        assert session.export_state() == before[0]


@given(st.binary(min_size=1, max_size=40), st.integers(0, 60), st.integers(1, 255), st.integers(0, 2))
def test_mutated_compact_frame_never_opens(payload: bytes, pos: int, flip: int, rule: int) -> None:
    dev = frames.Session(K1, K2, 0x2A, True, compact=True)
    proxy = frames.Session(K2, K1, 0x2A, False, compact=True)
    good = bytearray(dev.seal(payload, rule=rule))
    pos %= len(good)
    good[pos] ^= flip
    try:
        proxy.open(bytes(good))
    except (DecodeError, AuthError):
        return
    raise AssertionError("a mutated frame opened")


@given(st.integers(0, 3), st.binary(max_size=40), st.one_of(st.none(), st.integers(-1, 0xFFFF)))
def test_expand_up_only_decode_errors(rule: int, residue: bytes, last: int | None) -> None:
    try:
        msg, _mid = frames.expand_up(rule, residue, last)
    except DecodeError:
        return
    try:
        coap.decode(msg)
    except DecodeError:
        pass


@given(st.integers(0, 3), st.binary(max_size=40), st.integers(0, 0xFFFF))
def test_expand_down_only_decode_errors(rule: int, residue: bytes, mid: int) -> None:
    try:
        frames.expand_down(rule, residue, mid)
    except DecodeError:
        pass


@given(st.binary(max_size=120))
def test_kk_responder_and_initiator_on_garbage(data: bytes) -> None:
    dev_pub = crypto.x25519_base(bytes(range(1, 33)))
    try:
        handshake.Responder(bytes(range(33, 65)), rs=dev_pub).read_init(b"\x88" + data)
    except (DecodeError, AuthError):
        pass
    init = handshake.Initiator(bytes(range(1, 33)), crypto.x25519_base(bytes(range(33, 65))), hsn=1,
                               compact=True)
    init.start(b"\x40\x02\x00\x01\xb1\x76\xff\x01")
    try:
        init.finish(b"\x89" + data)
    except LowbwError:
        pass


def test_compact_frames_never_reuse_a_nonce_and_refuse_replays() -> None:
    dev = frames.Session(K1, K2, 0x2A, True, compact=True)
    proxy = frames.Session(K2, K1, 0x2A, False, compact=True)
    seen = set()
    for i in range(100):
        frame = dev.seal(bytes([i % 256]))
        assert dev.next_send == i + 1 and frame not in seen
        seen.add(frame)
        assert proxy.open(frame) == bytes([i % 256])
        with pytest.raises(ReplayError):
            proxy.open(frame)
