"""contrib/wireshark/lowbw.lua on hand-built datagrams of every kind, read by tshark.

Every layout of docs/PROTOCOL.md ("Frames", "Transport frames", "Handshake
datagrams"), both directions, then every truncation of each and seeded
garbage: tshark must exit 0 with no Lua error, and short ones carry the
"malformed" expert info.
"""

from __future__ import annotations

import random

import pytest

from lowbw.wire import frames
from tests.radio_sim.dissector_util import TSHARK, Datagram, fields, tshark, write_pcap

pytestmark = pytest.mark.skipif(
    TSHARK is None, reason="tshark not installed (scripts/bootstrap.sh installs it)"
)

DEV, PROXY = "10.0.0.1", "10.0.1.1"
E = bytes(range(32))  # ephemeral key
S = bytes(range(0x40, 0x70))  # encrypted static key: 32 + 16-byte tag
TAG = b"\xee" * 16
COOKIE = b"\xc0" * 16


def up(payload: bytes, port: int = 5683) -> Datagram:
    return (DEV, 40000, PROXY, port, payload)


def down(payload: bytes, port: int = 5683) -> Datagram:
    return (PROXY, port, DEV, 40000, payload)


IK1 = bytes([frames.HS_IK1]) + E + S + b"\x11" * 14 + TAG  # 111 B, as PROTOCOL.md's example
XX1 = bytes([frames.HS_XX1]) + E + b"\x32" + bytes(66)  # caps 0x32, padded to 100 B
# (name, datagram, minimum length for a well-formed one)
SAMPLES: list[tuple[str, Datagram, int]] = [
    ("IK1", up(IK1), 97),
    ("IK2", down(bytes([frames.HS_IK2]) + E + b"\x22" * 7 + TAG), 49),
    ("XX1", up(XX1), 100),
    ("XX2", down(bytes([frames.HS_XX2]) + E + S + b"\x01\x02\x03" + TAG), 97),
    ("XX3", up(bytes([frames.HS_XX3]) + b"\x00\x2b" + S + b"\x05" * 5 + TAG), 67),
    ("COOKIE-REPLY", down(bytes([frames.HS_COOKIE_REPLY]) + COOKIE), 17),
    ("COOKIED", up(bytes([frames.HS_COOKIED]) + COOKIE + IK1), 17 + 97),
    ("COOKIED", up(bytes([frames.HS_COOKIED]) + COOKIE + XX1), 17 + 100),
    ("transport-short", up(bytes([0x05]) + b"\x00\x2a" + b"\x33" * 12 + TAG), 19),  # counter 5
    ("transport-long", up(bytes([0x40 | 0x07]) + b"\x00\x2a" + b"\x01\x02\x03" + b"\x44" * 9 + TAG), 22),
    ("transport-short", down(bytes([0x3F]) + b"\x55" * 4 + TAG), 17),  # counter 63
    ("transport-long", down(bytes([0x40 | 0x3F]) + b"\x00\x00\x09" + b"\x66" * 4 + TAG), 20),
]

NAMES = [
    "lowbw.len", "lowbw.kind", "lowbw.type", "lowbw.direction", "lowbw.sid", "lowbw.kind.ctr_low",
    "lowbw.ctr_high", "lowbw.counter", "lowbw.ephemeral", "lowbw.static", "lowbw.static.encrypted",
    "lowbw.static.tag", "lowbw.encrypted", "lowbw.encrypted_len", "lowbw.tag", "lowbw.caps",
    "lowbw.caps.table", "lowbw.caps.epoch", "lowbw.padding_len", "lowbw.cookie", "lowbw.inner",
    "_ws.col.Protocol", "_ws.col.Info", "_ws.expert.message",
]  # fmt: skip


def decode(tmp_path, datagrams: list[Datagram], *args: str) -> list[dict[str, str]]:
    pcap = str(tmp_path / "hand.pcap")
    write_pcap(pcap, datagrams)
    rows = fields(pcap, NAMES, *args)
    assert len(rows) == len(datagrams)
    return rows


def test_every_kind_decodes(tmp_path) -> None:
    rows = decode(tmp_path, [d for _, d, _ in SAMPLES])
    for (name, d, _), r in zip(SAMPLES, rows, strict=True):
        assert r["_ws.col.Protocol"] == "lowbw", r
        assert r["_ws.expert.message"] == "", r  # well-formed: no expert info at all
        assert r["lowbw.type"].split(",")[0] == name
        assert r["lowbw.kind"].split(",")[0] == "0x%02x" % d[4][0]
        assert r["lowbw.len"] == str(len(d[4]))
        assert r["lowbw.direction"] == ("uplink" if d[3] == 5683 else "downlink")
    ik1, ik2, xx1, xx2, xx3, reply, ck_ik, ck_xx, up_s, up_l, dn_s, dn_l = rows
    # IK 1: e | enc(s) 32 + 16 | encrypted payload + tag
    assert ik1["lowbw.ephemeral"] == E.hex() and ik1["lowbw.static"] == S.hex()
    assert ik1["lowbw.static.encrypted"] == S[:32].hex() and ik1["lowbw.static.tag"] == S[32:].hex()
    assert ik1["lowbw.encrypted"] == ("11" * 14) and ik1["lowbw.encrypted_len"] == "14"
    assert ik1["lowbw.tag"] == TAG.hex() and ik1["lowbw.sid"] == ""
    assert "IK 1" in ik1["_ws.col.Info"]
    assert (
        ik2["lowbw.ephemeral"] == E.hex() and ik2["lowbw.encrypted_len"] == "7" and ik2["lowbw.static"] == ""
    )
    # XX 1: plaintext caps (key table 2, dict, epoch) and zero padding
    assert xx1["lowbw.caps"] == "0x32" and xx1["lowbw.caps.table"] == "2" and xx1["lowbw.caps.epoch"] == "1"
    assert xx1["lowbw.padding_len"] == "66" and xx1["lowbw.encrypted"] == ""
    assert xx2["lowbw.static.tag"] == S[32:].hex() and xx2["lowbw.encrypted_len"] == "3"
    assert (
        xx3["lowbw.sid"] == "0x002b" and xx3["lowbw.static"] == S.hex() and xx3["lowbw.encrypted_len"] == "5"
    )
    assert reply["lowbw.cookie"] == COOKIE.hex()
    # Cookied initiation: the cookie, then the inner IK 1 / XX 1 dissected in full.
    assert ck_ik["lowbw.cookie"] == COOKIE.hex() and ck_ik["lowbw.kind"] == "0x87,0x81"
    assert ck_ik["lowbw.type"] == "COOKIED,IK1" and ck_ik["lowbw.inner"] == IK1.hex()
    assert ck_ik["lowbw.encrypted_len"] == "14" and ck_ik["lowbw.ephemeral"] == E.hex()
    assert ck_xx["lowbw.type"] == "COOKIED,XX1" and ck_xx["lowbw.caps"] == "0x32"
    assert "carrying IK1" in ck_ik["_ws.col.Info"]
    # Transport: uplink has the session id; long form adds counter bits 6..29.
    assert (
        up_s["lowbw.sid"] == "0x002a" and up_s["lowbw.kind.ctr_low"] == "5" and up_s["lowbw.ctr_high"] == ""
    )
    assert (
        up_s["lowbw.counter"] == "5"
        and up_s["lowbw.encrypted_len"] == "12"
        and up_s["lowbw.tag"] == TAG.hex()
    )
    assert up_l["lowbw.sid"] == "0x002a" and up_l["lowbw.ctr_high"] == str(0x010203)
    assert up_l["lowbw.counter"] == str((0x010203 << 6) | 7) and up_l["lowbw.encrypted_len"] == "9"
    assert dn_s["lowbw.sid"] == "" and dn_s["lowbw.counter"] == "63" and dn_s["lowbw.encrypted_len"] == "4"
    assert dn_l["lowbw.sid"] == "" and dn_l["lowbw.counter"] == str((9 << 6) | 63)
    assert dn_l["lowbw.encrypted_len"] == "4"


def test_short_counters_are_rebuilt_across_epochs(tmp_path) -> None:
    """Low 6 bits only: the dissector follows the flow as the receiver does (nearest to top + 1)."""
    seq = list(range(0, 200, 3)) + [198, 150]  # wraps 64 three times, then a late and an old frame
    dgs = [up(bytes([n & 0x3F]) + b"\x00\x07" + b"\x01" + TAG) for n in seq]
    # A second session (another sid) counts from 0 on its own; downlink has its own counter.
    dgs += [up(bytes([n & 0x3F]) + b"\x00\x08" + b"\x01" + TAG) for n in range(3)]
    dgs += [down(bytes([n & 0x3F]) + b"\x01" + TAG) for n in (0, 1, 70)]
    rows = decode(tmp_path, dgs)
    got = [int(r["lowbw.counter"]) for r in rows]
    assert got[: len(seq)] == seq[:-1] + [214]  # 150 is 48 behind 198: taken as the next epoch's 214
    assert got[len(seq) : len(seq) + 3] == [0, 1, 2]
    assert got[-3:] == [0, 1, 6]  # 70 = 64 + 6 is a jump of more than 32: not recoverable from 6 bits


def test_port_preference_moves_the_dissector(tmp_path) -> None:
    pcap = str(tmp_path / "port.pcap")
    write_pcap(pcap, [up(IK1, 9999), down(bytes([0x00]) + b"\x55" * 4 + TAG, 9999), up(IK1)])
    rows = fields(pcap, ["_ws.col.Protocol", "lowbw.direction"], "-o", "lowbw.port:9999")
    assert [(r["_ws.col.Protocol"], r["lowbw.direction"]) for r in rows[:2]] == [
        ("lowbw", "uplink"),
        ("lowbw", "downlink"),
    ]
    assert rows[2]["_ws.col.Protocol"] != "lowbw"  # 5683 is CoAP's again
    rows = fields(pcap, ["_ws.col.Protocol"])
    assert [r["_ws.col.Protocol"] for r in rows][2] == "lowbw"


def test_truncated_and_garbage_datagrams_do_not_break_it(tmp_path) -> None:
    dgs: list[Datagram] = []
    expect_malformed: list[bool] = []
    for _, (src, sport, dst, dport, payload), minimum in SAMPLES:
        for n in range(1, len(payload)):
            dgs.append((src, sport, dst, dport, payload[:n]))
            expect_malformed.append(n < minimum)
    # Extra bytes after a cookie reply; a cookie in front of a non-initiation or of another cookie.
    dgs.append(down(bytes([frames.HS_COOKIE_REPLY]) + COOKIE + b"\x00"))
    dgs.append(up(bytes([frames.HS_COOKIED]) + COOKIE + bytes([frames.HS_IK2]) + E + TAG))
    dgs.append(up(bytes([frames.HS_COOKIED]) + COOKIE + bytes([frames.HS_COOKIED]) + COOKIE + IK1))
    # XX 1 below its padding rule; handshake kinds seen in the wrong direction.
    dgs.append(up(bytes([frames.HS_XX1]) + E + b"\x02"))
    expect_malformed += [True] * 4
    n_checked = len(dgs)
    dgs.append(down(IK1))
    dgs.append(up(bytes([frames.HS_COOKIE_REPLY]) + COOKIE))
    # Every kind byte alone, both ways, and seeded random garbage.
    for b in range(256):
        dgs.append(up(bytes([b])))
        dgs.append(down(bytes([b])))
    rnd = random.Random(16)
    for _ in range(300):
        data = rnd.randbytes(rnd.randrange(1, 160))
        dgs.append(up(data) if rnd.random() < 0.5 else down(data))
    rows = decode(tmp_path, dgs)
    for d, r, bad in zip(dgs[:n_checked], rows, expect_malformed, strict=False):
        assert r["_ws.col.Protocol"] == "lowbw"
        assert ("Malformed" in r["_ws.col.Info"]) == bad, (d[4].hex(), r)
        assert bad == any(m and "Unknown kind" not in m for m in r["_ws.expert.message"].split(",")), r
    assert "travels uplink, seen downlink" in rows[n_checked]["_ws.expert.message"]
    assert "travels downlink, seen uplink" in rows[n_checked + 1]["_ws.expert.message"]
    singles = rows[n_checked + 2 : n_checked + 2 + 512]
    for b in range(256):
        for r in singles[2 * b : 2 * b + 2]:
            known = b < 0x80 or frames.HS_IK1 <= b <= frames.HS_COOKIED
            assert ("Unknown kind" in r["_ws.expert.message"]) == (not known), (b, r)
            assert r["lowbw.kind"] == "0x%02x" % b
    assert all(r["_ws.col.Protocol"] == "lowbw" for r in rows)
    # The full tree too (tshark() fails on any Lua error or dissector exception).
    tshark(str(tmp_path / "hand.pcap"), "-V")
