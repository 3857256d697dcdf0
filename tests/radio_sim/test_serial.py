"""The baud-paced serial bridge, on real pseudo-terminals."""

import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest
import serial

from radio_sim.serial_link import A_TO_B, B_TO_A, PacedSerialLink, PtyBridge, open_pty

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read_exactly(fd, n, timeout=20.0):
    out = b""
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            out += os.read(fd, n - len(out))
    return out


def test_bytes_cross_paced_both_ways():
    baud = 9600
    payload_ab = bytes(range(256)) * 1  # includes \r, \n, ^C, ^D: raw mode must keep them
    payload_ba = b"\x00\x03\x04\r\n" * 20
    with PtyBridge(baud, record=True) as br:
        os.write(br.slave_a, payload_ab)
        os.write(br.slave_b, payload_ba)
        got_b = read_exactly(br.slave_b, len(payload_ab))
        got_a = read_exactly(br.slave_a, len(payload_ba))
        st = br.link.stats()
        record = list(br.link.record or [])
    assert got_b == payload_ab
    assert got_a == payload_ba
    byte_time = 10 / baud
    assert st[A_TO_B]["bytes_out"] == len(payload_ab)
    assert st[A_TO_B]["line_time_s"] == pytest.approx(len(payload_ab) * byte_time)
    assert st[B_TO_A]["line_time_s"] == pytest.approx(len(payload_ba) * byte_time)
    # Nothing was written before its departure time, and the last byte of each
    # direction was scheduled no earlier than the line could carry the burst.
    assert record and all(written >= scheduled for _, scheduled, written, _ in record)
    for lane, n in ((A_TO_B, len(payload_ab)), (B_TO_A, len(payload_ba))):
        last = max(s for name, s, _, _ in record if name == lane)
        assert last >= n * byte_time - 1e-9
        assert sum(k for name, _, _, k in record if name == lane) == n


def test_pyserial_on_both_ends():
    with PtyBridge(4800) as br:
        a = serial.Serial(br.path_a, 4800, timeout=10)
        b = serial.Serial(br.path_b, 4800, timeout=10)
        try:
            a.write(b"AT+SEND=hello\r\n")
            assert b.read(15) == b"AT+SEND=hello\r\n"
            b.write(b"OK\r\n")
            assert a.read(4) == b"OK\r\n"
        finally:
            a.close()
            b.close()


def test_schedule_with_an_injected_clock():
    """With a fake clock the schedule is exact: 12 bytes at 1200 baud end at 0.1 s."""
    ma, sa, _ = open_pty()
    mb, sb, _ = open_pty()
    now = [50.0]
    link = PacedSerialLink(ma, mb, 1200, latency_s=0.5, clock=lambda: now[0])
    try:
        lane = link.lanes[A_TO_B]
        link._schedule(lane, b"x" * 12, now[0])
        times = [t for t, _ in lane.queue]
        assert times[0] == pytest.approx(50.5 + 10 / 1200)
        assert times[-1] == pytest.approx(50.5 + 0.1)
        assert all(b - a == pytest.approx(10 / 1200) for a, b in zip(times, times[1:], strict=False))
        # A later burst queues behind the first.
        link._schedule(lane, b"y", 50.01)
        assert lane.queue[-1][0] == pytest.approx(50.6 + 10 / 1200)
    finally:
        for fd in (ma, sa, mb, sb):
            os.close(fd)
        link.stop()


def test_serial_command(tmp_path):
    stats = tmp_path / "serial.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "radio_sim", "serial", "--baud", "19200", "--stats", str(stats)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "serial bridge printed nothing"
        # Both lines come in one flush; readline returns "" if the process died.
        paths = dict(proc.stdout.readline().split() for _ in range(2))
        fa = os.open(paths["pty-a"], os.O_RDWR | os.O_NOCTTY)
        fb = os.open(paths["pty-b"], os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(fa, b"ping\n" * 10)
            assert read_exactly(fb, 50) == b"ping\n" * 10
        finally:
            os.close(fa)
            os.close(fb)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, proc.stderr.read()
    st = json.loads(stats.read_text())
    assert st["a_to_b"]["bytes_out"] == 50
    assert st["a_to_b"]["line_time_s"] == pytest.approx(50 * 10 / 19200)


def test_bad_baud():
    with pytest.raises(ValueError):
        PacedSerialLink(0, 1, 0)
