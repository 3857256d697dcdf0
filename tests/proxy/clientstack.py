"""A stock-client stack of real processes: proxy, radio, client-proxy.

``ClientStack.start`` writes a proxy directory for the session's Synapse (token
mode: client-proxies need no appservice), runs ``python -m lowbw proxy run``,
enrolls a client-proxy with ``python -m lowbw proxy enroll-client``, puts
``python -m radio_sim relay`` with the chosen preset in front of the proxy and
runs ``python -m lowbw client-proxy`` against the relay. Everything is stopped
by ``close()``. Process helpers are scripts/demo.py's, as in tests/e2e.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

from radio_sim.presets import get_preset
from tests.e2e.stack import load_demo

demo = load_demo()


class ClientStack:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Any] = []
        self.url = ""
        self.metrics_url = ""  # the client-proxy's /metrics, with metrics=True
        self.proxy: Any = None
        self.relay: Any = None
        self.client: Any = None
        self.proxy_config: Path | None = None
        self.client_config: Path | None = None

    def start(
        self,
        synapse: Any,
        server_name: str,
        *,
        preset: str = "1kbps",
        seed: int | None = None,
        request_timeout: float = 300.0,
        client_args: tuple[str, ...] = (),
        homeserver_url: str | None = None,
        metrics: bool = False,
        enroll_args: tuple[str, ...] = (),
        relay_args: tuple[str, ...] = (),
        config_replace: tuple[tuple[str, str], ...] = (),
    ) -> ClientStack:
        from lowbw.proxy.config import write_default

        up = get_preset(preset).direction("up")
        assert up.rate_bps is not None  # every preset used here has a rate
        link_bps = int(up.rate_bps)
        result = write_default(
            self.workdir / "proxy",
            homeserver_url or synapse.url,
            server_name=server_name,
            port=demo.free_udp_port(),
            link_bps=link_bps,
            mtu=65507 if up.mtu is None else min(up.mtu, 65507),
            mode="token",
            user_prefix="tok_",
            registration_shared_secret=synapse.registration_shared_secret,
        )
        self.proxy_config = Path(result.config.path)
        self.proxy = demo.start_proxy(self.proxy_config, self.workdir / "proxy.log", track=self.procs)
        self.client_config = self.workdir / "client.toml"
        demo.run_lowbw(
            "proxy",
            "enroll-client",
            "--config",
            str(self.proxy_config),
            "cp",
            "--out",
            str(self.client_config),
            *enroll_args,
        )
        text = self.client_config.read_text()
        text = text.replace("request_timeout = 300", "request_timeout = %g" % request_timeout)
        for old, new in config_replace:
            assert old in text, old
            text = text.replace(old, new)
        self.client_config.write_text(text)
        port = result.config.proxy.port
        self.relay = demo.Relay(
            ("127.0.0.1", port),
            self.workdir / "relay.log",
            self.workdir / "radio.json",
            preset=preset,
            seed=seed,
            extra=relay_args,
            track=self.procs,
        )
        self.client = demo.Proc(
            "client-proxy",
            [
                sys.executable,
                "-m",
                "lowbw",
                "client-proxy",
                "--config",
                str(self.client_config),
                "--listen",
                "127.0.0.1:0",
                "--proxy",
                "%s:%d" % (self.relay.host, self.relay.port),
                "--mtu",
                str(65507 if up.mtu is None else min(up.mtu, 65507)),
                *(("--metrics-listen", "127.0.0.1:0") if metrics else ()),
                *client_args,
            ],
            self.workdir / "client-proxy.log",
            cwd=demo.ROOT,
            track=self.procs,
        )
        _, m = self.client.wait_for(r"listening (http://[0-9.]+:\d+)", 30)
        self.url = m.group(1)
        if metrics:
            _, m = self.client.wait_for(r"metrics (http://[0-9.]+:\d+/metrics)", 5)
            self.metrics_url = m.group(1)
        return self

    def restart_proxy(self) -> None:
        """Stop the proxy gracefully (SIGTERM) and start it again on the same port."""
        assert self.proxy_config is not None
        self.proxy.stop(timeout=30)
        self.proxy = demo.start_proxy(self.proxy_config, self.workdir / "proxy.log", track=self.procs)

    def radio_stats(self) -> dict[str, Any]:
        """The client-proxy's own counters at its radio-side socket."""
        with urllib.request.urlopen(self.url + "/_lowbw/stats", timeout=10) as resp:
            stats: dict[str, Any] = json.load(resp)
        return stats

    def close(self) -> None:
        for p in reversed(self.procs):
            p.stop(timeout=15)
