"""Fewer datagrams for a chatting client (issue 14): held echoes, unconfirmed receipts.

* ``sync_is_echo`` (lowbw.proxy.clients): which sync results hold only the
  client's own echoes, fed real shapes and garbage.
* ``_ephemeral_key`` (lowbw.clientproxy.app): which requests are receipts,
  read markers or typing, and what replaces what.
* End to end (real proxy, radio_sim, client-proxy, Synapse): a send's echo
  does not cross the radio alone; it comes with the next news, in the answer
  Synapse gives for the client's own ``since``; a receipt is answered ``{}`` at
  once, is one datagram up and none down, and reaches the homeserver; a logout
  ends the parked sync without a word on the air.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.parse
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbw.clientproxy.app import _ephemeral_key
from lowbw.proxy.clients import ECHO_HOLD_OPTION, QUERY_SAME_OPTION, sync_is_echo, sync_is_empty
from lowbw.testing.synapse import SynapseServer
from lowbw.wire import coap
from tests.proxy.conftest import MatrixUser, matrix_call
from tests.proxy.test_client_proxy import http, login_body
from tests.proxy.test_server_clients import Client, bind
from tests.proxy.test_server_clients import client as client  # noqa: F401 - the fixture

ME = "@me:example.org"
YOU = "@you:example.org"
ROOM = "!room:example.org"


def own(body: str = "hi", txn: str | None = "abcdefgh", sender: str = ME) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "m.room.message",
        "sender": sender,
        "event_id": "$e" + secrets.token_hex(4),
        "origin_server_ts": 1,
        "content": {"msgtype": "m.text", "body": body},
        "unsigned": {"age": 5},
    }
    if txn is not None:
        event["unsigned"]["transaction_id"] = txn
    return event


def receipt(user: str) -> dict[str, Any]:
    return {"type": "m.receipt", "content": {"$x": {"m.read": {user: {"ts": 1, "thread_id": "main"}}}}}


def sync_of(
    timeline: list[Any] | None = None, ephemeral: list[Any] | None = None, **room: Any
) -> dict[str, Any]:
    joined = {
        "timeline": {"events": timeline or [], "limited": False, "prev_batch": "p1"},
        "state": {"events": []},
        "account_data": {"events": []},
        "ephemeral": {"events": ephemeral or []},
        "unread_notifications": {"notification_count": 0, "highlight_count": 0},
        "summary": {},
        **room,
    }
    return {"next_batch": "s2", "device_one_time_keys_count": {}, "rooms": {"join": {ROOM: joined}}}


def test_own_sends_and_receipts_are_echoes() -> None:
    users = {ME}
    assert sync_is_echo(sync_of([own()]), users)
    assert sync_is_echo(sync_of([own(), own("again")], [receipt(ME)]), users)
    assert sync_is_echo(sync_of(ephemeral=[receipt(ME)]), users)
    assert sync_is_echo(sync_of(ephemeral=[{"type": "m.typing", "content": {"user_ids": [ME]}}]), users)
    # The sender of an event with a transaction ID is the session's own user,
    # even when no login was seen (a restored token): learnt from it.
    learnt: set[str] = set()
    assert sync_is_echo(sync_of([own()], [receipt(ME)]), learnt) and learnt == {ME}


@pytest.mark.parametrize(
    "body",
    [
        sync_of([own(txn=None)]),  # no transaction ID: sent from elsewhere
        sync_of([own(sender=YOU)]),  # a transaction ID on someone else's event: not ours
        sync_of([own()], [receipt(YOU)]),
        sync_of(ephemeral=[receipt(YOU)]),
        sync_of(ephemeral=[{"type": "m.typing", "content": {"user_ids": [YOU]}}]),
        sync_of(ephemeral=[{"type": "m.something", "content": {}}]),
        sync_of([own()], state={"events": [{"type": "m.room.name", "content": {}}]}),
        sync_of([own()], account_data={"events": [{"type": "m.tag", "content": {}}]}),
        sync_of([own()], unknown_section={"events": [1]}),
        {**sync_of([own()]), "to_device": {"events": [{"type": "m.room_key"}]}},
        {**sync_of([own()]), "presence": {"events": [{"type": "m.presence"}]}},
        {"next_batch": "s", "rooms": {"invite": {ROOM: {"invite_state": {"events": [{}]}}}}},
        {"next_batch": "s", "rooms": {"leave": {ROOM: {"timeline": {"events": [own()]}}}}},
    ],
)
def test_anything_else_is_news(body: dict[str, Any]) -> None:
    assert not sync_is_echo(body, {ME})


def test_no_users_no_echo() -> None:
    assert not sync_is_echo(sync_of(ephemeral=[receipt(ME)]), set())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_echo_check_never_crashes_on_garbage(value: Any) -> None:
    assert sync_is_echo(value, {ME}) in (True, False)
    assert sync_is_echo({"rooms": {"join": {ROOM: value}}}, {ME}) in (True, False)
    assert sync_is_echo({"rooms": {"join": {ROOM: {"timeline": value, "ephemeral": value}}}}, {ME}) in (
        True,
        False,
    )
    assert sync_is_empty(value) in (True, False)


@pytest.mark.parametrize(
    ("method", "path", "body", "key"),
    [
        (
            "POST",
            "/_matrix/client/v3/rooms/!r/receipt/m.read/$e",
            {},
            ("receipt", "v3", "!r", "m.read", None),
        ),
        (
            "POST",
            "/_matrix/client/v3/rooms/!r/receipt/m.read/$e",
            {"thread_id": "main"},
            ("receipt", "v3", "!r", "m.read", "main"),
        ),
        (
            "POST",
            "/_matrix/client/r0/rooms/!r/read_markers",
            {"m.fully_read": "$e"},
            ("read_markers", "r0", "!r"),
        ),
        (
            "PUT",
            "/_matrix/client/v3/rooms/!r/typing/@me:x",
            {"typing": True},
            ("typing", "v3", "!r", "@me:x"),
        ),
        ("PUT", "/_matrix/client/v3/rooms/!r/receipt/m.read/$e", {}, None),  # wrong method
        ("POST", "/_matrix/client/v3/rooms/!r/receipt/m.read", {}, None),  # no event
        ("POST", "/_matrix/client/v3/rooms/!r/receipt/m.read/$e/x", {}, None),
        ("POST", "/_matrix/client/v3/rooms//receipt/m.read/$e", {}, None),
        ("POST", "/_matrix/client/v3/rooms/!r/receipt//$e", {}, None),
        ("POST", "/_matrix/client/v3/rooms/!r/receipt/m.read/$e", [1], None),  # a body not an object
        ("POST", "/_matrix/client/v3/rooms/!r/send/m.room.message/t", {}, None),
        ("POST", "/_matrix/media/v3/rooms/!r/receipt/m.read/$e", {}, None),
        ("POST", "/", None, None),
        ("POST", "", None, None),
    ],
)
def test_ephemeral_requests(method: str, path: str, body: Any, key: Any) -> None:
    assert _ephemeral_key(method, path, body) == key


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["GET", "POST", "PUT"]), st.text(max_size=80), json_values)
def test_ephemeral_key_never_crashes(method: str, path: str, body: Any) -> None:
    key = _ephemeral_key(method, path, body)
    assert key is None or isinstance(key, tuple)


@pytest.mark.parametrize(
    "options",
    [
        [(ECHO_HOLD_OPTION, b"\x01\x02\x03")],  # longer than a 2-byte uint
        [(ECHO_HOLD_OPTION, b"\x01"), (ECHO_HOLD_OPTION, b"\x02")],  # repeated
    ],
)
def test_bad_echo_hold_is_refused(client: Client, matrix_user: MatrixUser, options: list[Any]) -> None:  # noqa: F811
    handle = client.login(matrix_user)
    park = client.request(coap.GET, ["~"], query=["since=s1_2_3"], options=[bind(handle), *options])
    answer, body = client.call(park)
    assert answer.code == coap.BAD_REQUEST and body["error"] == "bad Echo-Hold"


@pytest.mark.parametrize(
    "options",
    [
        [(QUERY_SAME_OPTION, b"")],  # no sync of this token before in the session
        [(QUERY_SAME_OPTION, b"\x01")],  # not empty
    ],
)
def test_bad_query_same_is_refused(client: Client, matrix_user: MatrixUser, options: list[Any]) -> None:  # noqa: F811
    handle = client.login(matrix_user)
    answer, body = client.call(
        client.request(coap.GET, ["~"], query=["since=s1_2"], options=[bind(handle), *options])
    )
    assert answer.code == coap.BAD_REQUEST and body["error"] == "bad Query-Same"


def test_query_same_stands_for_the_last_sync_query(client: Client, matrix_user: MatrixUser) -> None:  # noqa: F811
    handle = client.login(matrix_user)
    flt = 'filter={"room":{"timeline":{"limit":0}},"presence":{"not_types":["*"]}}'
    answer, body = client.call(
        client.request(coap.GET, ["~"], query=[flt, "timeout=0"], options=[bind(handle)])
    )
    assert answer.code == coap.CONTENT
    since = body["next_batch"]
    slot = [(65012, b"")]
    # Query-Same twice: the filter is the one given before (Synapse says so: the answer is filtered).
    again = client.request(
        coap.GET, ["~"], query=["since=" + since, "timeout=0"], options=[*slot, (QUERY_SAME_OPTION, b"")]
    )
    answer, body = client.call(again)
    assert answer.code == coap.CONTENT and body["next_batch"]
    answer, body = client.call(
        client.request(
            coap.GET, ["~"], query=["since=s0", "timeout=x"], options=[*slot, (QUERY_SAME_OPTION, b"")]
        )
    )
    assert answer.code == coap.BAD_REQUEST  # its own timeout is still its own


# ---------------------------------------------------------------- end to end


def _sync(base: str, token: str, since: str | None, timeout_ms: int) -> dict[str, Any]:
    query = {"filter": json.dumps({"room": {"timeline": {"limit": 10}}}), "timeout": str(timeout_ms)}
    if since is not None:
        query["since"] = since
    status, _, body = http(
        base, "GET", "/_matrix/client/v3/sync?" + urllib.parse.urlencode(query), token=token
    )
    assert status == 200, body
    return dict(body)


def test_echoes_wait_for_news_and_receipts_go_unconfirmed(
    client_stack: Any, synapse: SynapseServer, matrix_user: MatrixUser
) -> None:
    password = secrets.token_urlsafe(12)
    localpart = "echo_%s" % secrets.token_hex(4)
    user_id, direct_token = synapse.register_user(localpart, password)
    stack = client_stack(preset="fast")
    token = http(stack.url, "POST", "/_matrix/client/v3/login", login_body(localpart, password))[2][
        "access_token"
    ]
    room = http(stack.url, "POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}, token)[2][
        "room_id"
    ]
    status, _ = matrix_call(
        synapse.url, "POST", "/_matrix/client/v3/join/%s" % room, matrix_user.access_token, {}
    )
    assert status == 200
    since = _sync(stack.url, token, None, 0)["next_batch"]
    time.sleep(1.5)  # the next sync is parked (one request, its ACK)
    # Our own message: its echo does not cross alone.
    before = stack.radio_stats()
    status, _, sent = http(
        stack.url,
        "PUT",
        "/_matrix/client/v3/rooms/%s/send/m.room.message/my-txn-1" % urllib.parse.quote(room),
        {"msgtype": "m.text", "body": "hello from the ship"},
        token,
    )
    assert status == 200
    idle = _sync(stack.url, token, since, 1500)
    assert idle["next_batch"] == since and not idle.get("rooms", {}).get("join")
    time.sleep(1.0)
    after = stack.radio_stats()
    assert (after["tx"] - before["tx"], after["rx"] - before["rx"]) == (1, 1)  # the send, its answer
    # The other member answers: one answer brings both, as Synapse gives them for our since.
    status, theirs = matrix_call(
        synapse.url,
        "PUT",
        "/_matrix/client/v3/rooms/%s/send/m.room.message/t2" % urllib.parse.quote(room),
        matrix_user.access_token,
        {"msgtype": "m.text", "body": "hello from shore"},
    )
    assert status == 200
    got = _sync(stack.url, token, since, 20000)
    events = got["rooms"]["join"][room]["timeline"]["events"]
    assert [e["content"]["body"] for e in events] == ["hello from the ship", "hello from shore"]
    assert events[0]["event_id"] == sent["event_id"]
    assert events[0]["unsigned"]["transaction_id"] == "my-txn-1"  # the client's own, restored
    delivered = stack.radio_stats()
    assert delivered["rx"] - after["rx"] == 1  # one answer on the air for both
    # What Synapse itself says for the same since (another device of ours, so no transaction ID).
    status, direct = matrix_call(
        synapse.url,
        "GET",
        "/_matrix/client/v3/sync",
        direct_token,
        query={"since": since, "filter": json.dumps({"room": {"timeline": {"limit": 10}}})},
    )
    direct_events = direct["rooms"]["join"][room]["timeline"]["events"]
    assert [e["event_id"] for e in direct_events] == [e["event_id"] for e in events]
    for mine, theirs_view in zip(events, direct_events, strict=True):
        assert {k: v for k, v in mine.items() if k != "unsigned"} == {
            k: v for k, v in theirs_view.items() if k != "unsigned"
        }
    since = got["next_batch"]
    time.sleep(1.5)
    # A read receipt: answered at once, one datagram up, none down, and it is there.
    before = stack.radio_stats()
    status, _, body = http(
        stack.url,
        "POST",
        "/_matrix/client/v3/rooms/%s/receipt/m.read/%s"
        % (urllib.parse.quote(room), urllib.parse.quote(theirs["event_id"])),
        {"thread_id": "main"},
        token,
    )
    assert (status, body) == (200, {})
    time.sleep(2.0)
    after = stack.radio_stats()
    assert (after["tx"] - before["tx"], after["rx"] - before["rx"]) == (1, 0)
    deadline = time.monotonic() + 10
    seen = False
    while time.monotonic() < deadline and not seen:
        status, other = matrix_call(
            synapse.url, "GET", "/_matrix/client/v3/sync", matrix_user.access_token, query={"timeout": "0"}
        )
        for event in other["rooms"]["join"].get(room, {}).get("ephemeral", {}).get("events", []):
            if event["type"] == "m.receipt" and user_id in json.dumps(event["content"]):
                seen = True
        time.sleep(0.3)
    assert seen, "the receipt never reached the homeserver"
    # Logout: the parked sync ends without an answer on the air; only its empty ACK,
    # held back so far (Park-Ack), goes now.
    time.sleep(1.0)
    before = stack.radio_stats()
    assert http(stack.url, "POST", "/_matrix/client/v3/logout", {}, token)[0] == 200
    time.sleep(2.5)
    after = stack.radio_stats()
    assert (after["tx"] - before["tx"], after["rx"] - before["rx"]) == (1, 2)
    assert after["rx_bytes"] - before["rx_bytes"] < 80  # the logout's {} and an empty ACK


def test_query_same_never_repeats_full_state_or_timeout() -> None:
    from aiocoap.message import Message
    from aiocoap.numbers.codes import Code
    from aiocoap.optiontypes import OpaqueOption

    from lowbw.proxy.clients import ClientService, ClientState

    state = ClientState()
    first = Message(code=Code.GET)
    raw = ["filter=0", "full_state=true", "timeout=0", "set_presence=offline"]
    assert ClientService._sync_query(first, raw, "tok", state) == raw
    park = Message(code=Code.GET)
    park.opt.add_option(OpaqueOption(QUERY_SAME_OPTION, b""))
    assert ClientService._sync_query(park, ["since=s9"], "tok", state) == [
        "filter=0",
        "set_presence=offline",
        "since=s9",
    ]
    with pytest.raises(Exception, match="bad Query-Same"):
        ClientService._sync_query(park, ["since=s9"], "other token", state)


def test_park_ack_holds_the_ack_back_and_ignores_nonsense(client: Client, matrix_user: MatrixUser) -> None:  # noqa: F811
    from lowbw.proxy.clients import BEARER_SLOT_OPTION, PARK_ACK_OPTION

    handle = client.login(matrix_user)
    answer, body = client.call(client.request(coap.GET, ["~"], query=["timeout=0"], options=[bind(handle)]))
    since = client.refs.refer_text(body["next_batch"])
    slot = (BEARER_SLOT_OPTION, b"")
    w = client.wire

    def park(flt: str, value: bytes) -> float:
        msg = client.request(
            coap.GET,
            ["~"],
            query=["filter=" + flt, "since=" + since],
            options=[slot, (PARK_ACK_OPTION, value)],
        )
        w.send(w.seal(msg))
        t0 = time.monotonic()
        ack = w.open(w.recv(15.0))
        assert ack.mtype == coap.ACK and ack.code == coap.EMPTY and ack.mid == msg.mid
        return time.monotonic() - t0

    assert 4.0 <= park('{"a":1}', b"\x05") < 9.0  # held back as asked
    assert park('{"a":2}', b"\x01\x02") < 3.0  # longer than a byte: ignored, the usual 1 s


def test_park_ack_is_bounded() -> None:
    from types import SimpleNamespace

    from lowbw.proxy.clients import PARK_ACK_DELAY, PARK_ACK_MAX, ClientService
    from lowbw.proxy.limits import Limits
    from lowbw.proxy.transport import LinkTuning

    service = ClientService(SimpleNamespace(limits=Limits()), park_tuning=LinkTuning(1000, PARK_ACK_DELAY))
    assert service._park_tuning_for(45).EMPTY_ACK_DELAY == 45.0
    assert service._park_tuning_for(0).EMPTY_ACK_DELAY == PARK_ACK_DELAY
    assert service._park_tuning_for(45) is service._park_tuning_for(45)  # one per value
    assert PARK_ACK_MAX == 60 and service.park_tuning.EMPTY_ACK_DELAY == PARK_ACK_DELAY


@pytest.mark.parametrize("value", [-1, 601, True, "120", None, float("nan"), [1]])
def test_bad_echo_hold_setting_is_refused(value: Any) -> None:
    from lowbw.clientproxy.config import ClientProxyConfigError, echo_hold_seconds

    with pytest.raises(ClientProxyConfigError, match="echo_hold"):
        echo_hold_seconds(value, "echo_hold")


def test_echo_hold_setting() -> None:
    from lowbw.clientproxy.config import echo_hold_seconds

    assert echo_hold_seconds(0, "echo_hold") == 0.0
    assert echo_hold_seconds(120, "echo_hold") == 120.0
    assert echo_hold_seconds(600.0, "echo_hold") == 600.0
