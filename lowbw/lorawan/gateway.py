"""``lowbw lorawan-gateway``: lowbw datagrams between a LoRaWAN network server and the proxy.

The proxy is unchanged: to it, each LoRaWAN device is one UDP peer. This
companion command

- subscribes to the network server application's uplinks (``tts-v3`` or
  ``chirpstack-v4`` MQTT format, ``lowbw.lorawan.formats``), drops duplicates
  (the network server's duplicate key), and takes lowbw frames out of
  FRMPayload: FPort 1 a whole datagram, FPort 2 a fragment
  (``lowbw.device.lorawan``: one header byte, up to 8 per datagram), FPort 3 a
  poll that only opens the receive windows;
- forwards each reassembled datagram over UDP to the proxy from one UDP socket
  per LoRaWAN device, so the proxy sees a stable source address per device;
- fragments the proxy's answers to ``downlink_max`` bytes and queues them as
  class-A downlinks (TTS ``down/push``, ChirpStack ``command/down``); the
  network server sends one per receive window after an uplink, with FPending
  while more wait.

It never decrypts anything: Noise runs between device and proxy. No timers of
its own resend anything: the device client retransmits, with timers set for
the duty cycle (docs/lorawan.md "Timers"); the proxy answers a request once
(piggybacked) and sends no confirmable messages to a device that does not
observe. Bounded state: ``max_devices`` sockets (least recently heard gives
its up), a device unheard for ``idle_timeout`` gives its socket up, an
unfinished datagram is dropped after ``reassembly_timeout``, at most
``max_queued`` downlinks per device are published before the device has been
heard again (a flood from the proxy cannot fill the network server's queue).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import queue
import selectors
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paho.mqtt import client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from lowbw.adapters import config as adapter_config
from lowbw.adapters.logutil import Throttle, setup_logging
from lowbw.adapters.metrics import lorawan_gateway_families
from lowbw.adapters.runner import serve
from lowbw.device import lorawan as lw
from lowbw.lorawan import formats
from lowbw.lorawan.formats import FormatError, Uplink

log = logging.getLogger("lowbw.lorawan.gateway")


@dataclass
class GatewayConfig:
    path: Path
    mqtt: adapter_config.MqttSettings
    format: str
    application: str
    proxy_host: str = "127.0.0.1"
    proxy_port: int = 5683
    downlink_max: int = 51
    reassembly_timeout: float = 900.0
    idle_timeout: float = 86400.0
    max_devices: int = 1024
    max_queued: int = 8
    dedup_keep: int = 4096
    metrics: Any = None  # lowbw.adapters.metrics.MetricsSettings when [metrics] listen is set


def load_config(path: str | Path) -> GatewayConfig:
    source, base, obj = adapter_config._read_toml(path)
    top = adapter_config._Section(source, "", obj, base)
    m, mq = adapter_config.load_mqtt(top)
    g = top.sub("gateway", required=True)
    assert g is not None
    fmt = g.choice("format", formats.FORMATS, formats.TTS)
    if fmt == formats.TTS and mq.protocol != "3.1.1":
        m.fail("protocol", 'The Things Stack speaks MQTT 3.1.1 only: set protocol = "3.1.1"')
    app = g.req_text("application")
    host, port = adapter_config._host_port(g, "proxy", "127.0.0.1:5683")
    cfg = GatewayConfig(
        path=Path(source),
        mqtt=mq,
        format=fmt,
        application=app,
        proxy_host=host,
        proxy_port=port,
        downlink_max=g.integer("downlink_max", 51, 11, 242),
        reassembly_timeout=g.number("reassembly_timeout", 900.0, 1, 86400),
        idle_timeout=g.number("idle_timeout", 86400.0, 10, 30 * 86400),
        max_devices=g.integer("max_devices", 1024, 1, 1_000_000),
        max_queued=g.integer("max_queued", 8, 1, 64),
        dedup_keep=g.integer("dedup_keep", 4096, 16, 1_000_000),
    )
    try:
        formats.check_topic_level(app, "application")
    except FormatError as exc:
        g.fail("application", exc.message)
    g.done()
    cfg.metrics = adapter_config.load_metrics(top)
    top.done()
    return cfg


class _Peer:
    def __init__(self, device_id: str, sock: socket.socket, now: float) -> None:
        self.device_id = device_id
        self.sock = sock
        self.reasm = lw.Reassembler()
        self.heard = now
        self.seq = 0
        self.queued = 0  # downlinks published since the device was last heard
        self.up = self.down = self.up_bytes = self.down_bytes = 0
        self.session: object = None
        self.f_cnt: int | None = None


class LorawanGateway:
    """The companion (module docstring): ``run()`` until ``stop()``."""

    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        self.peers: collections.OrderedDict[str, _Peer] = collections.OrderedDict()
        self.seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.inbox: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        self.throttle = Throttle(log)
        self.counters = {
            "uplinks": 0,
            "duplicates": 0,
            "polls": 0,
            "datagrams_up": 0,
            "datagrams_down": 0,
            "downlinks": 0,
            "fragments_dropped": 0,
            "bad": 0,
            "held_back": 0,
            "peers_dropped": 0,
            "bytes_up": 0,
            "bytes_down": 0,
            "fcnt_gaps": 0,
            "connects": 0,
            "connect_failures": 0,
            "disconnects": 0,
        }
        # Why input was skipped / answers dropped (lowbw.adapters.metrics).
        self.skipped: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._stop = False
        self.connected = False
        m = cfg.mqtt
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=m.client_id,
            protocol=mqtt.MQTTv5 if m.protocol == "5" else mqtt.MQTTv311,
        )
        if m.username:
            c.username_pw_set(m.username, m.password)
        if m.tls.enabled:
            c.tls_set(ca_certs=str(m.tls.ca_file) if m.tls.ca_file else None)
        c.reconnect_delay_set(max(1, int(m.reconnect_min)), max(1, int(m.reconnect_max)))
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_disconnect = self._on_disconnect
        c.on_connect_fail = self._on_connect_fail
        self.client = c

    # -- MQTT (paho's thread: hand over only) ---------------------------------------------

    def _on_connect(self, client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            return
        self.connected = True
        self.counters["connects"] += 1
        qos = 0 if self.cfg.format == formats.TTS else 1
        filters = [f for f in formats.subscriptions(self.cfg.format, self.cfg.application) if "down" not in f]
        client.subscribe([(f, qos) for f in filters])
        log.info("connected; subscribed to %s", ", ".join(filters))

    def _on_disconnect(self, *_a: Any) -> None:
        if self.connected:
            self.counters["disconnects"] += 1
        self.connected = False

    def _on_connect_fail(self, *_a: Any) -> None:
        self.counters["connect_failures"] += 1

    def _count(self, table: dict[str, int], reason: str) -> None:
        table[reason] = table.get(reason, 0) + 1

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            return
        self.inbox.put((topic, bytes(msg.payload)))
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    # -- loop ---------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def run(self) -> None:
        m = self.cfg.mqtt
        log.info(
            "lorawan-gateway: %s application %s via %s:%d <-> proxy %s:%d",
            self.cfg.format,
            self.cfg.application,
            m.host,
            m.port,
            self.cfg.proxy_host,
            self.cfg.proxy_port,
        )
        self.client.connect_async(m.host, m.port, m.keepalive)
        self.client.loop_start()
        try:
            while not self._stop:
                for key, _ev in self.sel.select(1.0):
                    if key.data is None:
                        try:
                            self._wake_r.recv(4096)
                        except OSError:
                            pass
                    else:
                        self._from_proxy(key.data)
                self._drain()
                self._expire(time.monotonic())
        finally:
            self.client.disconnect()
            self.client.loop_stop()
            for p in self.peers.values():
                p.sock.close()
            self.sel.close()
            self._wake_r.close()
            self._wake_w.close()
            log.info("lorawan-gateway stopped: %s", json.dumps(self.stats(), sort_keys=True))

    def stats(self) -> dict[str, Any]:
        return dict(self.counters, peers=len(self.peers))

    def _drain(self) -> None:
        while True:
            try:
                topic, payload = self.inbox.get_nowait()
            except queue.Empty:
                return
            try:
                ev = formats.parse(self.cfg.format, topic, payload)
            except FormatError as exc:
                self.counters["bad"] += 1
                self._count(self.skipped, "bad_event")
                self.throttle.warning(time.monotonic(), "%s: skipped: %s", topic, exc.message)
                continue
            if isinstance(ev, Uplink):
                self._uplink(ev)

    def _uplink(self, up: Uplink) -> None:
        now = time.monotonic()
        self.counters["uplinks"] += 1
        if up.key in self.seen:
            self.counters["duplicates"] += 1
            return
        self.seen[up.key] = None
        while len(self.seen) > self.cfg.dedup_keep:
            self.seen.popitem(last=False)
        known = self.peers.get(up.device_id)
        if known is not None:
            self._fcnt(known, up)
        if up.f_port not in (lw.PORT_WHOLE, lw.PORT_FRAGMENT, lw.PORT_POLL):
            self.counters["bad"] += 1
            self._count(self.skipped, "fport")
            self.throttle.warning(
                now, "%s: FPort %s is not lowbw's (1, 2, 3): skipped", up.device_id, up.f_port
            )
            return
        peer = self._peer(up.device_id, now)
        peer.heard = now
        peer.queued = 0
        self._fcnt(peer, up)
        if up.f_port == lw.PORT_POLL:
            self.counters["polls"] += 1
            return
        before = peer.reasm.dropped + peer.reasm.bad
        data = peer.reasm.push(up.f_port, up.payload, now)
        lost = peer.reasm.dropped + peer.reasm.bad - before
        self.counters["fragments_dropped"] += lost
        if lost:
            self.skipped["fragment"] = self.skipped.get("fragment", 0) + lost
        if data is None:
            return
        if not data or data[0] & 0xC0 == 0xC0:
            # Not a lowbw frame kind (lowbw.wire.frames): nothing to give the proxy.
            self.counters["bad"] += 1
            self._count(self.skipped, "not_lowbw")
            return
        try:
            peer.sock.send(data)
        except OSError as exc:
            self._count(self.dropped, "udp_error")
            log.warning("%s: cannot send to the proxy: %s", up.device_id, exc)
            return
        self.counters["datagrams_up"] += 1
        self.counters["bytes_up"] += len(data)
        peer.up += 1
        peer.up_bytes += len(data)
        log.debug("%s: %d-byte datagram to the proxy", up.device_id, len(data))

    def _fcnt(self, peer: _Peer, up: Uplink) -> None:
        """Count uplinks missing by the frame counter (the same session, a jump of more than 1)."""
        if up.f_cnt is None:
            return
        if peer.f_cnt is not None and peer.session == up.session and up.f_cnt > peer.f_cnt + 1:
            self.counters["fcnt_gaps"] += up.f_cnt - peer.f_cnt - 1
        if peer.session != up.session or peer.f_cnt is None or up.f_cnt > peer.f_cnt:
            peer.session, peer.f_cnt = up.session, up.f_cnt

    def _peer(self, device_id: str, now: float) -> _Peer:
        peer = self.peers.get(device_id)
        if peer is not None:
            self.peers.move_to_end(device_id)
            return peer
        if len(self.peers) >= self.cfg.max_devices:
            _old_id, old = self.peers.popitem(last=False)
            self._close(old)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect((self.cfg.proxy_host, self.cfg.proxy_port))
        sock.setblocking(False)
        peer = _Peer(device_id, sock, now)
        self.peers[device_id] = peer
        self.sel.register(sock, selectors.EVENT_READ, peer)
        return peer

    def _close(self, peer: _Peer) -> None:
        self.counters["peers_dropped"] += 1
        try:
            self.sel.unregister(peer.sock)
        except (KeyError, ValueError):
            pass
        peer.sock.close()

    def _expire(self, now: float) -> None:
        for device_id, peer in list(self.peers.items()):
            before = peer.reasm.dropped
            peer.reasm.expire(now, self.cfg.reassembly_timeout)
            if peer.reasm.dropped > before:
                self.counters["fragments_dropped"] += peer.reasm.dropped - before
                self.skipped["fragment"] = self.skipped.get("fragment", 0) + peer.reasm.dropped - before
            if now - peer.heard > self.cfg.idle_timeout:
                del self.peers[device_id]
                self._close(peer)

    def _from_proxy(self, peer: _Peer) -> None:
        for _ in range(16):
            try:
                data = peer.sock.recv(2048)
            except OSError:
                return
            if not data:
                return
            self.counters["datagrams_down"] += 1
            self.counters["bytes_down"] += len(data)
            peer.down += 1
            peer.down_bytes += len(data)
            try:
                frames = lw.fragment(data, self.cfg.downlink_max, peer.seq)
            except lw.FragmentError as exc:
                self.counters["bad"] += 1
                self._count(self.dropped, "answer_too_large")
                log.warning("%s: answer not sent: %s", peer.device_id, exc)
                continue
            peer.seq = (peer.seq + 1) & 15
            if peer.queued + len(frames) > self.cfg.max_queued:
                self.counters["held_back"] += 1
                log.warning("%s: %d downlinks already queued: answer dropped", peer.device_id, peer.queued)
                continue
            peer.queued += len(frames)
            self._publish(peer.device_id, frames)

    def _publish(self, device_id: str, frames: list[tuple[int, bytes]]) -> None:
        fmt, app = self.cfg.format, self.cfg.application
        if fmt == formats.TTS:
            items = []
            for port, payload in frames:
                topic, body = formats.downlink_message(
                    fmt, app, device_id, formats.Downlink(port, payload), "gw"
                )
                items.extend(json.loads(body)["downlinks"])
            self.client.publish(topic, json.dumps({"downlinks": items}, separators=(",", ":")), qos=0)
        else:
            for port, payload in frames:
                topic, body = formats.downlink_message(
                    fmt, app, device_id, formats.Downlink(port, payload), formats.new_ref()
                )
                self.client.publish(topic, body, qos=1)
        self.counters["downlinks"] += len(frames)
        log.debug("%s: %d downlink(s) queued", device_id, len(frames))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lowbw lorawan-gateway",
        description=(
            "Carry lowbw datagrams between a LoRaWAN network server (The Things Stack v3 or "
            "ChirpStack v4, over its MQTT interface) and the lowbw proxy: uplinks' FRMPayload "
            "(fragments reassembled) to the proxy over UDP, one socket per device; the proxy's "
            "answers back as class-A downlinks."
        ),
        epilog="See docs/lorawan.md and examples/lorawan-gateway-*.toml. Exit status: 0 stopped by a "
        "signal, 1 failure (bad config included), 2 bad usage.",
    )
    p.add_argument("--config", required=True, metavar="FILE", help="gateway config (TOML)")
    p.add_argument("--check", action="store_true", help="validate the config, then exit")
    p.add_argument("--stats", metavar="FILE", help="write counters as JSON to FILE when stopping")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        cfg = load_config(args.config)
    except adapter_config.AdapterConfigError as exc:
        print("lowbw lorawan-gateway: error: %s" % exc.message, file=sys.stderr)
        return 1
    if args.check:
        print("%s: OK (%s, application %s)" % (args.config, cfg.format, cfg.application))
        return 0
    return serve(
        "LoRaWAN gateway",
        "lowbw lorawan-gateway",
        cfg.metrics,
        lambda: LorawanGateway(cfg),
        args.stats,
        log,
        lambda adapter, started: lorawan_gateway_families(adapter, cfg.metrics, started),
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
