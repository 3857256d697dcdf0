"""A stock Matrix client's chat session, HTTPS+JSON against lowbw: IP-level bytes per phase.

One scripted session, the same requests a Matrix client makes, run twice in
the same run against the same Synapse (``lowbw.testing.synapse.SynapseServer``,
server name ``lowbw.test``):

(a) ``baseline``: HTTPS+JSON straight to Synapse behind nginx (the Debian
    package, started by ``bench/nginx_tls.py``): TLS 1.3 only, a fresh
    self-signed ECDSA P-256 certificate, one kept-alive TCP connection from
    the client to nginx, IPv4 on 127.0.0.1.
    Counted without a capture, from Linux's own TCP counters diffed per phase:
    packets each way are our socket's ``tcpi_segs_out``/``tcpi_segs_in``
    (getsockopt TCP_INFO; every segment, pure ACKs, SYN and duplicates
    included); payload up is our ``tcpi_bytes_sent``, payload down nginx's
    ``tcpi_bytes_sent`` read through inet_diag (as ``ss -ti`` does; it
    includes nginx's retransmissions, which our ``bytes_received`` skips).
    IP bytes = payload + 20 B IPv4 + the TCP header per segment (20 B, + 12 B
    of timestamps when negotiated, + the SYN options on SYN and SYN-ACK, + a
    12-byte D-SACK block on the ACK answering each retransmission).
    With ``--capture`` (default ``auto``: when root and dumpcap/tshark are
    installed) the connection is also captured on ``lo`` and the capture's
    per-phase sums are printed beside the counters.

(b) ``lowbw``: the same script with plain HTTP to ``lowbw client-proxy`` on
    127.0.0.1 (not on the air), which carries each request over CoAP+CBOR+Noise
    through ``python -m radio_sim relay --preset 1kbps`` to ``lowbw proxy run``
    beside Synapse (appservice mode, set up with ``lowbw proxy init`` and
    ``lowbw proxy enroll-client``). Counted on the radio: the client-proxy's
    ``GET /_lowbw/stats`` (datagrams and UDP payload bytes each way) diffed per
    phase; IP bytes = payload + 28 B (IPv4 + UDP) per datagram. The relay's
    airtime is recorded too.

The session (phases; everything else is set up uncounted, directly against
Synapse: the two users, the room, the other member's message):

  connect        TCP + TLS 1.3 handshake (for (b): whatever the client-proxy
                 put on the air from its start until the client connected)
  login          POST /_matrix/client/v3/login (m.login.password)
  initial sync   GET /sync?filter={"room":{"timeline":{"limit":1}}}
  send x10       PUT /rooms/{room}/send/m.room.message/{txn}
  empty sync x3  GET /sync?since=...&timeout=T with nothing new
  sync 1 event   another member sent one message (directly to Synapse,
                 uncounted); GET /sync?since=...&timeout=T returns it

Between the sends and the empty syncs the client catches up with its own ten
messages (one /sync, timeout 0): a row of its own, not in the totals (the
issue's session has no such step, but without it the first "empty" sync
would carry the ten echoes). An "empty" sync that returns events anyway is
reported as a note, not an error: bytes are what is measured.

Every /sync carries the inline filter (as matrix-nio does with
``sync_filter``); the long-poll timeout T is the same in both runs
(``--sync-timeout``, default 3000 ms rather than a client's usual 30000, so
the bench does not wait minutes). Request headers are those of matrix-nio on
aiohttp: Host, User-Agent, Accept, Accept-Encoding, Content-Type,
Authorization: Bearer, Content-Length; a request leaves in one write (headers
and body in one TLS record), as aiohttp and browsers send a small request.

A phase ends when the counters have been still for a moment (0.3 s for TCP,
1.5 s for the radio), so delayed ACKs, TLS session tickets and CoAP
acknowledgements land in the phase that caused them. Loopback has no loss,
but its timers are not a WAN's: a TLS session ticket that the client ACKs
late can be sent twice (a tail-loss probe), which the connect row then shows.

``--session realistic`` runs issue 14's second shape instead: two users, 20
messages of 14..166 characters alternating (the other member's sent directly
to Synapse, uncounted: the far side of the conversation), a read receipt for
each message received, one reaction (``m.annotation``), logout; the client's
sync loop long-polls 3 s at a time throughout (3 empty polls while the other
member types, 1 while ours does, about 40 in all: issue 14's independent
measurement had the same shape and counted 110,060 B over HTTPS). Its
``--messages N`` runs a shorter conversation (the budget test does).

Output: a table per phase (packets, IP bytes, payload bytes of (a) and (b),
ratio), totals, and per exchange beside the calibration figures of issue 7;
``--json FILE`` writes everything. ``--only baseline`` runs (a) alone.

Usage: python bench/chat_session.py [--session {chat,realistic}] [--messages N]
       [--only {baseline,lowbw,both}] [--preset 1kbps]
       [--sync-timeout MS] [--capture {auto,yes,no}] [--keep-capture FILE] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import http.client
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))

import bench.nginx_tls as _nginx_tls  # noqa: E402
from bench.nginx_tls import DEFAULT_SERVER_NAME as TLS_SERVER_NAME  # noqa: E402
from bench.nginx_tls import NginxError, NginxTLS  # noqa: E402

_NGINX_CONFIG = _nginx_tls.nginx_config

SERVER_NAME = "lowbw.test"
SYNC_FILTER = {"room": {"timeline": {"limit": 1}}}
SENDS = 10
EMPTY_SYNCS = 3
IPV4_HEADER = 20
TCP_HEADER = 20
TCP_TIMESTAMPS_OPTION = 12  # NOP NOP + 10-byte timestamps, on every segment once negotiated
IP_UDP_HEADER = 28
TARGET_RATIO = 10.0

# Measured by the author with nginx + Synapse 1.163, one kept-alive TLS 1.3
# connection (IP-level bytes per exchange): printed beside our own (a) for comparison.
CALIBRATION_IP_BYTES = {
    "connect": 2315,
    "login": 1217,
    "initial_sync": 8060,
    "send": 1038,
    "empty_sync": 1110,
    "sync_one_event": 1690,
}


def _user_agent() -> str:
    try:
        from importlib.metadata import version

        aiohttp = version("aiohttp")
    except Exception:  # noqa: BLE001 - any failure just means a generic agent
        aiohttp = "3.9"
    return "Python/%d.%d aiohttp/%s" % (sys.version_info[0], sys.version_info[1], aiohttp)


USER_AGENT = _user_agent()


# ------------------------------------------------------------------ counting


# struct tcp_info (include/uapi/linux/tcp.h): the fields we read and their offsets.
_TCPI_OPTIONS = 5  # __u8: TCPI_OPT_TIMESTAMPS = 1, SACK = 2, WSCALE = 4
_TCPI_TOTAL_RETRANS = 100  # __u32: segments retransmitted over the connection's life
_TCPI_BYTES_ACKED = 120  # __u64, Linux 4.1 (counts the SYN as one byte)
_TCPI_BYTES_RECEIVED = 128  # __u64, Linux 4.1: in-order payload; duplicates are not counted
_TCPI_SEGS_OUT = 136  # __u32, Linux 4.2: every segment sent, SYN/ACK/FIN/retransmissions included
_TCPI_SEGS_IN = 140  # __u32, Linux 4.2: every segment received, duplicates included
_TCPI_BYTES_SENT = 200  # __u64, Linux 4.19: payload sent, retransmissions included
TCPI_OPT_TIMESTAMPS = 1
TCPI_OPT_SACK = 2
TCPI_OPT_WSCALE = 4
_TCP_INFO = getattr(socket, "TCP_INFO", 11)
DSACK_OPTION = 12  # NOP NOP + one 8-byte SACK block, on the ACK answering a duplicate segment


@dataclass(frozen=True)
class TcpCounters:
    """One reading of a TCP socket's counters (Linux ``struct tcp_info``)."""

    segs_out: int
    segs_in: int
    bytes_sent: int
    bytes_received: int
    total_retrans: int
    options: int

    def minus(self, before: TcpCounters) -> TcpCounters:
        return TcpCounters(
            self.segs_out - before.segs_out,
            self.segs_in - before.segs_in,
            self.bytes_sent - before.bytes_sent,
            self.bytes_received - before.bytes_received,
            self.total_retrans - before.total_retrans,
            self.options,
        )


ZERO_TCP = TcpCounters(0, 0, 0, 0, 0, 0)


def parse_tcp_info(raw: bytes) -> TcpCounters:
    """The counters we need out of a raw ``struct tcp_info``."""
    if len(raw) < _TCPI_SEGS_IN + 4:
        raise OSError("TCP_INFO is %d bytes: this kernel has no segment counters (Linux >= 4.2)" % len(raw))
    segs_out, segs_in = struct.unpack_from("=II", raw, _TCPI_SEGS_OUT)
    (received,) = struct.unpack_from("=Q", raw, _TCPI_BYTES_RECEIVED)
    (retrans,) = struct.unpack_from("=I", raw, _TCPI_TOTAL_RETRANS)
    if len(raw) >= _TCPI_BYTES_SENT + 8:
        (sent,) = struct.unpack_from("=Q", raw, _TCPI_BYTES_SENT)
    else:  # before Linux 4.19: what the peer acknowledged, less the SYN's sequence number
        (acked,) = struct.unpack_from("=Q", raw, _TCPI_BYTES_ACKED)
        sent = max(0, acked - 1)
    return TcpCounters(segs_out, segs_in, sent, received, retrans, raw[_TCPI_OPTIONS])


def read_tcp_info(sock: socket.socket) -> TcpCounters:
    """A socket's own counters: getsockopt(IPPROTO_TCP, TCP_INFO)."""
    return parse_tcp_info(sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 512))


# NETLINK_SOCK_DIAG (linux/sock_diag.h, linux/inet_diag.h): what `ss -ti` uses.
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_INET_DIAG_INFO = 2
_INET_DIAG_NOCOOKIE = 0xFFFFFFFF
_NLMSG_HEADER = struct.Struct("=IHHII")
_INET_DIAG_MSG_LEN = 72  # struct inet_diag_msg


def read_peer_tcp_info(sock: socket.socket) -> TcpCounters | None:
    """Counters of the socket at the other end of ``sock`` when it lives on this host (IPv4), else None.

    The peer (nginx's socket) knows what it retransmitted, which our receive
    counter does not show: TCP_INFO's ``bytes_received`` skips duplicate
    payload. Read with one inet_diag lookup by address and port; no privileges
    needed.
    """
    try:
        local, remote = sock.getsockname(), sock.getpeername()
        sockid = (
            struct.pack("!HH", remote[1], local[1])
            + socket.inet_aton(remote[0])
            + bytes(12)
            + socket.inet_aton(local[0])
            + bytes(12)
            + struct.pack("=III", 0, _INET_DIAG_NOCOOKIE, _INET_DIAG_NOCOOKIE)
        )
        # inet_diag_req_v2: family, protocol, extensions wanted (INET_DIAG_INFO), pad, states (all).
        req = (
            struct.pack(
                "=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 1 << (_INET_DIAG_INFO - 1), 0, 0xFFFFFFFF
            )
            + sockid
        )
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(2)
            nl.sendto(
                _NLMSG_HEADER.pack(_NLMSG_HEADER.size + len(req), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0)
                + req,
                (0, 0),
            )
            data = nl.recv(65536)
    except (OSError, AttributeError, ValueError):
        return None
    length, kind = _NLMSG_HEADER.unpack_from(data)[:2]
    if kind == _NLMSG_ERROR or kind != _SOCK_DIAG_BY_FAMILY:
        return None
    offset = _NLMSG_HEADER.size + _INET_DIAG_MSG_LEN
    while offset + 4 <= min(length, len(data)):
        attr_len, attr_type = struct.unpack_from("=HH", data, offset)
        if attr_len < 4:
            break
        if attr_type == _INET_DIAG_INFO:
            try:
                return parse_tcp_info(data[offset + 4 : offset + attr_len])
            except OSError:
                return None
        offset += (attr_len + 3) & ~3
    return None


@dataclass(frozen=True)
class ConnCounters:
    """Both ends of one loopback TCP connection: ours (``client``) and, when readable, the server's."""

    client: TcpCounters
    server: TcpCounters | None

    def minus(self, before: ConnCounters) -> ConnCounters:
        server = None
        if self.server is not None:
            server = self.server.minus(before.server or ZERO_TCP)
        return ConnCounters(self.client.minus(before.client), server)


ZERO_CONN = ConnCounters(ZERO_TCP, ZERO_TCP)


def read_conn_counters(sock: socket.socket) -> ConnCounters:
    return ConnCounters(read_tcp_info(sock), read_peer_tcp_info(sock))


def tcp_header_bytes(options: int) -> int:
    """TCP header of an established connection's segment (without SACK blocks)."""
    return TCP_HEADER + (TCP_TIMESTAMPS_OPTION if options & TCPI_OPT_TIMESTAMPS else 0)


def syn_extra_bytes(options: int) -> int:
    """How much longer a SYN (or SYN-ACK) header is than an established segment's, as Linux lays it out.

    Linux SYN options: MSS (4), SACK-permitted (2, or 4 with NOPs), timestamps
    (10, 12 with NOPs), window scale (3 + 1 NOP). Established segments carry
    only the 12 bytes of timestamps.
    """
    ts = bool(options & TCPI_OPT_TIMESTAMPS)
    syn_options = 4  # MSS
    if ts:
        syn_options += 12  # timestamps; SACK-permitted takes the place of their two NOPs
    elif options & TCPI_OPT_SACK:
        syn_options += 4  # NOP NOP SACK-permitted
    if options & TCPI_OPT_WSCALE:
        syn_options += 4  # NOP window-scale
    return syn_options - (TCP_TIMESTAMPS_OPTION if ts else 0)


@dataclass
class Cost:
    """What one phase put on the wire: packets and bytes each way."""

    packets_up: int = 0
    packets_down: int = 0
    payload_up: int = 0
    payload_down: int = 0
    ip_up: int = 0
    ip_down: int = 0
    airtime_s: float | None = None  # (b) only: the radio's channel time
    retransmitted: int = 0  # (a) only: segments sent again, both ways
    retransmitted_payload: int = 0  # (a) only: their payload bytes (in the payload figures)

    @property
    def packets(self) -> int:
        return self.packets_up + self.packets_down

    @property
    def payload(self) -> int:
        return self.payload_up + self.payload_down

    @property
    def ip_bytes(self) -> int:
        return self.ip_up + self.ip_down

    def add(self, other: Cost) -> Cost:
        air = None
        if self.airtime_s is not None or other.airtime_s is not None:
            air = (self.airtime_s or 0.0) + (other.airtime_s or 0.0)
        return Cost(
            self.packets_up + other.packets_up,
            self.packets_down + other.packets_down,
            self.payload_up + other.payload_up,
            self.payload_down + other.payload_down,
            self.ip_up + other.ip_up,
            self.ip_down + other.ip_down,
            air,
            self.retransmitted + other.retransmitted,
            self.retransmitted_payload + other.retransmitted_payload,
        )

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(packets=self.packets, payload=self.payload, ip_bytes=self.ip_bytes)
        return out


def tcp_cost(delta: ConnCounters, *, handshake: bool = False) -> Cost:
    """IP-level cost of a counter difference of one connection, seen from the client.

    Packets each way: the client's segments out and in (every segment, SYN,
    pure ACKs and duplicates included). Payload up: the client's bytes sent
    (retransmissions included). Payload down: the server's bytes sent when its
    counters are readable (they include its retransmissions, which the
    client's ``bytes_received`` leaves out), else the client's bytes received.
    Headers: IPv4 + TCP with the negotiated options on every segment; the SYN
    and SYN-ACK's longer options when ``handshake``; and a D-SACK block on the
    ACK that answers each retransmitted segment (on loopback nothing is lost,
    so every retransmission is a duplicate the receiver reports).
    """
    c, s = delta.client, delta.server
    options = c.options
    header = IPV4_HEADER + tcp_header_bytes(options)
    syn = syn_extra_bytes(options) if handshake else 0
    payload_down = s.bytes_sent if s is not None else c.bytes_received
    dsacks_up = s.total_retrans if s is not None else 0
    up = c.bytes_sent + header * c.segs_out + (syn if c.segs_out else 0) + DSACK_OPTION * dsacks_up
    down = payload_down + header * c.segs_in + (syn if c.segs_in else 0) + DSACK_OPTION * c.total_retrans
    return Cost(
        packets_up=c.segs_out,
        packets_down=c.segs_in,
        payload_up=c.bytes_sent,
        payload_down=payload_down,
        ip_up=up,
        ip_down=down,
        retransmitted=c.total_retrans + dsacks_up,
        retransmitted_payload=(
            max(0, c.bytes_sent - s.bytes_received) + max(0, s.bytes_sent - c.bytes_received) if s else 0
        ),
    )


def udp_cost(before: Mapping[str, Any], after: Mapping[str, Any]) -> Cost:
    """IP-level cost of two client-proxy ``/_lowbw/stats`` readings (IPv4 + UDP per datagram)."""
    tx = int(after["tx"]) - int(before.get("tx", 0))
    rx = int(after["rx"]) - int(before.get("rx", 0))
    tx_bytes = int(after["tx_bytes"]) - int(before.get("tx_bytes", 0))
    rx_bytes = int(after["rx_bytes"]) - int(before.get("rx_bytes", 0))
    return Cost(tx, rx, tx_bytes, rx_bytes, tx_bytes + IP_UDP_HEADER * tx, rx_bytes + IP_UDP_HEADER * rx)


def wait_still(read: Callable[[], Any], *, quiet_s: float, poll_s: float, limit_s: float = 120.0) -> Any:
    """Read until the value has not changed for ``quiet_s``; return it."""
    last = read()
    still_since = time.monotonic()
    deadline = still_since + limit_s
    while time.monotonic() < deadline:
        time.sleep(poll_s)
        now = read()
        if now != last:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= quiet_s:
            return now
    return last


# ------------------------------------------------------------------ the client


class MatrixError(RuntimeError):
    """The homeserver (or the client-proxy) answered something the script cannot go on from."""


class OneWriteConnection(http.client.HTTPConnection):
    """HTTP/1.1 whose requests leave in one write: headers and body together.

    ``http.client`` writes the header block and the body separately, which over
    TLS makes two records (22 B of TLS overhead more) and usually two TCP
    segments. Clients built on aiohttp, and browsers, send a small request in
    one go; so do we, not to overstate the baseline.
    """

    _held: bytearray | None = None

    def send(self, data: Any) -> None:
        if self._held is not None and isinstance(data, bytes | bytearray):
            self._held.extend(data)
            return
        super().send(data)

    def request_at_once(self, method: str, url: str, body: bytes | None, headers: Mapping[str, str]) -> None:
        self._held = bytearray()
        try:
            self.request(method, url, body=body, headers=dict(headers))
        finally:
            held, self._held = self._held, None
        super().send(bytes(held))


class TLSConnection(OneWriteConnection, http.client.HTTPSConnection):
    """HTTPS to a named server (SNI and Host as a client sends them) dialled at a fixed IPv4 address."""

    def __init__(self, server_name: str, address: tuple[str, int], context: ssl.SSLContext) -> None:
        super().__init__(server_name, address[1], context=context, timeout=120)
        self.address = address
        self._tls_context = context

    def connect(self) -> None:
        raw = socket.create_connection(self.address, self.timeout)
        self.sock = self._tls_context.wrap_socket(raw, server_hostname=self.host)


def tls13_client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    # The certificate is a throw-away self-signed one; verification would cost no bytes.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class MatrixClient:
    """The client-server API calls of the session, on ONE kept-alive HTTP/1.1 connection."""

    def __init__(self, conn: OneWriteConnection) -> None:
        self.conn = conn
        # A silent reconnect would reset the counters mid-phase: fail instead.
        self.conn.auto_open = 0
        self.token: str | None = None
        self.requests = 0
        # (method, path, request body, answer body) of every call, for --e2ee's per-body table.
        self.bodies: list[tuple[str, str, Any, Any]] = []

    def connect(self) -> None:
        self.conn.connect()

    def call(self, method: str, path: str, body: Any = None, query: Mapping[str, str] | None = None) -> Any:
        url = path + ("?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote) if query else "")
        headers = {
            "User-Agent": USER_AGENT,
            "Accept": "*/*",
            "Accept-Encoding": "gzip, deflate",
            "Content-Type": "application/json",
        }
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        data = json.dumps(body, separators=(",", ":")).encode() if body is not None else None
        self.conn.request_at_once(method, url, data, headers)
        resp = self.conn.getresponse()
        raw = resp.read()
        self.requests += 1
        if resp.getheader("Content-Encoding", "").lower() == "gzip":
            raw = gzip.decompress(raw)
        try:
            answer = json.loads(raw) if raw else None
        except ValueError:
            answer = raw[:300]
        if resp.status != 200:
            raise MatrixError("%s %s -> HTTP %d: %s" % (method, path, resp.status, answer))
        self.bodies.append((method, path, body, answer))
        return answer

    def login(self, user: str, password: str) -> dict[str, Any]:
        answer = self.call(
            "POST",
            "/_matrix/client/v3/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user},
                "password": password,
                "initial_device_display_name": "lowbw chat bench",
            },
        )
        self.token = str(answer["access_token"])
        return dict(answer)

    def sync(self, since: str | None = None, timeout_ms: int | None = None) -> dict[str, Any]:
        query = {}
        if since is not None:
            query["since"] = since
        if timeout_ms is not None:
            query["timeout"] = str(timeout_ms)
        query["filter"] = json.dumps(SYNC_FILTER, separators=(",", ":"))
        return dict(self.call("GET", "/_matrix/client/v3/sync", query=query))

    def send_text(self, room_id: str, txn: str, text: str) -> str:
        answer = self.call(
            "PUT",
            "/_matrix/client/v3/rooms/%s/send/m.room.message/%s" % (_q(room_id), _q(txn)),
            {"msgtype": "m.text", "body": text},
        )
        return str(answer["event_id"])

    def close(self) -> None:
        self.conn.close()


def _q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def timeline_events(sync: Mapping[str, Any], room_id: str) -> list[dict[str, Any]]:
    room = sync.get("rooms", {}).get("join", {}).get(room_id, {})
    return list(room.get("timeline", {}).get("events", []))


# ------------------------------------------------------------------ meters


class Meter:
    """Counters of one run's link, read between phases."""

    def snapshot(self) -> Any:
        raise NotImplementedError

    def cost(self, before: Any, after: Any, phase: str) -> Cost:
        raise NotImplementedError


class TcpMeter(Meter):
    """(a): the client's TCP socket (TCP_INFO), after it has been still for ``quiet_s``."""

    def __init__(self, conn: http.client.HTTPConnection, quiet_s: float = 0.3) -> None:
        self.conn = conn
        self.quiet_s = quiet_s
        self._sock: socket.socket | None = None

    def snapshot(self) -> ConnCounters:
        sock = self.conn.sock
        if sock is None:
            return ZERO_CONN  # not connected yet: new sockets start at zero
        if self._sock is None:
            self._sock = sock
        elif sock is not self._sock:
            raise MatrixError("the HTTPS connection was reopened: counters would restart")
        counters: ConnCounters = wait_still(
            lambda: read_conn_counters(sock), quiet_s=self.quiet_s, poll_s=0.02
        )
        return counters

    def cost(self, before: ConnCounters, after: ConnCounters, phase: str) -> Cost:
        return tcp_cost(after.minus(before), handshake=phase == "connect")


class RadioMeter(Meter):
    """(b): the client-proxy's radio counters (``GET /_lowbw/stats``), and the relay's for airtime."""

    def __init__(self, base: tuple[str, int], relay: Any = None, quiet_s: float = 1.5) -> None:
        self.base = base
        self.relay = relay
        self.quiet_s = quiet_s

    def stats(self) -> dict[str, Any]:
        conn = http.client.HTTPConnection(*self.base, timeout=30)
        try:
            conn.request("GET", "/_lowbw/stats")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise MatrixError("GET /_lowbw/stats -> HTTP %d: %r" % (resp.status, body[:200]))
            obj: dict[str, Any] = json.loads(body)
            return obj
        finally:
            conn.close()

    def snapshot(self) -> dict[str, Any]:
        def read() -> tuple[int, int, int, int]:
            s = self.stats()
            return int(s["tx"]), int(s["tx_bytes"]), int(s["rx"]), int(s["rx_bytes"])

        tx, tx_bytes, rx, rx_bytes = wait_still(read, quiet_s=self.quiet_s, poll_s=0.25)
        snap: dict[str, Any] = {"tx": tx, "tx_bytes": tx_bytes, "rx": rx, "rx_bytes": rx_bytes}
        if self.relay is not None:
            snap["relay"] = self.relay.snapshot()
        return snap

    def cost(self, before: dict[str, Any], after: dict[str, Any], phase: str) -> Cost:
        cost = udp_cost(before, after)
        if "relay" in after:
            from bench.radiostats import diff

            cost.airtime_s = diff(before.get("relay") or _empty_relay_stats(), after["relay"]).airtime_s
        return cost


def _empty_relay_stats() -> dict[str, Any]:
    zero = {
        "offered_frames": 0,
        "offered_bytes": 0,
        "airtime_s": 0.0,
        "delivered_frames": 0,
        "dropped_frames": 0,
    }
    return {"up": dict(zero), "down": dict(zero)}


# ------------------------------------------------------------------ --e2ee: a minimal encrypting client

MEGOLM = "m.megolm.v1.aes-sha2"
OLM = "m.olm.v1.curve25519-aes-sha2"
# What matrix-nio uploads after its first login (vodozemac: half of 100 one-time keys).
ONE_TIME_KEYS = 50


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def unpadded(raw: bytes) -> str:
    import base64

    return base64.b64encode(raw).decode("ascii").rstrip("=")


class E2eeDevice:
    """One Matrix device's Olm account and Megolm sessions (vodozemac), as a client keeps them.

    Produces the request bodies an encrypting client sends (signed device and
    one-time keys, an Olm-encrypted ``m.room_key``, Megolm ``m.room.encrypted``)
    and reads what it receives, so the session is real end-to-end encryption.
    """

    def __init__(self, user_id: str, device_id: str) -> None:
        import vodozemac

        self.v = vodozemac
        self.user_id = user_id
        self.device_id = device_id
        self.account = vodozemac.Account()
        self.outbound: dict[str, Any] = {}  # room -> GroupSession
        self.inbound: dict[str, Any] = {}  # session id -> InboundGroupSession

    @property
    def curve(self) -> str:
        return str(self.account.curve25519_key.to_base64())

    @property
    def ed(self) -> str:
        return str(self.account.ed25519_key.to_base64())

    def _signed(self, obj: dict[str, Any]) -> dict[str, Any]:
        sig = self.account.sign(canonical(obj)).to_base64()
        return {**obj, "signatures": {self.user_id: {"ed25519:" + self.device_id: sig}}}

    def upload_body(self, count: int = ONE_TIME_KEYS) -> dict[str, Any]:
        """``/keys/upload``: signed device keys and ``count`` signed Curve25519 one-time keys."""
        self.account.generate_one_time_keys(count)
        otks = {
            "signed_curve25519:" + kid: self._signed({"key": key.to_base64()})
            for kid, key in self.account.one_time_keys.items()
        }
        self.account.mark_keys_as_published()
        device = self._signed(
            {
                "algorithms": [OLM, MEGOLM],
                "device_id": self.device_id,
                "keys": {"curve25519:" + self.device_id: self.curve, "ed25519:" + self.device_id: self.ed},
                "user_id": self.user_id,
            }
        )
        return {"device_keys": device, "one_time_keys": otks}

    def room_key_to(self, room_id: str, their: tuple[str, str, str, str, str]) -> dict[str, Any]:
        """``/sendToDevice`` body: our room key for ``room_id``, Olm-encrypted to one device.

        ``their`` is (user, device, curve25519, ed25519, claimed one-time key).
        """
        user, device, curve, ed, otk = their
        group = self.outbound.get(room_id)
        if group is None:
            group = self.outbound[room_id] = self.v.GroupSession()
            self.inbound[group.session_id] = self.v.InboundGroupSession(group.session_key)
        plain = {
            "type": "m.room_key",
            "content": {
                "algorithm": MEGOLM,
                "room_id": room_id,
                "session_id": group.session_id,
                "session_key": group.session_key.to_base64(),
            },
            "sender": self.user_id,
            "sender_device": self.device_id,
            "keys": {"ed25519": self.ed},
            "recipient": user,
            "recipient_keys": {"ed25519": ed},
        }
        session = self.account.create_outbound_session(
            self.v.Curve25519PublicKey.from_base64(curve), self.v.Curve25519PublicKey.from_base64(otk)
        )
        kind, raw = session.encrypt(canonical(plain)).to_parts()
        content = {
            "algorithm": OLM,
            "sender_key": self.curve,
            "ciphertext": {curve: {"type": kind, "body": unpadded(raw)}},
        }
        return {"messages": {user: {device: content}}}

    def encrypt(self, room_id: str, event_type: str, content: dict[str, Any]) -> dict[str, Any]:
        group = self.outbound[room_id]
        plain = {"type": event_type, "content": content, "room_id": room_id}
        return {
            "algorithm": MEGOLM,
            "sender_key": self.curve,
            "ciphertext": group.encrypt(canonical(plain)).to_base64(),
            "session_id": group.session_id,
            "device_id": self.device_id,
        }

    def receive_to_device(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Olm pre-key messages carrying room keys: keep their Megolm sessions."""
        for event in events:
            content = event.get("content", {})
            if event.get("type") != "m.room.encrypted" or content.get("algorithm") != OLM:
                continue
            mine = content.get("ciphertext", {}).get(self.curve)
            if mine is None or mine.get("type") != 0:
                continue
            message = self.v.AnyOlmMessage.from_parts(0, _unb64(mine["body"])).to_pre_key()
            if message is None:
                continue
            _, plain = self.account.create_inbound_session(
                self.v.Curve25519PublicKey.from_base64(content["sender_key"]), message
            )
            key = json.loads(plain)
            if key.get("type") == "m.room_key":
                inner = key["content"]
                self.inbound[inner["session_id"]] = self.v.InboundGroupSession(
                    self.v.SessionKey(inner["session_key"])
                )

    def decrypt(self, event: Mapping[str, Any]) -> dict[str, Any]:
        content = event["content"]
        group = self.inbound[content["session_id"]]
        clear = group.decrypt(self.v.MegolmMessage.from_base64(content["ciphertext"]))
        return dict(json.loads(clear.plaintext))


def _unb64(text: str) -> bytes:
    import base64

    return base64.b64decode(text + "=" * (-len(text) % 4))


def device_of(hs_url: str, token: str) -> tuple[str, str]:
    who = _direct(hs_url, "GET", "/_matrix/client/v3/account/whoami", token)
    return str(who["user_id"]), str(who["device_id"])


def one_device(keys: Mapping[str, Any], user: str) -> tuple[str, Mapping[str, Any]]:
    devices = keys.get("device_keys", {}).get(user, {})
    if len(devices) != 1:
        raise MatrixError("expected one device of %s, got %d" % (user, len(devices)))
    return next(iter(devices.items()))


# ------------------------------------------------------------------ the session


@dataclass
class Phase:
    name: str
    label: str
    exchanges: int
    cost: Cost
    in_totals: bool = True
    window: tuple[float, float] = (0.0, 0.0)  # wall-clock start and end, for the capture
    notes: list[str] = field(default_factory=list)  # what did not go as scripted

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "exchanges": self.exchanges,
            "in_totals": self.in_totals,
            "notes": self.notes,
            **self.cost.as_dict(),
        }


@dataclass
class Account:
    """A user of the session, its room, and another member who posts the one new event."""

    user: str
    password: str
    room_id: str
    other_token: str
    # --e2ee: the other member's device (its keys uploaded, uncounted).
    other: E2eeDevice | None = None


def prepare_account(hs: Any, label: str, e2ee: bool = False) -> Account:
    """A fresh user in a fresh private room with one other member (uncounted, directly to Synapse).

    With ``e2ee`` the room is encrypted (Megolm) and the other member's device
    has uploaded its keys, as a logged-in encrypting client would have.
    """
    password = secrets.token_urlsafe(12)
    user = "bench_%s_%s" % (label, secrets.token_hex(3))
    user_id, token = hs.register_user(user, password)
    other_id, other_token = hs.register_user("friend_%s_%s" % (label, secrets.token_hex(3)), password)
    room: dict[str, Any] = {"preset": "private_chat", "name": "chat bench", "invite": [other_id]}
    if e2ee:
        room["initial_state"] = [
            {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}
        ]
    created = _direct(hs.url, "POST", "/_matrix/client/v3/createRoom", token, room)
    room_id = str(created["room_id"])
    _direct(hs.url, "POST", "/_matrix/client/v3/join/%s" % _q(room_id), other_token, {})
    other = None
    if e2ee:
        other = E2eeDevice(*device_of(hs.url, other_token))
        _direct(hs.url, "POST", "/_matrix/client/v3/keys/upload", other_token, other.upload_body(5))
    return Account(user, password, room_id, other_token, other)


def _direct(base_url: str, method: str, path: str, token: str, body: Any = None) -> Any:
    parsed = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port or 80, timeout=60)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(
            method,
            path,
            body=data,
            headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        answer = json.loads(resp.read() or b"null")
        if resp.status != 200:
            raise MatrixError("%s %s -> HTTP %d: %s" % (method, path, resp.status, answer))
        return answer
    finally:
        conn.close()


def run_session(
    client: MatrixClient,
    meter: Meter,
    account: Account,
    hs_url: str,
    *,
    sync_timeout_ms: int,
    log: Callable[[str], None],
    start_snapshot: Any = None,
) -> list[Phase]:
    """The scripted session, one phase at a time, each measured between two still snapshots."""
    phases: list[Phase] = []
    state: dict[str, Any] = {"notes": []}

    @contextlib.contextmanager
    def phase(name: str, label: str, exchanges: int = 1, in_totals: bool = True) -> Iterator[None]:
        before = state.pop("snap") if "snap" in state else meter.snapshot()
        t0 = time.time()
        started = time.monotonic()
        yield
        after = meter.snapshot()
        state["snap"] = after
        cost = meter.cost(before, after, name)
        p = Phase(name, label, exchanges, cost, in_totals, (t0, time.time()), state["notes"])
        state["notes"] = []
        phases.append(p)
        log(
            "  %-38s %4d packets %7d IP bytes (%.1f s)"
            % (label, p.cost.packets, p.cost.ip_bytes, time.monotonic() - started)
        )
        if cost.retransmitted:
            p.notes.append(
                "includes %d retransmitted segment(s), %d B of payload (loopback tail-loss probes)"
                % (cost.retransmitted, cost.retransmitted_payload)
            )
        for note in p.notes:
            log("    note: %s" % note)

    if start_snapshot is not None:
        state["snap"] = start_snapshot
    with phase("connect", "connect (a: TCP + TLS handshake)"):
        client.connect()
    with phase("login", "login"):
        login = client.login(account.user, account.password)
    me: E2eeDevice | None = None
    if account.other is not None:
        me = E2eeDevice(str(login["user_id"]), str(login["device_id"]))
        with phase("keys_upload", "keys upload (device + %d one-time keys)" % ONE_TIME_KEYS):
            client.call("POST", "/_matrix/client/v3/keys/upload", me.upload_body())
    with phase("initial_sync", "initial sync (timeline limit 1)"):
        first = client.sync()
        if account.room_id not in first.get("rooms", {}).get("join", {}):
            raise MatrixError("the initial sync does not show the room %s" % account.room_id)
    since = str(first["next_batch"])
    if me is not None:
        assert account.other is not None
        other_user = account.other.user_id
        with phase("key_share", "room key share (query, claim, to-device)", 3):
            keys = client.call("POST", "/_matrix/client/v3/keys/query", {"device_keys": {other_user: []}})
            device, dkeys = one_device(keys, other_user)
            claimed = client.call(
                "POST",
                "/_matrix/client/v3/keys/claim",
                {"one_time_keys": {other_user: {device: "signed_curve25519"}}},
            )
            otk = next(iter(claimed["one_time_keys"][other_user][device].values()))["key"]
            body = me.room_key_to(
                account.room_id,
                (
                    other_user,
                    device,
                    dkeys["keys"]["curve25519:" + device],
                    dkeys["keys"]["ed25519:" + device],
                    otk,
                ),
            )
            client.call(
                "PUT", "/_matrix/client/v3/sendToDevice/m.room.encrypted/%s" % secrets.token_hex(8), body
            )
    with phase("send", "message send x%d" % SENDS, SENDS):
        for i in range(SENDS):
            txn = "bench%d.%s" % (i, secrets.token_hex(4))
            if me is None:
                client.send_text(account.room_id, txn, "message %d" % (i + 1))
                continue
            content = me.encrypt(
                account.room_id, "m.room.message", {"msgtype": "m.text", "body": "message %d" % (i + 1)}
            )
            client.call(
                "PUT",
                "/_matrix/client/v3/rooms/%s/send/m.room.encrypted/%s" % (_q(account.room_id), _q(txn)),
                content,
            )
    with phase("catch_up", "catch-up sync (own 10; not in totals)", in_totals=False):
        # Until an answer brings nothing more: Synapse gives everything in one
        # answer (the filter's timeline limit of 1 shows the last message); lowbw
        # may have parked a sync during the sends, answered with the first.
        for _ in range(SENDS):
            answer = client.sync(since, 0)
            since = str(answer["next_batch"])
            if not timeline_events(answer, account.room_id):
                break
    with phase("empty_sync", "empty incremental sync x%d" % EMPTY_SYNCS, EMPTY_SYNCS):
        for i in range(EMPTY_SYNCS):
            answer = client.sync(since, sync_timeout_ms)
            events = timeline_events(answer, account.room_id)
            if events:
                # Bytes are what is measured; say so rather than stop.
                state["notes"].append(
                    "sync %d of %d was not empty: %s"
                    % (
                        i + 1,
                        EMPTY_SYNCS,
                        ", ".join("%s from %s" % (e.get("type"), e.get("sender")) for e in events),
                    )
                )
            since = str(answer["next_batch"])
    # Another member posts one message, directly to Synapse, between two phases (uncounted).
    meter_before = state.pop("snap")
    if me is None:
        event_type, content = "m.room.message", {"msgtype": "m.text", "body": "one new message"}
    else:
        # Encrypted: its room key goes to our device first (Olm, to-device), as a client does.
        other = account.other
        assert other is not None
        token = account.other_token
        theirs = _direct(
            hs_url,
            "POST",
            "/_matrix/client/v3/keys/claim",
            token,
            {"one_time_keys": {me.user_id: {me.device_id: "signed_curve25519"}}},
        )
        otk = next(iter(theirs["one_time_keys"][me.user_id][me.device_id].values()))["key"]
        _direct(
            hs_url,
            "PUT",
            "/_matrix/client/v3/sendToDevice/m.room.encrypted/%s" % secrets.token_hex(8),
            token,
            other.room_key_to(account.room_id, (me.user_id, me.device_id, me.curve, me.ed, otk)),
        )
        event_type = "m.room.encrypted"
        content = other.encrypt(
            account.room_id, "m.room.message", {"msgtype": "m.text", "body": "one new message"}
        )
    new_event = _direct(
        hs_url,
        "PUT",
        "/_matrix/client/v3/rooms/%s/send/%s/%s" % (_q(account.room_id), event_type, secrets.token_hex(8)),
        account.other_token,
        content,
    )["event_id"]
    state["snap"] = meter_before
    with phase("sync_one_event", "incremental sync, 1 new event" + (" + its room key" if me else "")):
        answer = client.sync(since, sync_timeout_ms)
        events = timeline_events(answer, account.room_id)
        to_device = list(answer.get("to_device", {}).get("events", []))
        polls = 1
        while new_event not in [e.get("event_id") for e in events] and polls < 6:
            # The room key came first: a parked sync answers with it alone, and
            # the event follows (HTTPS gets both in one answer). A poll may end
            # empty while the event is still on the air (its airtime > T).
            answer = client.sync(str(answer["next_batch"]), sync_timeout_ms)
            events = timeline_events(answer, account.room_id)
            to_device += answer.get("to_device", {}).get("events", [])
            polls += 1
        if polls > 1:
            state["notes"].append(
                "the event came on long-poll %d" % polls
                if me is None
                else "the room key and the event came in %d syncs" % polls
            )
        if new_event not in [e.get("event_id") for e in events]:
            raise MatrixError("the incremental sync did not return the new event %s" % new_event)
        if me is not None:
            me.receive_to_device(to_device)
            clear = me.decrypt(next(e for e in events if e.get("event_id") == new_event))
            if clear.get("content", {}).get("body") != "one new message":
                raise MatrixError("the new event did not decrypt to what was sent: %r" % clear)
    return phases


# ------------------------------------------------------------------ --session realistic

REALISTIC_FILTER = {"room": {"timeline": {"limit": 10}}}
REALISTIC_MESSAGES = 20  # alternating: ours (even), the other member's (odd)
# Message lengths 14..166 characters, spread evenly and shuffled (fixed: the same text every run).
REALISTIC_LENGTHS = (14, 94, 38, 166, 57, 121, 22, 76, 143, 31, 105, 18, 67, 158, 45, 83, 130, 26, 112, 50)
REALISTIC_REACTION = "\U0001f44d"
# The client's sync loop goes on between messages, 3 s long-polls as a stock client
# makes them: while the other member reads and types (3 polls, 9 s) and while our user
# does (1 poll). About 40 such polls over 20 messages, as in issue 14's measurement.
IDLE_POLLS_THEIRS = 3
IDLE_POLLS_OURS = 1
_WORDS = (
    "the antenna is up again and the link looks steady from here, battery at seventy percent, "
    "wind dropping; we will check the mast at dawn and report the readings after breakfast. "
)


def realistic_text(i: int) -> str:
    """Message ``i`` of the realistic session: REALISTIC_LENGTHS[i] characters of plain prose."""
    n = REALISTIC_LENGTHS[i % len(REALISTIC_LENGTHS)]
    start = (i * 37) % len(_WORDS)
    text = (_WORDS * 3)[start : start + n].strip()
    return (text + "." * n)[:n] if len(text) < n else text


class Ledger:
    """Per-phase costs summed over interleaved steps (the realistic session's phases
    alternate: a send, a receive, a receipt, ... each step measured on its own)."""

    def __init__(self) -> None:
        self.phases: dict[str, Phase] = {}

    def add(self, name: str, label: str, cost: Cost, window: tuple[float, float], notes: list[str]) -> None:
        p = self.phases.get(name)
        if p is None:
            self.phases[name] = Phase(name, label, 1, cost, True, window, list(notes))
            return
        p.exchanges += 1
        p.cost = p.cost.add(cost)
        p.window = (p.window[0], window[1])
        p.notes.extend(notes)


def run_realistic_session(
    client: MatrixClient,
    meter: Meter,
    account: Account,
    hs_url: str,
    *,
    sync_timeout_ms: int,
    log: Callable[[str], None],
    start_snapshot: Any = None,
    messages: int = REALISTIC_MESSAGES,
) -> list[Phase]:
    """Two users chatting (issue 14's realistic shape), measured step by step.

    Our user (through the link under test) and the other member (``other_token``,
    directly to Synapse, uncounted: the far side of the conversation) send
    ``messages`` messages alternately, ours first, of 14..166 characters. After
    each of the other's messages our client long-polls (``sync_timeout_ms``,
    with ``REALISTIC_FILTER``) until it has it, then sends a read receipt for
    it. At the end one reaction (an ``m.annotation`` to the last message
    received) and a logout.
    """
    ledger = Ledger()
    state: dict[str, Any] = {"snap": start_snapshot}

    @contextlib.contextmanager
    def step(name: str, label: str) -> Iterator[list[str]]:
        before = state["snap"] if state["snap"] is not None else meter.snapshot()
        t0 = time.time()
        notes: list[str] = []
        yield notes
        after = meter.snapshot()
        state["snap"] = after
        ledger.add(name, label, meter.cost(before, after, name), (t0, time.time()), notes)

    with step("connect", "connect (a: TCP + TLS handshake)"):
        client.connect()
    with step("login", "login"):
        client.login(account.user, account.password)

    def sync(since: str | None, timeout_ms: int | None) -> dict[str, Any]:
        query = {"filter": json.dumps(REALISTIC_FILTER, separators=(",", ":"))}
        if since is not None:
            query["since"] = since
        if timeout_ms is not None:
            query["timeout"] = str(timeout_ms)
        return dict(client.call("GET", "/_matrix/client/v3/sync", query=query))

    with step("initial_sync", "initial sync (timeline limit 10)"):
        first = sync(None, None)
        if account.room_id not in first.get("rooms", {}).get("join", {}):
            raise MatrixError("the initial sync does not show the room %s" % account.room_id)
    since = str(first["next_batch"])
    received: list[str] = []
    idle_label = "sync loop between messages (3 s long-polls)"

    def idle(polls: int) -> None:
        nonlocal since
        with step("idle", idle_label):
            for _ in range(polls):
                since = str(sync(since, sync_timeout_ms)["next_batch"])

    for i in range(messages):
        text = realistic_text(i)
        if i % 2 == 0:
            if i:
                idle(IDLE_POLLS_OURS)
            with step("send", "message send x%d (ours)" % ((messages + 1) // 2)):
                client.send_text(account.room_id, "rl%d.%s" % (i, secrets.token_hex(4)), text)
            idle(IDLE_POLLS_THEIRS)
            continue
        # The other member's message (uncounted, between steps).
        snap = state["snap"]
        event_id = _direct(
            hs_url,
            "PUT",
            "/_matrix/client/v3/rooms/%s/send/m.room.message/%s"
            % (_q(account.room_id), secrets.token_hex(8)),
            account.other_token,
            {"msgtype": "m.text", "body": text},
        )["event_id"]
        state["snap"] = snap
        with step("receive", "receive x%d (long-polls until it is there)" % (messages // 2)) as notes:
            polls = 0
            while True:
                polls += 1
                answer = sync(since, sync_timeout_ms)
                since = str(answer["next_batch"])
                if event_id in [e.get("event_id") for e in timeline_events(answer, account.room_id)]:
                    break
                if polls >= 20:
                    raise MatrixError("message %d never arrived in a sync" % i)
            if polls > 1:
                notes.append("message %d came on long-poll %d" % (i, polls))
        received.append(str(event_id))
        with step("receipt", "read receipt x%d" % (messages // 2)):
            client.call(
                "POST",
                "/_matrix/client/v3/rooms/%s/receipt/m.read/%s" % (_q(account.room_id), _q(str(event_id))),
                {"thread_id": "main"},
            )
    if received:
        with step("reaction", "reaction (m.annotation)"):
            client.call(
                "PUT",
                "/_matrix/client/v3/rooms/%s/send/m.reaction/%s"
                % (_q(account.room_id), "rx." + secrets.token_hex(4)),
                {
                    "m.relates_to": {
                        "rel_type": "m.annotation",
                        "event_id": received[-1],
                        "key": REALISTIC_REACTION,
                    }
                },
            )
    with step("logout", "logout"):
        client.call("POST", "/_matrix/client/v3/logout", {})
    for p in ledger.phases.values():
        log("  %-38s %4d packets %7d IP bytes" % (p.label, p.cost.packets, p.cost.ip_bytes))
    return list(ledger.phases.values())


SESSIONS: dict[str, Callable[..., list[Phase]]] = {"chat": run_session, "realistic": run_realistic_session}


# ------------------------------------------------------------------ (a) baseline


class Capture:
    """dumpcap on ``lo`` for one TCP port; per-window sums read back with tshark."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port = port
        self.path = directory / "baseline.pcapng"
        dumpcap = shutil.which("dumpcap") or "/usr/bin/dumpcap"
        self.log = open(directory / "dumpcap.log", "w+b")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [dumpcap, "-q", "-i", "lo", "-f", "tcp port %d" % port, "-w", str(self.path)],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            self.log.seek(0)
            if b"Capturing on" in self.log.read() or self.proc.poll() is not None:
                break
            time.sleep(0.05)
        if self.proc.poll() is not None:
            self.log.seek(0)
            raise OSError("dumpcap exited: %s" % self.log.read().decode(errors="replace").strip())
        time.sleep(0.2)

    def stop(self) -> list[tuple[float, int, int]]:
        """Stop; (time, IP length, TCP payload length) of every captured packet."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15)
        self.log.close()
        out = subprocess.run(
            [
                "tshark",
                "-r",
                str(self.path),
                "-T",
                "fields",
                "-E",
                "separator=,",
                "-e",
                "frame.time_epoch",
                "-e",
                "ip.len",
                "-e",
                "tcp.len",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        packets = []
        for line in out.stdout.splitlines():
            t, ip_len, tcp_len = line.split(",")
            packets.append((float(t), int(ip_len), int(tcp_len)))
        return packets


def capture_possible() -> bool:
    return (
        bool(shutil.which("tshark"))
        and bool(shutil.which("dumpcap") or os.path.exists("/usr/bin/dumpcap"))
        and os.geteuid() == 0
    )


def _nginx_config_in_memory_bodies(*args: Any, **kwargs: Any) -> str:
    """bench/nginx_tls.py's config with request bodies kept in memory up to 1 MB.

    A keys upload (50 signed one-time keys, 12.8 KB of JSON) exceeds nginx's
    default 16 KB-or-less body buffer and goes to a temp file, which nginx's
    unprivileged worker cannot write in the root-owned temp directory: 500.
    Buffering in memory changes nothing on the wire.
    """
    conf = _NGINX_CONFIG(*args, **kwargs)
    return conf.replace(
        "client_max_body_size 50M;", "client_max_body_size 50M;\n        client_body_buffer_size 1m;"
    )


def run_baseline(
    hs: Any,
    *,
    sync_timeout_ms: int,
    capture: str,
    log: Callable[[str], None],
    keep_capture: str | None = None,
    e2ee: bool = False,
    session: str = "chat",
    session_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    account = prepare_account(hs, "a", e2ee)
    assert hs.port is not None
    _nginx_tls.nginx_config = _nginx_config_in_memory_bodies
    with NginxTLS(("127.0.0.1", hs.port)) as nginx:
        assert nginx.port is not None
        log(
            "(a) HTTPS+JSON: %s TLS 1.3 ECDSA P-256 on 127.0.0.1:%d -> Synapse %s"
            % (nginx.version(), nginx.port, hs.url)
        )
        workdir = Path(tempfile.mkdtemp(prefix="lowbw-chat-bench-"))
        cap: Capture | None = None
        try:
            if capture == "yes" or (capture == "auto" and capture_possible()):
                try:
                    cap = Capture(nginx.port, workdir)
                except OSError as exc:
                    if capture == "yes":
                        raise
                    log("  (no capture: %s)" % exc)
            conn = TLSConnection(TLS_SERVER_NAME, ("127.0.0.1", nginx.port), tls13_client_context())
            client = MatrixClient(conn)
            phases = SESSIONS[session](
                client,
                TcpMeter(conn),
                account,
                hs.url,
                sync_timeout_ms=sync_timeout_ms,
                log=log,
                **(session_kwargs or {}),
            )
            assert isinstance(conn.sock, ssl.SSLSocket)
            cipher = conn.sock.cipher()
            tls = {"version": conn.sock.version(), "cipher": cipher[0] if cipher else None}
            options = read_tcp_info(conn.sock).options
            peer_readable = read_peer_tcp_info(conn.sock) is not None
            client.close()
            packets = cap.stop() if cap is not None else None
            if cap is not None and keep_capture:
                shutil.copyfile(cap.path, keep_capture)
            cap = None
        finally:
            if cap is not None:
                with contextlib.suppress(Exception):
                    cap.stop()
            shutil.rmtree(workdir, ignore_errors=True)
        result: dict[str, Any] = {
            "nginx": nginx.version(),
            "tls": tls,
            "tcp_options": {
                "timestamps": bool(options & TCPI_OPT_TIMESTAMPS),
                "sack": bool(options & TCPI_OPT_SACK),
                "wscale": bool(options & TCPI_OPT_WSCALE),
                "header_bytes": IPV4_HEADER + tcp_header_bytes(options),
            },
            "server_counters": peer_readable,
            "phases": phases,
            "bodies": client.bodies,
        }
        if not peer_readable:
            log("  (nginx's socket counters were not readable: payload down excludes retransmissions)")
        if packets is not None:
            result["capture"] = capture_by_phase(packets, phases)
        return result


def capture_by_phase(packets: Sequence[tuple[float, int, int]], phases: Sequence[Phase]) -> dict[str, Any]:
    """The capture's packets and IP bytes in each phase's time window, and in all."""
    per: dict[str, dict[str, int]] = {}
    for p in phases:
        t0, t1 = p.window
        inside = [(ip, tcp) for t, ip, tcp in packets if t0 <= t <= t1]
        per[p.name] = {
            "packets": len(inside),
            "ip_bytes": sum(ip for ip, _ in inside),
            "payload": sum(tcp for _, tcp in inside),
        }
    return {
        "phases": per,
        "all_packets": len(packets),
        "all_ip_bytes": sum(ip for _, ip, _ in packets),
    }


# ------------------------------------------------------------------ (b) lowbw


def load_demo() -> ModuleType:
    """scripts/demo.py as a module: its process helpers start proxy and relay as the demo does."""
    name = "lowbw_scripts_demo"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def preset_link_bps(preset: str) -> int:
    """The preset's uplink bit rate (for LoRa presets: the rate a 100-byte frame achieves)."""
    from radio_sim.presets import get_preset

    up = get_preset(preset).direction("up")
    if up.rate_bps is not None and up.lora is None:
        return int(up.rate_bps)
    air = up.airtime(100)
    return int(800 / air) if air > 0 else 1_000_000


class LowbwUnavailable(RuntimeError):
    """The client-proxy (or its set-up commands) is not there to measure."""


def lowbw_has_client_proxy() -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "lowbw", "--help"], capture_output=True, text=True, cwd=str(ROOT), timeout=60
    )
    return "client-proxy" in out.stdout


def run_lowbw(
    hs: Any,
    proxy_dir: Path,
    config_path: Path,
    *,
    preset: str,
    sync_timeout_ms: int,
    log: Callable[[str], None],
    variant: str = "",
    client_args: Sequence[str] = (),
    e2ee: bool = False,
    session: str = "chat",
    session_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    demo = load_demo()
    if not lowbw_has_client_proxy():
        raise LowbwUnavailable("`python -m lowbw client-proxy` does not exist yet (issue 7)")
    account = prepare_account(hs, "b" + variant, e2ee)
    link_bps = preset_link_bps(preset)
    procs: list[Any] = []
    try:
        client_config = proxy_dir / ("client%s.toml" % variant)
        try:
            demo.run_lowbw(
                "proxy",
                "enroll-client",
                "chatbench" + variant,
                "--config",
                str(config_path),
                "--out",
                str(client_config),
                # The profile of the slow link this bench models, whatever --preset says
                # (tests/bench/test_chat_budget.py runs --preset fast for the same bytes).
                "--profile",
                "compact",
            )
        except demo.DemoError as exc:
            raise LowbwUnavailable(str(exc)) from None
        proxy = demo.start_proxy(config_path, proxy_dir / ("proxy%s.log" % variant), track=procs)
        from lowbw.proxy import config as proxy_config

        udp_port = int(proxy_config.load(config_path).proxy.port)
        relay = demo.Relay(
            ("127.0.0.1", udp_port),
            proxy_dir / ("relay%s.log" % variant),
            proxy_dir / ("radio%s.json" % variant),
            preset=preset,
            track=procs,
        )
        before_start = relay.snapshot()
        cp = demo.Proc(
            "client-proxy",
            [
                sys.executable,
                "-m",
                "lowbw",
                "client-proxy",
                "--config",
                str(client_config),
                "--listen",
                "127.0.0.1:0",
                "--proxy",
                "%s:%d" % (relay.host, relay.port),
                "--link-bps",
                str(link_bps),
                "--mtu",
                str(preset_mtu(preset)),
                *client_args,
            ],
            proxy_dir / ("client-proxy%s.log" % variant),
            cwd=ROOT,
            track=procs,
        )
        try:
            _, m = cp.wait_for(r"listening http://([0-9.]+):(\d+)", 60)
        except demo.DemoError as exc:
            raise LowbwUnavailable("the client-proxy did not start: %s" % exc) from None
        base = (m.group(1), int(m.group(2)))
        log(
            "(b) lowbw: client-proxy http://%s:%d -> radio_sim %s (%s:%d) -> lowbw proxy (pid %d) -> Synapse"
            % (base[0], base[1], preset, relay.host, relay.port, proxy.pid)
        )
        meter = RadioMeter(base, relay)
        # The client-proxy counts from its start: a handshake it makes before the
        # first request belongs to "connect".
        start = {"tx": 0, "tx_bytes": 0, "rx": 0, "rx_bytes": 0, "relay": before_start}
        client = MatrixClient(OneWriteConnection(base[0], base[1], timeout=600))
        try:
            phases = SESSIONS[session](
                client,
                meter,
                account,
                hs.url,
                sync_timeout_ms=sync_timeout_ms,
                log=log,
                start_snapshot=start,
                **(session_kwargs or {}),
            )
        except Exception:
            for proc in procs:  # what the lowbw side said, before its logs go
                log("--- last output of %s ---\n%s" % (proc.name, proc.tail(15)))
            raise
        finally:
            client.close()
        return {"preset": preset, "link_bps": link_bps, "phases": phases}
    finally:
        for p in reversed(procs):
            p.stop(timeout=15)


# ------------------------------------------------------------------ report


def total(phases: Sequence[Phase]) -> Cost:
    """The session's cost: every phase counted in the totals."""
    out = Cost()
    for p in phases:
        if p.in_totals:
            out = out.add(p.cost)
    return out


def ratio(a: int, b: int) -> str:
    if b == 0:
        return "free" if a else "-"
    return "%.1fx" % (a / b)


def _n(x: float) -> str:
    return "{:,.0f}".format(x)


def format_report(baseline: Sequence[Phase], lowbw: Sequence[Phase]) -> str:
    """Markdown tables: per phase, (a) against (b); per exchange, (a) against the calibration and (b)."""
    names = [p.name for p in (baseline or lowbw)]
    a = {p.name: p for p in baseline}
    b = {p.name: p for p in lowbw}

    def cells(c: Cost | None) -> list[str]:
        return ["", "", ""] if c is None else [str(c.packets), _n(c.ip_bytes), _n(c.payload)]

    def row(label: str, ca: Cost | None, cb: Cost | None) -> str:
        r = ratio(ca.ip_bytes, cb.ip_bytes) if ca is not None and cb is not None else ""
        return "| %s | %s | %s |" % (label, " | ".join(cells(ca) + cells(cb)), r)

    lines = [
        "| phase | (a) packets | (a) IP B | (a) payload B | (b) datagrams | (b) IP B | (b) payload B "
        "| (a)/(b) IP |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in names:
        pa, pb = a.get(name), b.get(name)
        label = (pa or pb).label if (pa or pb) is not None else name  # type: ignore[union-attr]
        lines.append(row(label, pa.cost if pa else None, pb.cost if pb else None))
    lines.append(row("**total**", total(baseline) if baseline else None, total(lowbw) if lowbw else None))

    lines += [
        "",
        "| per exchange (IP bytes) | (a) | calibration (a) | (b) | (b) airtime s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in names:
        pa, pb = a.get(name), b.get(name)
        some = pa or pb
        if some is None or not some.in_totals:
            continue
        n = some.exchanges
        cal = CALIBRATION_IP_BYTES.get(name)
        air = pb.cost.airtime_s if pb is not None else None
        lines.append(
            "| %s | %s | %s | %s | %s |"
            % (
                name.replace("_", " "),
                _n(pa.cost.ip_bytes / n) if pa else "",
                _n(cal) if cal else "",
                _n(pb.cost.ip_bytes / n) if pb else "",
                "%.2f" % (air / n) if air is not None else "",
            )
        )
    return "\n".join(lines)


def format_capture(phases: Sequence[Phase], capture: Mapping[str, Any]) -> str:
    """TCP_INFO's figures beside the capture's, phase by phase."""
    lines = [
        "| phase | packets: TCP_INFO / capture | payload B: TCP_INFO / capture | IP B: TCP_INFO / capture |",
        "| --- | ---: | ---: | ---: |",
    ]
    sums = [0, 0, 0, 0, 0, 0]
    for p in phases:
        c = capture["phases"].get(p.name, {"packets": 0, "payload": 0, "ip_bytes": 0})
        values = [p.cost.packets, c["packets"], p.cost.payload, c["payload"], p.cost.ip_bytes, c["ip_bytes"]]
        sums = [x + y for x, y in zip(sums, values, strict=True)]
        lines.append("| %s | %d / %d | %d / %d | %d / %d |" % (p.label, *values))
    lines.append("| all phases | %d / %d | %d / %d | %d / %d |" % tuple(sums))
    lines.append(
        "(whole capture: %d packets, %d IP bytes)" % (capture["all_packets"], capture["all_ip_bytes"])
    )
    return "\n".join(lines)


# ------------------------------------------------------------------ main


def preset_mtu(preset: str) -> int:
    from radio_sim.presets import get_preset

    mtu = get_preset(preset).direction("up").mtu
    return 65507 if mtu is None else min(int(mtu), 65507)


def start_stack(workdir: Path, link_bps: int | None, mtu: int = 0) -> tuple[Any, Path | None]:
    """Synapse; when (b) runs (``link_bps`` given), first ``lowbw proxy init`` and its appservice loaded."""
    from lowbw.testing.synapse import SynapseServer

    if link_bps is None:
        hs = SynapseServer(server_name=SERVER_NAME)
        hs.start()
        return hs, None
    demo = load_demo()
    proxy_dir = workdir / "proxy"
    config_path = demo.init_proxy(
        proxy_dir,
        server_name=SERVER_NAME,
        udp_port=demo.free_udp_port(),
        appservice_listen="127.0.0.1:%d" % demo.free_tcp_port(),
        link_bps=link_bps,
        mtu=mtu,
    )
    hs = SynapseServer(server_name=SERVER_NAME, app_service_config_files=[proxy_dir / "appservice.yaml"])
    hs.start()
    demo.set_homeserver_url(config_path, hs.url)
    return hs, config_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="One stock-client chat session, HTTPS+JSON via nginx (a) and via lowbw (b): "
        "IP-level bytes per phase.",
    )
    parser.add_argument(
        "--only",
        choices=("baseline", "lowbw", "both"),
        default="both",
        help="run only (a) baseline, only (b) lowbw, or both (default)",
    )
    parser.add_argument("--preset", default="1kbps", help="radio_sim preset for (b) (default 1kbps)")
    parser.add_argument(
        "--sync-timeout",
        type=int,
        default=3000,
        metavar="MS",
        help="long-poll timeout of the incremental syncs, both runs (default 3000)",
    )
    parser.add_argument(
        "--capture",
        choices=("auto", "yes", "no"),
        default="auto",
        help="cross-check (a) with a dumpcap capture on lo (auto: when root and installed)",
    )
    parser.add_argument("--keep-capture", metavar="FILE", help="copy (a)'s capture (pcapng) to FILE")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument(
        "--e2ee",
        action="store_true",
        help="the session in an end-to-end encrypted room (keys upload, room key share, Megolm sends); "
        "with --ablation, what base64 byte strings and the dictionary save",
    )
    parser.add_argument(
        "--session",
        choices=tuple(SESSIONS),
        default="chat",
        help="chat: the scripted session above (default); realistic: two users, 20 messages of 14-166 "
        "characters alternating, a read receipt for each received, one reaction, logout",
    )
    parser.add_argument(
        "--messages",
        type=int,
        default=REALISTIC_MESSAGES,
        metavar="N",
        help="--session realistic: messages in the conversation, both users (default %d)"
        % REALISTIC_MESSAGES,
    )
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="also run (b) with each compression technique switched off, to measure what each saves",
    )
    args = parser.parse_args(argv)

    def log(text: str) -> None:
        print(text, flush=True)

    run_a = args.only in ("baseline", "both")
    run_b = args.only in ("lowbw", "both")
    if run_b:
        from radio_sim.presets import get_preset

        try:
            get_preset(args.preset)
        except Exception as exc:  # noqa: BLE001
            parser.error("unknown preset %r: %s" % (args.preset, exc))

    session_kwargs = {"messages": args.messages} if args.session == "realistic" else {}
    workdir = Path(tempfile.mkdtemp(prefix="lowbw-chat-"))
    results: dict[str, Any] = {
        "settings": {
            "sync_timeout_ms": args.sync_timeout,
            "sends": SENDS,
            "empty_syncs": EMPTY_SYNCS,
            "filter": SYNC_FILTER,
            "user_agent": USER_AGENT,
            "preset": args.preset if run_b else None,
            "e2ee": args.e2ee,
            "session": args.session,
        },
        "calibration_ip_bytes": CALIBRATION_IP_BYTES,
    }
    baseline: list[Phase] = []
    lowbw: list[Phase] = []
    status = 0
    hs = None
    try:
        hs, config_path = start_stack(
            workdir, preset_link_bps(args.preset) if run_b else None, preset_mtu(args.preset)
        )
        from importlib.metadata import version

        results["settings"]["synapse"] = version("matrix-synapse")
        log("Synapse %s at %s (up in %.1f s)" % (version("matrix-synapse"), hs.url, hs.start_seconds or 0.0))
        if run_a:
            try:
                a = run_baseline(
                    hs,
                    sync_timeout_ms=args.sync_timeout,
                    capture=args.capture,
                    log=log,
                    keep_capture=args.keep_capture,
                    e2ee=args.e2ee,
                    session=args.session,
                    session_kwargs=session_kwargs,
                )
            except NginxError as exc:
                log("(a) not run: %s" % exc)
                results["baseline"] = {"error": str(exc)}
                status = 1
            except Exception as exc:  # noqa: BLE001 - report, and still show what (b) measures
                log("(a) failed:\n%s" % traceback.format_exc())
                results["baseline"] = {"error": repr(exc)}
                status = 1
            else:
                baseline = a.pop("phases")
                bodies = a.pop("bodies")
                if args.e2ee:
                    results["encrypted_bodies"] = body_savings(bodies)
                results["baseline"] = {
                    **a,
                    "phases": [p.as_dict() for p in baseline],
                    "total": total(baseline).as_dict(),
                }
        if run_b:
            assert config_path is not None
            try:
                b = run_lowbw(
                    hs,
                    workdir / "proxy",
                    config_path,
                    preset=args.preset,
                    sync_timeout_ms=args.sync_timeout,
                    log=log,
                    e2ee=args.e2ee,
                    session=args.session,
                    session_kwargs=session_kwargs,
                )
            except LowbwUnavailable as exc:
                log("(b) not run: %s" % exc)
                results["lowbw"] = {"error": str(exc)}
                status = 1
            except Exception as exc:  # noqa: BLE001 - report, and still show what (a) measured
                log("(b) failed:\n%s" % traceback.format_exc())
                results["lowbw"] = {"error": repr(exc)}
                status = 1
            else:
                lowbw = b.pop("phases")
                results["lowbw"] = {
                    **b,
                    "phases": [p.as_dict() for p in lowbw],
                    "total": total(lowbw).as_dict(),
                }
        if run_b and lowbw and args.ablation:
            assert config_path is not None
            results["ablation"] = run_ablation(hs, workdir, config_path, args, log, total(lowbw))
    finally:
        if hs is not None:
            hs.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    if baseline or lowbw:
        log("")
        log(
            "IP-level bytes (a: IPv4+TCP+TLS, counted with TCP_INFO; b: IPv4+UDP on the radio, "
            "from the client-proxy's counters); empty syncs long-poll %d ms in both" % args.sync_timeout
        )
        log(format_report(baseline, lowbw))
    if "encrypted_bodies" in results:
        log("")
        log("Encrypted bodies of (a)'s session (requests and answers), bytes on the link by encoding:")
        log(format_body_savings(results["encrypted_bodies"]))
    if baseline and "capture" in results.get("baseline", {}):
        log("")
        log("(a) cross-check against a capture on lo (dumpcap/tshark):")
        log(format_capture(baseline, results["baseline"]["capture"]))
    if baseline and lowbw:
        ta, tb = total(baseline), total(lowbw)
        empty = next((p for p in lowbw if p.name == "empty_sync"), None)
        met = tb.ip_bytes * TARGET_RATIO <= ta.ip_bytes
        results["target"] = {
            "session": args.session,
            "baseline_ip_bytes": ta.ip_bytes,
            "lowbw_ip_bytes": tb.ip_bytes,
            "ratio": ta.ip_bytes / tb.ip_bytes if tb.ip_bytes else None,
            "ratio_met": met,
        }
        log("")
        line = "target (%s session): >= %.0fx fewer IP bytes: %s (%s)" % (
            args.session,
            TARGET_RATIO,
            "met" if met else "NOT met",
            ratio(ta.ip_bytes, tb.ip_bytes),
        )
        if empty is not None:
            results["target"]["empty_sync_free"] = empty.cost.ip_bytes == 0
            line += "; empty incremental sync on the air: %d B (%s)" % (
                empty.cost.ip_bytes,
                "free" if empty.cost.ip_bytes == 0 else "NOT free",
            )
        log(line)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
        log("wrote %s" % args.json)
    return status


# Which exchanges carry encrypted material (keys, signatures, ciphertexts).
ENCRYPTED_ENDPOINTS = (
    ("keys/upload", "/keys/upload"),
    ("keys/query", "/keys/query"),
    ("keys/claim", "/keys/claim"),
    ("sendToDevice", "/sendToDevice/"),
    ("send m.room.encrypted", "/send/m.room.encrypted/"),
)
BODY_VARIANTS = (
    ("json", "JSON"),
    ("cbor", "CBOR, integer keys"),
    ("blobs", "+ byte strings"),
    ("dict", "+ dictionary"),
    ("both", "+ both (as sent)"),
)


def body_sizes(value: Any) -> dict[str, int]:
    """One JSON body's size in each encoding (no identifier references: they are measured apart)."""
    from lowbw.compact.codec import BodyCodec
    from lowbw.wire import keys as key_tables

    table = key_tables.TABLE_LOWBW_V1
    return {
        "json": len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()),
        "cbor": len(BodyCodec(table).encode(value)[0]),
        "blobs": len(BodyCodec(table, blobs=True).encode(value)[0]),
        "dict": len(BodyCodec(table, 1).encode(value)[0]),
        "both": len(BodyCodec(table, 1, blobs=True).encode(value)[0]),
    }


def body_savings(bodies: Sequence[tuple[str, str, Any, Any]]) -> dict[str, dict[str, int]]:
    """Summed sizes per encrypted endpoint (request and answer bodies), and of syncs' encrypted parts."""
    out: dict[str, dict[str, int]] = {}

    def add(name: str, value: Any) -> None:
        if value is None:
            return
        row = out.setdefault(name, {"bodies": 0, **{k: 0 for k, _ in BODY_VARIANTS}})
        row["bodies"] += 1
        for k, n in body_sizes(value).items():
            row[k] += n

    for _method, path, request, answer in bodies:
        for name, needle in ENCRYPTED_ENDPOINTS:
            if needle in path:
                add(name, request if request else None)
                add(name, answer)
        if path.endswith("/sync") and isinstance(answer, dict):
            for room in answer.get("rooms", {}).get("join", {}).values():
                for event in room.get("timeline", {}).get("events", []):
                    if event.get("type") == "m.room.encrypted":
                        add("m.room.encrypted in syncs", event)
            for event in answer.get("to_device", {}).get("events", []):
                add("to-device in syncs", event)
    return out


def format_body_savings(rows: Mapping[str, Mapping[str, int]]) -> str:
    head = "| exchange | bodies | " + " | ".join(label for _, label in BODY_VARIANTS) + " |"
    lines = [head, "| --- | ---: |" + " ---: |" * len(BODY_VARIANTS)]
    sums = {k: 0 for k, _ in BODY_VARIANTS}
    count = 0
    for name, row in rows.items():
        lines.append(
            "| %s | %d | %s |" % (name, row["bodies"], " | ".join(_n(row[k]) for k, _ in BODY_VARIANTS))
        )
        count += row["bodies"]
        for k in sums:
            sums[k] += row[k]
    lines.append("| **all** | %d | %s |" % (count, " | ".join(_n(sums[k]) for k, _ in BODY_VARIANTS)))
    if sums["cbor"] and sums["dict"]:
        lines.append("")
        lines.append(
            "byte strings save %s B (%.1f %%) on CBOR, %s B (%.1f %%) on top of the dictionary; "
            "the dictionary saves %s B (%.1f %%) on CBOR, %s B (%.1f %%) on top of byte strings"
            % (
                _n(sums["cbor"] - sums["blobs"]),
                100.0 * (sums["cbor"] - sums["blobs"]) / sums["cbor"],
                _n(sums["dict"] - sums["both"]),
                100.0 * (sums["dict"] - sums["both"]) / sums["dict"],
                _n(sums["cbor"] - sums["dict"]),
                100.0 * (sums["cbor"] - sums["dict"]) / sums["cbor"],
                _n(sums["blobs"] - sums["both"]),
                100.0 * (sums["blobs"] - sums["both"]) / sums["blobs"],
            )
        )
    return "\n".join(lines)


ABLATION = (
    ("-d", "no preset dictionary", ("--no-dictionary",)),
    ("-r", "no identifier references / event-type numbers", ("--no-refs",)),
    ("-t", "no short transaction IDs", ("--no-short-txn",)),
    ("-all", "integer keys only (all three off)", ("--no-dictionary", "--no-refs", "--no-short-txn")),
    ("-h", "own echoes not held for the next news (--echo-hold 0)", ("--echo-hold", "0")),
    ("-l", "receipts as ordinary requests (--no-local-receipts)", ("--no-local-receipts",)),
)


E2EE_ABLATION = (
    ("-b", "no base64 byte strings", ("--no-byte-strings",)),
    ("-d", "no preset dictionary", ("--no-dictionary",)),
    ("-bd", "neither byte strings nor dictionary", ("--no-byte-strings", "--no-dictionary")),
)


def run_ablation(
    hs: Any, workdir: Path, config_path: Path, args: Any, log: Callable[[str], None], full: Cost
) -> list[dict[str, Any]]:
    """(b) again with one technique off at a time: what each saves over the whole session."""
    rows: list[dict[str, Any]] = []
    for suffix, label, flags in E2EE_ABLATION if args.e2ee else ABLATION:
        log("")
        log("(b) ablation: %s" % label)
        b = run_lowbw(
            hs,
            workdir / "proxy",
            config_path,
            preset=args.preset,
            sync_timeout_ms=args.sync_timeout,
            log=log,
            variant=suffix,
            client_args=flags,
            e2ee=args.e2ee,
            session=args.session,
            session_kwargs={"messages": args.messages} if args.session == "realistic" else None,
        )
        t = total(b["phases"])
        rows.append(
            {
                "variant": label,
                "flags": list(flags),
                "ip_bytes": t.ip_bytes,
                "payload_bytes": t.payload,
                "packets": t.packets,
                "saved_by_technique": t.ip_bytes - full.ip_bytes,
            }
        )
    log("")
    log("What each technique saves over the whole session (IP bytes of (b) with it off, minus with all on):")
    log("| (b) variant | datagrams | IP B | payload B | the technique saves |")
    log("| --- | ---: | ---: | ---: | ---: |")
    log(
        "| all on | %d | %s | %s | |"
        % (full.packets, "{:,}".format(full.ip_bytes), "{:,}".format(full.payload))
    )
    for r in rows:
        log(
            "| %s | %d | %s | %s | %s B (%.0f %%) |"
            % (
                r["variant"],
                r["packets"],
                "{:,}".format(r["ip_bytes"]),
                "{:,}".format(r["payload_bytes"]),
                "{:,}".format(r["saved_by_technique"]),
                100.0 * r["saved_by_technique"] / r["ip_bytes"] if r["ip_bytes"] else 0.0,
            )
        )
    return rows


if __name__ == "__main__":
    sys.exit(main())
