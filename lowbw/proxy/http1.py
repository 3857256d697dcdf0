"""A lean HTTP/1.1 keep-alive connection pool for the proxy's readings (httptools parses).

Why not aiohttp here: at load, aiohttp's client machinery (session, connector,
request and response objects, timers, payload registry) cost the proxy about
150 µs of CPU per reading, the largest single item in a profile of the warm
reading path (issue 13). A reading is always the same small exchange: one PUT
with a JSON body of a few hundred bytes on a kept-alive connection, one small
JSON answer. This module does exactly that and nothing else: no redirects,
cookies, proxies, compression or streaming. The answer is parsed by
``httptools`` (llhttp, the parser behind uvicorn), not by us.

Contract (``Http1Pool.request``):

* returns ``(status, headers, body)`` for every HTTP answer;
* raises ``TimeoutError`` when no whole answer arrived within ``timeout``
  seconds (connecting included), ``AnswerTooLarge`` when the answer declares or
  sends more than ``max_body`` bytes, ``ConnectionError`` when the connection
  fails or the answer is not HTTP, ``ValueError`` for a header that cannot be
  sent (CR, LF or NUL in it);
* at most ``limit`` connections at once (0: no limit); further requests wait
  for one, in order;
* a connection goes back to the pool only after a complete answer that allows
  keep-alive; a cancelled or failed exchange closes it;
* a request that fails on a reused connection before any answer byte arrived
  (the server closed it while idle) is sent once more on a fresh connection:
  the proxy's PUTs are idempotent (transaction IDs).
"""

from __future__ import annotations

import asyncio
import errno
import ssl
from collections import deque
from typing import cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy


class AnswerTooLarge(Exception):
    """The answer is larger than the pool's ``max_body``."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


class ConnectFailed(ConnectionError):
    """No connection to ``host:port``: ``os_error`` says why (refused, DNS, TLS)."""

    def __init__(self, host: str, port: int, os_error: OSError) -> None:
        super().__init__(os_error.errno, os_error.strerror or type(os_error).__name__)
        self.host = host
        self.port = port
        self.os_error = os_error


def _broken(text: str) -> ConnectionError:
    return ConnectionError(errno.ECONNRESET, text)


class _Connection(asyncio.Protocol):
    """One kept-alive connection: one exchange at a time."""

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[tuple[int, CIMultiDictProxy[str], bytes]] | None = None
        self._headers: list[tuple[str, str]] = []
        self._body = bytearray()
        self._got_bytes = False
        self._headers_done = False
        self._delimited = False  # Content-Length or chunked: the parser knows where it ends
        self._too_large: AnswerTooLarge | None = None

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            # Bytes nobody asked for: the connection is out of step; never reuse it.
            self.close()
            return
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            # A callback's exception comes back wrapped: ours is kept in _too_large.
            if self._too_large is not None:
                self._fail(self._too_large)
            else:
                self._fail(_broken("not an HTTP answer (%s)" % type(exc).__name__))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._headers_done and not self._delimited:
            # An answer delimited by the end of the connection (RFC 9112 §6.3 item 8).
            self._complete(keep=False)
            return
        self._fail(_broken("connection closed by the homeserver"))

    # -- httptools callbacks --------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        for name, value in self._headers:
            lname = name.lower()
            if lname == "content-length":
                self._delimited = True
                if value.strip().isdigit() and int(value) > self.max_body:
                    self._too_large = AnswerTooLarge(int(value))
                    raise self._too_large
            elif lname == "transfer-encoding":
                self._delimited = True

    def on_body(self, body: bytes) -> None:
        self._body += body
        if len(self._body) > self.max_body:
            self._too_large = AnswerTooLarge(len(self._body))
            raise self._too_large

    def on_message_complete(self) -> None:
        self._complete(keep=self._parser.should_keep_alive())

    # -- the exchange ---------------------------------------------------------------

    def _complete(self, keep: bool) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        headers = CIMultiDictProxy(CIMultiDict(self._headers))
        waiter.set_result((self._parser.get_status_code(), headers, bytes(self._body)))
        if not keep:
            self.close()

    def _fail(self, exc: BaseException) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def exchange(self, request: bytes) -> tuple[int, CIMultiDictProxy[str], bytes]:
        if self.transport is None or self.closed:
            raise _broken("connection closed")
        self._waiter = asyncio.get_running_loop().create_future()
        self._headers = []
        self._body = bytearray()
        self._got_bytes = False
        self._headers_done = False
        self._delimited = False
        self.transport.write(request)
        try:
            return await self._waiter
        finally:
            self._waiter = None

    @property
    def answered_nothing(self) -> bool:
        return not self._got_bytes


class Http1Pool:
    """Kept-alive HTTP/1.1 connections to one origin, for small requests."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        limit: int = 0,
        max_body: int = 1 << 20,
        host_header: str | None = None,
        user_agent: str = "lowbw-proxy",
    ) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.limit = limit
        self.max_body = max_body
        self._fixed = "Host: %s\r\nUser-Agent: %s\r\n" % (host_header or host, user_agent)
        self._idle: list[_Connection] = []
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    @property
    def in_use(self) -> int:
        """Connections busy with an exchange now."""
        return self._open - len(self._idle)

    def encode(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes | None) -> bytes:
        parts = ["%s %s HTTP/1.1\r\n" % (method, target), self._fixed]
        for name, value in headers:
            if "\r" in value or "\n" in value or "\0" in value:
                raise ValueError("header %s cannot be sent" % name)
            parts.append("%s: %s\r\n" % (name, value))
        if body is not None:
            parts.append("Content-Length: %d\r\n" % len(body))
        parts.append("\r\n")
        head = "".join(parts).encode("latin-1")
        return head + body if body else head

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | None,
        timeout: float,
    ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        data = self.encode(method, target, headers, body)
        async with asyncio.timeout(timeout):
            for _ in range(2):
                conn = await self._acquire()
                try:
                    answer = await conn.exchange(data)
                except ConnectionError:
                    self._release(conn)
                    if conn.reused and conn.answered_nothing:
                        continue  # closed while idle: once more on a fresh connection
                    raise
                except BaseException:
                    conn.close()  # cancelled or failed mid-exchange: out of step
                    self._release(conn)
                    raise
                self._release(conn)
                return answer
        raise _broken("connection closed by the homeserver")  # pragma: no cover - loop returns or raises

    async def _acquire(self) -> _Connection:
        if self._closed:
            raise _broken("pool closed")
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                conn.reused = True
                return conn
            self._open -= 1
        while self.limit and self._open >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if not waiter.cancelled() and waiter.done():
                    self._wake()  # our turn, not taken: pass it on
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if self._idle:
                return await self._acquire()
        self._open += 1
        try:
            _, conn = await asyncio.get_running_loop().create_connection(
                lambda: _Connection(self.max_body),
                self.host,
                self.port,
                ssl=self.ssl_context,
                server_hostname=self.host if self.ssl_context is not None else None,
            )
        except OSError as exc:
            self._open -= 1
            self._wake()
            raise ConnectFailed(self.host, self.port, exc) from None
        except BaseException:
            self._open -= 1
            self._wake()
            raise
        return conn

    def _release(self, conn: _Connection) -> None:
        if conn.closed or self._closed:
            conn.close()
            self._open -= 1
        else:
            self._idle.append(conn)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
            self._open -= 1
