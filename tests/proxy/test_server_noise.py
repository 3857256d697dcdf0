"""The proxy's handshake on noiseprotocol (lowbw.proxy.noise_ik) against the wire
layer's own Responder: the same datagrams, byte for byte, and only lowbw errors."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from lowbw.proxy import noise_ik
from lowbw.wire import coap, crypto, frames, handshake
from lowbw.wire.errors import LowbwError

from .conftest import ProxyThread, proxy_settings

key32 = st.binary(min_size=32, max_size=32)


def both(proxy_priv: bytes, proxy_eph: bytes) -> tuple[noise_ik.Responder, handshake.Responder]:
    return noise_ik.Responder(proxy_priv, e_priv=proxy_eph), handshake.Responder(proxy_priv, e_priv=proxy_eph)


@settings(max_examples=40)
@given(key32, key32, key32, key32, st.binary(max_size=80), st.binary(max_size=80), st.integers(0, 0xFFFF))
def test_ik_datagrams_identical(dev_priv, dev_eph, proxy_priv, proxy_eph, request, response, sid):
    init = handshake.Initiator(dev_priv, crypto.x25519_base(proxy_priv), e_priv=dev_eph)
    ik1 = init.start(request)
    ours, reference = both(proxy_priv, proxy_eph)
    got = ours.read_init(ik1)
    assert got == reference.read_init(ik1)
    assert got[0] == crypto.x25519_base(dev_priv) and got[2] == request
    caps = handshake.negotiate_caps(got[1])
    ik2, session = ours.respond(sid, caps, response)
    ik2_ref, session_ref = reference.respond(sid, caps, response)
    assert ik2 == ik2_ref
    assert session is not None and session.export_state() == session_ref.export_state()
    device_session, _, answer = init.finish(ik2)
    assert answer == response
    assert session.open(device_session.seal(b"ping")) == b"ping"


@settings(max_examples=25)
@given(key32, key32, key32, key32, st.binary(max_size=60), st.integers(0, 0xFFFF))
def test_xx_datagrams_identical(dev_priv, dev_eph, proxy_priv, proxy_eph, request, sid):
    init = handshake.Pairing(dev_priv, e_priv=dev_eph)
    xx1 = init.start(request)
    ours, reference = both(proxy_priv, proxy_eph)
    assert ours.read_init(xx1) == reference.read_init(xx1)
    xx2, _ = ours.respond(sid, 2)
    assert xx2 == reference.respond(sid, 2)[0]
    assert len(xx2) <= len(xx1)
    _, _, xx3 = init.finish(xx2)
    got = ours.read_final(xx3)
    ref = reference.read_final(xx3)
    assert got[:2] == ref[:2] == (crypto.x25519_base(dev_priv), request)
    assert got[2].export_state() == ref[2].export_state()


@given(st.binary(max_size=300))
def test_garbage_raises_only_lowbw_errors(data):
    responder = noise_ik.Responder(bytes(range(32)))
    try:
        responder.read_init(data)
    except LowbwError:
        pass


def test_truncated_and_flipped_handshakes_raise_lowbw_errors():
    proxy_priv = os.urandom(32)
    init = handshake.Initiator(os.urandom(32), crypto.x25519_base(proxy_priv))
    ik1 = init.start(b"hello")
    for cut in range(len(ik1)):
        try:
            noise_ik.Responder(proxy_priv).read_init(ik1[:cut])
        except LowbwError:
            continue
        raise AssertionError("truncated IK1 (%d B) accepted" % cut)
    for pos in range(1, len(ik1)):
        bad = bytearray(ik1)
        bad[pos] ^= 0x80
        try:
            noise_ik.Responder(proxy_priv).read_init(bytes(bad))
        except LowbwError:
            continue
        raise AssertionError("IK1 with byte %d flipped accepted" % pos)
    # Low-order ephemeral: refused as an authentication failure, not a ValueError.
    low = bytes([frames.HS_IK1]) + bytes(32) + ik1[33:]
    try:
        noise_ik.Responder(proxy_priv).read_init(low)
    except LowbwError:
        pass
    else:
        raise AssertionError("all-zero ephemeral accepted")
    # XX3 out of turn, for another session, truncated.
    xx = noise_ik.Responder(proxy_priv)
    xx1 = handshake.Pairing(os.urandom(32)).start()
    xx.read_init(xx1)
    xx2, _ = xx.respond(7, 2)
    for bad3 in (b"\x85", b"\x85\x00\x08" + bytes(64), b"\x85\x00\x07" + bytes(10)):
        try:
            noise_ik.Responder(proxy_priv).read_final(bad3)
        except LowbwError:
            pass
        try:
            xx.read_final(bad3)
        except LowbwError:
            pass
    assert len(xx2) == 100


def test_real_proxy_answers_with_the_reference_bytes(device_factory, proxy_config_path):
    """With its ephemeral fixed, the running proxy's IK answer equals the wire
    layer's Responder's for the same first message."""
    dev = device_factory()
    proxy_eph = os.urandom(32)
    settings = proxy_settings(proxy_config_path)
    proxy = ProxyThread(settings, ephemeral=lambda: proxy_eph)
    try:
        wire = dev.wire()
        ik1, init = wire.ik_datagram(wire.request(coap.GET, ["z"]))
        wire.send(ik1)
        ik2 = wire.recv()
        session, _, response = init.finish(ik2)
        # The answer carries the current time: rebuild the reference around the proxy's
        # CoAP answer and session id, everything else must match byte for byte.
        reference = handshake.Responder(settings.private_key, e_priv=proxy_eph)
        _, caps, _ = reference.read_init(ik1)
        expected, _ = reference.respond(session.sid, handshake.negotiate_caps(caps), response)
        assert ik2 == expected
        assert coap.decode(response).code == coap.CONTENT
    finally:
        proxy.stop()


def test_wire_handshake_implementation_serves_too(device_factory, proxy_factory):
    dev = device_factory()
    proxy_factory(handshake_impl="wire")
    wire = dev.wire()
    assert wire.exchange(wire.reading([7])).code == coap.CHANGED
