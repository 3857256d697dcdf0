"""The proxy's Prometheus metrics (``[metrics]`` in proxy.toml), collected at scrape time.

The proxy's modules count in plain ints and dicts as they work (a reading, a
datagram, a handshake); nothing here runs per datagram. When Prometheus
scrapes, ``ProxyMetrics.collect`` turns those counts and the live tables
(sessions, observations, parked syncs) into metric families. Where each count
is kept:

==============================  ===============================================
``TransportStats``              datagrams and bytes both ways, drops by reason,
(transport.py)                  authentication failures per device, per-device
                                traffic and last seen (``DeviceTraffic``)
``SessionTable`` (sessions.py)  handshakes by kind and outcome, commands
                                queued / delivered / expired
``ReadingCounts`` (here)        readings received / acknowledged / rejected by
                                reason, duplicates, events posted, per-device
                                readings and the last one (the status page)
``Homeserver.on_result``        answers by pool and status, latency histogram
``Registry.on_timing``          time per registry operation (histogram)
==============================  ===============================================

Cardinality: per-device series exist only for enrolled, unrevoked devices
(``SessionTable.on_revoked`` drops a revoked device's counts, and scrapes name
only devices in the table), and not at all with ``per_device = false``.
Everything else has fixed label sets (reasons, outcomes, HTTP statuses, pools,
registry operations).

Metric names are listed, with their meaning, in docs/operator.md (*Metrics*).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from lowbw.metrics import (
    FAST_BUCKETS,
    HTTP_BUCKETS,
    CallbackCollector,
    Histogram,
    airtime,
    histogram_family,
    new_registry,
    up_down,
)
from lowbw.proxy.transport import DROP_REASONS, DeviceTraffic

PREFIX = "lowbw_proxy_"
# Why a reading was not acknowledged (lowbw_proxy_readings_rejected_total{reason}).
READING_REJECT_REASONS = (
    "malformed",
    "schema",
    "no_room",
    "no_credential",
    "encryption_unavailable",
    "homeserver_unavailable",
    "homeserver_timeout",
    "homeserver_error",
    "busy",
)
# What the status page shows as the last reading of a device in an encrypted room.
ENCRYPTED_TEXT = "(end-to-end encrypted)"


class DeviceReadings:
    """One device's readings: acknowledged, refused, and the last one acknowledged."""

    __slots__ = ("readings", "rejected", "last_text", "last_at")

    def __init__(self) -> None:
        self.readings = 0
        self.rejected = 0
        self.last_text = ""
        self.last_at = 0.0


class ReadingCounts:
    """Readings as ``resources.post_reading`` decides them (plain counters)."""

    def __init__(self) -> None:
        self.received = 0
        self.acked = 0
        self.duplicates = 0
        self.rejects: dict[str, int] = {}
        self.events: dict[str, int] = {}
        self.devices: dict[str, DeviceReadings] = {}

    def _device(self, name: str) -> DeviceReadings:
        d = self.devices.get(name)
        if d is None:
            d = self.devices[name] = DeviceReadings()
        return d

    def acknowledged(self, device: str, n: int, last: dict[str, Any] | None, encrypted: bool) -> None:
        self.acked += n
        d = self._device(device)
        d.readings += n
        d.last_at = time.time()
        if encrypted:
            d.last_text = ENCRYPTED_TEXT
        elif last is not None:
            d.last_text = str(last.get("body", ""))

    def rejected(self, device: str, n: int, reason: str) -> None:
        self.rejects[reason] = self.rejects.get(reason, 0) + n
        self._device(device).rejected += n

    def posted(self, event_type: str) -> None:
        self.events[event_type] = self.events.get(event_type, 0) + 1

    def forget(self, device: str) -> None:
        self.devices.pop(device, None)


class History:
    """Per device, a bounded series of (time, readings, bytes up, bytes down) per interval.

    ``sample`` (a timer, every ``interval`` seconds) appends each device's
    increase since the previous sample; at most ``points`` are kept per
    device. ``series`` adds the interval in progress, so a page shows a
    reading at once. ``today`` counts since the start of the UTC day (or the
    proxy's start, whichever is later).
    """

    def __init__(self, interval: float, points: int) -> None:
        self.interval = interval
        self.points = max(1, points)
        self._series: dict[str, deque[tuple[float, int, int, int]]] = {}
        self._last: dict[str, tuple[int, int, int]] = {}
        self._last_time = time.time()
        self._day = self._utc_day(self._last_time)
        self._day_base: dict[str, tuple[int, int, int]] = {}

    @staticmethod
    def _utc_day(now: float) -> int:
        return int(now // 86400)

    def sample(self, now: float, current: dict[str, tuple[int, int, int]]) -> None:
        self.roll_day(now, current)
        for name, values in current.items():
            before = self._last.get(name, (0, 0, 0))
            delta = (values[0] - before[0], values[1] - before[1], values[2] - before[2])
            series = self._series.get(name)
            if series is None:
                series = self._series[name] = deque(maxlen=self.points)
            series.append((self._last_time, *delta))
            self._last[name] = values
        self._last_time = now

    def roll_day(self, now: float, current: dict[str, tuple[int, int, int]]) -> None:
        day = self._utc_day(now)
        if day != self._day:
            self._day = day
            self._day_base = dict(current)

    def today(self, name: str, values: tuple[int, int, int]) -> tuple[int, int, int]:
        base = self._day_base.get(name, (0, 0, 0))
        return values[0] - base[0], values[1] - base[1], values[2] - base[2]

    def series(self, name: str, values: tuple[int, int, int]) -> list[tuple[float, int, int, int]]:
        out = list(self._series.get(name, ()))
        before = self._last.get(name, (0, 0, 0))
        out.append((self._last_time, values[0] - before[0], values[1] - before[1], values[2] - before[2]))
        return out[-self.points :]

    def forget(self, name: str) -> None:
        self._series.pop(name, None)
        self._last.pop(name, None)
        self._day_base.pop(name, None)


class ProxyMetrics:
    """The proxy's registry, its collector and the counts it reads (module docstring).

    ``attach(server)`` once the proxy's pieces exist: it sets the hooks
    (homeserver answers, registry timings, per-device traffic) and keeps
    references to what gauges read. ``start_timers``/``stop_timers`` run the
    history sampling.
    """

    def __init__(
        self,
        *,
        link_bps: float,
        per_device: bool = True,
        history_interval: float = 300.0,
        history_points: int = 288,
        mode: str = "appservice",
        version: str = "",
    ) -> None:
        self.link_bps = float(link_bps)
        self.per_device = per_device
        self.mode = mode
        self.version = version
        self.started = time.time()
        self.readings = ReadingCounts()
        self.history = History(history_interval, history_points)
        self.hs_answers: dict[tuple[str, str], int] = {}
        self.hs_latency: dict[tuple[str, ...], Histogram] = {}
        self.registry_ops: dict[tuple[str, ...], Histogram] = {}
        self.registry = new_registry()
        self.registry.register(CallbackCollector(self.collect))
        # process_cpu_seconds_total, process_resident_memory_bytes, ... of this process.
        ProcessCollector(registry=self.registry)
        self._server: Any = None
        self._timer: asyncio.TimerHandle | None = None

    # -- hooks --------------------------------------------------------------------------

    def attach(self, server: Any) -> None:
        """Wire the counters into a started ``ProxyServer``'s pieces."""
        self._server = server
        server.transport.stats.devices = {}
        server.homeserver.on_result = self.homeserver_result
        server.registry.on_timing = self.registry_timing
        server.site.s.readings = self.readings
        server.table.on_revoked = self.forget_device

    def detach(self) -> None:
        server = self._server
        if server is not None and server.registry is not None:
            server.registry.on_timing = None
        self._server = None

    def homeserver_result(self, pool: str, status: str, seconds: float) -> None:
        key = (pool, status)
        self.hs_answers[key] = self.hs_answers.get(key, 0) + 1
        hist = self.hs_latency.get((pool,))
        if hist is None:
            hist = self.hs_latency[(pool,)] = Histogram(HTTP_BUCKETS)
        hist.observe(seconds)

    def registry_timing(self, operation: str, seconds: float) -> None:
        hist = self.registry_ops.get((operation,))
        if hist is None:
            hist = self.registry_ops[(operation,)] = Histogram(FAST_BUCKETS)
        hist.observe(seconds)

    def forget_device(self, name: str) -> None:
        """A revoked device: its per-device counts and history go."""
        self.readings.forget(name)
        self.history.forget(name)
        server = self._server
        if server is not None and server.transport is not None:
            server.transport.stats.forget_device(name)

    # -- history --------------------------------------------------------------------------

    def start_timers(self) -> None:
        self._schedule()

    def stop_timers(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.history.interval, self._tick)

    def _tick(self) -> None:
        try:
            self.history.sample(time.time(), self.device_totals())
        finally:
            self._schedule()

    def airtime(self, nbytes: int) -> float:
        """Seconds ``nbytes`` of datagrams spend on the configured radio."""
        return airtime(nbytes, self.link_bps)

    def traffic(self, name: str) -> DeviceTraffic | None:
        server = self._server
        if server is None or server.transport is None or server.transport.stats.devices is None:
            return None
        found: DeviceTraffic | None = server.transport.stats.devices.get(name)
        return found

    def device_totals(self) -> dict[str, tuple[int, int, int]]:
        """(readings, bytes up, bytes down) so far per enrolled device."""
        server = self._server
        out: dict[str, tuple[int, int, int]] = {}
        if server is None or server.table is None:
            return out
        for name in server.table.devices:
            d = self.readings.devices.get(name)
            t = self.traffic(name)
            out[name] = (d.readings if d else 0, t.rx_bytes if t else 0, t.tx_bytes if t else 0)
        return out

    # -- scrape ---------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        server = self._server
        yield from self._info()
        if server is None or server.table is None or server.transport is None:
            return
        yield from self._traffic(server)
        yield from self._readings()
        yield from self._homeserver(server)
        yield from self._handshakes(server)
        yield from self._gauges(server)
        yield from self._commands(server)
        yield histogram_family(
            PREFIX + "registry_operation_duration_seconds",
            "Time per registry (SQLite) operation.",
            ["operation"],
            dict(self.registry_ops),
        )
        if self.per_device:
            yield from self._per_device(server)

    def _info(self) -> Iterable[Metric]:
        info = InfoMetricFamily(PREFIX + "build", "The running proxy.")
        info.add_metric([], {"version": self.version, "mode": self.mode})
        yield info
        yield GaugeMetricFamily(
            PREFIX + "start_time_seconds", "When the proxy started (Unix time).", value=self.started
        )
        yield GaugeMetricFamily(
            PREFIX + "link_bps",
            "The radio bit rate airtime is estimated with ([proxy] link_bps).",
            value=self.link_bps,
        )

    def _traffic(self, server: Any) -> Iterable[Metric]:
        st = server.transport.stats
        yield up_down(PREFIX + "datagrams", "UDP datagrams.", st.rx, st.tx)
        yield up_down(PREFIX + "bytes", "UDP payload bytes.", st.rx_bytes, st.tx_bytes)
        yield up_down(
            PREFIX + "airtime_seconds",
            "Estimated airtime of all datagrams at link_bps (bytes x 8 / link_bps).",
            self.airtime(st.rx_bytes),
            self.airtime(st.tx_bytes),
        )
        dropped = CounterMetricFamily(
            PREFIX + "datagrams_dropped", "Datagrams dropped without an answer, by reason.", labels=["reason"]
        )
        for reason in sorted(set(DROP_REASONS) | set(st.dropped)):
            dropped.add_metric([reason], st.dropped.get(reason, 0))
        yield dropped

    def _readings(self) -> Iterable[Metric]:
        r = self.readings
        yield CounterMetricFamily(
            PREFIX + "readings_received",
            "Sensor readings received (in requests that decoded).",
            value=r.received,
        )
        yield CounterMetricFamily(
            PREFIX + "readings_acknowledged",
            "Sensor readings answered 2.04 (stored as events).",
            value=r.acked,
        )
        yield CounterMetricFamily(
            PREFIX + "readings_duplicate",
            "Readings acknowledged again without a new event (a retry of one already sent).",
            value=r.duplicates,
        )
        rejected = CounterMetricFamily(
            PREFIX + "readings_rejected",
            "Readings not acknowledged, by reason (a request that did not decode counts as one).",
            labels=["reason"],
        )
        for reason in sorted(set(READING_REJECT_REASONS) | set(r.rejects)):
            rejected.add_metric([reason], r.rejects.get(reason, 0))
        yield rejected
        events = CounterMetricFamily(
            PREFIX + "events_posted",
            "Room events the proxy posted for readings, by event type.",
            labels=["type"],
        )
        for etype in sorted(set(r.events) | {"m.room.message"}):
            events.add_metric([etype], r.events.get(etype, 0))
        yield events

    def _homeserver(self, server: Any) -> Iterable[Metric]:
        answers = CounterMetricFamily(
            PREFIX + "homeserver_responses",
            "Homeserver requests by connection pool and outcome (HTTP status, or timeout, "
            "unreachable, too_large, not_sent, cancelled).",
            labels=["pool", "status"],
        )
        for (pool, status), n in sorted(self.hs_answers.items()):
            answers.add_metric([pool, status], n)
        yield answers
        yield histogram_family(
            PREFIX + "homeserver_request_duration_seconds",
            "Homeserver request latency by connection pool.",
            ["pool"],
            dict(self.hs_latency),
        )
        conns = GaugeMetricFamily(
            PREFIX + "homeserver_connections_in_use", "Homeserver connections busy now.", labels=["pool"]
        )
        hs = server.homeserver
        if hs is not None:
            for pool in ("readings", "other"):
                conns.add_metric([pool], hs.pool_in_use(pool))
        yield conns

    def _handshakes(self, server: Any) -> Iterable[Metric]:
        from lowbw.proxy.sessions import HS_OK

        family = CounterMetricFamily(
            PREFIX + "handshakes",
            "Handshake messages by kind (ik, kk, xx1, xx3, other) and outcome.",
            labels=["kind", "outcome"],
        )
        counts = dict(server.table.handshake_counts)
        counts.setdefault(("ik", HS_OK), 0)
        for (kind, outcome), n in sorted(counts.items()):
            family.add_metric([kind, outcome], n)
        yield family

    def _gauges(self, server: Any) -> Iterable[Metric]:
        table = server.table
        site = server.site
        established = sum(1 for a in table.by_sid.values() if a.pending is None)
        sessions = GaugeMetricFamily(PREFIX + "sessions", "Live Noise sessions.", labels=["state"])
        sessions.add_metric(["established"], established)
        sessions.add_metric(["handshake"], len(table.by_sid) - established)
        yield sessions
        yield GaugeMetricFamily(
            PREFIX + "devices_enrolled",
            "Enrolled devices and client keys (not revoked).",
            value=len(table.devices),
        )
        yield GaugeMetricFamily(
            PREFIX + "pairings_pending", "XX pairings waiting for message 3.", value=table.pairings_pending()
        )
        if site is not None:
            yield GaugeMetricFamily(
                PREFIX + "observations",
                "Observe registrations (command queues).",
                value=site.observations_total(),
            )
            yield GaugeMetricFamily(
                PREFIX + "parked_requests",
                "Client-proxy syncs parked at the proxy.",
                value=site.parked_total(),
            )
            yield GaugeMetricFamily(
                PREFIX + "requests_in_flight",
                "Device requests being worked on.",
                value=site.in_flight_total(),
            )
            yield GaugeMetricFamily(
                PREFIX + "blockwise_uploads", "Unfinished block-wise uploads.", value=site.uploads_total()
            )
        yield GaugeMetricFamily(
            PREFIX + "handshake_sources", "Per-source handshake budgets tracked.", value=table.guard.sources()
        )

    def _commands(self, server: Any) -> Iterable[Metric]:
        table = server.table
        yield CounterMetricFamily(
            PREFIX + "commands_queued", "Commands queued for devices.", value=table.commands_queued
        )
        yield CounterMetricFamily(
            PREFIX + "commands_delivered",
            "Commands the device acknowledged (POST x).",
            value=table.commands_delivered,
        )
        yield CounterMetricFamily(
            PREFIX + "commands_expired",
            "Commands that can never be delivered: still pending when their device was revoked.",
            value=table.commands_expired,
        )
        yield GaugeMetricFamily(
            PREFIX + "commands_pending",
            "Commands waiting for their devices.",
            value=table.commands_pending_total(),
        )

    def _per_device(self, server: Any) -> Iterable[Metric]:
        table = server.table
        stats = server.transport.stats
        names = sorted(table.devices)
        seen = GaugeMetricFamily(
            PREFIX + "device_last_seen_timestamp_seconds",
            "When a datagram of the device last arrived (Unix time; absent before the first).",
            labels=["device"],
        )
        nbytes = CounterMetricFamily(
            PREFIX + "device_bytes", "UDP payload bytes per device.", labels=["device", "direction"]
        )
        dgrams = CounterMetricFamily(
            PREFIX + "device_datagrams", "Datagrams per device.", labels=["device", "direction"]
        )
        air = CounterMetricFamily(
            PREFIX + "device_airtime_seconds",
            "Estimated airtime per device at link_bps.",
            labels=["device", "direction"],
        )
        readings = CounterMetricFamily(
            PREFIX + "device_readings", "Readings acknowledged per device.", labels=["device"]
        )
        rejected = CounterMetricFamily(
            PREFIX + "device_readings_rejected", "Readings not acknowledged per device.", labels=["device"]
        )
        auth = CounterMetricFamily(
            PREFIX + "device_auth_failures",
            "Transport frames naming the device's session that failed authentication.",
            labels=["device"],
        )
        devices = stats.devices or {}
        for name in names:
            t = devices.get(name)
            if t is not None and t.last_seen:
                seen.add_metric([name], t.last_seen)
            rx_b, tx_b = (t.rx_bytes, t.tx_bytes) if t else (0, 0)
            nbytes.add_metric([name, "up"], rx_b)
            nbytes.add_metric([name, "down"], tx_b)
            dgrams.add_metric([name, "up"], t.rx if t else 0)
            dgrams.add_metric([name, "down"], t.tx if t else 0)
            air.add_metric([name, "up"], self.airtime(rx_b))
            air.add_metric([name, "down"], self.airtime(tx_b))
            d = self.readings.devices.get(name)
            readings.add_metric([name], d.readings if d else 0)
            rejected.add_metric([name], d.rejected if d else 0)
            auth.add_metric([name], stats.auth_failures.get(name, 0))
        yield from (seen, nbytes, dgrams, air, readings, rejected, auth)
