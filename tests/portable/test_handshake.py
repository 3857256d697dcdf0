"""Handshake datagrams: IK with 0-RTT request, XX pairing, sizes, bad input."""

from lowbw.wire import crypto, frames, handshake
from lowbw.wire.errors import AuthError, DecodeError, EncodeError, StateError
from tests.portable.check import raises

# Need code the device does not freeze (the proxy's side, or names the
# device build leaves out): run on the full tree only (tests/portable/mp_run.py).
FULL_TREE = (
    "test_bad_input_and_order",
    "test_caps_negotiation",
    "test_cookie_helpers",
    "test_epoch_bounds_and_caps_bit_follows_the_epoch",
    "test_epoch_is_big_endian_after_the_caps_byte",
    "test_floor_in_the_answer_reaches_the_device",
    "test_handshake_number_rides_after_caps_and_epoch",
    "test_ik_claiming_an_epoch_it_lacks_is_refused",
    "test_ik_one_round_trip_with_request",
    "test_ik_sizes_without_and_with_counter_epoch",
    "test_ik_tampered_answer_fails",
    "test_ik_without_its_handshake_number_is_refused",
    "test_ik_wrong_proxy_key_is_not_answered",
    "test_supported_tables_match_keys_module",
    "test_xx_pairing_learns_proxy_key_and_pads",
    "test_xx_pairing_with_epoch_in_message_3",
    "test_xx_short_first_message_is_refused",
)


DEV = bytes(range(1, 33))
PROXY = bytes(range(33, 65))
PROXY_PUB = crypto.x25519_base(PROXY)


def test_ik_one_round_trip_with_request():
    dev = handshake.Initiator(DEV, PROXY_PUB, hsn=0)
    prx = handshake.Responder(PROXY)
    first = dev.start(b"R" * 12)
    assert first[0] == frames.HS_IK1
    assert len(first) == 1 + 32 + 48 + 1 + 1 + 12 + 16
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
    dev = handshake.Initiator(DEV, PROXY_PUB, hsn=0)
    prx = handshake.Responder(PROXY)
    prx.read_init(dev.start(b""))
    answer, _ = prx.respond(1, 2)
    bad = bytearray(answer)
    bad[-1] ^= 1
    raises(AuthError, dev.finish, bytes(bad))


def test_xx_pairing_learns_proxy_key_and_pads():
    dev = handshake.Pairing(DEV)
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
    dev = handshake.Pairing(DEV)
    first = dev.start()
    raises(DecodeError, handshake.Responder(PROXY).read_init, first[:-1])


def test_caps_negotiation():
    assert handshake.negotiate_caps(0x02) == 0x02
    assert handshake.negotiate_caps(0x01) == 0x01
    assert handshake.negotiate_caps(0x0F) == 0x02
    assert handshake.negotiate_caps(0x12) == 0x12
    assert handshake.negotiate_caps(0xE2) == 0x02
    # CAP_EPOCH is never negotiated: the caller echoes it once it recorded the epoch.
    assert handshake.negotiate_caps(0x22) == 0x02
    assert handshake.negotiate_caps(0x32, 0x30) == 0x12


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
    dev = handshake.Initiator(DEV, PROXY_PUB, hsn=0)
    raises(StateError, dev.finish, b"\x82")
    dev.start()
    raises(StateError, dev.start)
    raises(DecodeError, dev.finish, b"\x84" + bytes(60))


def test_supported_tables_match_keys_module():
    from lowbw.wire import keys
    assert handshake.SUPPORTED_TABLES == keys.TABLE_IDS
    assert handshake.DEFAULT_CAPS & handshake.CAPS_TABLE_MASK == keys.TABLE_LOWBW_V1


def test_ik_sizes_without_and_with_counter_epoch():
    """The worked sizes: 111 + 56 bytes cold, 115 + 56 when the epoch rides along."""
    for epoch, up in ((None, 111), (0x89ABCDEF, 115)):
        dev = handshake.Initiator(DEV, PROXY_PUB, hsn=0, epoch=epoch)
        prx = handshake.Responder(PROXY)
        first = dev.start(b"R" * 12)
        assert len(first) == up
        pub, caps, request = prx.read_init(first)
        assert pub == crypto.x25519_base(DEV) and request == b"R" * 12
        assert prx.epoch == epoch and dev.epoch == epoch
        assert bool(caps & handshake.CAP_EPOCH) == (epoch is not None)
        assert caps & ~handshake.CAP_EPOCH == handshake.DEFAULT_CAPS
        accepted = handshake.negotiate_caps(caps)
        assert not accepted & handshake.CAP_EPOCH
        if prx.epoch is not None:
            accepted |= handshake.CAP_EPOCH
        answer, p_sess = prx.respond(0x0102, accepted, b"A" * 4)
        assert len(answer) == 56
        d_sess, caps2, response = dev.finish(answer)
        assert caps2 == accepted and response == b"A" * 4
        assert p_sess.open(d_sess.seal(b"up")) == b"up"


def test_epoch_is_big_endian_after_the_caps_byte():
    from lowbw.wire.noise import HandshakeState

    dev = handshake.Initiator(DEV, PROXY_PUB, hsn=0, epoch=0x01020304)
    first = dev.start(b"xyz")
    raw = HandshakeState("IK", False, PROXY, prologue=frames.PROLOGUE)
    payload = raw.read_message(first[1:])
    caps = bytes([handshake.DEFAULT_CAPS | handshake.CAP_EPOCH])
    assert bytes(payload) == caps + b"\x01\x02\x03\x04\x00xyz"
    assert handshake.split_epoch(handshake.CAP_EPOCH | 2, b"\x01\x02\x03\x04xyz") == (0x01020304, b"xyz")
    assert handshake.split_epoch(2, b"\x01\x02\x03\x04xyz") == (None, b"\x01\x02\x03\x04xyz")
    raises(DecodeError, handshake.split_epoch, handshake.CAP_EPOCH, b"\x01\x02\x03")


def test_epoch_bounds_and_caps_bit_follows_the_epoch():
    for epoch in (0, 1, 0xFFFFFFFF):
        dev = handshake.Initiator(DEV, PROXY_PUB, hsn=0, epoch=epoch)
        prx = handshake.Responder(PROXY)
        prx.read_init(dev.start(b""))
        assert prx.epoch == epoch
    for bad in (-1, 1 << 32, True, 1.0, "1"):
        raises(EncodeError, handshake.Initiator, DEV, PROXY_PUB, epoch=bad)
    # A caller's stray CAP_EPOCH without an epoch is cleared, never sent.
    dev = handshake.Initiator(DEV, PROXY_PUB, hsn=0, caps=handshake.DEFAULT_CAPS | handshake.CAP_EPOCH)
    prx = handshake.Responder(PROXY)
    _, caps, req = prx.read_init(dev.start(b"abcd"))
    assert caps == handshake.DEFAULT_CAPS and req == b"abcd" and prx.epoch is None


def test_ik_claiming_an_epoch_it_lacks_is_refused():
    dev = handshake.Initiator(DEV, PROXY_PUB, hsn=0)
    dev.caps |= handshake.CAP_EPOCH  # a broken device: the bit, then only 3 bytes
    raises(DecodeError, handshake.Responder(PROXY).read_init, dev.start(b"abc"))


def test_xx_pairing_with_epoch_in_message_3():
    for epoch in (None, 0xCAFEF00D):
        dev = handshake.Pairing(DEV, epoch=epoch)
        prx = handshake.Responder(PROXY)
        first = dev.start(b"REQ")
        assert len(first) == handshake.XX1_MIN_LEN
        _, caps, _ = prx.read_init(first)
        # Message 1 is not authenticated: the epoch is not in it.
        assert prx.epoch is None
        assert bool(caps & handshake.CAP_EPOCH) == (epoch is not None)
        accepted = handshake.negotiate_caps(caps) | (caps & handshake.CAP_EPOCH)
        second, _ = prx.respond(9, accepted)
        d_sess, caps2, third = dev.finish(second)
        assert caps2 == accepted
        assert len(third) == 3 + 48 + 3 + 16 + (0 if epoch is None else 4)
        dev_pub, request, p_sess = prx.read_final(third)
        assert dev_pub == crypto.x25519_base(DEV) and request == b"REQ" and prx.epoch == epoch
        assert p_sess.open(d_sess.seal(b"hi")) == b"hi"


def test_handshake_number_rides_after_caps_and_epoch():
    from lowbw.wire.noise import HandshakeState

    for hsn, head in ((0, b"\x00"), (23, b"\x17"), (24, b"\x18\x18"), (300, b"\x19\x01\x2c"),
                      (70000, b"\x1a\x00\x01\x11\x70"), (1 << 40, b"\x1b" + (1 << 40).to_bytes(8, "big"))):
        dev = handshake.Initiator(DEV, PROXY_PUB, hsn=hsn, epoch=7)
        first = dev.start(b"q")
        raw = HandshakeState("IK", False, PROXY, prologue=frames.PROLOGUE)
        payload = bytes(raw.read_message(first[1:]))
        caps = bytes([handshake.DEFAULT_CAPS | handshake.CAP_EPOCH])
        assert payload == caps + b"\x00\x00\x00\x07" + head + b"q"
        prx = handshake.Responder(PROXY)
        _, _, req = prx.read_init(first)
        assert prx.hsn == hsn and prx.epoch == 7 and req == b"q"


def test_handshake_number_decoding_refuses_bad_heads():
    assert handshake.split_uint(b"\x05rest") == (5, b"rest")
    for bad in (b"", b"\x18", b"\x18\x05", b"\x19\x00\x10", b"\x1a\x00\x00\xff\xff",
                b"\x1b" + bytes(8), b"\x1c", b"\x20", b"\x40", b"\xff", b"\x19\x01"):
        raises(DecodeError, handshake.split_uint, bad)
    for bad in (-1, 1 << 64, True, 1.5, "3"):
        raises(EncodeError, handshake.encode_uint, bad)


def test_ik_without_its_handshake_number_is_refused():
    from lowbw.wire.noise import HandshakeState

    raw = HandshakeState("IK", True, DEV, rs=PROXY_PUB, prologue=frames.PROLOGUE)
    first = bytes([frames.HS_IK1]) + raw.write_message(bytes([handshake.DEFAULT_CAPS]))
    raises(DecodeError, handshake.Responder(PROXY).read_init, first)


def test_clock_numbers_grow_strictly():
    a = handshake.clock_hsn()
    b = handshake.clock_hsn()
    assert b > a > 1600000000
    dev = handshake.Initiator(DEV, PROXY_PUB)
    assert dev.hsn > b


def test_floor_in_the_answer_reaches_the_device():
    for floor in (None, 0, 5, 1000):
        dev = handshake.Initiator(DEV, PROXY_PUB, hsn=0, epoch=9)
        prx = handshake.Responder(PROXY)
        _, caps, _ = prx.read_init(dev.start(b""))
        accepted = handshake.negotiate_caps(caps) | handshake.CAP_EPOCH
        answer, p_sess = prx.respond(3, accepted, b"ok", floor)
        d_sess, caps2, response = dev.finish(answer)
        assert dev.floor == floor and response == b"ok"
        assert caps2 == accepted and not caps2 & handshake.CAP_FLOOR
        assert p_sess.open(d_sess.seal(b"up")) == b"up"


def test_cookie_helpers():
    cookie = bytes(range(16))
    reply = bytes([frames.HS_COOKIE_REPLY]) + cookie
    assert frames.kind_of(reply) == frames.HS_COOKIE_REPLY
    assert handshake.parse_cookie_reply(reply) == cookie
    for bad in (reply[:-1], reply + b"x", b"\x82" + cookie):
        raises(DecodeError, handshake.parse_cookie_reply, bad)
    ik1 = handshake.Initiator(DEV, PROXY_PUB, hsn=1).start(b"r")
    wrapped = handshake.cookied(cookie, ik1)
    assert wrapped[0] == frames.HS_COOKIED and frames.kind_of(wrapped) == frames.HS_COOKIED
    assert handshake.split_cookied(wrapped) == (cookie, ik1)
    raises(EncodeError, handshake.cookied, cookie[:8], ik1)
    for bad in (wrapped[:17], b"\x87" + cookie + b"\x82" + ik1[1:], b"\x86" + cookie + ik1):
        raises(DecodeError, handshake.split_cookied, bad)
