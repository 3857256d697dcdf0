"""CBOR codec against cbor2, and the decoder's fuzz invariant (CPython only)."""

import math
import struct
import tracemalloc

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lowbw.wire import cbor
from lowbw.wire.errors import DecodeError, LimitError

ints = st.integers(min_value=-(2**64), max_value=2**64 - 1)
small_ints = st.integers(min_value=-70000, max_value=70000)
floats = st.one_of(
    st.floats(),
    st.floats(width=16),
    st.floats(width=32),
    st.floats(min_value=-(2.0**-14), max_value=2.0**-14, width=16),  # float16 subnormals
)
texts = st.text(max_size=24)
leaves = st.one_of(st.none(), st.booleans(), ints, small_ints, floats, st.binary(max_size=24), texts)
keys = st.one_of(small_ints, ints, st.text(max_size=8), st.binary(max_size=8))


def tree(leaf, max_keys):
    return st.recursive(
        leaf,
        lambda c: st.one_of(st.lists(c, max_size=5), st.dictionaries(keys, c, max_size=max_keys)),
        max_leaves=25,
    )


values = tree(leaves, 5)
# Maps of at most one key, so cbor2's canonical key sorting cannot reorder them.
single_key_values = tree(leaves, 1)
# Everything except floats and specials: the types cbor2 has no choice about.
plain_values = tree(st.one_of(ints, small_ints, st.binary(max_size=24), texts), 1)


def same(a, b):
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return len(a) == len(b) and all(k in b and same(v, b[k]) for k, v in a.items())
    return type(a) is type(b) and a == b


def depth(v):
    if isinstance(v, list):
        return 1 + max((depth(x) for x in v), default=0)
    if isinstance(v, dict):
        return 1 + max((max(depth(k), depth(x)) for k, x in v.items()), default=0)
    return 0


def items(v):
    if isinstance(v, list):
        return 1 + sum(items(x) for x in v)
    if isinstance(v, dict):
        return 1 + sum(items(k) + items(x) for k, x in v.items())
    return 1


@given(values)
def test_round_trips_both_ways_with_cbor2(v):
    # One generated value drives several checks: generating recursive values
    # is the expensive part of these tests.
    ours = cbor.dumps(v)
    assert same(cbor2.loads(ours), v)
    assert same(cbor.loads(cbor2.dumps(v, canonical=True), max_depth=64, max_items=10**6), v)
    indefinite = cbor2.dumps(v, indefinite_containers=True)
    assert same(cbor.loads(indefinite, max_depth=64, max_items=10**6), v)


@given(single_key_values)
def test_bytes_equal_cbor2_canonical(v):
    assert cbor.dumps(v) == cbor2.dumps(v, canonical=True)


@given(plain_values)
def test_bytes_equal_cbor2_default(v):
    assert cbor.dumps(v) == cbor2.dumps(v)


@given(st.floats() | st.floats(width=16) | st.floats(width=32))
def test_floats_shortest_exact(x):
    data = cbor.dumps(x)
    assert data == cbor2.dumps(x, canonical=True)
    back = cbor.loads(data)
    assert same(back, x)
    # Shortest: no narrower float format would hold x exactly.
    if data[0] == 0xFA and not math.isnan(x):
        with pytest.raises((OverflowError, AssertionError)):
            assert struct.unpack(">e", struct.pack(">e", x))[0] == x
    if data[0] == 0xFB and not math.isnan(x):
        with pytest.raises((OverflowError, AssertionError)):
            assert struct.unpack(">f", struct.pack(">f", x))[0] == x


@given(values)
def test_limits_are_exact(v):
    d = depth(v)
    n = items(v)
    data = cbor.dumps(v)
    assert same(cbor.loads(data, max_depth=d, max_items=n), v)
    with pytest.raises(LimitError):
        cbor.loads(data, max_depth=64, max_items=n - 1)
    if d:
        with pytest.raises(LimitError):
            cbor.loads(data, max_depth=d - 1, max_items=n)
    # decode_from walks a sequence of items, leaving trailing ones alone.
    seq = data + cbor.dumps([v]) + data
    got, pos = cbor.decode_from(seq, len(data), max_depth=64, max_items=10**6)
    assert same(got, [v]) and pos == len(data) + len(cbor.dumps([v]))
    got, pos = cbor.decode_from(seq, pos, max_depth=64, max_items=10**6)
    assert same(got, v) and pos == len(seq)


def decodes_or_decode_error(data):
    try:
        got = cbor.loads(data)
    except DecodeError:
        return
    # Whatever we accept, cbor2 must read the same way.
    assert same(cbor2.loads(data), got)


@given(st.binary(max_size=80))
def test_fuzz_random_bytes(data):
    decodes_or_decode_error(data)


@given(values, st.data())
def test_fuzz_truncations_and_mutations(v, draw):
    data = bytearray(cbor.dumps(v))
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            cbor.loads(data[:cut], max_depth=64, max_items=10**6)
    for _ in range(draw.draw(st.integers(1, 4))):
        op = draw.draw(st.sampled_from(["set", "insert", "delete"]))
        i = draw.draw(st.integers(0, len(data)))
        if op == "set" and i < len(data):
            data[i] = draw.draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw.draw(st.binary(min_size=1, max_size=3))
        elif op == "delete" and i < len(data):
            del data[i]
    decodes_or_decode_error(bytes(data))


def head(major, n):
    return bytes([(major << 5) | 27]) + n.to_bytes(8, "big")


@given(
    st.sampled_from([2, 3, 4, 5]), st.integers(min_value=2**10, max_value=2**64 - 1), st.binary(max_size=40)
)
def test_fuzz_oversized_lengths(major, n, tail):
    with pytest.raises(DecodeError):
        cbor.loads(head(major, n) + tail)


@pytest.mark.parametrize("major", [2, 3, 4, 5])
@pytest.mark.parametrize("n", [2**32, 2**60, 2**64 - 1])
def test_oversized_lengths_allocate_nothing(major, n):
    data = head(major, n) + b"\x00"
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError):
            cbor.loads(data)
        with pytest.raises(DecodeError):
            cbor.loads(b"\x9f" + data + b"\xff")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024
