"""What the proxy serves to devices: aiocoap resources behind the session layer.

Every request arrives on a ``SessionAddress`` (an authenticated device) and is
answered by ``ProxySite``:

============  ======  =========================================================
Uri-Path      method  meaning
============  ======  =========================================================
``v``         POST    sensor readings (``lowbw.wire.reading``) -> Matrix events;
                      2.04 only once every event is stored
``x``         GET     oldest pending command: 2.05 CBOR ``[id, sender, body,
                      event_id]``, or 2.03 with no payload when none waits;
                      with Observe 0 (and a token) also pushed when queued
``x``         POST    CBOR ``id``: command delivered, remove it -> 2.04
``z``         GET     2.05 CBOR Unix time in milliseconds
other         any     the Matrix client-server API (``lowbw.wire.routes``):
                      CBOR with integer keys <-> JSON, within permissions
============  ======  =========================================================

A client-proxy's session (permission ``client``) is served by
``lowbw.proxy.clients`` instead: every path is the client-server API, with the
person's own token.

Generic API rules:

* Path: ``routes.decode_segments``. Query: each Uri-Query ``k=v`` becomes a
  query parameter (repeated keys become a list). ``user_id``, ``ts`` and
  ``access_token`` are the proxy's to set and are refused (4.03).
* Body: Content-Format 60 (CBOR) or none; integer keys expanded with the key
  table the handshake agreed (``caps & 0x0F``). POST/PUT without a body send
  ``{}``.
* Permissions (``check_permission``): ``sync``, ``joined_rooms``,
  ``account/whoami``; ``rooms/{room}/messages|state|event``, state and send
  only for the device's rooms, and state PUT and send only for its event
  types; ``join`` only its own rooms; ``user/{own id}/filter``; ``createRoom``
  only with the ``create_room`` permission. Anything else is 4.03 with
  ``{errcode: M_FORBIDDEN}`` and nothing reaches the homeserver.
* Answer: ``status.http_to_coap`` (HTTP-Status option when the code alone is
  not exact, Max-Age for Retry-After); JSON bodies go back as CBOR with keys
  compressed (Content-Format 60); an error without a JSON body becomes
  ``{errcode: M_UNKNOWN, error: "HTTP <status>"}``. Large answers go
  block-wise (aiocoap Block2, block size from the link's tuning).
* No HTTP answer at all: 5.03 (unreachable) or 5.04 (too slow) with Max-Age,
  or 5.02 (answer too large).
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from aiocoap import resource
from aiocoap.blockwise import Block1Spool, Block2Cache
from aiocoap.message import Message
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import OpaqueOption
from aiocoap.util.asyncio.timeoutdict import TimeoutDict

from lowbw.proxy import sensor
from lowbw.proxy.clients import ClientService, is_client
from lowbw.proxy.homeserver import CLIENT_V3, Homeserver, HomeserverUnavailable, encode_path, query_params
from lowbw.proxy.limits import Limits
from lowbw.proxy.registry import DeviceRecord, Registry
from lowbw.proxy.sessions import SessionTable
from lowbw.proxy.transport import SessionAddress
from lowbw.wire import cbor, coap, keys, reading, routes, status
from lowbw.wire.errors import DecodeError, EncodeError, LowbwError

log = logging.getLogger("lowbw.proxy.resources")

CF_CBOR = 60
PERMISSION_CREATE_ROOM = "create_room"
RESERVED_QUERY = ("user_id", "ts", "access_token")
CLIENT_VERSIONS = ("v3", "r0")
READING_TIMEOUT = 10.0
DEFAULT_RETRY_AFTER = 30
# Request bodies from a device: generous for a 100 bit/s link, bounded for a parser.
MAX_BODY_ITEMS = 4096
MAX_BODY_DEPTH = 32
_METHODS = {Code.GET: "GET", Code.POST: "POST", Code.PUT: "PUT", Code.DELETE: "DELETE"}


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Services:
    """What the resources need from the running proxy."""

    table: SessionTable
    registry: Registry
    homeserver: Homeserver
    mode: str  # "appservice" or "token"
    as_token: str | None = None
    reading_timeout: float = READING_TIMEOUT
    retry_after: int = DEFAULT_RETRY_AFTER
    # The radio's bit rate: a reading's age counts from when its datagram
    # started on the air, so its own airtime is taken off the arrival time.
    link_bps: float = 0.0
    # What one session may spend (``lowbw.proxy.limits``, ``[limits]`` in proxy.toml).
    limits: Limits = field(default_factory=Limits)


def airtime_ms(nbytes: int, link_bps: float) -> int:
    """Milliseconds ``nbytes`` spend on a ``link_bps`` radio (0 when the rate is unknown)."""
    if link_bps <= 0:
        return 0
    return int(nbytes * 8 * 1000 / link_bps)


def check_permission(method: str, path: str, rec: DeviceRecord) -> str | None:
    """None if ``rec`` may make this request, else why not (module docstring)."""
    segs = [urllib.parse.unquote(s) for s in path.split("/")[1:]]
    if len(segs) < 4 or segs[0] != "_matrix" or segs[1] != "client" or segs[2] not in CLIENT_VERSIONS:
        return "endpoint not allowed"
    rooms = rec.rooms
    match segs[3:]:
        case ["sync"] | ["joined_rooms"] | ["account", "whoami"] if method == "GET":
            return None
        case ["createRoom"] if method == "POST":
            return None if PERMISSION_CREATE_ROOM in rec.permissions else "no permission to create rooms"
        case ["join", room] | ["rooms", room, "join"] if method == "POST":
            return None if room in rooms else "not one of the device's rooms"
        case ["rooms", room, "messages"] | ["rooms", room, "state"] | ["rooms", room, "event", _] if (
            method == "GET"
        ):
            return None if room in rooms else "not one of the device's rooms"
        case ["rooms", room, "state", etype] | ["rooms", room, "state", etype, _] if method in (
            "GET",
            "PUT",
        ):
            if room not in rooms:
                return "not one of the device's rooms"
            if method == "PUT" and etype not in rec.event_types:
                return "event type not allowed"
            return None
        case ["rooms", room, "send", etype, _] if method == "PUT":
            if room not in rooms:
                return "not one of the device's rooms"
            return None if etype in rec.event_types else "event type not allowed"
        case ["user", user, "filter"] if method == "POST":
            return None if user == rec.user_id else "not the device's own user"
        case ["user", user, "filter", _] if method == "GET":
            return None if user == rec.user_id else "not the device's own user"
    return "endpoint not allowed"


def _add_options(msg: Message, options: list[tuple[int, bytes]]) -> None:
    for number, value in options:
        if number == coap.MAX_AGE:
            msg.opt.max_age = coap.uint_decode(value)
        else:
            msg.opt.add_option(OpaqueOption(number, value))


def error_message(
    code: int, errcode: str, text: str, table_id: int, options: list[tuple[int, bytes]] | None = None
) -> Message:
    """A CoAP error answer carrying ``{errcode, error}`` as CBOR."""
    payload = cbor.dumps(keys.compress({"errcode": errcode, "error": text}, table_id))
    msg = Message(code=Code(code), payload=bytes(payload), content_format=CF_CBOR)
    _add_options(msg, options or [])
    return msg


def unavailable_message(exc: HomeserverUnavailable, retry_after: int, table_id: int) -> Message:
    code = exc.coap_code
    opts: list[tuple[int, bytes]] = []
    if code in (coap.SERVICE_UNAVAILABLE, coap.GATEWAY_TIMEOUT):
        opts = status.retry_after_to_options(retry_after)
    return error_message(code, "M_UNAVAILABLE", "homeserver unavailable", table_id, opts)


def http_answer(result: Any, method: str, table_id: int) -> Message:
    """The CoAP answer for an HTTP result (status, body, Retry-After)."""
    code, opts = status.http_to_coap(result.status, method, result.retry_after)
    if result.json is not None:
        try:
            payload = bytes(cbor.dumps(keys.compress(result.json, table_id)))
        except EncodeError:
            return error_message(coap.BAD_GATEWAY, "M_UNKNOWN", "answer not representable", table_id)
        msg = Message(code=Code(code), payload=payload, content_format=CF_CBOR)
    elif result.status >= 400:
        payload = bytes(
            cbor.dumps(keys.compress({"errcode": "M_UNKNOWN", "error": "HTTP %d" % result.status}, table_id))
        )
        msg = Message(code=Code(code), payload=payload, content_format=CF_CBOR)
    else:
        msg = Message(code=Code(code), payload=bytes(result.body))
    _add_options(msg, opts)
    return msg


class ProxySite(resource.ObservableResource):
    """The one root resource: routes by Uri-Path (module docstring).

    ``GET x`` with Observe 0 and a non-empty token registers the device for
    notifications: whenever a command is queued for it, it gets the oldest
    pending command as a (confirmable) notification instead of waiting for its
    next exchange. Observations end with the session.
    """

    def __init__(self, services: Services, blockwise_timeout: float = 600.0) -> None:
        super().__init__()
        self.s = services
        self._watchers: dict[str, set[Any]] = {}
        # aiocoap keeps block-wise state for MAX_TRANSMIT_WAIT (93 s by default):
        # far too short when one block takes 15 s of airtime each way.
        self._block1 = Block1Spool()
        self._block1._assemblies = TimeoutDict(blockwise_timeout)
        self._block2 = Block2Cache()
        self._block2._completes = TimeoutDict(blockwise_timeout)
        self.clients = ClientService(services)

    async def add_observation(self, request: Message, serverobservation: Any) -> None:
        addr = request.remote
        if (
            request.opt.uri_path != (routes.ROUTE_COMMANDS,)
            or request.code != Code.GET
            or not request.token
            or not isinstance(addr, SessionAddress)
            or addr.closed
        ):
            return
        watchers = self._watchers.setdefault(addr.device, set())
        watchers.add(serverobservation)

        def cancel() -> None:
            watchers.discard(serverobservation)
            if not watchers and self._watchers.get(addr.device) is watchers:
                del self._watchers[addr.device]

        serverobservation.accept(cancel)

    def notify_commands(self, device: str) -> None:
        """A command was queued for ``device``: notify its observations."""
        for obs in list(self._watchers.get(device, ())):
            obs.trigger()

    def session_closed(self, addr: SessionAddress) -> None:
        """End the observations of a closed session (their token dies with it)."""
        self.clients.session_closed(addr)
        for obs in list(self._watchers.get(addr.device, ())):
            # ServerObservation keeps no public handle on its request; ending all
            # of the device's observations is right: it has one session.
            obs.deregister("session closed")

    async def needs_blockwise_assembly(self, request: Message) -> bool:
        # Readings are small: skip aiocoap's block-wise bookkeeping on the hot
        # path unless the request itself is block-wise.
        if request.opt.uri_path == (routes.ROUTE_READING,):
            return request.opt.block1 is not None or request.opt.block2 is not None
        return True

    async def render(self, request: Message) -> Message:
        addr = request.remote
        if not isinstance(addr, SessionAddress):
            return Message(code=Code.FORBIDDEN)
        rec = self.s.table.device(addr.device)
        if rec is None or addr.closed:
            return Message(code=Code.FORBIDDEN)
        if is_client(rec):
            return await self.clients.render(request, addr, rec)
        path = list(request.opt.uri_path)
        if path == [routes.ROUTE_READING]:
            if request.code != Code.POST:
                return Message(code=Code.METHOD_NOT_ALLOWED)
            return await self.post_reading(request, addr, rec)
        if path == [routes.ROUTE_COMMANDS]:
            if request.code == Code.GET:
                return self.get_command(addr, rec)
            if request.code == Code.POST:
                return self.ack_command(request, addr, rec)
            return Message(code=Code.METHOD_NOT_ALLOWED)
        if path == [routes.ROUTE_TIME]:
            if request.code != Code.GET:
                return Message(code=Code.METHOD_NOT_ALLOWED)
            return Message(code=Code.CONTENT, payload=bytes(cbor.dumps(now_ms())), content_format=CF_CBOR)
        return await self.client_api(request, path, addr, rec)

    # -- credentials -----------------------------------------------------------------

    def _auth(self, rec: DeviceRecord) -> tuple[str | None, str | None]:
        """(access_token, as_user) for requests made for ``rec``."""
        if self.s.mode == "appservice":
            return self.s.as_token, rec.user_id
        return rec.access_token, None

    # -- sensor readings ---------------------------------------------------------------

    async def post_reading(self, request: Message, addr: SessionAddress, rec: DeviceRecord) -> Message:
        received = now_ms() - airtime_ms(getattr(request, "lowbw_rx_bytes", 0), self.s.link_bps)
        table_id = addr.table_id
        try:
            readings = reading.decode_readings(request.payload)
        except DecodeError as exc:
            return error_message(coap.BAD_REQUEST, "M_BAD_JSON", exc.message or "bad reading", table_id)
        registry = self.s.registry
        table = self.s.table
        epoch = table.epoch(rec.name)
        msgnum = sensor.full_msgnum(request.mid, table.msg_top(rec.name))
        table.advance_msg_top(rec.name, msgnum)
        many = len(readings) > 1
        contents = []
        try:
            for i, (slot, values, t) in enumerate(readings):
                measured = reading.measured_at_ms(t, received)
                content = sensor.render(
                    rec.name, rec.slots, slot, values, msgnum, measured, i if many else None
                )
                contents.append((sensor.txn_id(rec.name, msgnum, i, epoch), content, measured))
        except sensor.SchemaError as exc:
            return error_message(coap.BAD_REQUEST, "M_BAD_JSON", exc.message, table_id)
        if not rec.rooms:
            return error_message(coap.FORBIDDEN, "M_FORBIDDEN", "device has no room", table_id)
        room = rec.rooms[0]
        token, as_user = self._auth(rec)
        if token is None:
            return error_message(coap.INTERNAL_SERVER_ERROR, "M_UNKNOWN", "no credential", table_id)
        for txn, content, measured in contents:
            if registry.sent_event(rec.name, txn) is not None:
                continue
            path = encode_path(CLIENT_V3 + "/rooms/{}/send/{}/{}", room, sensor.EVENT_TYPE, txn)
            try:
                result = await self.s.homeserver.request(
                    "PUT",
                    path,
                    json_body=content,
                    access_token=token,
                    as_user=as_user,
                    ts=measured if self.s.mode == "appservice" else None,
                    timeout=self.s.reading_timeout,
                )
            except HomeserverUnavailable as exc:
                return unavailable_message(exc, self.s.retry_after, table_id)
            event_id = result.json.get("event_id") if result.ok and isinstance(result.json, dict) else None
            if not isinstance(event_id, str):
                if result.ok:
                    return error_message(coap.BAD_GATEWAY, "M_UNKNOWN", "no event_id", table_id)
                return http_answer(result, "PUT", table_id)
            registry.record_event(rec.name, txn, event_id)
        return Message(code=Code.CHANGED)

    # -- downlink commands -------------------------------------------------------------

    def get_command(self, addr: SessionAddress, rec: DeviceRecord) -> Message:
        pending = self.s.registry.pending_commands(rec.name, 1)
        if not pending:
            return Message(code=Code.VALID)
        cid, sender, body, event_id = pending[0]
        return Message(
            code=Code.CONTENT,
            payload=bytes(cbor.dumps([cid, sender, body, event_id])),
            content_format=CF_CBOR,
        )

    def ack_command(self, request: Message, addr: SessionAddress, rec: DeviceRecord) -> Message:
        try:
            cid = cbor.loads(request.payload, max_depth=1, max_items=1)
        except DecodeError:
            cid = None
        if not isinstance(cid, int) or isinstance(cid, bool):
            return error_message(coap.BAD_REQUEST, "M_BAD_JSON", "command id", addr.table_id)
        if self.s.registry.ack_command(rec.name, cid):
            log.info("%s: command %d delivered", rec.name, cid)
        # An ack for a command already acked (a retry after a restart) is fine:
        # the state the device asks for holds.
        self.s.table.refresh_commands(rec.name, notify=False)
        return Message(code=Code.CHANGED)

    # -- the client-server API ----------------------------------------------------------

    async def client_api(
        self, request: Message, segments: list[str], addr: SessionAddress, rec: DeviceRecord
    ) -> Message:
        table_id = addr.table_id
        method = _METHODS.get(request.code)
        if method is None:
            return error_message(coap.METHOD_NOT_ALLOWED, "M_UNRECOGNIZED", "method", table_id)
        try:
            path = routes.decode_segments(segments)
        except DecodeError as exc:
            return error_message(coap.NOT_FOUND, "M_UNRECOGNIZED", exc.message or "unknown route", table_id)
        why = check_permission(method, path, rec)
        if why is not None:
            log.info("%s: %s %s refused: %s", rec.name, method, _loggable(path), why)
            return error_message(coap.FORBIDDEN, "M_FORBIDDEN", why, table_id)
        query: dict[str, Any] = query_params(request.opt.uri_query)
        for key in RESERVED_QUERY:
            if key in query:
                return error_message(coap.FORBIDDEN, "M_FORBIDDEN", "query %s is the proxy's" % key, table_id)
        body: Any = None
        if request.payload:
            cf = request.opt.content_format
            if cf is not None and int(cf) != CF_CBOR:
                return error_message(coap.UNSUPPORTED_CONTENT_FORMAT, "M_NOT_JSON", "CBOR only", table_id)
            try:
                body = keys.expand(
                    cbor.loads(request.payload, max_depth=MAX_BODY_DEPTH, max_items=MAX_BODY_ITEMS),
                    table_id,
                )
            except DecodeError as exc:
                return error_message(coap.BAD_REQUEST, "M_NOT_JSON", exc.message or "bad CBOR", table_id)
        elif method in ("POST", "PUT"):
            body = {}
        token, as_user = self._auth(rec)
        if token is None:
            return error_message(coap.INTERNAL_SERVER_ERROR, "M_UNKNOWN", "no credential", table_id)
        timeout = None
        if path.endswith("/sync"):
            try:
                timeout = self.s.homeserver.timeout + int(query.get("timeout", "0")) / 1000 + 10.0
            except (TypeError, ValueError):
                return error_message(coap.BAD_REQUEST, "M_INVALID_PARAM", "timeout", table_id)
        try:
            result = await self.s.homeserver.request(
                method,
                path,
                query=query,
                json_body=body,
                access_token=token,
                as_user=as_user,
                timeout=timeout,
            )
        except HomeserverUnavailable as exc:
            return unavailable_message(exc, self.s.retry_after, table_id)
        except LowbwError as exc:
            return error_message(coap.BAD_REQUEST, "M_UNRECOGNIZED", exc.message or "bad request", table_id)
        return http_answer(result, method, table_id)


def _loggable(path: str) -> str:
    """A path for a log line: first three segments only (no room ids, no txn ids)."""
    parts = path.split("/")
    return "/".join(parts[:5]) + ("/..." if len(parts) > 5 else "")
