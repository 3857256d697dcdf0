"""The adapters state absolute measurement times, and the room shows them to the ms.

Real Synapse, the real proxy at its default ``link_bps = 100`` (where it takes
a datagram's airtime off readings dated "now" or by age), a real mosquitto and
``lowbw mqtt-bridge`` process, a real PTY and ``lowbw serial-gateway`` process.
An MQTT payload's own ``ts`` is the event's timestamp exactly; a serial line's
is when it reached the gateway, not seconds earlier.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from lowbw.adapters.devicelink import wire_time
from lowbw.wire import cbor, reading

from .conftest import (
    EnrolledDevice,
    MatrixUser,
    Mosquitto,
    publish,
    publisher,
    room_events,
    tune_device,
)
from .test_mqtt_bridge import write_config as write_bridge_config
from .test_serial_gateway import Cable, open_end, wait
from .test_serial_gateway import write_config as write_gateway_config


def reading_events(hs: Any, user: MatrixUser, dev: EnrolledDevice, n: int, timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    got: list[Any] = []
    while time.monotonic() < deadline:
        got = [
            e for e in room_events(hs.url, user.access_token, dev.room_id, sender=dev.user_id)
            if "org.lowbw.reading" in e.get("content", {})
        ]
        if len(got) >= n:
            break
        time.sleep(0.25)
    return got


def test_wire_time_is_exact_to_the_ms_and_costs_9_bytes() -> None:
    for ms in (1795666000123, 1795666000001, 1795666000999, 1700000000500):
        t = wire_time(ms / 1000)
        # What the proxy computes from the decoded CBOR (lowbw.wire.reading).
        assert reading.measured_at_ms(cbor.loads(cbor.dumps(t)), 0) == ms
        assert len(cbor.dumps(t)) == 9
    assert wire_time(1795666000.0) == 1795666000 and len(cbor.dumps(1795666000)) == 5


def test_mqtt_ts_is_the_event_timestamp_exactly(
    tmp_path: Path, device_factory, proxy_factory, synapse, matrix_user, mosquitto: Mosquitto, processes
) -> None:
    dev = device_factory()
    tune_device(dev)
    proxy_factory(link_bps=100.0)
    cfg = write_bridge_config(
        tmp_path / "bridge.toml",
        mqtt={"port": mosquitto.port, "client_id": "lowbw-ts-test", "reconnect_min": 1, "reconnect_max": 2},
        bridge={"state": str(tmp_path / "bridge.state"), "command_poll": 0},
        devices=[{"config": str(dev.config_path), "aliases": ["kitchen"]}],
        topics=[{"filter": "site/+/climate", "device_segment": 1, "slot": "temperature", "time_field": "ts"}],
    )
    bridge = processes(["-m", "lowbw", "mqtt-bridge", "--config", str(cfg)], tmp_path / "bridge.log")
    pub = publisher(mosquitto.port)
    try:
        wait(lambda: "subscribed" in bridge.log(), 15, "the bridge to subscribe")
        stated = [int(time.time() * 1000) - 7000 + 123, int(time.time() * 1000) - 4000 + 999]
        for i, ts in enumerate(stated):
            publish(pub, "site/kitchen/climate", json.dumps({"temperature": 21 + i, "ts": ts}))
        events = reading_events(synapse, matrix_user, dev, 2, 60)
    finally:
        pub.disconnect()
        pub.loop_stop()
        bridge.stop(signal.SIGTERM)
    assert len(events) == 2, bridge.log()
    assert [e["origin_server_ts"] for e in events] == stated
    assert [e["content"]["org.lowbw.reading"]["measured_at"] for e in events] == stated


def test_serial_line_is_dated_when_it_arrived(
    tmp_path: Path, device_factory, proxy_factory, synapse, matrix_user, processes
) -> None:
    dev = device_factory()
    tune_device(dev)
    proxy_factory(link_bps=100.0)
    cable = Cable(tmp_path)
    cfg = write_gateway_config(
        tmp_path,
        cable.gw_path,
        serial={"mode": "line", "baud": 115200, "reopen_interval": 0.1},
        line={"device_config": str(dev.config_path), "command_poll": 0},
    )
    gw = processes(["-m", "lowbw", "serial-gateway", "--config", str(cfg)], tmp_path / "gateway.log")
    sensor = open_end(cable.path_b)
    try:
        wait(lambda: "opened" in gw.log(), 10, "the gateway to open the port")
        before = time.time()
        sensor.write(b"temperature=21.5\n")
        sensor.flush()
        after = time.time()
        events = reading_events(synapse, matrix_user, dev, 1, 60)
    finally:
        sensor.close()
        gw.stop(signal.SIGTERM)
        cable.close()
    assert len(events) == 1, gw.log()
    ts = events[0]["origin_server_ts"]
    assert ts == events[0]["content"]["org.lowbw.reading"]["measured_at"]
    # Arrival at the gateway: after the write began, and within its processing
    # time of it; not moved back by an airtime that no radio spent.
    assert int(before * 1000) - 5 <= ts <= int(after * 1000) + 1000, (ts - before * 1000, gw.log())
