"""Transport frames: sizes, counters, replay window, authentication."""

from lowbw.wire import frames
from lowbw.wire.errors import AuthError, DecodeError, RekeyRequired, ReplayError
from tests.portable.check import raises

# Need code the device does not freeze (the proxy's side, or names the
# device build leaves out): run on the full tree only (tests/portable/mp_run.py).
FULL_TREE = (
    "test_export_and_resume",
    "test_hearing_back_returns_to_short_form",
    "test_too_old_is_refused",
    "test_truncated_and_garbage",
)


K1 = bytes(range(32))
K2 = bytes(range(100, 132))


def pair(sid=0x1234):
    device = frames.Session(K1, K2, sid, True)
    proxy = frames.Session(K2, K1, sid, False)
    return device, proxy


def test_short_frame_sizes():
    device, proxy = pair()
    up = device.seal(b"x" * 12)
    assert len(up) == 3 + 12 + 16
    assert up[0] == 0 and up[1] == 0x12 and up[2] == 0x34
    down = proxy.seal(b"y" * 4)
    assert len(down) == 1 + 4 + 16
    assert proxy.open(up) == b"x" * 12
    assert device.open(down) == b"y" * 4


def test_counter_low_bits_in_kind_byte():
    device, proxy = pair()
    for i in range(70):
        dgram = device.seal(b"%d" % i)
        assert dgram[0] == (i & 63)
        assert proxy.open(dgram) == b"%d" % i
        device.open(proxy.seal(b"ok"))


def test_duplicate_is_replay():
    device, proxy = pair()
    dgram = device.seal(b"once")
    proxy.open(dgram)
    raises(ReplayError, proxy.open, dgram)


def test_reordering_within_window():
    device, proxy = pair()
    dgrams = [device.seal(b"%d" % i) for i in range(20)]
    order = [3, 0, 1, 2, 10, 4, 19, 5, 6, 7, 8, 9, 11, 18, 12, 13, 14, 15, 16, 17]
    for i in order:
        assert proxy.open(dgrams[i]) == b"%d" % i
    for d in dgrams:
        raises(ReplayError, proxy.open, d)


def test_too_old_is_refused():
    device, proxy = pair()
    old = device.seal(b"old")
    for _ in range(frames.WINDOW + 1):
        device.seal(b"lost")
    proxy.open(device.seal(b"new"))
    # 66 behind the top: out of the window; with 6 low bits it can only be
    # read as a future counter, which fails authentication.
    raises(AuthError, proxy.open, old)


def test_long_run_of_losses_recovers_by_epoch_search():
    device, proxy = pair()
    proxy.open(device.seal(b"first"))
    for _ in range(200):
        device.seal(b"lost")
    # Still short form? No: the device has not heard back, so long form.
    d = device.seal(b"after")
    assert d[0] & 0xC0 == 0x40
    assert len(d) == 3 + 3 + 5 + 16
    assert proxy.open(d) == b"after"


def test_short_form_forced_after_gap_within_epoch_search():
    device, proxy = pair()
    proxy.open(device.seal(b"first"))
    for _ in range(300):
        device.seal(b"lost")
    d = device.seal(b"forced", long_form=False)
    assert d[0] & 0xC0 == 0
    assert proxy.open(d) == b"forced"


def test_hearing_back_returns_to_short_form():
    device, proxy = pair()
    for _ in range(frames.LONG_AFTER):
        proxy.open(device.seal(b"a"))
    assert device.seal(b"b")[0] & 0xC0 == 0x40
    device.open(proxy.seal(b"reply"))
    assert device.seal(b"c")[0] & 0xC0 == 0


def test_tampering_fails_and_changes_nothing():
    device, proxy = pair()
    good = device.seal(b"hello")
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= 0x01
        try:
            proxy.open(bytes(bad))
        except (AuthError, DecodeError):
            pass
        else:
            raise AssertionError("tampered byte %d accepted" % i)
    assert proxy.window.top == -1
    assert proxy.open(good) == b"hello"


def test_wrong_session_and_wrong_key():
    device, proxy = pair(sid=7)
    # The session id is authenticated (associated data): changed in flight, the
    # frame fails (the proxy finds the session by it, so a frame naming
    # another session never reaches this one).
    moved = bytearray(device.seal(b"x"))
    moved[2] ^= 1
    raises(AuthError, proxy.open, bytes(moved))
    stranger = frames.Session(bytes(32), K2, 7, True)
    raises(AuthError, proxy.open, stranger.seal(b"x"))


def test_truncated_and_garbage():
    device, proxy = pair()
    good = device.seal(b"hello")
    for n in range(0, 3 + 16):
        raises(DecodeError, proxy.open, good[:n])
    raises(DecodeError, proxy.open, b"\xff\x00\x00" + bytes(20))
    raises(DecodeError, frames.kind_of, b"")
    raises(DecodeError, frames.peek_session_id, b"\x81" + bytes(40))
    assert frames.peek_session_id(good) == 0x1234


def test_counter_limit_refuses_to_send():
    device, proxy = pair()
    device.next_send = frames.COUNTER_LIMIT - 1
    assert device.needs_rekey()
    last = device.seal(b"last", long_form=True)
    raises(RekeyRequired, device.seal, b"one too many")
    proxy.window.top = frames.COUNTER_LIMIT - 10
    assert proxy.open(last) == b"last"


def test_nonce_is_spent_even_if_frame_is_dropped():
    device, _ = pair()
    a = device.seal(b"same")
    b = device.seal(b"same")
    assert a != b and device.next_send == 2


def test_export_and_resume():
    device, proxy = pair()
    proxy.open(device.seal(b"1"))
    resumed = frames.Session.from_state(device.export_state())
    d = resumed.seal(b"2")
    assert proxy.open(d) == b"2"
    proxy2 = frames.Session.from_state(proxy.export_state())
    raises(ReplayError, proxy2.open, d)
    assert device.reserve(16) == device.next_send + 16


def test_window_candidates_start_near_expected():
    w = frames.ReplayWindow()
    assert w.candidates(5)[0] == 5
    w.accept(100)
    assert w.candidates(100 & 63)[0] == 100
    assert w.candidates(101 & 63)[0] == 101
    assert w.candidates(70 & 63)[0] == 70
    assert w.candidates(131 & 63)[0] == 131
