"""The UDP relay as a real subprocess, with real sockets."""

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from bench.radiostats import from_stats_file, snapshot_relay
from radio_sim.relay import parse_hostport
from tests.radio_sim.pcapread import read_pcap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class EchoServer:
    """UDP server that answers every datagram with b"R" + datagram, and counts."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.received_bytes = 0
        self.received_frames = 0
        self.sent_bytes = 0
        self.sources = set()
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop:
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received_bytes += len(data)
            self.received_frames += 1
            self.sources.add(addr)
            reply = b"R" + data
            self.sock.sendto(reply, addr)
            self.sent_bytes += len(reply)

    def close(self):
        self._stop = True
        self.thread.join(5)
        self.sock.close()


def start_relay(tmp_path, server_port, *extra):
    stats = str(tmp_path / "stats.json")
    cmd = [
        sys.executable,
        "-m",
        "radio_sim",
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--to",
        "127.0.0.1:%d" % server_port,
        "--stats",
        stats,
        *extra,
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    if not ready:
        proc.kill()
        pytest.fail("relay did not start: %s" % proc.stderr.read())
    line = proc.stdout.readline().strip()
    assert line.startswith("listening "), line
    return proc, parse_hostport(line.split(" ", 1)[1]), stats


def stop_relay(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert rc == 0, proc.stderr.read()


def pump(clients, sends, quiet=1.0, timeout=30.0):
    """Send (client index, payload) pairs, then collect replies until quiet."""
    got = [[] for _ in clients]
    for i, payload in sends:
        clients[i].send(payload)
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - last < quiet:
        ready, _, _ = select.select(clients, [], [], 0.05)
        for s in ready:
            got[clients.index(s)].append(s.recv(65535))
            last = time.monotonic()
    return got


def test_relay_bytes_balance_with_loss_and_two_clients(tmp_path):
    server = EchoServer()
    pcap = str(tmp_path / "air.pcap")
    log = str(tmp_path / "events.jsonl")
    proc, (host, port), stats_path = start_relay(
        tmp_path,
        server.port,
        "--preset",
        "fast",
        "--loss",
        "0.2",
        "--seed",
        "5",
        "--pcap",
        pcap,
        "--log",
        log,
    )
    clients = []
    try:
        for _ in range(2):
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c.connect((host, port))
            clients.append(c)
        sends = [(k % 2, b"%d:%d:" % (k % 2, k) + bytes(k % 200)) for k in range(160)]
        got = pump(clients, sends)
        # SIGUSR1 gives a fresh snapshot while the relay runs.
        snap = snapshot_relay(proc.pid, stats_path)
        assert snap["generation"] >= 2
    finally:
        stop_relay(proc)
        for c in clients:
            c.close()
        server.close()

    st = json.load(open(stats_path))
    up, down = st["up"], st["down"]
    sent = sum(len(p) for _, p in sends)
    received_by_clients = sum(len(r) for rs in got for r in rs)
    # Bytes in == bytes out + counted drops (nothing left in flight after the quiet period).
    assert up["offered_bytes"] == sent
    assert up["delivered_bytes"] == server.received_bytes
    assert up["offered_bytes"] == up["delivered_bytes"] + up["dropped_bytes"] + up["pending_bytes"]
    assert up["pending_bytes"] == 0 and up["dropped"]["loss"]["frames"] > 0
    assert down["offered_bytes"] == server.sent_bytes
    assert down["delivered_bytes"] == received_by_clients
    assert down["offered_bytes"] == down["delivered_bytes"] + down["dropped_bytes"] + down["pending_bytes"]
    assert 0.1 < up["dropped_frames"] / up["offered_frames"] < 0.3
    # Every client got only its own replies, and the server saw two source ports.
    for i, replies in enumerate(got):
        assert replies and all(r.startswith(b"R%d:" % i) for r in replies)
    assert len(server.sources) == 2
    assert len(st["relay"]["clients"]) == 2
    assert st["seed"] == 5 and st["preset"] == "fast"
    assert st["params"]["up"]["loss"] == 0.2

    # The pcap shows exactly what was delivered, with valid checksums.
    _, packets = read_pcap(pcap)
    assert len(packets) == up["delivered_frames"] + down["delivered_frames"]
    assert all(p.ip_ok and p.udp_ok for p in packets)
    assert sum(len(p.payload) for p in packets if p.dport == 5683) == up["delivered_bytes"]
    # The bench helper reads the same file.
    r = from_stats_file(stats_path)
    assert r.bytes_up == sent and r.airtime_up_s == pytest.approx(up["airtime_s"])
    assert sum(1 for _ in open(log)) > 0


def test_relay_paces_at_the_link_rate(tmp_path):
    """At 8000 bit/s, 10 frames of 100 B need 1 s of airtime; the stats say so exactly."""
    server = EchoServer()
    proc, (host, port), stats_path = start_relay(
        tmp_path,
        server.port,
        "--preset",
        "100bps",
        "--rate",
        "8000",
        "--latency",
        "0",
        "--seed",
        "1",
        "--stats-interval",
        "0.2",
    )
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        c.connect((host, port))
        got = pump([c], [(0, bytes([i]) * 100) for i in range(10)], quiet=1.5)
        # Written once at start, then every 0.2 s while the exchange ran (over 1.5 s).
        assert json.load(open(stats_path))["generation"] >= 3
    finally:
        stop_relay(proc)
        c.close()
        server.close()
    st = json.load(open(stats_path))
    assert st["up"]["airtime_s"] == pytest.approx(1.0)
    assert st["down"]["airtime_s"] == pytest.approx(10 * 101 * 8 / 8000)
    # The tenth frame waits for nine others (less however late it arrived).
    assert 0.5 < st["up"]["queue_delay_s"]["max"] <= 0.9 + 1e-6
    assert [r[1] for r in got[0]] == list(range(10))  # FIFO


def test_relay_rejects_bad_arguments():
    r = subprocess.run(
        [sys.executable, "-m", "radio_sim", "relay", "--listen", "nonsense", "--to", "127.0.0.1:9"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "HOST:PORT" in r.stderr
