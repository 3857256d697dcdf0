"""Homeserver down or slow, proxy restarted: no acknowledgement for an unstored
event, and every reading lands exactly once in the end.

``fault_injector`` is a TCP relay between the proxy and Synapse that can refuse
connections ("down") or hold answers back ("slow": the request still reaches
Synapse, which stores the event, but the proxy gives up first).
"""

from __future__ import annotations

import signal
import sqlite3
import time

from lowbw.proxy import config as proxy_config
from lowbw.wire import coap

from .conftest import room_events
from .proxyproc import ProxyProcess


def max_age(msg: coap.Message) -> int | None:
    return coap.max_age(msg)


def test_homeserver_down_then_back(device_factory, proxy_factory, synapse, matrix_user, fault_injector):
    dev = device_factory()
    proxy_factory(homeserver_url=fault_injector.url, retry_after=7)
    wire = dev.wire()
    assert wire.exchange(wire.reading([10])).code == coap.CHANGED
    fault_injector.set("down")
    msg = wire.reading([11])
    answer = wire.exchange(msg)
    assert answer.code == coap.SERVICE_UNAVAILABLE and answer.mtype == coap.ACK
    assert max_age(answer) == 7
    # The device retries the same message (same MID) while the homeserver is still
    # down: the 5.03 was not cached, the proxy tries again and says 5.03 again.
    assert wire.exchange(msg).code == coap.SERVICE_UNAVAILABLE
    fault_injector.set("pass")
    assert wire.exchange(msg).code == coap.CHANGED
    assert wire.exchange(msg).code == coap.CHANGED  # now cached: still one event
    bodies = [e["content"]["body"] for e in room_events(synapse.url, matrix_user.access_token, dev.room_id)]
    assert bodies == ["temperature 1.0 °C", "temperature 1.1 °C"]


def test_homeserver_slow_then_retry_lands_once(
    device_factory, proxy_factory, synapse, matrix_user, fault_injector
):
    dev = device_factory()
    proxy_factory(homeserver_url=fault_injector.url, reading_timeout=0.5, retry_after=3)
    wire = dev.wire()
    fault_injector.delay = 1.5
    fault_injector.set("slow")
    msg = wire.reading([12])
    answer = wire.exchange(msg)
    assert answer.code == coap.GATEWAY_TIMEOUT and max_age(answer) == 3
    # Synapse did get the request (only its answer was late) ...
    fault_injector.set("pass")
    assert wire.exchange(msg).code == coap.CHANGED
    # ... and the retry, with the same transaction ID, made no second event.
    events = room_events(synapse.url, matrix_user.access_token, dev.room_id, dev.user_id)
    assert [e["content"]["body"] for e in events] == ["temperature 1.2 °C"]


def test_graceful_restart_keeps_sessions(device_factory, proxy_factory, synapse, matrix_user):
    dev = device_factory()
    proxy = proxy_factory()
    wire = dev.wire()
    assert wire.exchange(wire.reading([1])).code == coap.CHANGED
    second = wire.reading([2])
    assert wire.exchange(second).code == coap.CHANGED
    assert proxy.stop() == 1  # one session saved
    restarted = proxy_factory()
    assert restarted.server.restored == 1
    # Same session, no handshake: a sealed transport frame is answered at once.
    assert wire.exchange(wire.reading([3])).code == coap.CHANGED
    # A retry of a message from before the restart (its ACK was lost) makes no duplicate.
    assert wire.exchange(second).code == coap.CHANGED
    assert wire.sent[-1][0] & 0x80 == 0  # still transport frames
    events = room_events(synapse.url, matrix_user.access_token, dev.room_id, dev.user_id)
    assert [e["content"]["body"] for e in events] == [
        "temperature 0.1 °C",
        "temperature 0.2 °C",
        "temperature 0.3 °C",
    ]


def test_crash_loses_sessions_and_the_retry_lands_once(device_factory, proxy_factory, synapse, matrix_user):
    dev = device_factory()
    proxy = proxy_factory()
    wire = dev.wire()
    assert wire.exchange(wire.reading([1])).code == coap.CHANGED
    in_flight = wire.reading([2])
    wire.send(wire.seal(in_flight))
    assert wire.open(wire.recv()).code == coap.CHANGED  # stored, but say the ACK got lost
    proxy.stop(save_sessions=False)
    proxy_factory()
    wire.send(wire.seal(in_flight))  # the old session is gone: silence
    wire.expect_silence()
    wire.session = None  # the device re-handshakes with the same message
    assert wire.exchange(in_flight).code == coap.CHANGED
    events = room_events(synapse.url, matrix_user.access_token, dev.room_id, dev.user_id)
    assert [e["content"]["body"] for e in events] == ["temperature 0.1 °C", "temperature 0.2 °C"]


def test_killed_while_its_writes_wait_and_the_retry_lands_once(
    device_factory, proxy_config_path, synapse, matrix_user
):
    """A real ``lowbw proxy run`` killed (SIGKILL) after answering a reading whose
    exactly-once row was still waiting in memory (lowbw.proxy.writebehind): the
    disk is held by another connection's write transaction, a real SQLite lock,
    so the writer thread cannot write. After the restart the device sends the
    same message again; the homeserver's transaction ID makes it one event."""
    dev = device_factory()
    registry_path = str(proxy_config.load(proxy_config_path).proxy.registry)
    proxy = ProxyProcess(proxy_config_path)
    try:
        wire = dev.wire()
        assert wire.exchange(wire.reading([1])).code == coap.CHANGED
        time.sleep(0.5)  # that one is written
        holder = sqlite3.connect(registry_path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # the writer thread now waits for the lock
        in_flight = wire.reading([2])
        assert wire.exchange(in_flight).code == coap.CHANGED  # answered from memory
        time.sleep(0.3)
        rows = holder.execute("SELECT txn_id FROM sent_events WHERE device = ?", (dev.name,)).fetchall()
        assert len(rows) == 1  # the second row never reached the disk
        proxy.proc.send_signal(signal.SIGKILL)
        proxy.proc.wait(10)
        holder.execute("ROLLBACK")
        holder.close()
    finally:
        proxy.stop()
    proxy = ProxyProcess(proxy_config_path)
    try:
        wire.session = None  # a crash keeps no session: the device handshakes with the same message
        assert wire.exchange(in_flight).code == coap.CHANGED
        assert wire.exchange(wire.reading([3])).code == coap.CHANGED
    finally:
        proxy.stop()
    events = room_events(synapse.url, matrix_user.access_token, dev.room_id, dev.user_id)
    assert [e["content"]["body"] for e in events] == [
        "temperature 0.1 °C",
        "temperature 0.2 °C",
        "temperature 0.3 °C",
    ]
