"""Headless Chromium (Debian's ``chromium``) driven over the Chrome DevTools Protocol.

No Playwright, no browser download: the system browser is started with
``--remote-debugging-port=0``, its page target is reached over a websocket
(aiohttp, already a dependency of lowbw), and the few CDP commands a test
needs are sent by hand: navigate, evaluate JavaScript, set request headers,
take a screenshot.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from typing import Any

import aiohttp

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "/usr/lib/chromium/chromium")


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name) or (name if os.path.isabs(name) and os.access(name, os.X_OK) else None)
        if path:
            return path
    return None


class Chromium:
    """One headless browser process with one page. ``async with Chromium() as b: await b.goto(url)``."""

    def __init__(self, width: int = 1280, height: int = 800) -> None:
        path = find_chromium()
        if path is None:
            raise RuntimeError("chromium is not installed (scripts/bootstrap.sh installs it)")
        self._profile = tempfile.mkdtemp(prefix="lowbw-chromium-")
        args = [
            path,
            "--headless=new",
            "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1",
            "--user-data-dir=" + self._profile,
            "--window-size=%d,%d" % (width, height),
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-proxy-server",
            "--hide-scrollbars",
            "--mute-audio",
            "--force-device-scale-factor=1",
            "about:blank",
        ]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium's sandbox refuses to run as root
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.ws_url = self._wait_for_devtools()
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._events: list[dict[str, Any]] = []

    def _wait_for_devtools(self, timeout: float = 30.0) -> str:
        assert self.proc.stderr is not None
        found: list[str] = []
        lines: list[str] = []

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                lines.append(line)
                m = re.search(r"DevTools listening on (ws://\S+)", line)
                if m and not found:
                    found.append(m.group(1))

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close_process()
                raise RuntimeError("chromium did not start:\n" + "".join(lines[-20:]))
            time.sleep(0.05)
        return found[0]

    async def __aenter__(self) -> Chromium:
        port = int(self.ws_url.split(":")[2].split("/")[0])
        self._session = aiohttp.ClientSession()
        async with self._session.get("http://127.0.0.1:%d/json/list" % port) as resp:
            targets = await resp.json()
        page = next(t for t in targets if t.get("type") == "page")
        self._ws = await self._session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024)
        await self.send("Page.enable")
        await self.send("Network.enable")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        self.close_process()

    def close_process(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self._profile, ignore_errors=True)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One CDP command; its result (events that arrive meanwhile are kept)."""
        assert self._ws is not None
        ident = next(self._ids)
        await self._ws.send_str(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            msg = await asyncio.wait_for(self._ws.receive(), 30)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError("devtools connection ended: %r" % msg)
            data = json.loads(msg.data)
            if data.get("id") == ident:
                if "error" in data:
                    raise RuntimeError("%s failed: %s" % (method, data["error"]))
                result: dict[str, Any] = data.get("result", {})
                return result
            self._events.append(data)

    async def wait_event(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        assert self._ws is not None
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self._events):
                if event.get("method") == method:
                    del self._events[i]
                    return event
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no %s event" % method)
            msg = await asyncio.wait_for(self._ws.receive(), left)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError("devtools connection ended: %r" % msg)
            self._events.append(json.loads(msg.data))

    async def set_headers(self, headers: dict[str, str]) -> None:
        await self.send("Network.setExtraHTTPHeaders", headers=headers)

    async def goto(self, url: str) -> int:
        """Load ``url``; the HTTP status of the document."""
        self._events.clear()
        await self.send("Page.navigate", url=url)
        await self.wait_event("Page.loadEventFired")
        status = 0
        for event in self._events:
            if (
                event.get("method") == "Network.responseReceived"
                and event["params"].get("type") == "Document"
            ):
                status = int(event["params"]["response"]["status"])
        return status

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError("script failed: %s" % result["exceptionDetails"])
        return result["result"].get("value")

    async def screenshot(self, full_page: bool = True) -> bytes:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            metrics = await self.send("Page.getLayoutMetrics")
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            params["clip"] = {
                "x": 0,
                "y": 0,
                "width": size["width"],
                "height": size["height"],
                "scale": 1,
            }
            params["captureBeyondViewport"] = True
        shot = await self.send("Page.captureScreenshot", **params)
        return base64.b64decode(shot["data"])
