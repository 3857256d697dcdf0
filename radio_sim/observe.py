"""What the link shows: a JSON-lines event log and a pcap of delivered frames.

Both are observers of a :class:`radio_sim.model.Link`: they receive the event
dictionaries the model emits (``offer``, ``tx``, ``drop``, ``deliver``).

JSON-lines log: one object per line, keys ``ev``, ``t`` (seconds since the
link started), ``dir``, ``seq``, ``bytes``, ``flow`` and per event:
``tx`` adds ``end``, ``airtime``, ``air_bytes``, ``frag``, ``nfrag``,
``queue_delay``, ``lost``; ``drop`` adds ``cause``; ``deliver`` adds
``latency`` and ``dup``. The model emits a frame's ``tx`` events when it
schedules them, so ``t`` is not monotonic along the file; sort by ``t``.

pcap: classic libpcap format (magic a1b2c3d4, microsecond timestamps,
LINKTYPE_ETHERNET) holding every frame as the receiver got it (duplicates
included, lost frames not; the log has those), timestamped at delivery, inside
synthetic Ethernet + IPv4 + UDP headers with correct checksums. Side a of flow
``n`` is 10.0.0.(n+1):(40000+n), side b is 10.0.1.1:5683, so up frames go
a->b and down frames b->a.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Mapping
from typing import IO, Any

PCAP_MAGIC = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1
SNAPLEN = 65535
SERVER_IP = "10.0.1.1"
SERVER_PORT = 5683
_MAC_A = bytes.fromhex("020000000001")
_MAC_B = bytes.fromhex("020000000002")


def inet_checksum(data: bytes) -> int:
    """RFC 1071 ones' complement sum of 16-bit words, complemented."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ip_bytes(addr: str) -> bytes:
    parts = [int(x) for x in addr.split(".")]
    if len(parts) != 4 or any(not 0 <= p <= 255 for p in parts):
        raise ValueError("bad IPv4 address %r" % (addr,))
    return bytes(parts)


def flow_endpoint(flow: int) -> tuple[str, int]:
    """Synthetic address of side a for a flow number."""
    n = flow % 250
    return "10.0.0.%d" % (n + 1), 40000 + (flow % 20000)


def udp_ipv4_packet(src: str, sport: int, dst: str, dport: int, payload: bytes, ident: int = 0) -> bytes:
    """IPv4 + UDP datagram with valid header and UDP checksums."""
    s, d = ip_bytes(src), ip_bytes(dst)
    ulen = 8 + len(payload)
    if ulen > 0xFFFF - 20:
        raise ValueError("payload too large for one IPv4 datagram")
    pseudo = s + d + struct.pack("!BBH", 0, 17, ulen)
    udp0 = struct.pack("!HHHH", sport, dport, ulen, 0)
    csum = inet_checksum(pseudo + udp0 + payload)
    if csum == 0:
        csum = 0xFFFF  # RFC 768: a computed zero is sent as all ones
    udp = struct.pack("!HHHH", sport, dport, ulen, csum)
    ip0 = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, ident & 0xFFFF, 0x4000, 64, 17, 0, s, d)
    ip = ip0[:10] + struct.pack("!H", inet_checksum(ip0)) + ip0[12:]
    return ip + udp + payload


class PcapWriter:
    """Writes delivered frames to a classic pcap file (see the module docstring)."""

    def __init__(self, path_or_file: str | IO[bytes], *, epoch: float | None = None) -> None:
        if isinstance(path_or_file, str):
            self._fh: IO[bytes] = open(path_or_file, "wb")  # noqa: SIM115 - closed in close()
            self._own = True
        else:
            self._fh = path_or_file
            self._own = False
        # Pcap timestamps are absolute; the link's are relative to its start.
        self.epoch = time.time() if epoch is None else epoch
        self.count = 0
        self._fh.write(struct.pack("<IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET))
        self._fh.flush()

    def write(self, t: float, direction: str, payload: bytes, flow: int = 0) -> None:
        a_ip, a_port = flow_endpoint(flow)
        if direction == "up":
            pkt = udp_ipv4_packet(a_ip, a_port, SERVER_IP, SERVER_PORT, payload, self.count)
            eth = _MAC_B + _MAC_A + b"\x08\x00"
        else:
            pkt = udp_ipv4_packet(SERVER_IP, SERVER_PORT, a_ip, a_port, payload, self.count)
            eth = _MAC_A + _MAC_B + b"\x08\x00"
        frame = eth + pkt
        ts = self.epoch + t
        sec = int(ts)
        usec = int(round((ts - sec) * 1e6))
        if usec >= 1_000_000:
            sec, usec = sec + 1, usec - 1_000_000
        cap = frame[:SNAPLEN]
        self._fh.write(struct.pack("<IIII", sec, usec, len(cap), len(frame)) + cap)
        self._fh.flush()
        self.count += 1

    def event(self, ev: Mapping[str, Any]) -> None:
        if ev.get("ev") == "deliver":
            self.write(float(ev["t"]), str(ev["dir"]), bytes(ev["data"]), int(ev.get("flow", 0)))

    def close(self) -> None:
        if self._own:
            self._fh.close()
        else:
            self._fh.flush()


class EventLog:
    """JSON-lines event log (see the module docstring)."""

    def __init__(self, path_or_file: str | IO[str], *, include_data: bool = False) -> None:
        if isinstance(path_or_file, str):
            self._fh: IO[str] = open(path_or_file, "w", encoding="utf-8", buffering=1)  # noqa: SIM115
            self._own = True
        else:
            self._fh = path_or_file
            self._own = False
        self.include_data = include_data
        self.count = 0

    def event(self, ev: Mapping[str, Any]) -> None:
        out = dict(ev)
        data = out.pop("data", None)
        if self.include_data and isinstance(data, (bytes, bytearray)):
            out["data"] = bytes(data).hex()
        self._fh.write(json.dumps(out, separators=(",", ":")) + "\n")
        self.count += 1

    def close(self) -> None:
        if self._own:
            self._fh.close()
        else:
            self._fh.flush()


class EventRecorder:
    """Keeps events in memory (tests, benchmarks)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def event(self, ev: Mapping[str, Any]) -> None:
        self.events.append(dict(ev))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["ev"] == kind]


def read_log(path: str) -> list[dict[str, Any]]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out
