"""``lowbw client-proxy`` as a Matrix client sees it: real processes, a real radio, real Synapse.

Each test starts the stack (tests/proxy/clientstack.py): ``lowbw proxy run``,
``radio_sim relay`` and ``lowbw client-proxy``, and speaks plain HTTP+JSON to
the client-proxy the way any Matrix client does; answers are compared with
what Synapse itself says to the same request.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest
from aiocoap.message import Message
from aiocoap.numbers.codes import Code

from lowbw.testing.synapse import SynapseServer
from tests.proxy.conftest import FaultInjector, matrix_call

FILTER = json.dumps({"room": {"timeline": {"limit": 1}}})


def http(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = None,
    raw: bytes | None = None,
    timeout: float = 60.0,
) -> tuple[int, dict[str, str], Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


def login_body(user: str, password: str) -> dict[str, Any]:
    return {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": password,
    }


@pytest.fixture
def person(synapse: SynapseServer) -> tuple[str, str, str]:
    """(localpart, password, user_id) of a fresh user."""
    localpart = "cp_%s" % secrets.token_hex(4)
    password = secrets.token_urlsafe(12)
    user_id, _ = synapse.register_user(localpart, password)
    return localpart, password, user_id


def test_discovery_and_local_answers(client_stack: Any, synapse: SynapseServer) -> None:
    stack = client_stack(preset="fast")
    status, _, body = http(stack.url, "GET", "/.well-known/matrix/client")
    assert status == 200 and body["m.homeserver"]["base_url"] == stack.url
    status, _, versions = http(stack.url, "GET", "/_matrix/client/versions")
    _, _, direct = http(synapse.url, "GET", "/_matrix/client/versions")
    assert status == 200 and versions == direct
    before = stack.radio_stats()
    assert http(stack.url, "GET", "/_matrix/client/versions")[2] == direct
    assert stack.radio_stats()["tx"] == before["tx"]  # from memory, not the radio
    status, headers, body = http(stack.url, "GET", "/_matrix/media/v3/config")
    assert status == 501 and body["errcode"] == "M_UNRECOGNIZED" and "media" in body["error"]
    status, _, body = http(stack.url, "GET", "/_matrix/client/v1/media/download/x/y")
    assert status == 501
    status, _, body = http(stack.url, "GET", "/elsewhere")
    assert status == 404 and body["errcode"] == "M_UNRECOGNIZED"
    status, _, body = http(stack.url, "POST", "/_matrix/client/v3/login", raw=b"{not json")
    assert status == 400 and body["errcode"] == "M_NOT_JSON"
    deep = b"[" * 100_000 + b"]" * 100_000
    status, _, body = http(stack.url, "POST", "/_matrix/client/v3/login", raw=deep)
    assert status == 400 and body["errcode"] == "M_NOT_JSON"
    status, _, body = http(
        stack.url, "GET", "/_matrix/client/v3/account/whoami", token="a\u00e9b"
    )  # not ASCII (and not UTF-8 on the wire)
    assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN"
    status, _, body = http(stack.url, "GET", "/_matrix/client/v3/rooms/%01x/state", token="t")
    assert status == 400 and body["error"].startswith("lowbw:")
    status, _, body = http(stack.url, "GET", "/_matrix/client/v3/sync?since=s1&timeout=soon", token="t")
    assert status == 400
    assert stack.client.running()  # none of that hurt the client-proxy
    req = urllib.request.Request(stack.url + "/_matrix/client/v3/sync", method="OPTIONS")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 204 and "Authorization" in resp.headers["Access-Control-Allow-Headers"]


def test_login_errors_and_token_handles(
    client_stack: Any, synapse: SynapseServer, person: tuple[str, str, str]
) -> None:
    localpart, password, user_id = person
    stack = client_stack(preset="1kbps")
    # Errors keep status and errcode.
    wrong = login_body(localpart, "wrong")
    via = http(stack.url, "POST", "/_matrix/client/v3/login", wrong)
    direct = http(synapse.url, "POST", "/_matrix/client/v3/login", wrong)
    assert (via[0], via[2]["errcode"]) == (direct[0], direct[2]["errcode"]) == (403, "M_FORBIDDEN")
    status, _, body = http(stack.url, "POST", "/_matrix/client/v3/login", login_body(localpart, password))
    assert status == 200 and body["user_id"] == user_id
    handle = body["access_token"]
    assert handle.startswith("lbwh_")  # the real token never crossed the radio
    # A stock client uses the handle like a token. On this compact link (1 kbit/s)
    # the login already bound the token to a slot as it was answered, so even the
    # first request names the slot only: the handle never crosses the radio.
    costs = []
    for _ in range(2):
        before = stack.radio_stats()
        status, _, who = http(stack.url, "GET", "/_matrix/client/v3/account/whoami", token=handle)
        assert status == 200 and who["user_id"] == user_id
        after = stack.radio_stats()
        assert after["tx"] == before["tx"] + 1
        costs.append(after["tx_bytes"] - before["tx_bytes"])
    assert costs[0] <= costs[1] + 2, costs  # binding the handle would add len(handle) + 4
    # Not a token at all: the homeserver's own answer, unchanged.
    via = http(stack.url, "GET", "/_matrix/client/v3/account/whoami", token="bogus")
    direct = http(synapse.url, "GET", "/_matrix/client/v3/account/whoami", token="bogus")
    assert via[0] == direct[0] == 401 and via[2] == direct[2]
    # Logout kills the handle.
    assert http(stack.url, "POST", "/_matrix/client/v3/logout", {}, token=handle)[0] == 200
    status, _, body = http(stack.url, "GET", "/_matrix/client/v3/account/whoami", token=handle)
    assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN"


def test_idle_incremental_syncs_cost_nothing_on_the_air(
    client_stack: Any, synapse: SynapseServer, person: tuple[str, str, str]
) -> None:
    localpart, password, user_id = person
    stack = client_stack(preset="1kbps")
    token = http(stack.url, "POST", "/_matrix/client/v3/login", login_body(localpart, password))[2][
        "access_token"
    ]
    room = http(stack.url, "POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat"}, token)[2][
        "room_id"
    ]
    f = urllib.parse.quote(FILTER)
    direct_token = _token_of(synapse, localpart, password)  # (a new device: before the first sync)
    first = http(stack.url, "GET", "/_matrix/client/v3/sync?filter=%s&timeout=0" % f, token=token)[2]
    since = first["next_batch"]
    # The client-proxy parks the next sync at the proxy right after delivering
    # this one (one request up, an empty ACK back); then the air is quiet.
    time.sleep(2.0)
    idle = stack.radio_stats()
    for _ in range(3):
        status, _, body = http(
            stack.url,
            "GET",
            "/_matrix/client/v3/sync?filter=%s&since=%s&timeout=1000" % (f, since),
            token=token,
        )
        assert status == 200 and body["next_batch"] == since
        assert not body.get("rooms", {}).get("join")
    assert stack.radio_stats() == idle  # three empty long-polls: not one byte on the air
    # News arrives on the parked request.
    status, _ = matrix_call(
        synapse.url,
        "PUT",
        "/_matrix/client/v3/rooms/%s/send/m.room.message/n1" % urllib.parse.quote(room),
        direct_token,
        {"msgtype": "m.text", "body": "news"},
    )
    assert status == 200
    status, _, body = http(
        stack.url, "GET", "/_matrix/client/v3/sync?filter=%s&since=%s&timeout=20000" % (f, since), token=token
    )
    assert status == 200 and body["next_batch"] != since
    events = body["rooms"]["join"][room]["timeline"]["events"]
    assert [e["content"]["body"] for e in events] == ["news"]


def test_homeserver_down_is_503_with_retry_after(
    client_stack: Any, fault_injector: FaultInjector, person: tuple[str, str, str]
) -> None:
    localpart, password, _ = person
    stack = client_stack(preset="fast", homeserver_url=fault_injector.url)
    token = http(stack.url, "POST", "/_matrix/client/v3/login", login_body(localpart, password))[2][
        "access_token"
    ]
    fault_injector.set("down")
    status, headers, body = http(stack.url, "GET", "/_matrix/client/v3/account/whoami", token=token)
    assert status == 503 and int(headers["Retry-After"]) > 0
    assert body["errcode"] == "M_UNKNOWN" and "homeserver" in body["error"]
    fault_injector.set("pass")
    assert http(stack.url, "GET", "/_matrix/client/v3/account/whoami", token=token)[0] == 200


def test_dead_link_is_504_not_a_hang(client_stack: Any, person: tuple[str, str, str]) -> None:
    localpart, password, _ = person
    stack = client_stack(preset="fast", request_timeout=4.0, metrics=True)
    token = http(stack.url, "POST", "/_matrix/client/v3/login", login_body(localpart, password))[2][
        "access_token"
    ]
    stack.relay.stop()  # the radio is gone
    t0 = time.monotonic()
    status, _, body = http(stack.url, "GET", "/_matrix/client/v3/account/whoami", token=token, timeout=30)
    assert status == 504 and body["errcode"] == "M_UNKNOWN" and body["error"].startswith("lowbw:")
    assert time.monotonic() - t0 < 20
    # /metrics says why (tests/proxy/test_clientproxy_metrics.py has the rest).
    from tests.proxy.metricsutil import scrape, value

    m = scrape(stack.metrics_url)
    p = "lowbw_clientproxy_"
    assert value(m, p + "requests_failed_total", reason="request_timeout") == 1
    assert value(m, p + "http_requests_total", method="GET", route="account", status="504") == 1
    assert value(m, p + "session_up") == 0 and value(m, p + "session_resets_total") == 1


def test_proxy_restart_mid_sync(
    client_stack: Any, synapse: SynapseServer, person: tuple[str, str, str]
) -> None:
    localpart, password, user_id = person
    stack = client_stack(preset="fast")
    token = http(stack.url, "POST", "/_matrix/client/v3/login", login_body(localpart, password))[2][
        "access_token"
    ]
    room = http(stack.url, "POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat"}, token)[2][
        "room_id"
    ]
    since = http(stack.url, "GET", "/_matrix/client/v3/sync?timeout=0", token=token)[2]["next_batch"]
    result: list[Any] = []

    def long_poll() -> None:
        deadline = time.monotonic() + 60
        s = since
        while time.monotonic() < deadline:
            status, _, body = http(
                stack.url, "GET", "/_matrix/client/v3/sync?since=%s&timeout=5000" % s, token=token, timeout=90
            )
            if status != 200:
                result.append(("error", status, body))
                return
            events = body.get("rooms", {}).get("join", {}).get(room, {}).get("timeline", {}).get("events", [])
            if events:
                result.append([e["content"].get("body") for e in events])
                return
            s = body["next_batch"]

    poller = threading.Thread(target=long_poll)
    poller.start()
    time.sleep(1.5)
    stack.restart_proxy()  # graceful: parked syncs end with Session-End, the client-proxy handshakes again
    status, _ = matrix_call(
        synapse.url,
        "PUT",
        "/_matrix/client/v3/rooms/%s/send/m.room.message/r1" % urllib.parse.quote(room),
        _token_of(synapse, localpart, password),
        {"msgtype": "m.text", "body": "after restart"},
    )
    assert status == 200
    poller.join(90)
    assert result == [["after restart"]]
    assert stack.radio_stats()["handshakes"] >= 2


def _token_of(synapse: SynapseServer, localpart: str, password: str) -> str:
    status, _, body = http(synapse.url, "POST", "/_matrix/client/v3/login", login_body(localpart, password))
    assert status == 200
    token: str = body["access_token"]
    return token


def test_answer_mapping_of_rate_limits() -> None:
    """429 and its Retry-After survive the trip (a fault Synapse will not produce on demand here)."""
    from lowbw.clientproxy.app import ClientProxy
    from lowbw.clientproxy.config import ClientProxyConfig
    from lowbw.compact.codec import BodyCodec
    from lowbw.wire import keys

    cfg = ClientProxyConfig(
        path=None,  # type: ignore[arg-type]
        name="t",
        listen="127.0.0.1:0",
        proxy_host="127.0.0.1",
        proxy_port=9,
        proxy_public_key=bytes(32),
        private_key=bytes(32),
    )
    cp = ClientProxy(cfg)
    payload, cf = BodyCodec(keys.TABLE_LOWBW_V1).encode({"errcode": "M_LIMIT_EXCEEDED", "error": "Too many"})
    msg = Message(code=Code.TOO_MANY_REQUESTS, payload=payload, content_format=cf)
    msg.opt.max_age = 7
    answer = cp._answer(msg)
    assert (answer.status, answer.retry_after) == (429, 7)
    assert answer.body == {"errcode": "M_LIMIT_EXCEEDED", "error": "Too many"}
    resp = answer.response()
    assert resp.status == 429 and resp.headers["Retry-After"] == "7"
    # An answer that cannot be read is a 502, not a crash.
    from lowbw.clientproxy.app import LinkFailed

    bad = Message(code=Code.CONTENT, payload=b"\xff\xff", content_format=60)
    with pytest.raises(LinkFailed) as info:
        cp._answer(bad)
    assert info.value.http_status == 502


def test_long_bodies_go_block_wise_both_ways(
    client_stack: Any, synapse: SynapseServer, person: tuple[str, str, str]
) -> None:
    """A 2 KB message (incompressible) up, and back in /messages, over 1024-byte radio frames."""
    import base64
    import os

    localpart, password, _ = person
    stack = client_stack(preset="1kbps")
    token = http(stack.url, "POST", "/_matrix/client/v3/login", login_body(localpart, password))[2][
        "access_token"
    ]
    room = http(stack.url, "POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat"}, token)[2][
        "room_id"
    ]
    text = base64.b64encode(os.urandom(1536)).decode()
    before = stack.radio_stats()
    status, _, body = http(
        stack.url,
        "PUT",
        "/_matrix/client/v3/rooms/%s/send/m.room.message/long1" % urllib.parse.quote(room),
        {"msgtype": "m.text", "body": text},
        token,
    )
    assert status == 200 and body["event_id"].startswith("$")
    sent = stack.radio_stats()
    assert sent["tx"] - before["tx"] >= 4  # 2 KB in blocks of 512 B
    assert sent["tx_bytes"] - before["tx_bytes"] < len(text) + 400
    status, _, page = http(
        stack.url,
        "GET",
        "/_matrix/client/v3/rooms/%s/messages?dir=b&limit=1" % urllib.parse.quote(room),
        token=token,
    )
    assert status == 200 and page["chunk"][0]["content"]["body"] == text
    assert stack.radio_stats()["rx"] - sent["rx"] >= 4


# -- the compact link profile (enroll-client --profile compact) ----------------------


def air(pcap: Any) -> tuple[list[bytes], list[bytes]]:
    """(up, down) datagrams the radio delivered, in order (radio_sim relay --pcap)."""
    from radio_sim.observe import SERVER_IP
    from tests.radio_sim.pcapread import read_pcap

    _, packets = read_pcap(str(pcap))
    assert all(p.ip_ok and p.udp_ok for p in packets)
    return [p.payload for p in packets if p.dst == SERVER_IP], [
        p.payload for p in packets if p.src == SERVER_IP
    ]


def test_compact_client_proxy_through_the_real_proxy(
    client_stack: Any, synapse: SynapseServer, person: tuple[str, str, str], tmp_path: Any
) -> None:
    """A client-proxy enrolled for a 1000 bit/s radio gets the compact profile by
    default: KK, compact frames, rule 3 on the air, and the client sees no difference."""
    from lowbw.compact import headers
    from lowbw.wire import frames

    localpart, password, user_id = person
    pcap = tmp_path / "air.pcap"
    stack = client_stack(preset="1kbps", relay_args=("--pcap", str(pcap)))
    assert 'profile = "compact"' in stack.client_config.read_text()
    status, _, body = http(stack.url, "POST", "/_matrix/client/v3/login", login_body(localpart, password))
    assert status == 200 and body["user_id"] == user_id
    token = body["access_token"]
    for _ in range(2):
        status, _, body = http(stack.url, "GET", "/_matrix/client/v3/account/whoami", token=token)
        assert status == 200 and body["user_id"] == user_id
    status, _, body = http(
        stack.url, "POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat"}, token
    )
    assert status == 200
    room = body["room_id"]
    path = "/_matrix/client/v3/rooms/%s/send/m.room.message/c1" % urllib.parse.quote(room)
    status, _, body = http(stack.url, "PUT", path, {"msgtype": "m.text", "body": "compact"}, token)
    assert status == 200 and body["event_id"].startswith("$")
    # The message is in the room, as Synapse itself tells it.
    direct = _token_of(synapse, localpart, password)
    status, msgs = matrix_call(
        synapse.url,
        "GET",
        "/_matrix/client/v3/rooms/%s/messages" % urllib.parse.quote(room),
        direct,
        query={"dir": "b", "limit": 10},
    )
    assert status == 200 and [
        e["content"]["body"] for e in msgs["chunk"] if e["type"] == "m.room.message"
    ] == ["compact"]
    time.sleep(0.5)  # the pcap is written at delivery
    up, down = air(pcap)
    # One KK handshake, answered; never IK.
    assert up[0][0] == frames.HS_KK1 and down[0][0] == frames.HS_KK2
    assert not any(d[0] in (frames.HS_IK1, frames.HS_IK2) for d in up + down)
    assert stack.radio_stats()["handshakes"] == 1
    # Then compact frames only, rule 3 both ways (the requests carry a 1-byte token).
    rest_up, rest_down = [d for d in up if d[0] != frames.HS_KK1], down[1:]
    assert rest_up and rest_down
    assert all(frames.kind_of(d) == frames.KIND_COMPACT for d in rest_up + rest_down)
    rule = lambda d: (d[0] >> 4) & 3  # noqa: E731
    assert sum(rule(d) == headers.RULE_CLIENT for d in rest_up) >= 4
    assert any(rule(d) == headers.RULE_CLIENT for d in rest_down)
    assert not any(rule(d) in (frames.RULE_READING, frames.RULE_CODE) for d in rest_up + rest_down)


def test_compact_client_proxy_with_a_standard_record_fails_cleanly(
    client_stack: Any, person: tuple[str, str, str], tmp_path: Any
) -> None:
    """Its config says compact, the proxy's registry standard: the KK message 1
    names no compact key, so nothing answers; the client gets 504, nothing crashes."""
    from lowbw.wire import frames

    localpart, password, _ = person
    pcap = tmp_path / "air.pcap"
    stack = client_stack(
        preset="fast",
        request_timeout=4.0,
        enroll_args=("--profile", "standard"),
        relay_args=("--pcap", str(pcap)),
        config_replace=(('profile = "standard"', 'profile = "compact"'),),
    )
    t0 = time.monotonic()
    status, _, body = http(
        stack.url, "POST", "/_matrix/client/v3/login", login_body(localpart, password), timeout=30
    )
    assert status == 504 and body["errcode"] == "M_UNKNOWN" and body["error"].startswith("lowbw:")
    assert time.monotonic() - t0 < 20
    assert stack.client.running() and stack.proxy.running()
    stats = stack.radio_stats()
    assert stats["handshakes"] >= 1 and stats["rx"] == 0
    up, down = air(pcap)
    assert up and all(d[0] == frames.HS_KK1 for d in up) and down == []
    # The proxy stays well: another request is refused the same way, quickly.
    status, _, _ = http(stack.url, "GET", "/_matrix/client/v3/account/whoami", token="t", timeout=30)
    assert status == 504 and stack.client.running() and stack.proxy.running()
