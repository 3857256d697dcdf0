"""Handshake datagrams: IK with 0-RTT request, XX pairing, sizes, bad input."""

from lowbw.wire import crypto, frames, handshake
from lowbw.wire.errors import AuthError, DecodeError, StateError
from tests.portable.check import raises

DEV = bytes(range(1, 33))
PROXY = bytes(range(33, 65))
PROXY_PUB = crypto.x25519_base(PROXY)


def test_ik_one_round_trip_with_request():
    dev = handshake.Initiator(DEV, PROXY_PUB)
    prx = handshake.Responder(PROXY)
    first = dev.start(b"R" * 12)
    assert first[0] == frames.HS_IK1
    assert len(first) == 1 + 32 + 48 + 1 + 12 + 16
    pub, caps, request = prx.read_init(first)
    assert pub == crypto.x25519_base(DEV)
    assert caps == handshake.DEFAULT_CAPS and request == b"R" * 12
    answer, p_sess = prx.respond(0x0102, handshake.negotiate_caps(caps), b"A" * 4)
    assert len(answer) == 1 + 32 + 2 + 1 + 4 + 16
    d_sess, caps2, response = dev.finish(answer)
    assert caps2 == caps and response == b"A" * 4
    assert d_sess.sid == 0x0102 and p_sess.sid == 0x0102
    assert p_sess.open(d_sess.seal(b"up")) == b"up"
    assert d_sess.open(p_sess.seal(b"down")) == b"down"
    assert handshake.init_ephemeral(first) == first[1:33]


def test_ik_wrong_proxy_key_is_not_answered():
    dev = handshake.Initiator(DEV, crypto.x25519_base(bytes(range(2, 34))))
    prx = handshake.Responder(PROXY)
    raises(AuthError, prx.read_init, dev.start(b"x"))


def test_ik_tampered_answer_fails():
    dev = handshake.Initiator(DEV, PROXY_PUB)
    prx = handshake.Responder(PROXY)
    prx.read_init(dev.start(b""))
    answer, _ = prx.respond(1, 2)
    bad = bytearray(answer)
    bad[-1] ^= 1
    raises(AuthError, dev.finish, bytes(bad))


def test_xx_pairing_learns_proxy_key_and_pads():
    dev = handshake.Initiator(DEV, None)
    prx = handshake.Responder(PROXY)
    first = dev.start(b"REQ")
    assert first[0] == frames.HS_XX1 and len(first) == handshake.XX1_MIN_LEN
    pub, caps, req = prx.read_init(first)
    assert pub is None and req == b""
    second, none = prx.respond(7, caps)
    assert none is None and len(second) <= len(first)
    d_sess, _, third = dev.finish(second)
    assert dev.remote_static() == PROXY_PUB
    assert frames.peek_session_id(third) == 7
    dev_pub, request, p_sess = prx.read_final(third)
    assert dev_pub == crypto.x25519_base(DEV) and request == b"REQ"
    assert p_sess.open(d_sess.seal(b"hi")) == b"hi"


def test_xx_short_first_message_is_refused():
    dev = handshake.Initiator(DEV, None)
    first = dev.start()
    raises(DecodeError, handshake.Responder(PROXY).read_init, first[:-1])


def test_caps_negotiation():
    assert handshake.negotiate_caps(0x02) == 0x02
    assert handshake.negotiate_caps(0x01) == 0x01
    assert handshake.negotiate_caps(0x0F) == 0x02
    assert handshake.negotiate_caps(0x12) == 0x12
    assert handshake.negotiate_caps(0xE2) == 0x02


def test_bad_input_and_order():
    prx = handshake.Responder(PROXY)
    for bad in (b"", b"\x81", b"\x81" + bytes(40), b"\x00" * 60, b"\x82" + bytes(100)):
        try:
            handshake.Responder(PROXY).read_init(bad)
        except (DecodeError, AuthError):
            pass
        else:
            raise AssertionError("accepted %r" % bad)
    raises(StateError, prx.respond, 1, 2)
    dev = handshake.Initiator(DEV, PROXY_PUB)
    raises(StateError, dev.finish, b"\x82")
    dev.start()
    raises(StateError, dev.start)
    raises(DecodeError, dev.finish, b"\x84" + bytes(60))


def test_supported_tables_match_keys_module():
    from lowbw.wire import keys
    assert handshake.SUPPORTED_TABLES == keys.TABLE_IDS
    assert handshake.DEFAULT_CAPS & handshake.CAPS_TABLE_MASK == keys.TABLE_LOWBW_V1
