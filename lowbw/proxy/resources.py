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

What one session may spend (``[limits]`` of proxy.toml, ``lowbw.proxy.limits``):

* ``observations_per_session``: Observe registrations on ``x``; a new one
  silently ends the session's oldest. A re-registration with the same token
  replaces its own. All end with the session.
* ``requests_in_flight``: requests being rendered at once; one more is
  answered 5.03 ``M_LIMIT_EXCEEDED`` with Max-Age ``BUSY_RETRY_AFTER`` and
  costs nothing else.
* ``long_poll_max``: a sync ``timeout`` above it is lowered to it.
* ``sensor_body_max`` / ``client_body_max``: the largest request body (whole,
  or reassembled from Block1) of a sensor key / a client key; beyond it 4.13
  with Size1 giving the maximum, decided on the Size1 option or on the bytes
  received so far, never after reassembly.
* Block1 uploads (``UploadSpool``): method, path and permission are checked on
  block 0; a block larger than the session's block size (its tuning, from the
  link rate or MTU) is 4.13 with Block1 naming the size to use; at most
  ``blockwise_uploads_per_session`` unfinished uploads (a new one drops the
  oldest), each dropped after ``blockwise_idle`` seconds without a block
  (0: derived from the link, ``upload_idle``); reassembly appends each block
  once (linear in the body).
* Homeserver connections: readings go through their own pool
  (``readings_connections``), everything else through ``other_connections``
  (``lowbw.proxy.homeserver``).
* Closing a session (revocation, new handshake, stop) ends all of it at once:
  the transport cancels its requests in the works (parked syncs, homeserver
  calls, observations) and ``session_closed`` drops its uploads and counters.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiocoap import resource
from aiocoap.blockwise import Block2Cache, ContinueException, _extract_block_key
from aiocoap.error import RenderableError
from aiocoap.message import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.optiontypes import BlockOption, OpaqueOption
from aiocoap.util.asyncio.timeoutdict import TimeoutDict

from lowbw.proxy import sensor
from lowbw.proxy.clients import ClientService, is_client, long_poll_ms
from lowbw.proxy.homeserver import (
    CLIENT_V3,
    POOL_READINGS,
    Homeserver,
    HomeserverUnavailable,
    encode_path,
    query_params,
)
from lowbw.proxy.limits import Limits
from lowbw.proxy.registry import DeviceRecord, Registry
from lowbw.proxy.sessions import SessionTable
from lowbw.proxy.transport import FRAME_OVERHEAD, SessionAddress
from lowbw.proxy.writebehind import WriteBehind
from lowbw.wire import cbor, coap, keys, reading, routes, status
from lowbw.wire.errors import DecodeError, EncodeError, LowbwError

if TYPE_CHECKING:
    from lowbw.proxy.metrics import ReadingCounts

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
# Max-Age (seconds) of the 5.03 for a request beyond ``requests_in_flight``:
# one of the session's requests in the works will likely be done by then.
BUSY_RETRY_AFTER = 2
# A derived upload idle time counts this many block exchanges' airtime ...
UPLOAD_IDLE_BLOCKS = 4
# ... plus the device's retransmissions of one block (MAX_TRANSMIT_SPAN), and never less than this.
UPLOAD_IDLE_MIN = 10.0
# Block2 answers kept per session for the device to fetch the next block
# (each one a whole answer): the oldest goes first.
DOWNLOADS_PER_SESSION = 2
# The fast path (``ProxySite.takes_fast``): the options a plain reading may carry.
OPT_URI_PATH = OptionNumber.URI_PATH
OPT_CONTENT_FORMAT = OptionNumber.CONTENT_FORMAT
_READING_PATH = (routes.ROUTE_READING,)


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
    # Readings counted for metrics (``lowbw.proxy.metrics``); None when metrics are off.
    readings: ReadingCounts | None = None
    # Which transaction IDs became events (``lowbw.proxy.writebehind``); by
    # default written at once, the running proxy writes them behind.
    sent: WriteBehind = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.sent is None:
            self.sent = WriteBehind(self.registry, delay=None)


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


class Refusal(RenderableError):
    """An answer decided before rendering (block-wise checks): aiocoap sends it."""

    def __init__(self, message: Message) -> None:
        super().__init__()
        self.message = message

    def to_message(self) -> Message:
        return self.message


def upload_idle(limits: Limits, addr: SessionAddress) -> float:
    """Seconds an unfinished Block1 upload of ``addr`` is kept without a new block.

    ``limits.blockwise_idle`` when set; else a few block exchanges' airtime at
    the session's link rate plus the time the device may spend retransmitting
    one block (its tuning's ``MAX_TRANSMIT_SPAN``).
    """
    if limits.blockwise_idle > 0:
        return limits.blockwise_idle
    tuning = addr.tuning
    frame = addr.maximum_payload_size + FRAME_OVERHEAD + 24
    airtime = frame * 8 / float(getattr(tuning, "link_bps", 0) or 1e6)
    return max(UPLOAD_IDLE_MIN, UPLOAD_IDLE_BLOCKS * 2 * airtime + tuning.MAX_TRANSMIT_SPAN)


class _Upload:
    """One Block1 upload being reassembled: the first block's request and the bytes so far."""

    __slots__ = ("first", "body", "timer")

    def __init__(self, first: Message) -> None:
        self.first = first
        self.body = bytearray(first.payload)
        # The assembled request gets the whole body at the end; block 0's
        # copy is not kept twice.
        first.payload = b""
        self.timer: asyncio.TimerHandle | None = None


class UploadSpool:
    """Block1 reassembly with a session's limits (aiocoap's ``Block1Spool`` replaced).

    aiocoap's spool keeps any number of uploads per remote for a fixed time,
    checks nothing until the body is whole, and copies the whole buffer for
    every block (quadratic). This one checks the first block
    (``precheck``: method, path, permission), the block size and the body
    size on every block, keeps at most ``blockwise_uploads_per_session``
    unfinished uploads per session with an idle timer each, and appends
    every block once.
    """

    def __init__(
        self,
        limits: Limits,
        body_max: Callable[[SessionAddress], int | None],
        precheck: Callable[[Message, SessionAddress], Message | None],
        refusal: Callable[[SessionAddress, int, str, str], Message],
    ) -> None:
        self.limits = limits
        self._body_max = body_max
        self._precheck = precheck
        self._refusal = refusal
        self._uploads: dict[SessionAddress, OrderedDict[Any, _Upload]] = {}

    def pending(self, addr: SessionAddress) -> int:
        return len(self._uploads.get(addr, ()))

    def total(self) -> int:
        return sum(len(u) for u in self._uploads.values())

    def forget(self, addr: SessionAddress) -> None:
        uploads = self._uploads.pop(addr, None)
        for up in (uploads or {}).values():
            if up.timer is not None:
                up.timer.cancel()

    def _drop(self, addr: SessionAddress, key: Any) -> None:
        uploads = self._uploads.get(addr)
        if uploads is None:
            return
        up = uploads.pop(key, None)
        if up is not None and up.timer is not None:
            up.timer.cancel()
        if not uploads:
            del self._uploads[addr]

    def _too_large(self, addr: SessionAddress, limit: int) -> Refusal:
        msg = self._refusal(
            addr, coap.REQUEST_ENTITY_TOO_LARGE, "M_TOO_LARGE", "body larger than %d bytes" % limit
        )
        msg.opt.size1 = limit
        return Refusal(msg)

    def feed_and_take(self, req: Message) -> Message:
        """The whole request once its last block is in; raises ``ContinueException``
        (2.31) before that, ``Refusal`` for anything refused."""
        addr = req.remote
        if not isinstance(addr, SessionAddress):
            return req
        limit = self._body_max(addr)
        if limit is None or addr.closed:
            raise Refusal(Message(code=Code.FORBIDDEN))
        block1 = req.opt.block1
        size1 = req.opt.size1
        if block1 is None:
            if len(req.payload) > limit or (size1 is not None and size1 > limit):
                raise self._too_large(addr, limit)
            return req
        key = _extract_block_key(req)
        if block1.size_exponent > addr.maximum_block_size_exp:
            self._drop(addr, key)
            msg = self._refusal(
                addr,
                coap.REQUEST_ENTITY_TOO_LARGE,
                "M_TOO_LARGE",
                "blocks of at most %d bytes" % addr.maximum_payload_size,
            )
            # RFC 7959 2.9.3: Block1 in a 4.13 names the block size to use.
            msg.opt.block1 = BlockOption.BlockwiseTuple(0, False, addr.maximum_block_size_exp)
            raise Refusal(msg)
        if len(req.payload) > block1.size or (block1.more and len(req.payload) != block1.size):
            self._drop(addr, key)
            raise Refusal(
                self._refusal(addr, coap.BAD_REQUEST, "M_BAD_JSON", "payload size does not match Block1")
            )
        if (size1 is not None and size1 > limit) or block1.start + len(req.payload) > limit:
            self._drop(addr, key)
            raise self._too_large(addr, limit)
        uploads = self._uploads.get(addr)
        if block1.block_number == 0:
            refused = self._precheck(req, addr)
            if refused is not None:
                self._drop(addr, key)
                raise Refusal(refused)
            if uploads is None:
                uploads = self._uploads[addr] = OrderedDict()
            old = uploads.pop(key, None)
            if old is not None and old.timer is not None:
                old.timer.cancel()
            while len(uploads) >= max(1, self.limits.blockwise_uploads_per_session):
                _, oldest = uploads.popitem(last=False)
                if oldest.timer is not None:
                    oldest.timer.cancel()
                log.debug("%s: unfinished upload dropped for a newer one", addr.device)
            up = uploads[key] = _Upload(req)
        else:
            found = uploads.get(key) if uploads is not None else None
            # A block may come again (a retry with a new Message ID): it
            # replaces what followed its start. A gap is an error.
            if found is None or block1.start > len(found.body):
                self._drop(addr, key)
                raise Refusal(
                    self._refusal(addr, coap.REQUEST_ENTITY_INCOMPLETE, "M_UNKNOWN", "upload not in progress")
                )
            up = found
            del up.body[block1.start :]
            up.body += req.payload
            uploads.move_to_end(key)  # type: ignore[union-attr]
        if up.timer is not None:
            up.timer.cancel()
            up.timer = None
        if block1.more:
            up.timer = asyncio.get_running_loop().call_later(
                upload_idle(self.limits, addr), self._drop, addr, key
            )
            raise ContinueException(block1)
        self._drop(addr, key)
        whole = up.first
        whole.payload = bytes(up.body)
        whole.opt.block1 = block1
        whole.token = req.token
        whole.mid = req.mid
        if req.opt.block2 is not None:
            whole.opt.block2 = req.opt.block2
        return whole


class _SessionAnswers(TimeoutDict):  # type: ignore[misc]
    """aiocoap's Block2 answer cache, with at most DOWNLOADS_PER_SESSION per session
    (keys start with the remote's ``blockwise_key``)."""

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout)
        self._by_session: dict[Any, list[Any]] = {}

    def __setitem__(self, key: Any, value: Any) -> None:
        items = self._items
        mine = [k for k in self._by_session.get(key[0], ()) if k in items and k != key]
        while len(mine) >= DOWNLOADS_PER_SESSION:
            items.pop(mine.pop(0), None)
        mine.append(key)
        self._by_session[key[0]] = mine
        super().__setitem__(key, value)

    def forget(self, session_key: Any) -> None:
        for k in self._by_session.pop(session_key, ()):
            self._items.pop(k, None)


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
        limits = services.limits
        # Readings get their own homeserver connections (set before first use).
        services.homeserver.set_pool_limits(limits.readings_connections, limits.other_connections)
        # device -> its session's Observe registrations, oldest first: token -> observation
        self._watchers: dict[str, OrderedDict[bytes, Any]] = {}
        # session -> requests being rendered
        self._in_flight: dict[SessionAddress, int] = {}
        self.clients = ClientService(services)
        self._block1 = UploadSpool(limits, self._body_max, self._precheck, self._refusal)
        # aiocoap keeps block-wise state for MAX_TRANSMIT_WAIT (93 s by default):
        # far too short when one block takes 15 s of airtime each way.
        self._block2 = Block2Cache()
        self._block2._completes = _SessionAnswers(blockwise_timeout)

    # -- Observe ---------------------------------------------------------------------

    async def add_observation(self, request: Message, serverobservation: Any) -> None:
        addr = request.remote
        if (
            request.opt.uri_path != (routes.ROUTE_COMMANDS,)
            or request.code != Code.GET
            or not request.token
            or not isinstance(addr, SessionAddress)
            or addr.closed
        ):
            # Not accepted: aiocoap still calls the cancellation callback at the end.
            serverobservation._cancellation_callback = _nothing
            return
        token = bytes(request.token)
        watchers = self._watchers.get(addr.device)
        if watchers is None:
            watchers = self._watchers[addr.device] = OrderedDict()
        # A registration with the same token replaces its own (aiocoap ends the old one).
        watchers.pop(token, None)
        while len(watchers) >= max(1, self.s.limits.observations_per_session):
            old_token, old = watchers.popitem(last=False)
            self._end_observation(addr, old_token, old)
        watchers[token] = serverobservation

        def cancel() -> None:
            if watchers.get(token) is serverobservation:
                del watchers[token]
            if not watchers and self._watchers.get(addr.device) is watchers:
                del self._watchers[addr.device]

        serverobservation.accept(cancel)

    def _end_observation(self, addr: SessionAddress, token: bytes, obs: Any) -> None:
        """End one registration silently (a newer one took its place, or the session closed)."""
        transport = self.s.table.transport
        if transport is not None and transport.stop_request(addr, token):
            return
        # No transport to stop it through: its next trigger ends it.
        obs.trigger(Message(code=Code.SERVICE_UNAVAILABLE), is_last=True)

    def observations(self, device: str) -> int:
        return len(self._watchers.get(device, ()))

    # -- what metrics read at scrape time (lowbw.proxy.metrics) -------------------------

    def observations_total(self) -> int:
        return sum(len(w) for w in self._watchers.values())

    def in_flight_total(self) -> int:
        return sum(self._in_flight.values())

    def uploads_total(self) -> int:
        return self._block1.total()

    def parked_total(self) -> int:
        """Client-proxy syncs parked at the proxy (``lowbw.proxy.clients``)."""
        return int(getattr(self.clients, "_parked", 0))

    def notify_commands(self, device: str) -> None:
        """A command was queued for ``device``: notify its observations (and no one else's)."""
        for obs in list(self._watchers.get(device, {}).values()):
            obs.trigger()

    def session_closed(self, addr: SessionAddress) -> None:
        """Everything of a closed session ends now.

        The transport has already cancelled the session's requests in the
        works (``LowbwMessageManager.forget_remote``): parked syncs, homeserver
        calls, observations. Here: parked syncs and token bindings of a client
        session, observation bookkeeping, unfinished uploads and cached answers.
        """
        self.clients.session_closed(addr)
        watchers = self._watchers.get(addr.device)
        if watchers is not None:
            # One session per device: these are the closed session's (a new
            # session registers only after it replaced this one).
            del self._watchers[addr.device]
            for token, obs in list(watchers.items()):
                self._end_observation(addr, token, obs)
        self._in_flight.pop(addr, None)
        self._block1.forget(addr)
        self._block2._completes.forget(addr.blockwise_key)

    # -- block-wise uploads ------------------------------------------------------------

    async def needs_blockwise_assembly(self, request: Message) -> bool:
        # Readings are small: skip aiocoap's block-wise bookkeeping on the hot
        # path unless the request itself is block-wise.
        if request.opt.uri_path == (routes.ROUTE_READING,):
            return request.opt.block1 is not None or request.opt.block2 is not None
        return True

    def _body_max(self, addr: SessionAddress) -> int | None:
        """The largest request body ``addr`` may send (None: not a session of anyone now)."""
        rec = self.s.table.device(addr.device)
        if rec is None:
            return None
        limits = self.s.limits
        return limits.client_body_max if is_client(rec) else limits.sensor_body_max

    def _refusal(self, addr: SessionAddress, code: int, errcode: str, text: str) -> Message:
        rec = self.s.table.device(addr.device)
        if rec is not None and is_client(rec):
            return self.clients.refusal(addr, code, errcode, text)
        return error_message(code, errcode, text, addr.table_id)

    def _precheck(self, request: Message, addr: SessionAddress) -> Message | None:
        """The first block of an upload: would the whole request be refused for
        its method, path or permission? Then say so now."""
        rec = self.s.table.device(addr.device)
        if rec is None or addr.closed:
            return Message(code=Code.FORBIDDEN)
        if is_client(rec):
            return self.clients.precheck(request, addr)
        path = list(request.opt.uri_path)
        if path == [routes.ROUTE_READING] or path == [routes.ROUTE_COMMANDS]:
            return None if request.code == Code.POST else Message(code=Code.METHOD_NOT_ALLOWED)
        if path == [routes.ROUTE_TIME]:
            return Message(code=Code.METHOD_NOT_ALLOWED)
        routed = self._route(request, path, addr, rec)
        return routed if isinstance(routed, Message) else None

    # -- requests ------------------------------------------------------------------------

    def _busy(self, addr: SessionAddress, rec: DeviceRecord) -> Message:
        text = "lowbw: %d requests of this session in the works" % self.s.limits.requests_in_flight
        code = coap.SERVICE_UNAVAILABLE
        if is_client(rec):
            msg = self.clients.refusal(addr, code, "M_LIMIT_EXCEEDED", text)
            msg.opt.max_age = BUSY_RETRY_AFTER
            return msg
        return error_message(
            code, "M_LIMIT_EXCEEDED", text, addr.table_id, status.retry_after_to_options(BUSY_RETRY_AFTER)
        )

    def takes_fast(self, addr: SessionAddress, request: Message) -> bool:
        """May this confirmable POST skip aiocoap (``lowbw.proxy.transport``, fast path)?

        A single-block reading (Uri-Path ``v``, nothing but Content-Format
        besides: no Block1/Block2, no Observe, no option aiocoap would have to
        judge) from a plain sensor key: not a client-proxy (its answers may be
        separate), not an encrypted device (encryption may take longer than a
        piggyback waits), and only on a link where aiocoap too would answer
        piggybacked (``EMPTY_ACK_DELAY`` above the reading timeout).
        """
        for number in request.opt._options:
            if number != OPT_URI_PATH and number != OPT_CONTENT_FORMAT:
                return False
        if request.opt.uri_path != _READING_PATH:
            return False
        rec = self.s.table.devices.get(addr.device)
        return (
            rec is not None
            and not rec.encrypted
            and not is_client(rec)
            and addr.tuning.EMPTY_ACK_DELAY > self.s.reading_timeout
        )

    def in_flight(self, addr: SessionAddress) -> int:
        return self._in_flight.get(addr, 0)

    async def render(self, request: Message) -> Message:
        addr = request.remote
        if not isinstance(addr, SessionAddress):
            return Message(code=Code.FORBIDDEN)
        rec = self.s.table.device(addr.device)
        if rec is None or addr.closed:
            return Message(code=Code.FORBIDDEN)
        busy = self._in_flight.get(addr, 0)
        if busy >= max(1, self.s.limits.requests_in_flight):
            log.debug("%s: request refused, %d in the works", rec.name, busy)
            if self.s.readings is not None and request.opt.uri_path == (routes.ROUTE_READING,):
                self.s.readings.rejected(rec.name, 1, "busy")
            return self._busy(addr, rec)
        self._in_flight[addr] = busy + 1
        try:
            return await self._dispatch(request, addr, rec)
        finally:
            left = self._in_flight.get(addr, 0) - 1
            if left > 0:
                self._in_flight[addr] = left
            else:
                self._in_flight.pop(addr, None)

    async def _dispatch(self, request: Message, addr: SessionAddress, rec: DeviceRecord) -> Message:
        limit = self._body_max(addr)
        if limit is not None and len(request.payload) > limit:
            return self._block1._too_large(addr, limit).message
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
        counts = self.s.readings
        if counts is None:
            return await self._post_reading(request, addr, rec, None)
        note: list[Any] = [1, "malformed", None]
        answer = await self._post_reading(request, addr, rec, note)
        n, reason, last = note
        if answer.code == Code.CHANGED:
            counts.acknowledged(rec.name, n, last, rec.encrypted)
        else:
            counts.rejected(rec.name, n, reason)
        return answer

    async def _post_reading(
        self, request: Message, addr: SessionAddress, rec: DeviceRecord, note: list[Any] | None
    ) -> Message:
        """``post_reading``; ``note`` (metrics) gets [readings, why refused, last content]."""
        received = now_ms() - airtime_ms(getattr(request, "lowbw_rx_bytes", 0), self.s.link_bps)
        table_id = addr.table_id
        try:
            readings = reading.decode_readings(request.payload)
        except DecodeError as exc:
            return error_message(coap.BAD_REQUEST, "M_BAD_JSON", exc.message or "bad reading", table_id)
        if note is not None:
            note[0] = len(readings)
            note[1] = "schema"
            if self.s.readings is not None:
                self.s.readings.received += len(readings)
        sent = self.s.sent
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
        if note is not None:
            note[1] = "no_room"
            note[2] = contents[-1][1] if contents else None
        if not rec.rooms:
            return error_message(coap.FORBIDDEN, "M_FORBIDDEN", "device has no room", table_id)
        room = rec.rooms[0]
        token, as_user = self._auth(rec)
        if token is None:
            if note is not None:
                note[1] = "no_credential"
            return error_message(coap.INTERNAL_SERVER_ERROR, "M_UNKNOWN", "no credential", table_id)
        counts = self.s.readings
        for txn, content, measured in contents:
            if sent.lookup(rec.name, txn) is not None:
                if counts is not None:
                    counts.duplicates += 1
                continue
            event_type, body = sensor.EVENT_TYPE, content
            if rec.encrypted:
                # Fail closed (docs/e2ee.md): Megolm ciphertext or 5.03, never plaintext.
                try:
                    body = await self._encrypt(rec, room, event_type, content)
                except HomeserverUnavailable as exc:
                    if note is not None:
                        note[1] = "encryption_unavailable"
                    return unavailable_message(exc, self.s.retry_after, table_id)
                event_type = "m.room.encrypted"
            path = encode_path(CLIENT_V3 + "/rooms/{}/send/{}/{}", room, event_type, txn)
            try:
                result = await self.s.homeserver.request(
                    "PUT",
                    path,
                    json_body=body,
                    access_token=token,
                    as_user=as_user,
                    ts=measured if self.s.mode == "appservice" else None,
                    timeout=self.s.reading_timeout,
                    pool=POOL_READINGS,
                )
            except HomeserverUnavailable as exc:
                if note is not None:
                    note[1] = "homeserver_timeout" if exc.timeout else "homeserver_unavailable"
                return unavailable_message(exc, self.s.retry_after, table_id)
            event_id = result.json.get("event_id") if result.ok and isinstance(result.json, dict) else None
            if not isinstance(event_id, str):
                if note is not None:
                    note[1] = "homeserver_error"
                if result.ok:
                    return error_message(coap.BAD_GATEWAY, "M_UNKNOWN", "no event_id", table_id)
                return http_answer(result, "PUT", table_id)
            sent.record(rec.name, txn, event_id)
            if counts is not None:
                counts.posted(event_type)
        return Message(code=Code.CHANGED)

    async def _encrypt(
        self, rec: DeviceRecord, room: str, event_type: str, content: dict[str, Any]
    ) -> dict[str, Any]:
        """``content`` as ``m.room.encrypted`` content for ``rec``'s Matrix device (lowbw.proxy.e2ee).

        HomeserverUnavailable (answered 5.03, the device sends again later) when
        it cannot be encrypted yet."""
        e2ee = self.s.table.e2ee
        if e2ee is None:
            raise HomeserverUnavailable("end-to-end encryption is not running")
        try:
            return await e2ee.encrypt(rec, room, event_type, content)
        except LowbwError as exc:
            raise HomeserverUnavailable(exc.message or "cannot encrypt yet") from None

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
            self.s.table.commands_delivered += 1
            log.info("%s: command %d delivered", rec.name, cid)
        # An ack for a command already acked (a retry after a restart) is fine:
        # the state the device asks for holds.
        self.s.table.refresh_commands(rec.name, notify=False)
        return Message(code=Code.CHANGED)

    # -- the client-server API ----------------------------------------------------------

    def _route(
        self, request: Message, segments: list[str], addr: SessionAddress, rec: DeviceRecord
    ) -> tuple[str, str] | Message:
        """``(method, path)`` of a device's API request, or the refusal."""
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
        return method, path

    async def client_api(
        self, request: Message, segments: list[str], addr: SessionAddress, rec: DeviceRecord
    ) -> Message:
        table_id = addr.table_id
        routed = self._route(request, segments, addr, rec)
        if isinstance(routed, Message):
            return routed
        method, path = routed
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
        send = _room_send(method, path) if rec.encrypted else None
        if send is not None and isinstance(body, dict):
            # An event into the encrypted room goes out as Megolm ciphertext, or not at all.
            room, event_type, txn = send
            try:
                body = await self._encrypt(rec, room, event_type, body)
            except HomeserverUnavailable as exc:
                return unavailable_message(exc, self.s.retry_after, table_id)
            path = encode_path(CLIENT_V3 + "/rooms/{}/send/{}/{}", room, "m.room.encrypted", txn)
        timeout = None
        if path.endswith("/sync"):
            # A long poll holds a homeserver connection: never longer than long_poll_max.
            wait_ms = long_poll_ms(query.get("timeout", "0"), self.s.limits.long_poll_max)
            if wait_ms is None:
                return error_message(coap.BAD_REQUEST, "M_INVALID_PARAM", "timeout", table_id)
            if "timeout" in query:
                query["timeout"] = str(wait_ms)
            timeout = self.s.homeserver.timeout + wait_ms / 1000 + 10.0
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


def _room_send(method: str, path: str) -> tuple[str, str, str] | None:
    """(room, event type, txn id) if ``path`` is a room event send (``PUT .../rooms/R/send/T/X``)."""
    parts = path.split("/")
    if method != "PUT" or len(parts) != 9 or parts[1:3] != ["_matrix", "client"]:
        return None
    if parts[4] != "rooms" or parts[6] != "send":
        return None
    room, event_type, txn = (urllib.parse.unquote(p) for p in (parts[5], parts[7], parts[8]))
    return room, event_type, txn


def _nothing() -> None:
    return None


def _loggable(path: str) -> str:
    """A path for a log line: first three segments only (no room ids, no txn ids)."""
    parts = path.split("/")
    return "/".join(parts[:5]) + ("/..." if len(parts) > 5 else "")
