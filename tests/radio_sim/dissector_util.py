"""Helpers for the Wireshark dissector tests: a pcap writer (struct only) and tshark."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections.abc import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LUA = os.path.join(ROOT, "contrib", "wireshark", "lowbw.lua")
TSHARK = shutil.which("tshark")
BUGS = ("Lua Error", "Lua: Error", "Dissector bug", "Exception occurred")

# (src ip, src port, dst ip, dst port, UDP payload)
Datagram = tuple[str, int, str, int, bytes]


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def write_pcap(path: str, datagrams: Sequence[Datagram], t0: float = 1_700_000_000.0) -> None:
    """Classic pcap, Ethernet link type, one IPv4/UDP packet per datagram (UDP checksum 0)."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i, (src, sport, dst, dport, payload) in enumerate(datagrams):
        udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        s = bytes(int(x) for x in src.split("."))
        d = bytes(int(x) for x in dst.split("."))
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i, 0x4000, 64, 17, 0, s, d)
        ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
        frame = b"\x02\0\0\0\0\x02" + b"\x02\0\0\0\0\x01" + b"\x08\x00" + ip + udp
        ts = t0 + i * 0.5
        out.append(struct.pack("<IIII", int(ts), int((ts % 1) * 1e6), len(frame), len(frame)) + frame)
    with open(path, "wb") as fh:
        fh.write(b"".join(out))


def tshark(pcap: str, *args: str, lua: bool = True) -> subprocess.CompletedProcess[str]:
    """Run tshark on a capture (with the dissector loaded unless lua=False); must exit 0."""
    assert TSHARK is not None
    cmd = [TSHARK, "-n"]
    if lua:
        cmd += ["-X", "lua_script:" + LUA]
    cmd += ["-r", pcap, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, "tshark exit %d\n%s\n%s" % (proc.returncode, proc.stdout, proc.stderr)
    # A Lua runtime error does not change tshark's exit status: it shows up in
    # the tree and as expert info ("Lua Error: ..."), like a dissector exception.
    for bad in BUGS:
        assert bad not in proc.stdout and bad not in proc.stderr, proc.stdout[-5000:] + proc.stderr
    return proc


def fields(pcap: str, names: Sequence[str], *args: str) -> list[dict[str, str]]:
    """One dict per packet: field name -> tshark's text ("" when absent)."""
    cmd: list[str] = ["-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,"]
    extra = [] if "_ws.expert.message" in names else ["_ws.expert.message"]
    for n in [*names, *extra]:  # so that tshark() sees any Lua error
        cmd += ["-e", n]
    out = tshark(pcap, *cmd, *args).stdout
    rows = []
    for line in out.split("\n"):
        if not line:
            continue
        cells = line.split("\t")
        cells = cells[: len(names)] + [""] * (len(names) - len(cells))
        rows.append(dict(zip(names, cells, strict=True)))
    return rows
