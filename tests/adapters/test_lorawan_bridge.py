"""The MQTT bridge's LoRaWAN formats against a real mosquitto, the real proxy and Synapse.

Uplinks in The Things Stack v3 and ChirpStack v4 shapes (tests/lorawan/fixtures),
published to the broker as the network server would, land in the rooms of
auto-enrolled devices exactly once: duplicates (the same uplink twice, as a
network server or broker may deliver it) and a bridge restart make no second
event. Commands posted in a device's room go out as downlinks in the network
server's topic and format, and the outcomes published back come into the room.
"""

from __future__ import annotations

import copy
import hashlib
import json
import secrets
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from lowbw.adapters.config import load_bridge
from lowbw.adapters.mqtt_bridge import MqttBridge

from .conftest import FAST_CLIENT, Mosquitto, Subscriber, matrix_call, publisher, room_events

FIX = Path(__file__).resolve().parents[1] / "lorawan" / "fixtures"


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIX / name).read_text())
    return data


def wait_until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


class Bridge:
    """An in-process bridge in a thread; ``restart()`` makes a new one on the same files."""

    def __init__(self, cfg_path: Path) -> None:
        self.cfg_path = cfg_path
        self.start()

    def start(self) -> None:
        self.bridge = MqttBridge(load_bridge(self.cfg_path))
        self.thread = threading.Thread(target=self.bridge.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.bridge.connected, 15, "the bridge to connect")
        time.sleep(0.3)  # its SUBSCRIBE reaches the broker

    def stop(self) -> dict[str, Any]:
        self.bridge.stop()
        self.thread.join(15)
        assert not self.thread.is_alive()
        return self.bridge.stats()

    def restart(self) -> dict[str, Any]:
        stats = self.stop()
        self.start()
        return stats


def lorawan_config(
    tmp_path: Path, port: int, fmt: str, proxy_config: str, user: str, app: str, extra: str
) -> Path:
    protocol = "3.1.1" if fmt == "tts-v3" else "5"
    text = """
[mqtt]
port = %d
protocol = "%s"
client_id = "lowbw-lw-%s"
reconnect_max = 2

[bridge]
format = "%s"
state = "%s"
command_poll = 0.5

[lorawan]
application = "%s"
proxy_config = "%s"
invite = ["%s"]
encrypted = false
name_prefix = "%s"
client = %s
%s
""" % (
        port,
        protocol,
        secrets.token_hex(3),
        fmt,
        tmp_path / "bridge.state",
        app,
        proxy_config,
        user,
        "t%s-" % secrets.token_hex(2),
        "{ %s }" % ", ".join("%s = %s" % kv for kv in FAST_CLIENT.items()),
        extra,
    )
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    return path


def lorawan_device(bridge: MqttBridge, ns_id: str) -> dict[str, Any]:
    assert bridge.lorawan is not None
    entry = bridge.lorawan.state.devices[ns_id]
    cfg: dict[str, Any] = json.loads(Path(entry["config"]).read_text())
    return cfg


def join(synapse: Any, user: Any, room_id: str) -> None:
    status, body = matrix_call(
        synapse.url,
        "POST",
        "/_matrix/client/v3/join/%s" % urllib.parse.quote(room_id, safe=""),
        user.access_token,
        {},
    )
    assert status == 200, body


def readings(synapse: Any, user: Any, dev: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for ev in room_events(synapse.url, user.access_token, dev["room_id"], sender=dev["user_id"]):
        r = ev.get("content", {}).get("org.lowbw.reading")
        if r is not None:
            out.append(dict(r, body=ev["content"]["body"]))
    return out


def wait_readings(
    synapse: Any, user: Any, dev: dict[str, Any], n: int, timeout: float = 30
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    got: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        got = readings(synapse, user, dev)
        if len(got) >= n:
            return got
        time.sleep(0.25)
    return got


def vals(r: dict[str, Any]) -> dict[str, Any]:
    return {v["name"]: v["value"] for v in r["values"]}


def send_qos0(pub: Any, topic: str, payload: dict[str, Any] | bytes) -> None:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    pub.publish(topic, data, qos=0).wait_for_publish(5)


def post(synapse: Any, user: Any, room_id: str, name: str, text: str) -> str:
    status, body = matrix_call(
        synapse.url,
        "PUT",
        "/_matrix/client/v3/rooms/%s/send/m.room.message/%s"
        % (urllib.parse.quote(room_id, safe=""), secrets.token_hex(4)),
        user.access_token,
        {"msgtype": "m.text", "body": "!%s %s" % (name, text)},
    )
    assert status == 200, body
    return str(body["event_id"])


TTS_PROFILES = """
[lorawan.profile.env-sensor]
fields = [{ name = "temperature", unit = "°C", scale = 1 }, { name = "humidity", unit = "%", scale = 0 }]
radio = ["rssi", "snr", "sf", "frequency", "f_cnt", "airtime", "gateways"]
[lorawan.profile.env-sensor.commands]
reboot = { f_port = 10, hex = "01", confirmed = true }

[lorawan.profile.raw-counter]
decoder = [
    { name = "temperature", type = "i16", unit = "°C", scale = 1 },
    { name = "humidity", type = "u8", unit = "%" },
]
radio = ["rssi", "f_cnt"]

[lorawan.device_profile]
raw-node = "raw-counter"
"""


def tts_up(app: str, dev: str, f_cnt: int, **changes: Any) -> tuple[str, dict[str, Any]]:
    msg = copy.deepcopy(fixture("tts_up.json"))
    msg["end_device_ids"]["device_id"] = dev
    msg["end_device_ids"]["dev_eui"] = hashlib.sha256(dev.encode()).hexdigest()[:16].upper()
    msg["end_device_ids"]["application_ids"]["application_id"] = app.split("@")[0]
    msg["uplink_message"]["f_cnt"] = f_cnt
    msg["uplink_message"].update(changes)
    return "v3/%s/devices/%s/up" % (app, dev), msg


def test_tts_uplinks_exactly_once_and_downlinks(
    tmp_path, proxy_config_path, proxy_factory, synapse, matrix_user, mosquitto: Mosquitto
) -> None:
    app = "lowbw-sensors@ttn"
    proxy_factory()
    cfg = lorawan_config(
        tmp_path,
        mosquitto.port,
        "tts-v3",
        proxy_config_path,
        matrix_user.user_id,
        app,
        'allow = ["env-node", "raw-node"]\n' + TTS_PROFILES,
    )
    b = Bridge(cfg)
    pub = publisher(mosquitto.port, "tts-ns")
    downs = Subscriber(mosquitto.port, "v3/+/devices/+/down/push")
    try:
        t41, m41 = tts_up(app, "env-node", 41)
        send_qos0(pub, t41, m41)
        send_qos0(pub, t41, m41)  # the same uplink again
        send_qos0(pub, *tts_up(app, "env-node", 42, decoded_payload={"temperature": 22.25, "humidity": 41}))
        # No payload decoder at the network server: the profile's decoder reads FRMPayload.
        send_qos0(pub, *tts_up(app, "raw-node", 5, frm_payload="/5wo", decoded_payload=None))
        send_qos0(pub, *tts_up(app, "stranger", 1))  # not in the allow-list
        send_qos0(pub, t41, b"{not json")
        send_qos0(pub, *tts_up(app, "env-node", 43, frm_payload="!!"))  # bad base64
        wait_until(lambda: b.bridge.counters["uplinks"] >= 5 and b.bridge.counters["bad"] >= 2, 30, "uplinks")
        env = lorawan_device(b.bridge, "env-node")
        raw = lorawan_device(b.bridge, "raw-node")
        join(synapse, matrix_user, env["room_id"])
        join(synapse, matrix_user, raw["room_id"])
        assert env["room_id"] != raw["room_id"]

        b.restart()
        send_qos0(pub, *tts_up(app, "env-node", 42))  # a duplicate after the restart
        send_qos0(pub, *tts_up(app, "env-node", 45))  # 43 and 44 lost
        got = wait_readings(synapse, matrix_user, env, 3)
        assert [vals(r)["f_cnt"] for r in got] == ["41", "42", "45"], got
        first = vals(got[0])
        assert first == {
            "temperature": "21.5",
            "humidity": "40",
            "rssi": "-97",
            "snr": "7.25",
            "sf": "12",
            "frequency": "868100000",
            "f_cnt": "41",
            "airtime": "1.155072",
            "gateways": "2",
        }
        assert got[0]["measured_at"] == 1708424149460  # uplink_message.received_at, to the ms
        assert vals(got[1])["temperature"] == "22.25"
        rgot = wait_readings(synapse, matrix_user, raw, 1)
        assert [vals(r) for r in rgot] == [
            {"temperature": "-10.0", "humidity": "40", "rssi": "-97", "f_cnt": "5"}
        ]

        # A named command: a confirmed downlink on down/push, then its outcomes.
        event_id = post(synapse, matrix_user, env["room_id"], env["name"], "reboot")
        msgs = downs.wait_for(1, 20)
        assert msgs, "no downlink"
        topic, payload = msgs[0]
        assert topic == "v3/%s/devices/env-node/down/push" % app
        item = json.loads(payload)["downlinks"][0]
        assert (item["f_port"], item["frm_payload"], item["confirmed"]) == (10, "AQ==", True)
        corr = item["correlation_ids"]
        for kind in ("sent", "ack"):
            out = fixture("tts_down_%s.json" % kind)
            out["end_device_ids"]["device_id"] = "env-node"
            out["downlink_" + kind]["correlation_ids"] = ["as:downlink:x", *corr]
            send_qos0(pub, "v3/%s/devices/env-node/down/%s" % (app, kind), out)
        got = wait_readings(synapse, matrix_user, env, 5)
        outcomes = [(r["name"], r["body"]) for r in got[3:]]
        cid = got[3]["values"][0]["value"]
        assert outcomes == [
            ("downlink_sent", "downlink_sent: command %s" % cid),
            ("downlink_acked", "downlink_acked: command %s" % cid),
        ], got
        assert event_id
        # An unusable command is reported failed at once.
        post(synapse, matrix_user, env["room_id"], env["name"], "dance")
        got = wait_readings(synapse, matrix_user, env, 6)
        assert got[5]["name"] == "downlink_failed"
        time.sleep(1.0)
        assert len(readings(synapse, matrix_user, env)) == 6
    finally:
        stats = b.stop()
        pub.disconnect()
        pub.loop_stop()
        downs.close()
    assert stats["duplicates"] == 1 and stats["fcnt_gaps"] == 2 and stats["not_allowed"] == 0
    assert stats["awaiting_outcome"] == 0 and stats["commands_bad"] == 1


def cs_up(dev_eui: str, f_cnt: int, **changes: Any) -> tuple[str, dict[str, Any]]:
    msg = copy.deepcopy(fixture("cs_up.json"))
    msg["deduplicationId"] = "00000000-0000-4000-8000-%012d" % f_cnt
    msg["deviceInfo"]["devEui"] = dev_eui
    msg["fCnt"] = f_cnt
    msg.update(changes)
    app = msg["deviceInfo"]["applicationId"]
    return "application/%s/device/%s/event/up" % (app, dev_eui), msg


def test_chirpstack_uplinks_exactly_once_and_downlinks(
    tmp_path, proxy_config_path, proxy_factory, synapse, matrix_user, mosquitto: Mosquitto
) -> None:
    json_format = pytest.importorskip("google.protobuf.json_format")
    integration = pytest.importorskip("chirpstack_api.integration")
    app = fixture("cs_up.json")["deviceInfo"]["applicationId"]
    proxy_factory()
    cfg = lorawan_config(
        tmp_path, mosquitto.port, "chirpstack-v4", proxy_config_path, matrix_user.user_id, app, ""
    )
    b = Bridge(cfg)
    pub = publisher(mosquitto.port, "cs-ns")
    downs = Subscriber(mosquitto.port, "application/+/device/+/command/down")
    eui = "70b3d57ed0000001"
    try:
        t, m = cs_up(eui, 1)
        pub.publish(t, json.dumps(m), qos=1).wait_for_publish(5)
        pub.publish(t, json.dumps(m), qos=1).wait_for_publish(5)  # the same deduplicationId
        wait_until(lambda: b.bridge.counters["duplicates"] >= 1, 30, "the duplicate")
        # The topic's DevEUI and the payload's disagree: skipped.
        pub.publish(t.replace(eui, "70b3d57ed0000009"), json.dumps(m), qos=1).wait_for_publish(5)
        wait_until(lambda: b.bridge.counters["bad"] >= 1, 10, "the mismatch to be skipped")
        before = b.restart()
        assert before["duplicates"] == 1 and before["bad"] == 1 and before["enrolled"] == 1, before
        pub.publish(t, json.dumps(m), qos=1).wait_for_publish(5)  # once more, after the restart
        t2, m2 = cs_up(eui, 2, object={"temperature": 19.75, "humidity": 55})
        pub.publish(t2, json.dumps(m2), qos=1).wait_for_publish(5)
        dev = lorawan_device(b.bridge, eui)
        join(synapse, matrix_user, dev["room_id"])
        got = wait_readings(synapse, matrix_user, dev, 2)
        assert [vals(r)["f_cnt"] for r in got] == ["1", "2"]
        assert vals(got[0])["temperature"] == "21.5" and vals(got[1])["temperature"] == "19.75"
        assert vals(got[0])["rssi"] == "-97" and vals(got[0])["sf"] == "12"

        post(
            synapse,
            matrix_user,
            dev["room_id"],
            dev["name"],
            '{"f_port": 15, "hex": "beef", "confirmed": true}',
        )
        msgs = downs.wait_for(1, 20)
        assert msgs
        topic, payload = msgs[0]
        assert topic == "application/%s/device/%s/command/down" % (app, eui)
        cmd = json_format.Parse(payload.decode(), integration.DownlinkCommand())
        assert (cmd.dev_eui, cmd.f_port, cmd.data, cmd.confirmed) == (eui, 15, b"\xbe\xef", True)
        base = "application/%s/device/%s/event/" % (app, eui)
        for kind in ("txack", "ack"):
            ev = fixture("cs_%s.json" % kind)
            ev["deviceInfo"]["devEui"] = eui
            ev["queueItemId"] = cmd.id
            pub.publish(base + kind, json.dumps(ev), qos=1).wait_for_publish(5)
        got = wait_readings(synapse, matrix_user, dev, 4)
        assert [r["name"] for r in got[2:]] == ["downlink_sent", "downlink_acked"]
        time.sleep(1.0)
        assert len(readings(synapse, matrix_user, dev)) == 4
    finally:
        stats = b.stop()
        pub.disconnect()
        pub.loop_stop()
        downs.close()
    assert stats["duplicates"] == 1 and stats["bad"] == 0 and stats["enrolled"] == 0, stats
