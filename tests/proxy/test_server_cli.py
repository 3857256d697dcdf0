"""The proxy as an operator runs it: ``lowbw proxy run --config ...`` in its own
process, a device process (``lowbw device send``), and the logs they leave."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lowbw.proxy.config import load

from .conftest import room_events


def start_proxy(config_path: str) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lowbw", "proxy", "run", "--config", config_path],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    lines: list[str] = []
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if sel.select(timeout=0.5):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("lowbw proxy listening on udp"):
                return proc, lines
    proc.kill()
    raise AssertionError("proxy did not start:\n" + "".join(lines))


def stop_proxy(proc: subprocess.Popen[str], lines: list[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, "".join(lines) + out
    return "".join(lines) + out


def device_send(device_config: Path, *values: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "lowbw",
            "device",
            "send",
            "--device-config",
            str(device_config),
            "--timeout",
            "30",
        ]
        + list(values),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_proxy_process_device_process_and_logs(device_factory, proxy_config_path, synapse, matrix_user):
    pytest.importorskip("lowbw.device.cli")
    dev = device_factory()
    proc, lines = start_proxy(proxy_config_path)
    try:
        first = device_send(dev.config_path, "215")
        assert first.returncode == 0, first.stderr
        second = device_send(dev.config_path, "216")  # warm: the session persisted in the state file
        assert second.returncode == 0, second.stderr
    finally:
        log1 = stop_proxy(proc, lines)
    # Restart: the saved session is restored; the device carries on without a handshake.
    proc, lines = start_proxy(proxy_config_path)
    try:
        third = device_send(dev.config_path, "217")
        assert third.returncode == 0, third.stderr
    finally:
        log2 = stop_proxy(proc, lines)
    events = room_events(synapse.url, matrix_user.access_token, dev.room_id, dev.user_id)
    assert [e["content"]["body"] for e in events] == [
        "temperature 21.5 °C",
        "temperature 21.6 °C",
        "temperature 21.7 °C",
    ]
    assert "1 session(s) restored" in log2
    # One handshake in all.
    assert " 1 handshake(s)" in first.stdout and " 0 handshake(s)" in second.stdout, first.stdout
    assert " 0 handshake(s)" in third.stdout, third.stdout
    assert log1.count("%s: IK handshake" % dev.name) == 1 and "IK handshake" not in log2
    # Logs say device, route, status and bytes, summed per interval (here: at stop) ...
    assert "answers: %s POST v -> 2.04 Changed x2 (" % dev.name in log1 and " B in, " in log1
    # ... and never a key or a token.
    cfg = load(proxy_config_path)
    assert cfg.appservice is not None
    device_cfg = json.loads(dev.config_path.read_text())
    secrets_ = [
        cfg.appservice.as_token,
        cfg.appservice.hs_token,
        cfg.read_private_key().hex(),
        device_cfg["device_private_key"],
        device_cfg["proxy"]["public_key"],
    ]
    for text in (log1, log2):
        for secret in secrets_:
            assert secret not in text


def test_bad_config_fails_cleanly(tmp_path):
    missing = subprocess.run(
        [sys.executable, "-m", "lowbw", "proxy", "run", "--config", str(tmp_path / "nope.toml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_device_send_reports_what_the_proxy_answered(
    device_factory, proxy_config_path, proxy_factory, fault_injector, synapse, matrix_user
):
    """Homeserver down: the proxy's 5.03 is reported, not a timeout. Revoked: the
    proxy's silence after earlier handshakes is named, and nothing is promised."""
    dev = device_factory()
    proxy_factory(homeserver_url=fault_injector.url)
    first = device_send(dev.config_path, "215")
    assert first.returncode == 0, first.stderr

    fault_injector.set("down")
    down = subprocess.run(
        [sys.executable, "-m", "lowbw", "device", "send", "--device-config", str(dev.config_path),
         "--timeout", "5", "216"],
        capture_output=True, text=True, timeout=60,
    )
    assert down.returncode == 1
    err = down.stderr.strip().splitlines()[-1]
    assert err.startswith("lowbw device send: error: not acknowledged within 5 s: the proxy answered 5.03 "
                          "(the proxy cannot reach the homeserver)"), down.stderr
    assert "no acknowledgement" not in down.stderr

    fault_injector.set("pass")
    revoke = subprocess.run(
        [sys.executable, "-m", "lowbw", "device", "revoke", "--config", proxy_config_path, dev.name],
        capture_output=True, text=True, timeout=60,
    )
    assert revoke.returncode == 0, revoke.stderr
    revoked = subprocess.run(
        [sys.executable, "-m", "lowbw", "device", "send", "--device-config", str(dev.config_path),
         "--timeout", "4", "217"],
        capture_output=True, text=True, timeout=60,
    )
    assert revoked.returncode == 1
    err = revoked.stderr.strip().splitlines()[-1]
    assert "no answer from the proxy at 127.0.0.1:" in err and "key unknown or revoked?" in err, err
    assert "goes out with the next run" not in revoked.stderr and "sent again" not in err


def test_sigusr1_reports_the_longest_registry_call_and_starts_again(device_factory, proxy_config_path):
    """``kill -USR1``: the longest registry call since the last report, without stopping."""
    from lowbw.wire import coap

    from .proxyproc import ProxyProcess

    dev = device_factory()
    proxy = ProxyProcess(proxy_config_path)
    try:
        wire = dev.wire()
        assert wire.exchange(wire.reading([1])).code == coap.CHANGED  # a handshake: registry calls
        proxy.proc.send_signal(signal.SIGUSR1)
        assert proxy.wait_for("(since the last report)", 10), proxy.output()
        first = [line for line in proxy.output().splitlines() if "since the last report" in line]
        assert len(first) == 1 and " ms: " in first[0], first
        proxy.proc.send_signal(signal.SIGUSR1)  # no handshake since: only the periodic check
        deadline = time.monotonic() + 10
        while proxy.output().count("since the last report") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        second = [line for line in proxy.output().splitlines() if "since the last report" in line][1]
        assert second.split(" ms: ")[1].split()[0] in ("changed", "-"), second
        assert proxy.proc.poll() is None  # still serving
        assert wire.exchange(wire.reading([2])).code == coap.CHANGED
    finally:
        out = proxy.stop()
    assert "lowbw proxy stopped" in out and "longest registry call" in out.splitlines()[-1]
