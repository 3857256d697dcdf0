"""Identifier references (lowbw.compact.refs): both ends agree, bad input is refused."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lowbw.compact import refs
from lowbw.compact.refs import MAX_REFS, ClientRefs, ProxyRefs
from lowbw.wire import cbor, keys
from lowbw.wire.errors import DecodeError, LimitError

TABLE = keys.get_table(keys.TABLE_LOWBW_V1)


def event_id() -> str:
    return "$" + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


def wire(obj: Any) -> Any:
    """Through real CBOR bytes, as on the link."""
    return cbor.loads(bytes(cbor.dumps(obj)), max_items=100_000)


def down(proxy: ProxyRefs, client: ClientRefs, body: Any) -> Any:
    return client.decode(wire(proxy.encode(body, TABLE.ids)), TABLE.names)


def up(proxy: ProxyRefs, client: ClientRefs, body: Any) -> Any:
    return proxy.decode(wire(client.encode(body, TABLE.ids)), TABLE.names)


ROOM = "!MNJs0Rw3dayqN8OtY4NhNcbwOrs7XOkopiiddy_ij4Q"
SYNC = {
    "next_batch": "s11_1_0_1_1_1_1_3_0_1_1_1_1_1",
    "rooms": {
        "join": {
            ROOM: {
                "timeline": {
                    "events": [
                        {
                            "type": "m.room.message",
                            "sender": "@alice:lowbw.test",
                            "event_id": "$w-_jwf6X9-DFZdrxRimJB9jFLohPp_dzw8hpLsr5tbw",
                            "content": {"msgtype": "m.text", "body": "hello @bob:lowbw.test"},
                        }
                    ],
                    "prev_batch": "t5-10_1_0",
                }
            }
        }
    },
}


def test_definitions_then_references_after_confirmation() -> None:
    proxy, client = ProxyRefs(), ClientRefs()
    first = proxy.encode(SYNC, TABLE.ids)
    size_first = len(cbor.dumps(first))
    assert client.decode(wire(first), TABLE.names) == SYNC
    # Not yet confirmed: the same body defines again (same bytes), never refers.
    assert cbor.dumps(proxy.encode(SYNC, TABLE.ids)) == cbor.dumps(first)
    known = client.to_report()
    assert known == len(proxy.strings) == 5  # room, sender, event id, next_batch, prev_batch
    assert client.to_report() is None  # only when it grew
    proxy.confirm(known)
    second = proxy.encode(SYNC, TABLE.ids)
    assert client.decode(wire(second), TABLE.names) == SYNC
    assert len(cbor.dumps(second)) < size_first - 100
    # A body string that merely contains an ID is not an identifier.
    assert "hello @bob:lowbw.test" not in proxy.index


def test_client_refers_to_what_it_holds() -> None:
    proxy, client = ProxyRefs(), ClientRefs()
    down(proxy, client, {"room_id": ROOM})
    assert client.refer_text(ROOM) == "\x010"
    assert proxy.resolve_text(client.refer_text(ROOM)) == ROOM
    assert client.refer_text("!unknown:x") == "!unknown:x"
    body = {"invite": ROOM, ROOM: [ROOM, "plain"]}
    sent = client.encode(body, TABLE.ids)
    assert len(cbor.dumps(sent)) < len(cbor.dumps(keys.compress(body, keys.TABLE_LOWBW_V1))) - 80
    assert up(proxy, client, body) == body


def test_hash_ids_travel_as_32_bytes_and_odd_ones_as_text() -> None:
    eid = event_id()
    d = refs.definition(3, eid)
    assert len(d) == 2 + 1 + 32
    assert refs.parse_entry(d) == (3, eid)
    # Same length, but not canonical base64url (non-zero padding bits): kept as text.
    odd = eid[:-1] + ("B" if eid[-1] == "A" else "A")
    if base64.urlsafe_b64encode(base64.urlsafe_b64decode(odd[1:] + "=")).decode().rstrip("=") != odd[1:]:
        assert refs.parse_entry(refs.definition(4, odd)) == (4, odd)
        assert refs.definition(4, odd)[2] == 0
    assert refs.parse_entry(refs.definition(5, "@u:example.org")) == (5, "@u:example.org")


def test_out_of_order_definitions_count_only_the_contiguous_prefix() -> None:
    client = ClientRefs()
    client.decode(refs.definition(2, "@c:x.org"), TABLE.names)
    client.decode(refs.definition(0, "@a:x.org"), TABLE.names)
    assert client.to_report() == 1
    client.decode(refs.definition(1, "@b:x.org"), TABLE.names)
    assert client.to_report() == 3
    client.unreport(3)  # that report was lost with its request
    assert client.to_report() == 3


def test_conflicting_definition_is_refused() -> None:
    client = ClientRefs()
    client.decode(refs.definition(0, "@a:x.org"), TABLE.names)
    client.decode(refs.definition(0, "@a:x.org"), TABLE.names)  # a repeat is fine
    with pytest.raises(DecodeError):
        client.decode(refs.definition(0, "@evil:x.org"), TABLE.names)


@pytest.mark.parametrize(
    "entry",
    [
        b"\x00\x00\x00",  # too short for a definition
        b"\x00\x00\x07abcdefgh",  # unknown form
        b"\x00\x00$" + b"\x00" * 31,  # hash form of the wrong length
        b"\x00\x00\x00\xff\xfe\xfd",  # not UTF-8
    ],
)
def test_garbage_entries(entry: bytes) -> None:
    with pytest.raises(DecodeError):
        ClientRefs().decode(entry, TABLE.names)


def test_index_beyond_the_table_is_a_limit_error() -> None:
    with pytest.raises(LimitError):
        refs.parse_entry(bytes((MAX_REFS >> 8, 0)) + b"\x00@a:b.org")


def test_unknown_references() -> None:
    with pytest.raises(DecodeError):
        ClientRefs().decode({1: b"\x05"}, TABLE.names)
    proxy = ProxyRefs()
    with pytest.raises(DecodeError):
        proxy.decode(b"\x00", TABLE.names)
    with pytest.raises(DecodeError):
        proxy.decode(refs.definition(0, "@a:b.org"), TABLE.names)  # clients never define
    with pytest.raises(DecodeError):
        proxy.confirm(1)  # nothing defined yet
    with pytest.raises(DecodeError):
        proxy.decode({True: 1}, TABLE.names)


@pytest.mark.parametrize("text", ["\x01", "\x01x", "\x0101", "\x01 1", "\x01٣", "\x017"])
def test_bad_text_references(text: str) -> None:
    proxy = ProxyRefs()
    proxy.encode({"room_id": ROOM}, TABLE.ids)
    with pytest.raises(DecodeError):
        proxy.resolve_text(text)


def test_full_table_sends_plain_text() -> None:
    proxy, client = ProxyRefs(), ClientRefs()
    users = ["@user%05d:example.org" % i for i in range(MAX_REFS + 10)]
    assert down(proxy, client, {"u": users}) == {"u": users}
    assert len(proxy.strings) == MAX_REFS
    # The last ones never got an entry: they travel as themselves.
    assert proxy.encode([users[-1]], TABLE.ids) == [users[-1]]


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.text(max_size=12),
    st.sampled_from([ROOM, "@alice:lowbw.test", "#room:lowbw.test", "s72594_4483_1934", event_id()]),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(["event_id", "next_batch", "rooms", ROOM, "end"]), st.text(max_size=8)),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=20,
)


@given(st.lists(json_value, min_size=1, max_size=4), st.integers(0, 3))
def test_round_trip_both_ways(bodies: list[Any], confirm_after: int) -> None:
    proxy, client = ProxyRefs(), ClientRefs()
    for i, body in enumerate(bodies):
        assert down(proxy, client, body) == body
        assert up(proxy, client, body) == body
        if i >= confirm_after:
            report = client.to_report()
            if report is not None:
                proxy.confirm(report)
