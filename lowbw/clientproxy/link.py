"""The client-proxy's side of the radio: aiocoap over one Noise IK session to the proxy.

aiocoap does the CoAP work (CON retransmission, deduplication, block-wise
transfer, separate responses); underneath, this module is its message
interface: one UDP socket towards the proxy (or the radio in front of it) and
the lowbw frame layer (``lowbw.wire.frames``, ``lowbw.wire.handshake``).

* The first message of a session goes as the 0-RTT payload of Noise IK message
  1; messages sent while the handshake is in flight wait, and go out sealed as
  soon as IK message 2 arrives. If aiocoap retransmits the 0-RTT message, a new
  handshake (fresh ephemeral key) carries it: the proxy refuses a replayed IK
  message 1, so resending the old datagram could never succeed. An answer to
  any of the last few handshakes is accepted.
  When the proxy answers a newer handshake after an older one, the newer
  session wins (the proxy keeps only the latest session of a key).
* The first message rides the handshake if IK message 1 still fits the
  radio's MTU; otherwise the handshake goes alone and the message follows it.
  (If IK message 2 is lost, the retransmission is a new handshake with the
  same request bytes, which the proxy answers from its first run.) A handshake
  unanswered for two ACK timeouts is given up for a fresh one.
* A message belongs to the session it was first sealed in and is never resent
  in another: the client-proxy makes it again (a POST, whose outcome is then
  unknown, is answered 504 instead).
* ``session_changed()`` lets the client-proxy notice when requests made for
  one session can no longer be answered in it.
* A message the client-proxy bound to a session (``lowbw_bound``: it holds
  that session's identifier references or token slot) is never sent in
  another one.
* ``reset()`` forgets the session (the proxy restarted and lost it, or the
  counter nears its limit); the next message starts a new handshake. The
  exchanges of a replaced session are ended (``ClientMessageManager.abandon``)
  rather than retransmitted into the void, so new requests never queue
  behind them (NSTART=1).
* **Dead link.** While a confirmable message waits for the proxy, nothing at
  all heard from it for ``dead_after`` seconds (any authenticated datagram
  counts) means the proxy or the radio is gone: every request under way fails
  with ``LinkDead`` (the client-proxy answers 504), the session is forgotten,
  and the next request starts a new handshake. An idle link (a parked sync
  and nothing else) sends nothing and so never looks dead.
* The caps offered are the key table (``keys.TABLE_LOWBW_V1``),
  ``CAP_DICT_V1`` (unless the config turns the dictionary off, to measure
  it) and, with ``profile = "compact"``, ``CAP_COMPACT``: the handshake is
  then Noise KK (our key named by its 2-byte id, as a compact device's is)
  and the session's transport frames are compact ones (8-byte tags, a
  1-byte session id; docs/PROTOCOL.md, "Compact link profile") with the
  client header rule (``lowbw.compact.headers``: 2 bytes less up, 3 down).
  What the proxy answered is ``caps`` (the body codec follows it).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any, cast

from aiocoap import error as coap_error
from aiocoap import interfaces
from aiocoap.message import Message
from aiocoap.numbers.types import ACK, CON, RST
from aiocoap.protocol import Context
from aiocoap.tokenmanager import TokenManager

from lowbw.clientproxy.retransmit import ClientMessageManager, LinkDead
from lowbw.compact import headers
from lowbw.proxy.clients import single_payload_max
from lowbw.proxy.transport import LinkTuning
from lowbw.wire import frames, handshake, keys
from lowbw.wire.errors import AuthError, LowbwError, ReplayError

log = logging.getLogger("lowbw.clientproxy.link")

CLIENT_CAPS = keys.TABLE_LOWBW_V1 | handshake.CAP_DICT_V1


def client_caps(dictionary: bool = True, compact: bool = False) -> int:
    """The caps a client-proxy offers: the key table, the preset dictionary unless
    switched off, and ``CAP_COMPACT`` for the compact link profile (Noise KK and
    compact transport frames, as a compact device has them)."""
    caps = CLIENT_CAPS if dictionary else CLIENT_CAPS & ~handshake.CAP_DICT_V1
    return caps | (handshake.CAP_COMPACT if compact else 0)


HANDSHAKES_KEPT = 3
ACK_EVENTS_KEPT = 64

# Noise IK message 1 around its payload: kind, e, encrypted s, caps byte, the
# handshake number (the wall clock in seconds: a 5-byte CBOR head,
# lowbw.wire.handshake.clock_hsn), tag. (KK message 1 is smaller.)
IK1_OVERHEAD = 1 + 32 + 48 + 1 + 5 + 16
# A transport frame from the initiator: kind, session id, long counter, tag.
FRAME_OVERHEAD = 1 + 2 + 3 + 16
# Why a datagram from the proxy was dropped (ClientLink.drops; lowbw_clientproxy_datagrams_dropped_total).
DROP_REASONS = ("no_session", "auth_failed", "replay", "malformed", "unexpected_handshake", "coap_unparsable")


class _Unusable(LowbwError):
    """A datagram from the proxy that fits nothing we hold (``reason``: DROP_REASONS)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _drop_reason(exc: LowbwError) -> str:
    if isinstance(exc, _Unusable):
        return exc.reason
    if isinstance(exc, ReplayError):
        return "replay"
    if isinstance(exc, AuthError):
        return "auth_failed"
    return "malformed"  # DecodeError: not a frame we can read


class ProxyRemote(interfaces.EndpointAddress):
    """The proxy, as aiocoap's remote: one object for the life of the link."""

    scheme = "coap"
    is_multicast = False
    is_multicast_locally = False

    def __init__(self, tuning: LinkTuning) -> None:
        self.tuning = tuning

    def __repr__(self) -> str:
        return "<ProxyRemote>"

    @property
    def hostinfo(self) -> str:
        return "lowbw-proxy"

    @property
    def hostinfo_local(self) -> str:
        return "lowbw-client-proxy"

    @property
    def uri_base(self) -> str:
        return "coap://lowbw-proxy"

    @property
    def uri_base_local(self) -> str:
        return "coap://lowbw-client-proxy"

    @property
    def blockwise_key(self) -> tuple[str, int]:
        return ("lowbw-proxy", id(self))

    @property
    def maximum_block_size_exp(self) -> int:
        return self.tuning.block_szx

    @property
    def maximum_payload_size(self) -> int:
        return single_payload_max(self.tuning)


@dataclass
class LinkStats:
    tx: int = 0
    tx_bytes: int = 0
    rx: int = 0
    rx_bytes: int = 0
    handshakes: int = 0
    dropped: int = 0
    stale: int = 0
    oversize: int = 0
    dead: int = 0  # times the link was given up as dead
    cookies: int = 0  # cookie replies answered (the proxy was under load)

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class ClientLink(interfaces.MessageInterface, asyncio.DatagramProtocol):
    """aiocoap's message interface towards the proxy (module docstring)."""

    def __init__(
        self,
        mman: ClientMessageManager,
        private_key: bytes,
        proxy_public_key: bytes,
        tuning: LinkTuning,
        caps: int = CLIENT_CAPS,
        mtu: int = 65507,
        dead_after: float = 0.0,
        park_tuning: LinkTuning | None = None,
    ) -> None:
        self._mman: ClientMessageManager | None = mman
        self.private_key = private_key
        self.proxy_public_key = proxy_public_key
        self.remote = ProxyRemote(tuning)
        # Parked syncs go to the same proxy as a remote of their own: aiocoap's
        # NSTART=1 is per remote, so a park whose ACK the proxy holds back
        # (Park-Ack) never holds up the other requests, and it arms no
        # dead-link watchdog (it may rightly go unanswered for a long time).
        self.park_remote = ProxyRemote(park_tuning if park_tuning is not None else tuning)
        self._park_mids: dict[int, None] = {}
        self._park_tokens: dict[bytes, None] = {}
        self.offered_caps = caps
        # The compact link profile: KK (the proxy finds our key by its 2-byte id)
        # and compact transport frames (8-byte tags, a 1-byte session id).
        self.compact = bool(caps & handshake.CAP_COMPACT)
        self._token_mids = headers.TokenMids()
        self.mtu = mtu
        self.stats = LinkStats()
        # Counts for lowbw_clientproxy_* (lowbw.clientproxy.metrics): why datagrams were dropped,
        # sessions set up, sessions forgotten (reset: the proxy lost it, Session-End, rekey).
        self.drops: dict[str, int] = {}
        self.sessions_established = 0
        self.resets = 0
        self.session: frames.Session | None = None
        self.caps = 0
        self._handshakes: list[tuple[handshake.Initiator, int]] = []  # (initiator, mid of 0-RTT)
        self._hs_datagrams: dict[int, bytes] = {}  # id(initiator) -> its IK message 1
        # (mid, plaintext, message) until the session is up
        self._waiting: list[tuple[int, bytes, Message]] = []
        self._hs_started = 0.0
        self._changed: asyncio.Future[None] | None = None
        self.last_rx = 0.0  # monotonic time of the last authenticated datagram
        self._transport: asyncio.DatagramTransport | None = None
        # Message ID -> event set when the proxy acknowledges it (parked syncs).
        self._ack_events: dict[int, asyncio.Event] = {}
        # Dead-link watchdog (module docstring); 0: off.
        self.dead_after = dead_after
        self.deaths = 0  # how often the link was given up as dead
        self._unanswered_since: float | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    @property
    def message_manager(self) -> ClientMessageManager | None:
        return self._mman

    # -- asyncio ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable: the radio or the proxy is not there (yet); CoAP retries.
        log.debug("socket error: %s", type(exc).__name__)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.stats.rx += 1
        self.stats.rx_bytes += len(data)
        try:
            plaintext = self._open(data)
        except LowbwError as exc:
            self.stats.dropped += 1
            reason = _drop_reason(exc)
            self.drops[reason] = self.drops.get(reason, 0) + 1
            log.debug("datagram dropped: %s", type(exc).__name__)
            return
        if not plaintext or self._mman is None:
            self._heard()
            return
        try:
            msg = Message.decode(plaintext, remote=self.remote)
        except (coap_error.UnparsableMessage, ValueError):
            self.stats.dropped += 1
            self.drops["coap_unparsable"] = self.drops.get("coap_unparsable", 0) + 1
            log.info("unparsable CoAP message from the proxy dropped")
            return
        # A parked sync's ACK (by message ID) or separate answer (by token) is the park remote's.
        if msg.mtype in (ACK, RST):
            parked = msg.mid in self._park_mids
        else:
            parked = bool(msg.token) and bytes(msg.token) in self._park_tokens
        remote = self.park_remote if parked else self.remote
        msg.remote = remote
        msg.transport_tuning = remote.tuning
        if msg.mtype == ACK:
            acked = self._ack_events.pop(msg.mid, None)
            if acked is not None:
                acked.set()
        # Which session it came in: identifier references resolve in that session's table.
        msg.lowbw_session = self.session  # type: ignore[attr-defined]
        self._mman.dispatch_message(msg)
        self._heard()

    def _open(self, data: bytes) -> bytes:
        kind = frames.kind_of(data)
        if kind == frames.KIND_SHORT or kind == frames.KIND_LONG or kind == frames.KIND_COMPACT:
            if self.session is None:
                raise _Unusable("transport frame without a session", "no_session")
            if self.session.compact:
                plaintext = self._token_mids.open_down(self.session, data)
            else:
                plaintext = bytes(self.session.open(data))
            self.last_rx = time.monotonic()
            return plaintext
        if data[0] == frames.HS_COOKIE_REPLY:
            self._cookie(data)
            return b""
        if data[0] != (frames.HS_KK2 if self.compact else frames.HS_IK2):
            raise _Unusable("unexpected handshake frame", "unexpected_handshake")
        for i, (ini, _mid) in enumerate(self._handshakes):
            try:
                session, caps, response = ini.finish(data)
            except LowbwError:
                continue
            self.caps = caps
            self.sessions_established += 1
            self._set_session(session)
            self.last_rx = time.monotonic()
            # Newer handshakes may still be answered: the proxy keeps only the
            # latest session of a key, so their answer must win when it comes.
            self._handshakes = self._handshakes[i + 1 :]
            log.info("session %04x established (caps 0x%02x)", session.sid, caps)
            waiting, self._waiting = self._waiting, []
            for _mid, plaintext, message in waiting:
                self._seal_and_send(plaintext, message)
            return bytes(response)
        raise _Unusable("handshake answer matches no handshake in flight", "unexpected_handshake")

    def _cookie(self, data: bytes) -> None:
        """The proxy is under load (lowbw.wire.handshake, cookies): our newest IK
        message 1 again at once, with the cookie in front."""
        cookie = handshake.parse_cookie_reply(data)
        if self.session is not None or not self._handshakes:
            raise _Unusable("cookie reply without a handshake in flight", "unexpected_handshake")
        ini = self._handshakes[-1][0]
        first = self._hs_datagrams.get(id(ini))
        if first is None:
            raise _Unusable("cookie reply for a handshake we no longer hold", "unexpected_handshake")
        self.stats.cookies += 1
        log.info("proxy under load: handshake again with its cookie")
        self._sendto(handshake.cookied(cookie, first))

    # -- sessions ---------------------------------------------------------------------

    def _set_session(self, session: frames.Session | None) -> None:
        old, self.session = self.session, session
        if old is not None and old is not session and self._mman is not None:
            # Messages sealed in the old session are never resent in another
            # (send()); end their exchanges once this change has settled.
            asyncio.get_running_loop().call_soon(self._abandon_stale)
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)

    def _abandon_stale(self) -> None:
        mman = self._mman
        if mman is None:
            return
        for remote in (self.remote, self.park_remote):
            for key, message in list(mman.exchange_messages(remote)):
                bound = getattr(message, "lowbw_bound", None)
                if bound is not None and bound is not self.session:
                    mman.abandon(remote, key)

    def session_changed(self) -> asyncio.Future[None]:
        """A future that completes at the next change of session (new, replaced or dropped)."""
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        return self._changed

    def reset(self) -> None:
        """Forget the session; the next message starts a new handshake."""
        if self.session is not None:
            log.info("session %04x dropped", self.session.sid)
            self.resets += 1
            self._set_session(None)
        self._handshakes = []

    # -- dead-link watchdog -----------------------------------------------------------

    def _awaiting(self) -> None:
        """A confirmable message went out: the proxy owes an answer from now on."""
        if self.dead_after <= 0 or self._unanswered_since is not None:
            return
        self._unanswered_since = time.monotonic()
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().call_later(self.dead_after, self._check)

    def _heard(self) -> None:
        """An authenticated datagram came (and was dispatched): the clock starts again
        if something still waits for an answer, else it stops."""
        if self.dead_after <= 0:
            return
        mman = self._mman
        waiting = mman is not None and mman.has_exchanges(self.remote)
        self._unanswered_since = time.monotonic() if waiting else None

    def _check(self) -> None:
        self._watchdog = None
        since = self._unanswered_since
        if since is None:
            return
        left = since + self.dead_after - time.monotonic()
        if left > 0:
            self._watchdog = asyncio.get_running_loop().call_later(left, self._check)
            return
        self.declare_dead()

    def declare_dead(self) -> None:
        """Give up on the link: fail everything under way, forget the session and
        the handshakes, so the next request handshakes afresh."""
        log.warning(
            "no answer from the proxy for %.0f s: link given up; the next request sets it up again",
            self.dead_after,
        )
        self.deaths += 1
        self.stats.dead += 1
        self._unanswered_since = None
        self._waiting = []
        self._handshakes = []
        self._set_session(None)  # also wakes everyone waiting for a change of session
        if self._mman is not None:
            self._mman.fail_remote(self.remote, LinkDead("no answer from the proxy"))
            self._mman.fail_remote(self.park_remote, LinkDead("no answer from the proxy"))

    # -- sending ----------------------------------------------------------------------

    def _sendto(self, datagram: bytes) -> None:
        if self._transport is None:
            return
        self.stats.tx += 1
        self.stats.tx_bytes += len(datagram)
        self._transport.sendto(datagram)

    def _seal_and_send(self, plaintext: bytes, message: Message | None) -> None:
        session = self.session
        if session is None:
            return
        if message is not None and getattr(message, "lowbw_bound", None) is None:
            # Once sealed in a session, a message belongs to it: its token slot
            # and identifiers mean something only there, and a POST resent in
            # another could not be told from a new one (createRoom twice). It is
            # never resent elsewhere (send()); the client-proxy redoes it.
            message.lowbw_bound = session  # type: ignore[attr-defined]
        if message is not None:
            message.lowbw_sent = True  # type: ignore[attr-defined]
        if session.compact:
            # Rule 3 (lowbw.compact.headers): the Message ID's high byte and the
            # header's first byte implied up; down, the answer's ID by its token.
            self._token_mids.sent(plaintext)
            dgram = headers.seal_up(session, plaintext)
        else:
            dgram = bytes(session.seal(plaintext))
        if len(dgram) > self.mtu:
            self.stats.oversize += 1
            log.warning(
                "a %d-byte frame exceeds the radio's MTU (%d B): the radio will drop it", len(dgram), self.mtu
            )
        self._sendto(dgram)

    def _start(self, mid: int, plaintext: bytes, message: Message, ride: bool) -> None:
        """A new handshake; the message rides it as 0-RTT if allowed and it fits, else waits for it."""
        ini = handshake.Initiator(
            self.private_key, self.proxy_public_key, caps=self.offered_caps, compact=self.compact
        )
        if ride and len(plaintext) + IK1_OVERHEAD <= self.mtu:
            dgram = ini.start(plaintext)
        else:
            dgram = ini.start(b"")
            self._queue(mid, plaintext, message)
        self._handshakes = (self._handshakes + [(ini, mid)])[-HANDSHAKES_KEPT:]
        # The datagram itself, to send again with a cookie (kept for the handshakes we keep).
        self._hs_datagrams = {id(i): self._hs_datagrams.get(id(i), bytes(dgram)) for i, _ in self._handshakes}
        self._hs_started = time.monotonic()
        self.stats.handshakes += 1
        self._sendto(bytes(dgram))

    def _queue(self, mid: int, plaintext: bytes, message: Message) -> None:
        self._waiting = [w for w in self._waiting if w[0] != mid] + [(mid, plaintext, message)]

    def send(self, message: Message) -> None:
        if self.session is not None and self.session.needs_rekey():
            self.reset()
        bound = getattr(message, "lowbw_bound", None)
        if bound is not None and bound is not self.session:
            # Made for an earlier session (identifier references, a token slot,
            # a Refs-Known report; or a POST already sent there): never sent in
            # this one. The client-proxy notices the session change and sends
            # the request afresh (or, for a POST, reports its outcome unknown).
            self.stats.stale += 1
            if self._mman is not None and message.mtype == CON and message.mid is not None:
                # Its exchange would otherwise be retransmitted (and dropped here)
                # until aiocoap gives up, holding back every later request (NSTART=1).
                asyncio.get_running_loop().call_soon(self._mman.abandon, message.remote, message.mid)
            return
        if message.remote is self.park_remote and message.code.is_request():
            if message.mid is not None:
                self._park_mids[message.mid] = None
                _bounded(self._park_mids)
            if message.token:
                self._park_tokens[bytes(message.token)] = None
                _bounded(self._park_tokens)
        elif message.mtype == CON:
            self._awaiting()
        acked = getattr(message, "lowbw_acked", None)
        if acked is not None and message.mid is not None:
            self._ack_events[message.mid] = acked
            while len(self._ack_events) > ACK_EVENTS_KEPT:
                self._ack_events.pop(next(iter(self._ack_events)))
        plaintext = message.encode()
        if self.session is not None:
            self._seal_and_send(plaintext, message)
            return
        mid = message.mid if message.mid is not None else -1
        # A request rides the handshake; if the answer is lost, the retransmission
        # is a new handshake with the same request, which the proxy answers from
        # its first run (lowbw.proxy.transport), so a POST does not happen twice.
        ride = message.code.is_request()
        stuck = time.monotonic() - self._hs_started > 2 * self.remote.tuning.ACK_TIMEOUT
        if not self._handshakes or stuck or any(m == mid for _, m in self._handshakes):
            # First message, a handshake that went unanswered, or aiocoap
            # retransmitting the one that rode it: a fresh handshake.
            self._start(mid, plaintext, message, ride)
            return
        self._queue(mid, plaintext, message)

    def queue_depth(self) -> int:
        """Messages waiting to go: for the handshake, or behind the exchange under way (NSTART=1)."""
        mman = self._mman
        queued = mman.backlog(self.remote) if mman is not None else 0
        return len(self._waiting) + queued

    def handshake_pending(self) -> bool:
        """A handshake went out and no session is up yet."""
        return self.session is None and bool(self._handshakes)

    async def determine_remote(self, message: Message) -> Any:
        return self.remote

    async def recognize_remote(self, remote: Any) -> bool:
        return remote is self.remote or remote is self.park_remote

    async def shutdown(self) -> None:
        self._mman = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._transport is not None:
            self._transport.abort()
            self._transport = None


PARK_IDS_KEPT = 256


def _bounded(d: dict[Any, None]) -> None:
    while len(d) > PARK_IDS_KEPT:
        del d[next(iter(d))]


async def open_link(
    ctx: Context,
    proxy: tuple[str, int],
    private_key: bytes,
    proxy_public_key: bytes,
    tuning: LinkTuning,
    caps: int = CLIENT_CAPS,
    mtu: int = 65507,
    dead_after: float = 0.0,
    park_tuning: LinkTuning | None = None,
) -> ClientLink:
    """A ClientLink towards ``proxy``, attached to an aiocoap client Context."""
    loop = asyncio.get_running_loop()
    tman = TokenManager(ctx)
    # aiocoap starts its token counter at a random 16-bit value; from 0, the first
    # 255 requests carry 1-byte tokens (a byte each way per exchange on the air).
    tman._token = 0
    mman = ClientMessageManager(tman)
    link = ClientLink(mman, private_key, proxy_public_key, tuning, caps, mtu, dead_after, park_tuning)
    family = socket.AF_INET6 if ":" in proxy[0] else socket.AF_INET
    await loop.create_datagram_endpoint(lambda: link, remote_addr=proxy, family=family)
    mman.message_interface = link
    tman.token_interface = mman
    ctx.request_interfaces.append(tman)
    return link
