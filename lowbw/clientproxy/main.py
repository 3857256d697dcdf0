"""``lowbw client-proxy --config FILE``: run the client-proxy until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from lowbw.clientproxy import config as cp_config
from lowbw.clientproxy.app import ClientProxy
from lowbw.clientproxy.metrics import ClientProxyMetrics
from lowbw.logsetup import setup_logging
from lowbw.metrics import MetricsServer
from lowbw.wire.errors import LowbwError

log = logging.getLogger("lowbw.clientproxy")

DESCRIPTION = """\
Serve a stock Matrix client (Element, matrix-nio, ...) on localhost and carry its
traffic across a low-bandwidth radio link to the lowbw proxy beside the homeserver.
Point the client at the printed URL as its homeserver. The config file comes from
`lowbw proxy enroll-client` on the proxy's machine."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lowbw client-proxy",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, metavar="FILE", help="client-proxy TOML (from enroll-client)")
    p.add_argument("--listen", metavar="HOST:PORT", help="HTTP address for the client (default: config)")
    p.add_argument("--proxy", metavar="HOST:PORT", help="UDP address of the proxy or radio (default: config)")
    p.add_argument(
        "--link-bps", type=float, metavar="N", help="radio bit rate, sizes timers (default: config)"
    )
    p.add_argument(
        "--mtu", type=int, metavar="BYTES", help="largest datagram the radio carries (default: config)"
    )
    p.add_argument(
        "--no-dictionary", action="store_true", help="do not offer the preset body dictionary (to measure it)"
    )
    p.add_argument(
        "--no-refs",
        action="store_true",
        help="send identifiers and event types as plain text (to measure what references save)",
    )
    p.add_argument(
        "--no-short-txn", action="store_true", help="send clients' transaction IDs as they are (to measure)"
    )
    p.add_argument(
        "--no-byte-strings",
        action="store_true",
        help="send base64 (keys, signatures, ciphertexts) as text, not byte strings (to measure)",
    )
    p.add_argument(
        "--echo-hold",
        type=float,
        metavar="S",
        help="how long the proxy may hold a sync result of only this client's own echoes "
        "(sends, receipts) for the next news; 0: off (default: config, 120)",
    )
    p.add_argument(
        "--no-local-receipts",
        action="store_true",
        help="carry receipts, read markers and typing as ordinary requests (to measure)",
    )
    p.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics here (a bare port: 127.0.0.1; default: config, off)",
    )
    p.add_argument(
        "--public-url", metavar="URL", help="base URL clients are told in .well-known (default: request host)"
    )
    return p


async def start_metrics(proxy: ClientProxy) -> MetricsServer | None:
    """The ``/metrics`` listener (``metrics_listen``), or None when it is off."""
    from lowbw import __version__

    cfg = proxy.config
    address = cfg.metrics_address
    if address is None:
        return None
    metrics = ClientProxyMetrics(proxy, version=__version__)
    server = MetricsServer(
        metrics.registry, address[0], address[1], token=cfg.metrics_token, realm="lowbw client-proxy"
    )
    try:
        await server.start()
    except OSError as exc:
        raise cp_config.ClientProxyConfigError(
            "cannot listen on %s for metrics: %s (set metrics_listen in %s)"
            % (cfg.metrics_listen, exc.strerror or exc, cfg.path)
        ) from None
    print("metrics %s/metrics" % server.url, flush=True)
    log.info("metrics on %s/metrics%s", server.url, " (token required)" if cfg.metrics_token else "")
    return server


async def serve(cfg: cp_config.ClientProxyConfig, public_url: str | None = None) -> int:
    proxy = ClientProxy(cfg, public_url=public_url)
    await proxy.start()
    try:
        metrics_server = await start_metrics(proxy)
    except BaseException:
        await proxy.close()
        raise
    runner = web.AppRunner(proxy.web_app(), access_log=None)
    await runner.setup()
    host, port = cfg.listen_address
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        if metrics_server is not None:
            await metrics_server.stop()
        await proxy.close()
        raise cp_config.ClientProxyConfigError("cannot listen on %s: %s" % (cfg.listen, exc.strerror or exc))
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname() if sockets else (host, port)
    shown = "[%s]" % bound[0] if ":" in str(bound[0]) else bound[0]
    print("listening http://%s:%d" % (shown, bound[1]), flush=True)
    log.info(
        "client-proxy %s: HTTP on %s:%d, lowbw proxy at %s:%d, %g bit/s",
        cfg.name,
        bound[0],
        bound[1],
        cfg.proxy_host,
        cfg.proxy_port,
        cfg.link_bps,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        log.info("stopping")
        await runner.cleanup()
        if metrics_server is not None:
            await metrics_server.stop()
        await proxy.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(quiet=("lowbw.clientproxy.coap", "aiohttp.access"))
    try:
        cfg = cp_config.load(args.config)
        if args.listen:
            cp_config.parse_hostport(args.listen, "--listen")
            cfg.listen = args.listen
        if args.proxy:
            cfg.proxy_host, cfg.proxy_port = cp_config.parse_hostport(args.proxy, "--proxy")
        if args.link_bps is not None:
            if args.link_bps <= 0:
                raise cp_config.ClientProxyConfigError("--link-bps must be positive")
            cfg.link_bps = args.link_bps
        if args.mtu is not None:
            if not 64 <= args.mtu <= 65507:
                raise cp_config.ClientProxyConfigError("--mtu must be 64..65507")
            cfg.mtu = args.mtu
        if args.metrics_listen is not None:
            cfg.metrics_listen = cp_config.check_metrics(
                args.metrics_listen, cfg.metrics_token, "--metrics-listen"
            )
        if args.no_dictionary:
            cfg.dictionary = False
        if args.no_refs:
            cfg.identifier_refs = False
        if args.no_short_txn:
            cfg.short_txn = False
        if args.no_byte_strings:
            cfg.byte_strings = False
        if args.echo_hold is not None:
            cfg.echo_hold = cp_config.echo_hold_seconds(args.echo_hold, "--echo-hold")
        if args.no_local_receipts:
            cfg.local_receipts = False
        return asyncio.run(serve(cfg, args.public_url))
    except LowbwError as exc:
        # The rule of every lowbw command (lowbw.cli.main): one line, exit status 1.
        print("lowbw client-proxy: error: %s" % (exc.message or exc), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
