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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
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


# ---- an encrypted chat: two nio [e2e] clients (vodozemac) -------------------------

# Enough timeline for the scripted room; presence and account data not asked for.
E2EE_FILTER: dict[str, Any] = {
    "presence": {"not_types": ["*"]},
    "account_data": {"not_types": ["*"]},
    "room": {"timeline": {"limit": 30}, "account_data": {"not_types": ["*"]}},
}
MEGOLM = "m.megolm.v1.aes-sha2"
BACKUP_ALGORITHM = "m.megolm_backup.v1.curve25519-aes-sha2"


@dataclass
class E2eeTranscript:
    """What two encrypting clients saw in one run of ``run_encrypted_chat``; ``==`` compares runs."""

    steps: list[Step] = field(default_factory=list)
    # (reader, sender, nio class, body) of every message each side decrypted, in timeline order.
    decrypted: list[tuple[str, str, str, str]] = field(default_factory=list)
    # Events each side could not decrypt (nio MegolmEvent / undecrypted): must stay empty.
    undecryptable: list[tuple[str, str]] = field(default_factory=list)
    # The room as Synapse stores it (read directly): event types and the encrypted algorithm.
    server_events: list[tuple[str, str | None]] = field(default_factory=list)
    # /room_keys: what came back for what was put (normalized), per request.
    room_keys: list[Any] = field(default_factory=list)
    sync_rounds: int = field(default=0, compare=False)
    seconds: dict[str, float] = field(default_factory=dict, compare=False)
    # UDP payload bytes up/down per phase, when run with a ``probe`` (the client-proxy's stats).
    radio: dict[str, tuple[int, int]] = field(default_factory=dict, compare=False)

    @property
    def errors(self) -> list[Step]:
        return [s for s in self.steps if s.error]


def _e2ee_client(url: str, user: str, store: Any, request_timeout: float) -> nio.AsyncClient:
    import os

    os.makedirs(store, exist_ok=True)
    config = nio.AsyncClientConfig(
        encryption_enabled=True, store_sync_tokens=False, request_timeout=request_timeout, max_timeouts=0
    )
    return nio.AsyncClient(url, user, store_path=str(store), config=config)


async def _crypto_chores(who: str, c: nio.AsyncClient, record: Any) -> None:
    """What an encrypting client does after a sync: upload, query and claim keys, send to-device."""
    if c.should_upload_keys:
        await record(who, "keys_upload", await c.keys_upload())
    if c.should_query_keys:
        await record(who, "keys_query", await c.keys_query())
    if c.should_claim_keys:
        await record(who, "keys_claim", await c.keys_claim(c.get_users_for_key_claiming()))
    for response in await c.send_to_device_messages():
        await record(who, "to_device", response)


async def run_encrypted_chat(
    alice_url: str,
    alice: tuple[str, str],
    bob_url: str,
    bob: tuple[str, str],
    store: Any,
    *,
    direct_url: str,
    messages: int = 3,
    bob_messages: int = 2,
    request_timeout: float = 120.0,
    sync_deadline: float = 90.0,
    probe: Callable[[], dict[str, Any]] | None = None,
) -> E2eeTranscript:
    """Alice (via ``alice_url``) and Bob (via ``bob_url``) chat in an encrypted room.

    Both run matrix-nio with end-to-end encryption (vodozemac), on this one
    event loop (nio's crypto store is not thread-safe). Alice logs in and
    uploads her keys, creates a room with ``m.room.encryption`` (Megolm) and
    invites Bob; Bob logs in, uploads his keys and joins; Alice queries Bob's
    keys, claims a one-time key, shares her room key by Olm to-device and sends
    ``messages`` encrypted messages; Bob syncs until he has decrypted them all,
    answers with ``bob_messages`` of his own (his room key to Alice the same
    way); Alice syncs until she has decrypted his. Then Alice backs her room
    keys up (``/room_keys``: a backup version, a session put and read back).
    ``direct_url`` is Synapse itself, from which the room is read as stored.
    ``probe``, if given, returns the client-proxy's radio counters (its
    ``/_lowbw/stats``): each phase's bytes go into ``radio``.
    """
    t = E2eeTranscript()
    norm = Normalizer()
    a = _e2ee_client(alice_url, alice[0], "%s/alice" % store, request_timeout)
    b = _e2ee_client(bob_url, bob[0], "%s/bob" % store, request_timeout)
    started = time.monotonic()
    counted = (0, 0)

    def lap(phase: str) -> None:
        nonlocal started, counted
        now = time.monotonic()
        t.seconds[phase] = round(now - started, 3)
        started = now
        if probe is not None:
            stats = probe()
            now_counted = (int(stats["tx_bytes"]), int(stats["rx_bytes"]))
            t.radio[phase] = (now_counted[0] - counted[0], now_counted[1] - counted[1])
            counted = now_counted

    async def record(who: str, phase: str, response: Any) -> Any:
        t.steps.append(await step(who, phase, response))
        return response

    try:
        login = _require(
            await record("alice", "login", await a.login(alice[1], device_name="lowbw e2ee test")),
            nio.LoginResponse,
            "alice login",
        )
        norm.add(login.user_id, "@alice")
        norm.add(login.device_id, "<alice-device>")
        b_login = _require(
            await record("bob", "login", await b.login(bob[1], device_name="lowbw e2ee test")),
            nio.LoginResponse,
            "bob login",
        )
        norm.add(b_login.user_id, "@bob")
        norm.add(b_login.device_id, "<bob-device>")
        await _crypto_chores("alice", a, record)
        await _crypto_chores("bob", b, record)
        lap("logins + key uploads")

        room = _require(
            await record(
                "alice",
                "room_create",
                await a.room_create(
                    name="lowbw e2ee test",
                    invite=[b_login.user_id],
                    initial_state=[
                        {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}
                    ],
                ),
            ),
            nio.RoomCreateResponse,
            "room_create",
        )
        room_id = room.room_id
        norm.add(room_id, "!room")
        _require(await record("bob", "join", await b.join(room_id)), nio.JoinResponse, "bob join")
        lap("encrypted room")

        await record("alice", "sync", await a.sync(timeout=0, sync_filter=E2EE_FILTER, full_state=True))
        await _crypto_chores("alice", a, record)
        if not a.rooms.get(room_id) or not a.rooms[room_id].encrypted:
            raise SessionError("alice does not see the room as encrypted")
        # What room_send would do by itself, as a step of its own: claim Bob's
        # one-time key, send the room key to his device by Olm (sendToDevice).
        await record(
            "alice",
            "share_group_session",
            await a.share_group_session(room_id, ignore_unverified_devices=True),
        )
        for i in range(messages):
            content = {"msgtype": "m.text", "body": "secret %d" % i}
            await record(
                "alice",
                "room_send",
                await a.room_send(room_id, "m.room.message", content, ignore_unverified_devices=True),
            )
        lap("alice sends (key share + megolm)")

        await _read_until(t, "bob", b, norm, room_id, "@alice", messages, sync_deadline, record)
        lap("bob decrypts")

        for i in range(bob_messages):
            content = {"msgtype": "m.text", "body": "bob secret %d" % i}
            await record(
                "bob",
                "room_send",
                await b.room_send(room_id, "m.room.message", content, ignore_unverified_devices=True),
            )
        lap("bob sends")

        await _read_until(t, "alice", a, norm, room_id, "@bob", bob_messages, sync_deadline, record)
        lap("alice decrypts")

        await _room_keys(t, a, norm, room_id)
        lap("room_keys backup")

        t.server_events = await _stored_events(direct_url, b, room_id)
    finally:
        await a.close()
        await b.close()
    return t


async def _read_until(
    t: E2eeTranscript,
    who: str,
    c: nio.AsyncClient,
    norm: Normalizer,
    room_id: str,
    sender: str,
    expected: int,
    deadline_s: float,
    record: Any,
) -> None:
    """Sync (first at once, then long-polls) until ``expected`` messages from ``sender`` are decrypted."""
    deadline = time.monotonic() + deadline_s
    got = 0
    undecrypted: dict[str, Any] = {}
    timeout = 0
    while got < expected and time.monotonic() < deadline:
        response = await c.sync(timeout=timeout, sync_filter=E2EE_FILTER)
        t.sync_rounds += 1
        if not isinstance(response, nio.SyncResponse):
            raise SessionError("%s sync: %r" % (who, response))
        await _crypto_chores(who, c, record)
        timeout = 10_000
        joined = response.rooms.join.get(room_id)
        for event in list(joined.timeline.events) if joined is not None else []:
            if isinstance(event, nio.MegolmEvent):
                # Its key may come in this very sync's to-device messages: try again below.
                undecrypted[event.event_id] = event
                continue
            got += _take(t, who, norm, event, sender)
        for event_id, event in list(undecrypted.items()):
            try:
                clear = c.decrypt_event(event)
            except Exception:  # noqa: BLE001 - still no key: wait for the next sync
                continue
            del undecrypted[event_id]
            got += _take(t, who, norm, clear, sender)
    for event in undecrypted.values():
        t.undecryptable.append((who, norm.text(event.sender)))


def _take(t: E2eeTranscript, who: str, norm: Normalizer, event: Any, sender: str) -> int:
    if not isinstance(event, nio.RoomMessage):
        return 0
    from_ = norm.text(event.sender)
    t.decrypted.append(
        (
            who,
            from_,
            type(event).__name__ + (" (decrypted)" if event.decrypted else ""),
            getattr(event, "body", ""),
        )
    )
    return int(from_ == sender)


async def _room_keys(t: E2eeTranscript, c: nio.AsyncClient, norm: Normalizer, room_id: str) -> None:
    """A server-side key backup through ``c``'s URL: a version, sessions put two ways, read back.

    The session of Alice's outbound Megolm session goes in one body (session
    IDs as map keys); a second, whose ID holds ``+`` and ``/``, goes by path.
    """
    import vodozemac

    assert c.olm is not None
    backup = vodozemac.PkDecryption()
    auth = {"public_key": backup.public_key.to_base64()}  # type: ignore[attr-defined]  # stubs say bytes
    real_id = c.olm.outbound_group_sessions[room_id].id
    path_id = "AAAA+/" + real_id[6:]

    def key_data(plain: bytes) -> dict[str, Any]:
        secret = vodozemac.PkEncryption.from_key(backup.public_key).encrypt(plain)
        return {
            "first_message_index": 0,
            "forwarded_count": 0,
            "is_verified": False,
            "session_data": {
                "ephemeral": _b64(secret.ephemeral_key),
                "ciphertext": _b64(secret.ciphertext),
                "mac": _b64(secret.mac),
            },
        }

    real, by_path = key_data(b'{"session_key":"real"}'), key_data(b'{"session_key":"by path"}')
    headers = {"Authorization": "Bearer %s" % c.access_token}
    base = c.homeserver + "/_matrix/client/v3/room_keys"
    async with aiohttp.ClientSession() as http:

        async def call(method: str, path: str, body: Any = None, **query: str) -> tuple[int, Any]:
            async with http.request(method, base + path, json=body, params=query, headers=headers) as r:
                return r.status, await r.json(content_type=None)

        status, made = await call("POST", "/version", {"algorithm": BACKUP_ALGORITHM, "auth_data": auth})
        t.room_keys.append(("create version", status, sorted(made)))
        version = str(made.get("version", ""))
        body = {"rooms": {room_id: {"sessions": {real_id: real}}}}
        status, put = await call("PUT", "/keys", body, version=version)
        t.room_keys.append(("put body", status, put.get("count")))
        path = "/keys/%s/%s" % (quote(room_id, safe=""), quote(path_id, safe=""))
        status, put = await call("PUT", path, by_path, version=version)
        t.room_keys.append(("put path", status, put.get("count")))
        status, got = await call("GET", "/keys", version=version)
        sessions = got.get("rooms", {}).get(room_id, {}).get("sessions", {})
        t.room_keys.append(("read back", status, sessions == {real_id: real, path_id: by_path}))
        status, one = await call("GET", path, version=version)
        t.room_keys.append(("read one", status, one == by_path))


def _b64(raw: Any) -> str:
    import base64

    return base64.b64encode(bytes(raw)).decode("ascii").rstrip("=")


async def _stored_events(
    direct_url: str, reader: nio.AsyncClient, room_id: str
) -> list[tuple[str, str | None]]:
    """The room's events as Synapse stores them, oldest first, read directly with ``reader``'s token."""
    headers = {"Authorization": "Bearer %s" % reader.access_token}
    url = "%s/_matrix/client/v3/rooms/%s/messages" % (direct_url, quote(room_id, safe=""))
    async with aiohttp.ClientSession() as http:
        async with http.get(url, params={"dir": "b", "limit": "100"}, headers=headers) as r:
            chunk = (await r.json())["chunk"]
    return [
        (e["type"], e.get("content", {}).get("algorithm") if e["type"] == "m.room.encrypted" else None)
        for e in reversed(chunk)
        if e["type"] in ("m.room.encrypted", "m.room.message", "m.room.encryption")
    ]
