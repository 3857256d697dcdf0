"""The serial gateway on real pseudo-terminals, pyserial on both ends.

A ``Cable`` is two raw PTY pairs joined by radio_sim's paced bridge: the
gateway opens one end through a symlink (as it would /dev/serial/by-id/...),
the test the other. Unplugging closes the PTYs; plugging in makes new ones and
repoints the symlink.

The first tests put a plain UDP socket where the proxy would be, to look at
what the gateway does to bytes (addresses, source ports, pacing, bounds,
garbage). The end-to-end tests run real device clients behind the "modem",
and a line-protocol sensor, through the real proxy into real Synapse rooms.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import serial

from lowbw.adapters.config import load_gateway
from lowbw.adapters.serial_gateway import SerialGateway
from lowbw.device import client, config, store
from lowbw.wire import slip
from radio_sim.serial_link import PtyBridge

from .conftest import post_command, tune_device, values_of, wait_for_readings

FAST_LINE = 1_000_000  # the PTY bridge's own pace: far faster than anything the gateway does


class Cable:
    """A serial cable between the gateway (``gw_path``, a symlink) and the test (``path_b``)."""

    def __init__(self, tmp: Path, baud: int = FAST_LINE) -> None:
        self.baud = baud
        self.gw_path = tmp / "ttyGW"
        self.bridge: PtyBridge | None = None
        self.plug()

    @property
    def path_b(self) -> str:
        assert self.bridge is not None
        return self.bridge.path_b

    def plug(self) -> None:
        assert self.bridge is None
        self.bridge = PtyBridge(self.baud).start()
        tmp = self.gw_path.with_suffix(".new")
        if tmp.is_symlink():
            tmp.unlink()
        os.symlink(self.bridge.path_a, tmp)
        os.replace(tmp, self.gw_path)

    def unplug(self) -> None:
        assert self.bridge is not None
        self.bridge.close()
        self.bridge = None

    def close(self) -> None:
        if self.bridge is not None:
            self.unplug()


def open_end(path: str) -> serial.Serial:
    return serial.Serial(path, 115200, timeout=0.02)


def write_config(tmp: Path, port: Path, **sections: dict[str, Any]) -> Path:
    lines = ["[serial]", 'port = "%s"' % port]
    for key, value in sections.pop("serial", {}).items():
        lines.append("%s = %s" % (key, json.dumps(value)))
    for name, table in sections.items():
        lines.append("[%s]" % name)
        for key, value in table.items():
            lines.append("%s = %s" % (key, json.dumps(value)))
    path = tmp / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class GatewayThread:
    def __init__(self, cfg_path: Path) -> None:
        self.gw = SerialGateway(load_gateway(cfg_path))
        self.thread = threading.Thread(target=self.gw.run, name="gateway", daemon=True)
        self.thread.start()

    def stop(self) -> dict[str, Any]:
        self.gw.stop()
        self.thread.join(10)
        assert not self.thread.is_alive()
        return self.gw.stats()


def wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError("timed out waiting for " + what)


def read_frames(ser: serial.Serial, dec: slip.Decoder, n: int, timeout: float) -> list[tuple[float, bytes]]:
    """(arrival time, frame) for ``n`` frames."""
    out: list[tuple[float, bytes]] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        data = ser.read(4096)
        now = time.monotonic()
        out.extend((now, f) for f in dec.feed(data))
    return out


def udp_remote() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(5)
    return s


# A transport frame as far as the gateway can tell (it never decrypts).
def datagram(tag: bytes, size: int = 40) -> bytes:
    return (b"\x05" + tag).ljust(size, b".")


def test_modem_mode_keeps_devices_apart_and_paces_output(tmp_path):
    cable = Cable(tmp_path)
    remote = udp_remote()
    baud = 9600
    cfg = write_config(
        tmp_path,
        cable.gw_path,
        serial={"baud": baud, "out_buffer": 1024, "reopen_interval": 0.1},
        modem={"proxy": "127.0.0.1:%d" % remote.getsockname()[1]},
    )
    gw = GatewayThread(cfg)
    ser = open_end(cable.path_b)
    try:
        wait(lambda: gw.gw.port.is_open, 5, "the gateway to open the port")
        # Two devices on the radio; addresses of 1 and 2 bytes.
        ser.write(slip.encode_addressed(b"\x01", datagram(b"one-a")))
        ser.write(slip.encode_addressed(b"\x02\x07", datagram(b"two-a")))
        ser.write(slip.encode_addressed(b"\x01", datagram(b"one-b")))
        got = [remote.recvfrom(2048) for _ in range(3)]
        by_port: dict[int, list[bytes]] = {}
        for data, addr in got:
            by_port.setdefault(addr[1], []).append(data[1:6])
        assert sorted(by_port.values()) == [[b"one-a", b"one-b"], [b"two-a"]]
        port_of = {v[0][:3]: p for p, v in by_port.items()}

        # Answers go back framed with the address of the socket they came to.
        remote.sendto(datagram(b"ans-1"), ("127.0.0.1", port_of[b"one"]))
        remote.sendto(datagram(b"ans-2"), ("127.0.0.1", port_of[b"two"]))
        dec = slip.Decoder()
        frames_back = [slip.split_addressed(f) for _t, f in read_frames(ser, dec, 2, 5)]
        assert sorted((a, d[1:6]) for a, d in frames_back) == [(b"\x01", b"ans-1"), (b"\x02\x07", b"ans-2")]

        # A burst of 12 answers of 100 bytes: the buffer (1024 bytes) takes 9
        # frames, the rest are dropped and counted; what goes out is paced at
        # 9600 baud = 960 bytes/s.
        for i in range(12):
            remote.sendto(datagram(b"b%02d" % i, 100), ("127.0.0.1", port_of[b"one"]))
        arrived = read_frames(ser, dec, 12, 4)
        dropped = gw.gw.stats()["dropped_out"]
        assert len(arrived) + dropped == 12 and dropped >= 1, (len(arrived), dropped)
        for _t, f in arrived:
            addr, d = slip.split_addressed(f)
            assert addr == b"\x01" and len(d) == 100
        nbytes = sum(len(slip.encode_addressed(b"\x01", datagram(b"x", 100))) for _ in arrived)
        took = arrived[-1][0] - arrived[0][0]
        first = len(slip.encode_addressed(b"\x01", datagram(b"x", 100)))
        floor = (nbytes - first) / (baud / 10)
        assert took >= floor * 0.9, "output faster than the line: %d bytes in %.2f s" % (nbytes, took)
        assert took < floor * 1.5 + 0.5
        print(
            "\npacing: %d bytes in %.3f s after the first frame (line time %.3f s at %d baud)"
            % (nbytes, took, floor, baud)
        )
    finally:
        ser.close()
        stats = gw.stop()
        cable.close()
        remote.close()
    assert stats["peers"] == 0 and stats["frames_in"] == 3 and stats["malformed"] == 0


def test_garbage_broken_frames_and_unplug_replug(tmp_path):
    cable = Cable(tmp_path)
    remote = udp_remote()
    cfg = write_config(
        tmp_path,
        cable.gw_path,
        serial={"reopen_interval": 0.1},
        modem={"proxy": "127.0.0.1:%d" % remote.getsockname()[1], "max_frame": 200},
    )
    gw = GatewayThread(cfg)
    ser = open_end(cable.path_b)
    try:
        wait(lambda: gw.gw.port.is_open, 5, "the gateway to open the port")
        ser.write(b"line noise \x00\xff before any frame")
        ser.write(slip.encode_addressed(b"\x01", datagram(b"good1")))
        ser.write(b"\xc0\xdb\x01bad escape\xc0")  # bad escape
        ser.write(slip.encode(bytes([17]) + b"A" * 17 + b"\x05xx"))  # address too long
        ser.write(slip.encode(b"\x01\x09"))  # address but no datagram
        ser.write(slip.encode(b"\x00\x90notakind"))  # not a lowbw frame kind
        ser.write(slip.encode_addressed(b"\x01", datagram(b"big", 300)))  # over max_frame
        ser.write(b"\xc0\xc0\xc0")  # empty frames are nothing
        ser.write(slip.encode_addressed(b"\x01", datagram(b"good2")))
        got = [remote.recvfrom(2048)[0][1:6] for _ in range(2)]
        assert got == [b"good1", b"good2"]
        stats = gw.gw.stats()
        assert (stats["malformed"], stats["bad_escape"], stats["oversize"]) == (3, 1, 1), stats

        # Unplug: the port goes away under the gateway, which keeps trying.
        ser.close()
        cable.unplug()
        wait(lambda: not gw.gw.port.is_open, 5, "the gateway to notice the unplug")
        time.sleep(0.3)  # a few failed reopen attempts
        cable.plug()
        ser = open_end(cable.path_b)
        wait(lambda: gw.gw.port.is_open, 5, "the gateway to reopen the port")
        ser.write(slip.encode_addressed(b"\x01", datagram(b"good3")))
        data, addr = remote.recvfrom(2048)
        assert data[1:6] == b"good3"
        remote.sendto(datagram(b"back3"), addr)
        ((_t, frame),) = read_frames(ser, slip.Decoder(), 1, 5)
        assert slip.split_addressed(frame)[1][1:6] == b"back3"
        assert gw.thread.is_alive()
    finally:
        ser.close()
        stats = gw.stop()
        cable.close()
        remote.close()
    assert stats["port_opens"] == 2 and stats["port_losses"] == 1


class ModemSide:
    """Real device clients behind a radio modem: their datagrams SLIP-framed with addresses."""

    def __init__(self, path: str, devices: dict[bytes, Any]) -> None:
        self.devices = devices
        self.dec = slip.Decoder()
        self.ser: serial.Serial | None = open_end(path)

    def reopen(self, path: str) -> None:
        self.close()
        self.dec = slip.Decoder()
        self.ser = open_end(path)

    def close(self) -> None:
        if self.ser is not None:
            self.ser.close()
            self.ser = None

    def write(self, data: bytes) -> None:
        if self.ser is None:
            return  # unplugged: lost on the air
        try:
            self.ser.write(data)
        except (serial.SerialException, OSError):
            pass

    def run(self, until: Callable[[], bool], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            now = client.monotonic()
            for addr, dev in self.devices.items():
                for d in dev.step(now):
                    self.write(slip.encode_addressed(addr, bytes(d)))
            if until():
                return True
            if self.ser is None:
                time.sleep(0.02)
                continue
            try:
                data = self.ser.read(4096)
            except (serial.SerialException, OSError):
                data = b""
            for frame in self.dec.feed(data):
                addr, dgram = slip.split_addressed(frame)
                self.devices[addr].receive(dgram, client.monotonic())
        return False


def test_modem_end_to_end_real_devices_proxy_and_synapse(
    tmp_path, device_factory, proxy_factory, synapse, matrix_user
):
    enrolled = [device_factory(), device_factory()]
    for d in enrolled:
        tune_device(d)
    proxy = proxy_factory()
    cable = Cable(tmp_path)
    cfg = write_config(
        tmp_path,
        cable.gw_path,
        serial={"baud": 115200, "reopen_interval": 0.1},
        modem={"proxy": "127.0.0.1:%d" % proxy.port},
    )
    gw = GatewayThread(cfg)
    devs = [client.Device(config.load(str(d.config_path)), store.MemoryStore()) for d in enrolled]
    acked: list[list[int]] = [[], []]
    for i, dev in enumerate(devs):
        dev.on_result = lambda rid, status, code, reason, i=i: (
            acked[i].append(rid) if status == "acked" else None
        )
    modem = ModemSide(cable.path_b, {b"\x0a": devs[0], b"\x0b\x0c": devs[1]})
    try:
        wait(lambda: gw.gw.port.is_open, 5, "the gateway to open the port")
        devs[0].send(0, [215])
        devs[1].send(1, [201, 40])
        modem.write(b"\xc0\xdb\x05 noise on the radio \xc0")
        assert modem.run(lambda: len(acked[0]) == 1 and len(acked[1]) == 1, 30), gw.gw.stats()

        # Readings queued while the modem is unplugged; one sent into the void.
        modem.close()
        cable.unplug()
        devs[0].send(0, [-12])
        devs[1].send(0, [199])
        modem.run(lambda: False, 0.5)
        cable.plug()
        modem.reopen(cable.path_b)
        devs[0].send(1, [222, 55])
        assert modem.run(lambda: len(acked[0]) == 3 and len(acked[1]) == 2, 40), gw.gw.stats()
    finally:
        modem.close()
        stats = gw.stop()
        cable.close()

    rooms = [wait_for_readings(synapse, matrix_user, d, n) for d, n in zip(enrolled, (3, 2), strict=True)]
    assert [(r["name"], values_of(r)) for r in rooms[0]] == [
        ("temperature", {"temperature": "21.5"}),
        ("temperature", {"temperature": "-1.2"}),
        ("climate", {"temperature": "22.2", "humidity": "55"}),
    ]
    assert [(r["name"], values_of(r)) for r in rooms[1]] == [
        ("climate", {"temperature": "20.1", "humidity": "40"}),
        ("temperature", {"temperature": "19.9"}),
    ]
    assert stats["port_opens"] == 2 and stats["malformed"] + stats["bad_escape"] >= 1
    print(
        "\nmodem e2e: %s"
        % json.dumps({k: stats[k] for k in ("bytes_in", "bytes_out", "frames_in", "frames_out")})
    )


def test_line_mode_end_to_end_with_commands(
    tmp_path, device_factory, proxy_factory, synapse, matrix_user, processes
):
    dev = device_factory()
    tune_device(dev)
    proxy_factory()
    cable = Cable(tmp_path)
    cfg = write_config(
        tmp_path,
        cable.gw_path,
        serial={"mode": "line", "baud": 115200, "reopen_interval": 0.1},
        line={"device_config": str(dev.config_path), "command_poll": 0.5, "commands": "serial"},
    )
    stats_path = tmp_path / "stats.json"
    gw = processes(
        ["-m", "lowbw.adapters.serial_gateway", "--config", str(cfg), "--stats", str(stats_path)],
        tmp_path / "gateway.log",
    )
    sensor = open_end(cable.path_b)
    try:
        wait(lambda: "opened" in gw.log(), 10, "the gateway to open the port")
        sensor.write(b"temperature=21.5 humidity=40\n")
        sensor.write(b"this is not a reading\n")
        sensor.write(b"temperature=abc\n")
        sensor.write(b'{"temperature": 19.25}\r\n')
        sensor.write(b"\xff\xfe\xfd\n")
        sensor.write(b"tmp=3\n")
        sensor.write(b"# a comment\n\n")
        sensor.write(b"temperature=20\n")
        got = wait_for_readings(synapse, matrix_user, dev, 3, 30)
        assert len(got) == 3, gw.log()

        sensor.close()
        cable.unplug()
        wait(lambda: "lost" in gw.log(), 10, "the gateway to notice the unplug")
        cable.plug()
        sensor = open_end(cable.path_b)
        wait(lambda: gw.log().count("opened") == 2, 10, "the gateway to reopen the port")
        sensor.write(b"humidity=41 temperature=22\n")

        post_command(synapse, matrix_user, dev, "led on", "cmd1")
        deadline = time.monotonic() + 30
        buf = b""
        while b"\n" not in buf and time.monotonic() < deadline:
            buf += sensor.read(256)
        assert buf == b"led on\n", gw.log()
        got = wait_for_readings(synapse, matrix_user, dev, 4, 30)
    finally:
        sensor.close()
        rc = gw.stop(signal.SIGTERM)
        cable.close()
    assert rc == 0, gw.log()
    assert [(r["name"], values_of(r)) for r in got] == [
        ("climate", {"temperature": "21.5", "humidity": "40"}),
        ("temperature", {"temperature": "19.25"}),
        ("temperature", {"temperature": "20.0"}),
        ("climate", {"temperature": "22.0", "humidity": "41"}),
    ]
    log = gw.log()
    for reason in (
        "'this' is not name=value",
        "temperature: 'abc' is not a number",
        "not UTF-8 text",
        "unknown field tmp",
    ):
        assert reason in log, reason
    stats = json.loads(stats_path.read_text())
    assert (stats["lines_bad"], stats["readings"], stats["commands"]) == (4, 4, 1), stats
    assert stats["port_opens"] == 2 and stats["device"]["acked"] == 4
