"""The client-proxy: HTTP+JSON for a stock Matrix client in, lowbw across the radio.

A Matrix client uses ``http://127.0.0.1:8008`` (say) as its homeserver URL.
Every ``/_matrix/client/...`` request is carried to the lowbw proxy beside the
homeserver as one CoAP request (``lowbw.clientproxy.link``) and its answer goes
back to the client with the status, ``Retry-After`` and JSON the homeserver
gave. What is answered here, without the radio:

==================================  ===============================================
``GET /.well-known/matrix/client``  ``{"m.homeserver": {"base_url": <this proxy>}}``
``GET /_matrix/client/versions``    fetched across the link once, then from memory
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

A dead link is never a hung request: no answer within ``request_timeout``
(or CoAP giving up on retransmissions) is 504, an answer that cannot be read
is 502, both with a Matrix error body.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from aiocoap import error as coap_error
from aiocoap.message import Message
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import OpaqueOption, UintOption
from aiocoap.protocol import Context
from aiohttp import web

from lowbw.clientproxy.config import ClientProxyConfig
from lowbw.clientproxy.link import CLIENT_CAPS, ClientLink, open_link
from lowbw.clientproxy.txnids import TxnIds
from lowbw.compact.codec import CF_CBOR, BodyCodec
from lowbw.compact.refs import ClientRefs
from lowbw.proxy.clients import (
    BEARER_BIND_OPTION,
    BEARER_SLOT_OPTION,
    BIND_REQUIRED_OPTION,
    CF_OCTETS,
    MAX_SLOTS,
    REFS_KNOWN_OPTION,
    SESSION_END_OPTION,
    SYNC_SECTIONS,
)
from lowbw.proxy.transport import LinkTuning
from lowbw.wire import handshake, keys, routes, status
from lowbw.wire.errors import EncodeError, LowbwError

log = logging.getLogger("lowbw.clientproxy")

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "X-Requested-With, Content-Type, Authorization",
}
METHODS = {"GET": Code.GET, "POST": Code.POST, "PUT": Code.PUT, "DELETE": Code.DELETE}
MEDIA_PREFIXES = ("/_matrix/media/", "/_matrix/client/v1/media/")
# Largest JSON body a client may send (Synapse's own limit is 50 MB; this is a radio).
MAX_REQUEST_BODY = 1024 * 1024


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
    """No usable answer came back across the link (the HTTP status says which)."""

    def __init__(self, http_status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status


@dataclass
class _Park:
    since: str
    task: asyncio.Task[Answer]
    # Set when the proxy acknowledged the parked request: it has asked the
    # homeserver and found nothing yet (news would have been the answer).
    acked: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Bearers:
    slots: dict[str, int] = field(default_factory=dict)  # token -> slot
    confirmed: set[str] = field(default_factory=set)  # bound in the current session
    session: Any = None  # the frames.Session the bindings belong to


class ClientProxy:
    """The HTTP application and its link (module docstring)."""

    def __init__(self, config: ClientProxyConfig, *, public_url: str | None = None) -> None:
        self.config = config
        self.public_url = public_url
        self.tuning = LinkTuning(config.link_bps, mtu=config.radio_mtu)
        self.ctx: Context | None = None
        self.link: ClientLink | None = None
        self._bearers = _Bearers()
        self._parks: dict[tuple[Any, ...], _Park] = {}
        self._templates: dict[str | None, dict[str, Any]] = {}
        self._versions: Answer | None = None
        self.txnids = TxnIds()
        self._refs: tuple[Any, ClientRefs] = (None, ClientRefs())

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        self.ctx = Context(loop=asyncio.get_running_loop(), loggername="lowbw.clientproxy.coap")
        self.link = await open_link(
            self.ctx,
            (self.config.proxy_host, self.config.proxy_port),
            self.config.private_key,
            self.config.proxy_public_key,
            self.tuning,
            CLIENT_CAPS if self.config.dictionary else CLIENT_CAPS & ~handshake.CAP_DICT_V1,
            self.config.radio_mtu,
        )

    async def close(self) -> None:
        for park in self._parks.values():
            park.task.cancel()
        self._parks.clear()
        if self.ctx is not None:
            await self.ctx.shutdown()
            self.ctx = None

    def web_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REQUEST_BODY)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    # -- HTTP -------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.rel_url.raw_path
        if request.method == "OPTIONS":
            return web.Response(status=204, headers=CORS_HEADERS)
        if path == "/.well-known/matrix/client" and request.method == "GET":
            base = self.public_url or "http://%s" % request.host
            return web.json_response({"m.homeserver": {"base_url": base}}, headers=CORS_HEADERS)
        if path == "/_lowbw/stats" and request.method == "GET":
            stats = self.link.stats.as_dict() if self.link is not None else {}
            return web.json_response(stats, headers=CORS_HEADERS)
        if path.startswith(MEDIA_PREFIXES):
            return matrix_error(
                501, "M_UNRECOGNIZED", "lowbw: media is not carried over the low-bandwidth link"
            )
        if not path.startswith("/_matrix/client/"):
            return matrix_error(404, "M_UNRECOGNIZED", "Unrecognized request")
        method = METHODS.get(request.method)
        if method is None:
            return matrix_error(405, "M_UNRECOGNIZED", "Unrecognized request")
        query = [(k, v) for k, v in request.query.items() if k != "access_token"]
        token = _bearer_of(request)
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            if raw:
                try:
                    body = json.loads(raw)
                except (ValueError, UnicodeError):
                    return matrix_error(400, "M_NOT_JSON", "Content not JSON.")
        try:
            if path == "/_matrix/client/versions" and request.method == "GET":
                answer = await self._cached_versions(path)
            elif request.method == "GET" and path.endswith("/sync") and _parkable(query):
                answer = await self._sync(path, query, token)
            else:
                sent_path = self.txnids.shorten_path(path) if request.method == "PUT" else path
                answer = await self.carry(method, sent_path, query, body, token)
                if request.method == "GET" and path.endswith("/sync"):
                    self._after_sync(_sync_key(token, path, query), path, query, token, answer)
        except LinkFailed as exc:
            log.warning("%s %s: %s", request.method, _loggable(path), exc.message)
            return matrix_error(exc.http_status, "M_UNKNOWN", "lowbw: " + exc.message)
        return answer.response()

    async def _cached_versions(self, path: str) -> Answer:
        if self._versions is None:
            answer = await self.carry(Code.GET, path, [], None, None)
            if answer.status != 200:
                return answer
            self._versions = answer
        return self._versions

    # -- sync -------------------------------------------------------------------------

    async def _sync(self, path: str, query: list[tuple[str, str]], token: str | None) -> Answer:
        since = next(v for k, v in query if k == "since")
        wait_ms = 0
        for k, v in query:
            if k == "timeout":
                try:
                    wait_ms = max(0, int(v))
                except ValueError:
                    raise LinkFailed(400, "timeout must be an integer") from None
        key = _sync_key(token, path, query)
        park = self._parks.get(key)
        if park is None or park.since != since:
            if wait_ms == 0:
                # "What is new right now", with nothing parked for it: ask directly.
                answer = await self.carry(Code.GET, path, query, None, token)
                self._after_sync(key, path, query, token, answer)
                return answer
            park = self._park(key, path, query, token, since)
        if wait_ms == 0 and not park.task.done():
            # "Now" while the parked request is still on its way: now is when the
            # proxy has looked (its acknowledgement), or its answer if that is news.
            ack = asyncio.ensure_future(park.acked.wait())
            try:
                await asyncio.wait(
                    {park.task, ack}, timeout=self.config.request_timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                ack.cancel()
        done, _ = await asyncio.wait({park.task}, timeout=wait_ms / 1000)
        if not done:
            return self._empty_sync(token, since)
        if self._parks.get(key) is park:
            del self._parks[key]
        answer = park.task.result()
        if answer.no_news:
            # The park ran out (PARK_MAX) with nothing new: park again, report nothing.
            self._park(key, path, query, token, since)
            return self._empty_sync(token, since)
        self._after_sync(key, path, query, token, answer)
        return answer

    def _empty_sync(self, token: str | None, since: str) -> Answer:
        return Answer(200, {**self._templates.get(token, {}), "next_batch": since})

    def _park(
        self, key: tuple[Any, ...], path: str, query: list[tuple[str, str]], token: str | None, since: str
    ) -> _Park:
        """Park a sync for ``since`` at the proxy (no ``timeout``: it answers when there is news)."""
        old = self._parks.get(key)
        if old is not None:
            if old.since == since:
                return old
            old.task.cancel()
        skip = ("since", "timeout", "full_state")
        upstream = [(k, v) for k, v in query if k not in skip] + [("since", since)]
        acked = asyncio.Event()
        task = asyncio.ensure_future(self.carry(Code.GET, path, upstream, None, token, acked))
        task.add_done_callback(_consume_exception)
        park = self._parks[key] = _Park(since, task, acked)
        return park

    def _after_sync(
        self,
        key: tuple[Any, ...],
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
        self._park(key, path, query, token, nxt)

    def _learn_template(self, token: str | None, body: dict[str, Any]) -> None:
        self._templates[token] = {
            k: v for k, v in body.items() if k not in SYNC_SECTIONS and k != "next_batch"
        }

    # -- one request across the link --------------------------------------------------

    def _refs_for(self, session: Any) -> ClientRefs:
        """The identifier table of ``session`` (a new one when the session changed)."""
        if self._refs[0] is not session:
            self._refs = (session, ClientRefs())
        return self._refs[1]

    def _codec(self, session: Any) -> BodyCodec:
        """The body codec for ``session``; with no session (a request riding a
        handshake), plain CBOR with our key table and no references."""
        link = self.link
        if session is None or link is None:
            return BodyCodec(keys.TABLE_LOWBW_V1)
        caps = link.caps
        return BodyCodec(
            (caps & handshake.CAPS_TABLE_MASK) or keys.TABLE_LOWBW_V1,
            1 if caps & handshake.CAP_DICT_V1 else None,
            self._refs_for(session),
        )

    def _auth_option(self, token: str | None) -> OpaqueOption | UintOption | None:
        if token is None:
            return None
        b = self._bearers
        session = self.link.session if self.link is not None else None
        if b.session is not session:
            b.confirmed.clear()
            b.session = session
        slot = b.slots.get(token)
        if slot is None:
            if len(b.slots) >= MAX_SLOTS:
                # Oldest binding makes room (a client that logged in many times).
                oldest = next(iter(b.slots))
                del b.slots[oldest]
                b.confirmed.discard(oldest)
            used = set(b.slots.values())
            slot = next(s for s in range(MAX_SLOTS) if s not in used)
            b.slots[token] = slot
        if token in b.confirmed and session is not None:
            return UintOption(BEARER_SLOT_OPTION, slot)
        return OpaqueOption(BEARER_BIND_OPTION, bytes([slot]) + token.encode("utf-8"))

    async def carry(
        self,
        method: Code,
        path: str,
        query: list[tuple[str, str]],
        body: Any,
        token: str | None,
        acked: asyncio.Event | None = None,
    ) -> Answer:
        """One request across the link; its answer in HTTP terms (LinkFailed if none).

        ``acked`` is set once the proxy acknowledges the request (ACK, empty or not).
        """
        for attempt in (1, 2, 3):
            session = self.link.session if self.link is not None else None
            msg, report = self._message(method, path, query, body, token, session)
            if acked is not None:
                msg.lowbw_acked = acked  # type: ignore[attr-defined]
            try:
                response = await self._exchange(msg, session)
            except LinkFailed:
                if report is not None:
                    self._refs_for(session).unreport(report)
                raise
            if response.opt.get_option(SESSION_END_OPTION) and self.link is not None:
                # The proxy is restarting: a new session, and the request again.
                self.link.reset()
                if attempt < 3:
                    await asyncio.sleep(_retry_after(response))
                    continue
            if response.opt.get_option(BIND_REQUIRED_OPTION) and attempt < 3 and token is not None:
                self._bearers.confirmed.discard(token)
                continue
            if token is not None and self.link is not None and self.link.session is not None:
                if self._bearers.session is not self.link.session:
                    self._bearers.session = self.link.session
                    self._bearers.confirmed.clear()
                if session is self.link.session or session is None:
                    self._bearers.confirmed.add(token)
            return self._answer(response)
        raise LinkFailed(502, "the proxy kept refusing the request's session state")

    def _message(
        self,
        method: Code,
        path: str,
        query: list[tuple[str, str]],
        body: Any,
        token: str | None,
        session: Any,
    ) -> tuple[Message, int | None]:
        """The CoAP request, and the Refs-Known value it reports (if any)."""
        try:
            segments = routes.encode_path(path)
        except EncodeError as exc:
            raise LinkFailed(400, exc.message) from None
        report = None
        if session is not None:
            refs = self._refs_for(session)
            segments = [refs.refer_text(seg) for seg in segments]
            query = [(k, refs.refer_text(v)) for k, v in query]
            report = refs.to_report()
        msg = Message(code=method, uri_path=segments, uri_query=["%s=%s" % kv for kv in query])
        if body is not None:
            try:
                payload, cf = self._codec(session).encode(body)
            except EncodeError as exc:
                raise LinkFailed(400, exc.message) from None
            msg.payload = payload
            if cf != CF_CBOR:
                msg.opt.content_format = cf
        auth = self._auth_option(token)
        if auth is not None:
            msg.opt.add_option(auth)
        if report is not None:
            msg.opt.add_option(UintOption(REFS_KNOWN_OPTION, report))
        assert self.link is not None
        msg.remote = self.link.remote
        if session is not None:
            msg.lowbw_bound = session  # type: ignore[attr-defined]
        return msg, report

    async def _exchange(self, msg: Message, session: Any) -> Message:
        if self.ctx is None or self.link is None:
            raise LinkFailed(502, "client-proxy not started")
        request = self.ctx.request(msg)
        try:
            return await asyncio.wait_for(request.response, self.config.request_timeout)
        except TimeoutError:
            request.response.cancel()
            raise LinkFailed(504, "no answer across the radio link within %g s" % self.config.request_timeout)
        except coap_error.ConRetransmitsExceeded:
            # Unanswered in the session it was made for: the proxy does not know
            # that session any more (it crashed, say). Start a new handshake with
            # the next request. (A request made stale by a session change gets
            # here too, and must not end the new session.)
            if self.link.session is session:
                self.link.reset()
            raise LinkFailed(504, "the homeserver's proxy did not answer across the radio link")
        except coap_error.Error as exc:
            raise LinkFailed(502, "link error: %s" % type(exc).__name__)

    def _answer(self, response: Message) -> Answer:
        code = int(response.code)
        if response.code == Code.VALID and not response.payload:
            return Answer(200, {}, no_news=True)
        options = [(o.number, o.encode()) for o in response.opt.option_list()]
        try:
            http_status = status.coap_to_http(code, options)
            retry_after = status.retry_after_from_options(options, code)
        except LowbwError as exc:
            raise LinkFailed(502, "unreadable answer: %s" % exc.message)
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
                body = self._codec(session).decode(response.payload, None if cf is None else int(cf))
            except LowbwError as exc:
                raise LinkFailed(502, "unreadable answer: %s" % exc.message)
            self.txnids.restore(body)
        return Answer(http_status, body, retry_after)


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
    skip = ("since", "timeout", "full_state")
    return (token, path, tuple(sorted((k, v) for k, v in query if k not in skip)))


def _consume_exception(task: asyncio.Task[Any]) -> None:
    # A park nobody waits for any more may fail (dead link): not worth a warning.
    if not task.cancelled():
        task.exception()


def _parkable(query: list[tuple[str, str]]) -> bool:
    names = {k for k, _ in query}
    full_state = any(k == "full_state" and v == "true" for k, v in query)
    return "since" in names and not full_state


def _loggable(path: str) -> str:
    parts = path.split("/")
    return "/".join(parts[:5]) + ("/..." if len(parts) > 5 else "")
