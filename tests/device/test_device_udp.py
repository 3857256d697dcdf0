"""The device's UDP loop and `lowbw device send`, over real sockets, on CPython
and as a real MicroPython unix-port process.

The far end is ``UdpResponder``: a named test double for the proxy (the real,
aiocoap-based proxy is being built in parallel), the in-memory ``FakeProxy``
of tests/portable/test_device_client.py behind a UDP socket in a thread. It
speaks the same wire protocol (Noise IK, frames, CoAP, the sensor profile).
Timers are scaled down through the device config (fast link, 0.3 s proxy
allowance) so loss and timeouts take fractions of a second.
"""

from __future__ import annotations

import json
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lowbw.device import cli, client, config, store, udp
from lowbw.wire import coap, crypto
from tests.portable.test_device_client import DEV_PRIV, PROXY_PRIV, FakeProxy

ROOT = Path(__file__).resolve().parent.parent.parent
MICROPYTHON = Path(sys.executable).parent / "micropython"


class UdpResponder:
    """FakeProxy behind a UDP socket on 127.0.0.1; drops the uplink datagrams listed in ``drop_up``."""

    def __init__(self, proxy: FakeProxy | None = None) -> None:
        self.proxy = proxy or FakeProxy()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.drop_up: set[int] = set()
        self.up: list[bytes] = []
        self.down: list[bytes] = []
        self.lock = threading.Lock()
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data, addr = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                i = len(self.up)
                self.up.append(data)
                if i in self.drop_up:
                    continue
                replies = self.proxy.datagram(data)
                self.down.extend(replies)
            for r in replies:
                self.sock.sendto(r, addr)

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def responder() -> Iterator[UdpResponder]:
    r = UdpResponder()
    yield r
    r.close()


def device_config(port: int, **tuning: Any) -> dict[str, Any]:
    t: dict[str, Any] = {"proxy_allowance": 0.3, "max_rto": 2}
    t.update(tuning)
    return {
        "version": 1, "name": "sensor1",
        "proxy": {"host": "127.0.0.1", "port": port, "public_key": crypto.x25519_base(PROXY_PRIV).hex()},
        "device_private_key": DEV_PRIV.hex(),
        "caps": 2, "link_bps": 100000,
        "room_id": "!room:example.org", "user_id": "@lowbw_sensor1:example.org",
        "slots": [
            {"name": "temperature", "fields": [{"name": "temperature", "unit": "°C", "scale": 0}]},
            {"name": "climate", "fields": [{"name": "temperature", "unit": "°C"},
                                           {"name": "humidity", "unit": "%"}]},
        ],
        "client": t,
    }


def write_config(path: Path, port: int, **tuning: Any) -> Path:
    path.write_text(json.dumps(device_config(port, **tuning)))
    path.chmod(0o600)
    return path


def test_udp_loop_delivers_readings(responder: UdpResponder) -> None:
    cfg = config.from_dict(device_config(responder.port))
    dev = client.Device(cfg, store.MemoryStore())
    link = udp.UdpLink(cfg.proxy_host, cfg.proxy_port)
    try:
        for v in (21.5, 22.0, 22.5):
            dev.send(0, [v])
            assert link.run(dev, until=lambda: dev.pending() == 0, timeout=10)
    finally:
        link.close()
    assert sorted(r[1][0] for r in responder.proxy.events.values()) == [21.5, 22.0, 22.5]
    assert responder.proxy.handshakes == 1
    # A fresh store's first handshake announces its counter epoch (4 bytes) and
    # carries handshake number 0 (1 byte); the answer confirms the epoch, so a
    # later cold start is 111 again.
    assert [len(d) for d in responder.up] == [115, 31, 31]
    assert dev.counters["bytes_up"] == 177
    assert dev.counters["bytes_down"] == sum(map(len, responder.down))
    assert dev.store.epoch_confirmed and responder.proxy.epochs == [dev.store.epoch]


def test_udp_loop_retransmits_through_loss(responder: UdpResponder) -> None:
    cfg = config.from_dict(device_config(responder.port))
    dev = client.Device(cfg, store.MemoryStore())
    responder.drop_up = {0, 2}  # first IK lost; then the first copy of the second reading
    link = udp.UdpLink(cfg.proxy_host, cfg.proxy_port)
    try:
        dev.send(0, [1])
        assert link.run(dev, until=lambda: dev.pending() == 0, timeout=10)
        dev.send(0, [2])
        assert link.run(dev, until=lambda: dev.pending() == 0, timeout=10)
    finally:
        link.close()
    assert len(responder.up) == 4 and dev.counters["retransmissions"] == 2
    assert sorted(r[1] for r in responder.proxy.events.values()) == [[1], [2]]


def test_udp_loop_times_out_and_keeps_reading(tmp_path: Path) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        cfg = config.from_dict(device_config(silent.getsockname()[1]))
        st = store.FileStore(str(tmp_path / "s.state"))
        dev = client.Device(cfg, st)
        dev.send(0, [1])
        link = udp.UdpLink(cfg.proxy_host, cfg.proxy_port)
        t0 = time.monotonic()
        assert not link.run(dev, until=lambda: dev.pending() == 0, timeout=1.0)
        assert 0.9 < time.monotonic() - t0 < 3
        link.close()
        assert dev.counters["handshakes"] >= 2  # retried, each a fresh IK
        assert store.FileStore(str(tmp_path / "s.state")).inflight is not None
    finally:
        silent.close()


# ------------------------------------------------------------------ CLI


def test_cli_send_acknowledged_then_warm(tmp_path: Path, responder: UdpResponder,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    conf = write_config(tmp_path / "sensor1.json", responder.port)
    assert cli.send_main(["--device-config", str(conf), "21.5"]) == 0
    out = capsys.readouterr().out
    assert "acknowledged" in out and "1 handshake" in out
    state = Path(str(conf) + ".state")
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert cli.send_main(["--device-config", str(conf), "--slot", "1", "215", "40"]) == 0
    assert responder.proxy.handshakes == 1  # the second run resumed the stored session
    assert store.FileStore(str(state)).epoch_confirmed
    assert sorted(r[1] for r in responder.proxy.events.values()) == [[21.5], [215, 40]]
    assert [type(v) for r in responder.proxy.events.values() for v in r[1]].count(int) == 2


def test_cli_timeout_keeps_reading_for_next_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    conf = write_config(tmp_path / "d.json", silent.getsockname()[1])
    state = tmp_path / "d.state"
    try:
        rc = cli.send_main(["--device-config", str(conf), "--state", str(state), "--timeout", "0.8", "1"])
    finally:
        silent.close()
    assert rc == 1
    err = capsys.readouterr().err
    assert "stays queued" in err and str(state) in err
    r = UdpResponder()
    try:
        write_config(conf, r.port)
        assert cli.send_main(["--device-config", str(conf), "--state", str(state), "2"]) == 0
        assert "1 reading(s) queued by earlier runs" in capsys.readouterr().err
        assert sorted(e[1] for e in r.proxy.events.values()) == [[1], [2]]
    finally:
        r.close()


def test_cli_rejected(tmp_path: Path, responder: UdpResponder, capsys: pytest.CaptureFixture[str]) -> None:
    conf = write_config(tmp_path / "d.json", responder.port)
    responder.proxy.script = [(coap.FORBIDDEN, None)]
    assert cli.send_main(["--device-config", str(conf), "1"]) == 1
    assert "rejected by the proxy: 4.03" in capsys.readouterr().err
    assert responder.proxy.events == {}


def test_cli_usage_and_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = write_config(tmp_path / "d.json", 9)
    assert cli.send_main(["--device-config", str(conf), "abc"]) == 2
    assert cli.send_main(["--device-config", str(conf), "nan"]) == 2
    assert cli.send_main(["--device-config", str(conf), "--slot", "5", "1"]) == 2
    assert cli.send_main(["--device-config", str(conf), "1", "2"]) == 2
    assert cli.send_main(["--device-config", str(conf), "--timeout", "0", "1"]) == 2
    assert cli.send_main(["--device-config", str(tmp_path / "missing.json"), "1"]) == 1
    assert "cannot read device config" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**device_config(9), "device_private_key": "00"}))
    assert cli.send_main(["--device-config", str(bad), "1"]) == 1
    assert "device_private_key" in capsys.readouterr().err
    (tmp_path / "d.json.state").write_bytes(b"\xffjunk")
    assert cli.send_main(["--device-config", str(conf), "1"]) == 1
    assert "unreadable" in capsys.readouterr().err
    assert cli.parse_value("215") == 215 and isinstance(cli.parse_value("215"), int)
    assert cli.parse_value("21.5") == 21.5 and cli.parse_value("-3") == -3 and cli.parse_value("null") is None
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(["--help"])
    assert e.value.code == 0


# ------------------------------------------------------- MicroPython process

MP_SCRIPT = r"""
import sys, gc, json
sys.path.insert(0, sys.argv[1])
from lowbw.device import config, store, udp, client
gc.collect()
after_import = gc.mem_alloc()
cfg = config.load(sys.argv[2])
dev = client.Device(cfg, store.FileStore(sys.argv[3]))
link = udp.UdpLink(cfg.proxy_host, cfg.proxy_port)
n = int(sys.argv[4])
gc.collect()
after_init = gc.mem_alloc()
# preallocated, so the measurement itself does not grow the heap
steady = [0] * n
per_reading = [0] * n
for i in range(n):
    # Count what one warm reading allocates (gc off); a handshake's X25519
    # makes far more garbage than a small heap holds, so not for cold ones.
    cold = dev.session is None
    gc.collect()
    if not cold:
        gc.disable()
    a0 = gc.mem_alloc()
    dev.send(0, [20 + i / 4])
    ok = link.run(dev, until=lambda: dev.pending() == 0, timeout=20)
    a1 = gc.mem_alloc()
    gc.enable()
    if not ok:
        print(json.dumps({"error": "timeout", "i": i, "counters": dev.counters}))
        sys.exit(1)
    per_reading[i] = -1 if cold else a1 - a0
    gc.collect()
    steady[i] = gc.mem_alloc()
link.close()
print(json.dumps({"after_import": after_import, "after_init": after_init, "steady": steady,
                  "alloc_per_warm_reading": [a for a in per_reading if a >= 0],
                  "counters": dev.counters, "store_writes": dev.store.saves}))
"""


def run_micropython(tmp_path: Path, conf: Path, state: Path, n: int) -> dict[str, Any]:
    script = tmp_path / "mp_device.py"
    script.write_text(MP_SCRIPT)
    proc = subprocess.run(
        [str(MICROPYTHON), "-X", "heapsize=2M", str(script), str(ROOT), str(conf), str(state), str(n)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.skipif(not MICROPYTHON.exists(), reason="MicroPython unix port not installed")
def test_micropython_process_sends_restarts_and_holds_memory_steady(tmp_path: Path,
                                                                     responder: UdpResponder) -> None:
    conf = write_config(tmp_path / "mp.json", responder.port)
    state = tmp_path / "mp.state"
    responder.drop_up = {3}  # one lost frame: the MicroPython loop must retransmit it
    first = run_micropython(tmp_path, conf, state, 20)
    assert first["counters"]["acked"] == 20 and first["counters"]["handshakes"] == 1
    assert first["counters"]["retransmissions"] == 1
    assert responder.proxy.handshakes == 1
    # a new process on the same state file: no handshake, nothing lost or doubled
    second = run_micropython(tmp_path, conf, state, 5)
    assert second["counters"]["handshakes"] == 0 and second["counters"]["acked"] == 5
    assert responder.proxy.handshakes == 1
    values = sorted(e[1][0] for e in responder.proxy.events.values())
    assert values == sorted([20 + i / 4 for i in range(20)] + [20 + i / 4 for i in range(5)])
    # steady state: the heap after each reading stops growing (no leak per message)
    steady = first["steady"]
    assert max(steady[3:]) - min(steady[3:]) <= 256, steady
    warm_alloc = first["alloc_per_warm_reading"]
    print("\nMicroPython device heap (gc.mem_alloc, unix port, code included):",
          json.dumps({k: first[k] for k in ("after_import", "after_init")}),
          "steady", steady[-1], "warm alloc/reading min/max", min(warm_alloc), max(warm_alloc),
          "store writes", first["store_writes"], "for 20 readings", "steady series", steady)
