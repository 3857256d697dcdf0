"""``/metrics`` of the adapters: serial-gateway, mqtt-bridge and lorawan-gateway, as run by an operator.

Each adapter runs as its own process from a TOML config with a ``[metrics]``
table (real PTYs, real mosquitto, the real proxy and Synapse, as in the other
adapter tests); the test sends a few readings, scrapes ``/metrics`` over HTTP
and reads the values with prometheus-client's text parser.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from lowbw.adapters.config import AdapterConfigError, load_bridge, load_gateway
from lowbw.lorawan.gateway import load_config as load_lorawan_gateway

from .conftest import ROOT, Mosquitto, free_tcp_port, publish, publisher, tune_device, wait_for_readings
from .test_serial_gateway import Cable, open_end

FIX = ROOT / "tests" / "lorawan" / "fixtures"

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape(url: str, token: str | None = None) -> Samples:
    req = urllib.request.Request(url + "/metrics")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=5) as resp:
        text = resp.read().decode("utf-8")
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), float("nan"))


def wait_scrape(
    url: str, cond: Callable[[Samples], bool], timeout: float, what: str, log: Any = None
) -> Samples:
    deadline = time.monotonic() + timeout
    got: Samples = {}
    while time.monotonic() < deadline:
        try:
            got = scrape(url)
            if cond(got):
                return got
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("timed out waiting for %s\n%s" % (what, log() if log else ""))


OPERATOR_DOC = (ROOT / "docs" / "operator.md").read_text(encoding="utf-8")
NAME = re.compile(r"\blowbw_(?:serial|mqtt|lorawan)_[a-z_]+")


def assert_documented(samples: Samples) -> None:
    """Every lowbw_ name a scrape exposed is in docs/operator.md ("Adapters")."""
    missing = sorted(n for n in samples if n.startswith("lowbw_") and "`%s`" % n not in OPERATOR_DOC)
    assert not missing, missing


def test_dashboard_uses_documented_names():
    dashboard = json.loads((ROOT / "examples" / "grafana-lowbw-adapters.json").read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in NAME.findall(e)}
    assert {n.split("_")[1] for n in used} == {"serial", "mqtt", "lorawan"}
    missing = sorted(n for n in used if "`%s`" % n not in OPERATOR_DOC)
    assert not missing, missing


def toml_table(name: str, table: dict[str, Any]) -> str:
    return "[%s]\n%s\n" % (name, "\n".join("%s = %s" % (k, json.dumps(v)) for k, v in table.items()))


def test_serial_gateway_line_mode_metrics(
    tmp_path, device_factory, proxy_factory, synapse, matrix_user, processes
):
    dev = device_factory()
    tune_device(dev)
    proxy_factory()
    cable = Cable(tmp_path)
    port = free_tcp_port()
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        toml_table("serial", {"port": str(cable.gw_path), "mode": "line", "baud": 115200})
        + toml_table("line", {"device_config": str(dev.config_path), "command_poll": 0})
        + toml_table("metrics", {"listen": port})
    )
    url = "http://127.0.0.1:%d" % port
    gw = processes(["-m", "lowbw.adapters.serial_gateway", "--config", str(cfg)], tmp_path / "gw.log")
    sensor = open_end(cable.path_b)
    try:
        wait_scrape(url, lambda s: value(s, "lowbw_serial_port_open") == 1, 15, "the port to open", gw.log)
        lines = [b"temperature=21.5 humidity=40\n", b"this is not a reading\n", b"temperature=20\n"]
        for line in lines:
            sensor.write(line)
        s = wait_scrape(
            url,
            lambda s: value(s, "lowbw_serial_readings_acknowledged_total") == 2,
            30,
            "2 readings acknowledged",
            gw.log,
        )
        assert len(wait_for_readings(synapse, matrix_user, dev, 2, 30)) == 2
    finally:
        sensor.close()
        rc = gw.stop()
        cable.close()
    assert rc == 0, gw.log()
    assert_documented(s)
    assert value(s, "lowbw_serial_readings_queued_total") == 2
    assert value(s, "lowbw_serial_queue_depth") == 0
    assert value(s, "lowbw_serial_lines_total") == 3
    assert value(s, "lowbw_serial_input_skipped_total", reason="bad_line") == 1
    assert value(s, "lowbw_serial_input_skipped_total", reason="line_too_long") == 0
    assert value(s, "lowbw_serial_readings_dropped_total", reason="queue_full") == 0
    assert value(s, "lowbw_serial_port_opens_total") == 1
    assert value(s, "lowbw_serial_line_bytes_total", direction="up") == sum(map(len, lines))
    d = dev.name
    assert value(s, "lowbw_serial_device_readings_total", device=d, outcome="acknowledged") == 2
    assert value(s, "lowbw_serial_device_queue_depth", device=d) == 0
    up = value(s, "lowbw_serial_bytes_total", direction="up")
    assert up > 0 and value(s, "lowbw_serial_device_bytes_total", device=d, direction="up") == up
    assert value(s, "lowbw_serial_datagrams_total", direction="down") >= 1
    # Airtime at the device config's link_bps (tune_device: 1,000,000 bit/s).
    air = value(s, "lowbw_serial_airtime_seconds_total", direction="up")
    assert abs(air - up * 8 / 1_000_000) < 1e-9, (air, up)
    assert value(s, "lowbw_serial_start_time_seconds") > 0
    assert "process_cpu_seconds_total" in s


def test_mqtt_bridge_metrics_and_broker_state(
    tmp_path, device_factory, proxy_factory, synapse, matrix_user, mosquitto: Mosquitto, processes
):
    dev = device_factory()
    tune_device(dev)
    proxy_factory()
    port = free_tcp_port()
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(
        toml_table(
            "mqtt",
            {
                "port": mosquitto.port,
                "client_id": "lowbw-metrics-bridge",
                "reconnect_min": 1,
                "reconnect_max": 1,
            },
        )
        + toml_table("bridge", {"state": str(tmp_path / "bridge.state"), "command_poll": 0})
        + toml_table("metrics", {"listen": "127.0.0.1:%d" % port, "per_device": False})
        + '[[device]]\nconfig = %s\n[[topic]]\nfilter = "site/temperature"\n'
        % json.dumps(str(dev.config_path))
    )
    url = "http://127.0.0.1:%d" % port
    bridge = processes(["-m", "lowbw.adapters.mqtt_bridge", "--config", str(cfg)], tmp_path / "bridge.log")
    pub = publisher(mosquitto.port, "metrics-pub")
    try:
        wait_scrape(url, lambda s: value(s, "lowbw_mqtt_broker_connected") == 1, 15, "the broker", bridge.log)
        time.sleep(0.3)  # subscribed
        for v in ("21.5", "22", "not a number", "23.25"):
            publish(pub, "site/temperature", v)
        s = wait_scrape(
            url,
            lambda s: value(s, "lowbw_mqtt_readings_acknowledged_total") == 3,
            30,
            "3 readings acknowledged",
            bridge.log,
        )
        assert len(wait_for_readings(synapse, matrix_user, dev, 3, 30)) == 3
        assert_documented(s)
        assert value(s, "lowbw_mqtt_messages_received_total") == 4
        assert value(s, "lowbw_mqtt_messages_queued_total") == 3
        assert value(s, "lowbw_mqtt_messages_acknowledged_total") == 4
        assert value(s, "lowbw_mqtt_messages_skipped_total", reason="unmapped") == 1
        assert value(s, "lowbw_mqtt_messages_skipped_total", reason="retained") == 0
        assert value(s, "lowbw_mqtt_readings_queued_total") == 3
        assert value(s, "lowbw_mqtt_queue_depth") == 0
        assert value(s, "lowbw_mqtt_messages_held") == 0 and value(s, "lowbw_mqtt_outbox") == 0
        assert value(s, "lowbw_mqtt_broker_connects_total") == 1
        assert value(s, "lowbw_mqtt_bytes_total", direction="up") > 0
        assert value(s, "lowbw_mqtt_devices") == 1
        assert not any(name.startswith("lowbw_mqtt_device_") for name in s), sorted(s)  # per_device = false
        mosquitto.stop()
        s = wait_scrape(url, lambda s: value(s, "lowbw_mqtt_broker_connected") == 0, 15, "the disconnect")
        assert value(s, "lowbw_mqtt_broker_disconnects_total") == 1
        s = wait_scrape(
            url, lambda s: value(s, "lowbw_mqtt_broker_connect_failures_total") >= 1, 15, "a failed reconnect"
        )
    finally:
        pub.loop_stop()
        assert bridge.stop() == 0, bridge.log()


def test_lorawan_gateway_metrics_with_token(tmp_path, mosquitto: Mosquitto, processes):
    proxy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # where the proxy would be
    proxy.bind(("127.0.0.1", 0))
    proxy.settimeout(10)
    app = "17c82e96-be03-4f38-aef3-f83d48582d97"
    eui = "0101010101010101"
    port = free_tcp_port()
    token = "t0ken-for-the-test"
    cfg = tmp_path / "lgw.toml"
    cfg.write_text(
        toml_table("mqtt", {"port": mosquitto.port, "client_id": "lowbw-metrics-lgw"})
        + toml_table(
            "gateway",
            {"format": "chirpstack-v4", "application": app, "proxy": "127.0.0.1:%d" % proxy.getsockname()[1]},
        )
        + toml_table("metrics", {"listen": "127.0.0.1:%d" % port, "token": token, "link_bps": 250})
    )
    url = "http://127.0.0.1:%d" % port
    gw = processes(["-m", "lowbw.lorawan.gateway", "--config", str(cfg)], tmp_path / "lgw.log")
    pub = publisher(mosquitto.port, "metrics-lgw-pub")
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                s = scrape(url, token)
                if value(s, "lowbw_lorawan_broker_connected") == 1:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, gw.log()
            time.sleep(0.1)
        try:
            scrape(url)
            raise AssertionError("a scrape without the token was answered")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
        time.sleep(0.3)  # subscribed

        def up(f_cnt: int, f_port: int, data: bytes, dedup: int | None = None) -> None:
            msg = copy.deepcopy(json.loads((FIX / "cs_up.json").read_text()))
            msg["deduplicationId"] = "00000000-0000-4000-8000-%012d" % (f_cnt if dedup is None else dedup)
            msg.update(fCnt=f_cnt, fPort=f_port, data=base64.b64encode(data).decode())
            msg.pop("object", None)
            publish(pub, "application/%s/device/%s/event/up" % (app, eui), json.dumps(msg))

        datagram = bytes([0x10]) + bytes(range(20))
        up(1, 1, datagram)
        got, addr = proxy.recvfrom(2048)
        assert got == datagram
        proxy.sendto(bytes([0x11]) + bytes(29), addr)
        up(1, 1, datagram)  # the same uplink again (same deduplication id)
        up(4, 9, b"\x01\x02")  # not lowbw's FPort; 2 uplinks lost before it
        up(5, 1, datagram)
        proxy.recvfrom(2048)
        deadline = time.monotonic() + 15
        while True:
            s = scrape(url, token)
            if (
                value(s, "lowbw_lorawan_downlinks_total") == 1
                and value(s, "lowbw_lorawan_uplinks_total") == 4
                and value(s, "lowbw_lorawan_datagrams_total", direction="up") == 2
            ):
                break
            assert time.monotonic() < deadline, (gw.log(), s)
            time.sleep(0.1)
    finally:
        pub.loop_stop()
        proxy.close()
        assert gw.stop() == 0, gw.log()
    assert_documented(s)
    assert value(s, "lowbw_lorawan_uplinks_duplicate_total") == 1
    assert value(s, "lowbw_lorawan_fcnt_gaps_total") == 2
    assert value(s, "lowbw_lorawan_input_skipped_total", reason="fport") == 1
    assert value(s, "lowbw_lorawan_dropped_total", reason="held_back") == 0
    assert value(s, "lowbw_lorawan_datagrams_total", direction="up") == 2
    assert value(s, "lowbw_lorawan_datagrams_total", direction="down") == 1
    assert value(s, "lowbw_lorawan_bytes_total", direction="up") == 42
    assert value(s, "lowbw_lorawan_airtime_seconds_total", direction="down") == 30 * 8 / 250
    assert value(s, "lowbw_lorawan_device_datagrams_total", device=eui, direction="up") == 2
    assert value(s, "lowbw_lorawan_device_downlinks_queued", device=eui) == 0  # heard again since
    assert value(s, "lowbw_lorawan_devices") == 1
    assert value(s, "lowbw_lorawan_link_bps") == 250


def test_metrics_off_loopback_needs_a_token(tmp_path, mosquitto: Mosquitto):
    serial_cfg = tmp_path / "gw.toml"
    serial_cfg.write_text(
        toml_table("serial", {"port": "/dev/null", "mode": "modem"})
        + toml_table("metrics", {"listen": "0.0.0.0:9464"})
    )
    r = subprocess.run(
        [sys.executable, "-m", "lowbw.adapters.serial_gateway", "--config", str(serial_cfg)],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        timeout=30,
    )
    assert r.returncode == 1, r.stderr
    assert "metrics.listen" in r.stderr and "not loopback" in r.stderr and "token" in r.stderr, r.stderr

    mqtt = toml_table("mqtt", {"port": mosquitto.port})
    bridge_cfg = tmp_path / "bridge.toml"
    bridge_cfg.write_text(
        mqtt
        + '[[device]]\nconfig = "dev.json"\n[[topic]]\nfilter = "a/b"\n'
        + toml_table("metrics", {"listen": "[::]:9464"})
    )
    lgw_cfg = tmp_path / "lgw.toml"
    lgw_cfg.write_text(
        mqtt
        + toml_table("gateway", {"format": "chirpstack-v4", "application": "app"})
        + toml_table("metrics", {"listen": "192.0.2.1:9464"})
    )
    for load, path in ((load_bridge, bridge_cfg), (load_lorawan_gateway, lgw_cfg)):
        try:
            load(path)
            raise AssertionError("%s: loaded" % path)
        except AdapterConfigError as exc:
            assert "metrics.listen" in exc.message and "not loopback" in exc.message, exc.message
    # With a token it loads (and the token is never shown); a bare port is loopback; no listen: off.
    serial_cfg.write_text(
        toml_table("serial", {"port": "/dev/null", "mode": "modem"})
        + toml_table("metrics", {"listen": "0.0.0.0:9464", "token": "s3cret"})
    )
    m = load_gateway(serial_cfg).metrics
    assert (m.host, m.port, m.token) == ("0.0.0.0", 9464, "s3cret") and "s3cret" not in repr(m)
    serial_cfg.write_text(
        toml_table("serial", {"port": "/dev/null"}) + toml_table("metrics", {"listen": 9999})
    )
    m = load_gateway(serial_cfg).metrics
    assert (m.host, m.port, m.per_device) == ("127.0.0.1", 9999, True)
    serial_cfg.write_text(
        toml_table("serial", {"port": "/dev/null"}) + toml_table("metrics", {"per_device": False})
    )
    assert load_gateway(serial_cfg).metrics is None


def test_metrics_port_in_use_is_a_clear_error(tmp_path, mosquitto: Mosquitto):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    busy_port = busy.getsockname()[1]
    cfg = tmp_path / "lgw.toml"
    cfg.write_text(
        toml_table("mqtt", {"port": mosquitto.port})
        + toml_table("gateway", {"format": "chirpstack-v4", "application": "app"})
        + toml_table("metrics", {"listen": "127.0.0.1:%d" % busy.getsockname()[1]})
    )
    try:
        r = subprocess.run(
            [sys.executable, "-m", "lowbw.lorawan.gateway", "--config", str(cfg)],
            capture_output=True,
            text=True,
            cwd=str(ROOT),
            timeout=30,
        )
    finally:
        busy.close()
    assert r.returncode == 1, r.stderr
    assert "cannot listen on tcp 127.0.0.1:%d for metrics" % busy_port in r.stderr, r.stderr
    assert "in use" in r.stderr, r.stderr
