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

from lowbw.compact import dictionary, headers
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
from lowbw.wire import coap, crypto, frames, handshake, keys
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
    assert handle.startswith("lbwh_") and len(handle) == 17  # lbwh_ + 12 characters (72 bits)
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


# -- the compact link profile on client sessions (lowbw.compact.headers, rule 3) --------


class CompactClientWire(WireDevice):
    """A client-proxy enrolled ``compact``, built from wire pieces as the real one
    (lowbw.clientproxy.link) is: Noise KK, compact frames, rule 3 up (``seal_up``),
    answers found by token (``TokenMids``), a 1-byte token on every request."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, compact=True, **kwargs)
        self.tokens = headers.TokenMids()
        self.next_token = 1
        self.received: list[bytes] = []

    def request(self, code: int, path: list[str], payload: bytes = b"", **kwargs: Any) -> Any:
        if not kwargs.get("token"):
            kwargs["token"] = bytes([self.next_token])
            self.next_token = self.next_token % 255 + 1
        return super().request(code, path, payload, **kwargs)

    def recv(self, timeout: float | None = None) -> bytes:
        data = super().recv(timeout)
        self.received.append(data)
        return data

    def seal(self, msg: Any) -> bytes:
        plain = coap.encode(msg)
        self.tokens.sent(plain)
        return headers.seal_up(self.session, plain)

    def open(self, datagram: bytes) -> Any:
        return coap.decode(self.tokens.open_down(self.session, datagram))


def enrolled_compact_wire(
    proxy_config_path: str, proxy_factory: Any, profile: str
) -> tuple[Client, Any, Any]:
    cfg = load(proxy_config_path)
    name = "cp%d" % int(time.time() * 1000 % 100000)
    result = enroll_client(cfg, name, out=cfg.dir / ("%s.client.toml" % name), profile=profile)
    proxy = proxy_factory()
    from lowbw.clientproxy.config import load as load_client

    ccfg = load_client(result.config_path)
    assert ccfg.profile == result.record.profile == profile
    wire = CompactClientWire(ccfg.private_key, ccfg.proxy_public_key, ("127.0.0.1", proxy.port), caps=CAPS)
    return Client(wire), proxy, cfg


def rule(dgram: bytes) -> int:
    assert frames.kind_of(dgram) == frames.KIND_COMPACT
    return (dgram[0] >> 4) & 3


def test_a_compact_client_session_through_the_real_proxy(
    proxy_config_path: str, proxy_factory: Any, matrix_user: MatrixUser
) -> None:
    client, proxy, cfg = enrolled_compact_wire(proxy_config_path, proxy_factory, "compact")
    wire = client.wire
    try:
        public_key = crypto.x25519_base(wire.private_key)
        with Registry(cfg.proxy.registry) as reg:
            rec = reg.device_by_key(public_key)
            assert rec is not None and rec.profile == "compact" and rec.permissions == ["client"]
        # The login rides KK message 1 (the key named by its 2-byte id); KK message 2 answers it.
        handle = client.login(matrix_user)
        assert wire.sent[0][0] == frames.HS_KK1 and wire.sent[0][1:3] == handshake.key_id(public_key)
        assert wire.received[0][0] == frames.HS_KK2
        assert wire.session.compact and wire.agreed_caps is not None
        assert wire.agreed_caps & handshake.CAP_COMPACT and wire.agreed_caps & handshake.CAP_DICT_V1
        # Requests in the session: rule 3 up, and their answers rule 3 down.
        msg = client.request(coap.GET, ["wh"], options=[bind(handle)])
        answer, body = client.call(msg)
        assert answer.code == coap.CONTENT and body["user_id"] == matrix_user.user_id
        assert rule(wire.sent[-1]) == headers.RULE_CLIENT
        # 2 bytes of CoAP header implied, 2 more for Bearer-Bind renumbered (option header 1, not 3).
        assert len(wire.sent[-1]) == 1 + 1 + len(coap.encode(msg)) - 4 + 8
        for _ in range(3):
            n = len(wire.received)
            msg = client.request(coap.GET, ["wh"], options=[(BEARER_SLOT_OPTION, b"")])
            answer, body = client.call(msg)
            assert answer.code == coap.CONTENT and body["user_id"] == matrix_user.user_id
            assert answer.mid == msg.mid and answer.token == msg.token
            assert rule(wire.sent[-1]) == headers.RULE_CLIENT
            down = wire.received[n:]
            assert all(frames.kind_of(d) == frames.KIND_COMPACT for d in down)
        assert any(rule(d) == headers.RULE_CLIENT for d in wire.received[1:])
        # A message ID far from the last: whole (rule 0), and the proxy follows it.
        wire.next_mid += 1000
        msg = client.request(coap.GET, ["wh"], options=[(BEARER_SLOT_OPTION, b"")])
        answer, body = client.call(msg)
        assert rule(wire.sent[-1]) == frames.RULE_RAW and body["user_id"] == matrix_user.user_id
        answer, body = client.call(client.request(coap.GET, ["wh"], options=[(BEARER_SLOT_OPTION, b"")]))
        assert rule(wire.sent[-1]) == headers.RULE_CLIENT and body["user_id"] == matrix_user.user_id
        counts = proxy.run(lambda: dict(proxy.server.table.handshake_counts))
        assert counts.get(("kk", "ok")) == 1 and not counts.get(("ik", "ok"))
        # Rule 1 or 2 (a device's) on this client session: refused, no answer, session kept.
        wire.send(bytes(wire.session.seal(bytes([wire.next_mid & 0xFF, coap.GET]) + b"\xb2wh", rule=2)))
        wire.expect_silence()
        answer, body = client.call(client.request(coap.GET, ["wh"], options=[(BEARER_SLOT_OPTION, b"")]))
        assert body["user_id"] == matrix_user.user_id
        # The same key over IK still gets in, with a standard session (docs/client-proxy.md).
        ik = WireDevice(wire.private_key, wire.proxy_public_key, wire.proxy_addr, caps=CAPS)
        try:
            answer, body = Client(ik).call(Client(ik).request(coap.GET, ["wh"], options=[bind(handle)]))
            assert body["user_id"] == matrix_user.user_id and not ik.session.compact
        finally:
            ik.close()
    finally:
        wire.close()


def test_a_compact_client_enrolled_standard_gets_no_session(
    proxy_config_path: str, proxy_factory: Any, matrix_user: MatrixUser
) -> None:
    """The client-proxy's config says compact, its registry record standard: its KK
    message 1 names no compact key, so the proxy refuses it (counted) and answers nothing."""
    client, proxy, cfg = enrolled_compact_wire(proxy_config_path, proxy_factory, "standard")
    wire = client.wire
    try:
        login = client.request(coap.POST, ["li"], {"type": "m.login.password"})
        kk1, _ = wire.ik_datagram(login)
        assert kk1[0] == frames.HS_KK1
        wire.send(kk1)
        wire.expect_silence()
        counts = proxy.run(lambda: dict(proxy.server.table.handshake_counts))
        assert counts.get(("kk", "auth_failed")) == 1 and not counts.get(("kk", "ok"))
        rejects = proxy.run(lambda: dict(proxy.server.table.rejects.totals))
        assert rejects.get("handshake that did not authenticate") == 1
        assert proxy.run(lambda: len(proxy.server.table.by_device)) == 0
        # The same key over IK (the standard profile it is enrolled for) still gets in.
        ik = WireDevice(wire.private_key, wire.proxy_public_key, wire.proxy_addr, caps=CAPS)
        try:
            assert Client(ik).login(matrix_user).startswith("lbwh_")
            assert not ik.session.compact
        finally:
            ik.close()
    finally:
        wire.close()
