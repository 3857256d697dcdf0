"""A scripted chat session of matrix-nio, a stock Matrix client, and what it saw.

Issue 7's acceptance test: the same script runs once against Synapse directly
and once through ``lowbw client-proxy`` (across radio_sim and the lowbw proxy);
the two transcripts must be equal.  A transcript therefore keeps everything the
client saw that does not change from one run to the next by nature: response
classes, HTTP status and content type, the top-level keys of each raw JSON
body, whole events (content, keys, unsigned) with user ids, room ids, event ids,
transaction ids and timestamps replaced by stable placeholders, the order of the
timeline as pagination returns it, and the room's members.  Counts and timings
that legitimately vary (how many long-polls the sync took, seconds per phase)
are kept in fields that equality ignores, so tests can print them.

This is a plain module (no pytest) so a person can also drive it by hand.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any

import nio

# What a thrifty client asks of /sync: no presence or account data, a timeline
# long enough for the whole scripted room.  Both runs use the same filter.
SYNC_FILTER: dict[str, Any] = {
    "presence": {"not_types": ["*"]},
    "account_data": {"not_types": ["*"]},
    "room": {"timeline": {"limit": 20}, "account_data": {"not_types": ["*"]}},
}

# Values that differ between runs by nature and are replaced, by key.
_OPAQUE_BY_KEY = {
    "origin_server_ts": "<ts>",
    "age": "<age>",
    "transaction_id": "<txn>",
}
_EVENT_ID = re.compile(r"\$[A-Za-z0-9+/_\-]{20,}")


@dataclass(frozen=True)
class Step:
    """One request as the client saw it come back."""

    who: str
    phase: str
    response: str  # nio's response class name
    error: bool  # nio answered with an ErrorResponse
    status: int | None  # HTTP status
    content_type: str | None
    keys: tuple[str, ...]  # top-level keys of the raw JSON body
    errcode: str | None = None


@dataclass
class Transcript:
    """What the client saw in one run of ``run_chat``; ``==`` compares two runs."""

    steps: list[Step] = field(default_factory=list)
    # Each long-poll round's step, as a set: how many rounds it takes varies.
    incremental_sync_steps: set[Step] = field(default_factory=set)
    initial_sync_limited: bool | None = None
    initial_sync_state: list[dict[str, Any]] = field(default_factory=list)
    initial_sync_timeline: list[dict[str, Any]] = field(default_factory=list)
    # (sender, body) of m.room.message events that incremental syncs brought, in order.
    incremental_messages: list[tuple[str, str]] = field(default_factory=list)
    # Pages of /messages (newest first), each a list of normalized events.
    pages: list[list[dict[str, Any]]] = field(default_factory=list)
    members: list[tuple[str, str | None]] = field(default_factory=list)
    # Not compared: measurements of this run.
    sync_rounds: int = field(default=0, compare=False)
    seconds: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def errors(self) -> list[Step]:
        return [s for s in self.steps + sorted(self.incremental_sync_steps, key=repr) if s.error]

    @property
    def paginated_messages(self) -> list[tuple[str, str]]:
        """(sender, body) of every m.room.message from pagination, oldest first."""
        found = [
            (e["sender"], e["content"].get("body", ""))
            for page in self.pages
            for e in page
            if e.get("type") == "m.room.message"
        ]
        return list(reversed(found))


class Normalizer:
    """Replaces what names this run (user, room, event ids; timestamps) with placeholders."""

    def __init__(self) -> None:
        self._replacements: list[tuple[str, str]] = []

    def add(self, real: str, placeholder: str) -> None:
        # Longest first, so a full user id is replaced before its localpart.
        self._replacements.append((real, placeholder))
        self._replacements.sort(key=lambda pair: -len(pair[0]))

    def text(self, value: str) -> str:
        for real, placeholder in self._replacements:
            value = value.replace(real, placeholder)
        return _EVENT_ID.sub("$event", value)

    def json(self, value: Any, key: str | None = None) -> Any:
        if key in _OPAQUE_BY_KEY:
            return _OPAQUE_BY_KEY[key]
        if isinstance(value, dict):
            return {self.text(k): self.json(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self.json(v) for v in value]
        if isinstance(value, str):
            return self.text(value)
        return value

    def event(self, event: Any) -> dict[str, Any]:
        """A nio event as a normalized dict, with nio's class name under ``"nio"``."""
        source = getattr(event, "source", None) or {}
        normalized: dict[str, Any] = self.json(source)
        normalized["nio"] = type(event).__name__
        return normalized


async def raw_body(response: Any) -> Any:
    """The JSON body behind a nio response (aiohttp keeps the bytes nio already read)."""
    transport = getattr(response, "transport_response", None)
    if transport is None:
        return None
    try:
        return await transport.json(content_type=None)
    except Exception:  # not JSON: the step records no keys
        return None


async def step(who: str, phase: str, response: Any) -> Step:
    transport = getattr(response, "transport_response", None)
    body = await raw_body(response)
    is_error = isinstance(response, nio.ErrorResponse)
    return Step(
        who=who,
        phase=phase,
        response=type(response).__name__,
        error=is_error,
        status=transport.status if transport is not None else None,
        content_type=transport.content_type if transport is not None else None,
        keys=tuple(sorted(body)) if isinstance(body, dict) else (),
        errcode=getattr(response, "status_code", None) if is_error else None,
    )


class SessionError(AssertionError):
    """The script could not go on (an error response where it needs a result)."""


def _client(url: str, user: str, request_timeout: float) -> nio.AsyncClient:
    # max_timeouts=0: a timed-out request fails the run instead of being retried
    # silently (a retried createRoom would make a second room).
    config = nio.AsyncClientConfig(request_timeout=request_timeout, max_timeouts=0)
    return nio.AsyncClient(url, user, config=config)


def _require(response: Any, kind: type, what: str) -> Any:
    if not isinstance(response, kind):
        raise SessionError("%s: %r" % (what, response))
    return response


async def run_chat(
    homeserver_url: str,
    alice: tuple[str, str],
    bob: tuple[str, str],
    bob_url: str,
    messages: int = 10,
    *,
    bob_messages: int = 2,
    page_limit: int = 5,
    sync_deadline: float = 60.0,
    poll_ms: int = 20000,
    request_timeout: float = 120.0,
) -> Transcript:
    """Alice (via ``homeserver_url``) and Bob (via ``bob_url``) chat; returns what they saw.

    ``alice`` and ``bob`` are (localpart, password) of registered users.  Alice
    logs in, creates a room, invites Bob; Bob logs in and joins; Alice sends
    ``messages`` messages and syncs; Bob sends ``bob_messages``; Alice long-polls
    /sync until she has them, pages back through /messages ``page_limit`` at a
    time, and reads the joined members.

    ``request_timeout`` bounds each request (a timeout fails the run); nio bounds
    a long-poll /sync at ``poll_ms`` + 15 s instead, so ``poll_ms`` is generous:
    Bob's messages are already waiting, so Synapse answers at once anyway.
    """
    t = Transcript()
    norm = Normalizer()
    a = _client(homeserver_url, alice[0], request_timeout)
    b = _client(bob_url, bob[0], request_timeout)
    started = time.monotonic()

    def lap(phase: str) -> None:
        nonlocal started
        now = time.monotonic()
        t.seconds[phase] = round(now - started, 3)
        started = now

    async def record(who: str, phase: str, response: Any) -> Any:
        t.steps.append(await step(who, phase, response))
        return response

    try:
        login = _require(
            await record("alice", "login", await a.login(alice[1], device_name="lowbw nio test")),
            nio.LoginResponse,
            "alice login",
        )
        norm.add(login.user_id, "@alice")
        norm.add(alice[0], "alice")
        norm.add(login.device_id, "<alice-device>")
        lap("alice login")

        b_login = _require(
            await record("bob", "login", await b.login(bob[1], device_name="lowbw nio test")),
            nio.LoginResponse,
            "bob login",
        )
        norm.add(b_login.user_id, "@bob")
        norm.add(bob[0], "bob")
        norm.add(b_login.device_id, "<bob-device>")
        lap("bob login")

        room = _require(
            await record("alice", "room_create", await a.room_create(name="lowbw nio test")),
            nio.RoomCreateResponse,
            "room_create",
        )
        room_id = room.room_id
        norm.add(room_id, "!room")
        await record("alice", "room_invite", await a.room_invite(room_id, b_login.user_id))
        lap("create+invite")

        _require(await record("bob", "join", await b.join(room_id)), nio.JoinResponse, "bob join")
        lap("bob join")

        for i in range(messages):
            content = {"msgtype": "m.text", "body": "message %d" % i}
            await record("alice", "room_send", await a.room_send(room_id, "m.room.message", content))
        lap("alice sends")

        first = _require(
            await record("alice", "sync", await a.sync(timeout=0, sync_filter=SYNC_FILTER)),
            nio.SyncResponse,
            "alice initial sync",
        )
        joined = first.rooms.join.get(room_id)
        if joined is not None:
            t.initial_sync_limited = joined.timeline.limited
            t.initial_sync_state = [norm.event(e) for e in joined.state]
            t.initial_sync_timeline = [norm.event(e) for e in joined.timeline.events]
        lap("alice initial sync")

        for i in range(bob_messages):
            content = {"msgtype": "m.text", "body": "bob message %d" % i}
            await record("bob", "room_send", await b.room_send(room_id, "m.room.message", content))
        lap("bob sends")

        await _sync_until_bob(t, a, norm, room_id, first.next_batch, bob_messages, sync_deadline, poll_ms)
        lap("alice incremental sync")

        await _paginate(t, a, norm, room_id, page_limit, record)
        lap("alice pagination")

        members = _require(
            await record("alice", "joined_members", await a.joined_members(room_id)),
            nio.JoinedMembersResponse,
            "joined_members",
        )
        t.members = sorted(
            (norm.text(m.user_id), norm.text(m.display_name) if m.display_name else None)
            for m in members.members
        )
        lap("alice members")
    finally:
        await a.close()
        await b.close()
    return t


async def _sync_until_bob(
    t: Transcript,
    client: nio.AsyncClient,
    norm: Normalizer,
    room_id: str,
    since: str,
    expected: int,
    deadline_s: float,
    poll_ms: int,
) -> None:
    """Long-poll /sync from ``since`` until ``expected`` messages from Bob arrived or time is up."""
    deadline = time.monotonic() + deadline_s
    seen: set[str] = set()
    bob_seen = 0
    while bob_seen < expected and time.monotonic() < deadline:
        response = await client.sync(timeout=poll_ms, sync_filter=SYNC_FILTER, since=since)
        t.sync_rounds += 1
        t.incremental_sync_steps.add(await step("alice", "sync", response))
        if not isinstance(response, nio.SyncResponse):
            raise SessionError("alice incremental sync: %r" % (response,))
        since = response.next_batch
        joined = response.rooms.join.get(room_id)
        for event in joined.timeline.events if joined is not None else []:
            if event.event_id in seen or not isinstance(event, nio.RoomMessage):
                continue
            seen.add(event.event_id)
            sender = norm.text(event.sender)
            t.incremental_messages.append((sender, norm.text(getattr(event, "body", ""))))
            bob_seen += sender == "@bob"


async def _paginate(
    t: Transcript, client: nio.AsyncClient, norm: Normalizer, room_id: str, limit: int, record: Any
) -> None:
    """Page /messages backwards from the newest event, following ``end``, until the room's start."""
    start: str | None = None
    for _ in range(200):  # a bound far above any room this script makes
        response = _require(
            await record("alice", "room_messages", await client.room_messages(room_id, start, limit=limit)),
            nio.RoomMessagesResponse,
            "room_messages",
        )
        if not response.chunk:
            return
        t.pages.append([norm.event(e) for e in response.chunk])
        if not response.end:
            return
        start = response.end
    raise SessionError("room_messages did not reach the start of the room")


# ---- one message at 100 bit/s ---------------------------------------------------


@dataclass
class SingleMessage:
    """One message sent by Alice, and the event as Bob then reads it."""

    send: Step
    event: dict[str, Any]
    seconds: float = field(compare=False)


async def whoami_device(url: str, user_id: str, access_token: str) -> str:
    """The device id behind an access token (asked of ``url`` directly)."""
    client = _client(url, user_id, 30.0)
    client.access_token = access_token
    try:
        response = _require(await client.whoami(), nio.WhoamiResponse, "whoami")
        device_id: str = response.device_id
        return device_id
    finally:
        await client.close()


async def make_room(direct_url: str, alice: tuple[str, str], bob: tuple[str, str]) -> str:
    """A room Alice made and Bob joined, all directly; ``alice``/``bob`` are (user_id, token)."""
    a = _client(direct_url, alice[0], 30.0)
    b = _client(direct_url, bob[0], 30.0)
    a.restore_login(alice[0], await whoami_device(direct_url, *alice), alice[1])
    b.restore_login(bob[0], await whoami_device(direct_url, *bob), bob[1])
    try:
        room = _require(await a.room_create(name="lowbw nio single"), nio.RoomCreateResponse, "room_create")
        _require(await a.room_invite(room.room_id, bob[0]), nio.RoomInviteResponse, "room_invite")
        _require(await b.join(room.room_id), nio.JoinResponse, "bob join")
        room_id: str = room.room_id
        return room_id
    finally:
        await a.close()
        await b.close()


async def send_single(
    url: str,
    direct_url: str,
    alice: tuple[str, str],
    bob: tuple[str, str],
    room_id: str,
    body: str,
    *,
    request_timeout: float = 120.0,
) -> SingleMessage:
    """Alice, with a restored login (no /login round trip), sends ``body`` via ``url``.

    Bob then reads the newest event of the room directly from ``direct_url``.
    ``alice``/``bob`` are (user_id, access_token).
    """
    norm = Normalizer()
    norm.add(alice[0], "@alice")
    norm.add(bob[0], "@bob")
    norm.add(room_id, "!room")
    a = _client(url, alice[0], request_timeout)
    a.restore_login(alice[0], await whoami_device(direct_url, *alice), alice[1])
    started = time.monotonic()
    try:
        sent = await a.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body})
        send = await step("alice", "room_send", sent)
    finally:
        await a.close()
    seconds = time.monotonic() - started
    _require(sent, nio.RoomSendResponse, "alice room_send")

    b = _client(direct_url, bob[0], 30.0)
    b.restore_login(bob[0], await whoami_device(direct_url, *bob), bob[1])
    try:
        page = _require(await b.room_messages(room_id, None, limit=1), nio.RoomMessagesResponse, "messages")
    finally:
        await b.close()
    if not page.chunk or page.chunk[0].event_id != sent.event_id:
        raise SessionError("bob's newest event is not alice's message: %r" % (page.chunk,))
    return SingleMessage(send, norm.event(page.chunk[0]), seconds)


def run(coro: Any) -> Any:
    """``asyncio.run`` for sync tests (the repository does not use pytest-asyncio)."""
    return asyncio.run(coro)
