"""An aiocoap message interface that carries CoAP inside lowbw (Noise) frames.

aiocoap does the CoAP work: message-ID deduplication, piggybacked and separate
responses, CON retransmission, block-wise transfer, Observe. Underneath it this
module puts one UDP socket and the lowbw frame layer (``lowbw.wire.frames``):

* one remote (``SessionAddress``) is one Noise session, not one UDP address.
  Its hash and equality are identity, so deduplication, block-wise and Observe
  state belong to the session and survive the device changing its source
  address. The UDP address a response goes to is updated ("roaming") only after
  a frame from the device authenticated with a counter newer than any before
  it, so a replayed or delayed frame cannot divert the answers.
* transport frames are opened here (``frames.open_up``, which also expands
  the compact profile's CoAP header rules; answers go out through
  ``frames.seal_down``); anything that fails (unknown session id, bad tag,
  replayed counter, garbage) is dropped without an answer and counted in
  ``stats``. A compact session (8-byte tags) also limits forgeries: at most
  ``FORGERY_BURST`` failed frames, then one per ``FORGERY_EVERY`` seconds,
  are tried at all (the rest are dropped unopened, ``forgery_rate``), and
  after ``frames.FORGERY_LIMIT`` failed tag checks the session opens nothing
  more (``forgery_limit``): the device handshakes again, with new keys.
* handshake datagrams go to a ``FrameHandler`` (``lowbw.proxy.sessions``), which
  may hand back a new session and the 0-RTT request it carried. Until the
  first answer to that request is sent the session is *pending*: the answer is
  not sealed as a transport frame but becomes the payload of the Noise IK
  message 2.
* each session carries its own ``TransportTuning`` (``LinkTuning``): aiocoap's
  defaults assume a fast network (an empty ACK after 0.1 s, then a separate
  response), which on a 100 bit/s link triples the bytes of every proxied
  request. ``EMPTY_ACK_DELAY`` is 12 s so answers piggyback whenever the
  homeserver answers in time; the proxy's own CONs wait for two frames' airtime.

Warm readings take a shorter way (``FastPath``, docs/proxy.md, Load): a plain
confirmable POST ``v`` on an established session, with no option but Uri-Path
and Content-Format, is deduplicated by the same message layer (a
retransmission gets the stored answer, or silence while the first copy is in
the works), rendered by the site's own ``render`` (the same limits,
permissions and exactly-once registry), and answered piggybacked, without
aiocoap's token manager, pipes and rendering task. Anything else (block-wise,
Observe, other options, client-proxy or encrypted devices, a link whose
``EMPTY_ACK_DELAY`` is shorter than the reading timeout) goes through aiocoap.
A closed session's fast requests are cancelled like aiocoap's, unanswered.

Deduplication keeps aiocoap's rule (a duplicate CON gets the stored answer) with
two changes (``LowbwMessageManager``): a 5.xx or 4.29 answer is not stored (it
says "try again later", and the device's retry with the same Message ID must be
processed again rather than be told the old failure), and only the last few
exchanges of each session are kept, so memory does not grow with the reading
rate. Exactly-once for readings does not rest on this cache but on the
registry's sent-events table.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from aiocoap import error as coap_error
from aiocoap import interfaces
from aiocoap.error import RenderableError
from aiocoap.message import Message
from aiocoap.messagemanager import MessageManager
from aiocoap.numbers.codes import Code
from aiocoap.numbers.constants import TransportTuning
from aiocoap.numbers.types import ACK, CON
from aiocoap.optiontypes import UintOption
from aiocoap.protocol import Context
from aiocoap.tokenmanager import TokenManager

from lowbw.compact import headers
from lowbw.wire import frames
from lowbw.wire.errors import AuthError, LowbwError, RekeyRequired, ReplayError

log = logging.getLogger("lowbw.proxy.transport")

# Elective option carried on every response while commands wait for the device.
COMMANDS_PENDING_OPTION = 65004

# What a frame around a CoAP message costs: kind byte, session id, long
# counter, tag. Used to size blocks and timers.
FRAME_OVERHEAD = 1 + 2 + 3 + frames.TAG_LEN
# CoAP header, a few options, payload marker.
COAP_OVERHEAD = 24
# Deduplication: answers kept per session, and how often expired ones are dropped.
DEDUP_PER_SESSION = 8
DEDUP_SWEEP = 30.0
RECEIVE_BUFFER = 4 * 1024 * 1024
# Compact sessions: failed frames tried per session, as a token bucket.
FORGERY_BURST = 16
FORGERY_EVERY = 10.0

Sockaddr = tuple[Any, ...]


def block_szx_for(link_bps: float, mtu: int = 0) -> int:
    """Block size exponent (RFC 7959 SZX: 2**(szx+4) bytes) for a link.

    With the radio's MTU known: the largest block whose frame still fits it.
    Without: 128-byte blocks up to 2400 bit/s (they fit the 256-byte frames of
    the slow radios), 1024 above.
    """
    if mtu:
        szx = 6
        while szx > 0 and (1 << (szx + 4)) + COAP_OVERHEAD + FRAME_OVERHEAD > mtu:
            szx -= 1
        return szx
    return 3 if link_bps <= 2400 else 6


class LinkTuning(TransportTuning):
    """aiocoap timings for a link of ``link_bps`` bit/s.

    ``ACK_TIMEOUT``: two maximum-size frames' airtime (request out, answer
    back) plus two seconds of processing, so the proxy's own CONs (separate
    responses, notifications) are not retransmitted while still in the air.
    ``EMPTY_ACK_DELAY``: 12 s, longer than the proxy's reading send timeout
    (10 s), so a sensor reading is always answered by one piggybacked ACK.
    """

    EMPTY_ACK_DELAY = 12.0
    ACK_RANDOM_FACTOR = 1.5
    MAX_RETRANSMIT = 4

    def __init__(self, link_bps: float = 100.0, empty_ack_delay: float | None = None, mtu: int = 0) -> None:
        if link_bps <= 0:
            raise ValueError("link_bps must be positive")
        self.link_bps = float(link_bps)
        self.mtu = mtu  # the radio's, 0 if unknown (client sessions size single answers by it)
        self.block_szx = block_szx_for(link_bps, mtu)
        frame = (1 << (self.block_szx + 4)) + COAP_OVERHEAD + FRAME_OVERHEAD
        airtime = frame * 8 / self.link_bps
        self.ACK_TIMEOUT = 2 * airtime + 2.0
        self.MAX_LATENCY = airtime + 2.0
        if empty_ack_delay is not None:
            self.EMPTY_ACK_DELAY = empty_ack_delay

    def __repr__(self) -> str:
        return "<LinkTuning %g bit/s ACK_TIMEOUT %.1f s EMPTY_ACK_DELAY %.1f s>" % (
            self.link_bps,
            self.ACK_TIMEOUT,
            self.EMPTY_ACK_DELAY,
        )


class SessionAddress(interfaces.EndpointAddress):
    """One Noise session with one device, as an aiocoap remote.

    ``session`` is None while the IK answer is still to be sent (``pending``
    holds the handshake then). ``sockaddr`` is where answers go.
    """

    scheme = "coap"
    is_multicast = False
    is_multicast_locally = False

    # Slots (no per-instance dict: sessions are many and mostly idle). The two
    # maximum_* slots shadow the base class's read-only properties.
    __slots__ = (
        "sid",
        "session",
        "pending",
        "device",
        "caps",
        "sockaddr",
        "tuning",
        "maximum_block_size_exp",
        "maximum_payload_size",
        "created",
        "pending_timer",
        "closed",
    )

    def __init__(
        self,
        sid: int,
        session: frames.Session | None,
        device: str,
        caps: int,
        sockaddr: Sockaddr | None,
        tuning: LinkTuning,
        pending: Any = None,
    ) -> None:
        self.sid = sid
        self.session = session
        self.pending = pending
        self.device = device
        self.caps = caps
        self.sockaddr = sockaddr
        self.tuning = tuning
        self.maximum_block_size_exp = tuning.block_szx
        self.maximum_payload_size = 1 << (tuning.block_szx + 4)
        self.created = time.monotonic()
        self.pending_timer: asyncio.TimerHandle | None = None
        self.closed = False

    def __repr__(self) -> str:
        return "<SessionAddress %s sid=%04x>" % (self.device, self.sid)

    @property
    def hostinfo(self) -> str:
        return "session-%04x" % self.sid

    @property
    def hostinfo_local(self) -> str:
        return "lowbw-proxy"

    @property
    def uri_base(self) -> str:
        return "coap://" + self.hostinfo

    @property
    def uri_base_local(self) -> str:
        return "coap://lowbw-proxy"

    @property
    def blockwise_key(self) -> tuple[str, int, int]:
        return ("lowbw", self.sid, id(self))

    @property
    def authenticated_claims(self) -> list[tuple[str, str]]:
        return [("lowbw-device", self.device)]

    @property
    def table_id(self) -> int:
        return self.caps & 0x0F


class FrameHandler(Protocol):
    """What the transport needs from the session table (lowbw.proxy.sessions)."""

    def poll_changes(self) -> None: ...

    def lookup(self, sid: int) -> SessionAddress | None: ...

    def handshake(self, datagram: bytes, sockaddr: Sockaddr) -> tuple[SessionAddress, bytes] | None: ...

    def complete(self, addr: SessionAddress, response: bytes) -> bytes | None: ...

    def commands_pending(self, device: str) -> int: ...

    def is_client(self, device: str) -> bool:
        """A client-proxy's session: a repeated 0-RTT request is answered from its
        first run, and compact frames use lowbw.compact.headers."""
        ...


class FastPath(Protocol):
    """The site's side of the warm-reading fast path (``lowbw.proxy.resources.ProxySite``)."""

    def takes_fast(self, addr: SessionAddress, request: Message) -> bool:
        """True if ``request`` (a confirmable message) may skip aiocoap."""
        ...

    def render(self, request: Message) -> Awaitable[Message]: ...


class DeviceTraffic:
    """One device's datagrams and bytes both ways, and when it was last heard (Unix time)."""

    __slots__ = ("rx", "tx", "rx_bytes", "tx_bytes", "last_seen")

    def __init__(self) -> None:
        self.rx = 0
        self.tx = 0
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.last_seen = 0.0


@dataclass
class TransportStats:
    """Counters, for tests, benchmarks and metrics (never logged per datagram).

    ``dropped`` by reason (``DROP_REASONS``); ``auth_failures`` counts the
    transport frames that named a live session of a device but did not
    authenticate, per device (a rising count is a forgery attempt or a broken
    device). ``devices`` is None unless metrics are on: then each datagram
    from or to a session adds to its device's ``DeviceTraffic``.
    """

    rx: int = 0
    tx: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    auth_failures: dict[str, int] = field(default_factory=dict)
    devices: dict[str, DeviceTraffic] | None = None

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def traffic(self, device: str) -> DeviceTraffic | None:
        devices = self.devices
        if devices is None:
            return None
        t = devices.get(device)
        if t is None:
            t = devices[device] = DeviceTraffic()
        return t

    def forget_device(self, device: str) -> None:
        """A revoked device: its per-device counts go (bounded cardinality)."""
        self.auth_failures.pop(device, None)
        if self.devices is not None:
            self.devices.pop(device, None)


# Why a datagram was dropped (TransportStats.dropped keys): transport frames
# (00/01) that did not open, and handshake datagrams refused (their details are
# in SessionTable.handshake_counts).
DROP_AUTH = "auth_failure"
DROP_REPLAY = "replay"
DROP_UNKNOWN_SESSION = "unknown_session"
DROP_MALFORMED = "malformed"
DROP_COAP = "coap_unparsable"
DROP_HANDSHAKE = "handshake_rejected"
DROP_INTERNAL = "internal"
DROP_ZERO_RTT_REPEAT = "zero_rtt_repeat"
DROP_FORGERY_RATE = "forgery_rate"
DROP_FORGERY_LIMIT = "forgery_limit"
DROP_REASONS = (
    DROP_AUTH,
    DROP_REPLAY,
    DROP_UNKNOWN_SESSION,
    DROP_MALFORMED,
    DROP_COAP,
    DROP_HANDSHAKE,
    DROP_INTERNAL,
    DROP_ZERO_RTT_REPEAT,
    DROP_FORGERY_RATE,
    DROP_FORGERY_LIMIT,
)


class LowbwMessageManager(MessageManager):
    """aiocoap's message layer with lowbw's rules.

    * Outgoing messages use their session's tuning (timers of the proxy's CONs).
    * Deduplication (RFC 7252 §4.5) keeps, per session, the answers to the
      last ``DEDUP_PER_SESSION`` Message IDs for ``EXCHANGE_LIFETIME``. A device
      has one request outstanding at a time (NSTART=1), so a retransmission is
      always of one of its latest messages; the bound keeps memory per session
      fixed at any reading rate, where aiocoap keeps every exchange of the
      last 750 s (at 100 bit/s) with a timer each. Expired entries go in one
      sweep per ``DEDUP_SWEEP`` seconds.
    * 5.xx and 4.29 answers are not kept (module docstring).
    * NSTART=1 backlogs keep only the newest Observe notification per token.
      A newer notification marks the older ones superseded (a dict lookup,
      not a scan of the backlog: a scan per notification is quadratic in the
      backlog, which once pinned the CPU for minutes); a superseded one is
      skipped when its turn comes.
    """

    def __init__(self, token_manager: TokenManager) -> None:
        super().__init__(token_manager)
        # (remote, mid) -> [expiry (loop time), stored answer or None while processing]
        self._dedup: dict[tuple[Any, int], list[Any]] = {}
        self._dedup_mids: dict[Any, list[int]] = {}
        self._sweep: asyncio.TimerHandle | None = None
        # (remote, token) -> the newest notification handed over for it; an
        # older one still in the backlog is skipped when its turn comes.
        self._newest_note: dict[tuple[Any, bytes], Message] = {}

    def send_message(self, message: Message, messageerror_monitor: Any) -> None:
        tuning = getattr(message.remote, "tuning", None)
        if tuning is not None:
            message.transport_tuning = tuning
        if message.code.is_response() and message.opt.observe is not None:
            # Sent at once (no backlog) it is also taken off again at once,
            # in _send_initially.
            self._newest_note[(message.remote, message.token)] = message
        super().send_message(message, messageerror_monitor)

    def _send_initially(self, message: Message, messageerror_monitor: Any = None) -> None:
        if message.code.is_response() and message.opt.observe is not None:
            key = (message.remote, message.token)
            newest = self._newest_note.get(key)
            if newest is not None:
                if newest is not message:
                    # Superseded while it waited in the backlog: the newer
                    # one carries the current state.
                    return
                del self._newest_note[key]
        super()._send_initially(message, messageerror_monitor)

    def _drop(self, key: tuple[Any, int]) -> None:
        if self._dedup.pop(key, None) is None:
            return
        remote, mid = key
        mids = self._dedup_mids.get(remote)
        if mids is not None:
            if mid in mids:
                mids.remove(mid)
            if not mids:
                del self._dedup_mids[remote]

    def _deduplicate_message(self, message: Message) -> bool:
        remote = message.remote
        key = (remote, message.mid)
        now = self.loop.time()
        entry = self._dedup.get(key)
        if entry is not None:
            if entry[0] >= now:
                if message.mtype is CON and entry[1] is not None:
                    log.debug("%s: duplicate CON mid %d, answer resent", remote, message.mid)
                    self._send_initially(entry[1])
                return True
            self._drop(key)
        self._dedup[key] = [now + message.transport_tuning.EXCHANGE_LIFETIME, None]
        mids = self._dedup_mids.setdefault(remote, [])
        mids.append(message.mid)
        while len(mids) > DEDUP_PER_SESSION:
            self._dedup.pop((remote, mids.pop(0)), None)
        if self._sweep is None:
            self._sweep = self.loop.call_later(DEDUP_SWEEP, self._sweep_expired)
        return False

    def _sweep_expired(self) -> None:
        now = self.loop.time()
        for key in [k for k, entry in self._dedup.items() if entry[0] < now]:
            self._drop(key)
        self._sweep = self.loop.call_later(DEDUP_SWEEP, self._sweep_expired) if self._dedup else None

    def _store_response_for_duplicates(self, message: Message) -> None:
        key = (message.remote, message.mid)
        entry = self._dedup.get(key)
        if entry is None:
            return
        code = message.code
        if code.is_response() and (code.class_ == 5 or code == Code.TOO_MANY_REQUESTS):
            self._drop(key)
        else:
            entry[1] = message

    def dedup_size(self) -> int:
        return len(self._dedup)

    def forget_remote(self, remote: Any) -> None:
        """Drop every trace of a closed session (revocation, re-handshake)."""
        for mid in list(self._dedup_mids.get(remote, ())):
            self._drop((remote, mid))
        if self._active_exchanges is not None:
            for key in [k for k in self._active_exchanges if k[0] is remote]:
                _, handle = self._active_exchanges.pop(key)
                handle.cancel()
        self._backlogs.pop(remote, None)
        for nkey in [k for k in self._newest_note if k[0] is remote]:
            del self._newest_note[nkey]
        for pkey in [k for k in self._piggyback_opportunities if k[0] is remote]:
            _, handle = self._piggyback_opportunities.pop(pkey)
            handle.cancel()
        self.stop_requests(remote)

    def stop_requests(self, remote: Any, token: bytes | None = None) -> int:
        """End the work on ``remote``'s incoming requests (all, or the one with
        ``token``) without answering: their rendering tasks are cancelled
        (parked syncs, homeserver calls in flight, Observe registrations).
        Returns how many were stopped."""
        incoming = self.token_manager.incoming_requests
        if not incoming:
            return 0
        if token is not None:
            keys = [(token, remote)] if (token, remote) in incoming else []
        else:
            keys = [k for k in incoming if k[1] is remote]
        for key in keys:
            entry = incoming.pop(key, None)
            if entry is not None:
                # The stopper ends the pipe's interest: aiocoap cancels the task.
                entry[1]()
        return len(keys)

    async def shutdown(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        await super().shutdown()


class LowbwTransport(interfaces.MessageInterface, asyncio.DatagramProtocol):
    """The UDP socket and frame layer under aiocoap (module docstring)."""

    def __init__(self, mman: LowbwMessageManager, handler: FrameHandler) -> None:
        self._mman: LowbwMessageManager | None = mman
        self.handler = handler
        self.stats = TransportStats()
        self._transport: asyncio.DatagramTransport | None = None
        # Timings for one incoming message (default: its session's); the proxy
        # acknowledges a parked sync sooner (lowbw.proxy.clients).
        self.tuning_for: Callable[[SessionAddress, Message], TransportTuning] | None = None
        # device -> [0-RTT request, its answer (None while in the works), expiry, session]
        self._zero_rtt: dict[str, list[Any]] = {}
        # Called with (addr, request, response, bytes_in, bytes_out) for each answer sent.
        self.on_answer: Callable[[SessionAddress, Message | None, Message, int, int], None] | None = None
        # The warm-reading fast path (module docstring); None: everything through aiocoap.
        self.fast_path: FastPath | None = None
        # session -> its fast requests in the works (only sessions that have some).
        self._fast_tasks: dict[SessionAddress, set[asyncio.Task[None]]] = {}
        # compact session -> [failed frames it may still have tried, when counted]
        self._forgery: dict[SessionAddress, list[float]] = {}

    @classmethod
    async def create(
        cls, mman: LowbwMessageManager, handler: FrameHandler, bind: tuple[str, int]
    ) -> LowbwTransport:
        loop = asyncio.get_running_loop()
        self = cls(mman, handler)
        family = socket.AF_INET6 if ":" in bind[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            # Many devices answering a burst at once: the default receive buffer
            # (~200 small datagrams) would drop frames while the loop is busy.
            # The kernel caps the value at net.core.rmem_max.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.bind(bind)
        except OSError:
            sock.close()
            raise
        await loop.create_datagram_endpoint(lambda: self, sock=sock)
        return self

    @property
    def message_manager(self) -> LowbwMessageManager | None:
        return self._mman

    @property
    def local_address(self) -> tuple[str, int]:
        if self._transport is None:
            raise LowbwError("transport not bound")
        name = self._transport.get_extra_info("sockname")
        return str(name[0]), int(name[1])

    # -- asyncio.DatagramProtocol ---------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable from a device that went away: nothing to do.
        log.debug("socket error: %s", type(exc).__name__)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def datagram_received(self, data: bytes, sockaddr: Sockaddr) -> None:
        mman = self._mman
        if mman is None:
            return
        stats = self.stats
        stats.rx += 1
        stats.rx_bytes += len(data)
        transport_frame = False
        try:
            self.handler.poll_changes()
            kind = frames.kind_of(data)
            if kind == frames.KIND_SHORT or kind == frames.KIND_LONG or kind == frames.KIND_COMPACT:
                transport_frame = True
                found = self._open(data, sockaddr)
            else:
                found = self.handler.handshake(data, sockaddr)
        except LowbwError:
            stats.drop(DROP_MALFORMED if transport_frame else DROP_HANDSHAKE)
            return
        except Exception:  # noqa: BLE001 - one bad datagram must never stop the proxy
            log.exception("datagram from %s dropped: internal error", sockaddr[0])
            stats.drop(DROP_INTERNAL)
            return
        if found is None:
            return
        addr, plaintext = found
        if stats.devices is not None:
            traffic = stats.traffic(addr.device)
            if traffic is not None:
                traffic.rx += 1
                traffic.rx_bytes += len(data)
                traffic.last_seen = time.time()
        if addr.pending is not None and plaintext and self._answer_again(addr, plaintext):
            return
        if not plaintext:
            # An IK without a 0-RTT request: answer the handshake at once.
            if addr.pending is not None:
                self._send_pending(addr, b"")
            return
        try:
            msg = Message.decode(plaintext, remote=addr)
        except (coap_error.UnparsableMessage, ValueError):
            self.stats.drop(DROP_COAP)
            log.info("%s: unparsable CoAP message (%d B) dropped", addr.device, len(plaintext))
            if addr.pending is not None:
                self._send_pending(addr, b"")
            return
        msg.transport_tuning = addr.tuning if self.tuning_for is None else self.tuning_for(addr, msg)
        msg.lowbw_rx_bytes = len(data)  # type: ignore[attr-defined]
        try:
            fast = self.fast_path
            if (
                fast is not None
                and addr.pending is None
                and msg.mtype == CON
                and msg.code == Code.POST
                and fast.takes_fast(addr, msg)
            ):
                self._fast_request(mman, addr, msg, fast)
                return
            mman.dispatch_message(msg)
        except Exception:  # noqa: BLE001 - as above: log, count, carry on
            log.exception("%s: message dropped: internal error", addr.device)
            self.stats.drop(DROP_INTERNAL)

    # -- the warm-reading fast path (module docstring) -------------------------------

    def _fast_request(
        self, mman: LowbwMessageManager, addr: SessionAddress, request: Message, fast: FastPath
    ) -> None:
        if mman._deduplicate_message(request):
            # A retransmission: its stored answer went out again, or the first
            # copy is still in the works and will answer.
            return
        task = asyncio.get_running_loop().create_task(self._fast_answer(addr, request, fast))
        tasks = self._fast_tasks.get(addr)
        if tasks is None:
            tasks = self._fast_tasks[addr] = set()
        tasks.add(task)
        task.add_done_callback(lambda t: self._fast_done(addr, t))

    def _fast_done(self, addr: SessionAddress, task: asyncio.Task[None]) -> None:
        tasks = self._fast_tasks.get(addr)
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                del self._fast_tasks[addr]

    async def _fast_answer(self, addr: SessionAddress, request: Message, fast: FastPath) -> None:
        try:
            response = await fast.render(request)
        except RenderableError as exc:
            response = exc.to_message()
        except Exception:  # noqa: BLE001 - as aiocoap does: 5.00, logged
            log.exception("%s: reading failed: internal error", addr.device)
            response = Message(code=Code.INTERNAL_SERVER_ERROR)
        mman = self._mman
        if mman is None or addr.closed:
            return
        # Piggybacked on the ACK of the request, as aiocoap answers within EMPTY_ACK_DELAY.
        response.mtype = ACK
        response.mid = request.mid
        response.token = request.token
        response.remote = addr
        response.request = request
        self.send(response)
        # Kept for a retransmission of the request without the request itself:
        # the stored answers of every session outlive a few young-generation
        # collections, and each object they hold is scanned again (the GC's
        # middle-generation passes were the largest pauses at load).
        response.request = None
        mman._store_response_for_duplicates(response)

    def fast_in_flight(self) -> int:
        """Fast requests in the works (tests)."""
        return sum(len(t) for t in self._fast_tasks.values())

    def _answer_again(self, addr: SessionAddress, plaintext: bytes) -> bool:
        """A request riding a new handshake that is the same bytes as one that rode
        the previous handshake (its answer was lost, the client-proxy's CoAP sent
        it again, in a new handshake): answer it as before instead of running it
        twice (a second createRoom, a second login). Client-proxy sessions only
        (``FrameHandler.is_client``); a device's readings are made
        idempotent by their transaction IDs instead.
        """
        if not self.handler.is_client(addr.device):
            return False
        now = time.monotonic()
        entry = self._zero_rtt.get(addr.device)
        if entry is not None and entry[0] == plaintext and entry[2] > now:
            if entry[1] is not None:
                self.stats.drop(DROP_ZERO_RTT_REPEAT)
                self._send_pending(addr, entry[1])
            # Still in the works: the next copy will find the answer.
            return True
        self._zero_rtt[addr.device] = [plaintext, None, now + addr.tuning.EXCHANGE_LIFETIME, addr]
        return False

    def _open(self, data: bytes, sockaddr: Sockaddr) -> tuple[SessionAddress, bytes] | None:
        sid = frames.peek_session_id(data)
        addr = self.handler.lookup(sid)
        if addr is None or addr.session is None:
            self.stats.drop(DROP_UNKNOWN_SESSION)
            return None
        session = addr.session
        top = session.window.top
        bucket = None
        if session.compact:
            now = time.monotonic()
            bucket = self._forgery.get(addr)
            if bucket is None:
                bucket = self._forgery[addr] = [float(FORGERY_BURST), now]
            bucket[0] = min(float(FORGERY_BURST), bucket[0] + (now - bucket[1]) / FORGERY_EVERY)
            bucket[1] = now
            if bucket[0] < 1.0:
                self.stats.drop(DROP_FORGERY_RATE)
                return None
        try:
            if session.compact and self.handler.is_client(addr.device):
                plaintext = headers.open_up(session, data)  # rule 3, not the device rules
            else:
                plaintext = frames.open_up(session, data)
        except ReplayError:
            self.stats.drop(DROP_REPLAY)
            return None
        except AuthError:
            # A frame naming this device's session that does not authenticate.
            self.stats.drop(DROP_AUTH)
            failures = self.stats.auth_failures
            failures[addr.device] = failures.get(addr.device, 0) + 1
            if bucket is not None:
                bucket[0] -= 1.0
            return None
        except RekeyRequired:
            self.stats.drop(DROP_FORGERY_LIMIT)
            return None
        # Roam only on a frame newer than everything before it: a delayed or
        # replayed older frame (even a genuine one) must not divert answers.
        if session.window.top > top and addr.sockaddr != sockaddr:
            if addr.sockaddr is not None:
                log.info("%s: session %04x moved to a new address", addr.device, addr.sid)
            addr.sockaddr = sockaddr
        return addr, plaintext

    # -- sending ---------------------------------------------------------------

    def sendto(self, datagram: bytes, sockaddr: Sockaddr) -> None:
        if self._transport is None:
            return
        self.stats.tx += 1
        self.stats.tx_bytes += len(datagram)
        self._transport.sendto(datagram, sockaddr)

    def send_to_session(self, addr: SessionAddress, datagram: bytes) -> None:
        """Send a datagram of ``addr``'s session (counted for its device)."""
        if addr.sockaddr is None:
            return
        self.sendto(datagram, addr.sockaddr)
        if self.stats.devices is not None:
            traffic = self.stats.traffic(addr.device)
            if traffic is not None:
                traffic.tx += 1
                traffic.tx_bytes += len(datagram)

    def _send_pending(self, addr: SessionAddress, plaintext: bytes) -> int:
        dgram = self.handler.complete(addr, plaintext)
        if dgram is None or addr.sockaddr is None:
            return 0
        self.send_to_session(addr, dgram)
        return len(dgram)

    def send(self, message: Message) -> None:
        if self._mman is None:
            return
        addr = message.remote
        if isinstance(addr, SessionAddress) and addr.pending is not None and message.code.is_response():
            entry = self._zero_rtt.get(addr.device)
            if entry is not None and entry[3] is addr:
                # Kept even if the session is closed meanwhile: a copy of the
                # request in a newer handshake gets this answer.
                entry[1] = message.encode()
        if not isinstance(addr, SessionAddress) or addr.closed:
            return
        code = message.code
        if code.is_response():
            message.opt.delete_option(COMMANDS_PENDING_OPTION)
            count = self.handler.commands_pending(addr.device)
            if count:
                message.opt.add_option(UintOption(COMMANDS_PENDING_OPTION, count))
        plaintext = message.encode()
        if addr.pending is not None:
            sent = self._send_pending(addr, plaintext)
        elif addr.session is None or addr.sockaddr is None:
            log.debug("%s: no address to answer to yet", addr.device)
            return
        else:
            try:
                session = addr.session
                if session.compact and self.handler.is_client(addr.device):
                    dgram = headers.seal_down(session, plaintext)
                else:
                    dgram = frames.seal_down(session, plaintext)
            except LowbwError as exc:
                # Counter exhausted: the device re-handshakes.
                log.warning("%s: cannot seal (%s)", addr.device, type(exc).__name__)
                return
            self.send_to_session(addr, dgram)
            sent = len(dgram)
        if code.is_response():
            request = getattr(message, "request", None)
            if self.on_answer is not None:
                rx = getattr(request, "lowbw_rx_bytes", 0) if request is not None else 0
                self.on_answer(addr, request, message, rx, sent)
            # The answer may stay in the deduplication cache: without the request
            # it holds no more than itself.
            message.request = None

    async def determine_remote(self, message: Message) -> None:
        # The proxy never starts requests towards a device by URI.
        return None

    async def recognize_remote(self, remote: Any) -> bool:
        return isinstance(remote, SessionAddress) and not remote.closed

    async def shutdown(self) -> None:
        self._mman = None
        tasks = [t for ts in self._fast_tasks.values() for t in ts]
        self._fast_tasks = {}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._transport is not None:
            self._transport.abort()
            self._transport = None

    def forget(self, addr: SessionAddress) -> None:
        """Close a session at the CoAP layer too (nothing more is sent to it)."""
        addr.closed = True
        if addr.pending_timer is not None:
            addr.pending_timer.cancel()
            addr.pending_timer = None
        self._forgery.pop(addr, None)
        if self._mman is not None:
            self._mman.forget_remote(addr)
        # Its fast requests end unanswered, as forget_remote ends aiocoap's.
        for task in self._fast_tasks.pop(addr, ()):
            task.cancel()

    def stop_request(self, addr: SessionAddress, token: bytes) -> bool:
        """Silently end one incoming request (an Observe registration replaced)."""
        return self._mman is not None and self._mman.stop_requests(addr, token) > 0


async def add_lowbw_transport(ctx: Context, bind: tuple[str, int], handler: FrameHandler) -> LowbwTransport:
    """Attach a lowbw transport to an aiocoap Context (as Context's own
    ``_append_tokenmanaged_messagemanaged_transport`` does for UDP)."""
    tman = TokenManager(ctx)
    mman = LowbwMessageManager(tman)
    transport = await LowbwTransport.create(mman, handler, bind)
    mman.message_interface = transport
    tman.token_interface = mman
    ctx.request_interfaces.append(tman)
    return transport
