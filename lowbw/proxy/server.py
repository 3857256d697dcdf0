"""The running proxy: ``lowbw proxy run`` and an in-process ``ProxyServer`` for tests and benchmarks.

Pieces (each its own module):

* ``transport``: the UDP socket and lowbw frames under aiocoap;
* ``sessions``: handshakes, the session table, revocation, save/restore;
* ``resources``: readings, commands, time, the client-server API;
* ``appservice``: the homeserver's transaction pushes (commands);
* ``homeserver``: the HTTP client towards the homeserver.

Life cycle: ``start()`` opens the registry, restores the sessions a graceful
stop saved, binds UDP (and the appservice listener in appservice mode).
``stop()`` first stops sending anything (a frame sealed after the save would
reuse a nonce once the saved state is restored), then saves every established
session to the registry, then closes sockets and the HTTP client. ``main``
runs until SIGTERM or SIGINT and stops gracefully; a crash loses the sessions
and devices re-handshake (their retried reading carries the same Message ID, so
it still lands exactly once).
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiocoap.message import Message
from aiocoap.pipe import error_to_message, run_driving_pipe
from aiocoap.protocol import Context

from lowbw.logsetup import setup_logging
from lowbw.metrics import MetricsServer
from lowbw.proxy import config as proxy_config
from lowbw.proxy.appservice import AppserviceListener, queue_command
from lowbw.proxy.e2ee import E2EEService
from lowbw.proxy.homeserver import DEFAULT_TIMEOUT, Homeserver, HomeserverUnavailable, encode_path
from lowbw.proxy.limits import Limits
from lowbw.proxy.metrics import ProxyMetrics
from lowbw.proxy.registry import Registry
from lowbw.proxy.resources import DEFAULT_RETRY_AFTER, READING_TIMEOUT, ProxySite, Services
from lowbw.proxy.sessions import SessionTable
from lowbw.proxy.transport import LinkTuning, LowbwTransport, SessionAddress, add_lowbw_transport
from lowbw.proxy.writebehind import WRITE_DELAY, WriteBehind
from lowbw.wire.errors import LowbwError

log = logging.getLogger("lowbw.proxy")

# Middle-generation collections per full one (CPython's default is 10; main()).
GC_FULL_EVERY = 1000


class LowbwContext(Context):
    """aiocoap's Context without one per-request cost: it names every rendering
    task after ``repr(request)``, a string nobody reads, formatted per reading."""

    def render_to_pipe(self, pipe: Any) -> None:
        run_driving_pipe(error_to_message(pipe, self.log), self._render_to_pipe(pipe), name="lowbw render")


@dataclass
class ProxySettings:
    """Everything the proxy needs to run (``from_config`` reads ``proxy.toml``)."""

    private_key: bytes
    registry_path: Path | str
    homeserver_url: str
    mode: str = "appservice"
    bind: str = "127.0.0.1"
    port: int = 5683
    link_bps: float = 100.0
    mtu: int = 0
    verify_tls: bool = True
    as_token: str | None = None
    hs_token: str | None = None
    appservice_listen: tuple[str, int] | None = None
    appservice_id: str | None = None
    retry_after: int = DEFAULT_RETRY_AFTER
    reading_timeout: float = READING_TIMEOUT
    homeserver_timeout: float = DEFAULT_TIMEOUT
    handshake_impl: str = "noiseprotocol"
    empty_ack_delay: float | None = None
    limits: Limits = field(default_factory=Limits)
    # The reading fast path and background WAL checkpoints (docs/proxy.md,
    # Load); False runs every request through aiocoap and checkpoints in the
    # commits, as before (LOWBW_PROXY_FAST_PATHS=0, for side-by-side measurement).
    fast_paths: bool = True
    # [metrics]: /metrics and the status page (None or listen "": off).
    metrics: proxy_config.MetricsSection | None = None
    # [cluster]: several proxies on one fleet (lowbw.proxy.cluster; nodes 1: off).
    cluster: proxy_config.ClusterSection = field(default_factory=proxy_config.ClusterSection)

    def __repr__(self) -> str:
        # Never the key or tokens.
        return "ProxySettings(bind=%s:%d, mode=%s, homeserver=%s, registry=%s)" % (
            self.bind,
            self.port,
            self.mode,
            self.homeserver_url,
            self.registry_path,
        )

    @classmethod
    def from_config(cls, cfg: proxy_config.ProxyConfig) -> ProxySettings:
        a = cfg.appservice
        listen = None
        if a is not None and cfg.mode == "appservice":
            listen = (a.listen_host, a.listen_port)
        return cls(
            private_key=cfg.read_private_key(),
            registry_path=cfg.proxy.registry,
            homeserver_url=cfg.homeserver.url,
            mode=cfg.mode,
            bind=cfg.proxy.bind,
            port=cfg.proxy.port,
            link_bps=float(cfg.proxy.link_bps),
            mtu=cfg.proxy.mtu,
            verify_tls=cfg.homeserver.verify_tls,
            as_token=a.as_token if a is not None else None,
            hs_token=a.hs_token if a is not None else None,
            appservice_listen=listen,
            appservice_id=a.id if a is not None else None,
            limits=cfg.limits,
            metrics=cfg.metrics,
            cluster=cfg.cluster,
        )


class ProxyServer:
    """One proxy, in this process. ``async with ProxyServer(settings) as p: p.port``.

    ``registry``: share an open Registry (the caller closes it) instead of
    opening ``settings.registry_path``. ``ephemeral`` (tests only) supplies the
    proxy's handshake ephemeral keys.
    """

    def __init__(
        self,
        settings: ProxySettings,
        *,
        registry: Registry | None = None,
        ephemeral: Callable[[], bytes] | None = None,
    ) -> None:
        if settings.mode not in ("appservice", "token"):
            raise LowbwError("mode must be appservice or token")
        if settings.mode == "appservice" and not settings.as_token:
            raise LowbwError("appservice mode needs the as_token")
        self.settings = settings
        self._own_registry = registry is None
        self.registry: Registry | None = registry
        self._ephemeral = ephemeral
        self.table: SessionTable | None = None
        self.transport: LowbwTransport | None = None
        self.site: ProxySite | None = None
        self.homeserver: Homeserver | None = None
        self.appservice: AppserviceListener | None = None
        self.e2ee: E2EEService | None = None
        self._ctx: Context | None = None
        self._http: aiohttp.ClientSession | None = None
        self._checkpoints = False
        self.restored = 0
        self.started_at = 0.0
        self.answers = AnswerLog()
        # Prometheus metrics and the status page ([metrics]); None when off.
        self.metrics: ProxyMetrics | None = None
        self.metrics_server: MetricsServer | None = None
        # This node of several on one fleet ([cluster]); None for a single proxy.
        self.cluster: Any = None

    async def __aenter__(self) -> ProxyServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def host(self) -> str:
        if self.transport is None:
            raise LowbwError("proxy not started")
        return self.transport.local_address[0]

    @property
    def port(self) -> int:
        if self.transport is None:
            raise LowbwError("proxy not started")
        return self.transport.local_address[1]

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def appservice_port(self) -> int | None:
        return self.appservice.port if self.appservice is not None else None

    @property
    def metrics_port(self) -> int | None:
        return self.metrics_server.port if self.metrics_server is not None else None

    async def start(self) -> None:
        s = self.settings
        if self.registry is None:
            self.registry = Registry(s.registry_path)
        try:
            if s.fast_paths:
                self.registry.start_checkpoints()
                self._checkpoints = True
            tuning = LinkTuning(s.link_bps, s.empty_ack_delay, s.mtu)
            table = SessionTable(
                self.registry,
                s.private_key,
                tuning,
                handshake_impl=s.handshake_impl,
                ephemeral=self._ephemeral,
                limits=s.limits,
            )
            self.table = table
            # The reading path's registry writes, off the loop (lowbw.proxy.writebehind).
            writes = WriteBehind(self.registry, WRITE_DELAY if s.fast_paths else None)
            table.persist_top = writes.advance_top
            self._listen_registry(table)
            self.homeserver = Homeserver(
                s.homeserver_url,
                verify_tls=s.verify_tls,
                timeout=s.homeserver_timeout,
                lean_readings=s.fast_paths,
            )
            services = Services(
                table=table,
                registry=self.registry,
                homeserver=self.homeserver,
                mode=s.mode,
                as_token=s.as_token,
                reading_timeout=s.reading_timeout,
                retry_after=s.retry_after,
                link_bps=s.link_bps,
                limits=s.limits,
                sent=writes,
            )
            site = ProxySite(services, blockwise_timeout=max(600.0, 20 * tuning.ACK_TIMEOUT))
            self.site = site
            self._ctx = LowbwContext(
                loop=asyncio.get_running_loop(), serversite=site, loggername="lowbw.proxy.coap"
            )
            if s.cluster.enabled:
                from lowbw.proxy.cluster import Cluster

                self.cluster = Cluster(s.cluster, self.registry, table)
                self.transport = await self.cluster.create_transport(self._ctx, (s.bind, s.port), table)
            else:
                self.transport = await add_lowbw_transport(self._ctx, (s.bind, s.port), table)
            table.transport = self.transport
            self.transport.on_answer = self._log_answer
            self.transport.tuning_for = site.clients.tuning_for
            if s.fast_paths:
                self.transport.fast_path = site
            table.on_commands_changed = site.notify_commands
            table.on_close = site.session_closed
            if self.cluster is not None:
                self.restored = self.cluster.restore()
                table.on_add = self.cluster.session_added
                self.cluster.start_timers()
            else:
                self.restored = table.restore()
            table.on_summary = self.log_answers
            table.start_timers()
            # Devices in encrypted rooms: their Matrix devices come up in the background
            # (readings meanwhile get 5.03: never plaintext into an encrypted room).
            self.e2ee = E2EEService(
                s.homeserver_url,
                self.registry,
                s.private_key,
                mode=s.mode,
                as_token=s.as_token,
                verify_tls=s.verify_tls,
                on_command=self._encrypted_command,
            )
            table.e2ee = self.e2ee
            self.e2ee.start_all(list(table.devices.values()))
            if s.metrics is not None and s.metrics.enabled:
                await self._start_metrics(s.metrics)
            if s.mode == "appservice" and s.appservice_listen is not None and s.hs_token:
                host, port = s.appservice_listen
                self.appservice = AppserviceListener(s.hs_token, table, host, port)
                # Every node on this machine takes the homeserver's pushes on one port.
                self.appservice.reuse_port = self.cluster is not None
                await self.appservice.start()
                await self._ping_homeserver()
        except BaseException:
            await self._close()
            raise
        self.started_at = time.monotonic()
        log.info(
            "listening on udp %s:%d (%s mode, %d device(s), %d session(s) restored, %s)%s",
            self.host,
            self.port,
            s.mode,
            len(table.devices),
            self.restored,
            tuning,
            " appservice on %s:%d" % (self.appservice.host, self.appservice.port) if self.appservice else "",
        )
        if self.metrics_server is not None:
            log.info(
                "metrics and status page on %s%s",
                self.metrics_server.url,
                " (token required)" if s.metrics is not None and s.metrics.token else " (loopback only)",
            )

    def _listen_registry(self, table: SessionTable) -> None:
        """PostgreSQL: the registry's notices (LISTEN) reach the table at once,
        instead of a check per datagram (``lowbw.proxy.cluster.ChangeHandler``)."""
        registry = self.registry
        if registry is None or not registry.notifies:
            return
        from lowbw.proxy.cluster import ChangeHandler, start_fresh, wake_on_changes
        from lowbw.proxy.freshtxn import FreshTxns

        table.on_changes = ChangeHandler(table, None)
        # One round trip per warm reading instead of two (lowbw.proxy.freshtxn);
        # a cluster node replaces this hook with Cluster.session_added.
        registry.fresh = FreshTxns()
        table.on_add = lambda addr: start_fresh(table, addr.device)
        registry.on_change = wake_on_changes(registry, table, asyncio.get_running_loop())
        registry.listen()

    async def _start_metrics(self, cfg: proxy_config.MetricsSection) -> None:
        """``[metrics]``: the per-proxy registry, its hooks, and the HTTP listener."""
        from lowbw import __version__ as version
        from lowbw.proxy.status import StatusPages

        metrics = ProxyMetrics(
            link_bps=self.settings.link_bps,
            per_device=cfg.per_device,
            history_interval=cfg.history_interval,
            history_points=cfg.history_points,
            mode=self.settings.mode,
            version=version,
        )
        metrics.attach(self)
        self.metrics = metrics
        port = cfg.port
        if self.settings.cluster.enabled and port:
            # One proxy.toml for every node on a machine: node N serves metrics on port + N.
            port += self.settings.cluster.node
        server = MetricsServer(metrics.registry, cfg.host, port, token=cfg.token, realm="lowbw proxy")
        StatusPages(self, metrics).install(server)
        await server.start()
        self.metrics_server = server
        metrics.start_timers()

    async def _ping_homeserver(self) -> None:
        """Ask the homeserver to ping us (MSC2659): it checks the push URL and, if it
        had marked the appservice down while the proxy was stopped, retries the
        queued transactions now instead of after its exponential backoff."""
        s = self.settings
        if not s.appservice_id or self.homeserver is None:
            return
        path = encode_path("/_matrix/client/v1/appservice/{}/ping", s.appservice_id)
        try:
            result = await self.homeserver.request(
                "POST",
                path,
                json_body={"transaction_id": "lowbw-start"},
                access_token=s.as_token,
                timeout=10.0,
            )
        except HomeserverUnavailable as exc:
            log.warning("homeserver not reachable at start: %s", exc.message)
            return
        if result.ok:
            log.info("homeserver reaches the appservice listener")
        else:
            log.warning(
                "homeserver could not reach the appservice listener: %d %s",
                result.status,
                result.errcode or "",
            )

    async def stop(self, *, save_sessions: bool = True) -> int:
        """Stop; with ``save_sessions`` keep every established session for the next start.

        ``save_sessions=False`` behaves like a crash as far as devices can tell.
        Returns the number of sessions saved.
        """
        saved = 0
        if self.site is not None and self.transport is not None:
            # Client-proxies waiting on a parked sync are told the session ends,
            # so they handshake again at once instead of waiting out the park.
            await self.site.clients.shutdown(drain=min(self.site.s.table.tuning.ACK_TIMEOUT, 5.0))
        if self.transport is not None:
            # Nothing may be sealed after the states are saved (nonce reuse).
            await self.transport.shutdown()
        if self.site is not None:
            self.site.s.sent.close()
        if save_sessions and self.table is not None:
            try:
                saved = self.cluster.save() if self.cluster is not None else self.table.save()
            except LowbwError as exc:
                log.error("sessions not saved: %s", exc.message)
        if self.table is not None:
            self.table.stop_timers()
            self.table.close_all()
        await self._close()
        log.info("stopped (%d session(s) saved)", saved)
        return saved

    def _encrypted_command(self, device: str, event: dict[str, Any]) -> None:
        """A decrypted event from an encrypted room: queued like a pushed plaintext command."""
        if self.table is None:
            return
        try:
            queue_command(self.table, event, only=device)
        except LowbwError as exc:
            log.error("%s: encrypted command not queued (%s)", device, exc.message)

    async def _close(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None
        if self.registry is not None:
            self.registry.on_change = None
            self.registry.fresh = None
        if self.metrics_server is not None:
            await self.metrics_server.stop()
            self.metrics_server = None
        if self.metrics is not None:
            self.metrics.stop_timers()
            self.metrics.detach()
        if self.e2ee is not None:
            await self.e2ee.close()
            self.e2ee = None
        if self.table is not None:
            self.table.stop_timers()
        if self.appservice is not None:
            await self.appservice.stop()
            self.appservice = None
        if self._ctx is not None:
            # Empty when the UDP bind failed: aiocoap's shutdown() then raises
            # ValueError (asyncio.wait of no tasks) and hides the real cause.
            if self._ctx.request_interfaces:
                await self._ctx.shutdown()
            self._ctx = None
        self.transport = None
        if self.site is not None:
            # Readings answered meanwhile (aiocoap's shutdown) are written too.
            self.site.s.sent.close()
        self.site = None
        if self.homeserver is not None:
            await self.homeserver.close()
            self.homeserver = None
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._checkpoints and self.registry is not None:
            self.registry.stop_checkpoints()
            self._checkpoints = False
        if self._own_registry and self.registry is not None:
            self.registry.close()
            self.registry = None

    def stats(self) -> dict[str, Any]:
        """Counters for tests and benchmarks."""
        t = self.transport
        return {
            "sessions": len(self.table) if self.table is not None else 0,
            "rx": t.stats.rx if t else 0,
            "tx": t.stats.tx if t else 0,
            "rx_bytes": t.stats.rx_bytes if t else 0,
            "tx_bytes": t.stats.tx_bytes if t else 0,
            "dropped": dict(t.stats.dropped) if t else {},
        }

    def _log_answer(
        self, addr: SessionAddress, request: Message | None, response: Message, rx: int, tx: int
    ) -> None:
        """Every answer: one DEBUG line, and a count for the periodic INFO summary
        (a device that floods requests must not flood the log, and a log line per
        reading costs measurable CPU at load)."""
        route = "-"
        method: object = "-"
        if request is not None:
            method = request.code
            path = request.opt.uri_path
            # The route id only: parameters may be room or transaction ids.
            route = path[0] if path else "/"
        # Codes as they are: formatted once per summary, not once per answer.
        self.answers.count(addr.device, method, route, response.code, rx, tx)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s %s -> %s (%d B in, %d B out)", addr.device, method, route, response.code, rx, tx)

    def log_answers(self) -> None:
        line = self.answers.summary()
        if line is not None:
            log.info("%s", line)


class AnswerLog:
    """Answers counted per (device, method, route, code) and summarised in one INFO line
    per interval; at most ``MAX_KEYS`` kinds are named per interval, the rest counted."""

    MAX_KEYS = 40

    def __init__(self) -> None:
        self._counts: dict[tuple[str, object, str, object], list[int]] = {}
        self._others = 0

    def count(self, device: str, method: object, route: str, code: object, rx: int, tx: int) -> None:
        key = (device, method, route, code)
        entry = self._counts.get(key)
        if entry is None:
            if len(self._counts) >= self.MAX_KEYS:
                self._others += 1
                return
            entry = self._counts[key] = [0, 0, 0]
        entry[0] += 1
        entry[1] += rx
        entry[2] += tx

    def summary(self) -> str | None:
        if not self._counts and not self._others:
            return None
        parts = [
            "%s %s %s -> %s x%d (%d B in, %d B out)" % (d, m, r, c, n, rx, tx)
            for (d, m, r, c), (n, rx, tx) in sorted(self._counts.items(), key=lambda kv: str(kv[0]))
        ]
        if self._others:
            parts.append("%d more" % self._others)
        self._counts = {}
        self._others = 0
        return "answers: " + "; ".join(parts)


def _bind_fails(kind: int, host: str, port: int, errno_: int | None) -> bool:
    """True if binding ``host:port`` now fails with the same error (which socket was it?)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, kind) as sock:
            if kind == socket.SOCK_STREAM:
                # As asyncio's server does: a socket in TIME_WAIT is no conflict.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        return exc.errno == errno_
    return False


def listen_error(settings: ProxySettings, exc: OSError, config_path: str | Path | None = None) -> str:
    """One line for an operator: which address could not be bound, why, and what to change."""
    where = " in %s" % config_path if config_path else " in proxy.toml"
    why = os.strerror(exc.errno) if exc.errno else str(exc)
    why = why[:1].lower() + why[1:]
    if exc.errno == errno.EADDRNOTAVAIL:
        key = "bind"
    elif exc.errno == errno.EACCES:
        key = "port (below 1024 needs privileges)"
    else:
        key = "port"
    # The UDP socket is bound first; if it binds now, the appservice listener failed.
    if settings.port and _bind_fails(socket.SOCK_DGRAM, settings.bind, settings.port, exc.errno):
        return "cannot listen on udp %s:%d: %s (set [proxy] %s%s)" % (
            settings.bind,
            settings.port,
            why,
            key,
            where,
        )
    if settings.metrics is not None and settings.metrics.enabled:
        host, port = settings.metrics.host, settings.metrics.port
        if port and _bind_fails(socket.SOCK_STREAM, host, port, exc.errno):
            return "cannot listen on tcp %s:%d for metrics: %s (set [metrics] listen%s)" % (
                host,
                port,
                why,
                where,
            )
    if settings.appservice_listen is not None:
        host, port = settings.appservice_listen
        if _bind_fails(socket.SOCK_STREAM, host, port, exc.errno):
            return (
                "cannot listen on tcp %s:%d for the homeserver's pushes: %s (set [appservice] listen%s, "
                "and the url in the appservice registration to match)" % (host, port, why, where)
            )
    return "cannot start: %s" % (exc.strerror or exc)


async def _run(settings: ProxySettings, config_path: str | Path | None = None) -> int:
    server = ProxyServer(settings)
    try:
        await server.start()
    except OSError as exc:
        # One line, no traceback: what the operator must change.
        print("lowbw proxy run: error: %s" % listen_error(settings, exc, config_path), file=sys.stderr)
        return 1
    except LowbwError as exc:
        print("lowbw proxy run: error: cannot start: %s" % (exc.message or exc), file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: report_longest(server.registry))
    # Everything loaded so far (modules, tables) lives as long as the process:
    # keep it out of the collector's full passes, which otherwise pause the
    # loop for tens of milliseconds.
    gc.collect()
    gc.freeze()
    # After a freeze CPython counts no long-lived objects, so every 10th
    # middle-generation pass became a full one (each 15-30 ms with thousands of
    # sessions, measured; at load a few per second, each one delaying every
    # reading in flight). Full passes now come 100 times less often; young
    # objects are collected as before, and a session's cycles go at the next
    # full pass.
    threshold0, threshold1, _ = gc.get_threshold()
    gc.set_threshold(threshold0, threshold1, GC_FULL_EVERY)
    registry = server.registry
    if registry is not None:
        # From here on: registry calls while serving (start-up reads all devices once).
        registry.longest = (0.0, "")
    print("lowbw proxy listening on udp %s:%d" % server.address, flush=True)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            loop.remove_signal_handler(sig)
        # The longest the event loop waited for one registry call while serving;
        # the stop (saving every session, after the socket is closed) is timed apart.
        took, op = registry.longest if registry is not None else (0.0, "")
        stopping = time.perf_counter()
        saved = await server.stop(save_sessions=True)
        stopping = time.perf_counter() - stopping
    # For whoever started the proxy (bench/proxy_load.py reads it).
    print(
        "lowbw proxy stopped (%d session(s) saved, stop took %.1f ms; longest registry call %.2f ms: %s)"
        % (saved, stopping * 1000, took * 1000, op or "-"),
        flush=True,
    )
    return 0


def report_longest(registry: Registry | None) -> None:
    """SIGUSR1: print the longest registry call the loop made since the start or
    the last SIGUSR1, and start again (bench/proxy_load.py times phases with it)."""
    if registry is None:
        return
    took, op = registry.longest
    registry.longest = (0.0, "")
    print(
        "lowbw proxy: longest registry call %.2f ms: %s (since the last report)" % (took * 1000, op or "-"),
        flush=True,
    )


def fast_paths_wanted() -> bool:
    """False when ``LOWBW_PROXY_FAST_PATHS=0`` (``ProxySettings.fast_paths``)."""
    return os.environ.get("LOWBW_PROXY_FAST_PATHS", "1").strip() != "0"


def loop_factory(fast_paths: bool) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (a Linux dependency of lowbw;
    docs/proxy.md, Load, has what it saves); asyncio's otherwise, with ``fast_paths``
    off, and with ``LOWBW_PROXY_UVLOOP=0`` (to measure uvloop alone)."""
    if not fast_paths or os.environ.get("LOWBW_PROXY_UVLOOP", "1").strip() == "0":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def main(config_path: str | Path, node: int | None = None) -> int:
    """``lowbw proxy run --config PATH [--node N]``: 0 after a graceful stop, 1 on failure."""
    # aiocoap logs every duplicate and retransmission at INFO; ours says what matters.
    # matrix-nio (encrypted rooms) logs every room event at INFO.
    setup_logging(quiet=("lowbw.proxy.coap", "nio"))
    try:
        cfg = proxy_config.load(config_path)
        if node is not None:
            cfg.cluster.node = node
            cfg.cluster.check()
        settings = ProxySettings.from_config(cfg)
    except LowbwError as exc:
        print("lowbw proxy run: error: %s" % (exc.message or exc), file=sys.stderr)
        return 1
    settings.fast_paths = fast_paths_wanted()
    with asyncio.Runner(loop_factory=loop_factory(settings.fast_paths)) as runner:
        return runner.run(_run(settings, config_path))
