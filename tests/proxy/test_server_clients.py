"""The proxy's side of client sessions (lowbw.proxy.clients), spoken to with raw wire pieces.

A real proxy (in-process thread), the session's real Synapse, a client-proxy key
enrolled with ``enroll_client``, and a ``WireDevice`` that builds every CoAP
message by hand, so each option and body can be malformed on purpose.
"""

from __future__ import annotations

import time
import urllib.parse
import zlib
from typing import Any

import pytest

from lowbw.compact import dictionary
from lowbw.compact.codec import CF_CBOR_DEFLATE_V1, MAX_BODY, BodyCodec
from lowbw.compact.refs import ClientRefs
from lowbw.proxy.clients import (
    BEARER_BIND_OPTION,
    BEARER_SLOT_OPTION,
    BIND_REQUIRED_OPTION,
    REFS_KNOWN_OPTION,
    SESSION_END_OPTION,
)
from lowbw.proxy.config import load
from lowbw.proxy.enroll import enroll_client
from lowbw.proxy.registry import Registry
from lowbw.wire import coap, handshake, keys
from tests.proxy.conftest import MatrixUser, WireDevice, matrix_call

CAPS = keys.TABLE_LOWBW_V1 | handshake.CAP_DICT_V1


class Client:
    """A WireDevice with the client session's codec and identifier table."""

    def __init__(self, wire: WireDevice) -> None:
        self.wire = wire
        self.refs = ClientRefs()
        self.codec = BodyCodec(keys.TABLE_LOWBW_V1, 1, self.refs)

    def request(
        self,
        code: int,
        path: list[str],
        body: Any = None,
        *,
        query: list[str] | None = None,
        options: list[tuple[int, bytes]] | None = None,
    ) -> Any:
        options = list(options or [])
        if not any(n == REFS_KNOWN_OPTION for n, _ in options):
            # As the client-proxy does: report when the table grew (the first
            # report of a session, 0, turns references on).
            report = self.refs.to_report()
            if report is not None:
                options.append((REFS_KNOWN_OPTION, coap.uint_encode(report)))
        msg = self.wire.request(code, path, query=query, options=options)
        if body is not None:
            payload, cf = self.codec.encode(body)
            msg.payload = payload
            if cf != 60:
                coap.set_content_format(msg, cf)
        return msg

    def call(self, msg: Any, timeout: float = 10.0) -> tuple[Any, Any]:
        answer = self.wire.exchange(msg, timeout)
        body = None
        if answer.payload and coap.content_format(answer) == 42:
            body = bytes(answer.payload)
        elif answer.payload:
            cf = coap.content_format(answer)
            body = self.codec.decode(answer.payload, cf)
        return answer, body

    def login(self, user: MatrixUser) -> str:
        localpart = user.user_id[1:].split(":")[0]
        answer, body = self.call(
            self.request(
                coap.POST,
                ["li"],
                {
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": localpart},
                    "password": user.password,
                },
            )
        )
        assert answer.code == coap.CHANGED, body
        token: str = body["access_token"]
        return token


@pytest.fixture
def client(proxy_config_path: str, proxy_factory: Any) -> Any:
    cfg = load(proxy_config_path)
    result = enroll_client(cfg, "cp%d" % int(time.time() * 1000 % 100000), out=cfg.dir / "cp.client.toml")
    proxy = proxy_factory()
    from lowbw.clientproxy.config import load as load_client

    ccfg = load_client(result.config_path)
    wire = WireDevice(ccfg.private_key, ccfg.proxy_public_key, ("127.0.0.1", proxy.port), caps=CAPS)
    c = Client(wire)
    c.proxy = proxy  # type: ignore[attr-defined]
    c.name = result.record.name  # type: ignore[attr-defined]
    c.registry_path = cfg.proxy.registry  # type: ignore[attr-defined]
    yield c
    wire.close()


def bind(token: str, slot: int = 0) -> tuple[int, bytes]:
    return (BEARER_BIND_OPTION, bytes([slot]) + token.encode())


def test_login_answers_a_handle_that_stands_for_the_token(client: Client, matrix_user: MatrixUser) -> None:
    handle = client.login(matrix_user)
    assert client.wire.agreed_caps is not None and client.wire.agreed_caps & handshake.CAP_DICT_V1
    assert handle.startswith("lbwh_") and len(handle) == 25
    with Registry(client.registry_path) as reg:  # type: ignore[attr-defined]
        real = reg.client_token(client.name, handle)  # type: ignore[attr-defined]
    assert real is not None and real != handle
    # The handle binds the real token: the homeserver sees the user.
    answer, body = client.call(client.request(coap.GET, ["wh"], options=[bind(handle)]))
    assert answer.code == coap.CONTENT and body["user_id"] == matrix_user.user_id
    # Later requests name the slot only.
    slot = client.request(coap.GET, ["wh"], options=[(BEARER_SLOT_OPTION, b"")])
    answer, body = client.call(slot)
    assert body["user_id"] == matrix_user.user_id
    assert len(coap.encode(slot)) < 12
    # Logout forgets the handle: binding it again reaches the homeserver as an unknown token.
    answer, _ = client.call(client.request(coap.POST, ["lo"], {}, options=[(BEARER_SLOT_OPTION, b"")]))
    assert answer.code == coap.CHANGED
    with Registry(client.registry_path) as reg:  # type: ignore[attr-defined]
        assert reg.client_token(client.name, handle) is None  # type: ignore[attr-defined]
    answer, body = client.call(client.request(coap.GET, ["wh"], options=[(BEARER_SLOT_OPTION, b"")]))
    assert answer.code == coap.UNAUTHORIZED and answer.get(BIND_REQUIRED_OPTION)
    answer, body = client.call(client.request(coap.GET, ["wh"], options=[bind(handle)]))
    assert answer.code == coap.UNAUTHORIZED and body["errcode"] == "M_UNKNOWN_TOKEN"
    assert not answer.get(BIND_REQUIRED_OPTION)


def test_a_token_from_elsewhere_binds_as_itself(client: Client, matrix_user: MatrixUser) -> None:
    answer, body = client.call(client.request(coap.GET, ["wh"], options=[bind(matrix_user.access_token, 3)]))
    assert body["user_id"] == matrix_user.user_id
    answer, body = client.call(client.request(coap.GET, ["wh"], options=[(BEARER_SLOT_OPTION, b"\x03")]))
    assert body["user_id"] == matrix_user.user_id


def test_homeserver_errors_keep_their_meaning(client: Client, matrix_user: MatrixUser) -> None:
    answer, body = client.call(client.request(coap.GET, ["wh"], options=[bind("syt_not_a_token")]))
    assert answer.code == coap.UNAUTHORIZED and body["errcode"] == "M_UNKNOWN_TOKEN"
    answer, body = client.call(
        client.request(
            coap.POST,
            ["li"],
            {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "x"}, "password": "y"},
        )
    )
    assert answer.code == coap.FORBIDDEN and body["errcode"] == "M_FORBIDDEN"
    room = "!nowhere:lowbw.test"
    answer, body = client.call(
        client.request(coap.GET, ["st", room], options=[bind(matrix_user.access_token)])
    )
    # 403 or 404 as Synapse says; the status crosses exactly (HTTP-Status when the code is not exact).
    assert answer.code in (coap.FORBIDDEN, coap.NOT_FOUND) and body["errcode"] in (
        "M_FORBIDDEN",
        "M_NOT_FOUND",
    )


@pytest.mark.parametrize(
    "options",
    [
        [(BEARER_BIND_OPTION, b"")],
        [(BEARER_BIND_OPTION, b"\x00")],
        [(BEARER_BIND_OPTION, b"\x10abc")],  # slot 16
        [(BEARER_BIND_OPTION, b"\x00\xff\xfe")],  # not UTF-8
        [(BEARER_BIND_OPTION, b"\x00a"), (BEARER_BIND_OPTION, b"\x01b")],
        [(BEARER_BIND_OPTION, b"\x00ab\r\ncd")],  # control characters: never an HTTP header
        [(BEARER_BIND_OPTION, b"\x00ab cd")],
        [(BEARER_SLOT_OPTION, b"\x00\x01")],
        [(REFS_KNOWN_OPTION, b"\x05")],  # more than the table holds
        [(REFS_KNOWN_OPTION, b"\x01\x02\x03")],
    ],
)
def test_bad_session_options_are_refused(client: Client, options: list[tuple[int, bytes]]) -> None:
    answer, body = client.call(client.request(coap.GET, ["wh"], options=options))
    assert answer.code == coap.BAD_REQUEST, body
    assert isinstance(body["errcode"], str)


def test_unbound_slot_asks_for_a_bind(client: Client) -> None:
    answer, body = client.call(client.request(coap.GET, ["wh"], options=[(BEARER_SLOT_OPTION, b"\x07")]))
    assert answer.code == coap.UNAUTHORIZED and answer.get(BIND_REQUIRED_OPTION) == [b""]


@pytest.mark.parametrize(
    "path", [["wh", "\x01"], ["rooms", "v3", "\x0199", "state"], ["rooms", "v3", "\x0100", "x"]]
)
def test_bad_identifier_references(client: Client, path: list[str]) -> None:
    answer, _ = client.call(client.request(coap.GET, path))
    assert answer.code in (coap.BAD_REQUEST, coap.NOT_FOUND)


def test_bad_bodies(client: Client, matrix_user: MatrixUser) -> None:
    auth = [bind(matrix_user.access_token)]
    cases: list[tuple[bytes, int | None, int]] = [
        (b"\xff\x00", None, coap.BAD_REQUEST),  # garbage CBOR
        (b"\xa1\x01", None, coap.BAD_REQUEST),  # truncated
        (b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff", None, coap.REQUEST_ENTITY_TOO_LARGE),  # oversized length
        (b"{}", 50, coap.UNSUPPORTED_CONTENT_FORMAT),  # JSON is not carried
        (b"\x00\x01", CF_CBOR_DEFLATE_V1, coap.BAD_REQUEST),  # not DEFLATE
    ]
    comp = zlib.compressobj(9, zlib.DEFLATED, -15, zdict=dictionary.dictionary(1))
    bomb = comp.compress(b"\x00" * (MAX_BODY + 10)) + comp.flush()
    cases.append((bomb, CF_CBOR_DEFLATE_V1, coap.REQUEST_ENTITY_TOO_LARGE))
    for payload, cf, code in cases:
        msg = client.request(coap.POST, ["fi", matrix_user.user_id], options=auth)
        msg.payload = payload
        if cf is not None:
            coap.set_content_format(msg, cf)
        answer, body = client.call(msg)
        assert answer.code == code, (payload[:8], body)
    answer, body = client.call(client.request(coap.GET, ["wh"], query=["access_token=abc"]))
    assert answer.code == coap.BAD_REQUEST


def test_parked_sync_is_silent_until_there_is_news(client: Client, matrix_user: MatrixUser) -> None:
    handle = client.login(matrix_user)
    answer, body = client.call(
        client.request(coap.POST, ["cr"], {"preset": "private_chat"}, options=[bind(handle)])
    )
    room = body["room_id"]
    slot = [(BEARER_SLOT_OPTION, b"")]
    answer, body = client.call(client.request(coap.GET, ["~"], query=["timeout=0"], options=slot))
    since = body["next_batch"]
    assert client.refs.known > 0
    park = client.request(coap.GET, ["~"], query=["since=" + client.refs.refer_text(since)], options=slot)
    assert park.get(REFS_KNOWN_OPTION)  # the identifiers it holds now: references may come back
    w = client.wire
    w.send(w.seal(park))
    t0 = time.monotonic()
    ack = w.open(w.recv(5.0))
    assert ack.mtype == coap.ACK and ack.code == coap.EMPTY and ack.mid == park.mid
    assert time.monotonic() - t0 < 3.0  # acknowledged early: other requests may go
    w.expect_silence(2.5)  # nothing happens, nothing on the air
    status, _ = matrix_call(
        client.proxy.settings.homeserver_url,  # type: ignore[attr-defined]
        "PUT",
        "/_matrix/client/v3/rooms/%s/send/m.room.message/t1" % urllib.parse.quote(room),
        matrix_user.access_token,
        {"msgtype": "m.text", "body": "news"},
    )
    assert status == 200
    news = w.open(w.recv(15.0))
    assert news.mtype == coap.CON and news.code == coap.CONTENT
    w.send(w.seal(coap.make_ack(news)))
    body = client.codec.decode(news.payload, coap.content_format(news))
    events = body["rooms"]["join"][room]["timeline"]["events"]
    assert [e["content"]["body"] for e in events] == ["news"]
    # The room ID went as a reference (confirmed above), so the answer is small.
    assert len(news.payload) < 400


def test_graceful_stop_ends_parked_syncs_and_keeps_no_client_session(
    client: Client, matrix_user: MatrixUser
) -> None:
    handle = client.login(matrix_user)
    answer, body = client.call(client.request(coap.GET, ["~"], query=["timeout=0"], options=[bind(handle)]))
    park = client.request(
        coap.GET, ["~"], query=["since=" + body["next_batch"]], options=[(BEARER_SLOT_OPTION, b"")]
    )
    w = client.wire
    w.send(w.seal(park))
    assert w.open(w.recv(5.0)).code == coap.EMPTY
    proxy = client.proxy  # type: ignore[attr-defined]
    saved: list[int] = []
    import threading

    stopper = threading.Thread(target=lambda: saved.append(proxy.stop(save_sessions=True)))
    stopper.start()
    end = w.open(w.recv(10.0))
    w.send(w.seal(coap.make_ack(end)))
    stopper.join(30)
    assert end.code == coap.SERVICE_UNAVAILABLE and end.get(SESSION_END_OPTION) == [b""]
    assert saved == [0]


def test_transient_binding_touches_no_slot(client: Client, matrix_user: MatrixUser) -> None:
    answer, body = client.call(
        client.request(coap.GET, ["wh"], options=[bind(matrix_user.access_token, 0xFF)])
    )
    assert answer.code == coap.CONTENT and body["user_id"] == matrix_user.user_id
    answer, _ = client.call(client.request(coap.GET, ["wh"], options=[(BEARER_SLOT_OPTION, b"")]))
    assert answer.code == coap.UNAUTHORIZED and answer.get(BIND_REQUIRED_OPTION)


def test_absurd_numbers_are_clear_errors(client: Client, matrix_user: MatrixUser) -> None:
    auth = [bind(matrix_user.access_token)]
    answer, body = client.call(client.request(coap.GET, ["~"], query=["timeout=" + "9" * 240], options=auth))
    assert answer.code == coap.BAD_REQUEST and body["errcode"] == "M_INVALID_PARAM"
    answer, body = client.call(client.request(coap.GET, ["st", "\x01" + "9" * 250], options=auth))
    assert answer.code == coap.BAD_REQUEST


def test_a_request_repeated_in_a_new_handshake_is_answered_not_run_again(
    client: Client, matrix_user: MatrixUser, synapse: Any
) -> None:
    """The answer to a POST that rode IK message 1 was lost; the same request rides a new handshake."""

    def rooms() -> list[str]:
        status, body = matrix_call(
            synapse.url, "GET", "/_matrix/client/v3/joined_rooms", matrix_user.access_token
        )
        assert status == 200
        return list(body["joined_rooms"])

    before = rooms()
    msg = client.request(
        coap.POST, ["cr"], {"preset": "private_chat"}, options=[bind(matrix_user.access_token)]
    )
    w = client.wire
    answers = []
    for _ in range(2):
        dgram, init = w.ik_datagram(msg)  # a fresh ephemeral each time: a new handshake
        w.send(dgram)
        _session, _caps, response = init.finish(w.recv(10.0))
        answers.append(response)
    assert answers[0] == answers[1] and coap.decode(answers[0]).code == coap.CHANGED
    assert len(rooms()) == len(before) + 1  # one room, not two
