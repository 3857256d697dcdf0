"""Handshakes under attack, against the real proxy process, real Synapse and real sockets.

* An IK message 1 captured on the air stays dead once the device made a newer
  handshake, however many came in between (more than the 256 ephemerals the
  registry remembers): no answer, the live session is untouched, its reading
  is never posted twice.
* 8,000 forged handshakes per second for 20 s (plus replays of a captured
  genuine one): warm and cold devices keep their service (at least 90 % of
  readings acknowledged, each within 15 s), the proxy's memory stays bounded
  and its log gets a summary, not a line per datagram.
* A pairing flood from one source does not lock out a legitimate pairing.
* Revocation cuts a live session within the poll interval without any datagram.
* Unknown and revoked keys that keep trying are logged, aggregated per key.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from typing import Any

from lowbw.device import client, config, store, udp
from lowbw.proxy.registry import Registry
from lowbw.wire import coap, frames, handshake

from .conftest import WireDevice, room_events
from .proxyproc import ProxyProcess

# Budgets wide enough that a test's own burst of handshakes is never the limit.
GENEROUS = {"handshakes_per_source": 100000.0, "handshakes_global": 100000.0, "cookie_threshold": 1e9}


def _registry_path(config_path: str) -> str:
    from lowbw.proxy.config import load

    return str(load(config_path).proxy.registry)


def _temperatures(synapse: Any, user: Any, room_id: str) -> list[str]:
    events = room_events(synapse.url, user.access_token, room_id)
    return [e["content"].get("body", "") for e in events if e.get("type") != "m.room.member"]


def test_old_ik1_stays_dead_after_more_than_256_handshakes(
    device_factory, proxy_config_path, synapse, matrix_user
):
    dev = device_factory()
    proxy = ProxyProcess(proxy_config_path, GENEROUS)
    try:
        wire = dev.wire()
        assert wire.exchange(wire.reading([215], mid=7)).code == coap.CHANGED
        captured = wire.sent[0]
        assert captured[0] == frames.HS_IK1
        for _ in range(300):
            wire.session = None
            assert wire.handshake(None) is None  # an IK without a request: answered at once
        live = wire.session
        # The replay: no answer (the proxy remembers recent ephemerals, no crypto spent).
        wire.send(captured)
        wire.expect_silence(1.0)
        assert wire.exchange(wire.reading([216])).code == coap.CHANGED
    finally:
        out = proxy.stop()
    assert "replayed handshake (recent ephemeral)" in out, out
    # A restarted proxy has forgotten the ephemerals; the handshake number holds.
    proxy = ProxyProcess(proxy_config_path)
    try:
        assert wire.session is live  # restored at start: 0 extra bytes
        assert wire.exchange(wire.reading([217])).code == coap.CHANGED
        # Even when the device's counter has gone far past the old MID.
        wire.next_mid = 7 + 40000
        assert wire.exchange(wire.reading([218])).code == coap.CHANGED
        for _ in range(2):
            wire.send(captured)
            wire.expect_silence(1.0)
        assert wire.exchange(wire.reading([219])).code == coap.CHANGED
    finally:
        out = proxy.stop()
    assert "replayed handshake %s: 2" % dev.name in out, out
    bodies = _temperatures(synapse, matrix_user, dev.room_id)
    for value in ("21.5", "21.6", "21.7", "21.8", "21.9"):
        assert sum(value in b for b in bodies) == 1, (value, bodies)


def _device(cfg_dict: dict[str, Any]) -> tuple[client.Device, udp.UdpLink]:
    cfg = config.from_dict(cfg_dict)
    dev = client.Device(cfg, store.MemoryStore())
    return dev, udp.UdpLink(cfg.proxy_host, cfg.proxy_port)


class Sender(threading.Thread):
    """A real device client sending one reading per ``period``, recording each outcome."""

    def __init__(self, cfg: dict[str, Any], count: int, period: float, cold: bool) -> None:
        super().__init__(daemon=True)
        self.dev, self.link = _device(cfg)
        self.count = count
        self.period = period
        self.cold = cold
        self.acked: list[float] = []  # seconds from send to acknowledgement
        self.failed = 0
        self.results: dict[int, str] = {}
        self.dev.on_result = lambda rid, status, code, reason: self.results.__setitem__(rid, status)

    def warm_up(self) -> None:
        rid = self.dev.send(0, [200])
        assert self.link.run(self.dev, until=lambda: rid in self.results, timeout=30)
        assert self.results[rid] == client.ACKED

    def run(self) -> None:
        start = time.monotonic()
        for i in range(self.count):
            if self.cold:
                self.dev._drop_session()  # every reading a cold start: IK (and a cookie) again
            t0 = time.monotonic()
            rid = self.dev.send(0, [100 + i])
            done = self.link.run(self.dev, until=lambda r=rid: r in self.results, timeout=15)
            if done and self.results[rid] == client.ACKED:
                self.acked.append(time.monotonic() - t0)
            else:
                self.failed += 1
            delay = start + (i + 1) * self.period - time.monotonic()
            if delay > 0:
                time.sleep(delay)


def test_handshake_flood_leaves_neighbours_their_service(device_factory, proxy_config_path, synapse):
    devices = [device_factory() for _ in range(4)]
    proxy = ProxyProcess(proxy_config_path, {"log_summary_interval": 5.0})
    try:
        warm = [Sender(d.config, 20, 1.0, cold=False) for d in devices[:2]]
        cold = Sender(devices[2].config, 10, 2.0, cold=True)
        for s in warm + [cold]:
            s.warm_up()
        # A genuine IK message 1 (of a fourth device) for the attacker to replay.
        spy = devices[3].wire()
        assert spy.exchange(spy.reading([1])).code == coap.CHANGED
        captured = spy.sent[0]
        rss_before = proxy.rss()
        host, port = devices[0].config["proxy"]["host"], devices[0].config["proxy"]["port"]
        attacker = subprocess.Popen(
            [sys.executable, "-m", "tests.proxy.forge", host, str(port), "--rate", "8000",
             "--seconds", "20", "--sockets", "16", "--replay", captured.hex()],
            stdout=subprocess.PIPE, text=True,
        )
        time.sleep(1.0)  # the flood is on
        for s in warm + [cold]:
            s.start()
        for s in warm + [cold]:
            s.join(60)
        out, _ = attacker.communicate(timeout=30)
        flood = json.loads(out)
        rss_after = proxy.rss()
    finally:
        log = proxy.stop()
    assert flood["rate"] >= 7000, flood
    total = sum(s.count for s in warm + [cold])
    acked = sum(len(s.acked) for s in warm + [cold])
    worst = max(max(s.acked) for s in warm + [cold] if s.acked)
    print("\nflood %s: %d/%d acknowledged, slowest %.2f s, cold acks %s, RSS +%.1f MB"
          % (flood, acked, total, worst, [round(t, 2) for t in cold.acked], (rss_after - rss_before) / 1e6))
    assert acked >= 0.9 * total, [(len(s.acked), s.failed) for s in warm + [cold]]
    assert len(cold.acked) >= 0.9 * cold.count
    assert worst <= 15.0
    assert rss_after - rss_before < 50e6
    # Aggregated: a few summary lines for 160,000 rejected datagrams.
    assert "rejected:" in log
    assert log.count("\n") < 200, log[-3000:]
    assert "cookie reply sent" in log


def test_pairing_flood_does_not_lock_out_a_legitimate_pairing(device_factory, proxy_config_path):
    dev = device_factory()
    proxy = ProxyProcess(proxy_config_path, {"cookie_threshold": 1e9, "xx_pending_total": 64})
    try:
        host, port = dev.config["proxy"]["host"], dev.config["proxy"]["port"]
        # 300 XX first messages from 300 sources, then a burst from one.
        subprocess.run(
            [sys.executable, "-m", "tests.proxy.forge", host, str(port), "--xx", "--rate", "300",
             "--seconds", "1", "--sockets", "300"], check=True, capture_output=True, timeout=30,
        )
        subprocess.run(
            [sys.executable, "-m", "tests.proxy.forge", host, str(port), "--xx", "--rate", "500",
             "--seconds", "2", "--sockets", "1"], check=True, capture_output=True, timeout=30,
        )
        wire = dev.wire()
        pairing = handshake.Pairing(wire.private_key)
        wire.send(pairing.start())
        session, _caps, xx3 = pairing.finish(wire.recv(5))
        assert pairing.remote_static() == wire.proxy_public_key
        wire.send(xx3)
        wire.session = session
        assert wire.exchange(wire.reading([1]), timeout=5).code == coap.CHANGED
    finally:
        proxy.stop()


def test_revocation_cuts_a_silent_session_and_retries_are_logged_per_key(
    device_factory, proxy_config_path
):
    dev = device_factory()
    proxy = ProxyProcess(proxy_config_path, {"registry_poll_interval": 0.2, "log_summary_interval": 1.0})
    try:
        wire = dev.wire()
        assert wire.exchange(wire.reading([1])).code == coap.CHANGED
        with Registry(_registry_path(proxy_config_path)) as operator:
            assert operator.revoke(dev.name)
        # No datagram from the device: the proxy closes the session by itself.
        assert proxy.wait_for("%s: revoked, session" % dev.name, 5.0), proxy.output()
        wire.send(wire.seal(wire.reading([2])))
        wire.expect_silence()
        # It keeps trying: new handshakes, no answer, one summary line per key.
        for _ in range(5):
            wire.session = None
            dgram, _ = wire.ik_datagram(wire.reading([3]))
            wire.send(dgram)
            wire.expect_silence(0.3)
        stranger = WireDevice(os.urandom(32), wire.proxy_public_key, wire.proxy_addr)
        for _ in range(3):
            dgram, _ = stranger.ik_datagram(None)
            stranger.send(dgram)
        stranger.expect_silence(0.5)
        assert proxy.wait_for("handshake from an unknown key key ", 5.0)
    finally:
        log = proxy.stop()
    # Summaries, never a line per datagram: the per-key counts add up.
    per_key = re.findall(r"handshake from a revoked device %s: (\d+)" % dev.name, log)
    assert sum(int(n) for n in per_key) == 5 and len(per_key) <= 5, log
    assert log.count("rejected:") == len(re.findall(r"rejected: ", log)) <= 10
    assert stranger.private_key.hex() not in log
