"""The CoAP header rule of compact client sessions (lowbw.compact.headers, rule 3).

Every session here comes from a real Noise KK handshake: the client-proxy's
``handshake.Initiator(compact=True)`` against the proxy's responder (both of
its implementations: noiseprotocol's ``lowbw.proxy.noise_ik`` and
``lowbw.wire.handshake``), so the frames are the compact transport frames the
radio carries. Up is ``seal_up`` (client-proxy) -> ``open_up`` (proxy), down
``seal_down`` (proxy) -> ``TokenMids.open_down`` (client-proxy).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from lowbw.compact import headers
from lowbw.proxy import noise_ik
from lowbw.wire import coap, crypto, frames, handshake, keys
from lowbw.wire.errors import AuthError, DecodeError, ReplayError

CLIENT_CAPS = keys.TABLE_LOWBW_V1 | handshake.CAP_DICT_V1
RESPONDERS = {"noiseprotocol": noise_ik.Responder, "lowbw.wire": handshake.Responder}


def request(mid: int, token: bytes = b"\x07", code: int = coap.GET, payload: bytes = b"") -> bytes:
    """A client-proxy request as aiocoap sends it: CON, a token, Uri-Path, Bearer-Slot-like option."""
    options: tuple[tuple[int, bytes], ...] = ((coap.URI_PATH, b"wh"), (65000, b""))
    return coap.Message(coap.CON, code, mid & 0xFFFF, token, options, payload).encode()


def answer(
    mid: int, token: bytes = b"\x07", code: int = coap.CONTENT, payload: bytes = b"\xa1\x01\x02"
) -> bytes:
    """The proxy's piggybacked answer to ``request(mid, token)``."""
    return coap.Message(coap.ACK, code, mid & 0xFFFF, token, (), payload).encode()


def kk_pair(
    responder: str = "noiseprotocol", zero_rtt: bytes = b"", sid: int = 0x2A
) -> tuple[frames.Session, frames.Session]:
    """(client-proxy session, proxy session) from a real KK handshake, ``zero_rtt`` riding message 1."""
    client_priv, proxy_priv = os.urandom(32), os.urandom(32)
    client_pub, proxy_pub = crypto.x25519_base(client_priv), crypto.x25519_base(proxy_priv)
    ini = handshake.Initiator(client_priv, proxy_pub, caps=CLIENT_CAPS, compact=True)
    kk1 = ini.start(zero_rtt)
    assert kk1[0] == frames.HS_KK1 and kk1[1:3] == handshake.key_id(client_pub)
    resp: Any = RESPONDERS[responder](proxy_priv, rs=client_pub)
    pub, offered, got = resp.read_init(kk1)
    assert pub == client_pub and got == zero_rtt and offered & handshake.CAP_COMPACT
    reply = coap.make_response(coap.decode(got), coap.CHANGED).encode() if got else b""
    kk2, proxy = resp.respond(sid, handshake.negotiate_caps(offered), reply)
    assert kk2[0] == frames.HS_KK2
    client, caps, response = ini.finish(kk2)
    assert caps & handshake.CAP_COMPACT and response == reply
    assert client.compact and proxy.compact and client.sid == proxy.sid == sid
    return client, proxy


def twin(session: frames.Session) -> frames.Session:
    """An independent copy (same keys, counters and base): to seal the same message raw."""
    return frames.Session.from_state(session.export_state())


def rule_of(dgram: bytes) -> int:
    assert frames.kind_of(dgram) == frames.KIND_COMPACT
    return (dgram[0] >> 4) & 3


def up(client: frames.Session, proxy: frames.Session, msg: bytes, tokens: headers.TokenMids) -> bytes:
    """One request up: sealed by the client-proxy, opened by the proxy; the datagram."""
    tokens.sent(msg)
    dgram = headers.seal_up(client, msg)
    assert headers.open_up(proxy, dgram) == msg
    return dgram


# -- round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("responder", sorted(RESPONDERS))
def test_requests_and_answers_round_trip_with_rule_3(responder: str) -> None:
    login = request(100, b"\x01", coap.POST, b"\xa0")
    client, proxy = kk_pair(responder, login)
    # The 0-RTT request's Message ID is the base on both sides.
    assert client.mid == proxy.mid == 100
    tokens = headers.TokenMids()
    for i in range(1, 40):
        mid, token = 100 + i, bytes([1 + i])
        msg = request(mid, token, payload=bytes(i))
        dgram = up(client, proxy, msg, tokens)
        assert rule_of(dgram) == headers.RULE_CLIENT and dgram[1] == 0x2A
        assert client.mid == proxy.mid == mid
        ans = answer(mid, token, payload=b"\xa1\x01" + bytes([i]))
        down = headers.seal_down(proxy, ans)
        assert rule_of(down) == headers.RULE_CLIENT
        assert tokens.open_down(client, down) == ans


def test_answers_out_of_order_find_their_message_ids_by_token() -> None:
    client, proxy = kk_pair(zero_rtt=request(7, b"\x01"))
    tokens = headers.TokenMids()
    sent = [(8 + i, bytes([0x10 + i])) for i in range(5)]
    for mid, token in sent:
        up(client, proxy, request(mid, token), tokens)
    # A parked sync's answer may come long after later requests were answered.
    for mid, token in reversed(sent):
        ans = answer(mid, token)
        assert tokens.open_down(client, headers.seal_down(proxy, ans)) == ans


def test_rule_3_saves_two_bytes_up_and_three_down() -> None:
    client, proxy = kk_pair(zero_rtt=request(0x1233, b"\x04"))
    tokens = headers.TokenMids()
    for payload in (b"", b"x", bytes(200)):
        msg = request(0x1234, b"\x05", coap.PUT, payload)
        raw = twin(client).seal(msg)
        assert rule_of(raw) == frames.RULE_RAW
        tokens.sent(msg)
        packed = headers.seal_up(client, msg)
        assert len(raw) - len(packed) == 2
        assert headers.open_up(proxy, packed) == msg
        ans = answer(0x1234, b"\x05", coap.CHANGED, payload)
        raw_down = twin(proxy).seal(ans)
        packed_down = headers.seal_down(proxy, ans)
        assert len(raw_down) - len(packed_down) == 3
        assert tokens.open_down(client, packed_down) == ans
        # And against the standard profile's frame (2-byte sid, 16-byte tag): 11 up, 11 down.
        standard = frames.Session(os.urandom(32), os.urandom(32), 0x2A, True)
        assert len(standard.seal(msg)) - len(packed) == 1 + 8 + 2
        standard_down = frames.Session(os.urandom(32), os.urandom(32), 0x2A, False)
        assert len(standard_down.seal(ans)) - len(packed_down) == 8 + 3


def test_frame_layout_and_residue() -> None:
    """Rule 3 up: kind | sid | enc(MID low | code | token | rest); down: kind | enc(code | token | rest)."""
    client, proxy = kk_pair(zero_rtt=request(0x1233, b"\x04"))
    msg = request(0x1234, b"\x05", coap.PUT, b"\x01\x02")
    dgram = headers.seal_up(twin(client), msg)
    assert dgram[0] & 0xF0 == 0xF0 and dgram[1] == 0x2A and len(dgram) == 2 + len(msg) - 2 + 8
    plain = twin(proxy).open(dgram)
    assert plain == bytes([0x34, coap.PUT, 0x05]) + msg[5:]
    ans = answer(0x1234, b"\x05", coap.CHANGED, b"\xa0")
    down = headers.seal_down(twin(proxy), ans)
    assert down[0] & 0xF0 == 0xF0 and len(down) == 1 + len(ans) - 3 + 8
    assert twin(client).open(down) == bytes([coap.CHANGED, 0x05]) + ans[5:]


# -- the Message ID base --------------------------------------------------------------


@pytest.mark.parametrize("base", [0x0000, 0x0040, 0x1234, 0xFFC8, 0xFFFF])
@pytest.mark.parametrize("delta", [1, 2, 17, headers.NEAR - 1, 0, -1, -5, -(headers.NEAR - 1)])
def test_message_ids_near_the_base_travel_as_their_low_byte(base: int, delta: int) -> None:
    client, proxy = kk_pair(zero_rtt=request(base, b"\x01"))
    tokens = headers.TokenMids()
    mid = (base + delta) & 0xFFFF
    dgram = up(client, proxy, request(mid, b"\x02"), tokens)
    assert rule_of(dgram) == headers.RULE_CLIENT
    # The base follows newer Message IDs only (wrapping at 16 bits).
    expect = mid if delta > 0 else base
    assert client.mid == proxy.mid == expect


@pytest.mark.parametrize("delta", [headers.NEAR, headers.NEAR + 1, 127, 128, 300, 0x7FFF])
def test_far_ahead_goes_whole_and_the_base_follows(delta: int) -> None:
    base = 0xFFF0
    client, proxy = kk_pair(zero_rtt=request(base, b"\x01"))
    tokens = headers.TokenMids()
    mid = (base + delta) & 0xFFFF
    dgram = up(client, proxy, request(mid, b"\x02"), tokens)
    assert rule_of(dgram) == frames.RULE_RAW
    assert client.mid == proxy.mid == mid
    # From there on the low byte suffices again.
    dgram = up(client, proxy, request(mid + 1, b"\x03"), tokens)
    assert rule_of(dgram) == headers.RULE_CLIENT and client.mid == proxy.mid == (mid + 1) & 0xFFFF
    ans = answer(mid + 1, b"\x03")
    assert tokens.open_down(client, headers.seal_down(proxy, ans)) == ans


@pytest.mark.parametrize("delta", [-headers.NEAR, -100, -0x8000])
def test_far_behind_goes_whole_and_the_base_stays(delta: int) -> None:
    client, proxy = kk_pair(zero_rtt=request(0x4000, b"\x01"))
    mid = (0x4000 + delta) & 0xFFFF
    dgram = up(client, proxy, request(mid, b"\x02"), headers.TokenMids())
    assert rule_of(dgram) == frames.RULE_RAW
    assert client.mid == proxy.mid == 0x4000


def test_the_proxy_base_may_lag_by_lost_frames() -> None:
    """Frames lost on the way move only the client-proxy's base; the low byte
    still names the right Message ID while the proxy's is less than NEAR behind."""
    client, proxy = kk_pair(zero_rtt=request(500, b"\x01"))
    tokens = headers.TokenMids()
    for mid in range(501, 501 + headers.NEAR - 1):
        headers.seal_up(client, request(mid, b"\x02"))  # never arrives
    assert client.mid == 500 + headers.NEAR - 1 and proxy.mid == 500
    mid = 500 + headers.NEAR
    dgram = up(client, proxy, request(mid, b"\x03"), tokens)
    assert rule_of(dgram) == headers.RULE_CLIENT and proxy.mid == mid


def test_without_a_base_the_first_request_goes_whole() -> None:
    # The handshake carried no request (too big for the MTU): no base yet.
    client, proxy = kk_pair()
    assert client.mid == proxy.mid == -1
    tokens = headers.TokenMids()
    dgram = up(client, proxy, request(3000, b"\x01"), tokens)
    assert rule_of(dgram) == frames.RULE_RAW and client.mid == proxy.mid == 3000
    assert rule_of(up(client, proxy, request(3001, b"\x02"), tokens)) == headers.RULE_CLIENT


@pytest.mark.parametrize(
    "msg",
    [
        coap.Message(coap.CON, coap.GET, 11, b"", ((coap.URI_PATH, b"wh"),)).encode(),  # no token
        coap.Message(coap.CON, coap.GET, 11, b"\x01\x02", ((coap.URI_PATH, b"wh"),)).encode(),  # 2-byte token
        coap.Message(coap.NON, coap.POST, 11, b"\x01", ((coap.URI_PATH, b"rc"),), b"\xa0").encode(),
        coap.Message(coap.ACK, coap.EMPTY, 11, b"").encode(),  # an empty ACK of a separate answer
        coap.Message(coap.RST, coap.EMPTY, 11, b"").encode(),
        bytes([0x41, 0x00, 0x00, 0x0B, 0x01]),  # CON with code 0.00: no request
    ],
    ids=["no-token", "token-2", "non", "empty-ack", "rst", "con-empty"],
)
def test_other_uplink_messages_travel_whole(msg: bytes) -> None:
    client, proxy = kk_pair(zero_rtt=request(10, b"\x09"))
    dgram = headers.seal_up(client, msg)
    assert rule_of(dgram) == frames.RULE_RAW
    assert headers.open_up(proxy, dgram) == msg
    assert client.mid == 10  # only a rule-3 request moves the client-proxy's base


@pytest.mark.parametrize(
    "msg",
    [
        coap.Message(coap.ACK, coap.EMPTY, 11, b"").encode(),  # "wait, the answer comes separately"
        coap.Message(coap.CON, coap.CONTENT, 900, b"\x02", (), b"\xa0").encode(),  # the separate answer
        coap.Message(coap.ACK, coap.CONTENT, 11, b"", (), b"\xa0").encode(),  # no token
        coap.Message(coap.ACK, coap.CONTENT, 11, b"\x02\x03", (), b"\xa0").encode(),  # 2-byte token
        coap.Message(coap.RST, coap.EMPTY, 11, b"").encode(),
    ],
    ids=["empty-ack", "separate", "no-token", "token-2", "rst"],
)
def test_other_downlink_messages_travel_whole(msg: bytes) -> None:
    client, proxy = kk_pair(zero_rtt=request(10, b"\x09"))
    dgram = headers.seal_down(proxy, msg)
    assert rule_of(dgram) == frames.RULE_RAW
    assert headers.TokenMids().open_down(client, dgram) == msg  # no token needed for rule 0


# -- bad input ------------------------------------------------------------------------


def test_rule_3_residue_too_short_is_refused() -> None:
    client, proxy = kk_pair(zero_rtt=request(10, b"\x09"))
    for residue in (b"", b"\x0b", b"\x0b\x01"):
        with pytest.raises(DecodeError):
            headers.open_up(proxy, client.seal(residue, rule=headers.RULE_CLIENT))
    assert proxy.mid == 10
    with pytest.raises(DecodeError):
        headers.TokenMids().open_down(client, proxy.seal(b"\x45", rule=headers.RULE_CLIENT))


def test_rule_3_before_any_message_id_base_is_refused() -> None:
    client, proxy = kk_pair()
    assert proxy.mid == -1
    with pytest.raises(DecodeError):
        headers.open_up(proxy, client.seal(b"\x0b\x01\x07", rule=headers.RULE_CLIENT))
    assert proxy.mid == -1


@pytest.mark.parametrize("rule", [frames.RULE_READING, frames.RULE_CODE])
def test_device_rules_on_a_client_session_are_refused(rule: int) -> None:
    client, proxy = kk_pair(zero_rtt=request(10, b"\x09"))
    # What a compact device would send: rule 1 (a reading) or rule 2.
    reading = coap.Message(coap.CON, coap.POST, 11, b"", ((coap.URI_PATH, b"v"),), b"\x82\x00\x01").encode()
    r, residue = frames.compress_up(reading)
    residue = residue if r == rule else bytes([11, coap.GET]) + b"\xb2wh"
    with pytest.raises(DecodeError):
        headers.open_up(proxy, client.seal(residue, rule=rule))
    assert proxy.mid == 10
    # Down, the device answer rules are not the client's either.
    tokens = headers.TokenMids()
    tokens.sent(request(11, b"\x02"))
    with pytest.raises(DecodeError):
        tokens.open_down(client, proxy.seal(b"\x45\x02", rule=rule))


def test_an_answer_naming_a_token_never_sent_is_refused() -> None:
    client, proxy = kk_pair(zero_rtt=request(10, b"\x09"))
    tokens = headers.TokenMids()
    up(client, proxy, request(11, b"\x02"), tokens)
    with pytest.raises(DecodeError):
        tokens.open_down(client, headers.seal_down(proxy, answer(11, b"\x03")))
    # The token the 0-RTT request carried was not sealed by seal_up: not known either.
    with pytest.raises(DecodeError):
        tokens.open_down(client, headers.seal_down(proxy, answer(10, b"\x09")))
    # The right one still opens.
    ans = answer(11, b"\x02")
    assert tokens.open_down(client, headers.seal_down(proxy, ans)) == ans


def test_token_mids_keeps_only_the_newest_tokens() -> None:
    tokens = headers.TokenMids(keep=3)
    client, proxy = kk_pair(zero_rtt=request(20, b"\x09"))
    for i in range(5):
        up(client, proxy, request(21 + i, bytes([0x30 + i])), tokens)
    # 0x30 and 0x31 are forgotten; sending 0x32 again (a retransmission) keeps it newest.
    up(client, proxy, request(23, b"\x32"), tokens)
    up(client, proxy, request(26, b"\x35"), tokens)  # pushes out 0x33, not 0x32
    for token, mid in ((b"\x30", 21), (b"\x31", 22), (b"\x33", 24)):
        with pytest.raises(DecodeError):
            tokens.open_down(client, headers.seal_down(proxy, answer(mid, token)))
    for token, mid in ((b"\x32", 23), (b"\x34", 25), (b"\x35", 26)):
        ans = answer(mid, token)
        assert tokens.open_down(client, headers.seal_down(proxy, ans)) == ans


def test_a_reused_token_names_its_newest_request() -> None:
    tokens = headers.TokenMids()
    client, proxy = kk_pair(zero_rtt=request(20, b"\x09"))
    up(client, proxy, request(21, b"\x44"), tokens)
    up(client, proxy, request(22, b"\x44"), tokens)
    ans = answer(22, b"\x44")
    assert tokens.open_down(client, headers.seal_down(proxy, ans)) == ans


def test_forged_and_truncated_frames_raise_only_our_errors() -> None:
    client, proxy = kk_pair(zero_rtt=request(10, b"\x09"))
    tokens = headers.TokenMids()
    msg = request(11, b"\x02", payload=b"hello")
    tokens.sent(msg)
    good_up = headers.seal_up(client, msg)
    good_down = headers.seal_down(proxy, answer(11, b"\x02"))
    for good, open_ in (
        (good_up, lambda d: headers.open_up(proxy, d)),
        (good_down, lambda d: tokens.open_down(client, d)),
    ):
        bad: list[bytes] = [good[:n] for n in range(len(good))]
        for pos in range(len(good)):
            for flip in (0x01, 0x80):
                forged = bytearray(good)
                forged[pos] ^= flip
                bad.append(bytes(forged))
        bad += [good + b"\x00", os.urandom(len(good)), bytes([good[0] & 0xCF | 0x10]) + good[1:]]
        for dgram in bad:
            with pytest.raises((AuthError, DecodeError)):
                open_(dgram)
    # Nothing of that moved the base, and the genuine frames still open.
    assert proxy.mid == 10
    assert headers.open_up(proxy, good_up) == msg
    assert tokens.open_down(client, good_down) == answer(11, b"\x02")


def test_replays_are_refused_both_ways() -> None:
    client, proxy = kk_pair(zero_rtt=request(10, b"\x09"))
    tokens = headers.TokenMids()
    dgram = up(client, proxy, request(11, b"\x02"), tokens)
    with pytest.raises(ReplayError):
        headers.open_up(proxy, dgram)
    down = headers.seal_down(proxy, answer(11, b"\x02"))
    tokens.open_down(client, down)
    with pytest.raises(ReplayError):
        tokens.open_down(client, down)


def test_a_compact_frame_of_another_session_does_not_open() -> None:
    client, proxy = kk_pair(zero_rtt=request(10, b"\x09"))
    other_client, _ = kk_pair(zero_rtt=request(10, b"\x09"))
    with pytest.raises(AuthError):
        headers.open_up(proxy, headers.seal_up(other_client, request(11, b"\x02")))
    assert proxy.mid == 10
