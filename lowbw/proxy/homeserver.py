"""The proxy's HTTP client for the Matrix client-server API (aiohttp).

Contract, so the proxy can map every outcome to a CoAP answer:

* ``Homeserver.request()`` returns an ``HttpResult`` for every HTTP status the
  homeserver (or a reverse proxy in front of it) sends, 4xx and 5xx included.
  The body is parsed as JSON when it is JSON, ``Retry-After`` is parsed to whole
  seconds.
* It raises ``HomeserverUnavailable`` only when no HTTP answer arrived: connection
  refused or reset, DNS or TLS failure (``coap_code`` 5.03), or a timeout (5.04).
  An answer too large to accept is also treated as no answer (5.02).
* Access tokens travel only in the ``Authorization`` header: never in a URL, a
  log line or an exception message.  Redirects are not followed, so a token is
  never replayed to another origin.
* TLS certificates are verified unless the caller passes ``verify_tls=False``
  (meant for loopback tests).
* Two connection pools (``pool=``): ``"readings"`` for sensor readings and
  what must never wait behind a long poll, ``"other"`` for everything else.
  Each is its own aiohttp connector with its own connection limit
  (``set_pool_limits``; ``[limits] readings_connections`` and
  ``other_connections`` of proxy.toml), so parked and long-polling syncs can
  fill at most the ``other`` pool.

Application-service use: pass the appservice's ``as_token`` and ``as_user`` (sent
as the ``user_id`` query parameter) to act as one of its namespaced users, and
``ts`` (milliseconds since the epoch) to stamp an event with the time of
measurement; Synapse honours ``ts`` only for appservice tokens.

Path parameters are percent-encoded one segment at a time (``encode_path``):
room IDs contain ``!`` and ``:``, and a ``/`` in a transaction ID must not split
the path.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from lowbw.proxy.http1 import AnswerTooLarge, ConnectFailed, Http1Pool
from lowbw.wire.errors import EncodeError, LowbwError

log = logging.getLogger(__name__)

CLIENT_V3 = "/_matrix/client/v3"

COAP_BAD_GATEWAY = 162  # 5.02
COAP_SERVICE_UNAVAILABLE = 163  # 5.03
COAP_GATEWAY_TIMEOUT = 164  # 5.04

DEFAULT_TIMEOUT = 30.0
# Matrix responses the proxy relays are small; a full /sync of a busy account is
# the largest legitimate one.  Anything beyond this is refused, not buffered.
DEFAULT_MAX_BODY = 32 * 1024 * 1024
# Added to a long-poll's server-side wait so the client does not give up first.
SYNC_TIMEOUT_MARGIN = 10.0
# Connection pools: readings (never behind a long poll) and everything else.
POOL_READINGS = "readings"
POOL_OTHER = "other"
DEFAULT_READINGS_CONNECTIONS = 32
DEFAULT_OTHER_CONNECTIONS = 64

QueryValue = str | int | bool | Mapping[str, Any] | Sequence[str] | None

# RFC 3986 pchar plus "/": what an already-encoded path may contain.  Anything
# else (space, CR, LF, non-ASCII) would be sent raw, so it is refused.
_PATH_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@%/")


class HomeserverUnavailable(LowbwError):
    """No HTTP answer from the homeserver: unreachable (5.03) or too slow (5.04)."""

    coap_code = COAP_SERVICE_UNAVAILABLE

    def __init__(self, message: str = "", coap_code: int | None = None, *, timeout: bool = False) -> None:
        if coap_code is None and timeout:
            coap_code = COAP_GATEWAY_TIMEOUT
        super().__init__(message, coap_code)
        self.timeout = timeout


class HomeserverRequestFailed(LowbwError):
    """An operation that needs success got an HTTP error (``expect_ok`` and friends)."""

    coap_code = COAP_BAD_GATEWAY

    def __init__(self, message: str, result: HttpResult) -> None:
        super().__init__(message)
        self.result = result
        self.status = result.status
        self.errcode = result.errcode


def parse_retry_after(value: str | None, now: float | None = None) -> int | None:
    """Whole seconds from a Retry-After value: delta-seconds or an HTTP-date (RFC 9110 §10.2.3).

    Anything unparsable is None, not an error: the header is advice.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return int(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # RFC 9110 dates are GMT; a date without a zone is not one of ours.
        return None
    delta = when.timestamp() - (time.time() if now is None else now)
    return max(0, math.ceil(delta))


def query_params(items: Sequence[str]) -> dict[str, QueryValue]:
    """CoAP Uri-Query items ``k=v`` as a query mapping (a repeated key becomes a list)."""
    query: dict[str, QueryValue] = {}
    for item in items:
        key, _, value = item.partition("=")
        prev = query.get(key)
        if isinstance(prev, list):
            prev.append(value)
        elif isinstance(prev, str):
            query[key] = [prev, value]
        else:
            query[key] = value
    return query


@dataclass(frozen=True)
class HttpResult:
    """One HTTP answer: status, raw body, parsed JSON (or None), headers, retry hint."""

    status: int
    json: Any
    headers: CIMultiDictProxy[str]
    retry_after: int | None = None
    body: bytes = b""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def errcode(self) -> str | None:
        value = self.json.get("errcode") if isinstance(self.json, dict) else None
        return value if isinstance(value, str) else None

    @property
    def error(self) -> str | None:
        value = self.json.get("error") if isinstance(self.json, dict) else None
        return value if isinstance(value, str) else None

    def expect_ok(self) -> dict[str, Any]:
        """The JSON object of a 2xx answer; HomeserverRequestFailed otherwise."""
        if not self.ok:
            raise HomeserverRequestFailed(
                "homeserver answered %d %s: %s" % (self.status, self.errcode or "", self.error or ""), self
            )
        if not isinstance(self.json, dict):
            raise HomeserverRequestFailed("homeserver answered %d without a JSON object" % self.status, self)
        return self.json


def _retry_after(headers: CIMultiDictProxy[str], parsed: Any, status: int) -> int | None:
    seconds = parse_retry_after(headers.get("Retry-After"))
    if seconds is None and status == 429 and isinstance(parsed, dict):
        # Older homeservers give the wait only in the body.
        ms = parsed.get("retry_after_ms")
        if isinstance(ms, int) and not isinstance(ms, bool) and ms >= 0:
            seconds = math.ceil(ms / 1000)
    return seconds


def encode_path(template: str, *params: str) -> str:
    """Fill each ``{}`` in ``template`` with one percent-encoded path segment.

    >>> encode_path("/_matrix/client/v3/rooms/{}/send/{}/{}", "!a:b.c", "m.room.message", "t/1")
    '/_matrix/client/v3/rooms/%21a%3Ab.c/send/m.room.message/t%2F1'
    """
    if template.count("{}") != len(params):
        raise EncodeError("path template wants %d parameters, got %d" % (template.count("{}"), len(params)))
    return template.format(*(urllib.parse.quote(p, safe="") for p in params))


def _query_string(query: Mapping[str, QueryValue]) -> str:
    pairs: list[tuple[str, str]] = []
    for key, value in query.items():
        if value is None:
            continue
        if isinstance(value, bool):
            pairs.append((key, "true" if value else "false"))
        elif isinstance(value, int | str):
            pairs.append((key, str(value)))
        elif isinstance(value, Mapping):
            # Inline filters travel as JSON in the query string.
            pairs.append((key, json.dumps(value, separators=(",", ":"))))
        else:
            pairs.extend((key, str(item)) for item in value)
    return urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote)


def _describe(exc: BaseException) -> str:
    # Built from fields we know, not str(exc): aiohttp errors can carry request_info,
    # and request headers include Authorization.
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "TLS certificate verification failed for %s:%s" % (exc.host, exc.port)
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or type(exc.os_error).__name__
        return "cannot connect to %s:%s (%s)" % (exc.host, exc.port, reason)
    if isinstance(exc, ConnectFailed):  # the readings pool (lowbw.proxy.http1)
        if isinstance(exc.os_error, ssl.SSLCertVerificationError):
            return "TLS certificate verification failed for %s:%s" % (exc.host, exc.port)
        reason = exc.os_error.strerror or type(exc.os_error).__name__
        return "cannot connect to %s:%s (%s)" % (exc.host, exc.port, reason)
    if isinstance(exc, OSError) and exc.strerror:
        return "%s (%s)" % (type(exc).__name__, exc.strerror)
    return type(exc).__name__


class Homeserver:
    """Async client for one homeserver.

    ``session``: an aiohttp session to share (the caller closes it; both pools
    then use it); by default the client creates one per pool on first use and
    ``close()`` closes them.
    """

    def __init__(
        self,
        base_url: str,
        session: aiohttp.ClientSession | None = None,
        *,
        verify_tls: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_body: int = DEFAULT_MAX_BODY,
        readings_connections: int = DEFAULT_READINGS_CONNECTIONS,
        other_connections: int = DEFAULT_OTHER_CONNECTIONS,
        lean_readings: bool = True,
    ) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise EncodeError("homeserver URL must be http(s)://host[:port][/prefix]")
        if parts.query or parts.fragment:
            raise EncodeError("homeserver URL must not have a query or fragment")
        self.base_url = base_url.rstrip("/")
        self._parts = parts
        self._prefix = parts.path.rstrip("/")
        self._shared = session
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        # The readings pool on lowbw.proxy.http1 (created on first use); None in
        # _http1 means aiohttp for every pool (``lean_readings=False``).
        self._http1: Http1Pool | None = None
        self.lean_readings = lean_readings
        # Connections per pool (0: no limit, aiohttp's meaning).
        self.pool_limits = {POOL_READINGS: readings_connections, POOL_OTHER: other_connections}
        if ssl_context is not None:
            self._ssl: ssl.SSLContext | bool = ssl_context
        else:
            self._ssl = bool(verify_tls)
        if not verify_tls and parts.scheme == "https":
            log.warning("TLS certificate verification is OFF for %s", parts.netloc)
        self.timeout = timeout
        self.max_body = max_body
        # Called with (pool, status, seconds) after every request (metrics): status is
        # the HTTP status as text, or "timeout", "unreachable", "too_large" for no answer.
        self.on_result: Callable[[str, str, float], None] | None = None

    async def __aenter__(self) -> Homeserver:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        http1, self._http1 = self._http1, None
        if http1 is not None:
            await http1.close()
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            await session.close()

    def set_pool_limits(self, readings: int, other: int) -> None:
        """Connections each pool may hold; takes effect for a pool not used yet."""
        self.pool_limits = {POOL_READINGS: readings, POOL_OTHER: other}

    def pool_in_use(self, pool: str) -> int:
        """Connections of ``pool`` busy with a request now (for tests and metrics)."""
        if pool == POOL_READINGS and self._http1 is not None:
            return self._http1.in_use
        session = self._sessions.get(pool)
        if session is None:
            return 0
        connector = session.connector
        if connector is None:
            return 0
        return len(getattr(connector, "_acquired", ()))

    def _http1_pool(self, pool: str) -> Http1Pool | None:
        """The readings pool on ``lowbw.proxy.http1`` (module docstring there: why);
        None for the other pool, a shared aiohttp session, or ``lean_readings=False``."""
        if pool != POOL_READINGS or self._shared is not None or not self.lean_readings:
            return None
        if self._http1 is None:
            parts = self._parts
            context: ssl.SSLContext | None = None
            if parts.scheme == "https":
                if isinstance(self._ssl, ssl.SSLContext):
                    context = self._ssl
                else:
                    context = ssl.create_default_context()
                    if not self._ssl:
                        context.check_hostname = False
                        context.verify_mode = ssl.CERT_NONE
            self._http1 = Http1Pool(
                parts.hostname or "localhost",
                parts.port or (443 if parts.scheme == "https" else 80),
                ssl_context=context,
                limit=self.pool_limits[POOL_READINGS],
                max_body=self.max_body,
                host_header=parts.netloc,
            )
        return self._http1

    def _get_session(self, pool: str = POOL_OTHER) -> aiohttp.ClientSession:
        if self._shared is not None:
            return self._shared
        if pool not in self.pool_limits:
            raise EncodeError("unknown connection pool %r" % pool)
        session = self._sessions.get(pool)
        if session is None:
            limit = self.pool_limits[pool]
            session = self._sessions[pool] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=limit, limit_per_host=0),
                trust_env=False,
                headers={"User-Agent": "lowbw-proxy"},
            )
        return session

    # -- the one way out ---------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        query: Mapping[str, QueryValue] | None = None,
        json_body: Any = None,
        access_token: str | None = None,
        as_user: str | None = None,
        ts: int | None = None,
        *,
        timeout: float | None = None,
        pool: str = POOL_OTHER,
    ) -> HttpResult:
        """Send one request; return whatever HTTP status comes back.

        ``path`` is already percent-encoded (see ``encode_path``) and carries no
        query; ``query`` values may be str, int, bool, a list (repeated key) or a
        mapping (sent as compact JSON).  ``json_body=None`` sends no body.
        """
        if not path.startswith("/") or not _PATH_CHARS.issuperset(path):
            raise EncodeError("path must start with /, be percent-encoded and carry no query or fragment")
        if not (method.isascii() and method.isalpha() and method.isupper()):
            raise EncodeError("bad HTTP method")
        params: dict[str, QueryValue] = dict(query or {})
        if as_user is not None:
            params["user_id"] = as_user
        if ts is not None:
            params["ts"] = int(ts)
        qs = _query_string(params)

        headers: dict[str, str] = {}
        data = None
        if access_token is not None:
            headers["Authorization"] = "Bearer " + access_token
        if json_body is not None:
            try:
                data = json.dumps(json_body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise EncodeError("request body is not JSON: %s" % exc) from None
            headers["Content-Type"] = "application/json"

        limit = self.timeout if timeout is None else timeout
        started = time.monotonic()
        report = self.on_result
        # What the request came to (metrics); a request cancelled on our side
        # (a parked sync whose session ended) keeps "cancelled".
        outcome = "cancelled"
        try:
            http1 = self._http1_pool(pool)
            if http1 is not None:
                status, resp_headers, body = await http1.request(
                    method,
                    self._prefix + path + ("?" + qs if qs else ""),
                    list(headers.items()),
                    data.encode("utf-8") if data is not None else None,
                    limit,
                )
                outcome = str(status)
            else:
                async with self._get_session(pool).request(
                    method,
                    URL(self.base_url + path + ("?" + qs if qs else ""), encoded=True),
                    data=data.encode("utf-8") if data is not None else None,
                    headers=headers,
                    ssl=self._ssl,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=limit),
                ) as resp:
                    body = await self._read_body(resp, method, path)
                    status = resp.status
                    outcome = str(status)
                    # aiohttp's own read-only view; it outlives the released response.
                    resp_headers = resp.headers
        except TimeoutError:
            outcome = "timeout"
            log.warning("%s %s: no answer within %.1f s", method, path, limit)
            raise HomeserverUnavailable(
                "homeserver did not answer within %.1f s: %s %s" % (limit, method, path), timeout=True
            ) from None
        except AnswerTooLarge as exc:
            outcome = "too_large"
            raise HomeserverUnavailable(
                "homeserver answer too large (%d B): %s %s" % (exc.size, method, path), COAP_BAD_GATEWAY
            ) from None
        except HomeserverUnavailable:
            outcome = "too_large"
            raise
        except (aiohttp.ClientError, OSError) as exc:
            outcome = "unreachable"
            reason = _describe(exc)
            log.warning("%s %s: %s", method, path, reason)
            raise HomeserverUnavailable(
                "homeserver unreachable: %s %s: %s" % (method, path, reason)
            ) from None
        except ValueError as exc:  # after OSError: TLS verification errors are both
            # A header that cannot be sent (a control character in a token a
            # client-proxy bound, say): the request's fault, not the homeserver's.
            outcome = "not_sent"
            raise EncodeError("request cannot be sent: %s" % type(exc).__name__) from None
        finally:
            if report is not None:
                report(pool, outcome, time.monotonic() - started)

        parsed: Any = None
        if body:
            try:
                parsed = json.loads(body)
            except (ValueError, RecursionError):
                # Not JSON (an HTML error page), or nested deep enough to exhaust the stack.
                parsed = None
        result = HttpResult(
            status=status,
            json=parsed,
            headers=resp_headers,
            retry_after=_retry_after(resp_headers, parsed, status),
            body=body,
        )
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s %s -> %d %s(%d B, %.1f ms)",
                method,
                path,
                status,
                (result.errcode + " ") if result.errcode else "",
                len(body),
                (time.monotonic() - started) * 1000,
            )
        return result

    async def _read_body(self, resp: aiohttp.ClientResponse, method: str, path: str) -> bytes:
        declared = resp.content_length
        if declared is not None and declared > self.max_body:
            raise HomeserverUnavailable(
                "homeserver answer too large (%d B): %s %s" % (declared, method, path), COAP_BAD_GATEWAY
            )
        if declared is not None:
            # The usual case (a Matrix answer with Content-Length): one read.
            return await resp.read()
        body = bytearray()
        async for chunk in resp.content.iter_chunked(65536):
            body += chunk
            if len(body) > self.max_body:
                raise HomeserverUnavailable(
                    "homeserver answer larger than %d B: %s %s" % (self.max_body, method, path),
                    COAP_BAD_GATEWAY,
                )
        return bytes(body)

    # -- what the proxy does ----------------------------------------------

    async def register_appservice_user(self, localpart: str, as_token: str) -> str:
        """Create a user in the appservice's namespace; return its user ID.

        A user that already exists is fine (enrolment may be re-run); any other
        refusal raises HomeserverRequestFailed.
        """
        result = await self.request(
            "POST",
            CLIENT_V3 + "/register",
            json_body={"type": "m.login.application_service", "username": localpart, "inhibit_login": True},
            access_token=as_token,
        )
        if result.ok and isinstance(result.json, dict) and isinstance(result.json.get("user_id"), str):
            return str(result.json["user_id"])
        if result.status == 400 and result.errcode == "M_USER_IN_USE":
            # The answer does not name the user; the appservice's own ID gives the server name.
            sender = (await self.whoami(as_token)).expect_ok().get("user_id")
            if isinstance(sender, str) and ":" in sender:
                return "@%s:%s" % (localpart, sender.split(":", 1)[1])
        raise HomeserverRequestFailed(
            "registering %s failed: %d %s" % (localpart, result.status, result.errcode or ""), result
        )

    async def send_event(
        self,
        room_id: str,
        event_type: str,
        content: Mapping[str, Any],
        txn_id: str,
        token: str,
        as_user: str | None = None,
        ts: int | None = None,
    ) -> HttpResult:
        """PUT a room event; the same ``txn_id`` from the same sender makes one event."""
        path = encode_path(CLIENT_V3 + "/rooms/{}/send/{}/{}", room_id, event_type, txn_id)
        return await self.request(
            "PUT",
            path,
            json_body=dict(content),
            access_token=token,
            as_user=as_user,
            ts=ts,
            pool=POOL_READINGS,
        )

    async def create_room(
        self, token: str, body: Mapping[str, Any] | None = None, *, as_user: str | None = None
    ) -> HttpResult:
        return await self.request(
            "POST", CLIENT_V3 + "/createRoom", json_body=dict(body or {}), access_token=token, as_user=as_user
        )

    async def join_room(
        self, room_id_or_alias: str, token: str, *, as_user: str | None = None, via: Sequence[str] = ()
    ) -> HttpResult:
        return await self.request(
            "POST",
            encode_path(CLIENT_V3 + "/join/{}", room_id_or_alias),
            query={"via": list(via)} if via else None,
            json_body={},
            access_token=token,
            as_user=as_user,
        )

    async def invite(
        self, room_id: str, user_id: str, token: str, *, as_user: str | None = None
    ) -> HttpResult:
        return await self.request(
            "POST",
            encode_path(CLIENT_V3 + "/rooms/{}/invite", room_id),
            json_body={"user_id": user_id},
            access_token=token,
            as_user=as_user,
        )

    async def messages(
        self,
        room_id: str,
        token: str,
        *,
        as_user: str | None = None,
        from_token: str | None = None,
        to_token: str | None = None,
        dir: str = "b",
        limit: int | None = None,
        filter: Mapping[str, Any] | str | None = None,
    ) -> HttpResult:
        return await self.request(
            "GET",
            encode_path(CLIENT_V3 + "/rooms/{}/messages", room_id),
            query={"from": from_token, "to": to_token, "dir": dir, "limit": limit, "filter": filter},
            access_token=token,
            as_user=as_user,
        )

    async def sync(
        self,
        token: str,
        *,
        as_user: str | None = None,
        since: str | None = None,
        timeout_ms: int = 0,
        filter: Mapping[str, Any] | str | None = None,
        full_state: bool | None = None,
        set_presence: str | None = None,
    ) -> HttpResult:
        """One /sync; a long poll (``timeout_ms``) extends the HTTP timeout to match."""
        return await self.request(
            "GET",
            CLIENT_V3 + "/sync",
            query={
                "since": since,
                "timeout": timeout_ms,
                "filter": filter,
                "full_state": full_state,
                "set_presence": set_presence,
            },
            access_token=token,
            as_user=as_user,
            timeout=self.timeout + timeout_ms / 1000 + (SYNC_TIMEOUT_MARGIN if timeout_ms else 0.0),
        )

    async def whoami(self, token: str, *, as_user: str | None = None) -> HttpResult:
        return await self.request("GET", CLIENT_V3 + "/account/whoami", access_token=token, as_user=as_user)
