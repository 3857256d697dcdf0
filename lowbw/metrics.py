"""Prometheus metrics (and small read-only pages) over HTTP, for lowbw's long-running commands.

Shared by ``lowbw proxy run`` (``lowbw.proxy.metrics``, ``lowbw.proxy.status``)
and meant for the client-proxy and the adapters too. What a command does:

* count in plain attributes and dicts on its hot path (an ``int += 1`` costs
  nanoseconds; a prometheus-client child lookup per datagram costs
  microseconds), and turn those counts into metric families only when
  Prometheus scrapes: a ``CallbackCollector`` around a function that yields
  ``prometheus_client.core`` families. ``Histogram`` is such a plain
  counter for latencies (bucket counts and a sum, exported as a histogram).
* give every instance its own ``prometheus_client.CollectorRegistry``
  (``new_registry``), never the process-wide default, so that several
  instances in one process (tests) do not clash;
* serve it with ``MetricsServer`` (aiohttp): ``GET /metrics`` in the text
  format Prometheus asks for (``choose_encoder``: OpenMetrics or 0.0.4),
  plus the pages the command adds (``add_page``).

Access (``check_exposure`` at configuration time, again at start):

* Without a token the listener must be on a loopback address, and it answers
  only requests whose ``Host`` is a loopback name or address (a web page
  elsewhere cannot read it through DNS rebinding).
* With a token every request needs it: ``Authorization: Bearer TOKEN``
  (Prometheus' ``authorization`` / ``bearer_token``), or HTTP Basic with the
  token as the password (any user name: what a browser prompts for). It is
  compared in constant time; a missing or wrong one gets 401 and nothing else.
* Binding anywhere but loopback without a token is refused.

Bad input: only GET and HEAD (405 otherwise), unknown paths 404, a request
line or header over ``MAX_LINE`` bytes or more than ``MAX_HEADERS`` headers is
answered 400 by aiohttp's parser, a request body is never read (over
``MAX_BODY`` bytes: 413).

``listen`` values: ``HOST:PORT``, ``[IPv6]:PORT``, or a bare port (loopback).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from lowbw.wire.errors import LowbwError

log = logging.getLogger("lowbw.metrics")

DEFAULT_PORT = 9464
DEFAULT_HOST = "127.0.0.1"
# Request limits of the listener (aiohttp's parser enforces the first three).
MAX_LINE = 4096
MAX_FIELD = 4096
MAX_HEADERS = 32
MAX_BODY = 1024

# Latency buckets, seconds: homeserver requests (ms to tens of seconds) and
# registry operations (microseconds to a busy SQLite lock).
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
FAST_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0)

Page = Callable[[web.Request], Awaitable[web.StreamResponse]]


class MetricsConfigError(LowbwError):
    """A metrics listener that may not be started as configured."""


def parse_listen(value: str | int, what: str = "[metrics] listen") -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT`` or a bare port (loopback) -> (host, port)."""
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    elif isinstance(value, str):
        text = value.strip()
    else:
        raise MetricsConfigError("%s must be HOST:PORT or a port, got %r" % (what, value))
    if text.isascii() and text.isdigit():
        host, port_text = DEFAULT_HOST, text
    elif text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise MetricsConfigError("%s must be HOST:PORT, [IPv6]:PORT or a port, got %r" % (what, value))
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise MetricsConfigError("%s must be HOST:PORT, [IPv6]:PORT or a port, got %r" % (what, value))
    if not host:
        raise MetricsConfigError("%s has no host: %r" % (what, value))
    if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) < 65536:
        raise MetricsConfigError("%s has a bad port: %r" % (what, value))
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str, what: str = "[metrics]") -> None:
    """Refuse a listener outside loopback without a token (module docstring)."""
    if not token and not is_loopback(host):
        raise MetricsConfigError(
            "%s listen is on %s, not loopback: set %s token (a random string; Prometheus sends it "
            "as a bearer token) or listen on 127.0.0.1" % (what, host, what)
        )


def new_registry() -> CollectorRegistry:
    """A registry of its own (never prometheus-client's process-wide default)."""
    return CollectorRegistry(auto_describe=False)


class Histogram:
    """A latency histogram kept as plain numbers (``observe`` is a bisect and two adds)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float] = HTTP_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs ending with ``+Inf``, as prometheus-client wants them."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append((_float_text(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


def airtime(nbytes: int, bps: float) -> float:
    """Seconds ``nbytes`` spend on a ``bps`` radio (0 when the rate is unknown)."""
    return nbytes * 8 / bps if bps > 0 else 0.0


def up_down(name: str, doc: str, up: float, down: float) -> CounterMetricFamily:
    """A counter with ``direction="up"`` (towards the proxy / homeserver side) and ``"down"``."""
    family = CounterMetricFamily(name, doc, labels=["direction"])
    family.add_metric(["up"], up)
    family.add_metric(["down"], down)
    return family


def _float_text(value: float) -> str:
    return repr(float(value))


def histogram_family(
    name: str, documentation: str, labelnames: Sequence[str], histograms: dict[tuple[str, ...], Histogram]
) -> HistogramMetricFamily:
    """One histogram family from ``{label values: Histogram}``."""
    family = HistogramMetricFamily(name, documentation, labels=list(labelnames))
    for labels, hist in sorted(histograms.items()):
        family.add_metric(list(labels), hist.buckets(), hist.total)
    return family


class CallbackCollector(Collector):
    """A collector whose metrics ``collect`` builds at scrape time (from plain counters)."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()


def _host_of(header: str) -> str:
    """The host part of a ``Host`` header (``[::1]:9464`` -> ``::1``)."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


class MetricsServer:
    """``GET /metrics`` (and the pages added with ``add_page``) on ``host:port``.

    ``registry``: the instance's own CollectorRegistry. ``token``: required on
    every request when set (module docstring). ``port`` 0 picks a free port
    (``.port`` after ``start``).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        token: str = "",
        realm: str = "lowbw",
    ) -> None:
        check_exposure(host, token)
        self.registry = registry
        self.host = host
        self.port = port
        self._token = token.encode("utf-8")
        self._realm = realm
        self._pages: dict[str, Page] = {}
        self._prefix_pages: list[tuple[str, Page]] = []
        self._runner: web.AppRunner | None = None
        self.requests = 0
        self.refused = 0

    def add_page(self, path: str, handler: Page, *, prefix: bool = False) -> None:
        """Serve ``handler`` at ``path`` (GET/HEAD); ``prefix``: every path below ``path`` too."""
        if prefix:
            self._prefix_pages.append((path, handler))
        else:
            self._pages[path] = handler

    # -- life cycle ---------------------------------------------------------------

    async def start(self) -> int:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._guard])
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            max_line_size=MAX_LINE,
            max_field_size=MAX_FIELD,
            max_headers=MAX_HEADERS,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "http://%s:%d" % (host, self.port)

    # -- requests -------------------------------------------------------------------

    def _authorised(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "bearer":
            given = value.encode("utf-8", "replace")
        elif scheme == "basic":
            try:
                decoded = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return False
            given = decoded.partition(b":")[2]
        else:
            return False
        return hmac.compare_digest(given, self._token)

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.requests += 1
        if self._token:
            if not self._authorised(request):
                self.refused += 1
                return web.Response(
                    status=401,
                    text="401: a token is required\n",
                    headers={"WWW-Authenticate": 'Basic realm="%s", charset="UTF-8"' % self._realm},
                )
        elif not is_loopback(_host_of(request.headers.get("Host", ""))):
            # No token: only a client that addressed us as localhost (no DNS rebinding).
            self.refused += 1
            return web.Response(status=403, text="403: Host must be a loopback name\n")
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, text="405: read-only\n", headers={"Allow": "GET, HEAD"})
        if request.content_length is not None and request.content_length > MAX_BODY:
            return web.Response(status=413, text="413: no request bodies here\n")
        return await handler(request)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/metrics":
            return await self._metrics(request)
        page = self._pages.get(path)
        if page is None:
            for prefix, handler in self._prefix_pages:
                if path.startswith(prefix):
                    page = handler
                    break
        if page is None:
            return web.Response(status=404, text="404: not here\n")
        return await page(request)

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        try:
            # Collected here, on the event loop (collectors read live tables the loop
            # changes); formatted in a thread: for a large fleet the text format is
            # most of the cost (1,000 devices: ~12 ms collecting, ~60 ms formatting).
            snapshot = _Snapshot(list(self.registry.collect()))
            body = await asyncio.to_thread(encoder, snapshot)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - a broken collector must not take the listener down
            log.exception("metrics collection failed")
            return web.Response(status=500, text="500: collection failed\n")
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = content_type
        resp.headers["Cache-Control"] = "no-store"
        return resp


class _Snapshot:
    """Metric families already collected, for an encoder that wants a registry."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return iter(self._families)
