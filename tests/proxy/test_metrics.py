"""Prometheus metrics of the real proxy (``[metrics]``), read with prometheus-client's text parser.

Readings, commands, forged and replayed frames and handshakes go through a
real proxy in front of the session's Synapse; ``/metrics`` must say exactly
what happened.
"""

from __future__ import annotations

import secrets
import time
import urllib.parse

from lowbw.proxy.config import MetricsSection
from lowbw.proxy.registry import Registry
from lowbw.wire import cbor, coap, routes

from .conftest import WireDevice
from .metricsutil import names, scrape, value, wait_for
from .test_server_commands import send_event


def metrics_on(**kw: object) -> MetricsSection:
    return MetricsSection(listen="127.0.0.1:0", **kw)  # type: ignore[arg-type]


def url_of(proxy) -> str:
    return "http://127.0.0.1:%d/metrics" % proxy.server.metrics_port


def test_readings_handshakes_and_traffic_are_counted(device_factory, proxy_factory):
    dev = device_factory()
    proxy = proxy_factory(metrics=metrics_on())
    url = url_of(proxy)
    link_bps = proxy.settings.link_bps

    before = scrape(url)
    assert value(before, "lowbw_proxy_readings_received_total") == 0
    assert value(before, "lowbw_proxy_sessions", state="established") == 0
    # Enrolled, never heard from: its series exist, last seen does not.
    assert value(before, "lowbw_proxy_device_readings_total", device=dev.name) == 0
    assert value(before, "lowbw_proxy_device_last_seen_timestamp_seconds", device=dev.name) is None

    wire = dev.wire()
    t0 = time.time()
    for v in (215, 216, 217):
        assert wire.exchange(wire.reading([v])).code == coap.CHANGED
    # Two readings in one request (climate slot), one that does not fit the schema.
    assert wire.exchange(wire.reading([200, 40], slot=1)).code == coap.CHANGED
    assert wire.exchange(wire.reading([1], slot=9)).code == coap.BAD_REQUEST
    # A retry of an acknowledged message in a new session: acknowledged, no new event.
    again = dev.wire()
    again.next_mid = 1
    assert again.exchange(again.reading([215])).code == coap.CHANGED

    s = scrape(url)
    assert value(s, "lowbw_proxy_readings_received_total") == 6
    assert value(s, "lowbw_proxy_readings_acknowledged_total") == 5
    assert value(s, "lowbw_proxy_readings_duplicate_total") == 1
    assert value(s, "lowbw_proxy_readings_rejected_total", reason="schema") == 1
    assert value(s, "lowbw_proxy_readings_rejected_total", reason="homeserver_unavailable") == 0
    assert value(s, "lowbw_proxy_events_posted_total", type="m.room.message") == 4
    assert value(s, "lowbw_proxy_handshakes_total", kind="ik", outcome="ok") == 2
    assert value(s, "lowbw_proxy_sessions", state="established") == 1  # the second replaced the first

    # The homeserver: four sends answered 200 on the readings pool, with latencies.
    assert value(s, "lowbw_proxy_homeserver_responses_total", pool="readings", status="200") == 4
    assert value(s, "lowbw_proxy_homeserver_request_duration_seconds_count", pool="readings") == 4
    assert value(s, "lowbw_proxy_homeserver_request_duration_seconds_bucket", pool="readings", le="+Inf") == 4
    assert value(s, "lowbw_proxy_homeserver_request_duration_seconds_sum", pool="readings") > 0
    # The registry, per operation on the loop: the four events are written behind,
    # off the loop (lowbw.proxy.writebehind), so there is no record_event; lookups are timed.
    op = "lowbw_proxy_registry_operation_duration_seconds_count"
    assert value(s, op, operation="record_event") is None
    assert value(s, op, operation="sent_event") >= 4
    assert (
        value(s, "lowbw_proxy_registry_operation_duration_seconds_count", operation="accept_handshake") == 2
    )

    # Per device: readings, bytes both ways, airtime at link_bps, last seen.
    assert value(s, "lowbw_proxy_device_readings_total", device=dev.name) == 5
    assert value(s, "lowbw_proxy_device_readings_rejected_total", device=dev.name) == 1
    up = value(s, "lowbw_proxy_device_bytes_total", device=dev.name, direction="up")
    down = value(s, "lowbw_proxy_device_bytes_total", device=dev.name, direction="down")
    sent = sum(len(d) for d in wire.sent + again.sent)
    assert up == sent
    assert value(s, "lowbw_proxy_device_datagrams_total", device=dev.name, direction="up") == len(
        wire.sent + again.sent
    )
    assert value(s, "lowbw_proxy_device_datagrams_total", device=dev.name, direction="down") == 6
    assert down and down > 0
    assert value(s, "lowbw_proxy_device_airtime_seconds_total", device=dev.name, direction="up") == (
        up * 8 / link_bps
    )
    seen = value(s, "lowbw_proxy_device_last_seen_timestamp_seconds", device=dev.name)
    assert seen is not None and t0 - 1 <= seen <= time.time() + 1
    assert value(s, "lowbw_proxy_bytes_total", direction="up") == up
    assert value(s, "lowbw_proxy_link_bps") == link_bps
    assert value(s, "process_resident_memory_bytes") > 0


def test_drops_and_refused_handshakes_by_reason(device_factory, proxy_factory, synapse):
    dev = device_factory()
    other = device_factory()
    proxy = proxy_factory(metrics=metrics_on())
    url = url_of(proxy)
    wire = dev.wire()
    wire.exchange(wire.reading([1]))

    # A forged frame naming the device's session: an authentication failure of that device.
    frame = bytearray(wire.seal(wire.reading([2])))
    frame[-1] ^= 0x01
    wire.send(bytes(frame))
    wire.expect_silence(0.3)
    # The same genuine frame twice: the second is a replay.
    genuine = wire.seal(wire.reading([3]))
    wire.send(genuine)
    wire.recv()
    wire.send(genuine)
    wire.expect_silence(0.3)
    # A frame for a session that does not exist.
    bogus = bytearray(genuine)
    bogus[1] ^= 0xFF
    bogus[2] ^= 0xFF
    wire.send(bytes(bogus))
    wire.expect_silence(0.3)
    # A handshake from a key nobody enrolled.
    stranger = WireDevice(secrets.token_bytes(32), wire.proxy_public_key, wire.proxy_addr)
    stranger.send(stranger.ik_datagram(stranger.reading([1]))[0])
    stranger.expect_silence(0.3)
    # A replayed IK message 1 (the other device's first handshake, sent again).
    o = other.wire()
    o.exchange(o.reading([5]))
    o.send(o.sent[0])
    o.expect_silence(0.3)

    s = scrape(url)
    assert value(s, "lowbw_proxy_datagrams_dropped_total", reason="auth_failure") == 1
    assert value(s, "lowbw_proxy_datagrams_dropped_total", reason="replay") == 1
    assert value(s, "lowbw_proxy_datagrams_dropped_total", reason="unknown_session") == 1
    assert value(s, "lowbw_proxy_datagrams_dropped_total", reason="handshake_rejected") == 2
    assert value(s, "lowbw_proxy_device_auth_failures_total", device=dev.name) == 1
    assert value(s, "lowbw_proxy_device_auth_failures_total", device=other.name) == 0
    assert value(s, "lowbw_proxy_handshakes_total", kind="ik", outcome="unknown_key") == 1
    assert value(s, "lowbw_proxy_handshakes_total", kind="ik", outcome="replay") == 1
    assert value(s, "lowbw_proxy_handshakes_total", kind="ik", outcome="ok") == 2

    # Revoked: the device's series go, its handshake is counted as revoked.
    with Registry(proxy.settings.registry_path) as registry:
        registry.revoke(dev.name)
    s = wait_for(url, lambda s: value(s, "lowbw_proxy_device_readings_total", device=dev.name) is None)
    assert not [k for k in s if ("device", dev.name) in k[1]]
    assert value(s, "lowbw_proxy_device_readings_total", device=other.name) == 1
    again = dev.wire()
    again.send(again.ik_datagram(again.reading([1]))[0])
    again.expect_silence(0.3)
    s = scrape(url)
    assert value(s, "lowbw_proxy_handshakes_total", kind="ik", outcome="revoked") == 1
    assert not [k for k in s if ("device", dev.name) in k[1]]


def test_commands_queued_delivered_and_expired(device_factory, proxy_factory, synapse, matrix_user):
    dev = device_factory()
    proxy = proxy_factory(metrics=metrics_on())
    url = url_of(proxy)
    wire = dev.wire()
    wire.exchange(wire.reading([1]))
    for i, text in enumerate(("open valve", "close valve")):
        send_event(
            synapse,
            matrix_user,
            dev.room_id,
            "m.room.message",
            {"msgtype": "m.text", "body": "!%s %s" % (dev.name, text)},
            "m%d" % i,
        )
    s = wait_for(url, lambda s: value(s, "lowbw_proxy_commands_queued_total") == 2)
    assert value(s, "lowbw_proxy_commands_pending") == 2
    fetched = wire.exchange(wire.request(coap.GET, [routes.ROUTE_COMMANDS]))
    cid = cbor.loads(fetched.payload)[0]
    assert wire.exchange(wire.request(coap.POST, [routes.ROUTE_COMMANDS], bytes(cbor.dumps(cid)))).code == (
        coap.CHANGED
    )
    s = scrape(url)
    assert value(s, "lowbw_proxy_commands_delivered_total") == 1
    assert value(s, "lowbw_proxy_commands_pending") == 1
    assert value(s, "lowbw_proxy_commands_expired_total") == 0
    # The device is revoked with one command still waiting: that one can never be delivered.
    with Registry(proxy.settings.registry_path) as registry:
        registry.revoke(dev.name)
    s = wait_for(url, lambda s: value(s, "lowbw_proxy_commands_expired_total") == 1)
    assert value(s, "lowbw_proxy_commands_pending") == 0


def test_homeserver_down_is_counted_per_reason(device_factory, proxy_factory, fault_injector):
    dev = device_factory()
    proxy = proxy_factory(metrics=metrics_on(), homeserver_url=fault_injector.url)
    url = url_of(proxy)
    wire = dev.wire()
    assert wire.exchange(wire.reading([1])).code == coap.CHANGED
    fault_injector.set("down")
    answer = wire.exchange(wire.reading([2]))
    assert answer.code == coap.SERVICE_UNAVAILABLE
    s = scrape(url)
    assert value(s, "lowbw_proxy_readings_rejected_total", reason="homeserver_unavailable") == 1
    assert value(s, "lowbw_proxy_homeserver_responses_total", pool="readings", status="unreachable") == 1
    assert value(s, "lowbw_proxy_homeserver_responses_total", pool="readings", status="200") == 1


def test_per_device_series_can_be_switched_off(device_factory, proxy_factory):
    dev = device_factory()
    proxy = proxy_factory(metrics=metrics_on(per_device=False))
    wire = dev.wire()
    wire.exchange(wire.reading([1]))
    s = scrape(url_of(proxy))
    assert value(s, "lowbw_proxy_readings_acknowledged_total") == 1
    assert not [n for n in names(s) if n.startswith("lowbw_proxy_device_")]
    assert not [k for k in s if any(label == "device" for label, _ in k[1])]


def test_metrics_off_by_default(device_factory, proxy_factory):
    proxy = proxy_factory()
    assert proxy.server.metrics is None and proxy.server.metrics_port is None
    # No hooks on the hot path.
    assert proxy.server.transport.stats.devices is None
    assert proxy.server.registry.on_timing is None
    assert proxy.server.homeserver.on_result is None


def test_two_proxies_in_one_process_have_their_own_registries(device_factory, proxy_factory, tmp_path):
    dev = device_factory()
    a = proxy_factory(metrics=metrics_on())
    wire = dev.wire()
    wire.exchange(wire.reading([1]))
    a.stop()
    b = proxy_factory(metrics=metrics_on())
    assert value(scrape(url_of(b)), "lowbw_proxy_readings_received_total") == 0
    assert urllib.parse.urlsplit(url_of(b)).port != 0


def test_dashboard_and_docs_name_real_metrics(device_factory, proxy_factory):
    """examples/grafana-lowbw-proxy.json queries only names the proxy exposes, and
    docs/operator.md documents every lowbw_proxy_ metric the proxy exposes."""
    import json
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    dev = device_factory()
    proxy = proxy_factory(metrics=metrics_on())
    wire = dev.wire()
    wire.exchange(wire.reading([1]))
    exposed = names(scrape(url_of(proxy)))

    dashboard = json.loads((root / "examples" / "grafana-lowbw-proxy.json").read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    used = {m for e in exprs for m in re.findall(r"\b(?:lowbw_proxy|process)_[a-z_]+", e)}
    assert used and not used - exposed, sorted(used - exposed)

    doc = (root / "docs" / "operator.md").read_text(encoding="utf-8")
    bases = {re.sub(r"_(bucket|count|sum)$", "", n) for n in exposed if n.startswith("lowbw_proxy_")}
    bases = {b for b in bases if not b.endswith("_seconds_bucket")}
    missing = sorted(b for b in bases if "`%s`" % b not in doc and "`%s{" % b not in doc)
    assert not missing, missing
