"""Base64 text as CBOR byte strings (lowbw.compact.blobs): exact round trips, hostile input refused."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lowbw.compact import blobs
from lowbw.compact.codec import CF_CBOR, BodyCodec
from lowbw.compact.refs import ClientRefs, ProxyRefs
from lowbw.wire import keys
from lowbw.wire.errors import DecodeError, LowbwError

DOC = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"
TABLE = keys.get_table(keys.TABLE_LOWBW_V1)
B64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_="


def b64(raw: bytes, *, url: bool = False, pad: bool = False) -> str:
    text = (base64.urlsafe_b64encode if url else base64.b64encode)(raw).decode("ascii")
    return text if pad else text.rstrip("=")


# ---- the four forms -------------------------------------------------------------


@given(st.binary(min_size=12, max_size=600), st.booleans(), st.booleans())
def test_every_base64_text_of_enough_bytes_round_trips(raw: bytes, url: bool, pad: bool) -> None:
    text = b64(raw, url=url, pad=pad)
    blob = blobs.encode(text)
    if text.lower() == text or text.upper() == text:
        assert blob is None  # one case only: left as text (words, tokens, hex)
        return
    if url and not any(c in text for c in "-_"):
        # Nothing URL-specific in it: the standard marker restores it just as well.
        url = False
    assert blob is not None, text
    assert blob[0] == blobs.MARK_STD + (2 if url else 0) + (1 if pad and "=" in text else 0)
    assert blob[1:] == raw
    assert blobs.decode(blob) == text


@given(st.text(alphabet=B64_CHARS, max_size=120))
def test_any_text_restores_exactly_or_stays_text(text: str) -> None:
    blob = blobs.encode(text)
    if blob is not None:
        assert blobs.decode(blob) == text
        assert len(blob) < len(text.encode())


@given(st.text(max_size=80))
def test_arbitrary_text_restores_exactly_or_stays_text(text: str) -> None:
    blob = blobs.encode(text)
    assert blob is None or blobs.decode(blob) == text


@pytest.mark.parametrize(
    "text",
    [
        b64(bytes(range(32)))[:-1] + "9",  # stray low bits in the last character: not canonical
        b64(bytes(range(16)), pad=True)[:-1],  # one '=' where two belong
        b64(bytes(range(16)), pad=True) + "=",  # too much padding
        b64(bytes(range(18))) + "A",  # 4n+1 characters encode no byte count
        "AAAA+AAAA_AAAAAaAAAAAA",  # both alphabets at once
        "AAAAAAAA=AAAAAAaAAAAAA",  # '=' inside
        "AAAAAAAAAAAAAaA",  # shorter than MIN_CHARS
        "ÀAAAAAAAAAAAAAAAAAAAA",  # not ASCII
        "AAAAAAAAAAAAAAAAAaAA\n",  # a newline that a lax decoder would skip
        "unread_notifications",  # a word: valid URL-safe base64, kept as text for the dictionary
        "device_unused_fallback_key_types",
        "t24-44_0_0_0_0_0_0_0_0_0_0_0_0_0",  # a pagination token
        "0123456789abcdef0123456789abcdef",  # hex
    ],
)
def test_texts_that_would_not_come_back_stay_text(text: str) -> None:
    assert blobs.encode(text) is None


def test_padded_and_unpadded_are_told_apart() -> None:
    raw = bytes(range(20))
    assert blobs.decode(blobs.encode(b64(raw, pad=True)) or b"") == b64(raw, pad=True)
    assert blobs.decode(blobs.encode(b64(raw)) or b"") == b64(raw)
    assert b64(raw, pad=True) != b64(raw)


# ---- the decoder against garbage --------------------------------------------------


@given(st.binary(max_size=64))
@example(b"\x83" + bytes(9) + b"\x02")  # URL-safe form of a standard-alphabet text: refused
def test_decoder_takes_any_bytes_or_raises_our_error(data: bytes) -> None:
    try:
        text = blobs.decode(data)
    except DecodeError:
        return
    assert blobs.encode(text) in (None, data)  # short blobs come back as text; others exactly


def test_truncated_and_reserved_blobs_are_decode_errors() -> None:
    blob = blobs.encode(b64(bytes(range(32))))
    assert blob is not None
    for cut in range(blobs.MIN_BLOB):
        with pytest.raises(DecodeError):
            blobs.decode(blob[:cut])
    for marker in (0x00, 0x0F, 0x7F, 0x84, 0xFF):
        with pytest.raises(DecodeError):
            blobs.decode(bytes((marker,)) + blob[1:])


# ---- in bodies: the codec with and without identifier references ------------------

KEY = b64(bytes(range(32)))
SESSION = b64(bytes(range(32, 64)))
CIPHERTEXT = b64(bytes(range(256)) * 2)
ENCRYPTED = {
    "type": "m.room.encrypted",
    "content": {
        "algorithm": "m.megolm.v1.aes-sha2",
        "sender_key": KEY,
        "session_id": SESSION,
        "device_id": "ABCDEFGHIJ",
        "ciphertext": CIPHERTEXT,
    },
    "sender": "@alice:example.org",
    "event_id": "$" + b64(bytes(range(1, 33)), url=True),
    "room_id": "!MNJs0Rw3dayqN8OtY4NhNcbwOrs7XOkopiiddy_ij4Q",
    "unsigned": {"age": 12},
}
OLM = {
    "messages": {
        "@bob:example.org": {
            "BOBDEVICE": {
                "algorithm": "m.olm.v1.curve25519-aes-sha2",
                "sender_key": KEY,
                "ciphertext": {SESSION: {"type": 0, "body": CIPHERTEXT}},
            }
        }
    }
}

b64_text = st.builds(b64, st.binary(min_size=12, max_size=100), url=st.booleans(), pad=st.booleans())
json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=20), b64_text
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.text(max_size=10), b64_text), inner, max_size=5),
    ),
    max_leaves=30,
)


@settings(max_examples=200)
@given(json_value, st.booleans())
def test_bodies_round_trip_both_ways(value: Any, dictionary: bool) -> None:
    dict_version = 1 if dictionary else None
    plain = BodyCodec(keys.TABLE_LOWBW_V1, dict_version, blobs=True)
    assert plain.decode(*plain.encode(value)) == value
    proxy, client = ProxyRefs(), ClientRefs()
    down_enc = BodyCodec(keys.TABLE_LOWBW_V1, dict_version, proxy, blobs=True)
    down_dec = BodyCodec(keys.TABLE_LOWBW_V1, dict_version, client, blobs=True)
    assert down_dec.decode(*down_enc.encode(value)) == value
    up_enc = BodyCodec(keys.TABLE_LOWBW_V1, dict_version, client, blobs=True)
    up_dec = BodyCodec(keys.TABLE_LOWBW_V1, dict_version, proxy, blobs=True)
    assert up_dec.decode(*up_enc.encode(value)) == value


@pytest.mark.parametrize("body", [ENCRYPTED, OLM], ids=["megolm event", "olm to-device"])
def test_encrypted_bodies_shrink_and_come_back(body: dict[str, Any]) -> None:
    sizes = {}
    for on in (False, True):
        proxy, client = ProxyRefs(), ClientRefs()
        payload, cf = BodyCodec(keys.TABLE_LOWBW_V1, 1, proxy, blobs=on).encode(body)
        assert BodyCodec(keys.TABLE_LOWBW_V1, 1, client, blobs=on).decode(payload, cf) == body
        sizes[on] = len(payload)
    # Every 4 base64 characters are 3 bytes: at least a fifth of the ciphertext is saved.
    assert sizes[True] <= sizes[False] - len(CIPHERTEXT) // 5, sizes


def test_blob_in_a_body_is_refused_where_not_agreed() -> None:
    payload, cf = BodyCodec(keys.TABLE_LOWBW_V1, None, ProxyRefs(), blobs=True).encode({"key": KEY})
    with pytest.raises(LowbwError):
        BodyCodec(keys.TABLE_LOWBW_V1, None, ClientRefs()).decode(payload, cf)
    with pytest.raises(LowbwError):
        BodyCodec(keys.TABLE_LOWBW_V1).decode(payload, cf)


def test_identifier_entries_still_work_beside_blobs() -> None:
    proxy, client = ProxyRefs(), ClientRefs()
    body = {"room_id": ENCRYPTED["room_id"], "sender_key": KEY}
    codec_down = BodyCodec(keys.TABLE_LOWBW_V1, None, proxy, blobs=True)
    assert BodyCodec(keys.TABLE_LOWBW_V1, None, client, blobs=True).decode(*codec_down.encode(body)) == body
    proxy.confirm(client.known)
    payload, _ = codec_down.encode(body)
    decoded = cbor2.loads(payload)
    assert decoded[TABLE.ids["room_id"]] == b"\x00"  # a reference
    assert decoded[TABLE.ids["sender_key"]][0] == blobs.MARK_STD  # a blob


@given(st.binary(max_size=200))
def test_codec_with_blobs_takes_garbage_or_raises_our_error(payload: bytes) -> None:
    for refs in (None, ClientRefs(), ProxyRefs()):
        try:
            BodyCodec(keys.TABLE_LOWBW_V1, 1, refs, blobs=True).decode(payload, CF_CBOR)
        except LowbwError:
            pass


def test_truncated_bodies_with_blobs_are_errors() -> None:
    payload, cf = BodyCodec(keys.TABLE_LOWBW_V1, None, blobs=True).encode(ENCRYPTED)
    assert cf == CF_CBOR
    for cut in range(len(payload)):
        with pytest.raises(LowbwError):
            BodyCodec(keys.TABLE_LOWBW_V1, None, blobs=True).decode(payload[:cut], cf)


# ---- the worked example of PROTOCOL.md --------------------------------------------


def worked_example() -> dict[str, bytes]:
    """``{"sender_key": K, "session_id": S}`` as CBOR on a session with and without byte strings."""
    body = {"sender_key": KEY, "session_id": SESSION}
    with_blobs, cf = BodyCodec(keys.TABLE_LOWBW_V1, None, blobs=True).encode(body)
    as_text, cf2 = BodyCodec(keys.TABLE_LOWBW_V1, None).encode(body)
    assert cf == cf2 == CF_CBOR
    return {"with byte strings": with_blobs, "as text": as_text, "json": json.dumps(body).encode()}


def doc_section() -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index("### Base64 as byte strings")
    return text[start : text.index("\n### ", start + 4)]


def test_worked_example_is_what_the_code_sends() -> None:
    section = doc_section()
    cells = []
    for line in section.splitlines():
        if line.startswith("| `"):
            cell = line.split("|")[1].replace("`", "").strip()
            if re.fullmatch(r"[0-9a-f]{2}( [0-9a-f]{2})*", cell):
                cells.append(cell.replace(" ", ""))
    example = worked_example()
    assert example["with byte strings"].hex() == "".join(cells)
    assert "(%d bytes)" % len(example["with byte strings"]) in section
    assert "%d bytes as text" % len(example["as text"]) in section
    assert KEY in section and SESSION in section
