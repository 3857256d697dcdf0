"""Retransmission timing for the client-proxy's side of the radio.

aiocoap's CoAP defaults (RFC 7252 §4.8) double the wait after every
unanswered transmission: with a timeout sized for a 1 kbit/s radio (about
11 s) four lost exchanges in a row — common with bursty loss — left a
block-wise transfer idle for 3 min 23 s. That backoff protects a shared
Internet path from congestion; on a point-to-point radio the client-proxy
has one request outstanding at a time (NSTART=1) and a retransmission is
sent only once the previous attempt's answer would long have arrived, so
waiting longer and longer after a loss only stalls the user. Here:

* each message's timeout is its own round trip at the link's rate: its frame
  up, the largest frame the proxy may answer with (a full block) down, plus
  ``MARGIN`` seconds of latency and processing;
* the wait grows gently (``BACKOFF``: x1 three times, then x1.5, then at most
  x2) so a burst of losses costs a few round trips, not minutes;
* retransmissions go on (``MAX_RETRANSMIT``) until the dead-link watchdog
  (``lowbw.clientproxy.link``) gives up: nothing at all heard from the proxy
  for ``dead_link_timeout`` seconds (by default ``DEAD_LINK_ACK_TIMEOUTS``
  ACK timeouts at the configured rate) while a request waits for it.

``ClientMessageManager`` applies the timing and lets the link end exchanges
that can no longer be answered (a replaced session, a dead link), so a new
request never queues behind them.
"""

from __future__ import annotations

import random
from typing import Any

from aiocoap import error as coap_error
from aiocoap.message import Message

from lowbw.proxy.transport import COAP_OVERHEAD, FRAME_OVERHEAD, LinkTuning, LowbwMessageManager

# Multipliers of a message's round trip for its first, second, ... wait.
BACKOFF = (1.0, 1.0, 1.0, 1.5, 2.0)
# Seconds added to every round trip: latency, jitter, the proxy's own work.
MARGIN = 1.0
# Default dead-link timeout, in ACK timeouts (two maximum frames' airtime + 2 s).
DEAD_LINK_ACK_TIMEOUTS = 4


class LinkDead(coap_error.NetworkError):
    """Nothing came back from the proxy for ``dead_link_timeout`` seconds."""


class ClientTuning(LinkTuning):
    """``LinkTuning`` with rate-sized, gently growing retransmission timeouts (module docstring)."""

    MAX_RETRANSMIT = 12

    def __init__(self, link_bps: float = 1000.0, mtu: int = 0, dead_link_timeout: float = 0.0) -> None:
        super().__init__(link_bps, mtu=mtu)
        # Spread retransmissions a little (not aiocoap's 1.5: that is up to 50 % idle air).
        self.ACK_RANDOM_FACTOR = 1.1
        self.max_frame = (1 << (self.block_szx + 4)) + COAP_OVERHEAD + FRAME_OVERHEAD
        self.dead_link_timeout = dead_link_timeout or DEAD_LINK_ACK_TIMEOUTS * self.ACK_TIMEOUT

    def round_trip(self, frame_len: int) -> float:
        """Seconds for a ``frame_len``-byte frame up and a full block down, plus ``MARGIN``."""
        return (frame_len + self.max_frame) * 8 / self.link_bps + MARGIN

    def retransmit_timeout(self, frame_len: int, attempt: int) -> float:
        """The wait after transmission number ``attempt`` (0: the first), before spreading."""
        return self.round_trip(frame_len) * BACKOFF[min(attempt, len(BACKOFF) - 1)]

    @property
    def MAX_TRANSMIT_SPAN(self) -> float:  # type: ignore[override]
        # Used by aiocoap for EXCHANGE_LIFETIME (how long duplicates are recognised).
        return sum(
            self.retransmit_timeout(self.max_frame, n) * self.ACK_RANDOM_FACTOR
            for n in range(self.MAX_RETRANSMIT)
        )

    @property
    def MAX_TRANSMIT_WAIT(self) -> float:  # type: ignore[override]
        return self.MAX_TRANSMIT_SPAN + self.retransmit_timeout(self.max_frame, self.MAX_RETRANSMIT)

    def __repr__(self) -> str:
        return "<ClientTuning %g bit/s ACK_TIMEOUT %.1f s dead link after %.1f s>" % (
            self.link_bps,
            self.ACK_TIMEOUT,
            self.dead_link_timeout,
        )


class ParkTuning(ClientTuning):
    """A parked sync's timings: the proxy may hold back its ACK ``ack_delay`` seconds
    (Park-Ack), so that news within that time goes piggybacked (one datagram, no
    separate answer to acknowledge); the request is repeated only after that."""

    def __init__(self, base: ClientTuning, ack_delay: float) -> None:
        super().__init__(base.link_bps, mtu=base.mtu, dead_link_timeout=base.dead_link_timeout)
        self.ack_delay = ack_delay
        self.ACK_TIMEOUT = base.ACK_TIMEOUT + ack_delay

    def retransmit_timeout(self, frame_len: int, attempt: int) -> float:
        return self.ack_delay + super().retransmit_timeout(frame_len, attempt)


class ClientMessageManager(LowbwMessageManager):
    """The message layer of the client-proxy: ``ClientTuning``'s timers, and exchanges that can be ended."""

    def _schedule_retransmit(self, message: Message, timeout: float, retransmission_counter: int) -> Any:
        tuning = message.transport_tuning
        if isinstance(tuning, ClientTuning):
            # aiocoap passes the doubled timeout; the wait is the message's own round trip instead.
            frame = len(message.encode()) + FRAME_OVERHEAD
            timeout = tuning.retransmit_timeout(frame, retransmission_counter) * random.uniform(
                1.0, tuning.ACK_RANDOM_FACTOR
            )
        if retransmission_counter > 0:
            self.retransmissions += 1
        return super()._schedule_retransmit(message, timeout, retransmission_counter)

    def __init__(self, token_manager: Any) -> None:
        super().__init__(token_manager)
        self.retransmissions = 0  # confirmable messages sent again for want of an ACK
        # (remote, mid) -> the CON of an active exchange (aiocoap keeps only its timer).
        self._con_messages: dict[tuple[Any, int], Message] = {}

    def _add_exchange(self, message: Message, messageerror_monitor: Any) -> None:
        super()._add_exchange(message, messageerror_monitor)
        active = self._active_exchanges or {}
        for key in [k for k in self._con_messages if k not in active]:
            del self._con_messages[key]  # ended since (answered, given up)
        self._con_messages[(message.remote, message.mid)] = message

    def exchange_messages(self, remote: Any) -> list[tuple[int, Message]]:
        """(mid, message) of the CONs to ``remote`` still waiting for their ACK."""
        active = self._active_exchanges or {}
        return [(k[1], m) for k, m in self._con_messages.items() if k[0] is remote and k in active]

    def has_exchanges(self, remote: Any) -> bool:
        """Whether a CON to ``remote`` still waits for its ACK (or is queued behind one)."""
        active = self._active_exchanges or {}
        return any(k[0] is remote for k in active) or bool(self._backlogs.get(remote))

    def backlog(self, remote: Any) -> int:
        """Messages to ``remote`` queued behind the exchange under way (NSTART=1)."""
        return len(self._backlogs.get(remote) or ())

    def abandon(self, remote: Any, mid: int) -> None:
        """Stop retransmitting ``mid`` (it can never be answered) and let the next message go."""
        active = self._active_exchanges
        if active is None:
            return
        entry = active.pop((remote, mid), None)
        if entry is None:
            return
        entry[1].cancel()
        self._con_messages.pop((remote, mid), None)
        if remote in self._backlogs:
            self._continue_backlog(remote)

    def fail_remote(self, remote: Any, exc: Exception) -> None:
        """End every exchange with ``remote``: its requests fail with ``exc``, nothing stays queued."""
        active = self._active_exchanges
        if active is not None:
            for key in [k for k in active if k[0] is remote]:
                active.pop(key)[1].cancel()
        self._con_messages.clear()
        self._backlogs.pop(remote, None)
        self.token_manager.dispatch_error(exc, remote)
