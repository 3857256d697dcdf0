"""The client-proxy's Prometheus metrics (``metrics_listen`` in its config), collected at scrape time.

As in the proxy (``lowbw.proxy.metrics``), nothing here runs per request or
per datagram: the client-proxy counts in plain ints and dicts as it works and
``ClientProxyMetrics.collect`` turns them into metric families when Prometheus
scrapes. Where each count is kept:

==============================  ===============================================
``LinkStats``, ``ClientLink``   datagrams and bytes both ways, handshakes,
(link.py)                       cookie replies, dead-link events, drops by
                                reason, sessions set up and forgotten
``ClientMessageManager``        retransmissions, the queue behind the exchange
(retransmit.py)                 under way
``HttpCounts`` (here)           the client's HTTP requests by method, route
                                class and status, their latency, what was
                                answered without the radio, requests that got
                                no usable answer, parked syncs
==============================  ===============================================

Cardinality is fixed: methods, route classes (``route_class``), reasons and
outcomes are closed sets, statuses are HTTP statuses.

Metric names are listed, with their meaning, in docs/operator.md (*Metrics*,
*Client-proxy*).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from lowbw.clientproxy.link import DROP_REASONS
from lowbw.metrics import (
    HTTP_BUCKETS,
    CallbackCollector,
    Histogram,
    airtime,
    histogram_family,
    new_registry,
    up_down,
)

PREFIX = "lowbw_clientproxy_"
METHOD_LABELS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"))
ROUTES = (
    "well_known",
    "versions",
    "sync",
    "send",
    "rooms",
    "keys",
    "to_device",
    "auth",
    "account",
    "client_other",
    "media",
    "stats",
    "other",
)
# What the client-proxy answered without the radio (lowbw_clientproxy_answered_locally_total{what}).
LOCAL_ANSWERS = (
    "versions",
    "sync_no_news",
    "well_known",
    "options",
    "stats",
    "media",
    "unrecognized",
    "invalid",
    "host_refused",
    "ephemeral",
    "ephemeral_dropped",
)
# Why a request got no usable answer from across the radio (LinkFailed.reason).
FAILURE_REASONS = (
    "request_timeout",
    "dead_link",
    "retransmits_exceeded",
    "session_replaced",
    "session_state",
    "unreadable",
    "link_error",
    "not_started",
)
# How a parked sync ended (lowbw_clientproxy_parked_sync_answers_total{outcome}).
PARK_OUTCOMES = ("news", "no_news", "error", "failed", "cancelled")
_AUTH = frozenset(("login", "logout", "register", "refresh"))
_ACCOUNT = frozenset(("account", "profile", "presence", "pushrules", "user", "devices", "capabilities"))


def route_class(path: str) -> str:
    """A closed set of names for what a request is about (``ROUTES``), for labels."""
    if path == "/.well-known/matrix/client":
        return "well_known"
    if path == "/_lowbw/stats":
        return "stats"
    if path.startswith(("/_matrix/media/", "/_matrix/client/v1/media/")):
        return "media"
    if not path.startswith("/_matrix/client/"):
        return "other"
    parts = path.split("/")
    # ['', '_matrix', 'client', 'v3', WHAT, ...]; /versions has no version segment.
    if len(parts) == 4 and parts[3] == "versions":
        return "versions"
    what = parts[4] if len(parts) > 4 else ""
    if what == "sync":
        return "sync"
    if what == "rooms":
        return "send" if len(parts) > 6 and parts[6] == "send" else "rooms"
    if what in ("keys", "room_keys"):
        return "keys"
    if what == "sendToDevice":
        return "to_device"
    if what in _AUTH:
        return "auth"
    if what in _ACCOUNT:
        return "account"
    return "client_other"


@dataclass
class HttpCounts:
    """What the HTTP side counts (module docstring); plain numbers, read at scrape time."""

    requests: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (method, route, status)
    latency: dict[tuple[str, ...], Histogram] = field(default_factory=dict)  # (route,)
    in_flight: int = 0
    local: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    carried: int = 0  # requests sent across the radio (each attempt)
    carrying: int = 0  # of which waiting for their answer now (parked syncs included)
    radio_latency: Histogram = field(default_factory=Histogram)
    parks: int = 0  # syncs parked at the proxy
    park_outcomes: dict[str, int] = field(default_factory=dict)

    def answered(self, method: str, route: str, status: str, seconds: float) -> None:
        if method not in METHOD_LABELS:
            method = "other"
        key = (method, route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        hist = self.latency.get((route,))
        if hist is None:
            hist = self.latency[(route,)] = Histogram(HTTP_BUCKETS)
        hist.observe(seconds)

    def answered_locally(self, what: str) -> None:
        self.local[what] = self.local.get(what, 0) + 1

    def failure(self, reason: str) -> None:
        self.failed[reason] = self.failed.get(reason, 0) + 1

    def park_ended(self, outcome: str) -> None:
        self.park_outcomes[outcome] = self.park_outcomes.get(outcome, 0) + 1


def _counter(name: str, doc: str, label: str, keys: Iterable[str], counts: dict[str, int]) -> Metric:
    family = CounterMetricFamily(PREFIX + name, doc, labels=[label])
    for key in sorted(set(keys) | set(counts)):
        family.add_metric([key], counts.get(key, 0))
    return family


class ClientProxyMetrics:
    """The client-proxy's registry: one collector reading a ``ClientProxy``'s counts."""

    def __init__(self, proxy: Any, version: str = "") -> None:
        self.proxy = proxy
        self.version = version
        self.started = time.time()
        self.registry = new_registry()
        self.registry.register(CallbackCollector(self.collect))
        # process_cpu_seconds_total, process_resident_memory_bytes, ... of this process.
        ProcessCollector(registry=self.registry)

    def airtime(self, nbytes: int) -> float:
        """Seconds ``nbytes`` of datagrams spend on the configured radio."""
        return airtime(nbytes, float(self.proxy.config.link_bps))

    def collect(self) -> Iterator[Metric]:
        proxy = self.proxy
        cfg = proxy.config
        info = InfoMetricFamily(PREFIX + "build", "The running client-proxy.")
        info.add_metric([], {"version": self.version, "client": str(cfg.name)})
        yield info
        yield GaugeMetricFamily(
            PREFIX + "start_time_seconds", "When the client-proxy started (Unix time).", value=self.started
        )
        yield GaugeMetricFamily(
            PREFIX + "link_bps",
            "The radio bit rate airtime is estimated with (link_bps).",
            value=cfg.link_bps,
        )
        yield GaugeMetricFamily(
            PREFIX + "mtu_bytes", "The largest datagram the radio carries (mtu).", value=cfg.radio_mtu
        )
        yield from self._http(proxy.counts)
        link = proxy.link
        if link is not None:
            yield from self._radio(link)
            yield from self._link_state(link)
        yield from self._waiting(proxy)

    def _http(self, c: HttpCounts) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            PREFIX + "http_requests",
            "HTTP requests from Matrix clients by method, route class and status.",
            labels=["method", "route", "status"],
        )
        for (method, route, status), n in sorted(c.requests.items()):
            requests.add_metric([method, route, status], n)
        yield requests
        yield histogram_family(
            PREFIX + "http_request_duration_seconds",
            "Time to answer a client's HTTP request, by route class (sync long-polls included).",
            ["route"],
            dict(c.latency),
        )
        yield GaugeMetricFamily(
            PREFIX + "http_requests_in_flight",
            "Client HTTP requests being answered now (long-polls included).",
            value=c.in_flight,
        )
        yield _counter(
            "answered_locally",
            "Client requests answered without the radio, by what.",
            "what",
            LOCAL_ANSWERS,
            c.local,
        )
        yield _counter(
            "requests_failed",
            "Client requests answered 502/504 because no usable answer came across the radio, by reason.",
            "reason",
            FAILURE_REASONS,
            c.failed,
        )
        yield CounterMetricFamily(
            PREFIX + "radio_requests",
            "Requests sent across the radio (a request made again for a new session counts again).",
            value=c.carried,
        )
        yield histogram_family(
            PREFIX + "radio_request_duration_seconds",
            "From sending a request across the radio to its answer (parked syncs not included).",
            [],
            {(): c.radio_latency},
        )
        yield CounterMetricFamily(
            PREFIX + "syncs_parked", "Incremental syncs parked at the proxy.", value=c.parks
        )
        yield _counter(
            "parked_sync_answers",
            "How parked syncs ended: news, no_news (the park ran out), error (a homeserver error), "
            "failed (no usable answer), cancelled (replaced or dropped here).",
            "outcome",
            PARK_OUTCOMES,
            c.park_outcomes,
        )

    def _radio(self, link: Any) -> Iterable[Metric]:
        st = link.stats
        yield up_down(
            PREFIX + "datagrams", "UDP datagrams on the radio side: up (to the proxy), down.", st.tx, st.rx
        )
        yield up_down(PREFIX + "bytes", "Their UDP payload bytes.", st.tx_bytes, st.rx_bytes)
        yield up_down(
            PREFIX + "airtime_seconds",
            "Estimated airtime of the datagrams at link_bps (bytes x 8 / link_bps).",
            self.airtime(st.tx_bytes),
            self.airtime(st.rx_bytes),
        )
        yield _counter(
            "datagrams_dropped",
            "Datagrams from the proxy dropped unread, by reason.",
            "reason",
            DROP_REASONS,
            link.drops,
        )
        yield CounterMetricFamily(
            PREFIX + "messages_stale",
            "Messages not sent because they were made for a session since replaced (made again).",
            value=st.stale,
        )
        yield CounterMetricFamily(
            PREFIX + "frames_oversize",
            "Frames sent larger than mtu (the radio drops them).",
            value=st.oversize,
        )
        mman = link.message_manager
        yield CounterMetricFamily(
            PREFIX + "retransmissions",
            "Confirmable messages sent again for want of an acknowledgement.",
            value=mman.retransmissions if mman is not None else 0,
        )

    def _link_state(self, link: Any) -> Iterable[Metric]:
        st = link.stats
        yield GaugeMetricFamily(
            PREFIX + "session_up",
            "1 while a Noise session with the proxy is up, else 0.",
            value=int(link.session is not None),
        )
        yield GaugeMetricFamily(
            PREFIX + "handshake_pending",
            "1 while a handshake is out and no session is up yet.",
            value=int(link.handshake_pending()),
        )
        yield CounterMetricFamily(PREFIX + "handshakes", "Noise IK handshakes started.", value=st.handshakes)
        yield CounterMetricFamily(
            PREFIX + "sessions_established",
            "Handshakes the proxy answered: sessions set up.",
            value=link.sessions_established,
        )
        yield CounterMetricFamily(
            PREFIX + "session_resets",
            "Sessions forgotten so that the next request handshakes again (the proxy lost it, "
            "restarted, or the counter neared its limit).",
            value=link.resets,
        )
        yield CounterMetricFamily(
            PREFIX + "link_dead",
            "Times the link was given up: nothing heard from the proxy for dead_link_timeout.",
            value=st.dead,
        )
        yield CounterMetricFamily(
            PREFIX + "cookie_replies", "Cookie replies answered (the proxy was under load).", value=st.cookies
        )
        if link.last_rx:
            yield GaugeMetricFamily(
                PREFIX + "last_heard_timestamp_seconds",
                "When an authenticated datagram from the proxy last arrived (Unix time).",
                value=time.time() - (time.monotonic() - link.last_rx),
            )

    def _waiting(self, proxy: Any) -> Iterable[Metric]:
        link = proxy.link
        yield GaugeMetricFamily(
            PREFIX + "radio_requests_in_flight",
            "Requests sent across the radio and waiting for their answer (parked syncs included).",
            value=proxy.counts.carrying,
        )
        yield GaugeMetricFamily(
            PREFIX + "queue_depth",
            "Messages waiting to go: for the handshake, or behind the exchange under way.",
            value=link.queue_depth() if link is not None else 0,
        )
        yield GaugeMetricFamily(
            PREFIX + "parked_syncs", "Syncs parked at the proxy now.", value=proxy.parked_count()
        )
