"""``lowbw mqtt-bridge`` with an unreachable broker says so at once, with the reason and
the backoff, and says when it got through (a real process, then a real mosquitto)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.adapters.conftest import MOSQUITTO, Mosquitto

ROOT = Path(__file__).resolve().parents[1]


def device_config(path: Path) -> Path:
    """A well-formed device config: the bridge needs one to start (no proxy is contacted here)."""
    path.write_text(
        json.dumps(
            {
                "version": 1, "name": "kitchen",
                "proxy": {"host": "127.0.0.1", "port": 9, "public_key": os.urandom(32).hex()},
                "device_private_key": os.urandom(32).hex(),
                "slots": [{"name": "temperature", "fields": [{"name": "temperature", "scale": 1}]}],
            }
        )
    )
    path.chmod(0o600)
    return path


def wait_for(proc_log: Path, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    log = ""
    while time.monotonic() < deadline:
        log = proc_log.read_text(errors="replace")
        if text in log:
            return log
        time.sleep(0.1)
    raise AssertionError("%r not in the bridge's log within %g s:\n%s" % (text, timeout, log))


@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto (Debian package) is not installed")
def test_unreachable_broker_is_logged_with_reason_and_backoff(tmp_path: Path) -> None:
    (tmp_path / "broker").mkdir()
    broker = Mosquitto(tmp_path / "broker")  # its port is chosen, nothing listens yet
    dev = device_config(tmp_path / "kitchen.json")
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(
        "[mqtt]\nport = %d\nreconnect_min = 1\nreconnect_max = 2\n"
        "[bridge]\nstate = %s\ncommand_poll = 0\n"
        "[[device]]\nconfig = %s\n"
        '[[topic]]\nfilter = "site/+/temperature"\ndevice = "kitchen"\n'
        % (broker.port, json.dumps(str(tmp_path / "bridge.state")), json.dumps(str(dev)))
    )
    log_path = tmp_path / "bridge.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lowbw", "mqtt-bridge", "--config", str(cfg)],
            stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT),
        )
    try:
        started = time.monotonic()
        first = "cannot connect to the MQTT broker 127.0.0.1:%d: connection refused; retrying in 1 s" % (
            broker.port
        )
        wait_for(log_path, first, 10)
        assert time.monotonic() - started < 10
        # The backoff doubles up to reconnect_max, and the log says so.
        wait_for(log_path, "; retrying in 2 s (attempt 2; backoff 1..2 s)", 10)
        broker.start()
        log = wait_for(log_path, "connected to 127.0.0.1:%d" % broker.port, 15)
        assert "failed attempt(s)" in log
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(15)
        broker.stop()
