"""Property tests: frames, handshake datagrams and readings never crash on bad
input, never accept a frame twice, and never reuse a nonce."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lowbw.wire import cbor, crypto, frames, handshake, reading
from lowbw.wire.errors import AuthError, DecodeError, LowbwError, ReplayError

K1 = bytes(range(32))
K2 = bytes(range(100, 132))
DEV = bytes(range(1, 33))
PROXY = bytes(range(33, 65))
PROXY_PUB = crypto.x25519_base(PROXY)


def pair() -> tuple[frames.Session, frames.Session]:
    return frames.Session(K1, K2, 0x0102, True), frames.Session(K2, K1, 0x0102, False)


@given(st.binary(max_size=80))
def test_open_garbage_only_our_errors_and_no_state_change(data: bytes) -> None:
    for session in pair():
        before = session.export_state()
        try:
            session.open(data)
        except (DecodeError, AuthError):
            pass
        assert session.export_state() == before


@given(st.binary(min_size=1, max_size=40), st.integers(0, 60), st.integers(0, 255))
def test_mutated_frame_never_opens(payload: bytes, pos: int, flip: int) -> None:
    device, proxy = pair()
    good = bytearray(device.seal(payload))
    pos %= len(good)
    if flip == 0:
        return
    good[pos] ^= flip
    try:
        proxy.open(bytes(good))
    except (DecodeError, AuthError):
        return
    raise AssertionError("a modified frame authenticated")


@given(st.lists(st.integers(0, 39), max_size=120))
def test_any_delivery_schedule_accepts_each_frame_at_most_once(schedule: list[int]) -> None:
    device, proxy = pair()
    sent = [device.seal(b"%d" % i) for i in range(40)]
    accepted: list[bytes] = []
    for i in schedule:
        try:
            accepted.append(proxy.open(sent[i]))
        except (ReplayError, AuthError):
            pass
    assert len(accepted) == len(set(accepted))
    # Whatever arrived first, in order and never seen, is always accepted.
    if schedule:
        assert accepted and accepted[0] == b"%d" % schedule[0]


@given(st.lists(st.booleans(), min_size=1, max_size=200))
def test_counters_strictly_increase_across_resumes(resume_points: list[bool]) -> None:
    device, _ = pair()
    seen = []
    for resume in resume_points:
        if resume:
            device = frames.Session.from_state(device.export_state())
        n = device.next_send
        device.seal(b"x")
        seen.append(n)
    assert seen == sorted(set(seen))


@given(st.lists(st.booleans(), min_size=1, max_size=300))
def test_losses_never_desynchronise(lost: list[bool]) -> None:
    device, proxy = pair()
    for i, is_lost in enumerate(lost):
        dgram = device.seal(b"%d" % i)
        if not is_lost:
            assert proxy.open(dgram) == b"%d" % i
            device.open(proxy.seal(b"ack"))


@given(st.binary(max_size=200))
def test_responder_read_init_garbage(data: bytes) -> None:
    try:
        handshake.Responder(PROXY).read_init(data)
    except (DecodeError, AuthError):
        pass


@given(st.binary(max_size=120))
def test_initiator_finish_garbage(data: bytes) -> None:
    dev = handshake.Initiator(DEV, PROXY_PUB, e_priv=bytes(range(65, 97)))
    dev.start(b"req")
    try:
        dev.finish(data)
    except (DecodeError, AuthError):
        pass


@given(st.binary(max_size=60))
def test_kind_and_session_id_peek(data: bytes) -> None:
    for fn in (frames.kind_of, frames.peek_session_id):
        try:
            fn(data)
        except DecodeError:
            pass


readings_st = st.lists(
    st.tuples(
        st.integers(0, 255),
        st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1),
                           st.floats(allow_nan=False, allow_infinity=False)), min_size=1, max_size=16),
        st.one_of(st.just(0), st.integers(-(10**6), -1), st.integers(1, 2**40),
                  st.floats(-1e6, -0.001)),
    ),
    min_size=1, max_size=64,
)


@given(readings_st)
def test_readings_round_trip(rs: list[tuple[int, list[object], float]]) -> None:
    assert reading.decode_readings(reading.encode_readings(rs)) == rs


@given(st.binary(max_size=100))
def test_readings_garbage(data: bytes) -> None:
    try:
        reading.decode_readings(data)
    except DecodeError:
        pass


@given(st.recursive(st.one_of(st.integers(-1000, 1000), st.floats(), st.text(max_size=3), st.none(),
                              st.booleans()),
                    lambda inner: st.lists(inner, max_size=4), max_leaves=20))
def test_readings_any_cbor_value(value: object) -> None:
    try:
        out = reading.decode_readings(cbor.dumps(value))
    except LowbwError as exc:
        assert isinstance(exc, DecodeError)
        return
    assert out
