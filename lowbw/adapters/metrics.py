"""The adapters' Prometheus metrics (``[metrics]`` in their TOML configs), collected at scrape time.

``lowbw serial-gateway``, ``lowbw mqtt-bridge`` and ``lowbw lorawan-gateway``
count in plain ints and dicts as they work (their ``counters``, the stats
file's contents); nothing here runs per datagram or per message. When
Prometheus scrapes, the collector of each command (``serial_families``,
``bridge_families``, ``lorawan_gateway_families``) turns those counts and the
live tables (peers, device queues, the outbox) into metric families under its
own prefix: ``lowbw_serial_``, ``lowbw_mqtt_``, ``lowbw_lorawan_``.

The adapters run a ``selectors`` loop in the main thread (and paho's thread
for MQTT), not asyncio, so ``MetricsThread`` runs ``lowbw.metrics.MetricsServer``
on an event loop of its own in a daemon thread. A scrape reads the counters
from that thread: every read is of an int or a C-level copy of a dict or list
(``dict(d)``, ``list(d.values())``), atomic under the GIL, so a scrape sees
each counter as it was at some instant of the scrape, never a torn table.

Access rules, listen syntax and defaults are the proxy's (``lowbw.metrics``):
off unless ``listen`` is set, a bare port is 127.0.0.1, a listener off
loopback needs ``token``. Per-device series (``device`` label) can be
switched off with ``per_device = false``; they exist only for the devices the
adapter speaks for now (configured or enrolled links, the current peers), so
their number is bounded by ``max_devices`` or the config.

Metric names are listed, with their meaning, in docs/operator.md (*Adapters*).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from lowbw.metrics import (
    CallbackCollector,
    MetricsConfigError,
    MetricsServer,
    airtime,
    check_exposure,
    new_registry,
    parse_listen,
    up_down,
)
from lowbw.wire.errors import LowbwError

SERIAL = "lowbw_serial_"
MQTT = "lowbw_mqtt_"
LORAWAN = "lowbw_lorawan_"

# Fixed label values (every one is exported, at 0 until it happens).
SERIAL_SKIP_REASONS = ("malformed", "oversize", "bad_escape", "bad_line", "line_too_long")
SERIAL_DROP_REASONS = ("output_full", "device_evicted", "udp_error")
BRIDGE_SKIP_REASONS = (
    "topic_not_utf8",
    "too_large",
    "unmapped",
    "out_of_range",
    "retained",
    "bad_event",
    "not_allowed",
    "unknown_device",
)
LORAWAN_OUTCOMES = ("queued", "sent", "acked", "nacked", "failed")
GATEWAY_SKIP_REASONS = ("bad_event", "fport", "not_lowbw", "fragment")
GATEWAY_DROP_REASONS = ("held_back", "answer_too_large", "udp_error", "device_evicted")


class MetricsStartError(LowbwError):
    """The metrics listener could not be started (address in use, ...)."""


@dataclass
class MetricsSettings:
    """``[metrics]`` of an adapter config."""

    host: str
    port: int
    token: str = ""
    per_device: bool = True
    link_bps: float = 0.0  # 0: the adapter's own default (docs/adapters.md)

    def __repr__(self) -> str:
        # Never the token.
        return "MetricsSettings(%s:%d, token=%s, per_device=%s)" % (
            self.host,
            self.port,
            "set" if self.token else "none",
            self.per_device,
        )


def load_metrics(top: Any) -> MetricsSettings | None:
    """The optional ``[metrics]`` table (``top``: the config's top-level ``_Section``)."""
    sec = top.sub("metrics")
    if sec is None:
        return None
    raw = sec.raw("listen")
    token = sec.text("token", "") or ""
    token_file = sec.path_value("token_file")
    if token_file is not None:
        if token:
            sec.fail("token_file", "give token or token_file, not both")
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeError) as exc:
            sec.fail("token_file", "cannot read %s (%s)" % (token_file, exc))
    per_device = sec.boolean("per_device", True)
    link_bps = sec.number("link_bps", 0.0, 0.0, 1e9)
    sec.done()
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        sec.fail("listen", "expected HOST:PORT, [IPv6]:PORT or a port")
    try:
        host, port = parse_listen(raw, "listen")
        check_exposure(host, token, "[metrics]")
    except MetricsConfigError as exc:
        sec.fail("listen", exc.message)
    return MetricsSettings(host=host, port=port, token=token, per_device=per_device, link_bps=link_bps)


class MetricsThread:
    """``MetricsServer`` on its own event loop in a daemon thread (module docstring).

    ``collect`` is set (or replaced) with ``attach`` once the adapter exists;
    until then a scrape has the process metrics only.
    """

    def __init__(self, settings: MetricsSettings, what: str) -> None:
        self.settings = settings
        self.what = what
        self._collect: Callable[[], Iterable[Metric]] | None = None
        self.registry = new_registry()
        self.registry.register(CallbackCollector(self._families))
        ProcessCollector(registry=self.registry)
        self.server = MetricsServer(self.registry, settings.host, settings.port, token=settings.token)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def attach(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def _families(self) -> Iterable[Metric]:
        collect = self._collect
        return collect() if collect is not None else ()

    def start(self) -> int:
        """Listen; return the port. MetricsStartError if the address cannot be bound."""
        started = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.server.start())
            except BaseException as exc:  # noqa: BLE001 - handed to start()'s caller
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.server.stop())
                loop.close()

        self._thread = threading.Thread(target=main, name="lowbw-metrics", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            exc = failure[0]
            self._thread.join(5)
            self._thread = None
            why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise MetricsStartError(
                "cannot listen on tcp %s:%d for metrics: %s (set [metrics] listen)"
                % (self.settings.host, self.settings.port, why.lower() if why else why)
            )
        return self.server.port

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
        self._thread = None

    @property
    def url(self) -> str:
        return self.server.url


# ---- building blocks --------------------------------------------------------------------


def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def by_label(
    family: CounterMetricFamily | GaugeMetricFamily, counts: dict[str, int], fixed: Iterable[str] = ()
) -> CounterMetricFamily | GaugeMetricFamily:
    for key in sorted(set(fixed) | set(counts)):
        family.add_metric([key], counts.get(key, 0))
    return family


def common(prefix: str, what: str, started: float, link_bps: float) -> Iterator[Metric]:
    yield gauge(prefix + "start_time_seconds", "When the %s started (Unix time)." % what, started)
    yield gauge(
        prefix + "link_bps",
        "The bit rate airtime is estimated with (0: each device's own link_bps).",
        link_bps,
    )


def links_families(prefix: str, links: dict[str, Any], link_bps: float, per_device: bool) -> Iterator[Metric]:
    """Readings, queue depth and traffic of the enrolled devices an adapter speaks for (``DeviceLink``)."""
    rows = []
    for name, link in sorted(dict(links).items()):
        c = dict(link.counters)
        dc = dict(link.device.counters)
        bps = link_bps or float(getattr(link.cfg, "link_bps", 0) or 0)
        rows.append((name, link, c, dc, bps))
    queued = sum(r[2].get("queued", 0) for r in rows)
    acked = sum(r[2].get("acked", 0) for r in rows)
    rejected: dict[str, int] = {}
    dropped: dict[str, int] = {}
    for _n, link, _c, _dc, _b in rows:
        for k, v in dict(link.rejected_by).items():
            rejected[k] = rejected.get(k, 0) + v
        for k, v in dict(link.dropped_by).items():
            dropped[k] = dropped.get(k, 0) + v
    yield counter(prefix + "readings_queued", "Readings durably queued in a device's store.", queued)
    yield counter(
        prefix + "readings_acknowledged",
        "Readings the proxy acknowledged (each an event in the room).",
        acked,
    )
    yield by_label(
        CounterMetricFamily(
            prefix + "readings_rejected",
            "Readings the proxy refused, by CoAP response code (or reset).",
            labels=["code"],
        ),
        rejected,
    )
    yield by_label(
        CounterMetricFamily(
            prefix + "readings_dropped",
            "Readings dropped by the device client, by reason.",
            labels=["reason"],
        ),
        dropped,
        ("queue_full",),
    )
    yield gauge(
        prefix + "queue_depth",
        "Readings not yet acknowledged (the durable device queues plus those in flight).",
        sum(_pending(r[1]) for r in rows),
    )
    up = sum(r[3].get("bytes_up", 0) for r in rows)
    down = sum(r[3].get("bytes_down", 0) for r in rows)
    yield up_down(
        prefix + "datagrams",
        "UDP datagrams between the devices and the proxy.",
        sum(r[1].link.sent for r in rows),
        sum(r[1].link.received for r in rows),
    )
    yield up_down(prefix + "bytes", "Their UDP payload bytes.", up, down)
    yield up_down(
        prefix + "airtime_seconds",
        "Estimated airtime of those datagrams (bytes x 8 / link_bps).",
        sum(airtime(r[3].get("bytes_up", 0), r[4]) for r in rows),
        sum(airtime(r[3].get("bytes_down", 0), r[4]) for r in rows),
    )
    yield counter(
        prefix + "retransmissions",
        "Requests the device clients sent again (no answer in time).",
        sum(r[3].get("retransmissions", 0) for r in rows),
    )
    yield counter(
        prefix + "handshakes",
        "Noise handshakes the device clients made.",
        sum(r[3].get("handshakes", 0) for r in rows),
    )
    yield gauge(prefix + "devices", "Enrolled devices the adapter speaks for.", len(rows))
    if not per_device:
        return
    d_readings = CounterMetricFamily(
        prefix + "device_readings", "Readings per device and outcome.", labels=["device", "outcome"]
    )
    d_queue = GaugeMetricFamily(
        prefix + "device_queue_depth", "Readings not yet acknowledged.", labels=["device"]
    )
    d_dgrams = CounterMetricFamily(
        prefix + "device_datagrams", "UDP datagrams per device.", labels=["device", "direction"]
    )
    d_bytes = CounterMetricFamily(
        prefix + "device_bytes", "UDP payload bytes per device.", labels=["device", "direction"]
    )
    d_air = CounterMetricFamily(
        prefix + "device_airtime_seconds", "Estimated airtime per device.", labels=["device", "direction"]
    )
    for name, link, c, dc, bps in rows:
        for outcome, key in (
            ("queued", "queued"),
            ("acknowledged", "acked"),
            ("rejected", "rejected"),
            ("dropped", "dropped"),
        ):
            d_readings.add_metric([name, outcome], c.get(key, 0))
        d_queue.add_metric([name], _pending(link))
        d_dgrams.add_metric([name, "up"], link.link.sent)
        d_dgrams.add_metric([name, "down"], link.link.received)
        d_bytes.add_metric([name, "up"], dc.get("bytes_up", 0))
        d_bytes.add_metric([name, "down"], dc.get("bytes_down", 0))
        d_air.add_metric([name, "up"], airtime(dc.get("bytes_up", 0), bps))
        d_air.add_metric([name, "down"], airtime(dc.get("bytes_down", 0), bps))
    yield from (d_readings, d_queue, d_dgrams, d_bytes, d_air)


def _pending(link: Any) -> int:
    try:
        return int(link.device.pending())
    except (RuntimeError, AttributeError):  # a queue changing under the scrape: next time
        return 0


def broker_families(prefix: str, connected: bool, counters: dict[str, int]) -> Iterator[Metric]:
    yield gauge(
        prefix + "broker_connected", "1 while connected to the MQTT broker, else 0.", 1 if connected else 0
    )
    yield counter(
        prefix + "broker_connects", "Successful connections to the broker.", counters.get("connects", 0)
    )
    yield counter(
        prefix + "broker_connect_failures",
        "Connection attempts that failed (refused, unreachable, TLS, credentials).",
        counters.get("connect_failures", 0),
    )
    yield counter(
        prefix + "broker_disconnects", "Connections to the broker lost.", counters.get("disconnects", 0)
    )


# ---- lowbw serial-gateway -------------------------------------------------------------------


def serial_families(gw: Any, settings: MetricsSettings, started: float) -> Iterator[Metric]:
    """``lowbw_serial_*`` of a ``SerialGateway``."""
    s = gw.cfg.serial
    line_bps = s.baud * 8 / s.bits_per_byte
    bps = settings.link_bps or line_bps
    c = dict(gw.counters)
    yield from common(SERIAL, "serial gateway", started, bps)
    yield gauge(SERIAL + "port_open", "1 while the serial port is open, else 0.", 1 if gw.port.is_open else 0)
    yield counter(SERIAL + "port_opens", "Times the serial port was opened.", gw.port.opens)
    yield counter(
        SERIAL + "port_losses", "Times the serial port went away (unplugged, I/O error).", gw.port.losses
    )
    yield up_down(
        SERIAL + "line_bytes",
        "Bytes on the serial line (up: read from the port; down: written to it).",
        c.get("bytes_in", 0),
        c.get("bytes_out", 0),
    )
    yield up_down(
        SERIAL + "line_airtime_seconds",
        "Time the serial line was busy at baud / bits_per_byte.",
        c.get("bytes_in", 0) * s.bits_per_byte / s.baud,
        c.get("bytes_out", 0) * s.bits_per_byte / s.baud,
    )
    yield gauge(SERIAL + "output_queue_bytes", "Bytes waiting to be written to the port.", len(gw.out))
    yield gauge(SERIAL + "output_buffer_bytes", "The output buffer's size (serial.out_buffer).", s.out_buffer)
    skipped = {
        "malformed": c.get("malformed", 0),
        "bad_line": c.get("lines_bad", 0),
    }
    if gw.decoder is not None:
        skipped["oversize"] = gw.decoder.oversize
        skipped["bad_escape"] = gw.decoder.bad_escape
    if gw.splitter is not None:
        skipped["line_too_long"] = gw.splitter.too_long
    yield by_label(
        CounterMetricFamily(
            SERIAL + "input_skipped", "Bad input from the port skipped, by reason.", labels=["reason"]
        ),
        skipped,
        SERIAL_SKIP_REASONS,
    )
    dropped = {
        "output_full": c.get("dropped_out", 0),
        "device_evicted": c.get("dropped_peers", 0),
        "udp_error": c.get("udp_errors", 0),
    }
    yield by_label(
        CounterMetricFamily(SERIAL + "dropped", "Frames or devices dropped, by reason.", labels=["reason"]),
        dropped,
        SERIAL_DROP_REASONS,
    )
    yield counter(SERIAL + "commands", "Commands for the line-mode device.", c.get("commands", 0))
    if gw.link is not None:
        yield counter(SERIAL + "lines", "Lines read from the port.", c.get("lines", 0))
        yield from links_families(SERIAL, {gw.link.name: gw.link}, settings.link_bps, settings.per_device)
        return
    # modem mode: datagrams between the devices behind the modem and the proxy.
    yield up_down(
        SERIAL + "datagrams",
        "lowbw datagrams (up: SLIP frames from the port to the proxy; down: the proxy's answers).",
        c.get("frames_in", 0),
        c.get("frames_out", 0),
    )
    yield up_down(
        SERIAL + "bytes",
        "Their payload bytes.",
        c.get("datagram_bytes_up", 0),
        c.get("datagram_bytes_down", 0),
    )
    yield up_down(
        SERIAL + "airtime_seconds",
        "Estimated airtime of those datagrams (bytes x 8 / link_bps).",
        airtime(c.get("datagram_bytes_up", 0), bps),
        airtime(c.get("datagram_bytes_down", 0), bps),
    )
    peers = list(dict(gw.peers).values())
    yield gauge(SERIAL + "devices", "Link addresses with a UDP socket towards the proxy now.", len(peers))
    if not settings.per_device:
        return
    d_dgrams = CounterMetricFamily(
        SERIAL + "device_datagrams",
        "Datagrams per link address (hex; counts restart when an idle device's socket is closed).",
        labels=["device", "direction"],
    )
    d_bytes = CounterMetricFamily(
        SERIAL + "device_bytes", "Datagram bytes per link address.", labels=["device", "direction"]
    )
    d_air = CounterMetricFamily(
        SERIAL + "device_airtime_seconds",
        "Estimated airtime per link address.",
        labels=["device", "direction"],
    )
    for p in sorted(peers, key=lambda p: p.addr):
        name = p.addr.hex() or "-"
        d_dgrams.add_metric([name, "up"], p.up)
        d_dgrams.add_metric([name, "down"], p.down)
        d_bytes.add_metric([name, "up"], p.up_bytes)
        d_bytes.add_metric([name, "down"], p.down_bytes)
        d_air.add_metric([name, "up"], airtime(p.up_bytes, bps))
        d_air.add_metric([name, "down"], airtime(p.down_bytes, bps))
    yield from (d_dgrams, d_bytes, d_air)


# ---- lowbw mqtt-bridge ----------------------------------------------------------------------


def bridge_families(bridge: Any, settings: MetricsSettings, started: float) -> Iterator[Metric]:
    """``lowbw_mqtt_*`` of an ``MqttBridge`` (with ``lowbw_mqtt_lorawan_*`` in a LoRaWAN format)."""
    c = dict(bridge.counters)
    yield from common(MQTT, "MQTT bridge", started, settings.link_bps)
    yield from broker_families(MQTT, bridge.connected, c)
    yield counter(MQTT + "messages_received", "MQTT messages received.", c.get("received", 0))
    yield counter(
        MQTT + "messages_queued", "Messages whose readings were durably queued.", c.get("queued", 0)
    )
    yield counter(
        MQTT + "messages_acknowledged", "Messages acknowledged to the broker (PUBACK).", c.get("acked", 0)
    )
    yield counter(
        MQTT + "messages_duplicate",
        "Redeliveries recognised and only acknowledged (already queued).",
        c.get("duplicates", 0),
    )
    yield by_label(
        CounterMetricFamily(
            MQTT + "messages_skipped",
            "Messages acknowledged without a reading, by reason.",
            labels=["reason"],
        ),
        dict(
            bridge.skipped,
            retained=c.get("retained_skipped", 0),
            not_allowed=c.get("not_allowed", 0),
            unknown_device=c.get("unknown_devices", 0),
        ),
        BRIDGE_SKIP_REASONS,
    )
    yield gauge(
        MQTT + "messages_held",
        "Messages waiting, unacknowledged, for room in a device queue (back-pressure).",
        len(bridge.pending),
    )
    yield gauge(
        MQTT + "outbox",
        "Commands waiting for the broker to acknowledge their publication.",
        len(bridge.state.outbox),
    )
    yield counter(MQTT + "commands", "Commands from the rooms.", c.get("commands", 0))
    yield counter(
        MQTT + "commands_published", "Commands the broker acknowledged.", c.get("commands_published", 0)
    )
    yield counter(MQTT + "readings", "Readings taken from messages.", c.get("readings", 0))
    yield from links_families(MQTT, bridge.links, settings.link_bps, settings.per_device)
    side = bridge.lorawan
    if side is None:
        return
    p = MQTT + "lorawan_"
    yield counter(p + "uplinks", "Uplink events from the network server.", c.get("uplinks", 0))
    yield counter(
        p + "fcnt_gaps",
        "Uplinks missing by the frame counter (lost before the bridge).",
        c.get("fcnt_gaps", 0),
    )
    yield counter(
        p + "fcnt_resets",
        "Frame counters that went back (new session, late or replayed uplink).",
        c.get("fcnt_resets", 0),
    )
    yield counter(p + "downlinks", "Downlinks queued for commands.", c.get("downlinks", 0))
    yield by_label(
        CounterMetricFamily(
            p + "downlink_outcomes", "Downlink events of ours, by outcome.", labels=["outcome"]
        ),
        dict(side.outcomes),
        LORAWAN_OUTCOMES,
    )
    yield counter(p + "commands_bad", "Commands that could not become a downlink.", c.get("commands_bad", 0))
    yield counter(p + "enrolled", "Devices enrolled automatically.", c.get("enrolled", 0))
    yield counter(p + "enroll_failures", "Automatic enrollments that failed.", c.get("enroll_failures", 0))
    yield counter(p + "other_events", "Other network-server events (join, ...).", c.get("other_events", 0))
    yield gauge(
        p + "awaiting_outcome", "Downlinks waiting for their final outcome.", len(side.state.awaiting)
    )


# ---- lowbw lorawan-gateway ------------------------------------------------------------------

DEFAULT_LORAWAN_BPS = 250.0  # EU868 DR0 (SF12, 125 kHz): the slowest, the usual case


def lorawan_gateway_families(gw: Any, settings: MetricsSettings, started: float) -> Iterator[Metric]:
    """``lowbw_lorawan_*`` of a ``LorawanGateway``."""
    c = dict(gw.counters)
    bps = settings.link_bps or DEFAULT_LORAWAN_BPS
    yield from common(LORAWAN, "LoRaWAN gateway", started, bps)
    yield from broker_families(LORAWAN, gw.connected, c)
    yield counter(LORAWAN + "uplinks", "Uplink events from the network server.", c.get("uplinks", 0))
    yield counter(
        LORAWAN + "uplinks_duplicate",
        "Uplinks seen before (the network server's key): skipped.",
        c.get("duplicates", 0),
    )
    yield counter(LORAWAN + "polls", "FPort 3 uplinks (open the receive windows only).", c.get("polls", 0))
    yield counter(
        LORAWAN + "fcnt_gaps",
        "Uplinks missing by the frame counter (lost on the way).",
        c.get("fcnt_gaps", 0),
    )
    yield counter(
        LORAWAN + "downlinks", "Downlink frames queued at the network server.", c.get("downlinks", 0)
    )
    yield up_down(
        LORAWAN + "datagrams",
        "lowbw datagrams (up: reassembled from uplinks, to the proxy; down: the proxy's answers).",
        c.get("datagrams_up", 0),
        c.get("datagrams_down", 0),
    )
    yield up_down(LORAWAN + "bytes", "Their bytes.", c.get("bytes_up", 0), c.get("bytes_down", 0))
    yield up_down(
        LORAWAN + "airtime_seconds",
        "Estimated airtime of those datagrams (bytes x 8 / link_bps; LoRaWAN headers not counted).",
        airtime(c.get("bytes_up", 0), bps),
        airtime(c.get("bytes_down", 0), bps),
    )
    yield by_label(
        CounterMetricFamily(
            LORAWAN + "input_skipped", "Uplinks or fragments skipped, by reason.", labels=["reason"]
        ),
        dict(gw.skipped),
        GATEWAY_SKIP_REASONS,
    )
    dropped = dict(gw.dropped)
    dropped["held_back"] = c.get("held_back", 0)
    dropped["device_evicted"] = c.get("peers_dropped", 0)
    yield by_label(
        CounterMetricFamily(LORAWAN + "dropped", "Answers or devices dropped, by reason.", labels=["reason"]),
        dropped,
        GATEWAY_DROP_REASONS,
    )
    peers = list(dict(gw.peers).values())
    yield gauge(LORAWAN + "devices", "LoRaWAN devices with a UDP socket towards the proxy.", len(peers))
    yield gauge(
        LORAWAN + "downlinks_queued",
        "Downlinks published since each device was last heard, summed (at most max_queued each).",
        sum(p.queued for p in peers),
    )
    if not settings.per_device:
        return
    d_dgrams = CounterMetricFamily(
        LORAWAN + "device_datagrams", "Datagrams per device.", labels=["device", "direction"]
    )
    d_bytes = CounterMetricFamily(
        LORAWAN + "device_bytes", "Datagram bytes per device.", labels=["device", "direction"]
    )
    d_air = CounterMetricFamily(
        LORAWAN + "device_airtime_seconds", "Estimated airtime per device.", labels=["device", "direction"]
    )
    d_queued = GaugeMetricFamily(
        LORAWAN + "device_downlinks_queued",
        "Downlinks published since the device was last heard.",
        labels=["device"],
    )
    for p in sorted(peers, key=lambda p: p.device_id):
        d_dgrams.add_metric([p.device_id, "up"], p.up)
        d_dgrams.add_metric([p.device_id, "down"], p.down)
        d_bytes.add_metric([p.device_id, "up"], p.up_bytes)
        d_bytes.add_metric([p.device_id, "down"], p.down_bytes)
        d_air.add_metric([p.device_id, "up"], airtime(p.up_bytes, bps))
        d_air.add_metric([p.device_id, "down"], airtime(p.down_bytes, bps))
        d_queued.add_metric([p.device_id], p.queued)
    yield from (d_dgrams, d_bytes, d_air, d_queued)


def start_metrics(settings: MetricsSettings | None, what: str) -> MetricsThread | None:
    """Start the listener (None if ``[metrics]`` is off); MetricsStartError if it cannot listen."""
    if settings is None:
        return None
    m = MetricsThread(settings, what)
    m.start()
    return m
