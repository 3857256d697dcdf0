"""The byte counting of bench/chat_session.py, against sockets whose traffic we know.

Linux only: the bench reads ``struct tcp_info`` at fixed offsets (getsockopt
TCP_INFO on our socket, inet_diag for the peer's); a wrong offset or a field
misread shows up here as a byte count that does not match what was sent.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator

import pytest

from bench.chat_session import (
    ZERO_CONN,
    ConnCounters,
    OneWriteConnection,
    TcpCounters,
    read_peer_tcp_info,
    read_tcp_info,
    syn_extra_bytes,
    tcp_cost,
    tcp_header_bytes,
    udp_cost,
    wait_still,
)

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_INFO layout is Linux's")


def still(sock: socket.socket) -> TcpCounters:
    """Counters once the socket has been quiet longer than Linux's longest delayed ACK (200 ms)."""
    counters: TcpCounters = wait_still(lambda: read_tcp_info(sock), quiet_s=0.25, poll_s=0.01, limit_s=5)
    return counters


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "peer closed early"
        data += chunk
    return data


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(client, server) ends of a fresh IPv4 loopback TCP connection."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname(), timeout=5)
        server, _ = listener.accept()
        server.settimeout(5)
    try:
        yield client, server
    finally:
        client.close()
        server.close()


@linux
def test_tcp_info_counts_payload_both_ways_and_every_segment(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, server = pair
    start = still(client)
    # A new connection: SYN and the handshake's ACK out, SYN-ACK in, no payload yet.
    assert (start.bytes_sent, start.bytes_received) == (0, 0)
    assert start.segs_out >= 2 and start.segs_in >= 1

    client.sendall(b"x" * 1000)
    assert recv_exactly(server, 1000) == b"x" * 1000
    server.sendall(b"y" * 300)
    assert recv_exactly(client, 300) == b"y" * 300
    d1 = still(client).minus(start)
    assert (d1.bytes_sent, d1.bytes_received) == (1000, 300)
    # At least the data segment each way; pure ACKs may add to them.
    assert d1.segs_out >= 1 and d1.segs_in >= 1

    before = still(client)
    client.sendall(b"z" * 4321)
    recv_exactly(server, 4321)
    d2 = still(client).minus(before)
    assert (d2.bytes_sent, d2.bytes_received) == (4321, 0)
    # The server's own view of the same connection agrees.
    s = read_tcp_info(server)
    assert (s.bytes_received, s.bytes_sent) == (5321, 300)
    assert s.segs_in == still(client).segs_out  # every segment we sent, it received (no loss on lo)


@linux
def test_peer_counters_read_with_inet_diag_match_the_peer_socket(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, server = pair
    client.sendall(b"a" * 777)
    recv_exactly(server, 777)
    server.sendall(b"b" * 555)
    recv_exactly(client, 555)
    still(client)
    peer = read_peer_tcp_info(client)
    if peer is None:
        pytest.skip("inet_diag (NETLINK_SOCK_DIAG) is not available here")
    own = read_tcp_info(server)
    assert (peer.bytes_sent, peer.bytes_received) == (555, 777) == (own.bytes_sent, own.bytes_received)
    assert (peer.segs_out, peer.segs_in) == (own.segs_out, own.segs_in)


def test_ip_bytes_add_the_headers_linux_puts_on_the_wire() -> None:
    ts_sack_ws = 1 | 2 | 4
    # Established segments: 20 B IPv4 + 32 B TCP with timestamps; SYN and SYN-ACK: 40 B TCP.
    assert tcp_header_bytes(ts_sack_ws) == 32
    assert tcp_header_bytes(ts_sack_ws) + syn_extra_bytes(ts_sack_ws) == 40
    # Without timestamps: 20 B, and the SYN carries MSS, SACK-permitted and window scale (32 B).
    assert tcp_header_bytes(2 | 4) == 20
    assert tcp_header_bytes(2 | 4) + syn_extra_bytes(2 | 4) == 32

    client = TcpCounters(segs_out=3, segs_in=2, bytes_sent=100, bytes_received=50, total_retrans=0, options=7)
    # The server retransmitted one 30-byte segment: its bytes_sent has them, our bytes_received not.
    server = TcpCounters(segs_out=2, segs_in=3, bytes_sent=80, bytes_received=100, total_retrans=1, options=7)
    cost = tcp_cost(ConnCounters(client, server).minus(ZERO_CONN))
    assert (cost.packets_up, cost.packets_down) == (3, 2)
    assert (cost.payload_up, cost.payload_down) == (100, 80)
    assert cost.ip_up == 100 + 3 * 52 + 12  # + the D-SACK block answering the duplicate
    assert cost.ip_down == 80 + 2 * 52
    assert (cost.retransmitted, cost.retransmitted_payload) == (1, 30)
    handshake = tcp_cost(ConnCounters(client, server), handshake=True)
    assert handshake.ip_bytes == cost.ip_bytes + 2 * 8
    # Without the server's counters, what we received is all we know.
    assert tcp_cost(ConnCounters(client, None)).payload_down == 50


def test_radio_ip_bytes_are_udp_payload_plus_28_per_datagram() -> None:
    before = {"tx": 4, "tx_bytes": 200, "rx": 3, "rx_bytes": 90}
    after = {"tx": 6, "tx_bytes": 260, "rx": 5, "rx_bytes": 150}
    cost = udp_cost(before, after)
    assert (cost.packets, cost.payload, cost.ip_bytes) == (4, 120, 120 + 4 * 28)
    assert udp_cost({}, after).ip_bytes == 260 + 150 + 11 * 28


@linux
def test_a_request_with_a_body_leaves_in_one_segment(pair: tuple[socket.socket, socket.socket]) -> None:
    """Headers and body in one write, as aiohttp and browsers send a small request."""
    client, server = pair
    conn = OneWriteConnection("127.0.0.1", client.getpeername()[1], timeout=5)
    conn.sock = client  # an open connection, as after connect()
    before = still(client)
    conn.request_at_once("PUT", "/x", b'{"body":"hello"}', {"Content-Type": "application/json"})
    received = bytearray()
    while not received.endswith(b'hello"}'):
        received.extend(server.recv(65536))
    delta = still(client).minus(before)
    assert received.startswith(b"PUT /x HTTP/1.1\r\n")
    assert b"Content-Length: 16\r\n" in received
    assert delta.bytes_sent == len(received)
    assert delta.segs_out == 1, "headers and body went out in %d segments" % delta.segs_out
