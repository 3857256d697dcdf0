"""The proxy's status page in a real browser: headless Chromium (Debian) over the DevTools Protocol.

Readings go through a real proxy into the session's Synapse; the page the
browser renders must show them in the fleet table, and each device's charts
must draw. ``LOWBW_UPDATE_SCREENSHOT=1`` also writes the fleet page to
docs/status-page.png (the picture in docs/operator.md).
"""

from __future__ import annotations

import asyncio
import os
import struct
from pathlib import Path
from typing import Any

import pytest

from lowbw.proxy.config import MetricsSection
from lowbw.wire import coap

from .cdp import Chromium, find_chromium
from .metricsutil import http_get

pytestmark = pytest.mark.skipif(
    find_chromium() is None, reason="chromium missing (scripts/bootstrap.sh installs it as root)"
)

DOCS = Path(__file__).resolve().parents[2] / "docs"
ROW = "document.querySelector('tr[data-device=\"%s\"] td.%s')"


def cell(name: str, column: str) -> str:
    return (ROW % (name, column)) + ".textContent.trim()"


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_status_page_shows_the_fleet_and_charts(device_factory, proxy_factory, tmp_path: Path) -> None:
    sensor = device_factory("greenhouse")
    climate = device_factory("cellar")
    idle = device_factory("rooftop")
    # A real radio's rate, so the airtime columns and charts look like a deployment's.
    metrics = MetricsSection(listen="127.0.0.1:0", history_interval=0.5)
    proxy = proxy_factory(metrics=metrics, link_bps=100.0)
    base = "http://127.0.0.1:%d" % proxy.server.metrics_port

    w = sensor.wire()
    assert w.exchange(w.reading([215])).code == coap.CHANGED

    async def browse() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with Chromium(width=1400, height=700) as browser:
            assert await browser.goto(base + "/") == 200
            out["title"] = await browser.evaluate("document.title")
            out["first"] = await browser.evaluate(cell(sensor.name, "last-reading"))
            out["today"] = await browser.evaluate(cell(sensor.name, "readings-today"))
            out["session"] = await browser.evaluate(cell(sensor.name, "session"))
            out["idle"] = await browser.evaluate(cell(idle.name, "last-reading"))
            out["idle_session"] = await browser.evaluate(cell(idle.name, "session"))
            out["scripts"] = await browser.evaluate("document.scripts.length")

            # More readings, over a few history intervals; the page shows the newest.
            c = climate.wire()
            for i in range(6):
                assert w.exchange(w.reading([216 + i])).code == coap.CHANGED
                assert c.exchange(c.reading([118 + i, 60 - i], slot=1)).code == coap.CHANGED
                await asyncio.sleep(0.3)
            assert await browser.goto(base + "/") == 200
            out["second"] = await browser.evaluate(cell(sensor.name, "last-reading"))
            out["today2"] = await browser.evaluate(cell(sensor.name, "readings-today"))
            out["climate"] = await browser.evaluate(cell(climate.name, "last-reading"))
            out["bytes"] = await browser.evaluate(cell(sensor.name, "bytes-today"))
            out["airtime"] = await browser.evaluate(cell(sensor.name, "airtime-today"))
            out["room"] = await browser.evaluate(cell(sensor.name, "room"))
            out["permission"] = await browser.evaluate(cell(sensor.name, "permission"))
            out["rows"] = await browser.evaluate("document.querySelectorAll('#fleet tbody tr').length")
            out["fleet_png"] = await browser.screenshot()

            # One device's page: two charts with bars.
            href = await browser.evaluate(
                "document.querySelector('tr[data-device=\"%s\"] td.device a').getAttribute('href')"
                % sensor.name
            )
            assert await browser.goto(base + href) == 200
            out["charts"] = await browser.evaluate("document.querySelectorAll('svg.chart').length")
            out["bars"] = await browser.evaluate(
                "Array.from(document.querySelectorAll('svg.chart'))"
                ".map(s => s.querySelectorAll('rect').length)"
            )
            out["labels"] = await browser.evaluate(
                "Array.from(document.querySelectorAll('svg.chart')).map(s => s.getAttribute('aria-label'))"
            )
            out["device_png"] = await browser.screenshot()
            assert await browser.goto(base + "/device/nobody") == 404
        return out

    got = asyncio.run(browse())
    assert got["title"] == "lowbw proxy: fleet"
    assert got["first"].startswith("temperature 21.5 °C")
    assert got["today"] == "1"
    assert got["session"].startswith("established")
    assert got["idle"] == "none since start" and got["idle_session"] == "no session"
    assert got["scripts"] == 0
    assert got["second"].startswith("temperature 22.1 °C")
    assert got["today2"] == "7"
    assert got["climate"].startswith("climate: temperature 12.3 °C, humidity 55 %")
    assert got["rows"] == 3
    assert got["room"] == sensor.room_id and got["permission"] == "sensor"
    assert "↑" in got["bytes"] and got["airtime"].endswith(" s") and got["airtime"] != "0 s"
    assert got["charts"] == 2
    assert all(n >= 2 for n in got["bars"]), got["bars"]
    assert got["labels"] == ["airtime of greenhouse", "readings of greenhouse"]

    for name in ("fleet_png", "device_png"):
        data = got[name]
        width, height = png_size(data)
        assert width >= 1000 and height >= 200
        (tmp_path / (name + ".png")).write_bytes(data)
    if os.environ.get("LOWBW_UPDATE_SCREENSHOT") == "1":
        (DOCS / "status-page.png").write_bytes(got["fleet_png"])
        (DOCS / "status-page-device.png").write_bytes(got["device_png"])


def test_status_page_needs_the_token_in_the_browser_too(device_factory, proxy_factory) -> None:
    dev = device_factory()
    token = "status-page-token-0123456789"
    proxy = proxy_factory(metrics=MetricsSection(listen="127.0.0.1:0", token=token))
    base = "http://127.0.0.1:%d/" % proxy.server.metrics_port
    w = dev.wire()
    assert w.exchange(w.reading([199])).code == coap.CHANGED

    async def browse() -> tuple[int, str, int, str]:
        async with Chromium() as browser:
            refused = await browser.goto(base)
            refused_text = await browser.evaluate("document.body.innerText")
            await browser.set_headers({"Authorization": "Bearer " + token})
            allowed = await browser.goto(base)
            reading = await browser.evaluate(cell(dev.name, "last-reading"))
        return refused, refused_text, allowed, reading

    refused, refused_text, allowed, reading = asyncio.run(browse())
    assert refused == 401 and dev.name not in refused_text
    assert allowed == 200 and reading.startswith("temperature 19.9 °C")


def test_status_page_escapes_and_headers(device_factory, proxy_factory) -> None:
    """No script, nothing from elsewhere: the page says so to the browser (CSP)."""
    dev = device_factory()
    proxy = proxy_factory(metrics=MetricsSection(listen="127.0.0.1:0"))
    status, headers, body = http_get("http://127.0.0.1:%d/" % proxy.server.metrics_port)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    page = body.decode()
    assert (
        dev.name in page
        and "<script" not in page
        and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    )
