"""The compact link profile: KK handshake datagrams, compact frames, header rules, forgery limits."""

from lowbw.wire import coap, crypto, frames, handshake
from lowbw.wire.errors import AuthError, DecodeError, RekeyRequired, ReplayError
from tests.portable.check import raises

# Need code the device does not freeze (the proxy's side): full tree only.
FULL_TREE = (
    "test_kk_one_round_trip_sizes_and_caps",
    "test_kk_fresh_store_announces_its_epoch",
    "test_kk_wrong_device_key_or_tampering_fails",
    "test_kk_without_a_candidate_key_is_refused",
    "test_uplink_rules_expand_to_the_same_message",
    "test_uplink_message_id_is_the_nearest_to_the_last",
    "test_uplink_rule_garbage_is_decode_error",
    "test_downlink_rules_and_their_bound_message_id",
    "test_proxy_helpers_keep_the_standard_profile_as_it_was",
    "test_compact_session_ids_one_or_two_bytes",
    "test_compact_session_state_round_trips",
    "test_compact_forgery_limit_ends_the_session",
    "test_constants_are_the_documented_numbers",
)

DEV = bytes(range(1, 33))
PROXY = bytes(range(33, 65))
PROXY_PUB = crypto.x25519_base(PROXY)
DEV_PUB = crypto.x25519_base(DEV)
K1 = bytes(range(32))
K2 = bytes(range(100, 132))
# frames.RULE_RAW/READING/CODE, MAX_EPOCHS_AHEAD and FORGERY_LIMIT: the
# device build inlines them (private constants), so the device-tree tests
# spell the numbers (test_constants_are_the_documented_numbers checks them).
RAW, READING, CODE = 0, 1, 2
EPOCHS_AHEAD = 8


def reading_msg(mid, payload=b"\x82\x00\xf9\x4d\x60"):
    return coap.encode(coap.Message(coap.CON, coap.POST, mid, b"", ((coap.URI_PATH, b"v"),), payload))


def pair(sid=0x2A):
    return (frames.Session(K1, K2, sid, True, compact=True, mid=1),
            frames.Session(K2, K1, sid, False, compact=True, mid=1))


def kk(epoch=None, hsn=5, request=None):
    dev = handshake.Initiator(DEV, PROXY_PUB, hsn=hsn, epoch=epoch, compact=True)
    kk1 = dev.start(reading_msg(1) if request is None else request)
    proxy = handshake.Responder(PROXY, rs=DEV_PUB)
    return dev, kk1, proxy


def test_kk_one_round_trip_sizes_and_caps():
    dev, kk1, proxy = kk()
    assert kk1[0] == frames.HS_KK1 and kk1[1:3] == handshake.key_id(DEV_PUB)
    assert len(kk1) == 61  # kind, key id, e, caps, hsn, rule, MID, reading, tag
    pub, caps, request = proxy.read_init(kk1)
    assert pub == DEV_PUB and caps & handshake.CAP_COMPACT and request == reading_msg(1)
    assert proxy.hsn == 5 and proxy.epoch is None and proxy.mid == 1
    ack = coap.encode(coap.make_response(coap.decode(request), coap.CHANGED))
    kk2, p_session = proxy.respond(0x2A, handshake.negotiate_caps(caps), ack)
    assert kk2[0] == frames.HS_KK2 and len(kk2) == 52  # kind, e, sid, caps, rule, tag
    d_session, got, response = dev.finish(kk2)
    assert response == ack and got & handshake.CAP_COMPACT and d_session.sid == 0x2A
    assert d_session.compact and p_session.compact
    assert d_session.send_key == p_session.recv_key and d_session.recv_key == p_session.send_key


def test_kk_fresh_store_announces_its_epoch():
    dev, kk1, proxy = kk(epoch=0x89ABCDEF)
    assert len(kk1) == 65
    proxy.read_init(kk1)
    assert proxy.epoch == 0x89ABCDEF


def test_kk_wrong_device_key_or_tampering_fails():
    _, kk1, _ = kk()
    other = handshake.Responder(PROXY, rs=crypto.x25519_base(bytes(range(2, 34))))
    raises(AuthError, other.read_init, kk1)
    for i in (3, 40, len(kk1) - 1):
        bad = bytearray(kk1)
        bad[i] ^= 0x40
        raises(AuthError, handshake.Responder(PROXY, rs=DEV_PUB).read_init, bytes(bad))
    for n in (1, 3, 35, 50):
        try:
            handshake.Responder(PROXY, rs=DEV_PUB).read_init(kk1[:n])
        except (DecodeError, AuthError):
            pass
        else:
            raise AssertionError("truncated KK1 accepted")
    # A tampered answer never finishes the device's handshake.
    dev, kk1, proxy = kk()
    proxy.read_init(kk1)
    kk2, _ = proxy.respond(7, 2, b"")
    bad = bytearray(kk2)
    bad[-1] ^= 1
    raises(AuthError, dev.finish, bytes(bad))


def test_kk_without_a_candidate_key_is_refused():
    _, kk1, _ = kk()
    raises(AuthError, handshake.Responder(PROXY).read_init, kk1)


def test_compact_frames_round_trip_with_rules():
    dev, proxy = pair()
    req = reading_msg(2)
    rule, residue = frames.compress_up(req)
    assert rule == READING and residue == b"\x02\x82\x00\xf9\x4d\x60"
    up = dev.seal(residue, rule=rule)
    assert len(up) == 1 + 1 + 6 + 8 and up[0] == 0xD0 and up[1] == 0x2A
    assert proxy.open(up) == residue and proxy.rule == READING
    down = proxy.seal(b"", rule=READING, ad=b"\x00\x02")
    assert len(down) == 9 and down[0] == 0xD0
    assert dev.open(down, b"\x00\x02") == b"" and dev.rule == READING
    assert frames.expand_down(dev.rule, b"", 2) == bytes([0x60, 0x44, 0x00, 0x02])


def test_compact_replay_reorder_and_counters():
    dev, proxy = pair()
    sent = [dev.seal(bytes([i])) for i in range(40)]
    # Reordered within the window, and after a run of losses (no long form).
    for i in (1, 0, 5, 3, 30, 39):
        assert proxy.open(sent[i]) == bytes([i])
    # (Frames 30 and 39 each tried a nearer counter first: a failed tag check.)
    assert proxy.window.top == 39 and proxy.failures == 2
    # A replay within 8 of the newest is known as one; an older one reads as a
    # frame 16 further on and fails its tag (refused all the same, and counted).
    raises(ReplayError, proxy.open, sent[39])
    raises(AuthError, proxy.open, sent[1])
    # (the replay still tried the 8 later candidates; the old frame all 9)
    assert proxy.failures == 2 + EPOCHS_AHEAD + (EPOCHS_AHEAD + 1)


def test_compact_frames_bind_the_implied_message_id():
    dev, proxy = pair()
    down = proxy.seal(b"", rule=READING, ad=b"\x00\x07")
    # A late answer to request 7 read while request 8 is in flight fails.
    raises(AuthError, dev.open, down, b"\x00\x08")
    assert dev.failures > 0
    assert dev.open(down, b"\x00\x07") == b""
    # A raw frame binds nothing (a notification answers no request).
    raw = proxy.seal(b"\x40\x01\x00\x09")
    assert dev.open(raw, b"\x00\x08") == b"\x40\x01\x00\x09" and dev.rule == RAW


def test_compact_wrong_key_truncation_and_garbage():
    dev, proxy = pair()
    good = dev.seal(b"hello", rule=CODE)
    stranger = frames.Session(bytes(32), K2, 0x2A, True, compact=True)
    raises(AuthError, proxy.open, stranger.seal(b"hello"))
    for n in range(0, 10):
        raises(DecodeError, proxy.open, good[:n])
    for junk in (b"\xc0\x2a" + bytes(8), b"\xff" * 20, b"\xe5\x2a" + bytes(30)):
        try:
            proxy.open(junk)
        except (DecodeError, AuthError):
            pass
        else:
            raise AssertionError("garbage opened")
    # A standard frame is not a compact session's, nor the reverse.
    std = frames.Session(K1, K2, 0x2A, True)
    raises(DecodeError, proxy.open, std.seal(b"x"))
    raises(DecodeError, frames.Session(K2, K1, 0x2A, False).open, good)
    assert proxy.open(good) == b"hello"


def test_compact_forgery_limit_ends_the_session():
    dev, proxy = pair()
    forged = bytearray(dev.seal(b"x"))
    forged[-1] ^= 1
    while proxy.failures < frames.FORGERY_LIMIT:
        raises(AuthError, proxy.open, bytes(forged))
    raises(RekeyRequired, proxy.open, dev.seal(b"genuine"))


def test_compact_session_state_round_trips():
    dev, _ = pair()
    dev.seal(b"x")
    again = frames.Session.from_state(dev.export_state())
    assert again.compact and again.next_send == 1 and again.mid == 1


def test_uplink_rules_expand_to_the_same_message():
    for msg in (reading_msg(0x1234), coap.encode(coap.Message(coap.CON, coap.GET, 0x1235, b"",
                                                               ((coap.URI_PATH, b"z"),)))):
        rule, residue = frames.compress_up(msg)
        assert frames.expand_up(rule, residue, 0x1230) == (msg, (msg[2] << 8) | msg[3])
        rule, residue = frames.compress_up(msg, True)
        assert frames.expand_up(rule, residue, None)[0] == msg
    ack = coap.encode(coap.make_ack(coap.decode(reading_msg(3))))
    assert frames.compress_up(ack) == (frames.RULE_RAW, ack)
    assert frames.expand_up(frames.RULE_RAW, ack, 5) == (ack, None)


def test_uplink_message_id_is_the_nearest_to_the_last():
    def mid_of(lo, last):
        return frames.expand_up(frames.RULE_CODE, bytes([lo, 1]), last)[1]

    assert mid_of(0x05, 0x12FE) == 0x1305  # forward over a byte boundary
    assert mid_of(0xF0, 0x1305) == 0x12F0  # a delayed older copy
    assert mid_of(0x7F, 0x0000) == 0x007F
    assert mid_of(0x81, 0x0000) == 0xFF81  # 127 back wraps the 16 bits
    assert mid_of(0x00, 0xFFFF) == 0x0000


def test_uplink_rule_garbage_is_decode_error():
    for rule, residue, last in ((1, b"", 3), (1, b"\x05", 3), (2, b"\x05", 3), (2, b"", 3),
                                (1, b"\x01\x02", -1), (3, b"\x01\x02\x03", 3), (1, b"\x01", None),
                                (2, b"\x00\x01", None)):
        raises(DecodeError, frames.expand_up, rule, residue, last)
    raises(DecodeError, handshake.kk_request, b"\x01\x00")


def test_downlink_rules_and_their_bound_message_id():
    plain = coap.encode(coap.make_response(coap.decode(reading_msg(0x0102)), coap.CHANGED))
    assert frames.compress_down(plain) == (frames.RULE_READING, b"", b"\x01\x02")
    content = coap.Message(coap.ACK, coap.CONTENT, 0x0102, b"", (), b"\x1b" + bytes(8))
    rule, residue, ad = frames.compress_down(coap.encode(content))
    assert rule == frames.RULE_CODE and residue[0] == coap.CONTENT and ad == b"\x01\x02"
    assert frames.expand_down(rule, residue, 0x0102) == coap.encode(content)
    note = coap.encode(coap.Message(coap.CON, coap.CONTENT, 9, b"\x01", (), b"\x01"))
    assert frames.compress_down(note) == (frames.RULE_RAW, note, b"")
    empty = coap.encode(coap.make_ack(coap.decode(reading_msg(4))))
    assert frames.compress_down(empty)[0] == frames.RULE_RAW
    raises(DecodeError, frames.expand_down, frames.RULE_CODE, b"", 1)


def test_proxy_helpers_keep_the_standard_profile_as_it_was():
    dev = frames.Session(K1, K2, 0x0102, True)
    proxy = frames.Session(K2, K1, 0x0102, False)
    req = reading_msg(1)
    assert frames.open_up(proxy, dev.seal(req)) == req
    down = frames.seal_down(proxy, b"\x60\x44\x00\x01")
    assert len(down) == 1 + 4 + 16 and dev.open(down) == b"\x60\x44\x00\x01"


def test_compact_session_ids_one_or_two_bytes():
    assert frames.sid_bytes(0x7F) == b"\x7f" and frames.sid_bytes(0x80) == b"\x80\x80"
    assert frames.sid_bytes(0x7FFF) == b"\xff\xff"
    for sid in (0, 0x7F, 0x80, 0x1234, 0x7FFF):
        dev, proxy = pair(sid)
        up = dev.seal(b"x")
        assert frames.peek_session_id(up) == sid and len(up) == 1 + len(frames.sid_bytes(sid)) + 1 + 8
        assert frames.open_up(proxy, up) == b"x"
    dev, kk1, proxy = kk()
    proxy.read_init(kk1)
    kk2, _ = proxy.respond(0x1234, 2, b"")
    assert dev.finish(kk2)[0].sid == 0x1234


def test_constants_are_the_documented_numbers():
    assert (frames.RULE_RAW, frames.RULE_READING, frames.RULE_CODE) == (RAW, READING, CODE)
    assert frames.MAX_EPOCHS_AHEAD == EPOCHS_AHEAD and frames.FORGERY_LIMIT == 1024 and frames.C_TAG == 8
