"""``/metrics`` of ``lowbw client-proxy``: its radio, its link and its clients' requests.

The first test runs the real stack (tests/proxy/clientstack.py: ``lowbw proxy
run`` beside Synapse, ``radio_sim relay``, ``lowbw client-proxy
--metrics-listen``), makes requests as a Matrix client does and reads the
counters back over HTTP with prometheus-client's text parser. The others check
the access rules: ``metrics_listen`` off loopback without ``metrics_token`` is
refused at start, and a token is required on every request when set.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lowbw.clientproxy import config as cp_config
from lowbw.clientproxy.metrics import route_class
from lowbw.testing.synapse import SynapseServer
from tests.proxy.metricsutil import Samples, http_get, names, scrape, value, wait_for
from tests.proxy.test_client_proxy import http, login_body

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_DOC = (ROOT / "docs" / "operator.md").read_text(encoding="utf-8")
P = "lowbw_clientproxy_"


def assert_documented(samples: Samples) -> None:
    """Every lowbw_clientproxy_ name a scrape exposed is in docs/operator.md ("Client-proxy")
    (counters with ``_total``, histograms by their family name)."""
    missing = sorted(
        n
        for n in names(samples)
        if n.startswith(P)
        and "`%s`" % n not in OPERATOR_DOC
        and "`%s`" % re.sub(r"_(bucket|sum|count)$", "", n) not in OPERATOR_DOC
    )
    assert not missing, missing


def test_counters_of_a_real_session(client_stack: Any, synapse: SynapseServer) -> None:
    localpart, password = "cpm_%s" % secrets.token_hex(4), secrets.token_urlsafe(12)
    synapse.register_user(localpart, password)
    stack = client_stack(preset="fast", metrics=True)
    url = stack.metrics_url
    # Before any request: nothing on the radio, no session.
    s = scrape(url)
    assert value(s, P + "session_up") == 0
    assert value(s, P + "datagrams_total", direction="up") == 0
    link_bps = value(s, P + "link_bps")
    assert link_bps is not None and link_bps > 0

    assert http(stack.url, "GET", "/_matrix/client/versions")[0] == 200
    assert http(stack.url, "GET", "/_matrix/client/versions")[0] == 200  # from memory
    assert http(stack.url, "GET", "/.well-known/matrix/client")[0] == 200
    assert http(stack.url, "GET", "/_matrix/media/v3/config")[0] == 501
    assert http(stack.url, "POST", "/_matrix/client/v3/login", raw=b"{nope")[0] == 400
    assert http(stack.url, "POST", "/_matrix/client/v3/login", login_body(localpart, "wrong"))[0] == 403
    status, _, login = http(stack.url, "POST", "/_matrix/client/v3/login", login_body(localpart, password))
    assert status == 200
    token = login["access_token"]
    status, _, first = http(stack.url, "GET", "/_matrix/client/v3/sync?timeout=0", token=token)
    assert status == 200
    # The next sync is parked at the proxy at once; this poll is answered here, empty.
    since = first["next_batch"]
    status, _, empty = http(
        stack.url, "GET", "/_matrix/client/v3/sync?since=%s&timeout=300" % since, token=token
    )
    assert status == 200 and empty["next_batch"] == since

    s = wait_for(url, lambda s: value(s, P + "parked_syncs") == 1)
    # Radio traffic, both ways, and its airtime at link_bps.
    for direction in ("up", "down"):
        n = value(s, P + "datagrams_total", direction=direction)
        nbytes = value(s, P + "bytes_total", direction=direction)
        air = value(s, P + "airtime_seconds_total", direction=direction)
        assert n is not None and n >= 4, (direction, n)
        assert nbytes is not None and nbytes > 100 * n / 4
        assert air == pytest.approx(nbytes * 8 / link_bps)
    assert stack.radio_stats()["tx"] >= value(s, P + "datagrams_total", direction="up")
    # The client's requests by method, route class and status.
    assert value(s, P + "http_requests_total", method="GET", route="versions", status="200") == 2
    assert value(s, P + "http_requests_total", method="GET", route="well_known", status="200") == 1
    assert value(s, P + "http_requests_total", method="GET", route="media", status="501") == 1
    assert value(s, P + "http_requests_total", method="POST", route="auth", status="400") == 1
    assert value(s, P + "http_requests_total", method="POST", route="auth", status="403") == 1
    assert value(s, P + "http_requests_total", method="POST", route="auth", status="200") == 1
    assert value(s, P + "http_requests_total", method="GET", route="sync", status="200") == 2
    assert value(s, P + "http_request_duration_seconds_count", route="sync") == 2
    # What never crossed the radio.
    local = {w: value(s, P + "answered_locally_total", what=w) for w in ("versions", "well_known", "media")}
    assert local == {"versions": 1, "well_known": 1, "media": 1}
    assert value(s, P + "answered_locally_total", what="invalid") == 1
    assert value(s, P + "answered_locally_total", what="sync_no_news") == 1
    # Across the radio: versions once, two logins, a sync, the parked one.
    assert value(s, P + "radio_requests_total") == 5
    assert value(s, P + "radio_request_duration_seconds_count") == 4
    assert value(s, P + "radio_requests_in_flight") == 1  # the parked sync
    assert value(s, P + "syncs_parked_total") == 1
    assert value(s, P + "requests_failed_total", reason="dead_link") == 0
    # The link: one session, up; nothing dropped.
    assert value(s, P + "session_up") == 1
    assert value(s, P + "handshake_pending") == 0
    assert value(s, P + "handshakes_total") == 1
    assert value(s, P + "sessions_established_total") == 1
    assert value(s, P + "link_dead_total") == 0
    assert value(s, P + "datagrams_dropped_total", reason="auth_failed") == 0
    assert value(s, P + "queue_depth") == 0
    heard = value(s, P + "last_heard_timestamp_seconds")
    assert heard is not None and abs(heard - time.time()) < 30
    assert value(s, P + "build_info", version=__import__("lowbw").__version__, client="cp") == 1
    assert value(s, "process_resident_memory_bytes") is not None
    assert_documented(s)
    # The listener's own rules: a foreign Host (DNS rebinding) and writes are refused.
    assert http_get(url, Host="evil.example:9468")[0] == 403
    assert http_get(url.replace("/metrics", "/nothing"))[0] == 404


def _config(tmp_path: Path, **extra: Any) -> Path:
    """A client-proxy config with throwaway keys (nothing is contacted before a request)."""
    path = tmp_path / "cp.toml"
    lines = [
        'proxy = "127.0.0.1:9"',
        'proxy_public_key = "%s"' % ("11" * 32),
        'private_key = "%s"' % ("22" * 32),
        'listen = "127.0.0.1:0"',
    ] + ["%s = %s" % (k, json.dumps(v)) for k, v in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lowbw", "client-proxy", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


def test_metrics_off_loopback_needs_a_token(tmp_path: Path) -> None:
    # In the file: refused at load, naming the file and the key.
    path = _config(tmp_path, metrics_listen="0.0.0.0:9468")
    done = _run("--config", str(path))
    assert done.returncode == 1
    assert "metrics_listen is on 0.0.0.0, not loopback: set metrics_token" in done.stderr
    assert str(path) in done.stderr and "listening" not in done.stdout
    # On the command line: the same.
    path = _config(tmp_path)
    done = _run("--config", str(path), "--metrics-listen", "[::]:9468")
    assert done.returncode == 1 and "--metrics-listen is on ::, not loopback" in done.stderr
    # Bad values.
    with pytest.raises(cp_config.ClientProxyConfigError, match="metrics_listen"):
        cp_config.load(_config(tmp_path, metrics_listen="nowhere"))
    with pytest.raises(cp_config.ClientProxyConfigError, match="metrics_token must be a string"):
        cp_config.load(_config(tmp_path, metrics_listen=9468, metrics_token=5))
    # Off by default; a bare port is loopback; with a token anywhere, and it survives to_toml.
    assert cp_config.load(_config(tmp_path)).metrics_address is None
    assert cp_config.load(_config(tmp_path, metrics_listen=9468)).metrics_listen == "127.0.0.1:9468"
    cfg = cp_config.load(_config(tmp_path, metrics_listen="0.0.0.0:9468", metrics_token="t0k"))
    assert cfg.metrics_address == ("0.0.0.0", 9468)
    again = tmp_path / "again.toml"
    again.write_text(cfg.to_toml())
    again.chmod(0o600)
    reloaded = cp_config.load(again)
    assert (reloaded.metrics_listen, reloaded.metrics_token) == ("0.0.0.0:9468", "t0k")


def test_metrics_token_and_busy_port(tmp_path: Path) -> None:
    """With metrics_token every request needs it; a busy port is named with its key."""
    from lowbw.clientproxy.app import ClientProxy
    from lowbw.clientproxy.main import start_metrics

    cfg = cp_config.load(_config(tmp_path, metrics_listen="127.0.0.1:0", metrics_token="t0k"))

    async def run() -> None:
        proxy = ClientProxy(cfg)
        await proxy.start()
        server = await start_metrics(proxy)
        assert server is not None
        url = server.url + "/metrics"
        try:
            assert (await asyncio.to_thread(http_get, url))[0] == 401
            assert (await asyncio.to_thread(http_get, url, "wrong"))[0] == 401
            s = await asyncio.to_thread(scrape, url, "t0k")
            assert value(s, P + "session_up") == 0
            assert value(s, P + "http_requests_in_flight") == 0
            busy = cp_config.load(_config(tmp_path, metrics_listen="127.0.0.1:%d" % server.port))
            with pytest.raises(cp_config.ClientProxyConfigError, match="for metrics.*set metrics_listen"):
                await start_metrics(ClientProxy(busy))
        finally:
            await server.stop()
            await proxy.close()

    asyncio.run(run())


@pytest.mark.parametrize(
    "path, route",
    [
        ("/_matrix/client/versions", "versions"),
        ("/_matrix/client/v3/sync", "sync"),
        ("/_matrix/client/v3/rooms/!r:x/send/m.room.message/t1", "send"),
        ("/_matrix/client/v3/rooms/!r:x/messages", "rooms"),
        ("/_matrix/client/v3/keys/upload", "keys"),
        ("/_matrix/client/v3/sendToDevice/m.x/t", "to_device"),
        ("/_matrix/client/v3/login", "auth"),
        ("/_matrix/client/v3/profile/@a:x", "account"),
        ("/_matrix/client/v3/createRoom", "client_other"),
        ("/_matrix/client/v1/media/config", "media"),
        ("/.well-known/matrix/client", "well_known"),
        ("/favicon.ico", "other"),
    ],
)
def test_route_classes(path: str, route: str) -> None:
    assert route_class(path) == route
