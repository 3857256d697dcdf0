"""The link model: a sans-I/O core driven by an explicit clock.

A :class:`Link` has two directions, ``"up"`` (side a to side b: device to
proxy) and ``"down"``. It owns no socket and no clock. A driver tells it when
a frame is offered (``offer(direction, data, now)``), asks when the next
delivery is due (``next_deadline()``) and collects what is due
(``poll(now)``). The same core runs under the virtual clock of
:mod:`radio_sim.sim`, under asyncio (:mod:`radio_sim.aio`, virtual or real
time) and inside the UDP relay.

What happens to an offered frame, per direction, in this order:

1. MTU: a frame longer than ``mtu`` is dropped (cause ``mtu``) unless the
   direction fragments, in which case it is sent as several transmissions of
   at most ``mtu`` bytes each carrying ``fragment_overhead`` header bytes.
2. Queue: frames wait for the transmitter in FIFO order. If ``queue_frames``
   frames are already waiting (not counting the one on the air) the frame is
   tail-dropped (cause ``queue_full``).
3. Duty cycle: a transmitter may use at most ``duty_cycle * duty_window_s``
   seconds of airtime in any window of ``duty_window_s`` (a transmission
   counts in the window where it starts). A frame beyond the budget waits
   (``duty_policy="wait"``) or is dropped (``"drop"``, cause ``duty_cycle``).
4. Channel: serialization takes ``(len + frame_overhead) * 8 / rate_bps``
   seconds, or the LoRa time on air when the direction has LoRa settings. In
   half-duplex mode both directions share one channel (an ideal MAC: a
   transmission takes the first gap that fits, plus ``turnaround_s`` when the
   channel changes direction).
5. Loss on the air (the airtime is spent anyway): independent loss with
   probability ``loss`` and/or a Gilbert-Elliott two-state burst model
   (``burst``). A fragmented frame is lost if any fragment is.
6. Delivery at the end of the last transmission plus ``latency_s`` plus a
   uniform extra delay in ``[0, jitter_s]``. Deliveries keep FIFO order
   (jitter never reorders) except for frames picked for reordering
   (probability ``reorder``), which are held back ``reorder_delay_s`` and can
   be overtaken. With probability ``duplicate`` a second copy arrives
   ``duplicate_delay_s`` after the first.

Randomness comes from one ``random.Random`` per direction seeded from the link
seed and the direction name, with a fixed number of draws per transmission
and per frame, so the same seed and the same offers give the same run.

Counters are updated when the model decides: drops and airtime at offer time
(the future of an accepted frame is known then), deliveries when polled.
Invariant, per direction: offered = delivered + dropped + pending.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import heapq
import math
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from radio_sim.lora import LoRaParams

UP = "up"
DOWN = "down"
DIRECTIONS = (UP, DOWN)

DROP_CAUSES = ("mtu", "queue_full", "duty_cycle", "loss")

# Float slack for budget comparisons (seconds).
_EPS = 1e-9


def other(direction: str) -> str:
    return DOWN if direction == UP else UP


@dataclass(frozen=True)
class GilbertElliott:
    """Two-state burst-loss model.

    Per transmission: lose it with probability ``loss_bad`` in the bad state or
    ``loss_good`` in the good state, then move good->bad with probability
    ``p_good_bad`` or bad->good with ``p_bad_good``. With the defaults
    (loss 0 when good, 1 when bad) the long-run loss rate is
    ``p_good_bad / (p_good_bad + p_bad_good)`` and losses come in bursts of
    mean length ``1 / p_bad_good``.
    """

    p_good_bad: float
    p_bad_good: float
    loss_good: float = 0.0
    loss_bad: float = 1.0

    @classmethod
    def from_loss(cls, loss_rate: float, mean_burst: float) -> GilbertElliott:
        """Burst model with the given long-run loss rate and mean burst length (frames)."""
        if not 0.0 <= loss_rate < 1.0:
            raise ValueError("loss rate must be in [0, 1), got %r" % (loss_rate,))
        if mean_burst < 1.0:
            raise ValueError("mean burst length must be >= 1 frame, got %r" % (mean_burst,))
        r = 1.0 / mean_burst
        p = r * loss_rate / (1.0 - loss_rate)
        if p > 1.0:
            raise ValueError(
                "loss rate %r with mean burst %r needs P(good->bad) > 1; use shorter bursts"
                % (loss_rate, mean_burst)
            )
        return cls(p_good_bad=p, p_bad_good=r)

    @property
    def stationary_bad(self) -> float:
        total = self.p_good_bad + self.p_bad_good
        return self.p_good_bad / total if total > 0 else 0.0

    @property
    def loss_rate(self) -> float:
        pb = self.stationary_bad
        return pb * self.loss_bad + (1.0 - pb) * self.loss_good

    @property
    def mean_burst(self) -> float:
        return 1.0 / self.p_bad_good if self.p_bad_good > 0 else math.inf

    def validate(self) -> None:
        for name in ("p_good_bad", "p_bad_good", "loss_good", "loss_bad"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError("Gilbert-Elliott %s must be in [0, 1], got %r" % (name, v))

    def to_dict(self) -> dict[str, float]:
        return {
            "p_good_bad": self.p_good_bad,
            "p_bad_good": self.p_bad_good,
            "loss_good": self.loss_good,
            "loss_bad": self.loss_bad,
            "loss_rate": self.loss_rate,
            "mean_burst": self.mean_burst,
        }


@dataclass(frozen=True)
class DirectionParams:
    """How one direction of the link behaves. See the module docstring."""

    rate_bps: float | None = 100.0  # None: no serialization delay
    lora: LoRaParams | None = None  # when set, airtime is the LoRa time on air
    frame_overhead: int = 0  # bytes the radio adds to every transmission
    latency_s: float = 0.0
    jitter_s: float = 0.0
    loss: float = 0.0
    burst: GilbertElliott | None = None
    duplicate: float = 0.0
    duplicate_delay_s: float = 0.0
    reorder: float = 0.0
    reorder_delay_s: float = 0.5
    mtu: int | None = None
    fragment: bool = False
    fragment_overhead: int = 0
    queue_frames: int | None = 32  # None: unbounded
    duty_cycle: float | None = None  # fraction of the window, e.g. 0.01
    duty_window_s: float = 3600.0
    duty_policy: str = "wait"  # or "drop"

    def airtime(self, nbytes: int) -> float:
        """Seconds one transmission of ``nbytes`` (before ``frame_overhead``) occupies the channel."""
        total = nbytes + self.frame_overhead
        if self.lora is not None:
            return self.lora.time_on_air(total)
        if self.rate_bps is None:
            return 0.0
        return total * 8 / self.rate_bps

    def validate(self) -> None:
        def prob(name: str) -> None:
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError("%s must be a probability in [0, 1], got %r" % (name, v))

        def nonneg(name: str) -> None:
            v = getattr(self, name)
            if not v >= 0:
                raise ValueError("%s must be >= 0, got %r" % (name, v))

        if self.rate_bps is not None and not self.rate_bps > 0:
            raise ValueError("rate must be > 0 bit/s, got %r" % (self.rate_bps,))
        for name in ("loss", "duplicate", "reorder"):
            prob(name)
        for name in (
            "latency_s",
            "jitter_s",
            "duplicate_delay_s",
            "reorder_delay_s",
            "frame_overhead",
            "fragment_overhead",
        ):
            nonneg(name)
        if self.mtu is not None and self.mtu < 1:
            raise ValueError("mtu must be >= 1 byte, got %r" % (self.mtu,))
        if self.fragment:
            if self.mtu is None:
                raise ValueError("fragmentation needs an mtu")
            if self.fragment_overhead >= self.mtu:
                raise ValueError("fragment overhead must be smaller than the mtu")
        if self.queue_frames is not None and self.queue_frames < 0:
            raise ValueError("queue length must be >= 0 frames, got %r" % (self.queue_frames,))
        if self.duty_cycle is not None and not 0.0 < self.duty_cycle <= 1.0:
            raise ValueError("duty cycle must be in (0, 1], got %r" % (self.duty_cycle,))
        if not self.duty_window_s > 0:
            raise ValueError("duty-cycle window must be > 0 s")
        if self.duty_policy not in ("wait", "drop"):
            raise ValueError("duty-cycle policy must be 'wait' or 'drop', got %r" % (self.duty_policy,))
        if self.burst is not None:
            self.burst.validate()
        if self.lora is not None:
            self.lora.validate()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (GilbertElliott, LoRaParams)):
                v = v.to_dict()
            out[f.name] = v
        return out


# Names accepted by LinkParams.replace() that belong to the whole link.
_LINK_KEYS = ("half_duplex", "turnaround_s", "name", "description")
_DIR_KEYS = tuple(f.name for f in dataclasses.fields(DirectionParams))


@dataclass(frozen=True)
class LinkParams:
    """Both directions of a link, and what they share."""

    up: DirectionParams = field(default_factory=DirectionParams)
    down: DirectionParams = field(default_factory=DirectionParams)
    half_duplex: bool = False
    turnaround_s: float = 0.0
    name: str = "custom"
    description: str = ""

    @classmethod
    def symmetric(
        cls,
        name: str = "custom",
        description: str = "",
        half_duplex: bool = False,
        turnaround_s: float = 0.0,
        **direction: Any,
    ) -> LinkParams:
        d = DirectionParams(**direction)
        return cls(d, d, half_duplex, turnaround_s, name, description)

    def direction(self, name: str) -> DirectionParams:
        if name == UP:
            return self.up
        if name == DOWN:
            return self.down
        raise ValueError("direction must be 'up' or 'down', got %r" % (name,))

    def replace(self, **overrides: Any) -> LinkParams:
        """Copy with overrides; direction keys apply to both directions.

        Prefix a direction key with ``up_`` or ``down_`` to change one side only.
        """
        link_kw: dict[str, Any] = {}
        both: dict[str, Any] = {}
        per: dict[str, dict[str, Any]] = {UP: {}, DOWN: {}}
        for key, value in overrides.items():
            if key in _LINK_KEYS:
                link_kw[key] = value
            elif key in _DIR_KEYS:
                both[key] = value
            elif key.startswith("up_") and key[3:] in _DIR_KEYS:
                per[UP][key[3:]] = value
            elif key.startswith("down_") and key[5:] in _DIR_KEYS:
                per[DOWN][key[5:]] = value
            else:
                raise ValueError("unknown link parameter %r" % (key,))
        up = dataclasses.replace(self.up, **{**both, **per[UP]})
        down = dataclasses.replace(self.down, **{**both, **per[DOWN]})
        return dataclasses.replace(self, up=up, down=down, **link_kw)

    def validate(self) -> None:
        self.up.validate()
        self.down.validate()
        if not self.turnaround_s >= 0:
            raise ValueError("turnaround must be >= 0 s")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "half_duplex": self.half_duplex,
            "turnaround_s": self.turnaround_s,
            "up": self.up.to_dict(),
            "down": self.down.to_dict(),
        }


@dataclass(frozen=True)
class Delivery:
    """A frame (or a duplicate of one) arriving at the far end."""

    time: float
    direction: str
    data: bytes
    seq: int
    flow: int = 0
    meta: Any = None
    duplicate: bool = False
    offered_at: float = 0.0


@dataclass(frozen=True)
class Transmission:
    start: float
    end: float
    nbytes: int  # on the air, including overheads
    lost: bool


@dataclass(frozen=True)
class OfferResult:
    """What the model decided for one offered frame."""

    direction: str
    seq: int
    nbytes: int
    accepted: bool  # False: dropped before the air (mtu, queue_full, duty_cycle)
    cause: str | None = None  # drop cause, including "loss"
    transmissions: tuple[Transmission, ...] = ()
    deliver_at: float | None = None
    duplicate_at: float | None = None

    @property
    def delivered(self) -> bool:
        return self.deliver_at is not None

    @property
    def airtime(self) -> float:
        return sum(t.end - t.start for t in self.transmissions)

    @property
    def tx_start(self) -> float | None:
        return self.transmissions[0].start if self.transmissions else None

    @property
    def tx_end(self) -> float | None:
        return self.transmissions[-1].end if self.transmissions else None


class Observer(Protocol):
    def event(self, ev: Mapping[str, Any]) -> None: ...


class _Summary:
    """Count, mean and max of a series without keeping it."""

    __slots__ = ("count", "total", "max")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, v: float) -> None:
        self.count += 1
        self.total += v
        if v > self.max:
            self.max = v

    def to_dict(self) -> dict[str, float | int]:
        mean = self.total / self.count if self.count else 0.0
        return {"count": self.count, "mean": mean, "max": self.max, "total": self.total}


class DirectionStats:
    """Counters of one direction. ``to_dict()`` is the JSON shape of the stats file."""

    def __init__(self) -> None:
        self.offered_frames = 0
        self.offered_bytes = 0
        self.delivered_frames = 0
        self.delivered_bytes = 0
        self.dropped: dict[str, list[int]] = {c: [0, 0] for c in DROP_CAUSES}
        self.pending_frames = 0
        self.pending_bytes = 0
        self.duplicated_frames = 0
        self.duplicated_bytes = 0
        self.reordered_frames = 0
        self.fragmented_frames = 0
        self.transmissions = 0
        self.lost_transmissions = 0
        self.air_bytes = 0
        self.airtime_s = 0.0
        self.duty_wait_s = 0.0
        self.queue_delay = _Summary()
        self.latency = _Summary()

    def drop(self, cause: str, nbytes: int) -> None:
        slot = self.dropped.setdefault(cause, [0, 0])
        slot[0] += 1
        slot[1] += nbytes

    @property
    def dropped_frames(self) -> int:
        return sum(v[0] for v in self.dropped.values())

    @property
    def dropped_bytes(self) -> int:
        return sum(v[1] for v in self.dropped.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "offered_frames": self.offered_frames,
            "offered_bytes": self.offered_bytes,
            "delivered_frames": self.delivered_frames,
            "delivered_bytes": self.delivered_bytes,
            "dropped_frames": self.dropped_frames,
            "dropped_bytes": self.dropped_bytes,
            "dropped": {c: {"frames": v[0], "bytes": v[1]} for c, v in self.dropped.items()},
            "pending_frames": self.pending_frames,
            "pending_bytes": self.pending_bytes,
            "duplicated_frames": self.duplicated_frames,
            "duplicated_bytes": self.duplicated_bytes,
            "reordered_frames": self.reordered_frames,
            "fragmented_frames": self.fragmented_frames,
            "transmissions": self.transmissions,
            "lost_transmissions": self.lost_transmissions,
            "air_bytes": self.air_bytes,
            "airtime_s": self.airtime_s,
            "duty_wait_s": self.duty_wait_s,
            "queue_delay_s": self.queue_delay.to_dict(),
            "latency_s": self.latency.to_dict(),
        }


class _DirState:
    def __init__(self, name: str, params: DirectionParams, seed: int) -> None:
        self.name = name
        self.params = params
        # String seeds hash deterministically (sha512), unlike hash() of a tuple.
        self.rng = random.Random("radio_sim:%d:%s" % (seed, name))
        self.burst_bad = False
        self.busy_until = -math.inf
        self.waiting: collections.deque[float] = collections.deque()  # tx starts still in the future
        self.last_delivery = -math.inf
        self.duty: collections.deque[tuple[float, float]] = collections.deque()  # (start, airtime)
        self.seq = 0
        self.stats = DirectionStats()


class Link:
    """Two directions of a radio link under a :class:`LinkParams` model."""

    def __init__(
        self,
        params: LinkParams,
        *,
        seed: int | None = None,
        start: float = 0.0,
        observers: Iterable[Observer] = (),
    ) -> None:
        params.validate()
        if seed is None:
            seed = random.SystemRandom().randrange(2**32)
        self.params = params
        self.seed = seed
        self.start = start
        self.last_now = start
        self.observers: list[Observer] = list(observers)
        self._dirs = {d: _DirState(d, params.direction(d), seed) for d in DIRECTIONS}
        # Half duplex: every scheduled transmission as (start, end, direction), by start.
        self._channel: list[tuple[float, float, str]] = []
        self._heap: list[tuple[float, int, Delivery]] = []
        self._counter = 0

    # -- observers --------------------------------------------------------

    def add_observer(self, obs: Observer) -> None:
        self.observers.append(obs)

    def _emit(self, ev: dict[str, Any]) -> None:
        for obs in self.observers:
            obs.event(ev)

    def _rel(self, t: float) -> float:
        return t - self.start

    # -- scheduling helpers -----------------------------------------------

    @staticmethod
    def _duty_ready(
        p: DirectionParams, hist: list[tuple[float, float]], t: float, air: float
    ) -> float | None:
        """Earliest start >= t that keeps the duty-cycle budget, None if never."""
        if p.duty_cycle is None:
            return t
        window = p.duty_window_s
        budget = p.duty_cycle * window
        if air > budget + _EPS:
            return None
        recent = [(s, a) for (s, a) in hist if s > t - window]
        used = sum(a for _, a in recent)
        if used + air <= budget + _EPS:
            return t
        # Wait for the oldest transmissions to leave the window, one by one.
        for s, a in recent:
            used -= a
            if used + air <= budget + _EPS:
                return max(t, s + window)
        return t

    def _find_slot(self, t: float, air: float, direction: str) -> float:
        if not self.params.half_duplex:
            return t
        gap_other = self.params.turnaround_s
        for s, e, d in self._channel:
            gap = gap_other if d != direction else 0.0
            if e + gap <= t:
                continue
            if t + air + gap <= s:
                break
            t = max(t, e + gap)
        return t

    def _prune(self, now: float) -> None:
        for st in self._dirs.values():
            while st.waiting and st.waiting[0] <= now:
                st.waiting.popleft()
            if st.params.duty_cycle is not None:
                horizon = now - st.params.duty_window_s
                while st.duty and st.duty[0][0] <= horizon:
                    st.duty.popleft()
        if self._channel:
            # Keep intervals that can still constrain a slot search from now on.
            keep = now - self.params.turnaround_s
            i = 0
            while i < len(self._channel) and self._channel[i][1] < keep:
                i += 1
            if i:
                del self._channel[:i]

    def _lost(self, st: _DirState) -> bool:
        p = st.params
        # Fixed draws per transmission keep the random streams aligned between runs.
        u_loss = st.rng.random()
        u_burst = st.rng.random()
        u_move = st.rng.random()
        lost = u_loss < p.loss
        b = p.burst
        if b is not None:
            if u_burst < (b.loss_bad if st.burst_bad else b.loss_good):
                lost = True
            if st.burst_bad:
                st.burst_bad = not (u_move < b.p_bad_good)
            else:
                st.burst_bad = u_move < b.p_good_bad
        return lost

    # -- the sans-I/O interface -------------------------------------------

    def offer(
        self,
        direction: str,
        data: bytes,
        now: float,
        *,
        flow: int = 0,
        meta: Any = None,
    ) -> OfferResult:
        """A sender hands ``data`` to the radio at time ``now``; decide its fate."""
        if direction not in self._dirs:
            raise ValueError("direction must be 'up' or 'down', got %r" % (direction,))
        # Time never runs backwards inside the model, whatever the driver does.
        now = max(now, self.last_now)
        self.last_now = now
        self._prune(now)
        st = self._dirs[direction]
        p = st.params
        data = bytes(data)
        n = len(data)
        st.seq += 1
        seq = st.seq
        s = st.stats
        s.offered_frames += 1
        s.offered_bytes += n
        base = {"dir": direction, "seq": seq, "bytes": n, "flow": flow}
        self._emit({"ev": "offer", "t": self._rel(now), **base})

        def reject(cause: str) -> OfferResult:
            s.drop(cause, n)
            self._emit({"ev": "drop", "t": self._rel(now), "cause": cause, **base})
            return OfferResult(direction, seq, n, False, cause)

        # Split into what goes on the air.
        if p.mtu is not None and n > p.mtu:
            if not p.fragment:
                return reject("mtu")
            room = p.mtu - p.fragment_overhead
            count = -(-n // room)
            sizes = [min(room, n - i * room) + p.fragment_overhead for i in range(count)]
        else:
            sizes = [n]
        # Plan every transmission before committing anything (planning is pure).
        plan: list[tuple[float, float, int]] = []
        t = max(now, st.busy_until)
        natural_start = t
        duty_hist = list(st.duty)
        duty_refused = False
        waited = 0.0
        for size in sizes:
            air = p.airtime(size)
            ready = self._duty_ready(p, duty_hist, t, air)
            if ready is None or (p.duty_policy == "drop" and ready > t + _EPS):
                duty_refused = True
                break
            waited += ready - t
            start = self._find_slot(ready, air, direction)
            plan.append((start, start + air, size))
            duty_hist.append((start, air))
            t = start + air
        first_start = plan[0][0] if plan else natural_start
        # Tail drop: the frame would wait and the queue of waiting frames is full.
        if p.queue_frames is not None and first_start > now + _EPS and len(st.waiting) >= p.queue_frames:
            return reject("queue_full")
        if duty_refused:
            return reject("duty_cycle")

        # Commit.
        txs: list[Transmission] = []
        lost = False
        for i, (start, end, size) in enumerate(plan):
            tx_lost = self._lost(st)
            lost = lost or tx_lost
            on_air = size + p.frame_overhead
            txs.append(Transmission(start, end, on_air, tx_lost))
            s.transmissions += 1
            s.air_bytes += on_air
            s.airtime_s += end - start
            if tx_lost:
                s.lost_transmissions += 1
            if p.duty_cycle is not None:
                st.duty.append((start, end - start))
            if self.params.half_duplex:
                bisect.insort(self._channel, (start, end, direction))
            self._emit(
                {
                    "ev": "tx",
                    "t": self._rel(start),
                    "end": self._rel(end),
                    "airtime": end - start,
                    "air_bytes": on_air,
                    "frag": i,
                    "nfrag": len(plan),
                    "queue_delay": start - now if i == 0 else 0.0,
                    "lost": tx_lost,
                    **base,
                }
            )
        st.busy_until = plan[-1][1]
        if first_start > now:
            st.waiting.append(first_start)
        s.queue_delay.add(first_start - now)
        s.duty_wait_s += waited
        if len(plan) > 1:
            s.fragmented_frames += 1

        # Per-frame draws, always taken.
        u_jitter = st.rng.random()
        u_reorder = st.rng.random()
        u_dup = st.rng.random()
        if lost:
            s.drop("loss", n)
            self._emit({"ev": "drop", "t": self._rel(st.busy_until), "cause": "loss", **base})
            return OfferResult(direction, seq, n, True, "loss", tuple(txs))
        at = st.busy_until + p.latency_s + u_jitter * p.jitter_s
        if u_reorder < p.reorder:
            at += p.reorder_delay_s
            s.reordered_frames += 1
        else:
            at = max(at, st.last_delivery)
            st.last_delivery = at
        s.pending_frames += 1
        s.pending_bytes += n
        self._push(Delivery(at, direction, data, seq, flow, meta, False, now))
        dup_at = None
        if u_dup < p.duplicate:
            dup_at = at + p.duplicate_delay_s
            self._push(Delivery(dup_at, direction, data, seq, flow, meta, True, now))
        return OfferResult(direction, seq, n, True, None, tuple(txs), at, dup_at)

    def _push(self, d: Delivery) -> None:
        self._counter += 1
        heapq.heappush(self._heap, (d.time, self._counter, d))

    def next_deadline(self) -> float | None:
        """Time of the next delivery, or None when nothing is in flight."""
        return self._heap[0][0] if self._heap else None

    def pending(self) -> int:
        return len(self._heap)

    def poll(self, now: float) -> list[Delivery]:
        """Deliveries due at or before ``now``, in time order."""
        out: list[Delivery] = []
        while self._heap and self._heap[0][0] <= now + _EPS:
            _, _, d = heapq.heappop(self._heap)
            s = self._dirs[d.direction].stats
            if d.duplicate:
                s.duplicated_frames += 1
                s.duplicated_bytes += len(d.data)
            else:
                s.pending_frames -= 1
                s.pending_bytes -= len(d.data)
                s.delivered_frames += 1
                s.delivered_bytes += len(d.data)
                s.latency.add(d.time - d.offered_at)
            self._emit(
                {
                    "ev": "deliver",
                    "t": self._rel(d.time),
                    "dir": d.direction,
                    "seq": d.seq,
                    "bytes": len(d.data),
                    "flow": d.flow,
                    "dup": d.duplicate,
                    "latency": d.time - d.offered_at,
                    "data": d.data,
                }
            )
            out.append(d)
        if out:
            self.last_now = max(self.last_now, now)
        return out

    # -- reading the counters ---------------------------------------------

    def direction_stats(self, direction: str) -> DirectionStats:
        return self._dirs[direction].stats

    def airtime(self, direction: str | None = None) -> float:
        """Airtime used so far, in one direction or both."""
        if direction is None:
            return sum(st.stats.airtime_s for st in self._dirs.values())
        return self._dirs[direction].stats.airtime_s

    def stats(self, now: float | None = None) -> dict[str, Any]:
        """JSON-ready counters (the shape of the stats file)."""
        t = self.last_now if now is None else now
        ups = self._dirs[UP].stats.to_dict()
        downs = self._dirs[DOWN].stats.to_dict()
        total: dict[str, Any] = {}
        for key in (
            "offered_frames",
            "offered_bytes",
            "delivered_frames",
            "delivered_bytes",
            "dropped_frames",
            "dropped_bytes",
            "pending_frames",
            "pending_bytes",
            "transmissions",
            "air_bytes",
            "airtime_s",
        ):
            total[key] = ups[key] + downs[key]
        return {
            "version": 1,
            "preset": self.params.name,
            "seed": self.seed,
            "elapsed_s": t - self.start,
            "params": self.params.to_dict(),
            UP: ups,
            DOWN: downs,
            "total": total,
        }


def make_link(
    link: Link | LinkParams | str,
    *,
    seed: int | None = None,
    start: float = 0.0,
    observers: Iterable[Observer] = (),
    **overrides: Any,
) -> Link:
    """A Link from a Link (returned as is), LinkParams, or a preset name plus overrides."""
    if isinstance(link, Link):
        if overrides:
            raise ValueError("overrides need a preset name or LinkParams, not a Link")
        for obs in observers:
            link.add_observer(obs)
        return link
    if isinstance(link, str):
        from radio_sim.presets import get_preset

        params = get_preset(link)
    else:
        params = link
    if overrides:
        params = params.replace(**overrides)
    return Link(params, seed=seed, start=start, observers=observers)


Callback = Callable[[Delivery], None]
