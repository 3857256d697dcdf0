"""Several proxies on one fleet (lowbw.proxy.cluster) with the registry on a real PostgreSQL.

Two in-process nodes on their own UDP ports in front of the session's Synapse:
a frame that reaches the wrong node is forwarded to the owner, which answers
the device; a handshake on another node closes the first node's session (one
session per device); a command queued anywhere is counted on the node that
holds the session; a node that is gone makes the device handshake again on
another node and its reading lands once. The end-to-end version with
``lowbw proxy run`` processes and SIGKILL is tests/scale_out/test_scale_out.py.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lowbw.proxy import cluster as cluster_mod
from lowbw.proxy.config import ClusterSection
from lowbw.proxy.registry import Registry
from lowbw.wire import coap
from lowbw.wire.errors import DecodeError

from .conftest import (
    SERVER_NAME,
    ProxyThread,
    _free_udp_port,
    enroll_device,
    proxy_settings,
    room_events,
)


def wait_for(pred: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.02)
    return None


@pytest.fixture
def pg_config_path(synapse, appservice, postgres_url, tmp_path_factory) -> str:  # type: ignore[no-untyped-def]
    from lowbw.proxy.config import write_default

    assert appservice.url is not None
    result = write_default(
        tmp_path_factory.mktemp("proxy") / "proxy",
        synapse.url,
        server_name=SERVER_NAME,
        port=_free_udp_port(),
        link_bps=1_000_000,
        mode="appservice",
        appservice_listen=appservice.url.removeprefix("http://"),
        user_prefix="lowbw_",
        appservice_id=appservice.id,
        sender_localpart=appservice.sender_localpart,
        as_token=appservice.as_token,
        hs_token=appservice.hs_token,
        registry=postgres_url,
    )
    return str(result.config.path)


@pytest.fixture
def nodes(pg_config_path: str) -> Iterator[Callable[..., ProxyThread]]:
    started: list[ProxyThread] = []

    def make(node: int | None = None, count: int = 2, **overrides: Any) -> ProxyThread:
        if node is not None:
            overrides["cluster"] = ClusterSection(node=node, nodes=count)
            overrides.setdefault("port", 0)
        proxy = ProxyThread(proxy_settings(pg_config_path, **overrides))
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


def test_one_proxy_on_postgresql_revocation_without_a_datagram(
    pg_config_path, nodes, synapse, matrix_user, postgres_url
):  # type: ignore[no-untyped-def]
    dev = enroll_device(pg_config_path, matrix_user, synapse)
    proxy = nodes()
    wire = dev.wire()
    assert wire.exchange(wire.reading([215])).code == coap.CHANGED
    assert wire.exchange(wire.reading([216])).code == coap.CHANGED
    events = room_events(synapse.url, matrix_user.access_token, dev.room_id, dev.user_id)
    assert [e["content"]["body"] for e in events] == ["temperature 21.5 °C", "temperature 21.6 °C"]
    table = proxy.server.table
    assert dev.name in table.by_device
    # A command queued by another process is counted at once (NOTIFY), no datagram needed.
    with Registry(postgres_url) as cli:
        cli.enqueue_command(dev.name, "$cmd1", "@op:lowbw.test", "reboot")
        assert wait_for(lambda: table.commands_pending(dev.name) == 1, 3.0)
        answer = wire.exchange(wire.reading([217]))
        assert answer.code == coap.CHANGED
        cli.revoke(dev.name)
    # The revocation closes the session within the notification's delay, not a poll interval.
    assert wait_for(lambda: dev.name not in table.by_device, 0.9)
    wire.send(wire.seal(wire.reading([218])))
    wire.expect_silence()


def test_frames_reaching_the_other_node_are_forwarded(nodes, pg_config_path, synapse, matrix_user):  # type: ignore[no-untyped-def]
    dev = enroll_device(pg_config_path, matrix_user, synapse)
    n0 = nodes(0)
    n1 = nodes(1)
    wire = dev.wire()
    wire.proxy_addr = ("127.0.0.1", n0.port)
    assert wire.exchange(wire.reading([100])).code == coap.CHANGED
    sid = wire.session.sid
    assert cluster_mod.sid_owner(sid, 1) == 0
    # The device wakes "on a new port" and the kernel hands it to node 1.
    wire.proxy_addr = ("127.0.0.1", n1.port)
    for v in (101, 102, 103):
        assert wire.exchange(wire.reading([v])).code == coap.CHANGED
    assert n1.server.cluster.forwarded_out == 3
    assert n0.server.cluster.forwarded_in == 3
    assert dev.name not in n1.server.table.by_device
    events = room_events(synapse.url, matrix_user.access_token, dev.room_id, dev.user_id)
    assert [e["content"]["org.lowbw.reading"]["values"][0]["value"] for e in events] == [
        "10.0",
        "10.1",
        "10.2",
        "10.3",
    ]


def test_one_session_per_device_across_nodes(nodes, pg_config_path, synapse, matrix_user):  # type: ignore[no-untyped-def]
    dev = enroll_device(pg_config_path, matrix_user, synapse)
    n0 = nodes(0)
    n1 = nodes(1)
    first = dev.wire()
    first.proxy_addr = ("127.0.0.1", n0.port)
    assert first.exchange(first.reading([1])).code == coap.CHANGED
    old_frame = first.seal(first.reading([2]))
    second = dev.wire()
    second.proxy_addr = ("127.0.0.1", n1.port)
    second.next_mid = 50
    assert second.exchange(second.reading([3])).code == coap.CHANGED
    assert cluster_mod.sid_owner(second.session.sid, 1) == 1
    # Node 0 heard of it and closed its session.
    assert wait_for(lambda: dev.name not in n0.server.table.by_device, 3.0)
    first.send(old_frame)
    first.expect_silence()
    # The new session keeps working, wherever its frames arrive.
    second.proxy_addr = ("127.0.0.1", n0.port)
    assert second.exchange(second.reading([4])).code == coap.CHANGED


def test_a_dead_node_costs_one_handshake_and_no_reading(nodes, pg_config_path, synapse, matrix_user):  # type: ignore[no-untyped-def]
    dev = enroll_device(pg_config_path, matrix_user, synapse)
    n0 = nodes(0)
    n1 = nodes(1)
    wire = dev.wire()
    wire.proxy_addr = ("127.0.0.1", n0.port)
    assert wire.exchange(wire.reading([10])).code == coap.CHANGED
    # Node 0 crashes (no saved sessions); the device's next frame reaches node 1.
    n0.stop(save_sessions=False)
    wire.proxy_addr = ("127.0.0.1", n1.port)
    pending = wire.reading([11])
    wire.send(wire.seal(pending))
    wire.expect_silence(1.0)
    # Once node 1 knows node 0 is gone, its frames are dropped there (counted), not forwarded.
    assert wait_for(lambda: not n1.server.cluster.alive(0), 5.0)
    wire.send(wire.seal(pending))
    wire.expect_silence(0.5)
    assert n1.server.transport.stats.dropped.get(cluster_mod.DROP_OWNER_DOWN) == 1
    # The device gives up on the session and sends the same message in a new handshake.
    wire.session = None
    answer = wire.exchange(pending)
    assert answer.code == coap.CHANGED
    events = room_events(synapse.url, matrix_user.access_token, dev.room_id, dev.user_id)
    assert [e["content"]["body"] for e in events] == ["temperature 1.0 °C", "temperature 1.1 °C"]


def test_graceful_restart_of_a_node_keeps_its_sessions(nodes, pg_config_path, synapse, matrix_user):  # type: ignore[no-untyped-def]
    dev = enroll_device(pg_config_path, matrix_user, synapse)
    n0 = nodes(0)
    nodes(1)
    wire = dev.wire()
    port = n0.port
    wire.proxy_addr = ("127.0.0.1", port)
    assert wire.exchange(wire.reading([5])).code == coap.CHANGED
    assert n0.stop() == 1
    again = nodes(0, port=port)
    assert again.server.restored == 1
    assert wire.exchange(wire.reading([6])).code == coap.CHANGED


def test_a_node_number_is_taken_once(nodes) -> None:  # type: ignore[no-untyped-def]
    nodes(0)
    with pytest.raises(Exception, match="running already"):
        nodes(0)


def test_forward_encoding_round_trip() -> None:
    data = os.urandom(40)
    packet = cluster_mod.encode_forward(data, ("10.1.2.3", 40000))
    assert cluster_mod.decode_forward(packet) == (data, ("10.1.2.3", 40000))
    with pytest.raises(DecodeError):
        cluster_mod.decode_forward(b"\xfeLF1\x00")


def test_a_handshake_replayed_to_the_other_node_is_silent(nodes, pg_config_path, synapse, matrix_user):  # type: ignore[no-untyped-def]
    dev = enroll_device(pg_config_path, matrix_user, synapse)
    n0 = nodes(0)
    n1 = nodes(1)
    wire = dev.wire()
    wire.proxy_addr = ("127.0.0.1", n0.port)
    assert wire.exchange(wire.reading([7])).code == coap.CHANGED
    ik1 = wire.sent[0]
    # An attacker replays the captured IK message 1 to the other node: no answer,
    # no session there, no second event, and the device's session on node 0 stays.
    attacker = dev.wire()
    attacker.proxy_addr = ("127.0.0.1", n1.port)
    attacker.send(ik1)
    attacker.expect_silence()
    assert dev.name not in n1.server.table.by_device
    assert n1.server.table.handshake_counts.get(("ik", "replay")) == 1
    assert wire.exchange(wire.reading([8])).code == coap.CHANGED
    events = room_events(synapse.url, matrix_user.access_token, dev.room_id, dev.user_id)
    assert [e["content"]["body"] for e in events] == ["temperature 0.7 °C", "temperature 0.8 °C"]


def test_a_reading_recorded_by_one_node_is_not_posted_again_by_the_other(
    nodes, pg_config_path, synapse, matrix_user
):  # type: ignore[no-untyped-def]
    """Node 0 posts a reading but its answer is lost; the device sends the same message in a
    new handshake to node 1: one event. Then numbers far above the registry's top are new to
    everyone, and node 1 answers their lookups itself (lowbw.proxy.freshtxn)."""
    dev = enroll_device(pg_config_path, matrix_user, synapse)
    n0 = nodes(0)
    n1 = nodes(1)
    first = dev.wire()
    first.proxy_addr = ("127.0.0.1", n0.port)
    msg = first.reading([31])
    assert first.exchange(msg).code == coap.CHANGED
    again = dev.wire()
    again.proxy_addr = ("127.0.0.1", n1.port)
    assert again.exchange(again.reading([31], mid=msg.mid)).code == coap.CHANGED
    again.next_mid = 1000
    assert again.exchange(again.reading([32])).code == coap.CHANGED
    fresh = n1.server.registry.fresh
    assert fresh is not None and any(fresh._mine.values())
    # The same message again in yet another handshake, on the same node: still one event.
    third = dev.wire()
    third.proxy_addr = ("127.0.0.1", n1.port)
    assert third.exchange(third.reading([32], mid=1000)).code == coap.CHANGED
    events = room_events(synapse.url, matrix_user.access_token, dev.room_id, dev.user_id)
    assert [e["content"]["body"] for e in events] == ["temperature 3.1 °C", "temperature 3.2 °C"]


@pytest.mark.parametrize("node", [0, 1, 2])
def test_compact_and_standard_session_ids_name_their_node(tmp_path, node) -> None:  # type: ignore[no-untyped-def]
    """A node's session ids carry its number: in the top bits of 16 (standard), of a
    one-byte compact id's 7 and of a two-byte compact id's 15 (0x80..0x7FFF), so the
    node that receives a compact frame can forward it too."""
    from lowbw.proxy.registry import Registry
    from lowbw.proxy.sessions import SessionTable
    from lowbw.proxy.transport import LinkTuning
    from lowbw.wire import frames

    with Registry(tmp_path / "r.sqlite3") as reg:
        table = SessionTable(reg, os.urandom(32), LinkTuning(100, None, 0))
        table.sid_node, table.sid_node_bits = node, 2
        one_byte = set()
        for _ in range(40):  # the one-byte space of a node (32 ids), then two bytes
            sid = table._new_sid(compact=True)
            assert sid not in one_byte
            one_byte.add(sid)
            table._pending_xx[sid] = None  # taken
            assert cluster_mod.sid_owner(sid, 2, compact=True) == node
            assert len(frames.sid_bytes(sid)) == (1 if sid < 0x80 else 2)
        assert sum(1 for sid in one_byte if sid < 0x80) == 32
        assert all(0x80 <= sid <= 0x7FFF for sid in one_byte if sid >= 0x80)
        for _ in range(20):
            sid = table._new_sid()
            assert cluster_mod.sid_owner(sid, 2) == node
            table._pending_xx[sid] = None
