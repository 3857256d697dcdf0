"""Who gets an answer from the proxy, and how big it is; what a device may reach.

Silence is asserted with a socket timeout: an unknown key, a replayed frame,
a replayed IK message 1, a tampered frame and garbage get no datagram back.
"""

from __future__ import annotations

import os

from lowbw.proxy.registry import Registry
from lowbw.wire import cbor, coap, crypto, handshake, keys

from .conftest import WireDevice, matrix_call, room_events


def test_unknown_key_gets_no_answer(device_factory, proxy_factory):
    dev = device_factory()
    proxy = proxy_factory()
    stranger = WireDevice(
        os.urandom(32), bytes.fromhex(dev.config["proxy"]["public_key"]), ("127.0.0.1", proxy.port)
    )
    dgram, _ = stranger.ik_datagram(stranger.reading([1]))
    stranger.send(dgram)
    stranger.expect_silence()
    # Not even an IK message 1 to some other proxy key gets an answer.
    lost = WireDevice(os.urandom(32), crypto.x25519_base(os.urandom(32)), ("127.0.0.1", proxy.port))
    lost.send(lost.ik_datagram(lost.reading([1]))[0])
    lost.expect_silence()
    assert proxy.server.stats()["sessions"] == 0


def test_replayed_handshake_gets_no_answer(device_factory, proxy_factory, synapse, matrix_user):
    dev = device_factory()
    proxy = proxy_factory()
    wire = dev.wire()
    dgram, init = wire.ik_datagram(wire.reading([5]))
    wire.send(dgram)
    session, _, response = init.finish(wire.recv())
    assert coap.decode(response).code == coap.CHANGED
    wire.send(dgram)  # the same IK message 1 again
    wire.expect_silence()
    # The replay did not replace the session the genuine handshake made.
    wire.session = session
    assert wire.exchange(wire.reading([6])).code == coap.CHANGED
    # The replay cache is in the registry: still refused after a restart.
    proxy.stop()
    proxy_factory()
    wire.send(dgram)
    wire.expect_silence()
    assert len(room_events(synapse.url, matrix_user.access_token, dev.room_id, dev.user_id)) == 2


def test_tampered_frames_get_no_answer_and_do_not_hurt_the_session(device_factory, proxy_factory):
    dev = device_factory()
    proxy_factory()
    wire = dev.wire()
    wire.exchange(wire.reading([1]))
    frame = wire.seal(wire.reading([2]))
    for pos in (0, 1, 3, len(frame) // 2, len(frame) - 1):
        bad = bytearray(frame)
        bad[pos] ^= 0x01
        wire.send(bytes(bad))
        wire.expect_silence(0.3)
    wire.send(frame[:-1])
    wire.expect_silence(0.3)
    wire.send(frame)  # the genuine frame still opens
    assert wire.open(wire.recv()).code == coap.CHANGED


def test_garbage_and_answer_sizes(device_factory, proxy_factory):
    """Garbage gets nothing; the only unauthenticated datagram that is answered
    (XX message 1, pairing) gets an answer no larger than itself."""
    dev = device_factory()
    proxy = proxy_factory()
    probe = WireDevice(os.urandom(32), os.urandom(32), ("127.0.0.1", proxy.port))
    for junk in (
        b"",
        b"\x00",
        b"\x81",
        b"\x82" + os.urandom(60),
        b"\xff" * 40,
        os.urandom(200),
        b"\x41\x00",
    ):
        probe.send(junk)
        probe.expect_silence(0.2)
    probe.send(b"\x83" + os.urandom(40))  # XX message 1 shorter than its padding rule
    probe.expect_silence(0.3)
    init = handshake.Pairing(os.urandom(32))
    xx1 = init.start()
    probe.send(xx1)
    xx2 = probe.recv()
    assert len(xx2) <= len(xx1)
    # Its third message with an unenrolled key: no session, no answer.
    _, _, xx3 = init.finish(xx2)
    probe.send(xx3)
    probe.expect_silence()
    # An enrolled device may pair over XX (it does not need the proxy key); its
    # first request rides in the third message.
    wire = dev.wire()
    msg = wire.reading([3])
    pairing = handshake.Pairing(wire.private_key)
    wire.send(pairing.start(coap.encode(msg)))
    session, _, xx3 = pairing.finish(wire.recv())
    assert pairing.remote_static() == wire.proxy_public_key
    wire.send(xx3)
    wire.session = session
    answer = wire.open(wire.recv())
    assert answer.code == coap.CHANGED and answer.mid == msg.mid
    assert proxy.server.stats()["dropped"]


def test_revocation_mid_session_is_silence_at_once(device_factory, proxy_factory):
    dev = device_factory()
    proxy = proxy_factory()
    wire = dev.wire()
    assert wire.exchange(wire.reading([1])).code == coap.CHANGED
    # The operator revokes from another process (another registry connection).
    with Registry(proxy.settings.registry_path) as operator:
        assert operator.revoke(dev.name)
    wire.send(wire.seal(wire.reading([2])))
    wire.expect_silence()
    fresh = dev.wire()
    fresh.send(fresh.ik_datagram(fresh.reading([3]))[0])
    fresh.expect_silence()
    assert proxy.server.stats()["sessions"] == 0


def test_roaming_follows_authenticated_frames_only(device_factory, proxy_factory):
    dev = device_factory()
    proxy_factory()
    wire = dev.wire()
    wire.exchange(wire.reading([1]))
    old_frame = wire.seal(wire.reading([2]))
    wire.new_socket()  # the device's address changes
    assert wire.exchange(wire.reading([3])).code == coap.CHANGED
    # An older (not yet seen) frame from elsewhere is accepted but does not move the answers there.
    other = WireDevice(wire.private_key, wire.proxy_public_key, wire.proxy_addr)
    other.send(old_frame)
    other.expect_silence()
    wire.recv()  # the answer to that frame went to the device's current address
    assert wire.exchange(wire.reading([4])).code == coap.CHANGED


def _body(table: int, obj: dict) -> bytes:
    return bytes(cbor.dumps(keys.compress(obj, table)))


def test_device_reaches_only_its_rooms_and_event_types(
    device_factory, proxy_factory, synapse, matrix_user, fault_injector
):
    dev = device_factory()
    proxy = proxy_factory(homeserver_url=fault_injector.url)
    wire = dev.wire()
    assert wire.exchange(wire.reading([1])).code == coap.CHANGED  # through the injector
    status, body = matrix_call(
        synapse.url, "POST", "/_matrix/client/v3/createRoom", matrix_user.access_token, {}
    )
    assert status == 200
    other_room = body["room_id"]
    t = keys.TABLE_LOWBW_V1
    forwarded = fault_injector.upstream_bytes
    forbidden = [
        (
            coap.PUT,
            ["!", other_room, "m.room.message", "t1"],
            _body(t, {"msgtype": "m.text", "body": "x"}),
            [],
        ),
        (coap.GET, ["-", other_room], b"", []),
        (coap.PUT, ["!", dev.room_id, "m.room.topic.other", "t2"], _body(t, {"body": "x"}), []),
        (coap.PUT, ["=", dev.room_id, "m.room.name", ""], _body(t, {"name": "x"}), []),
        (coap.POST, ["cr"], _body(t, {}), []),
        (coap.POST, ["li"], _body(t, {}), []),
        (coap.POST, ["ja", other_room], _body(t, {}), []),
        (coap.GET, ["~"], b"", ["user_id=@someone:lowbw.test"]),
        (coap.GET, ["_matrix", "client", "v3", "admin", "whois", "@x:y"], b"", []),
        (coap.DELETE, ["de", "DEVICE"], b"", []),
    ]
    for code, path, payload, query in forbidden:
        msg = wire.request(code, path, payload, query=query)
        if payload:
            msg.add_option(coap.CONTENT_FORMAT, coap.uint_encode(60))
        answer = wire.exchange(msg)
        assert answer.code == coap.FORBIDDEN, (path, coap.code_str(answer.code))
        err = keys.expand(cbor.loads(answer.payload), t)
        assert err["errcode"] == "M_FORBIDDEN"
    assert fault_injector.upstream_bytes == forwarded  # nothing reached the homeserver
    assert room_events(synapse.url, matrix_user.access_token, other_room) == []
    # An unknown route id is 4.04, also without the homeserver.
    assert wire.exchange(wire.request(coap.GET, ["?"])).code in (coap.NOT_FOUND, coap.FORBIDDEN)
    assert fault_injector.upstream_bytes == forwarded
    assert proxy.server.stats()["sessions"] == 1
