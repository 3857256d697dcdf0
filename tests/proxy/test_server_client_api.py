"""The Matrix client-server API through the proxy: route ids, CBOR with integer
keys, block-wise transfer, and every HTTP status mapped to CoAP and back."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from lowbw.wire import cbor, coap, keys, status

from .conftest import WireDevice, room_events

TABLE = keys.TABLE_LOWBW_V1
CF_CBOR = coap.uint_encode(60)


def cbor_body(obj: Any) -> bytes:
    return bytes(cbor.dumps(keys.compress(obj, TABLE)))


def decoded(msg: coap.Message) -> Any:
    return keys.expand(cbor.loads(msg.payload, max_items=100_000, max_depth=32), TABLE)


def fetch(wire: WireDevice, make: Any) -> tuple[coap.Message, bytes, int]:
    """Send ``make()`` and follow Block2 to the end: (last answer, whole body, blocks)."""
    answer = wire.exchange(make())
    body = answer.payload
    blocks = 1
    while (b2 := coap.block2(answer)) is not None and b2[1]:
        assert len(answer.payload) == coap.block_size(b2[2])
        msg = make()
        coap.set_block2(msg, b2[0] + 1, False, b2[2])
        answer = wire.exchange(msg)
        body += answer.payload
        blocks += 1
    return answer, body, blocks


def send_blockwise(wire: WireDevice, make: Any, payload: bytes, szx: int = 3) -> tuple[coap.Message, int]:
    """Block1: ``payload`` in 2**(szx+4)-byte blocks; returns the final answer and the block count."""
    size = coap.block_size(szx)
    chunks = [payload[i : i + size] for i in range(0, len(payload), size)]
    for num, chunk in enumerate(chunks):
        msg = make(chunk)
        more = num < len(chunks) - 1
        coap.set_block1(msg, num, more, szx)
        answer = wire.exchange(msg)
        if more:
            assert answer.code == coap.CONTINUE, coap.code_str(answer.code)
    return answer, len(chunks)


def test_filtered_sync_messages_send_state_whoami(device_factory, proxy_factory, synapse, matrix_user):
    dev = device_factory()
    proxy_factory()
    wire = dev.wire()
    for v in (1, 2, 3):
        assert wire.exchange(wire.reading([v])).code == coap.CHANGED

    who = wire.exchange(wire.request(coap.GET, ["wh"]))
    assert who.code == coap.CONTENT and decoded(who)["user_id"] == dev.user_id

    # Filtered /sync through route "~": the answer is larger than one block.
    sync_filter = json.dumps({"room": {"timeline": {"limit": 1}}, "presence": {"types": []}})
    answer, body, blocks = fetch(wire, lambda: wire.request(coap.GET, ["~"], query=["filter=" + sync_filter]))
    assert answer.code == coap.CONTENT and blocks > 1
    raw = cbor.loads(body, max_items=100_000, max_depth=32)
    assert any(isinstance(k, int) for k in raw)  # integer keys on the wire
    sync = keys.expand(raw, TABLE)
    timeline = sync["rooms"]["join"][dev.room_id]["timeline"]["events"]
    assert [e["content"]["body"] for e in timeline] == ["temperature 0.3 °C"]  # limit 1
    assert isinstance(sync["next_batch"], str)

    # /messages through route "-" with the room as parameter.
    answer, body, _ = fetch(
        wire, lambda: wire.request(coap.GET, ["-", dev.room_id], query=["dir=b", "limit=2"])
    )
    chunk = keys.expand(cbor.loads(body, max_items=100_000, max_depth=32), TABLE)["chunk"]
    assert [e["content"]["body"] for e in chunk] == ["temperature 0.3 °C", "temperature 0.2 °C"]

    # A send whose body is larger than a block goes block-wise (Block1).
    text = "long message " * 30
    payload = cbor_body({"msgtype": "m.text", "body": text})

    def send(chunk: bytes) -> coap.Message:
        msg = wire.request(coap.PUT, ["!", dev.room_id, "m.room.message", "big1"], chunk)
        msg.add_option(coap.CONTENT_FORMAT, CF_CBOR)
        return msg

    answer, blocks = send_blockwise(wire, send, payload)
    assert answer.code == coap.CHANGED and blocks > 2
    event_id = decoded(answer)["event_id"]
    events = room_events(synapse.url, matrix_user.access_token, dev.room_id, dev.user_id)
    assert events[-1]["event_id"] == event_id and events[-1]["content"]["body"] == text

    # Reading room state.
    create = wire.exchange(wire.request(coap.GET, ["=", dev.room_id, "m.room.create", ""]))
    assert create.code == coap.CONTENT and "room_version" in decoded(create)
    missing = wire.exchange(wire.request(coap.GET, ["=", dev.room_id, "org.example.none", ""]))
    assert missing.code == coap.NOT_FOUND and decoded(missing)["errcode"] == "M_NOT_FOUND"


# ---- every HTTP status, from a homeserver stand-in that answers what it is asked ----

STATUSES = [200, 201, 202, 204, 301, 304, 400, 401, 403, 404, 405, 409, 410, 413, 418, 422, 429, 451, 500]
STATUSES += [501, 502, 503, 504, 507, 599]


class StatusServer:
    """HTTP server answering ``?want=N`` with status N (and Retry-After: 17 on 429/503)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _handle(self, request: web.Request) -> web.Response:
        want = int(request.query.get("want", "200"))
        headers = {"Retry-After": "17"} if want in (429, 503) else {}
        if want in (204, 304):
            return web.Response(status=want, headers=headers)
        if want >= 400:
            body: dict[str, object] = {"errcode": "M_TEST", "error": "status %d" % want}
        else:
            body = {"ok": want}
        return web.json_response(body, status=want, headers=headers)

    async def _start(self) -> int:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def status_server() -> Iterator[StatusServer]:
    server = StatusServer()
    yield server
    server.close()


def test_every_http_status_maps_to_coap_and_back(device_factory, proxy_factory, status_server):
    dev = device_factory()
    proxy_factory(homeserver_url="http://127.0.0.1:%d" % status_server.port)
    wire = dev.wire()
    for want in STATUSES:
        for method, path in (
            (coap.GET, ["wh"]),
            (coap.PUT, ["!", dev.room_id, "m.room.message", "t%d" % want]),
        ):
            msg = wire.request(
                method, path, cbor_body({}) if method == coap.PUT else b"", query=["want=%d" % want]
            )
            answer = wire.exchange(msg)
            assert status.coap_to_http(answer.code, answer.options) == want, (
                want,
                coap.code_str(answer.code),
            )
            if want in (429, 503):
                assert status.retry_after_from_options(answer.options, answer.code) == 17
            if want >= 400:
                assert decoded(answer) == {"errcode": "M_TEST", "error": "status %d" % want}
    # A 200 to a GET is a bare 2.05, to a PUT a bare 2.04: no extra option bytes.
    ok = wire.exchange(wire.request(coap.GET, ["wh"], query=["want=200"]))
    assert ok.code == coap.CONTENT and ok.options == [(coap.CONTENT_FORMAT, CF_CBOR)]
