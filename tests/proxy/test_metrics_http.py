"""The metrics listener as an HTTP server: access rules, bad input, `[metrics]` config, `proxy init`.

The listener is ``lowbw.metrics.MetricsServer`` (shared with other commands);
most tests run it on its own with a small registry. The last one runs
``lowbw proxy run`` with ``[metrics]`` and a token, as an operator would.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import Counter

from lowbw.cli import main
from lowbw.metrics import MetricsConfigError, MetricsServer, is_loopback, new_registry, parse_listen
from lowbw.proxy.config import ConfigError, load, write_default
from lowbw.testing.synapse import free_port
from lowbw.wire import coap

from .metricsutil import http_get, scrape, value

TOKEN = "s3cret-token-for-tests"


class Listener:
    """A MetricsServer in a thread with its own loop (blocking clients in the test)."""

    def __init__(self, token: str = "") -> None:
        self.registry = new_registry()
        Counter("demo_things", "Things.", registry=self.registry).inc(3)
        self.server = MetricsServer(self.registry, "127.0.0.1", 0, token=token)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        self.base = self.server.url

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def open_listener() -> Iterator[Listener]:
    listener = Listener()
    yield listener
    listener.close()


@pytest.fixture
def token_listener() -> Iterator[Listener]:
    listener = Listener(TOKEN)
    yield listener
    listener.close()


def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, return what comes back until the server closes (or a pause)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1."), answer[:80]
    return int(answer.split(b" ", 2)[1])


def test_metrics_text_and_openmetrics(open_listener: Listener) -> None:
    samples = scrape(open_listener.base + "/metrics")
    assert value(samples, "demo_things_total") == 3
    status, headers, body = http_get(
        open_listener.base + "/metrics", Accept="application/openmetrics-text; version=1.0.0"
    )
    assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_unknown_paths_and_methods(open_listener: Listener) -> None:
    for path in ("/nope", "/metrics/x", "/../etc/passwd", "/%00"):
        status, _, _ = http_get(open_listener.base + path)
        assert status == 404, path
    port = open_listener.server.port
    answer = raw(port, b"POST /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}")
    assert status_of(answer) == 405
    answer = raw(port, b"DELETE / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert status_of(answer) == 405
    head = raw(port, b"HEAD /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert status_of(head) == 200 and head.endswith(b"\r\n\r\n")


def test_garbage_and_oversized_requests(open_listener: Listener) -> None:
    port = open_listener.server.port
    assert status_of(raw(port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n")) == 400
    assert status_of(raw(port, b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")) in (
        400,
        414,
    )
    huge_header = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n"
    assert status_of(raw(port, huge_header)) in (400, 431)
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    assert status_of(raw(port, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n" + many + b"\r\n")) in (
        400,
        431,
    )
    body = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n"
    assert status_of(raw(port, body + b"x" * 2000)) == 413
    # The listener is still fine afterwards.
    assert value(scrape(open_listener.base + "/metrics"), "demo_things_total") == 3


def test_no_token_means_loopback_host_only(open_listener: Listener) -> None:
    port = open_listener.server.port
    # A page elsewhere that resolved its own name to 127.0.0.1 (DNS rebinding) is refused.
    answer = raw(port, b"GET /metrics HTTP/1.1\r\nHost: evil.example:%d\r\nConnection: close\r\n\r\n" % port)
    assert status_of(answer) == 403 and b"demo_things" not in answer
    for host in (b"localhost", b"127.0.0.1:%d" % port, b"[::1]:%d" % port):
        answer = raw(port, b"GET /metrics HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
        assert status_of(answer) == 200 and b"demo_things_total 3.0" in answer


def test_token_is_required_when_set(token_listener: Listener) -> None:
    url = token_listener.base + "/metrics"
    status, headers, body = http_get(url)
    assert status == 401 and "Basic" in headers["WWW-Authenticate"] and b"demo" not in body
    assert http_get(url, token="wrong")[0] == 401
    assert http_get(url, token=TOKEN + "x")[0] == 401
    assert http_get(url, token=TOKEN[:-1])[0] == 401
    assert http_get(url, basic="admin:wrong")[0] == 401
    assert http_get(url, Authorization="Basic !!!not-base64")[0] == 401
    assert http_get(url, Authorization="Token " + TOKEN)[0] == 401
    assert http_get(url + "?token=" + TOKEN)[0] == 401  # never in a URL
    # Unknown paths and other methods get nothing either without the token.
    assert http_get(token_listener.base + "/nope")[0] == 401
    # Bearer (Prometheus) or Basic with the token as password (a browser).
    assert value(scrape(url, TOKEN), "demo_things_total") == 3
    assert http_get(url, basic="anyone:" + TOKEN)[0] == 200
    assert http_get(token_listener.base + "/nope", token=TOKEN)[0] == 404
    # With a token the Host does not matter (a name on the network is expected).
    port = token_listener.server.port
    answer = raw(
        port,
        b"GET /metrics HTTP/1.1\r\nHost: proxy.example:%d\r\nAuthorization: Bearer %s\r\n"
        b"Connection: close\r\n\r\n" % (port, TOKEN.encode()),
    )
    assert status_of(answer) == 200


def test_listen_values() -> None:
    assert parse_listen("9464") == ("127.0.0.1", 9464)
    assert parse_listen(9464) == ("127.0.0.1", 9464)
    assert parse_listen("0.0.0.0:9") == ("0.0.0.0", 9)
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    for bad in ("", "host", ":9464", "1.2.3.4:99999", "[::1]9464", "a:b:c", True, 1.5):
        with pytest.raises(MetricsConfigError):
            parse_listen(bad)  # type: ignore[arg-type]
    assert is_loopback("127.0.0.1") and is_loopback("127.8.9.1") and is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.0.0.1")
    assert not is_loopback("metrics.example.org")
    # Off loopback without a token: refused at construction, before binding anything.
    with pytest.raises(MetricsConfigError):
        MetricsServer(new_registry(), "0.0.0.0", 0)
    MetricsServer(new_registry(), "0.0.0.0", 0, token=TOKEN)


def _config(tmp_path: Path, metrics: str) -> Path:
    cfg = write_default(tmp_path / "p", "http://127.0.0.1:8008", mode="token")
    with open(cfg.config.path, "a", encoding="utf-8") as f:
        f.write("\n[metrics]\n" + metrics)
    return cfg.config.path


def test_metrics_table_in_proxy_toml(tmp_path: Path) -> None:
    assert load(write_default(tmp_path / "none", "http://127.0.0.1:8008").config.path).metrics is None
    m = load(_config(tmp_path / "a", 'listen = "127.0.0.1:9464"\n')).metrics
    assert m is not None and m.enabled and (m.host, m.port) == ("127.0.0.1", 9464)
    assert m.token == "" and m.per_device and m.history_interval == 300 and m.history_points == 288
    m = load(_config(tmp_path / "b", "listen = 9500\nper_device = false\n")).metrics
    assert m is not None and m.listen == "127.0.0.1:9500" and not m.per_device
    m = load(_config(tmp_path / "c", 'listen = ""\n')).metrics
    assert m is not None and not m.enabled
    m = load(_config(tmp_path / "d", 'listen = "0.0.0.0:9464"\ntoken = "%s"\n' % TOKEN)).metrics
    assert m is not None and m.host == "0.0.0.0" and m.token == TOKEN and TOKEN not in repr(m)
    bad = {
        "e": ('listen = "0.0.0.0:9464"\n', "not loopback"),
        "f": ('listen = "nope"\n', "listen"),
        "g": ('listen = "127.0.0.1:9464"\nverbose = true\n', "unknown key"),
        "h": ('listen = "127.0.0.1:9464"\nper_device = "yes"\n', "per_device"),
        "i": ('listen = "127.0.0.1:9464"\nhistory_interval = 0\n', "history_interval"),
        "j": ("listen = true\n", "listen"),
    }
    for name, (text, why) in bad.items():
        with pytest.raises(ConfigError, match=why):
            load(_config(tmp_path / name, text))


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def test_proxy_init_metrics_listen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["proxy", "init", "--homeserver", "http://127.0.0.1:8008"]
    code, out, err = run_cli([*base, "--dir", str(tmp_path / "a"), "--metrics-listen", "9464"], capsys)
    assert code == 0, err
    m = load(tmp_path / "a" / "proxy.toml").metrics
    assert m is not None and m.listen == "127.0.0.1:9464" and m.token == ""
    assert "http://127.0.0.1:9464" in out and "loopback only" in out
    # Off loopback: a token is written (and never printed).
    code, out, err = run_cli(
        [*base, "--dir", str(tmp_path / "b"), "--metrics-listen", "0.0.0.0:9464"], capsys
    )
    assert code == 0, err
    m = load(tmp_path / "b" / "proxy.toml").metrics
    assert m is not None and m.host == "0.0.0.0" and len(m.token) >= 32 and m.token not in out + err
    # Off by default.
    code, _, _ = run_cli([*base, "--dir", str(tmp_path / "c")], capsys)
    assert code == 0 and load(tmp_path / "c" / "proxy.toml").metrics is None
    assert "[metrics]" not in (tmp_path / "c" / "proxy.toml").read_text()
    code, _, err = run_cli([*base, "--dir", str(tmp_path / "d"), "--metrics-listen", "nowhere"], capsys)
    assert code == 2 and "--metrics-listen" in err


def test_proxy_run_serves_metrics_with_a_token(
    proxy_config_path: str, matrix_user: Any, synapse: Any, tmp_path: Path
) -> None:
    """`lowbw proxy run` with [metrics]: token required, per-device series off, readings counted."""
    from .conftest import enroll_device
    from .proxyproc import ProxyProcess

    port = free_port()
    with open(proxy_config_path, "a", encoding="utf-8") as f:
        f.write('\n[metrics]\nlisten = "127.0.0.1:%d"\ntoken = "%s"\nper_device = false\n' % (port, TOKEN))
    dev = enroll_device(proxy_config_path, matrix_user, synapse)
    proc = ProxyProcess(proxy_config_path)
    try:
        url = "http://127.0.0.1:%d/metrics" % port
        assert http_get(url)[0] == 401
        wire = dev.wire()
        for v in (1, 2, 3):
            assert wire.exchange(wire.reading([v])).code == coap.CHANGED
        s = scrape(url, TOKEN)
        assert value(s, "lowbw_proxy_readings_acknowledged_total") == 3
        assert value(s, "lowbw_proxy_handshakes_total", kind="ik", outcome="ok") == 1
        assert value(s, "lowbw_proxy_bytes_total", direction="up") == sum(len(d) for d in wire.sent)
        assert not [k for k in s if k[0].startswith("lowbw_proxy_device_")]
        assert value(s, "process_cpu_seconds_total") is not None
        status, headers, page = http_get("http://127.0.0.1:%d/" % port, token=TOKEN)
        assert status == 200 and dev.name.encode() in page
    finally:
        out = proc.stop()
    assert "metrics and status page on http://127.0.0.1:%d (token required)" % port in out
    assert TOKEN not in out
    # A port in use is named with its key.
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the proxy's port is in TIME_WAIT
    blocker.bind(("127.0.0.1", port))
    blocker.listen()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "lowbw", "proxy", "run", "--config", proxy_config_path],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        blocker.close()
    assert done.returncode == 1
    assert "cannot listen on tcp 127.0.0.1:%d for metrics" % port in done.stderr
    assert "[metrics] listen" in done.stderr and "Traceback" not in done.stderr
