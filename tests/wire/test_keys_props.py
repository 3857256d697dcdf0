"""Key compression: lossless for any JSON, and table 2 beats table 1 on real shapes (CPython only)."""

import json

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lowbw.wire import cbor, keys, keytables

TABLES = [keys.TABLE_MSC3079_V1, keys.TABLE_LOWBW_V1]
TABLE_KEYS = sorted(set(keytables.MSC3079_V1) | set(keytables.LOWBW_V1))

json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(TABLE_KEYS),  # table keys as VALUES must stay untouched
)
json_keys = st.one_of(
    st.sampled_from(TABLE_KEYS),
    st.integers(min_value=-5, max_value=300).map(str),  # "5" must stay text
    st.text(max_size=10),
)
json_values = st.recursive(
    json_leaves,
    lambda c: st.one_of(st.lists(c, max_size=5), st.dictionaries(json_keys, c, max_size=6)),
    max_leaves=30,
)


@given(json_values)
def test_expand_inverts_compress(x):
    for tid in TABLES:
        c = keys.compress(x, tid)
        assert keys.expand(c, tid) == x
        data = cbor.dumps(c)
        assert keys.expand(cbor.loads(data, max_depth=64, max_items=10**6), tid) == x
        assert keys.expand(cbor2.loads(data), tid) == x
        # A peer encoding with cbor2 (sorted keys) is read the same way.
        assert (
            keys.expand(cbor.loads(cbor2.dumps(c, canonical=True), max_depth=64, max_items=10**6), tid) == x
        )


@given(st.dictionaries(json_keys, json_leaves, max_size=8))
def test_compress_only_touches_table_keys(d):
    for tid in TABLES:
        ids = keys.get_table(tid).ids
        c = keys.compress(d, tid)
        for k, v in d.items():
            if k in ids:
                assert c[ids[k]] == v
            else:
                assert c[k] == v and isinstance(k, str)


# Shapes as Synapse 1.163 sends them (ids and tokens in their real formats).
SEND_BODY = {"msgtype": "m.text", "body": "The door is open"}
EVENT = {
    "type": "m.room.message",
    "sender": "@alice:example.org",
    "content": {"msgtype": "m.text", "body": "The door is open"},
    "origin_server_ts": 1732600000000,
    "unsigned": {"age": 1234},
    "event_id": "$kUfUmwz8R9J3ON6J2GQ3ZbVp7Dj0sLQ4YdL0pZ5fQ2s",
    "room_id": "!cuyZdsfqVbyQzDkrMJ:example.org",
}
SENSOR_EVENT = {
    "type": "m.room.message",
    "sender": "@sensor-7:example.org",
    "content": {
        "msgtype": "m.notice",
        "body": "temperature 21.5 \u00b0C",
        "value": "21.5",
        "unit": "\u00b0C",
    },
    "origin_server_ts": 1732600000000,
    "unsigned": {"age": 88},
    "event_id": "$0a9Yp4hHfQm3NwB6cYtq8KJ1UxV2rS7dLzGeT5oPiWk",
}
SYNC = {
    "next_batch": "s72595_4483_1934_3_30_1_1_42_0_1",
    "account_data": {"events": []},
    "presence": {"events": []},
    "to_device": {"events": []},
    "device_lists": {"changed": [], "left": []},
    "device_one_time_keys_count": {"signed_curve25519": 50},
    "org.matrix.msc2732.device_unused_fallback_key_types": ["signed_curve25519"],
    "device_unused_fallback_key_types": ["signed_curve25519"],
    "rooms": {
        "join": {
            "!cuyZdsfqVbyQzDkrMJ:example.org": {
                "timeline": {
                    "events": [{k: v for k, v in EVENT.items() if k != "room_id"}],
                    "prev_batch": "s72594_4483_1934_3_30_1_1_42_0_1",
                    "limited": False,
                },
                "state": {"events": []},
                "account_data": {"events": []},
                "ephemeral": {"events": []},
                "unread_notifications": {"notification_count": 1, "highlight_count": 0},
                "summary": {},
            }
        }
    },
}
MESSAGES = {"chunk": [EVENT, SENSOR_EVENT], "start": "t47-1234_5", "end": "t46-1200_5"}


def sizes(obj):
    return (
        len(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()),
        len(cbor.dumps(obj)),
        len(cbor.dumps(keys.compress(obj, keys.TABLE_MSC3079_V1))),
        len(cbor.dumps(keys.compress(obj, keys.TABLE_LOWBW_V1))),
    )


@pytest.mark.parametrize(
    "obj",
    [SEND_BODY, EVENT, SENSOR_EVENT, SYNC, MESSAGES],
    ids=["send", "event", "sensor", "sync", "messages"],
)
def test_table2_smaller_than_table1(obj):
    js, plain, t1, t2 = sizes(obj)
    assert t2 < t1 < plain < js
    for tid in TABLES:
        assert keys.expand(cbor.loads(cbor.dumps(keys.compress(obj, tid))), tid) == obj
