"""Sensor readings through the real proxy into the real Synapse, read back as a stock client does.

Every test here runs a real ``ProxyServer`` (UDP on loopback) in front of the
session's Synapse and a device built from ``lowbw.wire``; the room is read
with ``/messages`` as the ordinary user who was invited at enrollment.
"""

from __future__ import annotations

import time

from lowbw.proxy.registry import Registry
from lowbw.wire import coap, reading, routes

from .conftest import ProxyThread, enroll_device, proxy_settings, room_events


def now_ms() -> int:
    return int(time.time() * 1000)


def test_reading_lands_once_with_body_fields_and_time(device_factory, proxy_factory, synapse, matrix_user):
    dev = device_factory()
    proxy_factory()
    wire = dev.wire()
    msg = wire.reading([215])
    before = now_ms()
    answer = wire.exchange(msg)
    after = now_ms()
    # One piggybacked answer: the reading's ACK carries the 2.04.
    assert answer.mtype == coap.ACK and answer.code == coap.CHANGED and answer.mid == msg.mid

    # The device did not hear the ACK and sends the same message again (same
    # MID, new frame): answered from the deduplication cache, no second event.
    wire.send(wire.seal(msg))
    again = wire.open(wire.recv())
    assert again.code == coap.CHANGED and again.mid == msg.mid

    events = room_events(synapse.url, matrix_user.access_token, dev.room_id, dev.user_id)
    assert len(events) == 1
    content = events[0]["content"]
    assert content["msgtype"] == "m.notice"
    assert content["body"] == "temperature 21.5 °C"
    fields = content["org.lowbw.reading"]
    assert fields["device"] == dev.name and fields["slot"] == 0 and fields["name"] == "temperature"
    assert fields["values"] == [{"name": "temperature", "value": "21.5", "unit": "°C"}]
    assert before <= fields["measured_at"] <= after
    assert events[0]["origin_server_ts"] == fields["measured_at"]
    assert fields["seq"] == msg.mid  # first message: the full number is the MID


def test_replayed_frame_is_silent_and_makes_no_event(device_factory, proxy_factory, synapse, matrix_user):
    dev = device_factory()
    proxy_factory()
    wire = dev.wire()
    wire.exchange(wire.reading([100]))
    frame = wire.seal(wire.reading([101]))
    wire.send(frame)
    assert wire.open(wire.recv()).code == coap.CHANGED
    wire.send(frame)  # an attacker (or the radio) repeats the exact datagram
    wire.expect_silence()
    events = room_events(synapse.url, matrix_user.access_token, dev.room_id, dev.user_id)
    assert [e["content"]["body"] for e in events] == ["temperature 10.0 °C", "temperature 10.1 °C"]


def test_same_message_in_a_new_session_is_not_sent_twice(device_factory, proxy_factory, synapse, matrix_user):
    """A reading acknowledged, then the device reboots, re-handshakes (IK) and sends
    the same message number again: the proxy answers 2.04 and makes no second event."""
    dev = device_factory()
    proxy_factory()
    wire = dev.wire()
    wire.next_mid = 0xFFF0
    first = wire.reading([222])
    assert wire.exchange(first).code == coap.CHANGED
    rebooted = dev.wire()
    answer = rebooted.exchange(rebooted.reading([222], mid=first.mid))
    assert answer.code == coap.CHANGED
    # The 16-bit MID wraps; the message number keeps counting (0xFFF0, then 0x10003).
    rebooted.next_mid = 3
    assert rebooted.exchange(rebooted.reading([223])).code == coap.CHANGED
    events = room_events(synapse.url, matrix_user.access_token, dev.room_id, dev.user_id)
    assert [e["content"]["org.lowbw.reading"]["seq"] for e in events] == [0xFFF0, 0x10003]


def test_multi_field_batch_and_measurement_times(device_factory, proxy_factory, synapse, matrix_user):
    dev = device_factory()
    proxy_factory()
    wire = dev.wire()
    answer = wire.exchange(wire.reading([215, 40], slot=1))
    assert answer.code == coap.CHANGED
    sent = now_ms()
    batch = wire.request(
        coap.POST,
        [routes.ROUTE_READING],
        reading.encode_readings([(0, [-5], -60), (0, [None], -30), (1, [21.25, 41], 0)]),
    )
    assert wire.exchange(batch).code == coap.CHANGED
    events = room_events(synapse.url, matrix_user.access_token, dev.room_id, dev.user_id)
    assert [e["content"]["body"] for e in events] == [
        "climate: temperature 21.5 °C, humidity 40 %",
        "temperature -0.5 °C",
        "temperature n/a",
        "climate: temperature 21.25 °C, humidity 41 %",
    ]
    batch_fields = [e["content"]["org.lowbw.reading"] for e in events[1:]]
    assert [f["index"] for f in batch_fields] == [0, 1, 2]
    assert batch_fields[1]["values"][0]["value"] is None
    ages = [sent - f["measured_at"] for f in batch_fields]
    assert 59_000 <= ages[0] <= 61_500 and 29_000 <= ages[1] <= 31_500 and -1_500 <= ages[2] <= 1_500
    assert [e["origin_server_ts"] for e in events[1:]] == [f["measured_at"] for f in batch_fields]


def test_reading_that_does_not_fit_the_schema_is_400_and_not_sent(
    device_factory, proxy_factory, synapse, matrix_user
):
    dev = device_factory()
    proxy_factory()
    wire = dev.wire()
    assert wire.exchange(wire.reading([1], slot=7)).code == coap.BAD_REQUEST
    assert wire.exchange(wire.reading([1, 2], slot=0)).code == coap.BAD_REQUEST
    bad_cbor = wire.request(coap.POST, [routes.ROUTE_READING], b"\xff\x00")
    assert wire.exchange(bad_cbor).code == coap.BAD_REQUEST
    assert room_events(synapse.url, matrix_user.access_token, dev.room_id, dev.user_id) == []


def test_time_route(device_factory, proxy_factory):
    from lowbw.wire import cbor

    dev = device_factory()
    proxy_factory()
    wire = dev.wire()
    answer = wire.exchange(wire.request(coap.GET, [routes.ROUTE_TIME]))
    assert answer.code == coap.CONTENT
    assert abs(cbor.loads(answer.payload) - now_ms()) < 5_000


def test_token_mode_reading(token_proxy_config_path, matrix_user, synapse):
    dev = enroll_device(token_proxy_config_path, matrix_user, synapse)
    with Registry(proxy_settings(token_proxy_config_path).registry_path) as registry:
        rec = registry.device(dev.name)
        assert rec is not None and rec.access_token
    proxy = ProxyThread(proxy_settings(token_proxy_config_path))
    try:
        wire = dev.wire()
        before = now_ms()
        assert wire.exchange(wire.reading([199])).code == coap.CHANGED
        after = now_ms()
    finally:
        proxy.stop()
    events = room_events(synapse.url, matrix_user.access_token, dev.room_id, dev.user_id)
    assert len(events) == 1
    assert events[0]["content"]["body"] == "temperature 19.9 °C"
    # Token mode cannot stamp the event; the measured time is in the content.
    assert before <= events[0]["content"]["org.lowbw.reading"]["measured_at"] <= after


def test_dedup_memory_is_bounded_per_session_and_old_retries_stay_single(
    device_factory, proxy_factory, synapse, matrix_user
):
    dev = device_factory()
    proxy = proxy_factory()
    wire = dev.wire()
    first = wire.reading([1])
    assert wire.exchange(first).code == coap.CHANGED
    for v in range(2, 13):
        assert wire.exchange(wire.reading([v])).code == coap.CHANGED

    def dedup_size() -> int:
        mman = proxy.server.transport.message_manager
        return mman.dedup_size()

    assert proxy.run(dedup_size) <= 8
    # A very late retry of the first message is no longer in the cache: the proxy
    # processes it again, and the sent-events table still keeps it single.
    assert wire.exchange(first).code == coap.CHANGED
    events = room_events(synapse.url, matrix_user.access_token, dev.room_id, dev.user_id)
    assert len(events) == 12
