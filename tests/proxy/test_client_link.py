"""The client-proxy's link (lowbw.clientproxy.link): what goes out when, against a real responder.

The datagrams the link sends are captured instead of sent (a list stands in
for the UDP socket); the answers come from lowbw.wire's real IK responder.
"""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import pytest
from aiocoap.message import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import ACK, CON

from lowbw.clientproxy.link import CLIENT_CAPS, IK1_OVERHEAD, ClientLink, client_caps
from lowbw.compact import headers
from lowbw.proxy import keyfile
from lowbw.proxy.transport import LinkTuning
from lowbw.wire import coap, crypto, frames, handshake


class Capture:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes) -> None:
        self.sent.append(bytes(data))

    def abort(self) -> None:
        pass


def make_link(mtu: int = 1024, caps: int = CLIENT_CAPS) -> tuple[ClientLink, Capture, bytes, bytes]:
    proxy_priv, proxy_pub = keyfile.generate_keypair()
    priv, _ = keyfile.generate_keypair()
    link = ClientLink(None, priv, proxy_pub, LinkTuning(1000, mtu=mtu), caps, mtu=mtu)  # type: ignore[arg-type]
    cap = Capture()
    link._transport = cap  # type: ignore[assignment]
    return link, cap, proxy_priv, proxy_pub


def message(code: Code, mid: int, payload: bytes = b"", token: bytes = b"\x01") -> Message:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        m = Message(mtype=CON, code=code, mid=mid, token=token, uri_path=["wh"], payload=payload)
    return m


def respond(proxy_priv: bytes, ik1: bytes, sid: int = 7, mid: int | None = None) -> tuple[bytes, bytes]:
    """The proxy's IK2 for ``ik1`` (answering its 0-RTT request, if any, with 2.05), and that request."""
    r = handshake.Responder(proxy_priv)
    _, caps, request = r.read_init(ik1)
    answer = b""
    if request:
        req = coap.decode(request)
        answer = coap.encode(coap.Message(coap.ACK, coap.CONTENT, req.mid, req.token))
    dgram, _session = r.respond(sid, handshake.negotiate_caps(caps), answer)
    return dgram, request


def test_requests_ride_the_handshake_and_posts_stay_in_their_session() -> None:
    async def run() -> None:
        link, cap, proxy_priv, _ = make_link()
        post = message(Code.POST, 2, b"\xa0")
        link.send(post)
        assert len(cap.sent) == 1 and cap.sent[0][0] == frames.HS_IK1
        assert len(cap.sent[0]) > IK1_OVERHEAD  # the POST is inside
        # Its answer lost: the retransmission is a new handshake with the same request bytes.
        link._hs_started -= 3 * link.remote.tuning.ACK_TIMEOUT
        link.send(post)
        assert len(cap.sent) == 2 and cap.sent[1][0] == frames.HS_IK1
        ik2, request = respond(proxy_priv, cap.sent[1])
        assert request
        link.datagram_received(ik2, None)
        assert link.session is not None
        # Sealed later in this session, a message belongs to it.
        get = message(Code.GET, 3)
        link.send(get)
        assert getattr(get, "lowbw_bound", None) is link.session

    asyncio.run(run())


def test_too_big_for_the_mtu_goes_after_the_handshake() -> None:
    async def run() -> None:
        link, cap, _, _ = make_link(mtu=256)
        link.send(message(Code.GET, 0, b"x" * 200))  # MID 0 too
        assert len(cap.sent) == 1 and len(cap.sent[0]) == IK1_OVERHEAD
        assert [m for m, _, _ in link._waiting] == [0]

    asyncio.run(run())


def test_stale_messages_and_session_changes() -> None:
    async def run() -> None:
        link, cap, proxy_priv, _ = make_link()
        changed = link.session_changed()
        link.send(message(Code.GET, 1))
        ik2, _ = respond(proxy_priv, cap.sent[0])
        link.datagram_received(ik2, None)
        assert changed.done()
        old = link.session
        bound = message(Code.GET, 3)
        bound.lowbw_bound = old  # type: ignore[attr-defined]
        link.send(bound)
        assert len(cap.sent) == 2
        changed = link.session_changed()
        link.reset()
        assert changed.done() and link.session is None
        link.send(bound)  # made for the old session: never sent in another
        assert len(cap.sent) == 2 and link.stats.stale == 1

    asyncio.run(run())


def test_an_unanswered_handshake_is_given_up() -> None:
    async def run() -> None:
        link, cap, proxy_priv, _ = make_link()
        link.send(message(Code.GET, 1))
        link.send(message(Code.GET, 2))  # waits for the first handshake
        assert len(cap.sent) == 1
        link._hs_started -= 3 * link.remote.tuning.ACK_TIMEOUT  # as if long ago
        link.send(message(Code.GET, 3))
        assert len(cap.sent) == 2 and cap.sent[1][0] == frames.HS_IK1
        # The answer to the newer handshake establishes the session; what waited goes out.
        ik2, _ = respond(proxy_priv, cap.sent[1])
        link.datagram_received(ik2, None)
        assert link.session is not None
        assert [frames.kind_of(d) for d in cap.sent[2:]] == [frames.KIND_SHORT]

    asyncio.run(run())


@pytest.mark.parametrize("junk", [b"", b"\x00", b"\x82" + b"\x00" * 60, b"\x40" * 30, bytes(range(256))])
def test_garbage_from_the_radio_is_dropped(junk: bytes) -> None:
    async def run() -> None:
        link, cap, _, _ = make_link()
        link.send(message(Code.GET, 1))
        link.datagram_received(junk, None)
        assert link.session is None

    asyncio.run(run())


def test_ack_events_fire() -> None:
    async def run() -> None:
        link, cap, proxy_priv, _ = make_link()
        m = message(Code.GET, 9)
        acked = asyncio.Event()
        m.lowbw_acked = acked  # type: ignore[attr-defined]
        link.send(m)
        ik2, _ = respond(proxy_priv, cap.sent[0])

        class Sink:
            def dispatch_message(self, msg: Any) -> None:
                assert msg.mtype == ACK

        link._mman = Sink()  # type: ignore[assignment]
        link.datagram_received(ik2, None)
        assert acked.is_set()

    asyncio.run(run())


def test_a_cookie_reply_sends_the_same_handshake_again_with_it() -> None:
    async def run() -> None:
        link, cap, proxy_priv, _ = make_link()
        link.send(message(Code.GET, 4))
        assert len(cap.sent) == 1 and cap.sent[0][0] == frames.HS_IK1
        cookie = bytes(range(16))
        link.datagram_received(bytes([frames.HS_COOKIE_REPLY]) + cookie, None)
        assert len(cap.sent) == 2 and cap.sent[1] == handshake.cookied(cookie, cap.sent[0])
        assert link.stats.cookies == 1
        # The proxy answers the cookied handshake: the session is up.
        ik2, request = respond(proxy_priv, handshake.split_cookied(cap.sent[1])[1])
        assert request
        link.datagram_received(ik2, None)
        assert link.session is not None
        # Once up, a (replayed or forged) cookie reply changes nothing; a malformed one is dropped.
        link.datagram_received(bytes([frames.HS_COOKIE_REPLY]) + cookie, None)
        link.datagram_received(bytes([frames.HS_COOKIE_REPLY]) + cookie[:5], None)
        assert len(cap.sent) == 2 and link.stats.dropped == 2

    asyncio.run(run())


# -- the compact link profile (profile = "compact") ----------------------------------


class Sink:
    """Stands in for aiocoap's message manager: what the link dispatches."""

    def __init__(self) -> None:
        self.got: list[Message] = []

    def dispatch_message(self, msg: Message) -> None:
        self.got.append(msg)

    def has_exchanges(self, remote: Any) -> bool:
        return False


def test_client_caps() -> None:
    assert client_caps() == CLIENT_CAPS and not client_caps() & handshake.CAP_COMPACT
    assert client_caps(False) == CLIENT_CAPS & ~handshake.CAP_DICT_V1
    assert client_caps(True, True) == CLIENT_CAPS | handshake.CAP_COMPACT
    assert client_caps(False, True) == (CLIENT_CAPS & ~handshake.CAP_DICT_V1) | handshake.CAP_COMPACT


def test_a_compact_link_handshakes_kk_and_uses_rule_3() -> None:
    async def run() -> None:
        link, cap, proxy_priv, _ = make_link(caps=client_caps(True, True))
        sink = Sink()
        link._mman = sink  # type: ignore[assignment]
        client_pub = crypto.x25519_base(link.private_key)
        first = message(Code.POST, 0x1230, b"\xa0", token=b"\x01")
        link.send(first)
        # KK message 1 naming our key by its 2-byte id, the request riding it.
        kk1 = cap.sent[0]
        assert kk1[0] == frames.HS_KK1 and kk1[1:3] == handshake.key_id(client_pub)
        responder = handshake.Responder(proxy_priv, rs=client_pub)
        pub, offered, request = responder.read_init(kk1)
        assert pub == client_pub and offered & handshake.CAP_COMPACT and request == first.encode()
        ack = coap.encode(coap.Message(coap.ACK, coap.CHANGED, 0x1230, b"\x01"))
        kk2, proxy = responder.respond(0x2A, handshake.negotiate_caps(offered), ack)
        link.datagram_received(kk2, None)
        assert link.session is not None and link.session.compact and link.caps & handshake.CAP_COMPACT
        assert [(m.mid, m.code) for m in sink.got] == [(0x1230, Code.CHANGED)]
        # Later requests: compact frames with rule 3 (2 bytes less than whole).
        for i in range(1, 4):
            req = message(Code.GET, 0x1230 + i, token=bytes([1 + i]))
            link.send(req)
            dgram = cap.sent[-1]
            assert dgram[0] >> 4 == 0xC | headers.RULE_CLIENT and dgram[1] == 0x2A
            assert len(dgram) == 2 + len(req.encode()) - 2 + 8
            assert headers.open_up(proxy, dgram) == req.encode()
            answer = coap.encode(
                coap.Message(coap.ACK, coap.CONTENT, 0x1230 + i, bytes([1 + i]), (), b"\xa0")
            )
            down = headers.seal_down(proxy, answer)
            assert down[0] >> 4 == 0xC | headers.RULE_CLIENT and len(down) == 1 + len(answer) - 3 + 8
            link.datagram_received(down, None)
            got = sink.got[-1]
            assert (got.mid, got.token, got.code, got.payload) == (
                0x1230 + i,
                bytes([1 + i]),
                Code.CONTENT,
                b"\xa0",
            )
        # An answer naming a token we never sent, a device rule, a replay: dropped and counted.
        n = len(sink.got)
        link.datagram_received(
            headers.seal_down(proxy, coap.encode(coap.Message(coap.ACK, coap.CONTENT, 0x1240, b"\x77"))), None
        )
        link.datagram_received(proxy.seal(b"\x45\x02", rule=frames.RULE_CODE), None)
        link.datagram_received(down, None)
        assert len(sink.got) == n
        assert link.drops == {"malformed": 2, "replay": 1}

    asyncio.run(run())


def test_a_compact_link_ignores_an_ik_answer() -> None:
    """A compact link waits for KK message 2; an IK answer (or a standard session) is not its own."""

    async def run() -> None:
        link, cap, proxy_priv, _ = make_link(caps=client_caps(True, True))
        link.send(message(Code.GET, 1))
        assert cap.sent[0][0] == frames.HS_KK1
        ik_link, ik_cap, _, _ = make_link()
        ik_link.proxy_public_key = link.proxy_public_key
        ik_link.private_key = link.private_key
        ik_link.send(message(Code.GET, 1))
        ik2, _ = respond(proxy_priv, ik_cap.sent[0])
        link.datagram_received(ik2, None)
        assert link.session is None and link.drops == {"unexpected_handshake": 1}

    asyncio.run(run())
