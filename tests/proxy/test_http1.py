"""The readings pool's HTTP/1.1 client (``lowbw.proxy.http1``).

Ordinary answers come from a real aiohttp server. Faults a well-behaved
server does not produce (garbage, a truncated or endless answer, bytes nobody
asked for, a keep-alive connection closed while idle) come from small raw
asyncio servers written for the purpose: stand-ins for a broken homeserver or
reverse proxy, named as such.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from lowbw.proxy.homeserver import POOL_READINGS, Homeserver, HomeserverUnavailable
from lowbw.proxy.http1 import AnswerTooLarge, ConnectFailed, Http1Pool
from lowbw.wire.errors import EncodeError

from .conftest import free_port

PUT = "/_matrix/client/v3/rooms/%21r%3Ax/send/m.room.message/t"


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


class AiohttpServer:
    """A real aiohttp server noting the client connections (ports) its requests came on."""

    def __init__(self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> None:
        self.handler = handler
        self.peers: set[Any] = set()
        self.port = free_port()

    @property
    def connections(self) -> int:
        return len(self.peers)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        self.peers.add(request.transport.get_extra_info("peername"))
        return await self.handler(request)

    async def __aenter__(self) -> AiohttpServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


class RawServer:
    """A stand-in for a broken server: ``script(reader, writer)`` per connection."""

    def __init__(
        self, script: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
    ) -> None:
        self.script = script
        self.connections = 0

    async def __aenter__(self) -> RawServer:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.script(reader, writer)
            finally:
                writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path": request.raw_path,
            "body": body.decode(),
            "auth": request.headers.get("Authorization"),
        }
    )


def test_answers_and_keeps_the_connection() -> None:
    async def main() -> None:
        async with AiohttpServer(echo) as srv:
            pool = Http1Pool("127.0.0.1", srv.port, limit=4)
            for i in range(5):
                status, headers, body = await pool.request(
                    "PUT", PUT + str(i), [("Authorization", "Bearer tok")], b'{"a":1}', 5.0
                )
                assert status == 200
                assert headers["content-type"].startswith("application/json")
                assert json.loads(body) == {
                    "method": "PUT",
                    "path": PUT + str(i),
                    "body": '{"a":1}',
                    "auth": "Bearer tok",
                }
            assert srv.connections == 1  # kept alive
            assert pool.in_use == 0
            await pool.close()

    run(main())


def test_chunked_answer_is_read_whole() -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=201)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for part in (b'{"event_id"', b': "$e', b'v"}'):
            await resp.write(part)
        await resp.write_eof()
        return resp

    async def main() -> None:
        async with AiohttpServer(chunked) as srv:
            pool = Http1Pool("127.0.0.1", srv.port)
            status, headers, body = await pool.request("GET", "/x", [], None, 5.0)
            assert (status, json.loads(body)) == (201, {"event_id": "$ev"})
            assert "chunked" in headers["transfer-encoding"]
            # And the connection is good for the next answer.
            assert (await pool.request("GET", "/y", [], None, 5.0))[0] == 201
            assert srv.connections == 1
            await pool.close()

    run(main())


def test_answer_delimited_by_close() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{"a":')
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"1}")
        await writer.drain()

    async def main() -> None:
        async with RawServer(script) as srv:
            pool = Http1Pool("127.0.0.1", srv.port)
            status, _, body = await pool.request("PUT", "/x", [], b"{}", 5.0)
            assert (status, body) == (200, b'{"a":1}')
            assert pool.in_use == 0 and pool._open == 0  # not kept: it ended with the answer
            await pool.close()

    run(main())


@pytest.mark.parametrize("declared", [True, False])
def test_too_large_answer_is_refused(declared: bool) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if declared:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(40):
                writer.write(b"400\r\n" + b"x" * 1024 + b"\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async def main() -> None:
        async with RawServer(script) as srv:
            pool = Http1Pool("127.0.0.1", srv.port, max_body=16 * 1024)
            with pytest.raises(AnswerTooLarge) as info:
                await pool.request("GET", "/x", [], None, 5.0)
            assert info.value.size > 16 * 1024
            assert pool._open == 0  # that connection is gone
            await pool.close()

    run(main())


@pytest.mark.parametrize(
    "answer",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 2OO OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",  # truncated, then closed
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
        b"",  # closed without a byte, on a fresh connection
    ],
)
def test_broken_answers_are_connection_errors(answer: bytes) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()

    async def main() -> None:
        async with RawServer(script) as srv:
            pool = Http1Pool("127.0.0.1", srv.port)
            with pytest.raises(ConnectionError):
                await pool.request("GET", "/x", [], None, 5.0)
            assert pool.in_use == 0 and pool._open == 0
            await pool.close()

    run(main())


def test_idle_connection_closed_by_the_server_is_replaced_once() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Keep-alive promised, then closed while idle (as a server's idle timeout does).
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.05)

    async def main() -> None:
        async with RawServer(script) as srv:
            pool = Http1Pool("127.0.0.1", srv.port)
            assert (await pool.request("PUT", "/a", [], b"{}", 5.0))[2] == b"ok"
            await asyncio.sleep(0.2)  # the server has closed it meanwhile
            assert (await pool.request("PUT", "/b", [], b"{}", 5.0))[2] == b"ok"
            assert srv.connections == 2
            await pool.close()

    run(main())


def test_unasked_bytes_retire_the_connection() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            await asyncio.sleep(0.02)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra")  # nobody asked
            await writer.drain()

    async def main() -> None:
        async with RawServer(script) as srv:
            pool = Http1Pool("127.0.0.1", srv.port)
            assert (await pool.request("GET", "/a", [], None, 5.0))[2] == b"ok"
            await asyncio.sleep(0.1)
            # Not "extra": the out-of-step connection was dropped, a new one answers.
            assert (await pool.request("GET", "/b", [], None, 5.0))[2] == b"ok"
            assert srv.connections == 2
            await pool.close()

    run(main())


def test_timeout_closes_the_connection() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        await asyncio.sleep(5)

    async def main() -> None:
        async with RawServer(script) as srv:
            pool = Http1Pool("127.0.0.1", srv.port)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(TimeoutError):
                await pool.request("GET", "/x", [], None, 0.3)
            assert loop.time() - t0 < 2.0
            assert pool.in_use == 0 and pool._open == 0
            await pool.close()

    run(main())


def test_cancelled_exchange_closes_the_connection() -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response(text="late")

    async def main() -> None:
        async with AiohttpServer(slow) as srv:
            pool = Http1Pool("127.0.0.1", srv.port)
            task = asyncio.create_task(pool.request("GET", "/x", [], None, 5.0))
            await asyncio.sleep(0.2)
            assert pool.in_use == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert pool.in_use == 0 and pool._open == 0
            await pool.close()

    run(main())


def test_connection_limit_queues_requests() -> None:
    busy = 0
    most = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal busy, most
        busy += 1
        most = max(most, busy)
        await asyncio.sleep(0.05)
        busy -= 1
        return web.json_response({"ok": True})

    async def main() -> None:
        async with AiohttpServer(slow) as srv:
            pool = Http1Pool("127.0.0.1", srv.port, limit=2)
            answers = await asyncio.gather(*(pool.request("PUT", "/x", [], b"{}", 5.0) for _ in range(10)))
            assert [a[0] for a in answers] == [200] * 10
            assert most == 2 and srv.connections == 2
            await pool.close()

    run(main())


def test_refused_connection_names_the_address() -> None:
    async def main() -> None:
        port = free_port()
        pool = Http1Pool("127.0.0.1", port)
        with pytest.raises(ConnectFailed) as info:
            await pool.request("GET", "/x", [], None, 5.0)
        assert (info.value.host, info.value.port) == ("127.0.0.1", port)
        assert pool._open == 0

    run(main())


@pytest.mark.parametrize("bad", ["tok\r\nX-Evil: 1", "tok\nx", "tok\0"])
def test_header_that_cannot_be_sent(bad: str) -> None:
    async def main() -> None:
        async with AiohttpServer(echo) as srv:
            hs = Homeserver("http://127.0.0.1:%d" % srv.port)
            with pytest.raises(EncodeError):
                await hs.request("PUT", PUT, json_body={}, access_token=bad, pool=POOL_READINGS)
            assert srv.connections == 0  # nothing was sent
            await hs.close()

    run(main())


def test_homeserver_readings_pool_maps_outcomes() -> None:
    """Through ``Homeserver.request``: statuses, Retry-After, 5.02 for a huge answer."""

    async def handler(request: web.Request) -> web.Response:
        if request.path.endswith("/limited"):
            return web.json_response({"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 2500}, status=429)
        if request.path.endswith("/huge"):
            return web.Response(body=b"x" * 5000)
        return web.json_response({"event_id": "$e"})

    async def main() -> None:
        async with AiohttpServer(handler) as srv:
            outcomes: list[tuple[str, str]] = []
            hs = Homeserver("http://127.0.0.1:%d" % srv.port, max_body=4096)
            hs.on_result = lambda pool, status, seconds: outcomes.append((pool, status))
            ok = await hs.request("PUT", PUT, json_body={"a": "é"}, access_token="t", pool=POOL_READINGS)
            assert ok.ok and ok.json == {"event_id": "$e"}
            limited = await hs.request("PUT", PUT + "/limited", json_body={}, pool=POOL_READINGS)
            assert (limited.status, limited.errcode, limited.retry_after) == (429, "M_LIMIT_EXCEEDED", 3)
            with pytest.raises(HomeserverUnavailable) as info:
                await hs.request("PUT", PUT + "/huge", json_body={}, pool=POOL_READINGS)
            assert info.value.coap_code == 162
            assert outcomes == [("readings", "200"), ("readings", "429"), ("readings", "too_large")]
            assert hs.pool_in_use(POOL_READINGS) == 0
            await hs.close()

    run(main())
