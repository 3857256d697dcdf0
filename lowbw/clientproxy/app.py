"""The client-proxy: HTTP+JSON for a stock Matrix client in, lowbw across the radio.

A Matrix client uses ``http://127.0.0.1:8008`` (say) as its homeserver URL.
Every ``/_matrix/client/...`` request is carried to the lowbw proxy beside the
homeserver as one CoAP request (``lowbw.clientproxy.link``) and its answer goes
back to the client with the status, ``Retry-After`` and JSON the homeserver
gave. What is answered here, without the radio:

==================================  ===============================================
``GET /.well-known/matrix/client``  ``{"m.homeserver": {"base_url": <this proxy>}}``
``GET /_matrix/client/versions``    fetched across the link once, then from memory
                                    (``HEAD``: the same without a body)
``/_matrix/media/...``,             501 ``M_UNRECOGNIZED``: media (kilobytes to
``/_matrix/client/v1/media/...``    megabytes) is not carried over a radio link
``OPTIONS`` anything                204 with CORS headers (browser clients)
``GET /_lowbw/stats``               datagrams and bytes on the radio side, JSON
anything else                       404 ``M_UNRECOGNIZED``
==================================  ===============================================

Incremental syncs (``since`` given) cost nothing on the air while nothing
happens: the request goes to the proxy once, *parked* (no ``timeout``; the
proxy long-polls the homeserver until there is news, ``lowbw.proxy.clients``),
and the client's own long-polls are answered here with an empty result
(``next_batch`` = the client's ``since``) whenever its timeout passes first.
The next poll with the same ``since`` picks up the parked request again.

The access token: the first request with a token binds it to the Noise
session (``Bearer-Bind``), later ones name its slot (``Bearer-Slot``, a few
bytes). Tokens from a login through lowbw are handles the proxy issued, so a
real token crosses the radio only if the client brought it from elsewhere,
once per session.

A dead link is never a hung request: nothing heard from the proxy for
``dead_link_timeout`` while a request waits (``lowbw.clientproxy.link``), no
answer within ``request_timeout``, or CoAP giving up on retransmissions is
504, an answer that cannot be read is 502, both with a Matrix error body.

The client never leaves the radio (DESIGN.md §8): requests whose ``Host`` is
not a name of this machine are refused (421), so a web page cannot reach the
client-proxy through DNS rebinding; and every ``well_known`` the homeserver
hands out (the login answer) names the client-proxy, not the homeserver,
so a client that honours it stays on the link.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiocoap import error as coap_error
from aiocoap.message import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import NON
from aiocoap.optiontypes import OpaqueOption, UintOption
from aiocoap.protocol import Context
from aiohttp import web

from lowbw.clientproxy.config import ClientProxyConfig
from lowbw.clientproxy.link import ClientLink, client_caps, open_link
from lowbw.clientproxy.metrics import HttpCounts, route_class
from lowbw.clientproxy.retransmit import ClientTuning, LinkDead, ParkTuning
from lowbw.clientproxy.txnids import TxnIds
from lowbw.compact.codec import BodyCodec, compact_query_value
from lowbw.compact.refs import ClientRefs
from lowbw.proxy.clients import (
    BEARER_BIND_OPTION,
    BEARER_SLOT_OPTION,
    BIND_REQUIRED_OPTION,
    BYTE_STRINGS_OPTION,
    CF_OCTETS,
    ECHO_HOLD_OPTION,
    FORM_BLOBS,
    LOGIN_ENDINGS,
    MAX_SLOTS,
    PARK_ACK_OPTION,
    PARK_MAX,
    QUERY_SAME_OPTION,
    REFS_KNOWN_OPTION,
    SESSION_END_OPTION,
    SYNC_SECTIONS,
)
from lowbw.wire import handshake, keys, routes, status
from lowbw.wire.errors import EncodeError, LowbwError

log = logging.getLogger("lowbw.clientproxy")

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, POST, PUT, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "X-Requested-With, Content-Type, Authorization",
}
METHODS = {"GET": Code.GET, "POST": Code.POST, "PUT": Code.PUT, "DELETE": Code.DELETE}
FIRST = asyncio.FIRST_COMPLETED
SESSIONS_KEPT = 3
# Bearer-Bind slot meaning "this request only": no slot of the session is touched.
TRANSIENT_SLOT = 0xFF
REF_PREFIXES = ("\x01", "\x02", "\x03")
# How long the proxy may hold back the ACK of a parked sync (Park-Ack): news within
# that time is answered piggybacked, one datagram instead of a separate answer and
# its ACK, and the empty ACK of a park that found news is never sent.
PARK_ACK_ASKED = 45
# A newly parked sync: how long a poll waits for an error the proxy's first look may
# bring (a bad since) before it answers "nothing new": the park's frame up and a
# small answer down, plus this margin.
PARK_LOOK_MARGIN = 2.0
# A parked sync may wait this long at the proxy (lowbw.proxy.clients.PARK_MAX), plus a margin.
PARK_WAIT = PARK_MAX + 120.0
# Sync query parameters that are not part of what a sync stream is (its filter etc.).
NOT_STREAM = ("since", "timeout", "full_state")
# Sync streams (token, filter, ...) with a parked request, and sync templates kept.
MAX_PARKS = 16
MEDIA_PREFIXES = ("/_matrix/media/", "/_matrix/client/v1/media/")
# Largest JSON body a client may send (Synapse's own limit is 50 MB; this is a radio).
MAX_REQUEST_BODY = 1024 * 1024
# Ephemeral, idempotent updates answered here ({} as the homeserver answers them) and
# carried unconfirmed: (method, the path's segments after rooms/{roomId}/, how many).
EPHEMERAL_ROUTES = (("POST", "receipt", 3), ("POST", "read_markers", 1), ("PUT", "typing", 2))
# How long an ephemeral update waits for a newer one of the same kind to replace it.
COALESCE_S = 0.3
# No-Response (RFC 7967): no answer of class 2, 4 or 5 wanted.
NO_RESPONSE_ALL = 2 | 8 | 16
MAX_PENDING_EPHEMERAL = 64


# Host names that always mean this machine. IP literals are accepted too: DNS
# rebinding needs a name (the attacker's), a browser never sends an IP for one.
LOCAL_NAMES = frozenset(("localhost", "localhost."))
# Largest sync timeout honoured (ms): longer polls are answered empty after it.
MAX_SYNC_TIMEOUT_MS = 3_600_000


def matrix_error(
    status_code: int, errcode: str, text: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"errcode": errcode, "error": text}, status=status_code, headers={**CORS_HEADERS, **(headers or {})}
    )


@dataclass
class Answer:
    """One answer from across the link, already in HTTP terms."""

    status: int
    body: Any  # JSON value, or bytes for a non-JSON body
    retry_after: int | None = None
    no_news: bool = False  # a parked sync that ended without anything new (2.03)

    def response(self) -> web.Response:
        headers = dict(CORS_HEADERS)
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        if isinstance(self.body, bytes):
            return web.Response(
                body=self.body, status=self.status, headers=headers, content_type="application/octet-stream"
            )
        return web.json_response(self.body, status=self.status, headers=headers, dumps=_dumps)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class LinkFailed(LowbwError):
    """No usable answer came back across the link (the HTTP status says which),
    or the request was refused before it went (``errcode`` then says why)."""

    def __init__(
        self, http_status: int, message: str, errcode: str = "M_UNKNOWN", reason: str = "invalid"
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.errcode = errcode
        # lowbw_clientproxy_requests_failed_total{reason} (metrics.FAILURE_REASONS), or
        # "invalid": refused here before anything went (answered_locally{what="invalid"}).
        self.reason = reason


@dataclass
class _Park:
    since: str
    task: asyncio.Task[Answer]
    # Set when the proxy acknowledged the parked request: it has asked the
    # homeserver and found nothing yet (news would have been the answer).
    acked: asyncio.Event = field(default_factory=asyncio.Event)
    # A poll has waited for the proxy's first look (PARK_LOOK_MARGIN) already.
    looked: bool = False


@dataclass
class _SessionState:
    """What the client-proxy keeps per Noise session: token slots, identifier table.

    Slots are never reused within a session (a late retransmission of an old
    binding could otherwise rebind a slot another token now uses); when all
    are taken, further tokens are bound per request (``TRANSIENT_SLOT``).
    """

    refs: ClientRefs = field(default_factory=ClientRefs)
    slots: dict[str, int] = field(default_factory=dict)  # token -> slot
    confirmed: set[str] = field(default_factory=set)  # tokens the proxy holds in their slot
    # The proxy echoed Byte-Strings: requests may carry base64 as blobs (lowbw.compact.blobs).
    blobs: bool = False
    # token -> the sync queries (but since, timeout) sent in this session, and the one
    # the proxy last answered: a park may then say Query-Same instead of its filter.
    sync_queries: dict[str | None, set[tuple[tuple[str, str], ...]]] = field(default_factory=dict)
    sync_answered: dict[str | None, tuple[tuple[str, str], ...]] = field(default_factory=dict)


class _Stale(Exception):
    """The request was made for a session that has been replaced: make it again."""


class ClientProxy:
    """The HTTP application and its link (module docstring)."""

    def __init__(self, config: ClientProxyConfig, *, public_url: str | None = None) -> None:
        self.config = config
        self.public_url = public_url
        self.tuning = ClientTuning(
            config.link_bps, mtu=config.radio_mtu, dead_link_timeout=config.dead_link_timeout
        )
        self.ctx: Context | None = None
        self.link: ClientLink | None = None
        self._sessions: dict[Any, _SessionState] = {}
        self._parks: dict[tuple[Any, ...], _Park] = {}
        self._templates: dict[str | None, dict[str, Any]] = {}
        self._versions: Answer | None = None
        self.txnids = TxnIds()
        self.counts = HttpCounts()  # lowbw.clientproxy.metrics
        # Receipts, read markers and typing waiting to go (key: _ephemeral_key).
        self._pending_ephemeral: dict[
            tuple[Any, ...], tuple[Code, str, list[tuple[str, str]], Any, str | None]
        ] = {}
        self._ephemeral_task: asyncio.Future[None] | None = None

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        self.ctx = Context(loop=asyncio.get_running_loop(), loggername="lowbw.clientproxy.coap")
        self.link = await open_link(
            self.ctx,
            (self.config.proxy_host, self.config.proxy_port),
            self.config.private_key,
            self.config.proxy_public_key,
            self.tuning,
            client_caps(self.config.dictionary, self.config.profile == "compact"),
            self.config.radio_mtu,
            self.tuning.dead_link_timeout,
            ParkTuning(self.tuning, PARK_ACK_ASKED),
        )

    async def close(self) -> None:
        for park in self._parks.values():
            park.task.cancel()
        self._parks.clear()
        if self._ephemeral_task is not None:
            self._ephemeral_task.cancel()
        if self.ctx is not None:
            await self.ctx.shutdown()
            self.ctx = None

    def parked_count(self) -> int:
        """Syncs parked at the proxy now (their request not answered yet)."""
        return sum(1 for park in self._parks.values() if not park.task.done())

    def web_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REQUEST_BODY)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    # -- HTTP -------------------------------------------------------------------------

    def _host_ok(self, request: web.Request) -> bool:
        """Whether the request's ``Host`` names this machine (no DNS rebinding).

        Accepted: localhost, any IP literal (127.0.0.1, [::1], a LAN address
        when listening on one), the configured listen host and the host of
        ``--public-url``; with or without a port. No ``Host`` at all (HTTP/1.0)
        cannot come from a browser and is accepted.
        """
        raw = request.headers.get("Host")
        if raw is None:
            return True
        name = _host_name(raw)
        if name is None:
            return False
        if name in LOCAL_NAMES or _is_ip(name):
            return True
        allowed = {self.config.listen_address[0].lower()}
        if self.public_url:
            public = _host_name(urlsplit(self.public_url).netloc.rpartition("@")[2])
            if public:
                allowed.add(public)
        return name in allowed

    def base_url(self, request: web.Request) -> str:
        """This client-proxy's URL as the client reached it (Host already checked)."""
        return (self.public_url or "http://%s" % request.host).rstrip("/")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``_handle``, counted (lowbw_clientproxy_http_requests_total and its latency)."""
        counts = self.counts
        started = time.monotonic()
        status = "500"
        counts.in_flight += 1
        try:
            response = await self._handle(request)
            status = str(response.status)
            return response
        except web.HTTPException as exc:  # aiohttp's own (413: body too large)
            status = str(exc.status)
            raise
        except asyncio.CancelledError:
            status = "cancelled"  # the client went away
            raise
        finally:
            counts.in_flight -= 1
            route = route_class(request.rel_url.raw_path)
            counts.answered(request.method, route, status, time.monotonic() - started)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        counts = self.counts
        if not self._host_ok(request):
            counts.answered_locally("host_refused")
            log.warning(
                "request with Host %r refused (not a name of this machine)", request.headers.get("Host")
            )
            return matrix_error(
                421,
                "M_FORBIDDEN",
                "lowbw: Host %r is not this client-proxy; use http://127.0.0.1 or http://localhost "
                "(or start it with --public-url)" % request.headers.get("Host", ""),
            )
        path = request.rel_url.raw_path
        if request.method == "OPTIONS":
            counts.answered_locally("options")
            return web.Response(status=204, headers=CORS_HEADERS)
        if path == "/.well-known/matrix/client" and request.method in ("GET", "HEAD"):
            counts.answered_locally("well_known")
            return web.json_response(
                {"m.homeserver": {"base_url": self.base_url(request)}}, headers=CORS_HEADERS
            )
        if path == "/_lowbw/stats" and request.method == "GET":
            counts.answered_locally("stats")
            stats = self.link.stats.as_dict() if self.link is not None else {}
            return web.json_response(stats, headers=CORS_HEADERS)
        if path.startswith(MEDIA_PREFIXES):
            counts.answered_locally("media")
            return matrix_error(
                501, "M_UNRECOGNIZED", "lowbw: media is not carried over the low-bandwidth link"
            )
        if not path.startswith("/_matrix/client/"):
            counts.answered_locally("unrecognized")
            return matrix_error(404, "M_UNRECOGNIZED", "Unrecognized request")
        # HEAD is GET without a body, as the homeserver answers it (aiohttp sends no body).
        method = METHODS.get("GET" if request.method == "HEAD" else request.method)
        if method is None:
            counts.answered_locally("unrecognized")
            return matrix_error(405, "M_UNRECOGNIZED", "Unrecognized request")
        query = [(k, v) for k, v in request.query.items() if k != "access_token"]
        token = _bearer_of(request)
        if token is not None and not _token_ok(token):
            counts.answered_locally("invalid")
            return matrix_error(401, "M_UNKNOWN_TOKEN", "Invalid access token passed.")
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            if raw:
                try:
                    body = json.loads(raw)
                except (ValueError, UnicodeError, RecursionError):
                    counts.answered_locally("invalid")
                    return matrix_error(400, "M_NOT_JSON", "Content not JSON.")
        get = request.method in ("GET", "HEAD")
        try:
            if path == "/_matrix/client/versions" and get:
                answer = await self._cached_versions(path)
            elif get and path.endswith("/sync") and _parkable(query):
                answer = await self._sync(path, query, token)
            elif self.config.local_receipts and _ephemeral_key(request.method, path, body) is not None:
                answer = self._ephemeral(method, path, query, body, token)
            else:
                shorten = request.method == "PUT" and self.config.short_txn
                sent_path = self.txnids.shorten_path(path) if shorten else path
                answer = await self.carry(method, sent_path, query, body, token)
                if get and path.endswith("/sync"):
                    self._after_sync(path, query, token, answer)
                elif answer.status == 200 and path.endswith(("/logout", "/logout/all")):
                    self._forget_parks(token)
        except LinkFailed as exc:
            if exc.reason == "invalid":
                counts.answered_locally("invalid")
            else:
                counts.failure(exc.reason)
            if exc.errcode != "M_UNKNOWN":  # refused here, as the homeserver would
                return matrix_error(exc.http_status, exc.errcode, exc.message)
            log.warning("%s %s: %s", request.method, _loggable(path), exc.message)
            return matrix_error(exc.http_status, "M_UNKNOWN", "lowbw: " + exc.message)
        return _rewrite_well_known(answer, self.base_url(request)).response()

    # -- receipts, read markers, typing ----------------------------------------------

    def _ephemeral(
        self, method: Code, path: str, query: list[tuple[str, str]], body: Any, token: str | None
    ) -> Answer:
        """A receipt, read marker or typing update: answered ``{}`` at once, as the
        homeserver answers it, and carried unconfirmed (NON with No-Response: no
        answer crosses back) after ``COALESCE_S``; a newer update of the same
        kind (room, receipt type and thread; typing user) waiting by then
        replaces it. A lost one is not repeated: each is idempotent and the
        next one supersedes it (docs/client-proxy.md)."""
        kind = _ephemeral_key(request_method(method), path, body)
        assert kind is not None
        key = (token, *kind)
        pending = self._pending_ephemeral
        if key not in pending and len(pending) >= MAX_PENDING_EPHEMERAL:
            self.counts.answered_locally("ephemeral_dropped")
            return Answer(200, {})
        else:
            pending[key] = (method, path, query, body, token)
            if self._ephemeral_task is None or self._ephemeral_task.done():
                self._ephemeral_task = asyncio.ensure_future(self._send_ephemeral())
        self.counts.answered_locally("ephemeral")
        return Answer(200, {})

    async def _send_ephemeral(self) -> None:
        await asyncio.sleep(COALESCE_S)
        pending, self._pending_ephemeral = self._pending_ephemeral, {}
        for method, path, query, body, token in pending.values():
            try:
                self.send_unconfirmed(method, path, query, body, token)
            except LinkFailed as exc:
                log.info("ephemeral update not carried: %s", exc.message)

    def send_unconfirmed(
        self, method: Code, path: str, query: list[tuple[str, str]], body: Any, token: str | None
    ) -> None:
        """One request as NON with No-Response: sent once, no answer, no retransmission."""
        link = self.link
        if link is None or link.message_manager is None:
            raise LinkFailed(502, "client-proxy not started", reason="not_started")
        session = link.session
        st = self._state_for(session)
        msg, _ = self._message(method, path, query, body, token, session, st, unconfirmed=True)
        msg.mtype = NON
        msg.opt.no_response = NO_RESPONSE_ALL
        self.counts.carried += 1
        link.message_manager.send_message(msg, None)

    async def _cached_versions(self, path: str) -> Answer:
        if self._versions is None:
            answer = await self.carry(Code.GET, path, [], None, None)
            if answer.status != 200:
                return answer
            self._versions = answer
        else:
            self.counts.answered_locally("versions")
        return self._versions

    # -- sync -------------------------------------------------------------------------

    async def _sync(self, path: str, query: list[tuple[str, str]], token: str | None) -> Answer:
        since = next(v for k, v in query if k == "since")
        wait_ms = 0
        for k, v in query:
            if k == "timeout":
                # The homeserver's own answer (Synapse: parse_integer), without the radio.
                if not (v.isascii() and v.lstrip("-").isdigit()):
                    raise LinkFailed(400, "Query parameter 'timeout' must be an integer", "M_INVALID_PARAM")
                if int(v) < 0:
                    raise LinkFailed(
                        400, "Query parameter 'timeout' must be a positive integer.", "M_INVALID_PARAM"
                    )
                wait_ms = min(int(v), MAX_SYNC_TIMEOUT_MS)
        key = _sync_key(token, path, query)
        park = self._parks.get(key)
        if park is None or park.since != since:
            if wait_ms == 0:
                # "What is new right now", with nothing parked for it: ask directly.
                answer = await self.carry(Code.GET, path, query, None, token)
                self._after_sync(path, query, token, answer)
                return answer
            park = self._park(path, query, token, since)
        if not park.task.done() and not park.acked.is_set() and not park.looked:
            # The proxy's first look at a newly parked sync may bring an error
            # (a bad since, an unknown token) that the homeserver would give on
            # this very poll, or news. Wait for it (or the ACK, which a proxy
            # that holds ACKs back sends only after PARK_ACK_ASKED) for the
            # park's frame up and a small answer down plus PARK_LOOK_MARGIN,
            # once per park, before answering "nothing new".
            ack = asyncio.ensure_future(park.acked.wait())
            look = min(self.config.request_timeout, (100 + 128) * 8 / self.config.link_bps + PARK_LOOK_MARGIN)
            park.looked = True  # once per park: later polls need not wait for the first look
            try:
                await asyncio.wait({park.task, ack}, timeout=look, return_when=asyncio.FIRST_COMPLETED)
            finally:
                ack.cancel()
        done, _ = await asyncio.wait({park.task}, timeout=wait_ms / 1000)
        if not done:
            return self._empty_sync(token, since)
        if self._parks.get(key) is park:
            del self._parks[key]
        if park.task.cancelled():
            # Another poll of this stream with another since took its place.
            return self._empty_sync(token, since)
        answer = park.task.result()
        if answer.no_news:
            # The park ran out (PARK_MAX) with nothing new: park again, report nothing.
            self._park(path, query, token, since)
            return self._empty_sync(token, since)
        self._after_sync(path, query, token, answer)
        return answer

    def _forget_parks(self, token: str | None) -> None:
        """The token was logged out: its parked syncs end here (the proxy ends
        them without an answer: nothing crosses for them)."""
        for key in [k for k in self._parks if k[0] == token]:
            self._parks.pop(key).task.cancel()
        self._templates.pop(token, None)

    def _empty_sync(self, token: str | None, since: str) -> Answer:
        self.counts.answered_locally("sync_no_news")
        return Answer(200, {**self._templates.get(token, {}), "next_batch": since})

    def _park(self, path: str, query: list[tuple[str, str]], token: str | None, since: str) -> _Park:
        """Park a sync for ``since`` at the proxy (no ``timeout``: it answers when there is news)."""
        key = _sync_key(token, path, query)
        old = self._parks.get(key)
        if old is not None:
            if old.since == since:
                return old
            old.task.cancel()
        upstream = [(k, v) for k, v in query if k not in NOT_STREAM] + [("since", since)]
        acked = asyncio.Event()
        task = asyncio.ensure_future(self.carry(Code.GET, path, upstream, None, token, acked, PARK_WAIT))
        task.add_done_callback(self._park_ended)
        self.counts.parks += 1
        park = self._parks[key] = _Park(since, task, acked)
        while len(self._parks) > MAX_PARKS:
            # Streams nobody polls any more (a client that changed its filter).
            oldest = next(iter(self._parks))
            self._parks.pop(oldest).task.cancel()
        return park

    def _park_ended(self, task: asyncio.Task[Answer]) -> None:
        """Count how a parked sync ended (and consume its exception: a park nobody
        waits for any more may fail on a dead link, not worth a warning)."""
        if task.cancelled():
            outcome = "cancelled"
        elif task.exception() is not None:
            outcome = "failed"
        else:
            answer = task.result()
            outcome = "no_news" if answer.no_news else "news" if answer.status == 200 else "error"
        self.counts.park_ended(outcome)

    def _after_sync(
        self,
        path: str,
        query: list[tuple[str, str]],
        token: str | None,
        answer: Answer,
    ) -> None:
        """A sync answer goes to the client: learn its shape, and park the next one at once.

        Each delivered result needs one parked request for what comes after it;
        sent now rather than at the client's next poll, it is already waiting at
        the proxy when news happens, and every empty poll after it is free.
        """
        if answer.status != 200 or not isinstance(answer.body, dict):
            return
        nxt = answer.body.get("next_batch")
        if not isinstance(nxt, str):
            return
        self._learn_template(token, answer.body)
        self._park(path, query, token, nxt)

    def _learn_template(self, token: str | None, body: dict[str, Any]) -> None:
        self._templates.pop(token, None)
        while len(self._templates) >= MAX_PARKS:
            del self._templates[next(iter(self._templates))]
        self._templates[token] = {
            k: v for k, v in body.items() if k not in SYNC_SECTIONS and k != "next_batch"
        }

    # -- one request across the link --------------------------------------------------

    def _state_for(self, session: Any) -> _SessionState:
        """The state of ``session`` (made on first use; the last few sessions are kept,
        so a late answer of a replaced one is still read with its own table).

        Requests made while no session is up have the state of ``None``; the
        session their handshake establishes takes it over, so a token bound by
        a request that rode the handshake is not bound a second time.
        """
        st = self._sessions.get(session)
        if st is None:
            adopted = self._sessions.pop(None, None) if session is not None else None
            st = self._sessions[session] = adopted or _SessionState()
            while len(self._sessions) > SESSIONS_KEPT:
                del self._sessions[next(iter(self._sessions))]
        return st

    def _codec(self, session: Any, *, answer: bool = False) -> BodyCodec:
        """The body codec for ``session``; with no session (a request riding a
        handshake), plain CBOR with our key table and no references.

        Base64 byte strings: in requests once the proxy has echoed our offer;
        in answers (``answer``) whenever we offer them, since the proxy turns
        them on with the very answer that echoes the offer.
        """
        link = self.link
        if session is None or link is None:
            return BodyCodec(keys.TABLE_LOWBW_V1)
        caps = link.caps
        st = self._state_for(session)
        return BodyCodec(
            (caps & handshake.CAPS_TABLE_MASK) or keys.TABLE_LOWBW_V1,
            1 if caps & handshake.CAP_DICT_V1 else None,
            st.refs if self.config.identifier_refs else None,
            blobs=self.config.byte_strings if answer else st.blobs,
            deflate_default=not answer and bool(caps & handshake.CAP_COMPACT),
        )

    def _login_slot(self, method: Code, path: str, token: str | None, st: _SessionState) -> int | None:
        """A slot for the token a login will get, on a compact link (the proxy binds
        it as it answers: lowbw.proxy.clients, "Logins hand out handles"); None: none.
        The slot is taken now, under a name no token has, and never reused."""
        if (
            self.link is None
            or not self.link.compact
            or method != Code.POST
            or token is not None
            or not path.endswith(LOGIN_ENDINGS)
            or len(st.slots) >= MAX_SLOTS
        ):
            return None
        slot = len(st.slots)
        st.slots[" login %d" % slot] = slot  # a space: no bearer token has one
        return slot

    def _auth_option(self, token: str | None, st: _SessionState) -> OpaqueOption | UintOption | None:
        if token is None:
            return None
        raw = token.encode("utf-8")
        slot = st.slots.get(token)
        if slot is None:
            if len(st.slots) >= MAX_SLOTS:
                return OpaqueOption(BEARER_BIND_OPTION, bytes([TRANSIENT_SLOT]) + raw)
            slot = st.slots[token] = len(st.slots)
        if token in st.confirmed:
            return UintOption(BEARER_SLOT_OPTION, slot)
        return OpaqueOption(BEARER_BIND_OPTION, bytes([slot]) + raw)

    async def carry(
        self,
        method: Code,
        path: str,
        query: list[tuple[str, str]],
        body: Any,
        token: str | None,
        acked: asyncio.Event | None = None,
        timeout: float | None = None,
    ) -> Answer:
        """One request across the link; its answer in HTTP terms (LinkFailed if none).

        ``acked`` is given for parked syncs only: set once the proxy acknowledges
        the request (ACK, empty or not), and a 2.03 answer then means "nothing
        new" rather than a 304; ``timeout`` defaults to the configured ``request_timeout``. A
        request made for a session that is replaced before its answer is made
        again for the new one (a POST already sent is reported as 504 instead:
        it may have happened).
        """
        timeout = self.config.request_timeout if timeout is None else timeout
        for attempt in range(1, 5):
            session = self.link.session if self.link is not None else None
            st = self._state_for(session)
            sync_rest = None
            sent_query = query
            if method == Code.GET and path.endswith("/sync"):
                sync_rest = tuple(sorted((k, v) for k, v in query if k not in NOT_STREAM))
                queries = st.sync_queries.setdefault(token, set())
                if len(queries) < 4:
                    queries.add(sync_rest)
                if acked is not None and queries == {sync_rest} and st.sync_answered.get(token) == sync_rest:
                    # The proxy holds this very query from the last sync: only since goes.
                    sent_query = [(k, v) for k, v in query if k in NOT_STREAM]
            msg, report = self._message(method, path, sent_query, body, token, session, st)
            login_slot = self._login_slot(method, path, token, st)
            if login_slot is not None:
                msg.opt.add_option(OpaqueOption(BEARER_BIND_OPTION, bytes([login_slot])))
            if sent_query is not query:
                msg.opt.add_option(OpaqueOption(QUERY_SAME_OPTION, b""))
            if acked is not None:
                msg.lowbw_acked = acked  # type: ignore[attr-defined]
                assert self.link is not None
                msg.remote = self.link.park_remote
                msg.opt.add_option(UintOption(PARK_ACK_OPTION, PARK_ACK_ASKED))
                if self.config.echo_hold > 0:
                    msg.opt.add_option(UintOption(ECHO_HOLD_OPTION, int(self.config.echo_hold)))
            counts = self.counts
            counts.carried += 1
            counts.carrying += 1
            sent = time.monotonic()
            try:
                response = await self._exchange(msg, session, timeout)
                if acked is None:
                    counts.radio_latency.observe(time.monotonic() - sent)
            except _Stale:
                continue
            except LinkFailed:
                if report is not None:
                    st.refs.unreport(report)
                raise
            finally:
                counts.carrying -= 1
            if response.opt.get_option(SESSION_END_OPTION) and self.link is not None:
                # The proxy is restarting: a new session, and the request again
                # (unless the link has moved on already).
                if getattr(response, "lowbw_session", None) is self.link.session:
                    self.link.reset()
                if attempt < 4:
                    await asyncio.sleep(_retry_after(response))
                    continue
            if response.opt.get_option(BIND_REQUIRED_OPTION) and token is not None:
                st.confirmed.discard(token)
                if attempt < 4:
                    continue
            if sync_rest is not None and response.code.is_successful() and self._sessions.get(session) is st:
                st.sync_answered[token] = sync_rest
            if _echoes_blobs(response) and self._sessions.get(session) is st and session is not None:
                st.blobs = True
            if token is not None and token in st.slots and self._sessions.get(session) is st:
                st.confirmed.add(token)
            elif token is not None and session is None and token in st.slots:
                st.confirmed.add(token)  # st went over to the session this request established
            answer = self._answer(response, parked=acked is not None)
            if login_slot is not None and answer.status == 200 and isinstance(answer.body, dict):
                handle = answer.body.get("access_token")
                if isinstance(handle, str) and handle not in st.slots:
                    # The proxy bound the new token to the slot the login named.
                    st.slots[handle] = login_slot
                    st.confirmed.add(handle)
            return answer
        raise LinkFailed(502, "the proxy kept refusing the request's session state", reason="session_state")

    def _message(
        self,
        method: Code,
        path: str,
        query: list[tuple[str, str]],
        body: Any,
        token: str | None,
        session: Any,
        st: _SessionState,
        unconfirmed: bool = False,
    ) -> tuple[Message, int | None]:
        """The CoAP request, and the Refs-Known value it reports (if any).

        ``unconfirmed`` (a NON that gets no answer): no Refs-Known report and no
        Byte-Strings offer, which only an answer could confirm."""
        try:
            segments = routes.encode_path(path)
        except EncodeError as exc:
            raise LinkFailed(400, exc.message) from None
        if any(seg[:1] in REF_PREFIXES for seg in segments) or any(v[:1] in REF_PREFIXES for _, v in query):
            raise LinkFailed(400, "a path segment or query value may not start with a control character")
        report = None
        link = self.link
        compact = link is not None and link.compact
        if session is not None and link is not None and compact:
            # A JSON filter goes as CBOR (compact sessions: lowbw.compact.codec).
            table = (link.caps & handshake.CAPS_TABLE_MASK) or keys.TABLE_LOWBW_V1
            query = [(k, compact_query_value(v, table)) for k, v in query]
        if session is not None and self.config.identifier_refs:
            refs = st.refs
            segments = [refs.refer_text(seg) for seg in segments]
            query = [(k, refs.refer_text(v)) for k, v in query]
            # On a compact link only reads (GET) report once references are on: their
            # answers carry the identifiers worth referring to, while a send's answer
            # defines its one new event ID either way (2 bytes less per send).
            lazy = compact and method != Code.GET and refs.reported >= 0
            report = None if unconfirmed or lazy else refs.to_report()
        msg = Message(code=method, uri_path=segments, uri_query=["%s=%s" % kv for kv in query])
        if body is not None:
            codec = self._codec(session)
            try:
                payload, cf = codec.encode(body)
            except EncodeError as exc:
                raise LinkFailed(400, exc.message) from None
            msg.payload = payload
            option = codec.content_format(cf)
            if session is None and compact:
                # Made before the handshake answered: the session's default format
                # is not known yet (it depends on the agreed caps), so say it.
                option = cf
            if option is not None:
                msg.opt.content_format = option
        auth = self._auth_option(token, st)
        if auth is not None:
            msg.opt.add_option(auth)
        if report is not None:
            msg.opt.add_option(UintOption(REFS_KNOWN_OPTION, report))
        if session is not None and self.config.byte_strings and not st.blobs and not unconfirmed:
            # Offered until the proxy echoes it (concurrent requests all offer: harmless).
            msg.opt.add_option(UintOption(BYTE_STRINGS_OPTION, FORM_BLOBS))
        assert self.link is not None
        msg.remote = self.link.remote
        if session is not None:
            msg.lowbw_bound = session  # type: ignore[attr-defined]
        return msg, report

    async def _exchange(self, msg: Message, session: Any, timeout: float) -> Message:
        link = self.link
        if self.ctx is None or link is None:
            raise LinkFailed(502, "client-proxy not started", reason="not_started")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        sent_at = time.monotonic()
        deaths = link.deaths
        request = self.ctx.request(msg)
        response = request.response
        try:
            while True:
                changed = link.session_changed()
                await asyncio.wait({response, changed}, timeout=deadline - loop.time(), return_when=FIRST)
                if response.done():
                    return response.result()
                if not changed.done():
                    raise TimeoutError
                if link.deaths != deaths:
                    raise LinkDead()
                bound = getattr(msg, "lowbw_bound", None)
                if bound is not None and bound is not link.session:
                    response.cancel()
                    if msg.code == Code.POST and getattr(msg, "lowbw_sent", False):
                        raise LinkFailed(
                            504,
                            "the radio link was set up again while the request was under way; "
                            "it may or may not have taken effect",
                            reason="session_replaced",
                        )
                    raise _Stale()
        except TimeoutError:
            response.cancel()
            if link.session is session and session is not None and link.last_rx < sent_at:
                # Nothing at all came back in this session since the request went
                # out: the proxy has most likely lost it (a crash). Handshake anew.
                link.reset()
            raise LinkFailed(
                504, "no answer across the radio link within %g s" % timeout, reason="request_timeout"
            ) from None
        except LinkDead:
            response.cancel()
            raise LinkFailed(
                504,
                "nothing heard from the proxy across the radio for %g s: the link is given up "
                "(is the proxy or the radio down?); the next request sets it up again" % link.dead_after,
                reason="dead_link",
            ) from None
        except coap_error.ConRetransmitsExceeded:
            # Unanswered in the session it was made for: the proxy does not know
            # that session any more. Start a new handshake with the next request.
            if link.session is session:
                link.reset()
            raise LinkFailed(
                504,
                "the homeserver's proxy did not answer across the radio link",
                reason="retransmits_exceeded",
            ) from None
        except coap_error.Error as exc:
            raise LinkFailed(502, "link error: %s" % type(exc).__name__, reason="link_error") from None

    def _answer(self, response: Message, parked: bool = False) -> Answer:
        code = int(response.code)
        if parked and response.code == Code.VALID and not response.payload:
            # The park ran out with nothing new (a 304 of the homeserver's is 2.03 too).
            return Answer(200, {}, no_news=True)
        options = [(o.number, o.encode()) for o in response.opt.option_list()]
        try:
            http_status = status.coap_to_http(code, options)
            retry_after = status.retry_after_from_options(options, code)
        except LowbwError as exc:
            raise LinkFailed(502, "unreadable answer: %s" % exc.message, reason="unreadable")
        cf = response.opt.content_format
        body: Any
        if not response.payload:
            body = {} if http_status < 400 else {"errcode": "M_UNKNOWN", "error": "HTTP %d" % http_status}
        elif cf is not None and int(cf) == CF_OCTETS:
            body = bytes(response.payload)
        else:
            session = getattr(response, "lowbw_session", None)
            if session is None and self.link is not None:
                # Reassembled block-wise answers lose the attribute: the current session's.
                session = self.link.session
            try:
                codec = self._codec(session, answer=True)
                body = codec.decode(response.payload, None if cf is None else int(cf))
            except LowbwError as exc:
                raise LinkFailed(502, "unreadable answer: %s" % exc.message, reason="unreadable")
            self.txnids.restore(body)
            if isinstance(body, str) and http_status < 300:
                # An event ID alone: a compact session's answer to a send
                # (lowbw.proxy.clients, "Event IDs alone").
                body = {"event_id": body}
        return Answer(http_status, body, retry_after)


def _echoes_blobs(response: Message) -> bool:
    """Whether the proxy's answer echoes Byte-Strings with the blob form."""
    for opt in response.opt.get_option(BYTE_STRINGS_OPTION):
        raw = bytes(opt.value) if isinstance(opt.value, (bytes, bytearray)) else None
        value = int.from_bytes(raw, "big") if raw is not None else int(opt.value)
        if value & FORM_BLOBS:
            return True
    return False


def request_method(code: Code) -> str:
    return {v: k for k, v in METHODS.items()}[code]


def _ephemeral_key(method: str, path: str, body: Any) -> tuple[Any, ...] | None:
    """Which ephemeral update a request is (EPHEMERAL_ROUTES), as the key a newer
    one replaces it under; None if it is not one. A receipt's key is its room,
    type and thread (the newest receipt wins); read markers', its room; typing's,
    its room and user."""
    parts = path.split("/")
    # "", "_matrix", "client", version, "rooms", room, kind, ...
    if len(parts) < 7 or parts[1:3] != ["_matrix", "client"] or parts[4] != "rooms" or not parts[5]:
        return None
    if body is not None and not isinstance(body, dict):
        return None
    for m, kind, n in EPHEMERAL_ROUTES:
        if method == m and parts[6] == kind and len(parts) == 6 + n and all(parts[6:]):
            if kind == "receipt":
                thread = body.get("thread_id") if isinstance(body, dict) else None
                return (kind, parts[3], parts[5], parts[7], thread if isinstance(thread, str) else None)
            return (kind, parts[3], parts[5], *parts[7:])
    return None


def _rewrite_well_known(answer: Answer, base_url: str) -> Answer:
    """``answer`` with its ``well_known`` (login, and any answer that has one) naming
    this client-proxy: a client that honours it (Element Web; mautrix with
    update_hs_url) would otherwise go to the homeserver directly and its lowbw
    token handle would fail there. Other entries (identity server) are kept."""
    body = answer.body
    if not isinstance(body, dict) or not isinstance(body.get("well_known"), dict):
        return answer
    well_known = dict(body["well_known"])
    homeserver = well_known.get("m.homeserver")
    well_known["m.homeserver"] = {
        **(homeserver if isinstance(homeserver, dict) else {}),
        "base_url": base_url,
    }
    return Answer(answer.status, {**body, "well_known": well_known}, answer.retry_after, answer.no_news)


def _host_name(host: str) -> str | None:
    """The name in a ``Host`` value (``name``, ``name:port``, ``[v6]``, ``[v6]:port``),
    lower-cased; None if it is malformed."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return None
        name, rest = host[1:end], host[end + 1 :]
        if not _is_ip(name):
            return None
    else:
        name, _, port = host.partition(":")
        rest = ":" + port if _ else ""
    if rest and not (rest[:1] == ":" and rest[1:].isascii() and rest[1:].isdigit()):
        return None
    return name or None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _token_ok(token: str) -> bool:
    """Printable ASCII without spaces (RFC 6750 b64token and then some), at most 1 KB."""
    return len(token) <= 1024 and token.isascii() and token.isprintable() and " " not in token


def _retry_after(response: Message) -> float:
    age = response.opt.max_age
    return min(float(age), 30.0) if age is not None else 1.0


def _bearer_of(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    token = request.query.get("access_token")
    return token or None


def _sync_key(token: str | None, path: str, query: list[tuple[str, str]]) -> tuple[Any, ...]:
    """Which sync stream a request belongs to: everything but since and timeout."""
    return (token, path, tuple(sorted((k, v) for k, v in query if k not in NOT_STREAM)))


def _parkable(query: list[tuple[str, str]]) -> bool:
    names = {k for k, _ in query}
    full_state = any(k == "full_state" and v == "true" for k, v in query)
    return "since" in names and not full_state


def _loggable(path: str) -> str:
    parts = path.split("/")
    return "/".join(parts[:5]) + ("/..." if len(parts) > 5 else "")
