"""Preset body dictionaries (lowbw.compact.dictionary) and their builder (scripts/build_dictionary.py)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import zlib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from lowbw.compact import dictionary as dictionary_module
from lowbw.compact.dictionary import (
    DICT_V1_ID,
    DICT_V1_SHA256,
    SUPPORTED,
    CorruptDictionary,
    UnknownDictionary,
    dictionary,
)
from lowbw.wire import cbor, keys
from lowbw.wire.errors import DecodeError, LowbwError

ROOT = Path(__file__).resolve().parents[2]

# Bodies as Synapse and a client send them (ids made up): a /sync with push
# rules and a room, a message send and its answer, an empty JSON object.
SYNC = {
    "next_batch": "s72594_4483_1934_0_1_1_1_5_0_1_1_1_1_1",
    "account_data": {
        "events": [
            {
                "type": "m.push_rules",
                "content": {
                    "global": {
                        "override": [
                            {
                                "conditions": [],
                                "actions": [],
                                "rule_id": ".m.rule.master",
                                "default": True,
                                "enabled": False,
                            },
                            {
                                "conditions": [
                                    {"kind": "event_match", "key": "content.msgtype", "pattern": "m.notice"}
                                ],
                                "actions": [],
                                "rule_id": ".m.rule.suppress_notices",
                                "default": True,
                                "enabled": True,
                            },
                        ],
                        "underride": [
                            {
                                "conditions": [
                                    {"kind": "event_match", "key": "type", "pattern": "m.room.message"}
                                ],
                                "actions": ["notify", {"set_tweak": "highlight", "value": False}],
                                "rule_id": ".m.rule.message",
                                "default": True,
                                "enabled": True,
                            },
                        ],
                    }
                },
            }
        ]
    },
    "rooms": {
        "join": {
            "!Qx3vT0mBf7dKc2WZyL9pRtUaEeHs1NjGo4iVw8XlM6Y": {
                "timeline": {
                    "events": [
                        {
                            "content": {"displayname": "Erin", "membership": "join"},
                            "event_id": "$Gd7pQe1wZ0rT5yUaB3nM9kLhJ2sXcV6fO8iR4tE1wQz",
                            "origin_server_ts": 1761212345678,
                            "sender": "@erin:matrix.example.net",
                            "state_key": "@erin:matrix.example.net",
                            "type": "m.room.member",
                            "unsigned": {"age": 5321, "membership": "join"},
                        },
                        {
                            "content": {"body": "hello", "msgtype": "m.text"},
                            "event_id": "$Zk2LmN8pQ4rS6tU0vW1xY3zA5bC7dE9fG2hJ4kL6mNo",
                            "origin_server_ts": 1761212349876,
                            "sender": "@erin:matrix.example.net",
                            "type": "m.room.message",
                            "unsigned": {"age": 1233, "membership": "join"},
                        },
                    ],
                    "limited": False,
                    "prev_batch": "s72590_4483_1934_0_1_1_1_5_0_1_1_1_1_1",
                },
                "state": {"events": []},
                "account_data": {"events": []},
                "ephemeral": {"events": []},
                "unread_notifications": {"notification_count": 0, "highlight_count": 0},
                "summary": {},
            }
        }
    },
    "device_one_time_keys_count": {"signed_curve25519": 0},
    "device_unused_fallback_key_types": [],
}
SEND_REQUEST = {"msgtype": "m.text", "body": "on my way"}
SEND_RESPONSE = {"event_id": "$Zk2LmN8pQ4rS6tU0vW1xY3zA5bC7dE9fG2hJ4kL6mNo"}
SAMPLES = [SYNC, SEND_REQUEST, SEND_RESPONSE, {}]


def wire(obj: Any) -> bytes:
    return bytes(cbor.dumps(keys.compress(obj, keys.TABLE_LOWBW_V1)))


def deflate(data: bytes, zdict: bytes | None) -> bytes:
    # The codec's parameters: level 9, memLevel 9, raw DEFLATE (no zlib header or checksum).
    if zdict:
        comp = zlib.compressobj(level=9, wbits=-15, memLevel=9, zdict=zdict)
    else:
        comp = zlib.compressobj(level=9, wbits=-15, memLevel=9)
    return comp.compress(data) + comp.flush()


def inflate(data: bytes, zdict: bytes | None) -> bytes:
    decomp = zlib.decompressobj(wbits=-15, zdict=zdict) if zdict else zlib.decompressobj(wbits=-15)
    out = decomp.decompress(data) + decomp.flush()
    assert decomp.eof
    return out


# ---- the installed dictionary ------------------------------------------------


def test_v1_is_the_released_bytes() -> None:
    data = dictionary(DICT_V1_ID)
    assert hashlib.sha256(data).hexdigest() == DICT_V1_SHA256
    packaged = resources.files("lowbw.compact").joinpath("dict_v1.bin").read_bytes()
    assert packaged == data


def test_v1_fits_the_deflate_window() -> None:
    assert 0 < len(dictionary(DICT_V1_ID)) <= 32768


def test_loaded_once() -> None:
    assert dictionary(DICT_V1_ID) is dictionary(DICT_V1_ID)


def test_supported_versions() -> None:
    assert SUPPORTED == (1,)
    assert DICT_V1_ID == 1
    for version in SUPPORTED:
        assert dictionary(version)


@pytest.mark.parametrize("version", [0, 2, -1, 255, True, "1", None, 1.0])
def test_unknown_version_refused(version: Any) -> None:
    with pytest.raises(UnknownDictionary) as info:
        dictionary(version)
    # A body flagged with a dictionary we lack cannot be read: 4.15 Unsupported Content-Format.
    assert isinstance(info.value, DecodeError) and isinstance(info.value, LookupError)
    assert info.value.coap_code == 4 * 32 + 15


@pytest.fixture
def fresh_load() -> Iterator[None]:
    dictionary_module._load.cache_clear()
    yield
    dictionary_module._load.cache_clear()


def test_corrupted_install_fails_loudly(monkeypatch: pytest.MonkeyPatch, fresh_load: None) -> None:
    monkeypatch.setitem(dictionary_module._FILES, DICT_V1_ID, ("dict_v1.bin", "0" * 64))
    with pytest.raises(CorruptDictionary) as info:
        dictionary(DICT_V1_ID)
    assert isinstance(info.value, LowbwError)
    assert DICT_V1_SHA256 in str(info.value)  # the actual digest is named, to diagnose


# ---- compressing with it -------------------------------------------------------


@pytest.mark.parametrize("body", SAMPLES, ids=["sync", "send_request", "send_response", "empty"])
def test_round_trip_with_v1(body: Any) -> None:
    zdict = dictionary(DICT_V1_ID)
    raw = wire(body)
    packed = deflate(raw, zdict)
    assert inflate(packed, zdict) == raw
    assert keys.expand(cbor.loads(inflate(packed, zdict)), keys.TABLE_LOWBW_V1) == body


def test_wrong_dictionary_does_not_read_back() -> None:
    raw = wire(SYNC)
    packed = deflate(raw, dictionary(DICT_V1_ID))
    try:
        out = inflate(packed, b"\x00" * 32768)
    except (zlib.error, AssertionError):
        return
    assert out != raw


def test_v1_holds_what_repeats() -> None:
    """Push rules, the /sync skeleton and message shapes: v1 shrinks them well beyond plain DEFLATE."""
    zdict = dictionary(DICT_V1_ID)
    for body in (SYNC, SEND_REQUEST):
        raw = wire(body)
        assert len(deflate(raw, zdict)) < len(deflate(raw, None))
    assert len(deflate(wire(SYNC), zdict)) < len(deflate(wire(SYNC), None)) * 3 // 4


# ---- the builder ---------------------------------------------------------------


def load_builder() -> ModuleType:
    name = "lowbw_scripts_build_dictionary"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "build_dictionary.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_skeleton_is_the_wire_form_where_nothing_is_random() -> None:
    bd = load_builder()
    body = {"type": "m.room.message", "content": {"body": "hi", "msgtype": "m.text"}, "n": [1, None, True]}
    assert bd.skeleton_cbor(body) == wire(body)
    assert bd.skeleton_json(body) == json.dumps(body, separators=(",", ":")).encode()


def test_skeleton_keeps_only_the_typical_part_of_random_values() -> None:
    bd = load_builder()
    event = {"event_id": SEND_RESPONSE["event_id"], "origin_server_ts": 1761212345678}
    skeleton = bd.skeleton_cbor(event)
    ids = keys.get_table(keys.TABLE_LOWBW_V1).ids
    # key, text head of 44 bytes, "$"; key, uint64 head and the clock's top 3 bytes (2004..2039)
    assert skeleton == bytes([0xA2, ids["event_id"], 0x78, 44]) + b"$" + bytes(
        [ids["origin_server_ts"], 0x1B, 0, 0, 1]
    )


def test_builder_is_deterministic_and_bounded() -> None:
    bd = load_builder()
    bodies = [bd.Body("sync", SYNC), bd.Body("send.req", SEND_REQUEST), bd.Body("send", SEND_RESPONSE)] * 2
    first = bd.build_dictionary(bodies, size=600)
    assert first == bd.build_dictionary(bodies, size=600)
    assert 0 < len(first) <= 600
    raw = [wire(b.obj) for b in bodies]
    assert bd.link_cost(raw, first) < bd.link_cost(raw, b"")


def test_builder_refuses_to_overwrite_the_frozen_dictionary(tmp_path: Path) -> None:
    bd = load_builder()
    corpus = tmp_path / "corpus.json"
    bd.save_corpus(corpus, [bd.Body("send.req", SEND_REQUEST)])
    before = dictionary(DICT_V1_ID)
    assert bd.main(["--corpus-in", str(corpus)]) == 2
    assert resources.files("lowbw.compact").joinpath("dict_v1.bin").read_bytes() == before
    out = tmp_path / "candidate.bin"
    assert bd.main(["--corpus-in", str(corpus), "--out", str(out), "--size", "64"]) == 0
    assert out.exists() and len(out.read_bytes()) <= 64
    assert bd.main(["--corpus-in", str(corpus), "--out", str(out)]) == 2  # exists: refused
