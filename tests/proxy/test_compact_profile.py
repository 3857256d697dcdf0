"""The compact link profile (docs/PROTOCOL.md) through the real proxy into the real Synapse.

A device enrolled ``--profile compact`` opens its session with Noise KK
(key id in clear, 8-byte transport tags, SCHC-style CoAP header rules). These
tests drive the proxy with ``WireDevice(compact=True)`` and read the room as
the invited user does; the standard profile's equivalents are the other
files of this directory.
"""

from __future__ import annotations

import os

from lowbw.proxy import transport
from lowbw.proxy.registry import Registry
from lowbw.wire import coap, crypto, frames, handshake

from .conftest import WireDevice, room_events


def bodies(synapse, user, dev):
    events = room_events(synapse.url, user.access_token, dev.room_id, dev.user_id)
    return [e["content"]["body"] for e in events]


def compact_wire(dev) -> WireDevice:
    return WireDevice.from_config(dev.config, compact=True)


def test_enrollment_records_the_profile(device_factory, proxy_config_path):
    compact = device_factory(profile="compact")
    standard = device_factory()  # the test proxy's link is 1 Mbit/s: standard by default
    assert compact.config["profile"] == "compact" and standard.config["profile"] == "standard"
    from lowbw.proxy.config import load

    with Registry(load(proxy_config_path).proxy.registry) as reg:
        assert reg.device(compact.name).profile == "compact"
        assert reg.device(standard.name).profile == "standard"


def test_cold_and_warm_readings_in_the_byte_budget(device_factory, proxy_factory, synapse, matrix_user):
    dev = device_factory(profile="compact")
    proxy_factory()
    wire = compact_wire(dev)
    msg = wire.reading([215])
    answer = wire.exchange(msg)
    assert answer.mtype == coap.ACK and answer.code == coap.CHANGED and answer.mid == msg.mid
    kk1 = wire.sent[-1]
    assert kk1[0] == frames.HS_KK1
    # KK message 1 with a one-value scaled reading: 60 B with a store's
    # handshake number (one byte), 64 with this helper's wall-clock number.
    assert len(kk1) == 59 + len(handshake.encode_uint(handshake._last_clock_hsn[0]))
    assert wire.session.compact and wire.session.sid < 0x80

    warm = wire.reading([216])
    wire.send(wire.seal(warm))
    up = wire.sent[-1]
    kk2 = wire.recv()
    assert len(up) == 15 and len(kk2) == 9  # warm: 24 B with its acknowledgement
    ans = wire.session.open(kk2, bytes([warm.mid >> 8, warm.mid & 0xFF]))
    assert coap.decode(frames.expand_down(wire.session.rule, ans, warm.mid)).code == coap.CHANGED

    # The acknowledgement was "lost": the same message again (same MID, new
    # counter) is answered from the deduplication cache, no second event.
    assert wire.exchange(warm).code == coap.CHANGED
    assert bodies(synapse, matrix_user, dev) == ["temperature 21.5 °C", "temperature 21.6 °C"]


def test_other_requests_and_answers_use_rule_2_and_roaming_works(
    device_factory, proxy_factory, synapse, matrix_user
):
    dev = device_factory(profile="compact")
    proxy_factory()
    wire = compact_wire(dev)
    assert wire.exchange(wire.reading([1])).code == coap.CHANGED
    # GET z (the time): rule 2 up (code in the residue), 2.05 with a payload down.
    answer = wire.exchange(wire.request(coap.GET, ["z"]))
    assert answer.code == coap.CONTENT and answer.payload
    assert wire.sent[-1][0] >> 4 == 0xC | frames.RULE_CODE
    # A new source address: the session id finds the session.
    wire.new_socket()
    assert wire.exchange(wire.reading([2])).code == coap.CHANGED
    assert bodies(synapse, matrix_user, dev) == ["temperature 0.1 °C", "temperature 0.2 °C"]


def test_message_ids_far_apart_travel_raw(device_factory, proxy_factory, synapse, matrix_user):
    dev = device_factory(profile="compact")
    proxy_factory()
    wire = compact_wire(dev)
    wire.next_mid = 10
    assert wire.exchange(wire.reading([1])).code == coap.CHANGED
    # More than 127 numbers further on: the low byte alone would be read as an
    # old message, so the request goes whole (rule 0).
    msg = wire.reading([2], mid=300)
    wire.last_mid = msg.mid
    wire.send(bytes(wire.session.seal(coap.encode(msg))))
    assert wire.open(wire.recv()).code == coap.CHANGED
    # ... and the low byte counts from there.
    assert wire.exchange(wire.reading([3], mid=301)).code == coap.CHANGED
    assert bodies(synapse, matrix_user, dev) == ["temperature %s °C" % v for v in ("0.1", "0.2", "0.3")]


def test_profiles_are_kept_apart(device_factory, proxy_factory):
    standard = device_factory(profile="standard")
    compact = device_factory(profile="compact")
    proxy_factory()
    # A standard device's KK message 1 names no compact device: no answer.
    wire = compact_wire(standard)
    dgram, _ = wire.ik_datagram(wire.reading([1]))
    wire.send(dgram)
    wire.expect_silence()
    # A compact device may still use IK (a standard session).
    ik = compact.wire()
    assert ik.exchange(ik.reading([1])).code == coap.CHANGED
    assert not ik.session.compact


def test_unknown_key_id_garbage_and_replays_get_no_answer(device_factory, proxy_factory):
    dev = device_factory(profile="compact")
    proxy = proxy_factory()
    stranger = WireDevice(os.urandom(32), bytes.fromhex(dev.config["proxy"]["public_key"]),
                          (dev.config["proxy"]["host"], dev.config["proxy"]["port"]), compact=True)
    dgram, _ = stranger.ik_datagram(stranger.reading([1]))
    stranger.send(dgram)
    stranger.expect_silence()
    # The right key id, a forged message.
    wire = compact_wire(dev)
    dgram, _ = wire.ik_datagram(wire.reading([1]))
    forged = bytearray(dgram)
    forged[-1] ^= 1
    wire.send(bytes(forged))
    wire.expect_silence()
    for junk in (b"\x88", b"\x88" + bytes(10), b"\xc0", b"\xd0\x05" + bytes(8), dgram[:40]):
        wire.send(junk)
    wire.expect_silence()
    # The genuine one, then a replay of it: answered once.
    wire.send(dgram)
    ans = wire.recv()
    assert ans[0] == frames.HS_KK2
    wire.send(dgram)
    wire.expect_silence()
    counts = proxy.run(lambda: dict(proxy.server.table.handshake_counts))
    assert counts.get(("kk", "ok")) == 1 and counts.get(("kk", "replay"), 0) >= 1


def test_forgeries_are_rate_limited_and_capped(device_factory, proxy_factory, monkeypatch):
    dev = device_factory(profile="compact")
    proxy = proxy_factory()
    wire = compact_wire(dev)
    assert wire.exchange(wire.reading([1])).code == coap.CHANGED
    sid = wire.session.sid
    # Forged frames naming the session: each fails its tag, then the session's
    # forgery budget is spent and further frames are dropped unopened.
    for i in range(transport.FORGERY_BURST + 4):
        wire.send(bytes([0xD0 | (i & 15), sid]) + os.urandom(13))
    wire.expect_silence()
    stats = proxy.run(lambda: dict(proxy.server.transport.stats.dropped))
    assert stats.get(transport.DROP_AUTH) == transport.FORGERY_BURST
    assert stats.get(transport.DROP_FORGERY_RATE) == 4
    # Even the genuine frame waits for the budget to refill...
    wire.send(wire.seal(wire.reading([2])))
    wire.expect_silence()
    # ... and a session past FORGERY_LIMIT failed tag checks opens nothing:
    # the device's next handshake (new keys) carries on.
    monkeypatch.setattr(transport, "FORGERY_EVERY", 0.001)
    addr = proxy.run(lambda: proxy.server.table.by_device[dev.name])
    proxy.run(lambda: setattr(addr.session, "failures", frames.FORGERY_LIMIT))
    wire.send(wire.seal(wire.reading([3])))
    wire.expect_silence()
    assert proxy.run(lambda: proxy.server.transport.stats.dropped.get(transport.DROP_FORGERY_LIMIT)) == 1
    wire.session = None
    assert wire.exchange(wire.reading([4])).code == coap.CHANGED


def test_saved_compact_session_survives_a_restart(device_factory, proxy_factory, synapse, matrix_user):
    dev = device_factory(profile="compact")
    proxy = proxy_factory()
    wire = compact_wire(dev)
    wire.next_mid = 200
    assert wire.exchange(wire.reading([1])).code == coap.CHANGED
    assert proxy.stop() == 1
    proxy_factory()
    # The saved session keeps its profile and the Message ID the rules count from.
    assert wire.exchange(wire.reading([2])).code == coap.CHANGED
    assert bodies(synapse, matrix_user, dev) == ["temperature 0.1 °C", "temperature 0.2 °C"]


def test_kk_answer_bytes_are_the_same_with_both_handshake_implementations():
    """noiseprotocol (the proxy's default) and lowbw.wire answer a KK message 1 alike."""
    from lowbw.proxy import noise_ik

    dev_priv, proxy_priv = os.urandom(32), os.urandom(32)
    dev_pub = crypto.x25519_base(dev_priv)
    e_dev, e_proxy = os.urandom(32), os.urandom(32)
    req = coap.Message(coap.CON, coap.POST, 7, b"", ((coap.URI_PATH, b"v"),), b"\x82\x00\x01").encode()
    answers = []
    for responder in (noise_ik.Responder(proxy_priv, e_priv=e_proxy, rs=dev_pub),
                      handshake.Responder(proxy_priv, e_priv=e_proxy, rs=dev_pub)):
        proxy_pub = crypto.x25519_base(proxy_priv)
        init = handshake.Initiator(dev_priv, proxy_pub, e_priv=e_dev, hsn=3, compact=True)
        kk1 = init.start(req)
        pub, caps, request = responder.read_init(kk1)
        assert pub == dev_pub and request == req and responder.hsn == 3
        ack = coap.make_response(coap.decode(request), coap.CHANGED).encode()
        kk2, session = responder.respond(0x1234, handshake.negotiate_caps(caps), ack)
        dev_session, got_caps, response = init.finish(kk2)
        assert response == ack and got_caps & handshake.CAP_COMPACT and dev_session.sid == 0x1234
        assert session.compact and session.mid == 7
        answers.append(kk2)
    assert answers[0] == answers[1]


def test_kk_under_load_takes_the_cookie_round_trip(device_factory, proxy_factory):
    """The handshake defences hold for KK as for IK: under load a KK message 1
    without a cookie gets a 17-byte cookie reply and no Diffie-Hellman; the same
    message behind the cookie (0x87) gets its answer."""
    from lowbw.proxy.limits import Limits

    dev = device_factory(profile="compact")
    proxy_factory(limits=Limits(cookie_threshold=0.0, handshakes_per_source=1000.0, handshakes_global=1000.0))
    wire = compact_wire(dev)
    msg = wire.reading([5])
    kk1, init = wire.ik_datagram(msg)
    wire.send(kk1)
    reply = wire.recv()
    assert reply[0] == frames.HS_COOKIE_REPLY and len(reply) == 17
    wire.send(handshake.cookied(handshake.parse_cookie_reply(reply), kk1))
    session, caps, response = init.finish(wire.recv())
    assert caps & handshake.CAP_COMPACT and coap.decode(response).code == coap.CHANGED
    # A cookie is bound to its initiation: another KK message 1 behind it gets nothing.
    other, _ = wire.ik_datagram(wire.reading([6]))
    wire.send(handshake.cookied(handshake.parse_cookie_reply(reply), other))
    wire.expect_silence()
