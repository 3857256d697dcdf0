"""A small pcap reader for the tests, independent of radio_sim's writer.

Parses classic libpcap files with Ethernet link type, checks the IPv4 header
checksum and the UDP checksum (over the pseudo-header) of every packet, and
returns the packets.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass


@dataclass
class Packet:
    ts: float
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes
    ip_ok: bool
    udp_ok: bool


def _ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _ip(b: bytes) -> str:
    return ".".join(str(x) for x in b)


def read_pcap(path: str) -> tuple[int, list[Packet]]:
    """(link type, packets); raises AssertionError on anything malformed."""
    with open(path, "rb") as fh:
        raw = fh.read()
    assert len(raw) >= 24, "short global header"
    magic = struct.unpack("<I", raw[:4])[0]
    assert magic == 0xA1B2C3D4, "bad magic %#x" % magic
    vmaj, vmin, _zone, _sig, snaplen, linktype = struct.unpack("<HHiIII", raw[4:24])
    assert (vmaj, vmin) == (2, 4)
    pos = 24
    out = []
    while pos < len(raw):
        assert pos + 16 <= len(raw), "truncated record header"
        sec, usec, incl, orig = struct.unpack("<IIII", raw[pos : pos + 16])
        pos += 16
        assert incl <= orig and incl <= snaplen and usec < 1_000_000
        frame = raw[pos : pos + incl]
        assert len(frame) == incl, "truncated record"
        pos += incl
        assert frame[12:14] == b"\x08\x00", "not IPv4 in Ethernet"
        ip = frame[14:]
        ver_ihl = ip[0]
        assert ver_ihl >> 4 == 4
        ihl = (ver_ihl & 15) * 4
        total_len = struct.unpack("!H", ip[2:4])[0]
        assert total_len == len(ip), "IP total length %d vs %d captured" % (total_len, len(ip))
        assert ip[9] == 17, "not UDP"
        ip_ok = _ones_sum(ip[:ihl]) == 0xFFFF
        src, dst = ip[12:16], ip[16:20]
        udp = ip[ihl:]
        sport, dport, ulen, csum = struct.unpack("!HHHH", udp[:8])
        assert ulen == len(udp)
        pseudo = src + dst + struct.pack("!BBH", 0, 17, ulen)
        udp_ok = csum != 0 and _ones_sum(pseudo + udp) == 0xFFFF
        out.append(Packet(sec + usec / 1e6, _ip(src), sport, _ip(dst), dport, bytes(udp[8:]), ip_ok, udp_ok))
    return linktype, out
