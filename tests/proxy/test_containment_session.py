"""A device can only spend its own share (issue 11), in-process proxy, real Synapse, real UDP.

Observe registrations, requests in flight, long polls, block-wise uploads,
closing a session, and the measurement time of readings that state it.
Each test speaks raw CoAP inside Noise frames (``WireDevice``) to a real
proxy (``proxy_factory``) in front of the session's Synapse.
"""

from __future__ import annotations

import time
from typing import Any

from lowbw.proxy.limits import Limits
from lowbw.wire import cbor, coap, keys, routes

from .conftest import room_events
from .test_server_client_api import fetch

TABLE = keys.TABLE_LOWBW_V1
SIZE1 = 60
BLOCK1 = 27


def observe(wire: Any, token: bytes) -> Any:
    msg = wire.request(coap.GET, [routes.ROUTE_COMMANDS], token=token)
    coap.set_observe(msg, 0)
    return wire.exchange(msg)


def queue_command(proxy: Any, name: str, text: str) -> None:
    def queue() -> None:
        proxy.server.registry.enqueue_command(name, "$ev%d" % time.monotonic_ns(), "@op:lowbw.test", text)
        proxy.server.table.refresh_commands(name)

    proxy.run(queue)


def close_by_revocation(proxy: Any, name: str) -> None:
    """Revoke ``name`` and let the running proxy's table close its session (as a registry poll does)."""

    def revoke() -> None:
        proxy.server.registry.revoke(name)
        proxy.server.table.reload()

    proxy.run(revoke)


def incoming(proxy: Any) -> int:
    """Requests the proxy is working on (aiocoap's token manager), all sessions."""
    return int(
        proxy.run(lambda: len(proxy.server.transport.message_manager.token_manager.incoming_requests or {}))
    )


def send_path(room: str, txn: str) -> list[str]:
    return ["_matrix", "client", "v3", "rooms", room, "send", "m.room.message", txn]


def block1_request(wire: Any, path: list[str], num: int, more: bool, szx: int, payload: bytes) -> Any:
    msg = wire.request(coap.PUT, path, payload)
    coap.set_block1(msg, num, more, szx)
    return msg


# -- 1. Observe -------------------------------------------------------------------------


def test_observations_are_capped_per_session_newest_win(device_factory, proxy_factory):
    dev = device_factory()
    proxy = proxy_factory(limits=Limits(observations_per_session=3))
    wire = dev.wire()
    for i in range(40):
        first = observe(wire, b"t%02d" % i)
        assert first.code == coap.VALID and coap.observe(first) == 0
    site = proxy.server.site
    assert proxy.run(lambda: site.observations(dev.name)) == 3
    # The replaced registrations are gone from aiocoap too (no task, no pipe left behind).
    deadline = time.monotonic() + 5
    while incoming(proxy) > 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert incoming(proxy) == 3

    queue_command(proxy, dev.name, "light on")
    tokens = set()
    for _ in range(3):
        note = wire.open(wire.recv(timeout=10))
        assert note.mtype == coap.CON and note.code == coap.CONTENT
        wire.send(wire.seal(coap.make_ack(note)))
        tokens.add(bytes(note.token))
        assert cbor.loads(note.payload)[2] == "light on"
    assert tokens == {b"t37", b"t38", b"t39"}
    wire.expect_silence(1.0)


def test_observations_end_with_their_session(device_factory, proxy_factory):
    dev = device_factory()
    proxy = proxy_factory()
    wire = dev.wire()
    for i in range(2):
        assert observe(wire, b"o%d" % i).code == coap.VALID
    site = proxy.server.site
    assert proxy.run(lambda: site.observations(dev.name)) == 2
    close_by_revocation(proxy, dev.name)
    deadline = time.monotonic() + 5
    while (incoming(proxy) or proxy.run(lambda: site.observations(dev.name))) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy.run(lambda: site.observations(dev.name)) == 0
    assert incoming(proxy) == 0
    proxy.run(lambda: proxy.server.table.refresh_commands(dev.name))
    wire.expect_silence(1.0)


# -- 2. requests in flight, long polls -------------------------------------------------------


def test_requests_beyond_the_cap_are_503_and_long_polls_are_capped(device_factory, proxy_factory):
    dev = device_factory()
    proxy = proxy_factory(limits=Limits(requests_in_flight=3, long_poll_max=3.0))
    wire = dev.wire()
    assert wire.exchange(wire.reading([1])).code == coap.CHANGED  # session up
    first, body, _ = fetch(wire, lambda: wire.request(coap.GET, ["~"], query=["timeout=0"]))
    assert first.code == coap.CONTENT
    since = keys.expand(cbor.loads(body, max_items=100_000, max_depth=32), TABLE)["next_batch"]
    sent = []
    t0 = time.monotonic()
    for i in range(6):
        # Ten minutes asked for: the proxy holds at most long_poll_max.
        msg = wire.request(coap.GET, ["~"], query=["since=" + since, "timeout=600000"], token=b"L%d" % i)
        sent.append(msg.mid)
        wire.send(wire.seal(msg))
    answers: dict[int, Any] = {}
    while len(answers) < 6:
        ans = wire.open(wire.recv(timeout=20))
        if ans.mtype == coap.CON:
            wire.send(wire.seal(coap.make_ack(ans)))
        if ans.code != coap.EMPTY and ans.mid in sent:
            answers[ans.mid] = ans
    elapsed = time.monotonic() - t0
    codes = sorted(a.code for a in answers.values())
    assert codes == [coap.CONTENT] * 3 + [coap.SERVICE_UNAVAILABLE] * 3
    busy = [a for a in answers.values() if a.code == coap.SERVICE_UNAVAILABLE]
    assert all(coap.get_uint(a, coap.MAX_AGE) for a in busy)
    body = keys.expand(cbor.loads(busy[0].payload), TABLE)
    assert body["errcode"] == "M_LIMIT_EXCEEDED"
    # The held ones came back after the capped wait (3 s), not ten minutes.
    assert elapsed < 15
    assert proxy.run(lambda: proxy.server.site.in_flight(proxy.server.table.by_device[dev.name])) == 0


# -- 3. block-wise uploads -----------------------------------------------------------------


def test_first_block_is_checked_for_permission(device_factory, proxy_factory):
    dev = device_factory()
    other = device_factory()
    proxy_factory()
    wire = dev.wire()
    # Another device's room: refused on block 0, not after reassembly.
    answer = wire.exchange(block1_request(wire, send_path(other.room_id, "p1"), 0, True, 4, b"x" * 256))
    assert answer.code == coap.FORBIDDEN
    assert keys.expand(cbor.loads(answer.payload), TABLE)["errcode"] == "M_FORBIDDEN"
    # GET on the reading route is not a method it takes.
    msg = wire.request(coap.GET, [routes.ROUTE_READING], b"\x00" * 64)
    coap.set_block1(msg, 0, True, 2)
    assert wire.exchange(msg).code == coap.METHOD_NOT_ALLOWED


def test_body_and_block_sizes_are_bounded(device_factory, proxy_factory):
    dev = device_factory()
    proxy = proxy_factory(limits=Limits(sensor_body_max=1000))
    wire = dev.wire()
    path = send_path(dev.room_id, "s1")
    # Size1 announces more than a sensor may send: 4.13 at once, with the maximum.
    msg = block1_request(wire, path, 0, True, 4, b"x" * 256)
    msg.add_option(SIZE1, coap.uint_encode(6_000_000))
    answer = wire.exchange(msg)
    assert answer.code == coap.REQUEST_ENTITY_TOO_LARGE
    assert coap.get_uint(answer, SIZE1) == 1000
    # Without Size1: refused once the bytes received pass the maximum.
    codes = [wire.exchange(block1_request(wire, path, n, True, 4, b"y" * 256)).code for n in range(4)]
    assert codes == [coap.CONTINUE] * 3 + [coap.REQUEST_ENTITY_TOO_LARGE]
    # A block larger than the session's block size (BERT, 60 KB): 4.13 naming the size to use.
    szx = proxy.run(lambda: proxy.server.table.by_device[dev.name].maximum_block_size_exp)
    bert = wire.request(coap.PUT, path, b"z" * 60 * 1024)
    bert.set_option(BLOCK1, b"\x0f")  # block 0, more, SZX 7 (BERT): 60 KB in one "block"
    answer = wire.exchange(bert)
    assert answer.code == coap.REQUEST_ENTITY_TOO_LARGE
    assert coap.block1(answer)[2] == szx
    # An unfragmented body beyond the maximum.
    big = wire.request(coap.PUT, path, b"\xa0" + b"\x00" * 1500)
    assert wire.exchange(big).code == coap.REQUEST_ENTITY_TOO_LARGE
    assert proxy.run(lambda: proxy.server.site._block1.total()) == 0


def test_unfinished_uploads_are_capped_and_expire(device_factory, proxy_factory, matrix_user, synapse):
    dev = device_factory()
    proxy = proxy_factory(limits=Limits(blockwise_uploads_per_session=2, blockwise_idle=1.5))
    wire = dev.wire()
    body = bytes(cbor.dumps(keys.compress({"msgtype": "m.text", "body": "b" * 100}, TABLE)))
    assert len(body) > 64
    # Three uploads begun; the first is dropped for the third.
    for txn in ("u0", "u1", "u2"):
        answer = wire.exchange(block1_request(wire, send_path(dev.room_id, txn), 0, True, 2, body[:64]))
        assert answer.code == coap.CONTINUE
    site = proxy.server.site
    addr = proxy.run(lambda: proxy.server.table.by_device[dev.name])
    assert proxy.run(lambda: site._block1.pending(addr)) == 2
    answer = wire.exchange(block1_request(wire, send_path(dev.room_id, "u0"), 1, False, 2, body[64:]))
    assert answer.code == coap.REQUEST_ENTITY_INCOMPLETE
    # The newest completes and lands as one event.
    answer = wire.exchange(block1_request(wire, send_path(dev.room_id, "u2"), 1, False, 2, body[64:]))
    assert answer.code == coap.CHANGED
    events = room_events(synapse.url, matrix_user.access_token, dev.room_id)
    assert [e["content"]["body"] for e in events] == ["b" * 100]
    # The other unfinished one is dropped after blockwise_idle without a block.
    time.sleep(2.5)
    assert proxy.run(lambda: site._block1.pending(addr)) == 0
    answer = wire.exchange(block1_request(wire, send_path(dev.room_id, "u1"), 1, False, 2, body[64:]))
    assert answer.code == coap.REQUEST_ENTITY_INCOMPLETE


def test_uploads_end_with_their_session(device_factory, proxy_factory):
    dev = device_factory()
    proxy = proxy_factory()
    wire = dev.wire()
    answer = wire.exchange(block1_request(wire, send_path(dev.room_id, "c0"), 0, True, 2, b"\xa0" * 64))
    assert answer.code == coap.CONTINUE
    site = proxy.server.site
    assert proxy.run(lambda: site._block1.total()) == 1
    close_by_revocation(proxy, dev.name)
    assert proxy.run(lambda: site._block1.total()) == 0


# -- 7. timestamps ---------------------------------------------------------------------------


def test_an_absolute_measurement_time_is_kept_exactly(device_factory, proxy_factory, matrix_user, synapse):
    dev = device_factory()
    proxy_factory(link_bps=100.0)  # a slow radio: the airtime correction is seconds here
    wire = dev.wire(timeout=15.0)
    stated = int(time.time()) - 3600
    assert wire.exchange(wire.reading([215], t=stated)).code == coap.CHANGED
    sent_ms = int(time.time() * 1000)
    assert wire.exchange(wire.reading([216])).code == coap.CHANGED
    events = room_events(synapse.url, matrix_user.access_token, dev.room_id)
    assert len(events) == 2
    # A stated time is the time of measurement, exactly.
    assert events[0]["origin_server_ts"] == stated * 1000
    assert events[0]["content"]["org.lowbw.reading"]["measured_at"] == stated * 1000
    # 'now' keeps the airtime correction: the datagram's airtime at 100 bit/s
    # (seconds) before it arrived, so before it was even sent on loopback.
    assert events[1]["origin_server_ts"] < sent_ms
