"""The Wireshark dissector on a real exchange: a device, the real proxy
(``python -m lowbw proxy run``) and ``python -m radio_sim relay --pcap``.

The homeserver is a small HTTP sink (as in bench/proxy_load.py) that accepts
every event send, so readings are acknowledged without Synapse. The capture
the relay writes is read back with tshark and contrib/wireshark/lowbw.lua.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lowbw.device import client, config, store, udp
from lowbw.proxy.config import write_default
from lowbw.proxy.registry import DeviceRecord, Registry
from lowbw.wire import crypto
from tests.radio_sim.dissector_util import ROOT, TSHARK, fields, tshark

pytestmark = pytest.mark.skipif(
    TSHARK is None, reason="tshark not installed (scripts/bootstrap.sh installs it)"
)

ROOM = "!dissector:sink.test"
SLOTS = [{"name": "temperature", "fields": [{"name": "temperature", "unit": "°C", "scale": 1}]}]


class _Sink(BaseHTTPRequestHandler):
    """Minimal homeserver: every request succeeds; event sends get an event ID."""

    def _answer(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        self.server.paths.append((self.command, self.path))  # type: ignore[attr-defined]
        body = json.dumps({"event_id": "$e%d" % len(self.server.paths)}).encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def sink() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    server.paths = []  # type: ignore[attr-defined]
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server
    server.shutdown()
    server.server_close()


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(
    cmd: list[str], first: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith(first):
        proc.kill()
        pytest.fail("%s did not start: %s%s" % (cmd[2:4], line, proc.stdout.read()))
    return proc, line.strip()


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_dissector_decodes_a_real_exchange(tmp_path: Path, sink: ThreadingHTTPServer) -> None:
    # The proxy, as an operator runs it, with one device in its registry.
    proxy_port = _free_port(socket.SOCK_DGRAM)
    cfg = write_default(
        tmp_path / "proxy",
        "http://127.0.0.1:%d" % sink.server_address[1],
        server_name="sink.test",
        port=proxy_port,
        link_bps=1_000_000,
        appservice_listen="127.0.0.1:%d" % _free_port(socket.SOCK_STREAM),
    ).config
    dev_priv = secrets.token_bytes(32)
    with Registry(cfg.proxy.registry) as reg:
        reg.add_device(
            DeviceRecord(
                name="sensor1",
                public_key=bytes(crypto.x25519_base(dev_priv)),
                user_id="@lowbw_sensor1:sink.test",
                rooms=[ROOM],
                slots=SLOTS,
            )
        )
    env = {**os.environ, "LOWBW_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}
    proxy, _ = _start(
        [sys.executable, "-m", "lowbw", "proxy", "run", "--config", str(cfg.path)],
        "lowbw proxy listening",
        env,
    )
    pcap = str(tmp_path / "air.pcap")
    relay = None
    try:
        relay, line = _start(
            [sys.executable, "-m", "radio_sim", "relay", "--listen", "127.0.0.1:0",
             "--to", "127.0.0.1:%d" % proxy_port, "--preset", "fast", "--pcap", pcap],
            "listening ",
        )  # fmt: skip
        relay_port = int(line.rsplit(":", 1)[1])
        # A real device (lowbw.device: store, retransmissions, Noise IK) through the relay.
        dcfg = config.from_dict(
            {
                "version": 1, "name": "sensor1",
                "proxy": {"host": "127.0.0.1", "port": relay_port, "public_key": cfg.read_public_key().hex()},
                "device_private_key": dev_priv.hex(),
                "caps": 2, "link_bps": 1_000_000,
                "room_id": ROOM, "user_id": "@lowbw_sensor1:sink.test",
                "slots": SLOTS,
                "client": {"proxy_allowance": 2.0, "max_rto": 2},
            }
        )  # fmt: skip
        dev = client.Device(dcfg, store.MemoryStore())
        link = udp.UdpLink(dcfg.proxy_host, dcfg.proxy_port)
        values = [21.5, 22.0, 22.5, 23.0]
        try:
            for v in values:
                dev.send(0, [v])
                assert link.run(dev, until=lambda: dev.pending() == 0, timeout=15), dev.counters
        finally:
            link.close()
        assert dev.counters["handshakes"] == 1 and dev.counters["retransmissions"] == 0, dev.counters
        sid = dev.session.sid
    finally:
        if relay is not None:
            _stop(relay)
        _stop(proxy)
    assert sum(1 for m, p in sink.paths if m == "PUT" and "/send/" in p) == len(values)  # type: ignore[attr-defined]

    names = [
        "udp.srcport", "udp.dstport", "udp.length", "lowbw.len", "lowbw.kind", "lowbw.type",
        "lowbw.direction", "lowbw.sid", "lowbw.kind.ctr_low", "lowbw.counter", "lowbw.ephemeral",
        "lowbw.static.encrypted", "lowbw.static.tag", "lowbw.encrypted_len", "lowbw.tag",
        "_ws.col.Protocol", "_ws.col.Info", "_ws.expert",
    ]  # fmt: skip
    rows = fields(pcap, names)
    # IK 1 (with the first reading as 0-RTT payload), IK 2, then per warm reading one up, one down.
    assert len(rows) == 2 + 2 * (len(values) - 1), rows
    for r in rows:
        assert r["_ws.col.Protocol"] == "lowbw", r  # not CoAP any more
        assert r["_ws.expert"] == "", r  # nothing malformed in a real exchange
        assert int(r["lowbw.len"]) == int(r["udp.length"]) - 8
    ik1, ik2, rest = rows[0], rows[1], rows[2:]
    assert (ik1["lowbw.kind"], ik1["lowbw.type"], ik1["lowbw.direction"]) == ("0x81", "IK1", "uplink")
    assert ik1["udp.dstport"] == "5683"
    assert len(bytes.fromhex(ik1["lowbw.ephemeral"])) == 32
    assert len(bytes.fromhex(ik1["lowbw.static.encrypted"])) == 32
    assert len(bytes.fromhex(ik1["lowbw.static.tag"])) == 16
    # caps, epoch (fresh store), handshake number, then the CoAP request: ciphertext = plaintext length
    assert int(ik1["lowbw.encrypted_len"]) == int(ik1["lowbw.len"]) - 1 - 32 - 48 - 16
    assert (ik2["lowbw.kind"], ik2["lowbw.type"], ik2["lowbw.direction"]) == ("0x82", "IK2", "downlink")
    assert ik2["lowbw.sid"] == "" and len(bytes.fromhex(ik2["lowbw.ephemeral"])) == 32
    assert int(ik2["lowbw.encrypted_len"]) == int(ik2["lowbw.len"]) - 1 - 32 - 16
    up = [r for r in rest if r["lowbw.direction"] == "uplink"]
    down = [r for r in rest if r["lowbw.direction"] == "downlink"]
    assert len(up) == len(down) == len(values) - 1
    for r in rest:
        assert r["lowbw.type"] == "transport-short" and int(r["lowbw.kind"], 16) < 0x40
        assert int(r["lowbw.kind"], 16) & 0x3F == int(r["lowbw.kind.ctr_low"])
        assert len(bytes.fromhex(r["lowbw.tag"])) == 16
    for r in up:
        assert int(r["lowbw.sid"], 16) == sid  # the session id the proxy assigned in IK 2
        assert r["udp.dstport"] == "5683"
        assert int(r["lowbw.encrypted_len"]) == int(r["lowbw.len"]) - 3 - 16
        assert ("sid=0x%04x" % sid) in r["_ws.col.Info"]
    for r in down:
        assert r["lowbw.sid"] == "" and r["udp.srcport"] == "5683"
        assert int(r["lowbw.encrypted_len"]) == int(r["lowbw.len"]) - 1 - 16
    # Each direction counts from 0 after the handshake, one per frame.
    assert [int(r["lowbw.counter"]) for r in up] == list(range(len(up)))
    assert [int(r["lowbw.counter"]) for r in down] == list(range(len(down)))

    # Display filters work on the fields.
    only = tshark(pcap, "-Y", 'lowbw.sid == %d && lowbw.direction == "uplink"' % sid).stdout
    assert len([x for x in only.split("\n") if x.strip()]) == len(up)
    # Without the dissector the same capture is (bogus) CoAP: the dissector must win on 5683.
    without = tshark(pcap, "-T", "fields", "-e", "_ws.col.Protocol", lua=False).stdout.split()
    assert "lowbw" not in without
    verbose = tshark(pcap, "-V", "-O", "lowbw", "-c", "3").stdout
    print("\n" + verbose)
    assert "Encrypted payload" in verbose and "Payload tag (Poly1305)" in verbose
