"""The firmware application under the real MicroPython unix port.

Each test runs ``micropython firmware/main.py CONFIG`` as its own process with
the unix board and the simulated sensor, against TinyProxy (a stand-in for the
proxy built from lowbw.wire, tests/firmware/tinyproxy.py), and checks what
arrived there: every sampled reading exactly once with its values, sessions
and message numbers carried across restarts, commands, and the deep-sleep
cycle (emulated on unix: the application restarts from its store with a
restarted clock).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

from firmware.sensors.simulated import Simulated
from tests.firmware.conftest import ROOT, Keys, micropython, run_firmware, write_config
from tests.firmware.tinyproxy import TinyProxy

BOARD = {"type": "unix", "sensor": {"driver": "simulated", "seed": 7}, "interval": 1}


def sampled(stdout: str) -> list[tuple[int, list[int | None]]]:
    """(reading id, values) of every "sample" line the firmware logged."""
    out = []
    for rid, values in re.findall(r"sample \d+: reading (\d+) = (\[[^\]]*\])", stdout):
        out.append((int(rid), json.loads(values.replace("None", "null"))))
    return out


def test_readings_arrive_and_the_session_survives_a_restart(tmp_path: Path, keys: Keys,
                                                            proxy: TinyProxy) -> None:
    cfg = write_config(tmp_path / "sensor1.json", keys, proxy.port, BOARD)
    first = run_firmware(cfg, "--cycles", "3")
    assert first.returncode == 0, first.stdout + first.stderr
    s1 = sampled(first.stdout)
    assert [r for r, _ in s1] == [0, 1, 2]
    # The simulated sensor is deterministic: the same seed gives these values.
    sim = Simulated(seed=7)
    expected = [sim.value(n) for n in range(5)]
    assert [v for _, v in s1] == expected[:3]
    with proxy.lock:
        assert [r[2] for r in proxy.readings] == expected[:3]
        assert proxy.handshakes == 1
        mids_first = [r[0] for r in proxy.readings]
    assert "done:" in first.stdout
    assert (tmp_path / "sensor1.json.state").exists()

    # A second run carries on from the store: no handshake, new message IDs.
    second = run_firmware(cfg, "--cycles", "2")
    assert second.returncode == 0, second.stdout + second.stderr
    assert [r for r, _ in sampled(second.stdout)] == [3, 4]
    with proxy.lock:
        assert proxy.handshakes == 1, "the restarted device handshook again"
        assert [r[2] for r in proxy.readings] == expected
        mids = [r[0] for r in proxy.readings]
    assert len(set(mids)) == 5 and mids[:3] == mids_first
    assert "IK" not in second.stdout


def test_commands_reach_the_callback_and_are_acknowledged(tmp_path: Path, keys: Keys,
                                                          proxy: TinyProxy) -> None:
    proxy.commands = [(1, "@alice:example.org", "set_interval 2", "$e1"),
                      (2, "@alice:example.org", "reboot please", "$e2")]
    cfg = write_config(tmp_path / "sensor1.json", keys, proxy.port, BOARD)
    run = run_firmware(cfg, "--cycles", "1")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "command 1 from @alice:example.org: interval now 2 s" in run.stdout
    assert "command 2 from @alice:example.org: unknown 'reboot please'" in run.stdout
    with proxy.lock:
        assert proxy.acked_commands == [1, 2]
        assert proxy.commands == []
    assert json.loads((tmp_path / "sensor1.json.state.settings").read_text()) == {"interval": 2}
    again = run_firmware(cfg, "--cycles", "1")
    assert "every 2 s" in again.stdout


def test_deep_sleep_cycle_keeps_session_and_true_reading_ages(tmp_path: Path, keys: Keys,
                                                              proxy: TinyProxy) -> None:
    # The first cycle's datagrams are all lost, so reading 0 waits through a
    # deep sleep (the clock restarts) and goes out after the wake: the proxy
    # must still date it to when it was sampled.
    board = dict(BOARD, sleep="deep", interval=4, awake_max=1.5)
    cfg = write_config(tmp_path / "sensor1.json", keys, proxy.port, board)
    first_seen: list[float] = []
    original = proxy.core.handle

    def lossy(data: bytes) -> bytes | None:
        now = time.time()
        if not first_seen:
            first_seen.append(now)
        if now - first_seen[0] < 1.6:
            return None
        return original(data)

    proxy.handler = lossy
    run = run_firmware(cfg, "--cycles", "3")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("deep sleep") == 2
    assert run.stdout.count("woke after") == 2
    with proxy.lock:
        readings = list(proxy.readings)
        handshakes = proxy.handshakes
    assert len(readings) == 3
    assert handshakes == 1
    # Reading 0 was sampled just before the first (lost) datagram.
    assert abs(readings[0][3] - first_seen[0]) < 1.0, (readings[0][3] - first_seen[0])
    # The next samples are one interval apart (4 s), not one awake period.
    assert 3.0 < readings[1][3] - readings[0][3] < 5.0


def test_killed_mid_stream_loses_and_duplicates_nothing(tmp_path: Path, keys: Keys,
                                                         proxy: TinyProxy) -> None:
    cfg = write_config(tmp_path / "sensor1.json", keys, proxy.port, BOARD)
    proxy.drop_next = 3  # some retransmissions in flight when the kill comes
    proc = subprocess.Popen([micropython(), str(ROOT / "firmware" / "main.py"), str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))
    time.sleep(3.5)
    proc.send_signal(signal.SIGKILL)
    out1, _ = proc.communicate(timeout=10)
    rest = run_firmware(cfg, "--cycles", "1")
    assert rest.returncode == 0, rest.stdout + rest.stderr
    assert len(sampled(out1)) >= 1
    # The restarted run's one sample has the next reading id: every id below
    # it was sampled by the killed run (logged or not when the kill came).
    last_rid = sampled(rest.stdout)[-1][0]
    sim = Simulated(seed=7)
    expected = [sim.value(n) for n in range(last_rid + 1)]
    assert proxy.wait_for(lambda: len(proxy.readings) >= len(expected), 10)
    time.sleep(0.3)  # a duplicate would arrive about now
    with proxy.lock:
        got = [r[2] for r in proxy.readings]
        handshakes = proxy.handshakes
    assert got == expected
    assert handshakes == 1


def test_a_config_error_is_reported_with_its_key(tmp_path: Path, keys: Keys, proxy: TinyProxy) -> None:
    cfg = write_config(tmp_path / "sensor1.json", keys, proxy.port, dict(BOARD, sleep="hibernate"))
    run = run_firmware(cfg)
    assert run.returncode == 2
    assert "board.sleep: expected one of none, light, deep" in run.stdout
    # A sensor whose fields do not match the slot: the message says what to enroll.
    cfg = write_config(tmp_path / "sensor1.json", keys, proxy.port,
                       dict(BOARD, sensor={"driver": "simulated", "fields": ["temperature"]}))
    run = run_firmware(cfg)
    assert run.returncode == 2
    assert "--schema 'climate=temperature:°C:1'" in run.stdout


def test_a_failing_sensor_sends_nulls_and_light_sleep_cycles(tmp_path: Path, keys: Keys,
                                                             proxy: TinyProxy) -> None:
    board = dict(BOARD, sleep="light", sensor={"driver": "simulated", "seed": 7, "fail_every": 2})
    cfg = write_config(tmp_path / "sensor1.json", keys, proxy.port, board)
    run = run_firmware(cfg, "--cycles", "3")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "simulated sensor failure (reading 1)" in run.stdout
    assert run.stdout.count("light sleep") == 2
    sim = Simulated(seed=7)
    with proxy.lock:
        assert [r[2] for r in proxy.readings] == [sim.value(0), [None, None], sim.value(2)]
    assert '"sensor_errors": 1' in run.stdout
