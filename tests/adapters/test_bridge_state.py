"""The bridge's duplicate keys: exact after a crash part way through a message (no broker needed).

The bridge is built for real (paho client, device client with a file store),
but not connected: ``_take`` is what runs for each MQTT message, and the
device store is where "queued" is durable.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lowbw.adapters.bridge_state import BridgeState, StateFileError, digest
from lowbw.adapters.config import load_bridge
from lowbw.adapters.mqtt_bridge import Incoming, MqttBridge
from lowbw.device import store

SLOTS = [
    {
        "name": "climate",
        "fields": [
            {"name": "temperature", "unit": "°C", "scale": 1},
            {"name": "humidity", "unit": "%", "scale": 0},
        ],
    },
    {"name": "pressure", "fields": [{"name": "pressure", "unit": "hPa", "scale": 0}]},
]


class Crash(BaseException):
    pass


def make_bridge(tmp_path: Path) -> MqttBridge:
    dev = tmp_path / "dev.json"
    if not dev.exists():
        dev.write_text(
            json.dumps(
                {
                    "version": 1,
                    "name": "site1",
                    "proxy": {"host": "127.0.0.1", "port": 9, "public_key": "11" * 32},
                    "device_private_key": "22" * 32,
                    "slots": SLOTS,
                }
            )
        )
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(
        '[mqtt]\nport = 1\n[bridge]\nstate = "bridge.state"\n'
        '[[device]]\nconfig = "dev.json"\n[[topic]]\nfilter = "site/#"\n'
    )
    return MqttBridge(load_bridge(cfg))


def message(payload: bytes, dup: bool, mid: int = 42) -> Incoming:
    return Incoming("site/a", payload, 1, mid, dup, False, digest(payload))


def queued(tmp_path: Path) -> list[tuple[int, list[object]]]:
    st = store.FileStore(str(tmp_path / "dev.json.state"))
    return [(e[1], e[2]) for e in st.queue]


def test_crash_part_way_then_redelivery_queues_only_the_rest(tmp_path):
    payload = b'{"temperature": 21.5, "humidity": 40, "pressure": 1013}'
    b1 = make_bridge(tmp_path)
    link = b1.links["site1"]
    real_queue = link.queue
    calls = []

    def queue_then_crash(slot, values, when=None):
        if calls:
            raise Crash()
        calls.append(slot)
        return real_queue(slot, values, when)

    link.queue = queue_then_crash  # type: ignore[method-assign]
    with pytest.raises(Crash):
        b1._take(message(payload, dup=False))
    assert queued(tmp_path) == [(0, [215, 40])]
    b1.client.loop_stop()  # nothing flushed or acknowledged: the process "died"

    b2 = make_bridge(tmp_path)
    assert b2.state.seen[42].done == 1  # settled from the device store
    assert b2._take(message(payload, dup=True))
    assert queued(tmp_path) == [(0, [215, 40]), (1, [1013])]
    assert b2.counters["readings"] == 1 and b2.counters["duplicates"] == 0
    b2.close()

    # Another crash before the PUBACK, another redelivery: only acknowledged.
    b3 = make_bridge(tmp_path)
    assert b3._take(message(payload, dup=True))
    assert b3.counters["duplicates"] == 1 and queued(tmp_path) == [(0, [215, 40]), (1, [1013])]
    # The same packet id, topic and payload WITHOUT DUP is a new message.
    assert b3._take(message(payload, dup=False))
    assert len(queued(tmp_path)) == 4
    b3.close()


def test_state_file_is_bounded_and_checked(tmp_path):
    st = BridgeState(tmp_path / "s", keep=16)
    for pid in range(40):
        st.record(pid, "t", "00", "d", pid, 1)
    st.save()
    again = BridgeState(tmp_path / "s", keep=16)
    assert list(again.seen) == list(range(24, 40))
    assert again.reconcile(lambda name: 39) == 1  # pid 39's reading (rid 39) never made it
    assert again.seen[38].done == 1 and again.seen[39].done == 0
    (tmp_path / "s").write_text("{not json")
    with pytest.raises(StateFileError, match="not a bridge state file"):
        BridgeState(tmp_path / "s")
