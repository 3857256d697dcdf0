"""The MQTT bridge against a real mosquitto, the real proxy and a real Synapse.

Exactly once across failures: the bridge crashes between queuing a reading
and acknowledging its MQTT message, is SIGKILLed mid-stream, and the broker is
restarted under it; every published value is in the room once. Commands posted
in the room come out on MQTT.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

from lowbw.adapters.config import load_bridge
from lowbw.adapters.mqtt_bridge import MqttBridge
from lowbw.wire import cbor

from .conftest import (
    ROOT,
    Mosquitto,
    Subscriber,
    post_command,
    publish,
    publisher,
    readings_in_room,
    tune_device,
    values_of,
    wait_for_readings,
)


def toml_value(v: Any) -> str:
    if isinstance(v, dict):
        return "{ %s }" % ", ".join("%s = %s" % (k, toml_value(x)) for k, x in v.items())
    return json.dumps(v)


def write_config(
    path: Path,
    mqtt: dict[str, Any],
    bridge: dict[str, Any],
    devices: list[dict[str, Any]],
    topics: list[dict[str, Any]],
    tls: dict[str, Any] | None = None,
) -> Path:
    lines = ["[mqtt]"] + ["%s = %s" % (k, toml_value(v)) for k, v in mqtt.items()]
    if tls is not None:
        lines += ["[mqtt.tls]"] + ["%s = %s" % (k, toml_value(v)) for k, v in tls.items()]
    lines += ["[bridge]"] + ["%s = %s" % (k, toml_value(v)) for k, v in bridge.items()]
    for d in devices:
        lines += ["[[device]]"] + ["%s = %s" % (k, toml_value(v)) for k, v in d.items()]
    for t in topics:
        lines += ["[[topic]]"] + ["%s = %s" % (k, toml_value(v)) for k, v in t.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def test_exactly_once_through_bridge_crashes_and_broker_restart(
    tmp_path, device_factory, proxy_factory, synapse, matrix_user, mosquitto: Mosquitto, processes
):
    dev = device_factory()
    tune_device(dev)
    proxy_factory()
    cfg = write_config(
        tmp_path / "bridge.toml",
        mqtt={
            "port": mosquitto.port,
            "protocol": "5",
            "client_id": "lowbw-test-bridge",
            "reconnect_min": 1,
            "reconnect_max": 2,
            "keepalive": 5,
        },
        bridge={
            "state": str(tmp_path / "bridge.state"),
            "command_poll": 0.5,
            "commands_topic": "site/{device}/cmd",
        },
        devices=[{"config": str(dev.config_path), "aliases": ["s1"]}],
        topics=[{"filter": "site/+/temperature", "device_segment": 1}],
    )
    topic = "site/s1/temperature"
    n = 30
    pub = publisher(mosquitto.port)
    cmd_sub = Subscriber(mosquitto.port, "site/+/cmd")
    bridge_args = ["-m", "lowbw.adapters.mqtt_bridge", "--config", str(cfg)]
    try:
        # 1. A bridge that dies right after durably queuing message 3, before its PUBACK.
        crashing = processes(
            [str(ROOT / "tests/adapters/crashing_bridge.py"), "--crash-after", "3", "--config", str(cfg)],
            tmp_path / "crash.log",
        )
        wait_until(lambda: "subscribed" in crashing.log(), 15, "the first bridge to subscribe")
        for i in range(10):
            publish(pub, topic, str(i))
        assert crashing.wait(20) == 9, crashing.log()
        assert "crashing before acknowledging" in crashing.log()

        # 2. A normal bridge: gets message 3 again (DUP) and the rest; SIGKILLed mid-stream.
        b1 = processes(bridge_args, tmp_path / "b1.log")
        wait_until(lambda: "subscribed" in b1.log(), 15, "the second bridge to subscribe")
        for i in range(10, 20):
            publish(pub, topic, str(i))
            time.sleep(random.uniform(0, 0.05))
        time.sleep(random.uniform(0.05, 0.3))
        b1.stop(signal.SIGKILL)

        # 3. Restarted; the broker goes down and comes back under it.
        b2 = processes(bridge_args + ["--stats", str(tmp_path / "stats.json")], tmp_path / "b2.log")
        wait_until(lambda: "subscribed" in b2.log(), 15, "the restarted bridge to subscribe")
        for i in range(20, 25):
            publish(pub, topic, str(i))
        mosquitto.restart(signal.SIGTERM, down_for=1.0)
        wait_until(lambda: pub.is_connected(), 15, "the publisher to reconnect")
        wait_until(lambda: b2.log().count("subscribed") >= 2, 20, "the bridge to reconnect and resubscribe")
        for i in range(25, n):
            publish(pub, topic, str(i))

        got = wait_for_readings(synapse, matrix_user, dev, n, 60)
        values = [values_of(r)["temperature"] for r in got]
        assert sorted(values, key=float) == ["%d.0" % i for i in range(n)], values
        assert len(values) == len(set(values)) == n
        # Nothing more trickles in later (a duplicate would be a 31st event).
        time.sleep(1.0)
        assert len(readings_in_room(synapse, matrix_user, dev)) == n
        assert "already queued: acknowledged only" in b1.log() + b2.log(), b1.log()

        # 4. A command in the room comes out on MQTT.
        event_id = post_command(synapse, matrix_user, dev, "reboot now", "c-mqtt-1")
        msgs = cmd_sub.wait_for(1, 30)
        assert msgs, b2.log()
        t, payload = msgs[0]
        assert t == "site/%s/cmd" % dev.name
        body = json.loads(payload)
        assert body["body"] == "reboot now" and body["event_id"] == event_id
        assert body["sender"] == matrix_user.user_id and body["device"] == dev.name
        wait_until(lambda: "the broker has it" in b2.log(), 10, "the broker's PUBACK for the command")
        assert b2.stop(signal.SIGTERM) == 0, b2.log()
    finally:
        pub.disconnect()
        pub.loop_stop()
        cmd_sub.close()
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["connects"] >= 2 and stats["disconnects"] >= 1, stats
    assert stats["commands"] == 1 and stats["commands_published"] == 1 and stats["outbox"] == 0
    state = json.loads((tmp_path / "bridge.state").read_text())
    assert state["outbox"] == [] and all(row[5] == 1 for row in state["seen"])
    print(
        "\nmqtt e2e: %d values, last bridge: %s"
        % (n, json.dumps({k: stats[k] for k in ("received", "queued", "duplicates", "acked", "connects")}))
    )


def test_mqtt311_tls_password_payload_kinds_and_text_commands(
    tmp_path, device_factory, proxy_factory, synapse, matrix_user, mosquitto: Mosquitto
):
    dev = device_factory()
    tune_device(dev)
    proxy_factory()
    pub = publisher(mosquitto.port)
    # A stored (retained) value from before the bridge existed: not a new reading.
    info = pub.publish("plant/p1/temperature", "5", qos=1, retain=True)
    info.wait_for_publish(10)
    cfg_path = write_config(
        tmp_path / "bridge.toml",
        mqtt={
            "host": "localhost",
            "port": mosquitto.tls_port,
            "protocol": "3.1.1",
            "client_id": "lowbw-tls",
            "username": Mosquitto.USER,
            "password": Mosquitto.PASSWORD,
            "reconnect_max": 2,
        },
        tls={"ca_file": str(mosquitto.tls["ca"])},
        bridge={
            "state": str(tmp_path / "bridge.state"),
            "command_poll": 0.5,
            "commands_topic": "plant/{device}/commands",
            "commands_format": "text",
        },
        devices=[{"config": str(dev.config_path), "aliases": ["p1"]}],
        topics=[
            {
                "filter": "plant/+/climate",
                "device_segment": 1,
                "slot": "climate",
                "time_field": "ts",
                "rename": {"temp": "temperature", "hum": "humidity"},
            },
            {"filter": "plant/+/+", "device_segment": 1},
        ],
    )
    bridge = MqttBridge(load_bridge(cfg_path))
    thread = threading.Thread(target=bridge.run, daemon=True)
    thread.start()
    cmd_sub = Subscriber(mosquitto.port, "plant/+/commands")
    try:
        wait_until(lambda: bridge.connected, 15, "the bridge to connect over TLS with a password")
        time.sleep(0.3)  # its SUBSCRIBE reaches the broker
        measured = int(time.time()) - 60
        publish(pub, "plant/p1/climate", json.dumps({"temp": 21.5, "hum": 40, "ts": measured, "rssi": -70}))
        publish(pub, "plant/p1/temperature", bytes(cbor.dumps(19.5)))
        publish(pub, "plant/p1/temperature", "garbage")
        publish(pub, "plant/p1/humidity", "40")
        publish(pub, "plant/p9/temperature", "1")
        publish(pub, "plant/p1/temperature", "-3.25")
        got = wait_for_readings(synapse, matrix_user, dev, 3, 30)
        assert [(r["name"], values_of(r)) for r in got] == [
            ("climate", {"temperature": "21.5", "humidity": "40"}),
            ("temperature", {"temperature": "19.5"}),
            ("temperature", {"temperature": "-3.25"}),
        ]
        assert abs(got[0]["measured_at"] / 1000 - measured) < 2.5

        post_command(synapse, matrix_user, dev, "fan off", "c-tls-1")
        msgs = cmd_sub.wait_for(1, 30)
        assert msgs == [("plant/%s/commands" % dev.name, b"fan off")]
        # plant/+/+ matches the commands topic too: the bridge's own publication comes
        # back (MQTT 3.1.1 has no noLocal) and is recognised, not taken for a bad reading.
        wait_until(lambda: bridge.stats()["own_commands"] == 1, 15, "the bridge to see its command back")
    finally:
        bridge.stop()
        thread.join(15)
        pub.disconnect()
        pub.loop_stop()
        cmd_sub.close()
    stats = bridge.stats()
    assert not thread.is_alive()
    assert stats["bad"] == 3 and stats["retained_skipped"] == 1 and stats["readings"] == 3, stats
    assert stats["duplicates"] == 0 and stats["devices"][dev.name]["acked"] == 3


def test_backpressure_holds_messages_unacked_instead_of_dropping(
    tmp_path, device_factory, proxy_factory, synapse, matrix_user, mosquitto: Mosquitto
):
    """The proxy is down and the device queue is tiny: messages wait at the broker, none is dropped."""
    dev = device_factory()
    tune_device(dev, queue_limit=3, batch_limit=2)
    cfg_path = write_config(
        tmp_path / "bridge.toml",
        mqtt={"port": mosquitto.port, "client_id": "lowbw-bp", "receive_maximum": 10},
        bridge={"state": str(tmp_path / "bridge.state"), "command_poll": 0},
        devices=[{"config": str(dev.config_path)}],
        topics=[{"filter": "bp/#", "slot": 0}],
    )
    bridge = MqttBridge(load_bridge(cfg_path))
    thread = threading.Thread(target=bridge.run, daemon=True)
    thread.start()
    pub = publisher(mosquitto.port)
    n = 14
    try:
        wait_until(lambda: bridge.connected, 15, "the bridge to connect")
        time.sleep(0.3)
        for i in range(n):
            publish(pub, "bp/x", str(i))

        # The device takes 1-2 in flight + 3 queued; the rest wait unacknowledged,
        # all of them delivered (receive maximum 10 > 14 - 4).
        def settled() -> bool:
            s = bridge.stats()
            return bool(s["received"] == n and s["held"] + s["acked"] == n)

        wait_until(settled, 10, "messages to be held back")
        time.sleep(0.5)
        held = bridge.stats()
        assert held["acked"] in (4, 5) and held["devices"][dev.name]["pending"] == held["acked"], held
        assert held["held"] == n - held["acked"] and held["devices"][dev.name]["dropped"] == 0
        proxy_factory()
        got = wait_for_readings(synapse, matrix_user, dev, n, 60)
    finally:
        bridge.stop()
        thread.join(15)
        pub.disconnect()
        pub.loop_stop()
    assert [values_of(r)["temperature"] for r in got] == ["%d.0" % i for i in range(n)]
    stats = bridge.stats()
    assert stats["devices"][dev.name]["dropped"] == 0 and stats["acked"] == n and stats["held"] == 0
    print("\nback-pressure: %d message(s) held unacknowledged, 0 dropped" % held["held"])
