"""What the proxy serves to client-proxies: the whole client-server API for a stock Matrix client.

A client-proxy (``lowbw client-proxy``, ``lowbw.clientproxy``) is enrolled like
a device but with the permission ``client`` and no Matrix identity of its own:
the person at the far end logs in as themselves, and their requests are made
with their own access token. So, unlike a device's requests, nothing is checked
against a room or event-type list; the homeserver decides.

Wire rules (docs/PROTOCOL.md, "Client sessions"):

* **Tokens never per request.** A request carries ``Bearer-Slot`` (option
  65012, uint): which of the session's bound tokens to use. The first request
  with a token carries ``Bearer-Bind`` (65008: slot byte, then the token)
  instead. A slot the session does not know draws 4.01 with the empty option
  ``Bind-Required`` (65016) and nothing reaches the homeserver; the client-proxy
  binds again and retries (after a proxy restart, say).
* **Logins hand out handles.** A successful ``login``, ``register`` or
  ``refresh`` answer has its ``access_token`` replaced by a handle
  (``lbwh_`` + 12 random characters, 72 bits) kept in the registry for this client key;
  binding the handle binds the real token. So a token obtained through lowbw
  never crosses the radio at all; a token obtained elsewhere crosses once per
  session, inside the Noise channel. ``logout`` forgets the handle. A login
  may carry ``Bearer-Bind`` with the slot byte alone: its token is then bound
  to that slot as the answer goes out, and the next request names the slot
  (``Bearer-Slot``) without ever binding the handle (25 bytes less).
* **Event IDs alone.** On a compact session, a successful PUT whose answer
  is ``{"event_id": E}`` and nothing else (a message send, a state event, a
  redaction) is answered with ``E`` alone as the body (with an identifier
  table: its definition, a CBOR byte string); the client-proxy puts it back
  in its object. No Matrix answer is a bare string, so nothing else reads
  that way. 3 bytes less per message send.
* **Parked syncs.** ``GET sync`` with ``since`` and without ``timeout`` is
  *parked*: the proxy long-polls the homeserver itself, again and again, and
  answers only once the result holds something (``sync_is_empty``), or with
  2.03 and no payload after ``PARK_MAX`` seconds. An idle client therefore costs
  nothing on the air; its client-proxy answers the client's own long-polls with
  an empty result locally. The request is acknowledged (empty ACK) after
  ``PARK_ACK_DELAY`` instead of the usual 12 s, so the client's other requests
  are not held behind it (NSTART=1).
* **Restarts.** A client session is not saved at a graceful stop (its token
  bindings and identifier table live in this process only). Parked syncs are
  answered 5.03 with the empty option ``Session-End`` (65024) first, so the
  client-proxy handshakes again at once.
* **Identifiers** already carried are references (``lowbw.compact.refs``); the
  client-proxy reports how many it holds in ``Refs-Known`` (65020), and a
  session without that option gets plain identifiers.
* **Byte strings.** Base64 text (keys, signatures, ciphertexts of encrypted
  rooms) goes as CBOR byte strings (``lowbw.compact.blobs``) once the
  client-proxy has offered it with ``Byte-Strings`` (65028, uint 1) and the
  proxy has echoed the option in its answer; the proxy uses the form in every
  answer from the one that echoes it on. Blobs in a request are read whether
  or not the session turned them on (this proxy knows the form; only a
  client-proxy that saw the echo sends them).
* **Bodies** go through ``lowbw.compact.codec.BodyCodec`` (integer keys, and the
  preset dictionary when the handshake agreed ``CAP_DICT_V1``), with the work
  of decoding one bounded by ``[limits] decompress_max_bytes`` and
  ``decompress_max_items`` (4.13 beyond).
* **Only the client-server API.** A path must be ``/_matrix/client/...``
  (media is not carried, docs/client-proxy.md); anything else, the homeserver's
  admin API included, is 4.03 ``M_FORBIDDEN`` and nothing reaches the
  homeserver.
* **Long polls are bounded.** A sync ``timeout`` (and an ``events`` one) above
  ``[limits] long_poll_max`` is lowered to it; a parked sync ends with 2.03
  after ``min(PARK_MAX, long_poll_max)``.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiocoap.message import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.constants import TransportTuning
from aiocoap.optiontypes import OpaqueOption, UintOption

from lowbw.compact.codec import BodyCodec, expand_query_value
from lowbw.compact.refs import ProxyRefs
from lowbw.proxy.homeserver import HomeserverUnavailable, query_params
from lowbw.proxy.registry import DeviceRecord
from lowbw.proxy.transport import COAP_OVERHEAD, FRAME_OVERHEAD, SessionAddress
from lowbw.wire import coap, handshake, routes, status
from lowbw.wire.errors import DecodeError, EncodeError, LowbwError

log = logging.getLogger("lowbw.proxy.clients")

PERMISSION_CLIENT = "client"
BEARER_BIND_OPTION = 65008
BEARER_SLOT_OPTION = 65012
BIND_REQUIRED_OPTION = 65016
REFS_KNOWN_OPTION = 65020
SESSION_END_OPTION = 65024
# uint, a set of body forms (bit 0: base64 text as byte strings, lowbw.compact.blobs):
# the client-proxy offers it, the proxy turns the forms on and echoes what it took.
BYTE_STRINGS_OPTION = 65028
FORM_BLOBS = 0x01
FORMS_KNOWN = FORM_BLOBS
# uint seconds, on a parked sync: a result holding only the client's own echoes
# (its sends, its receipts) may be held that long for the next news (0: off).
ECHO_HOLD_OPTION = 65032
ECHO_HOLD_MAX = 600
# empty, on a sync request: its Uri-Query is that of the session's last sync request
# of the same token without this option, but since, timeout and full_state, with the
# request's own parameters added.
QUERY_SAME_OPTION = 65036
# What Query-Same never stands for: each request says these itself (full_state: a
# client's first sync asks for it, its parks must not).
NOT_REMEMBERED = ("since", "timeout", "full_state")
# uint seconds, on a parked sync: the proxy may hold back its empty ACK that long (at
# most PARK_ACK_MAX), so that news within it goes piggybacked on the ACK.
PARK_ACK_OPTION = 65040
PARK_ACK_MAX = 60
# No-Response (RFC 7967) suppressing answers of class 2, 4 and 5.
NO_RESPONSE_ALL = 2 | 8 | 16
MAX_SLOTS = 16
# Bearer-Bind slot byte meaning "this request only" (a client-proxy without a session yet).
TRANSIENT_SLOT = 0xFF
HANDLE_PREFIX = "lbwh_"
CF_OCTETS = 42
# A parked sync is answered (2.03, nothing new) after this long at the latest,
# so a client-proxy that went away stops costing the homeserver long-polls.
PARK_MAX = 900.0
# Each homeserver long-poll of a parked sync, in milliseconds.
PARK_POLL_MS = 30_000
PARK_ACK_DELAY = 1.0
SYNC_SECTIONS = ("rooms", "presence", "account_data", "to_device", "device_lists")
# Parts of a joined room in a sync answer that are counters, not events.
ROOM_COUNTERS = ("summary", "unread_notifications", "unread_thread_notifications")
# The one path prefix a client session may reach (the client-server API).
CLIENT_PREFIX = ("", "_matrix", "client")
# Endpoints whose ``timeout`` query makes the homeserver hold the request.
_LONG_POLL_ENDINGS = ("/sync", "/events")
ONLY_CLIENT_API = "lowbw: only /_matrix/client/ is carried"
LOGIN_ENDINGS = ("/login", "/register", "/refresh")
_METHODS = {Code.GET: "GET", Code.POST: "POST", Code.PUT: "PUT", Code.DELETE: "DELETE"}


def _login_slot(request: Message, method: str, path: str) -> int | None:
    """The slot a login asks its token to be bound to: ``Bearer-Bind`` of the slot
    byte alone, on a POST to a login endpoint (module docstring); None if it asks
    none. DecodeError for a slot-only Bearer-Bind anywhere else, or a bad slot."""
    binds = _options(request, BEARER_BIND_OPTION)
    if len(binds) != 1 or len(binds[0]) != 1:
        return None  # none, or a token (or garbage): _bearer decides
    if method != "POST" or not path.endswith(LOGIN_ENDINGS) or binds[0][0] >= MAX_SLOTS:
        raise DecodeError("bad Bearer-Bind")
    return int(binds[0][0])


def _body_message(code: int, payload: bytes, cf: int, codec: BodyCodec) -> Message:
    """An answer with a body; the session's default format goes without Content-Format."""
    option = codec.content_format(cf)
    if option is None:
        return Message(code=Code(code), payload=payload)
    return Message(code=Code(code), payload=payload, content_format=option)


def single_payload_max(tuning: Any) -> int:
    """Largest payload sent whole, without block-wise transfer: what fits one
    frame at the radio's MTU (blocks only beyond that), or one block when the
    MTU is unknown. A 600-byte sync answer at MTU 1024 is one datagram, not
    two blocks and a second request."""
    block = 1 << (tuning.block_szx + 4)
    mtu = getattr(tuning, "mtu", 0)
    if not mtu:
        return block
    return max(block, mtu - COAP_OVERHEAD - FRAME_OVERHEAD)


def is_client(rec: DeviceRecord) -> bool:
    return PERMISSION_CLIENT in rec.permissions


def _has_content(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_has_content(v) for v in value.values())
    if isinstance(value, list):
        return len(value) > 0
    return value is not None


def sync_is_empty(body: Any) -> bool:
    """True if a sync answer holds nothing a client would act on.

    Only the sections count (rooms, presence, account data, to-device, device
    lists); the counters beside them (one-time keys, fallback key types) ride
    along with the next result that has something.
    """
    if not isinstance(body, dict):
        return False
    return not any(_has_content(body.get(k)) for k in SYNC_SECTIONS)


def sync_is_echo(body: Any, users: set[str]) -> bool:
    """True if a (non-empty) sync answer holds only echoes of what the client did itself.

    That is: nothing outside ``rooms.join``; in each joined room no state and
    no account data, timeline events that all carry ``unsigned.transaction_id``
    (the homeserver gives it only to the device that sent the event) from one
    of ``users``, ephemeral events that are receipts of ``users`` only or
    typing of ``users`` only; counters (summary, unread counts) ride along.
    Anything unknown is news. ``users`` are the session's own Matrix users
    (learned from login and whoami answers; for a token none was learned
    from, the one sender of events that carry a transaction ID, added to it
    here).
    """
    if not isinstance(body, dict) or any(_has_content(body.get(k)) for k in SYNC_SECTIONS if k != "rooms"):
        return False
    rooms = body.get("rooms")
    if not isinstance(rooms, dict):
        return False
    joined: list[dict[str, Any]] = []
    for kind, by_room in rooms.items():
        if not _has_content(by_room):
            continue
        if kind != "join" or not isinstance(by_room, dict):
            return False
        for room in by_room.values():
            if not isinstance(room, dict):
                return False
            joined.append(room)
    seen = set(users)
    timelines: list[Any] = []
    for room in joined:
        timeline = room.get("timeline")
        events = timeline.get("events") if isinstance(timeline, dict) else None
        if events is not None and not isinstance(events, list):
            return False
        for event in events or ():
            unsigned = event.get("unsigned") if isinstance(event, dict) else None
            if not isinstance(unsigned, dict) or not isinstance(unsigned.get("transaction_id"), str):
                return False
            timelines.append(event)
            if not users and isinstance(event.get("sender"), str):
                seen.add(event["sender"])  # not known yet (a restored token): learnt
    if len(seen) != 1 and not users:
        return False
    for event in timelines:
        if event.get("sender") not in seen:
            return False
    for room in joined:
        for section, value in room.items():
            if section == "timeline" or section in ROOM_COUNTERS:
                continue
            if section == "ephemeral":
                events = value.get("events") if isinstance(value, dict) else None
                if not isinstance(events, list) or not all(_own_ephemeral(e, seen) for e in events):
                    return False
            elif _has_content(value):
                return False
    users.update(seen)
    return True


def _own_ephemeral(event: Any, users: set[str]) -> bool:
    """A receipt (``m.receipt``) or typing (``m.typing``) event naming only ``users``."""
    if not isinstance(event, dict) or not isinstance(event.get("content"), dict):
        return False
    content = event["content"]
    if event.get("type") == "m.typing":
        ids = content.get("user_ids")
        return isinstance(ids, list) and all(u in users for u in ids)
    if event.get("type") != "m.receipt":
        return False
    for by_type in content.values():
        if not isinstance(by_type, dict):
            return False
        for by_user in by_type.values():
            if not isinstance(by_user, dict) or not all(u in users for u in by_user):
                return False
    return True


def client_path_allowed(path: str) -> bool:
    """True if ``path`` (percent-encoded, as sent to the homeserver) is in the
    client-server API: ``/_matrix/client/`` and more, no dot segments that a
    server could fold into another prefix."""
    parts = path.split("/")
    if len(parts) < 4 or tuple(parts[:3]) != CLIENT_PREFIX or not parts[3]:
        return False
    return not any(p in (".", "..") for p in parts)


def long_poll_ms(given: Any, cap_s: float) -> int | None:
    """A ``timeout`` query value in milliseconds, lowered to ``cap_s``; None if not a number."""
    if not (isinstance(given, str) and given.isascii() and given.isdigit() and len(given) <= 9):
        return None
    return min(int(given), int(cap_s * 1000))


def _is_sync(segments: list[str]) -> bool:
    try:
        rid, _, _ = routes.parse_segments(segments)
    except DecodeError:
        return False
    if rid is not None:
        return routes.decode_segments(segments).endswith("/sync")
    return len(segments) >= 4 and segments[-1] == "sync" and segments[:2] == ["_matrix", "client"]


@dataclass
class ClientState:
    """What the proxy keeps for one client session (gone with the session)."""

    # slot -> access token; never logged (repr off)
    bearers: dict[int, str] = field(default_factory=dict, repr=False)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    refs: ProxyRefs = field(default_factory=ProxyRefs)
    # Identifiers go as references only once the client-proxy has sent
    # Refs-Known (its first request of the session carries it, 0): it opted in.
    refs_on: bool = False
    # Base64 byte strings in answers: the client-proxy offered them (Byte-Strings).
    blobs_on: bool = False
    # stream -> event set when a newer park of the same stream arrives
    parks: dict[Any, asyncio.Event] = field(default_factory=dict)
    # token -> Uri-Query (but since and timeout) of its last sync request (Query-Same)
    sync_query: dict[str | None, list[str]] = field(default_factory=dict, repr=False)
    # parks ended by a logout of their token: they end without an answer
    silenced: set[asyncio.Event] = field(default_factory=set)
    # access token -> the Matrix users it acts as (login and whoami answers): whose echoes are whose
    users: dict[str, set[str]] = field(default_factory=dict, repr=False)


def _options(msg: Message, number: int) -> list[bytes]:
    return [bytes(o.value) for o in msg.opt.get_option(number)]


class ClientService:
    """Serves client sessions (module docstring); one per proxy."""

    def __init__(self, services: Any, park_tuning: TransportTuning | None = None) -> None:
        self.s = services
        self._states: dict[SessionAddress, ClientState] = {}
        self.stopping = False
        self._parked = 0
        self.limits = services.limits
        self.park_max = min(PARK_MAX, self.limits.long_poll_max)
        self.park_poll_ms = PARK_POLL_MS
        if park_tuning is None:
            # The sessions' own timings and block size, but a quick empty ACK.
            park_tuning = copy.copy(services.table.tuning)
            park_tuning.EMPTY_ACK_DELAY = PARK_ACK_DELAY
        self.park_tuning = park_tuning
        self._park_tunings: dict[int, TransportTuning] = {}

    # -- hooks for the transport and the site ------------------------------------------

    def tuning_for(self, addr: SessionAddress, msg: Message) -> TransportTuning:
        """A parked sync is acknowledged quickly; everything else uses the session's timings."""
        if msg.code == Code.GET and self._parks(list(msg.opt.uri_path), list(msg.opt.uri_query)):
            rec = self.s.table.device(addr.device)
            if rec is not None and is_client(rec):
                asked = _options(msg, PARK_ACK_OPTION)
                if len(asked) == 1 and len(asked[0]) <= 1:
                    return self._park_tuning_for(min(coap.uint_decode(asked[0], 1), PARK_ACK_MAX))
                return self.park_tuning
        return addr.tuning

    def _park_tuning_for(self, delay: int) -> TransportTuning:
        """The park timings with an empty-ACK delay of ``delay`` s (Park-Ack), one per value."""
        tuning = self._park_tunings.get(delay)
        if tuning is None:
            tuning = self._park_tunings[delay] = copy.copy(self.park_tuning)
            tuning.EMPTY_ACK_DELAY = max(float(delay), PARK_ACK_DELAY)
        return tuning

    def session_closed(self, addr: SessionAddress) -> None:
        state = self._states.pop(addr, None)
        if state is not None:
            state.closed.set()
            state.bearers.clear()

    async def shutdown(self, drain: float = 2.0) -> None:
        """The proxy stops: answer every parked sync with Session-End, give them ``drain`` s to go out."""
        self.stopping = True
        for state in self._states.values():
            state.closed.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain
        while self._parked and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if drain > 0:
            # The separate responses are CONs: a moment for them to leave and be acknowledged.
            await asyncio.sleep(min(drain, 1.0))

    def _session_end(self, codec: BodyCodec) -> Message:
        msg = self._error(codec, coap.SERVICE_UNAVAILABLE, "M_UNKNOWN", "lowbw: proxy restarting")
        msg.opt.max_age = 1
        msg.opt.add_option(OpaqueOption(SESSION_END_OPTION, b""))
        return msg

    def _state(self, addr: SessionAddress) -> ClientState:
        state = self._states.get(addr)
        if state is None:
            state = self._states[addr] = ClientState()
        return state

    @staticmethod
    def _parks(segments: list[str], query: list[str]) -> bool:
        names = {q.partition("=")[0] for q in query}
        return "since" in names and "timeout" not in names and _is_sync(segments)

    # -- requests ----------------------------------------------------------------------

    async def render(self, request: Message, addr: SessionAddress, rec: DeviceRecord) -> Message:
        state = self._state(addr)
        # An answer that fits one frame goes whole (blocks only beyond the MTU).
        addr.maximum_payload_size = single_payload_max(addr.tuning)
        offered = _options(request, BYTE_STRINGS_OPTION)
        forms = 0
        if len(offered) == 1 and len(offered[0]) <= 2:
            # Anything else (repeated, too long) is no offer: the session stays as it was.
            forms = coap.uint_decode(offered[0], 2) & FORMS_KNOWN
            if forms & FORM_BLOBS:
                state.blobs_on = True
        answer = await self._render(request, addr, rec, state)
        if forms:
            answer.opt.add_option(UintOption(BYTE_STRINGS_OPTION, forms))
        if request.opt.no_response is not None:
            # RFC 7967 (receipts, typing sent unconfirmed): aiocoap drops an answer
            # of a class the request does not want; never forwarded as an option.
            answer.opt.no_response = request.opt.no_response
        return answer

    async def _render(
        self, request: Message, addr: SessionAddress, rec: DeviceRecord, state: ClientState
    ) -> Message:
        codec = self._codec(addr, state)
        method = _METHODS.get(request.code)
        if method is None:
            return self._error(codec, coap.METHOD_NOT_ALLOWED, "M_UNRECOGNIZED", "method not carried")
        try:
            known = _options(request, REFS_KNOWN_OPTION)
            if known:
                if len(known) > 1 or len(known[0]) > 2:
                    raise DecodeError("bad Refs-Known")
                state.refs.confirm(coap.uint_decode(known[0], 2))
                if not state.refs_on:
                    state.refs_on = True
                    codec = self._codec(addr, state)
            segments = [state.refs.resolve_text(seg) for seg in request.opt.uri_path]
            raw_query = []
            for item in request.opt.uri_query:
                key, eq, value = item.partition("=")
                raw_query.append(key + eq + expand_query_value(state.refs.resolve_text(value), addr.table_id))
        except DecodeError as exc:
            return self._error(codec, coap.BAD_REQUEST, "M_UNRECOGNIZED", exc.message or "bad reference")
        try:
            path = routes.decode_segments(segments)
        except DecodeError as exc:
            return self._error(codec, coap.NOT_FOUND, "M_UNRECOGNIZED", exc.message or "unknown route")
        if not client_path_allowed(path):
            log.info("%s: %s outside the client-server API refused", rec.name, method)
            return self._error(codec, coap.FORBIDDEN, "M_FORBIDDEN", ONLY_CLIENT_API)
        try:
            login_slot = _login_slot(request, method, path)
            token = None if login_slot is not None else self._bearer(request, addr, rec)
        except _BindRequired:
            msg = self._error(codec, coap.UNAUTHORIZED, "M_UNKNOWN_TOKEN", "bind the token again")
            msg.opt.add_option(OpaqueOption(BIND_REQUIRED_OPTION, b""))
            return msg
        except DecodeError as exc:
            return self._error(codec, coap.BAD_REQUEST, "M_BAD_JSON", exc.message)
        if method == "GET" and _is_sync(segments):
            try:
                raw_query = self._sync_query(request, raw_query, token, state)
            except DecodeError as exc:
                return self._error(codec, coap.BAD_REQUEST, "M_UNRECOGNIZED", exc.message)
        query: dict[str, Any] = query_params(raw_query)
        if "access_token" in query:
            return self._error(codec, coap.BAD_REQUEST, "M_INVALID_PARAM", "tokens go in Bearer-Bind")
        body: Any = None
        if request.payload:
            cf = request.opt.content_format
            try:
                # Blobs are read even before this session turned them on (module docstring):
                # a 0-RTT answer replayed from an earlier handshake may have carried the echo.
                decoder = self._codec(addr, state, blobs=True, request=True)
                body = decoder.decode(request.payload, None if cf is None else int(cf))
            except LowbwError as exc:
                return self._error(codec, exc.coap_code, "M_NOT_JSON", exc.message or "bad body")
        if method == "GET" and self._parks(segments, raw_query):
            holds = _options(request, ECHO_HOLD_OPTION)
            if len(holds) > 1 or (holds and len(holds[0]) > 2):
                return self._error(codec, coap.BAD_REQUEST, "M_UNRECOGNIZED", "bad Echo-Hold")
            hold = min(coap.uint_decode(holds[0], 2), ECHO_HOLD_MAX) if holds else 0
            return await self._parked_sync(path, query, token, addr, codec, hold)
        timeout = None
        if path.endswith(_LONG_POLL_ENDINGS):
            wait_ms = long_poll_ms(query.get("timeout", "0"), self.limits.long_poll_max)
            if wait_ms is None:
                return self._error(codec, coap.BAD_REQUEST, "M_INVALID_PARAM", "timeout")
            if "timeout" in query:
                query["timeout"] = str(wait_ms)
            timeout = self.s.homeserver.timeout + wait_ms / 1000 + 10.0
        try:
            result = await self.s.homeserver.request(
                method, path, query=query, json_body=body, access_token=token, timeout=timeout
            )
        except HomeserverUnavailable as exc:
            return self._unavailable(codec, exc)
        except LowbwError as exc:
            return self._error(codec, coap.BAD_REQUEST, "M_UNRECOGNIZED", exc.message or "bad request")
        if result.ok and isinstance(result.json, dict) and isinstance(result.json.get("user_id"), str):
            # Whose echoes a sync of this token may hold back (sync_is_echo).
            real = result.json.get("access_token") if path.endswith(LOGIN_ENDINGS) else token
            if path.endswith(LOGIN_ENDINGS + ("/account/whoami",)) and isinstance(real, str):
                if real not in state.users and len(state.users) >= MAX_SLOTS * 2:
                    del state.users[next(iter(state.users))]
                state.users.setdefault(real, set()).add(result.json["user_id"])
        if method == "POST" and result.ok and isinstance(result.json, dict):
            if path.endswith(LOGIN_ENDINGS) and isinstance(result.json.get("access_token"), str):
                if login_slot is not None:
                    # The login asked for its token in this slot: no Bearer-Bind of it follows.
                    state.bearers[login_slot] = result.json["access_token"]
                result.json["access_token"] = self._issue_handle(rec, result.json["access_token"])
                _drop_homeserver_url(result.json)
            elif path.endswith(("/logout", "/logout/all")) and token is not None:
                self.s.registry.drop_client_token(rec.name, token)
                for slot in [s for s, t in state.bearers.items() if t == token]:
                    del state.bearers[slot]
                for stream, park in state.parks.items():
                    if stream[0] == token:
                        state.silenced.add(park)
                        park.set()
        return self._answer(codec, result, method, compact=bool(addr.caps & handshake.CAP_COMPACT))

    @staticmethod
    def _sync_query(
        request: Message, raw_query: list[str], token: str | None, state: ClientState
    ) -> list[str]:
        """A sync's Uri-Query with Query-Same expanded; without it, remembered for the next."""
        same = _options(request, QUERY_SAME_OPTION)
        if not same:
            if token not in state.sync_query and len(state.sync_query) >= MAX_SLOTS * 2:
                del state.sync_query[next(iter(state.sync_query))]
            state.sync_query[token] = [q for q in raw_query if q.partition("=")[0] not in NOT_REMEMBERED]
            return raw_query
        if len(same) > 1 or same[0] or token not in state.sync_query:
            raise DecodeError("bad Query-Same")
        given = {q.partition("=")[0] for q in raw_query}
        return [q for q in state.sync_query[token] if q.partition("=")[0] not in given] + raw_query

    def _codec(
        self, addr: SessionAddress, state: ClientState, blobs: bool | None = None, request: bool = False
    ) -> BodyCodec:
        """The body codec of this session; ``request``: for a request's body (on a
        compact session an absent Content-Format there means DEFLATE, lowbw.compact.codec)."""
        dict_version = 1 if addr.caps & handshake.CAP_DICT_V1 else None
        return BodyCodec(
            addr.table_id,
            dict_version,
            state.refs if state.refs_on else None,
            blobs=state.blobs_on if blobs is None else blobs,
            max_bytes=self.limits.decompress_max_bytes,
            max_items=self.limits.decompress_max_items,
            deflate_default=request and bool(addr.caps & handshake.CAP_COMPACT),
        )

    def precheck(self, request: Message, addr: SessionAddress) -> Message | None:
        """Refuse the first block of a block-wise upload early (method and
        path); None if it may go on. The rest is checked on the whole request."""
        state = self._state(addr)
        codec = self._codec(addr, state)
        if _METHODS.get(request.code) is None:
            return self._error(codec, coap.METHOD_NOT_ALLOWED, "M_UNRECOGNIZED", "method not carried")
        try:
            segments = [state.refs.resolve_text(seg) for seg in request.opt.uri_path]
            path = routes.decode_segments(segments)
        except DecodeError as exc:
            return self._error(codec, coap.NOT_FOUND, "M_UNRECOGNIZED", exc.message or "unknown route")
        if not client_path_allowed(path):
            return self._error(codec, coap.FORBIDDEN, "M_FORBIDDEN", ONLY_CLIENT_API)
        return None

    def refusal(self, addr: SessionAddress, code: int, errcode: str, text: str) -> Message:
        """An error answer in this session's body encoding."""
        return self._error(self._codec(addr, self._state(addr)), code, errcode, text)

    def _bearer(self, request: Message, addr: SessionAddress, rec: DeviceRecord) -> str | None:
        binds = _options(request, BEARER_BIND_OPTION)
        bearers = self._state(addr).bearers
        if binds:
            value = binds[0]
            if len(binds) > 1 or len(value) < 2 or (value[0] >= MAX_SLOTS and value[0] != TRANSIENT_SLOT):
                raise DecodeError("bad Bearer-Bind")
            presented = value[1:].decode("ascii", "replace")
            if not (presented.isprintable() and " " not in presented and "\ufffd" not in presented):
                # What an HTTP Authorization header could carry, nothing else.
                raise DecodeError("Bearer-Bind token is not printable ASCII")
            token = presented
            if presented.startswith(HANDLE_PREFIX):
                # An unknown handle stays as it is: the homeserver answers it
                # with 401 M_UNKNOWN_TOKEN, which is what the client must see.
                token = self.s.registry.client_token(rec.name, presented) or presented
            if value[0] != TRANSIENT_SLOT:
                bearers[value[0]] = token
            return token
        slots = _options(request, BEARER_SLOT_OPTION)
        if not slots:
            return None
        if len(slots) > 1 or len(slots[0]) > 1:
            raise DecodeError("bad Bearer-Slot")
        slot = coap.uint_decode(slots[0], 1)
        bound = bearers.get(slot)
        if bound is None:
            raise _BindRequired()
        return bound

    def _issue_handle(self, rec: DeviceRecord, token: str) -> str:
        # 72 bits: a handle works only in a session of the key it was issued to.
        handle = HANDLE_PREFIX + secrets.token_urlsafe(9)
        self.s.registry.add_client_token(rec.name, handle, token)
        log.info("%s: login answered with a token handle", rec.name)
        return handle

    async def _parked_sync(
        self,
        path: str,
        query: dict[str, Any],
        token: str | None,
        addr: SessionAddress,
        codec: BodyCodec,
        hold: float = 0,
    ) -> Message:
        self._parked += 1
        try:
            return await self._park(path, query, token, addr, codec, hold)
        finally:
            self._parked -= 1

    async def _park(
        self,
        path: str,
        query: dict[str, Any],
        token: str | None,
        addr: SessionAddress,
        codec: BodyCodec,
        hold: float = 0,
    ) -> Message:
        state = self._state(addr)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.park_max
        params = dict(query)
        # One park per stream (token, path and query but since): a newer one ends this.
        stream = (token, path, tuple(sorted((k, str(v)) for k, v in query.items() if k != "since")))
        older = state.parks.get(stream)
        if older is not None:
            older.set()
        mine = state.parks[stream] = asyncio.Event()
        try:
            answer = await self._poll_until_news(path, params, token, state, mine, deadline, codec, hold)
            if mine in state.silenced:
                # Its token was logged out in this session: the client-proxy, which
                # carried the logout, has let the park go; no answer crosses (RFC 7967).
                answer.opt.no_response = NO_RESPONSE_ALL
            return answer
        finally:
            state.silenced.discard(mine)
            if state.parks.get(stream) is mine:
                del state.parks[stream]

    async def _poll_until_news(
        self,
        path: str,
        params: dict[str, Any],
        token: str | None,
        state: ClientState,
        mine: asyncio.Event,
        deadline: float,
        codec: BodyCodec,
        hold: float = 0,
    ) -> Message:
        """Long-poll the homeserver until a result has news (module docstring).

        With ``hold`` (seconds, from Echo-Hold): a result holding only the
        client's own echoes (``sync_is_echo``) is not answered at once; polling
        goes on past it, and at the next news, or ``hold`` seconds after the
        first echo, the answer is a fresh sync from the ``since`` the client
        gave (timeout 0): what the homeserver gives a client that polled once,
        echoes and news together, in one answer on the air instead of two.
        """
        loop = asyncio.get_running_loop()
        held: str | None = None  # the client's since, once an echo-only result is held
        hold_until = 0.0
        users = state.users.setdefault(token, set()) if token is not None and hold > 0 else set()
        while True:
            remaining = deadline - loop.time()
            if self.stopping:
                return self._session_end(codec)
            if state.closed.is_set() or mine.is_set():
                return Message(code=Code.VALID)
            if held is not None and (remaining <= 0 or loop.time() >= hold_until):
                return await self._resync(path, params, held, token, codec)
            if remaining <= 0:
                return Message(code=Code.VALID)
            poll_s = remaining if held is None else min(remaining, hold_until - loop.time())
            poll_ms = int(max(0.0, min(self.park_poll_ms / 1000, poll_s)) * 1000)
            params["timeout"] = str(poll_ms)
            call = asyncio.ensure_future(
                self.s.homeserver.request(
                    "GET",
                    path,
                    query=params,
                    access_token=token,
                    timeout=self.s.homeserver.timeout + poll_ms / 1000 + 10.0,
                )
            )
            closed = asyncio.ensure_future(state.closed.wait())
            superseded = asyncio.ensure_future(mine.wait())
            try:
                await asyncio.wait({call, closed, superseded}, return_when=asyncio.FIRST_COMPLETED)
            except BaseException:
                call.cancel()
                raise
            finally:
                closed.cancel()
                superseded.cancel()
            if not call.done():
                call.cancel()
                return self._session_end(codec) if self.stopping else Message(code=Code.VALID)
            try:
                result = call.result()
            except HomeserverUnavailable as exc:
                return self._unavailable(codec, exc)
            except LowbwError as exc:
                return self._error(codec, coap.BAD_REQUEST, "M_UNRECOGNIZED", exc.message or "bad request")
            if not result.ok or not isinstance(result.json, dict):
                return self._answer(codec, result, "GET")
            if not sync_is_empty(result.json):
                if not (hold > 0 and sync_is_echo(result.json, users)):
                    if held is not None:
                        return await self._resync(path, params, held, token, codec)
                    return self._answer(codec, result, "GET")
                if held is None:
                    held, hold_until = str(params["since"]), loop.time() + hold
            nxt = result.json.get("next_batch")
            if isinstance(nxt, str):
                params["since"] = nxt

    async def _resync(
        self, path: str, params: dict[str, Any], since: str, token: str | None, codec: BodyCodec
    ) -> Message:
        """The answer to a held park: a sync from the client's own ``since``, at once."""
        query = {**params, "since": since, "timeout": "0"}
        try:
            result = await self.s.homeserver.request(
                "GET", path, query=query, access_token=token, timeout=self.s.homeserver.timeout + 10.0
            )
        except HomeserverUnavailable as exc:
            return self._unavailable(codec, exc)
        except LowbwError as exc:
            return self._error(codec, coap.BAD_REQUEST, "M_UNRECOGNIZED", exc.message or "bad request")
        return self._answer(codec, result, "GET")

    # -- answers -----------------------------------------------------------------------

    def _error(self, codec: BodyCodec, code: int, errcode: str, text: str) -> Message:
        payload, cf = codec.encode({"errcode": errcode, "error": text})
        return _body_message(code, payload, cf, codec)

    def _unavailable(self, codec: BodyCodec, exc: HomeserverUnavailable) -> Message:
        code = exc.coap_code
        msg = self._error(codec, code, "M_UNKNOWN", "lowbw: homeserver unavailable")
        if code in (coap.SERVICE_UNAVAILABLE, coap.GATEWAY_TIMEOUT):
            for number, value in status.retry_after_to_options(self.s.retry_after):
                if number == coap.MAX_AGE:
                    msg.opt.max_age = coap.uint_decode(value)
        return msg

    def _answer(self, codec: BodyCodec, result: Any, method: str, compact: bool = False) -> Message:
        code, opts = status.http_to_coap(result.status, method, result.retry_after)
        if result.json is not None:
            value = result.json
            if compact and method == "PUT" and result.ok and _event_id_only(value):
                # A send's (or state event's, or redaction's) answer: the event ID
                # alone (module docstring, "Event IDs alone").
                value = value["event_id"]
            try:
                payload, cf = codec.encode(value)
            except EncodeError:
                return self._error(codec, coap.BAD_GATEWAY, "M_UNKNOWN", "answer not representable")
            msg = _body_message(code, payload, cf, codec)
        elif result.body:
            msg = Message(code=Code(code), payload=bytes(result.body), content_format=CF_OCTETS)
        else:
            msg = Message(code=Code(code))
        for number, value in opts:
            if number == coap.MAX_AGE:
                msg.opt.max_age = coap.uint_decode(value)
            else:
                msg.opt.add_option(OpaqueOption(number, value))
        return msg


def _event_id_only(value: Any) -> bool:
    """Whether an answer is ``{"event_id": "..."}`` and nothing else."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("event_id"), str)


def _drop_homeserver_url(body: dict[str, Any]) -> None:
    """``well_known.m.homeserver.base_url`` left out of an answer (in place): the
    client-proxy puts its own URL there in every answer that has a ``well_known``
    (docs/client-proxy.md), so the homeserver's never needs to cross."""
    well_known = body.get("well_known")
    homeserver = well_known.get("m.homeserver") if isinstance(well_known, dict) else None
    if isinstance(homeserver, dict):
        homeserver.pop("base_url", None)


class _BindRequired(Exception):
    """The request names a token slot this session has not bound."""
