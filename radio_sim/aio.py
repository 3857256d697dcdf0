"""asyncio integration: a virtual-time event loop and link endpoints.

:class:`VirtualTimeLoop` is an ordinary selector event loop whose clock only
moves when nothing is ready: instead of sleeping until the next timer it jumps
there. ``asyncio.sleep``, ``call_later``, ``wait_for`` and timeouts all work,
and a 100 bit/s exchange that takes minutes completes at once. Real sockets
still work (they are polled without blocking) but their timing is meaningless
in virtual time.

:class:`LoopDriver` connects a :class:`radio_sim.model.Link` to any asyncio
loop (virtual or real): it offers frames at ``loop.time()`` and arms one timer
for the next delivery. The UDP relay uses it with the real loop.

:class:`AsyncLink` gives asyncio code two ends of a link, either as
queue-like endpoints (``send()`` / ``await recv()``) or as datagram
transport/protocol pairs::

    async def main():
        link = AsyncLink("100bps", seed=1)
        a, b = link.endpoint("a"), link.endpoint("b")
        a.send(b"hello")
        assert await b.recv() == b"hello"
        return link.link.airtime("up")

    radio_sim.aio.run(main())       # returns 0.4 at once
"""

from __future__ import annotations

import asyncio
import collections
import selectors
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

from radio_sim.model import DOWN, UP, Delivery, Link, LinkParams, Observer, OfferResult, make_link

T = TypeVar("T")


class _VirtualSelector(selectors.BaseSelector):
    """Delegates to a real selector but never blocks while timers are pending."""

    def __init__(self) -> None:
        self._real = selectors.DefaultSelector()
        self.loop: VirtualTimeLoop | None = None

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None or self.loop is None:
            # Nothing scheduled: only real I/O (or another thread) can wake us.
            return self._real.select(timeout)
        self.loop._advance(timeout)
        return []

    def close(self) -> None:
        self._real.close()

    def get_map(self) -> Any:
        return self._real.get_map()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time starting at ``start`` seconds."""

    def __init__(self, start: float = 0.0) -> None:
        self._vtime = float(start)
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.loop = self

    def time(self) -> float:
        return self._vtime

    def _advance(self, timeout: float) -> None:
        target = self._vtime + timeout
        # Land exactly on the next timer rather than on now + (when - now),
        # which can fall one ulp short and never reach it.
        scheduled = getattr(self, "_scheduled", None)
        if scheduled:
            when = scheduled[0].when()
            if abs(when - target) < 1e-6:
                target = when
        self._vtime = max(self._vtime, target)


def new_virtual_loop(start: float = 0.0) -> VirtualTimeLoop:
    return VirtualTimeLoop(start)


def run(main: Coroutine[Any, Any, T], *, start: float = 0.0) -> T:
    """Run a coroutine on a fresh :class:`VirtualTimeLoop` (like ``asyncio.run``)."""
    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(start)) as runner:
        return runner.run(main)


class LoopDriver:
    """Drives a Link from an asyncio loop: offers at ``loop.time()``, delivers on timers."""

    def __init__(
        self,
        link: Link,
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[Delivery], None],
    ) -> None:
        self.link = link
        self.loop = loop
        self.deliver = deliver
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0

    def offer(self, direction: str, data: bytes, *, flow: int = 0, meta: Any = None) -> OfferResult:
        res = self.link.offer(direction, data, self.loop.time(), flow=flow, meta=meta)
        self._arm()
        return res

    def _arm(self) -> None:
        deadline = self.link.next_deadline()
        if deadline is None:
            return
        if self._timer is not None:
            if self._timer_when <= deadline:
                return
            self._timer.cancel()
        self._timer_when = deadline
        self._timer = self.loop.call_at(deadline, self._fire, deadline)

    def _fire(self, deadline: float) -> None:
        self._timer = None
        # A timer may run a hair before its deadline; the deadline is the truth.
        for d in self.link.poll(max(self.loop.time(), deadline)):
            try:
                self.deliver(d)
            except Exception as exc:  # a failing receiver must not stop the radio
                self.loop.call_exception_handler(
                    {"message": "radio_sim delivery callback failed", "exception": exc}
                )
        self._arm()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class AsyncEndpoint:
    """One end of an :class:`AsyncLink`: ``send()`` now, ``await recv()`` later."""

    def __init__(self, alink: AsyncLink, name: str, direction: str) -> None:
        self.alink = alink
        self.name = name
        self.direction = direction
        self._queue: collections.deque[bytes] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[bytes]] = collections.deque()
        self.on_receive: Callable[[bytes], Any] | None = None

    def send(self, data: bytes) -> OfferResult:
        return self.alink.driver.offer(self.direction, bytes(data))

    async def recv(self) -> bytes:
        if self._queue:
            return self._queue.popleft()
        fut: asyncio.Future[bytes] = self.alink.loop.create_future()
        self._waiters.append(fut)
        return await fut

    def recv_nowait(self) -> bytes | None:
        return self._queue.popleft() if self._queue else None

    def _deliver(self, data: bytes) -> None:
        if self.on_receive is not None:
            self.on_receive(data)
            return
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(data)
                return
        self._queue.append(data)


class LinkDatagramTransport(asyncio.DatagramTransport):
    """A datagram transport whose datagrams cross the simulated link."""

    def __init__(self, endpoint: AsyncEndpoint, protocol: asyncio.DatagramProtocol) -> None:
        super().__init__()
        self._endpoint = endpoint
        self._protocol = protocol
        self._closing = False
        self._extra = {
            "sockname": _side_addr(endpoint.name),
            "peername": _side_addr("b" if endpoint.name == "a" else "a"),
        }

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closing:
            return
        self._endpoint.send(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._endpoint.on_receive = None
        self._endpoint.alink.loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def get_write_buffer_size(self) -> int:
        return 0


def _side_addr(name: str) -> tuple[str, int]:
    return ("10.0.0.1", 40000) if name == "a" else ("10.0.1.1", 5683)


class AsyncLink:
    """A simulated link for asyncio code (create it inside the running loop, or pass ``loop``)."""

    def __init__(
        self,
        link: Link | LinkParams | str = "100bps",
        *,
        seed: int | None = 0,
        loop: asyncio.AbstractEventLoop | None = None,
        observers: Iterable[Observer] = (),
        **overrides: Any,
    ) -> None:
        self.loop = loop if loop is not None else asyncio.get_running_loop()
        self.link = make_link(link, seed=seed, start=self.loop.time(), observers=observers, **overrides)
        self.driver = LoopDriver(self.link, self.loop, self._deliver)
        self.a = AsyncEndpoint(self, "a", UP)
        self.b = AsyncEndpoint(self, "b", DOWN)

    def endpoint(self, name: str) -> AsyncEndpoint:
        if name == "a":
            return self.a
        if name == "b":
            return self.b
        raise ValueError("endpoint must be 'a' or 'b', got %r" % (name,))

    def _deliver(self, d: Delivery) -> None:
        (self.b if d.direction == UP else self.a)._deliver(d.data)

    async def create_datagram_endpoint(
        self, name: str, protocol_factory: Callable[[], asyncio.DatagramProtocol]
    ) -> tuple[LinkDatagramTransport, asyncio.DatagramProtocol]:
        """Like ``loop.create_datagram_endpoint`` for one end of the link."""
        ep = self.endpoint(name)
        protocol = protocol_factory()
        transport = LinkDatagramTransport(ep, protocol)
        peer = _side_addr("b" if name == "a" else "a")

        def on_receive(data: bytes) -> None:
            protocol.datagram_received(data, peer)

        ep.on_receive = on_receive
        protocol.connection_made(transport)
        return transport, protocol

    def stats(self) -> dict[str, Any]:
        return self.link.stats(self.loop.time())

    def close(self) -> None:
        self.driver.close()


__all__ = [
    "AsyncEndpoint",
    "AsyncLink",
    "LinkDatagramTransport",
    "LoopDriver",
    "VirtualTimeLoop",
    "new_virtual_loop",
    "run",
    "DOWN",
    "UP",
]
