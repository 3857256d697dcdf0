"""A client key can only spend its own share (issue 11): paths, decompression work,
long polls, and a closed session ending everything of it. Real proxy (in-process),
real Synapse, real UDP; the client session is spoken by hand (``Client``)."""

from __future__ import annotations

import time
import urllib.parse
import zlib
from typing import Any

import pytest

from lowbw.compact import dictionary
from lowbw.compact.codec import CF_CBOR_DEFLATE_V1
from lowbw.proxy.clients import BEARER_SLOT_OPTION
from lowbw.proxy.config import load
from lowbw.proxy.enroll import enroll_client
from lowbw.proxy.limits import Limits
from lowbw.wire import coap

from .conftest import MatrixUser, WireDevice, matrix_call
from .test_server_clients import CAPS, Client, bind


def make_client(proxy_config_path: str, proxy_factory: Any, **overrides: Any) -> Client:
    cfg = load(proxy_config_path)
    result = enroll_client(cfg, "cc%d" % int(time.time() * 1000 % 100000), out=cfg.dir / "cc.client.toml")
    proxy = proxy_factory(**overrides)
    from lowbw.clientproxy.config import load as load_client

    ccfg = load_client(result.config_path)
    wire = WireDevice(ccfg.private_key, ccfg.proxy_public_key, ("127.0.0.1", proxy.port), caps=CAPS)
    c = Client(wire)
    c.proxy = proxy  # type: ignore[attr-defined]
    c.name = result.record.name  # type: ignore[attr-defined]
    return c


@pytest.fixture
def client(proxy_config_path: str, proxy_factory: Any) -> Any:
    c = make_client(proxy_config_path, proxy_factory)
    yield c
    c.wire.close()


@pytest.mark.parametrize(
    "path",
    [
        ["_synapse", "admin", "v1", "server_version"],
        ["_synapse", "admin", "v1", "register"],
        ["_matrix", "key", "v2", "server"],
        ["_matrix", "federation", "v1", "version"],
        ["_matrix", "media", "v3", "config"],
        ["_matrix", "clientx", "versions"],
        ["_matrix"],
    ],
)
def test_a_client_session_reaches_only_the_client_server_api(client: Client, path: list[str]) -> None:
    answer, body = client.call(client.request(coap.GET, path))
    assert answer.code == coap.FORBIDDEN
    assert body["errcode"] == "M_FORBIDDEN"
    # The client-server API itself is still carried.
    answer, body = client.call(client.request(coap.GET, ["_matrix", "client", "versions"]))
    assert answer.code == coap.CONTENT and "versions" in body


def test_decompression_work_is_bounded_in_items(client: Client, matrix_user: MatrixUser) -> None:
    # ~1 KB on the air, a million CBOR items once inflated.
    items = 1_000_000
    raw = b"\x9a" + items.to_bytes(4, "big") + b"\x00" * items
    comp = zlib.compressobj(9, zlib.DEFLATED, -15, zdict=dictionary.dictionary(1))
    bomb = comp.compress(raw) + comp.flush()
    assert len(bomb) < 1100
    msg = client.request(coap.POST, ["fi", matrix_user.user_id], options=[bind(matrix_user.access_token)])
    msg.payload = bomb
    coap.set_content_format(msg, CF_CBOR_DEFLATE_V1)
    answer, body = client.call(msg)
    assert answer.code == coap.REQUEST_ENTITY_TOO_LARGE, body
    assert body["errcode"] == "M_NOT_JSON"


def test_decompression_work_is_bounded_in_bytes(
    proxy_config_path: str, proxy_factory: Any, matrix_user
) -> None:
    client = make_client(proxy_config_path, proxy_factory, limits=Limits(decompress_max_bytes=10_000))
    raw = b"\x5a" + (50_000).to_bytes(4, "big") + b"\x00" * 50_000  # one 50 KB byte string
    comp = zlib.compressobj(9, zlib.DEFLATED, -15, zdict=dictionary.dictionary(1))
    bomb = comp.compress(raw) + comp.flush()
    msg = client.request(coap.POST, ["fi", matrix_user.user_id], options=[bind(matrix_user.access_token)])
    msg.payload = bomb
    coap.set_content_format(msg, CF_CBOR_DEFLATE_V1)
    answer, _ = client.call(msg)
    assert answer.code == coap.REQUEST_ENTITY_TOO_LARGE
    client.wire.close()


def _park(client: Client, matrix_user: MatrixUser) -> tuple[str, Any]:
    handle = client.login(matrix_user)
    answer, body = client.call(
        client.request(coap.POST, ["cr"], {"preset": "private_chat"}, options=[bind(handle)])
    )
    room = body["room_id"]
    slot = [(BEARER_SLOT_OPTION, b"")]
    answer, body = client.call(client.request(coap.GET, ["~"], query=["timeout=0"], options=slot))
    since = body["next_batch"]
    park = client.request(coap.GET, ["~"], query=["since=" + client.refs.refer_text(since)], options=slot)
    w = client.wire
    w.send(w.seal(park))
    ack = w.open(w.recv(5.0))
    assert ack.mtype == coap.ACK and ack.code == coap.EMPTY and ack.mid == park.mid
    return room, park


def test_a_parked_sync_ends_after_long_poll_max(
    proxy_config_path: str, proxy_factory: Any, matrix_user
) -> None:
    client = make_client(proxy_config_path, proxy_factory, limits=Limits(long_poll_max=2.0))
    _, park = _park(client, matrix_user)
    w = client.wire
    t0 = time.monotonic()
    end = w.open(w.recv(15.0))
    w.send(w.seal(coap.make_ack(end)))
    assert end.code == coap.VALID and end.token == park.token
    assert time.monotonic() - t0 < 10.0  # 2 s asked, not PARK_MAX (900 s)
    client.wire.close()


def test_closing_a_client_session_ends_its_parked_sync_at_once(
    client: Client, matrix_user: MatrixUser
) -> None:
    room, _ = _park(client, matrix_user)
    proxy = client.proxy  # type: ignore[attr-defined]
    site = proxy.server.site
    assert proxy.run(lambda: site.clients._parked) == 1

    def revoke() -> None:
        proxy.server.registry.revoke(client.name)  # type: ignore[attr-defined]
        proxy.server.table.reload()

    proxy.run(revoke)
    deadline = time.monotonic() + 2.0
    while proxy.run(lambda: site.clients._parked) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy.run(lambda: site.clients._parked) == 0
    mman = proxy.server.transport.message_manager
    assert proxy.run(lambda: len(mman.token_manager.incoming_requests)) == 0
    # News after the revocation never reaches the closed session.
    status, _ = matrix_call(
        proxy.settings.homeserver_url,
        "PUT",
        "/_matrix/client/v3/rooms/%s/send/m.room.message/after" % urllib.parse.quote(room),
        matrix_user.access_token,
        {"msgtype": "m.text", "body": "secret news"},
    )
    assert status == 200
    client.wire.expect_silence(3.0)
