"""lowbw.proxy.homeserver against a real Synapse, plus fault injectors for what Synapse cannot do.

Everything Matrix is checked against the session's real Synapse.  Three small
local servers stand in for faults the real server cannot be made to produce on
demand; each is named as a fault injector where it is defined:
  * a TCP server that accepts and never answers (a hung homeserver),
  * an aiohttp server answering like a reverse proxy or an older homeserver would
    (503 with an HTTP-date Retry-After and an HTML body, a body-only retry_after_ms,
    a redirect, an oversized answer),
  * an aiohttp HTTPS server with a self-signed certificate.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import secrets
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web

from lowbw.proxy.homeserver import (
    Homeserver,
    HomeserverRequestFailed,
    HomeserverUnavailable,
    encode_path,
    parse_retry_after,
)
from lowbw.testing.synapse import AppserviceRegistration, SynapseError, SynapseServer, free_port
from lowbw.wire.errors import EncodeError, LowbwError

from .conftest import MatrixUser

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def new_localpart() -> str:
    return "lowbw_t%s" % secrets.token_hex(5)


# -- pure helpers ------------------------------------------------------------


def test_encode_path_escapes_each_segment() -> None:
    path = encode_path("/_matrix/client/v3/rooms/{}/send/{}/{}", "!r:lowbw.test", "m.room.message", "d/1?x#y")
    assert path == "/_matrix/client/v3/rooms/%21r%3Alowbw.test/send/m.room.message/d%2F1%3Fx%23y"
    assert (
        encode_path("/_matrix/client/v3/join/{}", "#room:lowbw.test")
        == "/_matrix/client/v3/join/%23room%3Alowbw.test"
    )
    with pytest.raises(EncodeError):
        encode_path("/rooms/{}/send/{}", "!r:x")


def test_parse_retry_after_forms() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("120") == 120
    assert parse_retry_after(" 0 ") == 0
    later = datetime.datetime.fromtimestamp(now + 29.5, datetime.UTC)
    assert parse_retry_after(later.strftime("%a, %d %b %Y %H:%M:%S GMT"), now=now) in (29, 30)
    earlier = datetime.datetime.fromtimestamp(now - 100, datetime.UTC)
    assert parse_retry_after(earlier.strftime("%a, %d %b %Y %H:%M:%S GMT"), now=now) == 0
    for bad in (None, "", "-5", "1.5", "soon", "Wed, 99 Foo 2024 00:00:00 GMT", "\u0663"):
        assert parse_retry_after(bad, now=now) is None, bad


def test_request_rejects_bad_input_before_sending() -> None:
    async def main() -> None:
        async with Homeserver("http://127.0.0.1:9") as hs:
            with pytest.raises(EncodeError):
                await hs.request("GET", "/_matrix/client/v3/sync?since=x")
            for path in ("/a b", "/x\r\nHost: evil", "/caf\u00e9", "/x#y", "relative"):
                with pytest.raises(EncodeError):
                    await hs.request("GET", path)
            with pytest.raises(EncodeError):
                await hs.request("GET\r\n", "/x")
            with pytest.raises(EncodeError):
                await hs.request("PUT", "/x", json_body={"v": float("nan")})

    run(main())
    with pytest.raises(EncodeError):
        Homeserver("ftp://example.org")


# -- against the real Synapse --------------------------------------------------


def test_harness_registers_a_working_user(synapse: SynapseServer, matrix_user: MatrixUser) -> None:
    assert synapse.server_name == "lowbw.test"
    assert matrix_user.user_id.endswith(":lowbw.test")

    async def main() -> None:
        async with Homeserver(synapse.url) as hs:
            who = await hs.whoami(matrix_user.access_token)
            assert who.status == 200
            assert who.expect_ok()["user_id"] == matrix_user.user_id

    run(main())


def test_appservice_send_with_ts_is_idempotent_and_readable(
    synapse: SynapseServer,
    appservice: AppserviceRegistration,
    matrix_user: MatrixUser,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="lowbw")
    as_token = appservice.as_token
    localpart = new_localpart()
    measured_at = 1_600_000_000_123  # 2020-09-13, far from "now": a server clock would not match it

    async def main() -> None:
        async with Homeserver(synapse.url) as hs:
            device = await hs.register_appservice_user(localpart, as_token)
            assert device == "@%s:lowbw.test" % localpart
            # Enrolment may run twice: M_USER_IN_USE is tolerated and names the same user.
            assert await hs.register_appservice_user(localpart, as_token) == device
            assert (await hs.whoami(as_token, as_user=device)).expect_ok()["user_id"] == device

            created = await hs.create_room(
                as_token, {"name": "sensors", "preset": "private_chat"}, as_user=device
            )
            room_id = created.expect_ok()["room_id"]
            assert room_id.startswith("!")
            (await hs.invite(room_id, matrix_user.user_id, as_token, as_user=device)).expect_ok()
            joined = await hs.join_room(room_id, matrix_user.access_token)
            assert joined.expect_ok()["room_id"] == room_id

            content = {"msgtype": "m.text", "body": "temperature 21.5 °C", "org.lowbw.value": "21.5"}
            txn = "dev/%s:7" % localpart  # '/' and ':' must survive as one path segment
            first = await hs.send_event(
                room_id, "m.room.message", content, txn, as_token, as_user=device, ts=measured_at
            )
            again = await hs.send_event(
                room_id, "m.room.message", content, txn, as_token, as_user=device, ts=measured_at
            )
            assert first.status == 200 and again.status == 200
            event_id = first.expect_ok()["event_id"]
            assert again.expect_ok()["event_id"] == event_id

            # Read it the way a stock client does: /messages as the ordinary user.
            page = (await hs.messages(room_id, matrix_user.access_token, limit=50)).expect_ok()
            ours = [e for e in page["chunk"] if e.get("type") == "m.room.message"]
            assert len(ours) == 1
            assert ours[0]["event_id"] == event_id
            assert ours[0]["sender"] == device
            assert ours[0]["origin_server_ts"] == measured_at
            assert ours[0]["content"] == content

            # And via /sync with an inline filter.
            flt = {"room": {"rooms": [room_id], "timeline": {"limit": 10, "types": ["m.room.message"]}}}
            synced = (await hs.sync(matrix_user.access_token, filter=flt)).expect_ok()
            timeline = synced["rooms"]["join"][room_id]["timeline"]["events"]
            assert [e["event_id"] for e in timeline] == [event_id]

    run(main())
    assert as_token not in caplog.text
    assert "PUT /_matrix/client/v3/rooms/" in caplog.text  # the route is logged, the token is not


def test_http_errors_come_back_as_results(
    synapse: SynapseServer, appservice: AppserviceRegistration, matrix_user: MatrixUser
) -> None:
    async def main() -> None:
        async with Homeserver(synapse.url) as hs:
            stranger = (await hs.create_room(matrix_user.access_token)).expect_ok()["room_id"]
            other_id, other_token = synapse.register_user(
                "user_%s" % secrets.token_hex(6), "pw-" + secrets.token_hex(8)
            )

            forbidden = await hs.messages(stranger, other_token)
            assert forbidden.status == 403
            assert forbidden.errcode == "M_FORBIDDEN"
            with pytest.raises(HomeserverRequestFailed) as info:
                forbidden.expect_ok()
            assert info.value.status == 403
            assert other_token not in str(info.value)

            unknown = await hs.request("GET", "/_matrix/client/v3/no/such/endpoint", access_token=other_token)
            assert unknown.status in (400, 404)
            assert unknown.errcode == "M_UNRECOGNIZED"

            bad_token = await hs.whoami("not-a-token")
            assert bad_token.status == 401
            assert bad_token.errcode == "M_UNKNOWN_TOKEN"

            # The appservice may only act as users in its own namespace.
            outside = await hs.whoami(appservice.as_token, as_user=other_id)
            assert outside.status == 403

            with pytest.raises(HomeserverRequestFailed):
                await hs.register_appservice_user(
                    "not_in_namespace_%s" % secrets.token_hex(3), appservice.as_token
                )

    run(main())


def test_real_429_retry_after_from_synapse(synapse: SynapseServer, matrix_user: MatrixUser) -> None:
    # The harness keeps rc_login.failed_attempts tight: wrong passwords for one
    # account are the one 429 a real Synapse gives on demand.
    async def main() -> None:
        async with Homeserver(synapse.url) as hs:
            body = {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": matrix_user.user_id},
                "password": "wrong",
            }
            statuses = []
            for _ in range(10):
                result = await hs.request("POST", "/_matrix/client/v3/login", json_body=body)
                statuses.append(result.status)
                if result.status == 429:
                    assert result.errcode == "M_LIMIT_EXCEEDED"
                    assert result.headers["Retry-After"].isdigit()
                    assert result.retry_after == int(result.headers["Retry-After"])
                    assert result.retry_after is not None and result.retry_after >= 1
                    return
            pytest.fail("no 429 after %r" % statuses)

    run(main())


# -- faults the real server cannot produce -------------------------------------


def test_connection_refused_is_unavailable(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="lowbw")
    token = "syt_secret_" + secrets.token_hex(8)
    port = free_port()

    async def main() -> HomeserverUnavailable:
        async with Homeserver("http://127.0.0.1:%d" % port) as hs:
            with pytest.raises(HomeserverUnavailable) as info:
                await hs.send_event(
                    "!r:x", "m.room.message", {"body": "x"}, "t1", token, as_user="@lowbw_a:x", ts=1
                )
            return info.value

    exc = run(main())
    assert isinstance(exc, LowbwError)
    assert exc.coap_code == 163 and not exc.timeout
    assert "127.0.0.1:%d" % port in str(exc)
    for text in (str(exc), repr(exc), repr(exc.args), caplog.text):
        assert token not in text
    assert exc.__cause__ is None and exc.__suppress_context__


@asynccontextmanager
async def silent_tcp_server() -> AsyncIterator[str]:
    """FAULT INJECTOR: a hung homeserver. Accepts connections, reads, never answers."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(4096):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield "http://127.0.0.1:%d" % port
    finally:
        server.close()
        await server.wait_closed()


def test_slow_homeserver_times_out_as_504() -> None:
    token = "syt_secret_" + secrets.token_hex(8)

    async def main() -> None:
        async with silent_tcp_server() as url, Homeserver(url, timeout=0.3) as hs:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(HomeserverUnavailable) as info:
                await hs.whoami(token)
            assert loop.time() - started < 5
            assert info.value.coap_code == 164 and info.value.timeout
            assert token not in str(info.value)
            # A per-call timeout overrides the client's.
            with pytest.raises(HomeserverUnavailable):
                await hs.request("GET", "/_matrix/client/versions", timeout=0.1)

    run(main())


@asynccontextmanager
async def serve(app: web.Application, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield "%s://127.0.0.1:%d" % ("https" if ssl_context else "http", port)
    finally:
        await runner.cleanup()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def reverse_proxy_app() -> web.Application:
    """FAULT INJECTOR: answers the way a reverse proxy or an older homeserver can, Synapse 1.163 cannot."""

    async def unavailable(request: web.Request) -> web.Response:
        # nginx/maintenance page: HTML body, Retry-After as an HTTP-date.
        when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=90)
        return web.Response(
            status=503,
            text="<html>down for maintenance</html>",
            content_type="text/html",
            headers={"Retry-After": when.strftime("%a, %d %b %Y %H:%M:%S GMT")},
        )

    async def legacy_429(request: web.Request) -> web.Response:
        return web.json_response({"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 2500}, status=429)

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://elsewhere.invalid/steal")

    async def huge(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 200_000, content_type="application/json")

    async def deep(request: web.Request) -> web.Response:
        return web.Response(body=b"[" * 50_000 + b"]" * 50_000, content_type="application/json")

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"path": request.raw_path, "auth": "Authorization" in request.headers})

    app = web.Application()
    app.router.add_get("/503", unavailable)
    app.router.add_get("/429", legacy_429)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/huge", huge)
    app.router.add_get("/deep", deep)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def test_reverse_proxy_answers_are_results_not_errors() -> None:
    async def main() -> None:
        async with serve(reverse_proxy_app()) as url, Homeserver(url, max_body=100_000) as hs:
            down = await hs.request("GET", "/503")
            assert down.status == 503 and down.json is None and down.errcode is None
            assert down.retry_after is not None and 85 <= down.retry_after <= 91
            assert b"maintenance" in down.body

            legacy = await hs.request("GET", "/429")
            assert legacy.status == 429 and legacy.retry_after == 3  # ceil(2500 ms)

            moved = await hs.request("GET", "/redirect", access_token="tok")
            assert moved.status == 302  # not followed: the token stays with this origin

            with pytest.raises(HomeserverUnavailable) as info:
                await hs.request("GET", "/huge")
            assert info.value.coap_code == 162

            deep = await hs.request("GET", "/deep")
            assert deep.status == 200 and deep.json is None

            echoed = (await hs.join_room("#a b:lowbw.test", "tok", via=["x.org", "y.org"])).expect_ok()
            assert echoed["path"] == "/_matrix/client/v3/join/%23a%20b%3Alowbw.test?via=x.org&via=y.org"
            assert echoed["auth"] is True

    run(main())


def test_caller_session_is_shared_not_closed() -> None:
    async def main() -> None:
        async with serve(reverse_proxy_app()) as url, aiohttp.ClientSession() as session:
            async with Homeserver(url, session) as hs:
                assert (await hs.request("GET", "/ping")).status == 200
            assert not session.closed

    run(main())


def self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_tls_is_verified_by_default(tmp_path: Path) -> None:
    """FAULT INJECTOR: an HTTPS server with a self-signed certificate."""
    cert, key = self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    token = "syt_secret_" + secrets.token_hex(8)

    async def main() -> None:
        async with serve(reverse_proxy_app(), server_ctx) as url:
            async with Homeserver(url) as hs:
                with pytest.raises(HomeserverUnavailable) as info:
                    await hs.whoami(token)
                assert info.value.coap_code == 163
                assert "TLS" in str(info.value) and token not in str(info.value)
            async with Homeserver(url, verify_tls=False) as hs:
                assert (await hs.whoami(token)).status == 200
            trusted = ssl.create_default_context(cafile=str(cert))
            async with Homeserver(url, ssl_context=trusted) as hs:
                assert (await hs.whoami(token)).status == 200

    run(main())


def test_harness_reports_a_failed_start_with_the_log_tail() -> None:
    server = SynapseServer(extra_config={"database": {"name": "no_such_engine"}}, start_timeout=30)
    with pytest.raises(SynapseError) as info:
        server.start()
    assert "no_such_engine" in str(info.value)  # the tail of Synapse's own output
    assert server.dir is None and server.pid is None  # cleaned up, nothing left running
