"""The body codec of client sessions: round trips, the shorter form, and hostile payloads."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lowbw.compact import dictionary
from lowbw.compact.codec import CF_CBOR, CF_CBOR_DEFLATE_V1, MAX_BODY, BodyCodec, inflate
from lowbw.wire import keys
from lowbw.wire.errors import DecodeError, LimitError

DATA = Path(__file__).resolve().parents[1] / "data"

PUSH_RULES_LIKE = {
    "account_data": {
        "events": [
            {
                "type": "m.push_rules",
                "content": {
                    "global": {
                        "override": [
                            {
                                "rule_id": ".m.rule.master",
                                "default": True,
                                "enabled": False,
                                "conditions": [],
                                "actions": [],
                            },
                            {
                                "rule_id": ".m.rule.suppress_notices",
                                "default": True,
                                "enabled": True,
                                "conditions": [
                                    {"kind": "event_match", "key": "content.msgtype", "pattern": "m.notice"}
                                ],
                                "actions": [],
                            },
                        ]
                    }
                },
            }
        ]
    },
    "next_batch": "s8_1_0_1_1_1_1_3_0_1_1_1_1_1",
}

json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=20)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=30,
)


@given(json_value)
def test_round_trip_with_and_without_dictionary(value: Any) -> None:
    for codec in (BodyCodec(keys.TABLE_LOWBW_V1), BodyCodec(keys.TABLE_LOWBW_V1, 1)):
        payload, cf = codec.encode(value)
        assert codec.decode(payload, cf) == value


def test_plain_form_is_cbor_the_library_reads() -> None:
    codec = BodyCodec(keys.TABLE_LOWBW_V1)
    body = {"msgtype": "m.text", "body": "message 1"}
    payload, cf = codec.encode(body)
    assert cf == CF_CBOR
    assert cbor2.loads(payload) == keys.compress(body, keys.TABLE_LOWBW_V1)


def test_deflate_form_is_what_zlib_reads_with_the_dictionary() -> None:
    codec = BodyCodec(keys.TABLE_LOWBW_V1, 1)
    payload, cf = codec.encode(PUSH_RULES_LIKE)
    assert cf == CF_CBOR_DEFLATE_V1
    plain = zlib.decompressobj(wbits=-15, zdict=dictionary.dictionary(1)).decompress(payload)
    assert cbor2.loads(plain) == keys.compress(PUSH_RULES_LIKE, keys.TABLE_LOWBW_V1)
    assert len(payload) < len(json.dumps(PUSH_RULES_LIKE)) / 4


def test_shorter_form_wins() -> None:
    codec = BodyCodec(keys.TABLE_LOWBW_V1, 1)
    tiny = {"event_id": "$x"}
    payload, cf = codec.encode(tiny)
    assert cf == CF_CBOR and payload == BodyCodec(keys.TABLE_LOWBW_V1).encode(tiny)[0]


def _deflate(data: bytes, zdict: bytes | None = None) -> bytes:
    c = (
        zlib.compressobj(9, zlib.DEFLATED, -15, zdict=zdict)
        if zdict
        else zlib.compressobj(9, zlib.DEFLATED, -15)
    )
    return c.compress(data) + c.flush()


def test_deflate_bomb_is_a_limit_error() -> None:
    bomb = _deflate(b"\x00" * (MAX_BODY + 1024))
    assert len(bomb) < 64 * 1024
    with pytest.raises(LimitError):
        BodyCodec(keys.TABLE_LOWBW_V1, 1).decode(bomb, CF_CBOR_DEFLATE_V1)


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xff\xff\xff",  # not DEFLATE
        _deflate(b"\xa1\x01\x02")[:-1],  # truncated
        _deflate(b"\xa1\x01\x02") + b"junk",  # trailing bytes
        _deflate(b"\x9f\x01"),  # inflates to truncated CBOR
        _deflate(b"\xa1\x18\xfe\x01"),  # key id not in the table
    ],
)
def test_bad_deflate_payloads(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        BodyCodec(keys.TABLE_LOWBW_V1, 1).decode(payload, CF_CBOR_DEFLATE_V1)


def test_deflate_without_the_dictionary_agreed_is_refused() -> None:
    payload, cf = BodyCodec(keys.TABLE_LOWBW_V1, 1).encode(PUSH_RULES_LIKE)
    with pytest.raises(DecodeError):
        BodyCodec(keys.TABLE_LOWBW_V1).decode(payload, cf)


def test_unknown_content_format_is_unsupported() -> None:
    with pytest.raises(DecodeError) as info:
        BodyCodec(keys.TABLE_LOWBW_V1).decode(b"{}", 50)
    assert info.value.coap_code == 143  # 4.15


def test_oversized_declared_lengths() -> None:
    codec = BodyCodec(keys.TABLE_LOWBW_V1)
    for payload in (b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff", b"\x7a\xff\xff\xff\xff", b"\xbb" + b"\xff" * 8):
        with pytest.raises(DecodeError):
            codec.decode(payload, None)


def test_inflate_direct() -> None:
    zdict = dictionary.dictionary(1)
    assert inflate(_deflate(b"abc", zdict), zdict) == b"abc"
