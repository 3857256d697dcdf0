"""The warm-reading fast path (``lowbw.proxy.transport``, ``ProxySite.takes_fast``).

A plain confirmable single-block POST ``v`` on an established session skips
aiocoap's request machinery; everything it guarantees must still hold:
deduplication by Message ID with the stored answer, one event per reading,
silence for a revoked device (also while its reading is in the works), the
per-session limits, and block-wise or Observe requests still go through aiocoap.
In-process proxy, real Synapse (behind ``fault_injector`` where the homeserver
must be slow), real UDP.
"""

from __future__ import annotations

import time
from typing import Any

from lowbw.proxy.limits import Limits
from lowbw.wire import coap, routes

from .conftest import room_events


def count_paths(proxy: Any) -> dict[str, int]:
    """Count the requests aiocoap dispatches and the readings the fast path takes."""
    counts = {"aiocoap": 0, "fast": 0}

    def install() -> None:
        transport = proxy.server.transport
        mman = transport.message_manager
        dispatch = mman.dispatch_message
        fast = transport._fast_request

        def counted_dispatch(msg: Any) -> Any:
            counts["aiocoap"] += 1
            return dispatch(msg)

        def counted_fast(*args: Any) -> Any:
            counts["fast"] += 1
            return fast(*args)

        mman.dispatch_message = counted_dispatch
        transport._fast_request = counted_fast

    proxy.run(install)
    return counts


def fast_in_flight(proxy: Any) -> int:
    return int(proxy.run(lambda: proxy.server.transport.fast_in_flight()))


def test_retransmitted_warm_reading_gets_the_stored_answer_and_posts_once(
    device_factory, proxy_factory, synapse, matrix_user
):
    dev = device_factory()
    proxy = proxy_factory()
    wire = dev.wire()
    assert wire.exchange(wire.reading([200])).code == coap.CHANGED  # the handshake (0-RTT: aiocoap)
    counts = count_paths(proxy)
    msg = wire.reading([215])
    first = wire.exchange(msg)
    assert first.mtype == coap.ACK and first.code == coap.CHANGED and first.mid == msg.mid
    # The ACK was lost: the same MID again in a new frame.
    wire.send(wire.seal(msg))
    again = wire.open(wire.recv())
    assert bytes(coap.encode(again)) == bytes(coap.encode(first))
    assert counts == {"aiocoap": 0, "fast": 2}
    events = room_events(synapse.url, matrix_user.access_token, dev.room_id, dev.user_id)
    assert [e["content"]["org.lowbw.reading"]["values"][0]["value"] for e in events] == ["20.0", "21.5"]


def test_retransmission_while_the_first_copy_is_in_the_works_is_silent(
    device_factory, proxy_factory, fault_injector, synapse, matrix_user
):
    dev = device_factory()
    fault_injector.delay = 1.5
    proxy_factory(homeserver_url=fault_injector.url)
    wire = dev.wire()
    wire.exchange(wire.reading([200]))
    fault_injector.set("slow")
    msg = wire.reading([216])
    wire.send(wire.seal(msg))
    time.sleep(0.3)
    wire.send(wire.seal(msg))  # still in the works: no second rendering, no answer for it
    answer = wire.open(wire.recv(timeout=5))
    assert answer.code == coap.CHANGED and answer.mid == msg.mid
    wire.expect_silence(0.8)
    events = room_events(synapse.url, matrix_user.access_token, dev.room_id, dev.user_id)
    assert len(events) == 2


def test_revoked_device_gets_silence_on_the_fast_path(
    device_factory, proxy_factory, fault_injector, synapse, matrix_user
):
    dev = device_factory()
    fault_injector.delay = 2.0
    proxy = proxy_factory(homeserver_url=fault_injector.url)
    wire = dev.wire()
    wire.exchange(wire.reading([200]))
    # Revoked while its reading waits for the homeserver: the reading ends unanswered.
    fault_injector.set("slow")
    wire.send(wire.seal(wire.reading([201])))
    deadline = time.monotonic() + 3
    while fast_in_flight(proxy) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fast_in_flight(proxy) == 1

    def revoke() -> None:
        proxy.server.registry.revoke(dev.name)
        proxy.server.table.reload()

    proxy.run(revoke)
    assert fast_in_flight(proxy) == 0
    wire.expect_silence(2.5)
    # And the next reading on the old session: not even looked at.
    fault_injector.set("pass")
    wire.send(wire.seal(wire.reading([202])))
    wire.expect_silence(0.8)
    assert proxy.server.site.in_flight_total() == 0


def test_requests_in_flight_limit_applies_to_fast_readings(
    device_factory, proxy_factory, fault_injector, synapse, matrix_user
):
    dev = device_factory()
    fault_injector.delay = 1.5
    proxy = proxy_factory(homeserver_url=fault_injector.url, limits=Limits(requests_in_flight=1))
    wire = dev.wire()
    wire.exchange(wire.reading([200]))
    counts = count_paths(proxy)
    fault_injector.set("slow")
    first, second = wire.reading([210]), wire.reading([211])
    wire.send(wire.seal(first))
    time.sleep(0.3)
    wire.send(wire.seal(second))
    busy = wire.open(wire.recv(timeout=1.0))
    assert busy.mid == second.mid and busy.code == coap.SERVICE_UNAVAILABLE
    done = wire.open(wire.recv(timeout=5))
    assert done.mid == first.mid and done.code == coap.CHANGED
    assert counts == {"aiocoap": 0, "fast": 2}
    # The 5.03 was not stored: the device's retry of the same MID is processed again.
    fault_injector.set("pass")
    assert wire.exchange(second).code == coap.CHANGED
    events = room_events(synapse.url, matrix_user.access_token, dev.room_id, dev.user_id)
    assert len(events) == 3


def test_blockwise_and_observe_requests_still_go_through_aiocoap(device_factory, proxy_factory):
    dev = device_factory()
    proxy = proxy_factory()
    wire = dev.wire()
    wire.exchange(wire.reading([200]))
    counts = count_paths(proxy)
    # A reading sent as one Block1 block: aiocoap's block-wise path.
    msg = wire.reading([230])
    coap.set_block1(msg, 0, False, 2)
    assert wire.exchange(msg).code == coap.CHANGED
    assert counts == {"aiocoap": 1, "fast": 0}
    # An Observe registration on the commands.
    obs = wire.request(coap.GET, [routes.ROUTE_COMMANDS], token=b"ob")
    coap.set_observe(obs, 0)
    assert wire.exchange(obs).code == coap.VALID
    assert counts == {"aiocoap": 2, "fast": 0}
    # A plain reading again: fast.
    assert wire.exchange(wire.reading([231])).code == coap.CHANGED
    assert counts == {"aiocoap": 2, "fast": 1}


def test_fast_paths_off_sends_everything_through_aiocoap(device_factory, proxy_factory):
    dev = device_factory()
    proxy = proxy_factory(fast_paths=False)
    wire = dev.wire()
    wire.exchange(wire.reading([200]))
    counts = count_paths(proxy)
    assert wire.exchange(wire.reading([201])).code == coap.CHANGED
    assert counts == {"aiocoap": 1, "fast": 0}
