"""Fixtures for the proxy's tests: ONE real Synapse for the whole session.

Synapse takes about 3 s to start; every proxy test shares it.  It loads an
application-service registration for the proxy: exclusive user namespace
``@lowbw_.*:lowbw.test``, transactions pushed to ``appservice.url`` (a loopback
port reserved for a proxy to listen on; nothing listens unless a test does).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from lowbw.testing.synapse import (
    AppserviceRegistration,
    SynapseServer,
    free_port,
    write_appservice_registration,
)

SERVER_NAME = "lowbw.test"
APPSERVICE_NAMESPACE = r"@lowbw_.*:lowbw\.test"


@dataclass(frozen=True)
class MatrixUser:
    user_id: str
    access_token: str
    password: str


@pytest.fixture(scope="session")
def appservice(tmp_path_factory: pytest.TempPathFactory) -> AppserviceRegistration:
    """The proxy's appservice registration (tokens, namespace, transaction URL)."""
    path = tmp_path_factory.mktemp("appservice") / "lowbw-proxy.yaml"
    return write_appservice_registration(
        path,
        id="lowbw-proxy",
        as_token=secrets.token_urlsafe(32),
        hs_token=secrets.token_urlsafe(32),
        url="http://127.0.0.1:%d" % free_port(),
        sender_localpart="lowbw",
        user_namespace_regex=APPSERVICE_NAMESPACE,
    )


@pytest.fixture(scope="session")
def synapse(appservice: AppserviceRegistration) -> Iterator[SynapseServer]:
    """A running Synapse (SQLite, loopback, plain HTTP) with the proxy's appservice loaded."""
    with SynapseServer(server_name=SERVER_NAME, app_service_config_files=[appservice.path]) as server:
        rss = server.rss_bytes() or 0
        print(
            "\nsynapse %s: started in %.2f s, RSS %.0f MB"
            % (server.url, server.start_seconds or 0.0, rss / 1e6)
        )
        yield server


@pytest.fixture
def matrix_user(synapse: SynapseServer) -> MatrixUser:
    """A fresh ordinary (non-appservice) user with an access token."""
    password = secrets.token_urlsafe(16)
    user_id, token = synapse.register_user("user_%s" % secrets.token_hex(6), password)
    return MatrixUser(user_id, token, password)


# ---- operator side (lowbw.proxy.config, issue 3) ------------------------------
# A proxy directory written by `lowbw proxy init`'s own code, pointed at the
# session's Synapse: same appservice tokens, namespace prefix and push URL.


def _free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def proxy_config_path(
    synapse: SynapseServer, appservice: AppserviceRegistration, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """proxy.toml (appservice mode) in a fresh directory, for the session's Synapse; returns its path."""
    from lowbw.proxy.config import write_default

    assert appservice.url is not None
    result = write_default(
        tmp_path_factory.mktemp("proxy") / "proxy",
        synapse.url,
        server_name=SERVER_NAME,
        port=_free_udp_port(),
        # Loopback, no radio: the proxy's timers and airtime correction follow this.
        link_bps=1_000_000,
        mode="appservice",
        appservice_listen=appservice.url.removeprefix("http://"),
        user_prefix="lowbw_",
        appservice_id=appservice.id,
        sender_localpart=appservice.sender_localpart,
        as_token=appservice.as_token,
        hs_token=appservice.hs_token,
    )
    return str(result.config.path)


@pytest.fixture
def token_proxy_config_path(synapse: SynapseServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """proxy.toml in token mode (per-device access tokens via the shared secret); returns its path."""
    from lowbw.proxy.config import write_default

    result = write_default(
        tmp_path_factory.mktemp("proxy") / "proxy",
        synapse.url,
        server_name=SERVER_NAME,
        port=_free_udp_port(),
        link_bps=1_000_000,
        mode="token",
        # Outside the appservice's exclusive namespace, so ordinary registration may claim it.
        user_prefix="tok_",
        registration_shared_secret=synapse.registration_shared_secret,
    )
    return str(result.config.path)


# ---- end of operator-side fixtures ---------------------------------------------


# ---- proxy server tests (lowbw.proxy.server/transport/sessions, issue 3) -------
# A real proxy (in its own thread and event loop, so tests can use blocking
# sockets), a device built directly on lowbw.wire (real protocol code), enrolled
# with lowbw.proxy.enroll against the session's Synapse, and a TCP fault
# injector to put between the proxy and Synapse.

import asyncio  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import urllib.error  # noqa: E402
import urllib.parse  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import Callable, Coroutine  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402


class ProxyThread:
    """A ``ProxyServer`` running in a thread with its own event loop."""

    def __init__(self, settings: Any, **kwargs: Any) -> None:
        from lowbw.proxy.server import ProxyServer

        self.settings = settings
        self.server = ProxyServer(settings, **kwargs)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="proxy", daemon=True)
        self._thread.start()
        self.call(self.server.start)
        self.port = self.server.port

    def call(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(fn(*args), self.loop).result(timeout)

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a plain function in the proxy's loop thread (the registry/table live there)."""

        async def wrapper() -> Any:
            return fn(*args)

        return self.call(wrapper)

    def stop(self, save_sessions: bool = True) -> int:
        saved = 0
        if self.loop.is_running():
            saved = int(self.call(lambda: self.server.stop(save_sessions=save_sessions)))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        if not self.loop.is_closed() and not self.loop.is_running():
            self.loop.close()
        return saved


class WireDevice:
    """A device made of lowbw.wire pieces and a blocking UDP socket.

    ``exchange(msg)`` sends a CoAP request (IK with 0-RTT request when there is
    no session, a sealed frame otherwise) and returns the decoded answer, or
    raises ``socket.timeout``. Everything else is exposed for tests that tamper.
    ``compact=True``: the compact link profile (KK, compact frames and rules).
    """

    def __init__(
        self,
        private_key: bytes,
        proxy_public_key: bytes,
        proxy_addr: tuple[str, int],
        *,
        caps: int = 2,
        timeout: float = 3.0,
        compact: bool = False,
    ) -> None:
        self.compact = compact
        self.last_mid = -1
        self.private_key = private_key
        self.proxy_public_key = proxy_public_key
        self.proxy_addr = proxy_addr
        self.caps = caps
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.session: Any = None
        self.agreed_caps: int | None = None
        self.next_mid = 1
        self.sent: list[bytes] = []

    @classmethod
    def from_config(cls, config: dict[str, Any], **kwargs: Any) -> WireDevice:
        proxy = config["proxy"]
        return cls(
            bytes.fromhex(config["device_private_key"]),
            bytes.fromhex(proxy["public_key"]),
            (proxy["host"], int(proxy["port"])),
            caps=int(config.get("caps", 2)),
            **kwargs,
        )

    def close(self) -> None:
        self.sock.close()

    def new_socket(self) -> None:
        """A new source port (the device 'roams')."""
        self.sock.close()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))

    def mid(self) -> int:
        m = self.next_mid
        self.next_mid = (self.next_mid + 1) & 0xFFFF
        return m

    def request(
        self,
        code: int,
        path: list[str],
        payload: bytes = b"",
        *,
        mid: int | None = None,
        query: list[str] | None = None,
        options: list[tuple[int, bytes]] | None = None,
        token: bytes = b"",
    ) -> Any:
        from lowbw.wire import coap

        msg = coap.Message(mtype=coap.CON, code=code, mid=self.mid() if mid is None else mid, token=token)
        msg.payload = payload
        coap.set_uri_path(msg, path)
        if query:
            coap.set_uri_query(msg, query)
        for number, value in options or []:
            msg.add_option(number, value)
        return msg

    def reading(self, values: list[Any], slot: int = 0, *, mid: int | None = None, t: int = 0) -> Any:
        from lowbw.wire import coap, reading, routes

        return self.request(
            coap.POST, [routes.ROUTE_READING], reading.encode_readings([(slot, values, t)]), mid=mid
        )

    def ik_datagram(self, msg: Any = None, e_priv: bytes | None = None) -> tuple[bytes, Any]:
        from lowbw.wire import coap, handshake

        init = handshake.Initiator(
            self.private_key, self.proxy_public_key, caps=self.caps, e_priv=e_priv, compact=self.compact
        )
        return init.start(coap.encode(msg) if msg is not None else b""), init

    def send(self, datagram: bytes) -> None:
        self.sent.append(datagram)
        self.sock.sendto(datagram, self.proxy_addr)

    def recv(self, timeout: float | None = None) -> bytes:
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        data, _ = self.sock.recvfrom(65536)
        return data

    def expect_silence(self, timeout: float = 0.6) -> None:
        try:
            data = self.recv(timeout)
        except TimeoutError:
            return
        raise AssertionError("expected no answer, got %d bytes" % len(data))

    def handshake(self, msg: Any = None, timeout: float | None = None) -> Any:
        """IK with ``msg`` as 0-RTT request; returns the decoded answer (or None)."""
        from lowbw.wire import coap

        dgram, init = self.ik_datagram(msg)
        self.send(dgram)
        answer = self.recv(timeout)
        self.session, self.agreed_caps, response = init.finish(answer)
        return coap.decode(response) if response else None

    def seal(self, msg: Any) -> bytes:
        from lowbw.wire import coap, frames

        assert self.session is not None
        plain, rule = coap.encode(msg), 0
        if self.compact:
            self.last_mid = msg.mid
            rule, plain = frames.compress_up(plain)
        return bytes(self.session.seal(plain, rule=rule))

    def open(self, datagram: bytes) -> Any:
        from lowbw.wire import coap, frames

        mid = self.last_mid & 0xFFFF
        plain = self.session.open(datagram, bytes([mid >> 8, mid & 0xFF]))
        if self.compact:
            plain = frames.expand_down(self.session.rule, plain, mid)
        return coap.decode(plain)

    def exchange(self, msg: Any, timeout: float | None = None) -> Any:
        """Send a CON request, return its answer (separate CON answers are ACKed)."""
        from lowbw.wire import coap

        if self.session is None:
            first = self.handshake(msg, timeout)
            if first is not None and not (first.mtype == coap.ACK and first.code == coap.EMPTY):
                return first
        else:
            self.send(self.seal(msg))
        while True:
            answer = self.open(self.recv(timeout))
            if answer.mtype == coap.CON:
                self.send(self.seal(coap.make_ack(answer)))
                return answer
            if answer.mtype == coap.ACK and answer.mid == msg.mid and answer.code != coap.EMPTY:
                return answer


def matrix_call(
    base_url: str, method: str, path: str, token: str, body: Any = None, query: dict[str, Any] | None = None
) -> tuple[int, Any]:
    """One client-server API call as an ordinary client makes it (urllib, JSON)."""
    url = base_url + path + ("?" + urllib.parse.urlencode(query) if query else "")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", "Bearer " + token)
    req.add_header("Content-Type", "application/json")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def room_events(base_url: str, token: str, room_id: str, sender: str | None = None) -> list[dict[str, Any]]:
    """m.room.message events in the room, oldest first, as a stock client reads them (/messages)."""
    status, body = matrix_call(
        base_url,
        "GET",
        "/_matrix/client/v3/rooms/%s/messages" % urllib.parse.quote(room_id, safe=""),
        token,
        query={"dir": "b", "limit": 1000},
    )
    assert status == 200, body
    events = [e for e in body["chunk"] if e.get("type") == "m.room.message"]
    if sender is not None:
        events = [e for e in events if e.get("sender") == sender]
    return list(reversed(events))


@dataclass
class EnrolledDevice:
    name: str
    config: dict[str, Any]
    config_path: Path
    room_id: str
    user_id: str

    def wire(self, **kwargs: Any) -> WireDevice:
        return WireDevice.from_config(self.config, **kwargs)


DEFAULT_SLOTS = [
    {"name": "temperature", "fields": [{"name": "temperature", "unit": "°C", "scale": 1}]},
    {
        "name": "climate",
        "fields": [
            {"name": "temperature", "unit": "°C", "scale": 1},
            {"name": "humidity", "unit": "%", "scale": 0},
        ],
    },
]


def enroll_device(
    config_path: str,
    user: MatrixUser,
    synapse: SynapseServer,
    name: str | None = None,
    *,
    slots: list[dict[str, Any]] | None = None,
    **kwargs: Any,
) -> EnrolledDevice:
    """Enroll a device with lowbw's own enrollment code in a new room, and let ``user`` join it."""
    from lowbw.proxy.config import load
    from lowbw.proxy.enroll import enroll

    cfg = load(config_path)
    name = name or "dev%s" % secrets.token_hex(3)
    # Plaintext rooms unless a test asks for encryption (tests/e2ee covers that).
    kwargs.setdefault("encrypted", False)
    result = asyncio.run(
        enroll(cfg, name, "new", slots=slots or DEFAULT_SLOTS, invite=[user.user_id], **kwargs)
    )
    status, body = matrix_call(
        synapse.url,
        "POST",
        "/_matrix/client/v3/join/%s" % urllib.parse.quote(result.room_id, safe=""),
        user.access_token,
        {},
    )
    assert status == 200, body
    config = json.loads(Path(result.config_path).read_text(encoding="utf-8"))
    return EnrolledDevice(name, config, Path(result.config_path), result.room_id, result.record.user_id)


@pytest.fixture
def device_factory(
    proxy_config_path: str, matrix_user: MatrixUser, synapse: SynapseServer
) -> Callable[..., EnrolledDevice]:
    """Enroll devices (appservice mode) into fresh rooms that ``matrix_user`` has joined."""

    def make(name: str | None = None, **kwargs: Any) -> EnrolledDevice:
        return enroll_device(proxy_config_path, matrix_user, synapse, name, **kwargs)

    return make


def proxy_settings(config_path: str, **overrides: Any) -> Any:
    from lowbw.proxy.config import load
    from lowbw.proxy.server import ProxySettings

    settings = ProxySettings.from_config(load(config_path))
    for key, value in overrides.items():
        setattr(settings, key, value)
    return settings


@pytest.fixture
def proxy_factory(proxy_config_path: str) -> Iterator[Callable[..., ProxyThread]]:
    """Start in-process proxies for ``proxy_config_path`` (keyword overrides of ProxySettings)."""
    started: list[ProxyThread] = []

    def make(**overrides: Any) -> ProxyThread:
        proxy = ProxyThread(proxy_settings(proxy_config_path, **overrides))
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


class FaultInjector:
    """A TCP relay between the proxy and the homeserver that can fail on purpose.

    ``mode``: ``"pass"`` relays; ``"slow"`` holds every answer back ``delay``
    seconds (the request still reaches the homeserver); ``"down"`` closes the
    listening socket and every relayed connection (connection refused).
    """

    def __init__(self, target: tuple[str, int], delay: float = 3.0) -> None:
        self.target = target
        self.delay = delay
        self.mode = "pass"
        self.upstream_bytes = 0  # bytes relayed towards the homeserver
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self.loop.run_forever, name="faults", daemon=True)
        self._thread.start()
        self._call(self._listen)

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    def _call(self, fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        return asyncio.run_coroutine_threadsafe(fn(), self.loop).result(10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _down(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._writers):
            w.close()
        self._writers.clear()

    def set(self, mode: str) -> None:
        assert mode in ("pass", "slow", "down")
        if mode == "down":
            self._call(self._down)
        elif self._server is None:
            self._call(self._listen)
        self.mode = mode

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, slow: bool) -> None:
        try:
            while data := await reader.read(65536):
                if slow and self.mode == "slow":
                    await asyncio.sleep(self.delay)
                if not slow:
                    self.upstream_bytes += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer, False), self._pipe(up_reader, writer, True))
        except asyncio.CancelledError:
            # Ends quietly at close(): asyncio's stream callback would log a cancelled handler.
            writer.close()
            up_writer.close()
        self._writers.discard(writer)
        self._writers.discard(up_writer)

    def close(self) -> None:
        self._call(self._down)

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self._call(cancel_all)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@pytest.fixture
def fault_injector(synapse: SynapseServer) -> Iterator[FaultInjector]:
    assert synapse.port is not None
    injector = FaultInjector(("127.0.0.1", synapse.port))
    yield injector
    injector.close()


# ---- end of proxy server fixtures ------------------------------------------------


# ---- stock-client stack (lowbw client-proxy, issue 7) ----------------------------


@pytest.fixture
def client_stack(
    synapse: SynapseServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Any]]:
    """``client_stack(preset="1kbps", seed=None)``: proxy + radio_sim relay + client-proxy
    as real processes (tests/proxy/clientstack.py); stopped at the end of the test."""
    from tests.proxy.clientstack import ClientStack

    stacks: list[ClientStack] = []

    def start(preset: str = "1kbps", seed: int | None = None, **kwargs: Any) -> ClientStack:
        stack = ClientStack(tmp_path_factory.mktemp("clientstack"))
        stacks.append(stack)
        return stack.start(synapse, SERVER_NAME, preset=preset, seed=seed, **kwargs)

    yield start
    for stack in stacks:
        stack.close()
