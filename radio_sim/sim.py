"""In-process simulation with a virtual clock.

Two endpoints, ``a`` (sends up) and ``b`` (sends down), exchange bytes through
a :class:`radio_sim.model.Link`. Nothing waits: :meth:`Simulation.run` jumps
the clock from one event to the next, so an exchange that takes minutes at
100 bit/s runs in microseconds and its airtime is known exactly.

Endpoints are driven by callbacks, which fits sans-I/O protocol objects::

    sim = Simulation("100bps", seed=1)
    sim.b.serve(lambda frame: proxy.handle(frame))   # returns bytes, a list, or None
    sim.a.on_receive = device.receive_data
    sim.a.send(device.first_request())
    sim.run()
    sim.now                     # when the last delivery happened
    sim.link.airtime("up")      # seconds on the air, exactly

At equal times, deliveries run before timers, and timers run in the order
they were set.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable
from typing import Any

from radio_sim.model import DOWN, UP, Delivery, Link, LinkParams, Observer, OfferResult, make_link

Handler = Callable[[bytes], "bytes | Iterable[bytes] | None"]


class Timer:
    """A scheduled callback; ``cancel()`` stops it."""

    __slots__ = ("when", "callback", "args", "cancelled")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Port:
    """One end of the simulated link."""

    def __init__(self, sim: Simulation, name: str, direction: str) -> None:
        self.sim = sim
        self.name = name
        self.direction = direction  # the direction this end sends on
        self.on_receive: Callable[[bytes], Any] | None = None
        self.inbox: list[bytes] = []  # deliveries when no callback is set
        self.sent_frames = 0
        self.sent_bytes = 0
        self.received_frames = 0
        self.received_bytes = 0

    def send(self, data: bytes) -> OfferResult:
        """Hand a frame to the radio now (virtual time)."""
        self.sent_frames += 1
        self.sent_bytes += len(data)
        res = self.sim.link.offer(self.direction, data, self.sim.now, flow=self.sim.flow)
        return res

    def serve(self, handler: Handler) -> None:
        """Answer each received frame with what ``handler`` returns (bytes, several, or None)."""

        def on_receive(data: bytes) -> None:
            out = handler(data)
            if out is None:
                return
            if isinstance(out, (bytes, bytearray, memoryview)):
                self.send(bytes(out))
                return
            for frame in out:
                self.send(bytes(frame))

        self.on_receive = on_receive

    def _deliver(self, data: bytes) -> None:
        self.received_frames += 1
        self.received_bytes += len(data)
        if self.on_receive is None:
            self.inbox.append(data)
        else:
            self.on_receive(data)


class Simulation:
    """A link plus a virtual clock plus two ports."""

    def __init__(
        self,
        link: Link | LinkParams | str = "100bps",
        *,
        seed: int | None = 0,
        observers: Iterable[Observer] = (),
        **overrides: Any,
    ) -> None:
        self.link = make_link(link, seed=seed, start=0.0, observers=observers, **overrides)
        self.now = self.link.start
        # Flow number of this conversation; names the synthetic pcap addresses.
        self.flow = 0
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self.a = Port(self, "a", UP)
        self.b = Port(self, "b", DOWN)
        self.deliveries: list[Delivery] = []
        self.steps = 0

    # -- clock ------------------------------------------------------------

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> Timer:
        timer = Timer(max(when, self.now), callback, args)
        heapq.heappush(self._timers, (timer.when, next(self._order), timer))
        return timer

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        return self.call_at(self.now + max(0.0, delay), callback, *args)

    def _next_timer(self) -> float | None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def next_event(self) -> float | None:
        times = [t for t in (self.link.next_deadline(), self._next_timer()) if t is not None]
        return min(times) if times else None

    # -- running ----------------------------------------------------------

    def step(self) -> bool:
        """Advance to the next event and run everything due then; False when idle."""
        t = self.next_event()
        if t is None:
            return False
        self.now = max(self.now, t)
        self.steps += 1
        for d in self.link.poll(self.now):
            self.deliveries.append(d)
            port = self.b if d.direction == UP else self.a
            port._deliver(d.data)
        while True:
            nt = self._next_timer()
            if nt is None or nt > self.now:
                break
            _, _, timer = heapq.heappop(self._timers)
            timer.callback(*timer.args)
        return True

    def run(self, until: float | None = None, *, max_steps: int = 10_000_000) -> float:
        """Run until nothing is left to happen (or until virtual time ``until``); return the time."""
        for _ in range(max_steps):
            t = self.next_event()
            if t is None:
                break
            if until is not None and t > until:
                self.now = max(self.now, until)
                break
            self.step()
        else:
            raise RuntimeError("simulation did not settle within %d steps" % max_steps)
        if until is not None and self.next_event() is None:
            self.now = max(self.now, until)
        return self.now

    def stats(self) -> dict[str, Any]:
        return self.link.stats(self.now)


def exchange(
    frames: Iterable[tuple[str, bytes]],
    link: Link | LinkParams | str = "100bps",
    *,
    seed: int | None = 0,
    sequential: bool = True,
    observers: Iterable[Observer] = (),
    **overrides: Any,
) -> Simulation:
    """Send a scripted exchange through a fresh simulation and return it, run.

    ``frames`` are ``("up" | "down", bytes)`` pairs. With ``sequential`` each
    frame is sent when the previous one has arrived (or was lost), like a
    request/response dialogue; otherwise every frame is offered at time 0.
    """
    sim = Simulation(link, seed=seed, observers=observers, **overrides)
    items = list(frames)
    for direction, _ in items:
        if direction not in (UP, DOWN):
            raise ValueError("direction must be 'up' or 'down', got %r" % (direction,))

    def port_for(direction: str) -> Port:
        return sim.a if direction == UP else sim.b

    if not sequential:
        for direction, data in items:
            port_for(direction).send(data)
        sim.run()
        return sim

    def send_from(i: int) -> None:
        if i >= len(items):
            return
        direction, data = items[i]
        res = port_for(direction).send(data)
        # Move on when this frame lands, or when it is known to be lost.
        when = res.deliver_at if res.deliver_at is not None else (res.tx_end or sim.now)
        sim.call_at(when, send_from, i + 1)

    send_from(0)
    sim.run()
    return sim
