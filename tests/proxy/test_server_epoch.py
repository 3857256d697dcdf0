"""A device that loses its state file restarts its message counter: the counter
epoch keeps its readings from being mistaken for ones already sent.

Real proxy, real Synapse; the device is ``lowbw device send`` (the real client
with a state file) or a ``WireDevice`` that announces an epoch by hand.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from lowbw.device import cli, store
from lowbw.proxy.registry import Registry
from lowbw.wire import coap, handshake

from .conftest import WireDevice, room_events


def bodies(synapse: Any, user: Any, dev: Any) -> list[str]:
    events = room_events(synapse.url, user.access_token, dev.room_id, dev.user_id)
    return [e["content"]["body"] for e in events]


def send(dev: Any, state: Path, value: str) -> int:
    argv = ["--device-config", str(dev.config_path), "--state", str(state), "--timeout", "20", value]
    return cli.send_main(argv)


def test_device_with_a_wiped_state_file_gets_its_readings_posted(
    device_factory, proxy_factory, synapse, matrix_user, tmp_path
):
    dev = device_factory()
    proxy = proxy_factory()
    state = tmp_path / "dev.state"
    for v in ("211", "212", "213"):
        assert send(dev, state, v) == 0
    os.remove(state)  # flash wiped: the message counter starts again at 0
    for v in ("214", "215"):
        assert send(dev, state, v) == 0
    assert bodies(synapse, matrix_user, dev) == [
        "temperature 21.1 °C",
        "temperature 21.2 °C",
        "temperature 21.3 °C",
        "temperature 21.4 °C",
        "temperature 21.5 °C",
    ]
    # The new state file's epoch is the one the proxy recorded, and the first
    # handshake's answer confirmed it: the device no longer announces it.
    st = store.FileStore(str(state))
    assert st.epoch_confirmed and st.epoch != 0
    with Registry(proxy.settings.registry_path) as reg:
        assert reg.device_epoch(dev.name) == st.epoch


class EpochDevice(WireDevice):
    """A WireDevice whose IK message 1 announces ``epoch`` (None: none)."""

    epoch: int | None = None
    initiator: Any = None

    def ik_datagram(self, msg: Any = None, e_priv: bytes | None = None) -> tuple[bytes, Any]:
        init = handshake.Initiator(
            self.private_key, self.proxy_public_key, caps=self.caps, e_priv=e_priv, epoch=self.epoch
        )
        self.initiator = init
        return init.start(coap.encode(msg) if msg is not None else b""), init


def epoch_device(dev: Any, epoch: int | None) -> EpochDevice:
    wire = EpochDevice.from_config(dev.config)
    assert isinstance(wire, EpochDevice)
    wire.epoch = epoch
    return wire


@pytest.mark.parametrize("impl", ["noiseprotocol", "wire"])
def test_retried_fresh_handshake_with_the_same_epoch_posts_once(
    device_factory, proxy_factory, synapse, matrix_user, impl
):
    dev = device_factory()
    proxy = proxy_factory(handshake_impl=impl)
    old = dev.wire()
    for v in (1, 2, 3):
        assert old.exchange(old.reading([v])).code == coap.CHANGED
    assert old.agreed_caps is not None and not old.agreed_caps & handshake.CAP_EPOCH
    top = proxy.run(lambda: proxy.server.table.msg_top(dev.name))
    assert top == 3

    # Wiped device, epoch E: MID 1 again. Its handshake answer is lost...
    fresh = epoch_device(dev, 0x1234ABCD)
    first = fresh.reading([10], mid=1)
    dgram, _ = fresh.ik_datagram(first)
    assert len(dgram) == len(old.sent[0]) + 4
    fresh.send(dgram)
    fresh.recv()
    # ... so it sends the same reading in a new handshake with the same epoch.
    fresh2 = epoch_device(dev, 0x1234ABCD)
    answer = fresh2.exchange(fresh2.reading([10], mid=1))
    assert answer.code == coap.CHANGED
    assert fresh2.agreed_caps is not None and fresh2.agreed_caps & handshake.CAP_EPOCH
    # Confirmed: later handshakes leave the epoch out and carry on counting.
    later = epoch_device(dev, None)
    assert later.exchange(later.reading([11], mid=2)).code == coap.CHANGED
    assert later.agreed_caps is not None and not later.agreed_caps & handshake.CAP_EPOCH
    # Wiped again, epoch E2: MID 1 is new once more.
    again = epoch_device(dev, 0x0BADCAFE)
    assert again.exchange(again.reading([12], mid=1)).code == coap.CHANGED
    assert bodies(synapse, matrix_user, dev) == [
        "temperature 0.1 °C",
        "temperature 0.2 °C",
        "temperature 0.3 °C",
        "temperature 1.0 °C",
        "temperature 1.1 °C",
        "temperature 1.2 °C",
    ]
    seqs = [
        e["content"]["org.lowbw.reading"]["seq"]
        for e in room_events(synapse.url, matrix_user.access_token, dev.room_id, dev.user_id)
    ]
    assert seqs == [1, 2, 3, 1, 2, 1]
    assert proxy.run(lambda: proxy.server.table.epoch(dev.name)) == 0x0BADCAFE


def test_epoch_survives_a_proxy_restart_and_a_saved_session(
    device_factory, proxy_factory, synapse, matrix_user
):
    dev = device_factory()
    proxy = proxy_factory()
    wire = epoch_device(dev, 7)
    wire.next_mid = 100
    assert wire.exchange(wire.reading([1])).code == coap.CHANGED
    proxy.stop()
    proxy = proxy_factory()
    # The saved session carries on; the registry still knows epoch 7 and the top.
    assert wire.exchange(wire.reading([1], mid=100)).code == coap.CHANGED
    assert wire.exchange(wire.reading([2])).code == coap.CHANGED
    assert proxy.run(lambda: proxy.server.table.epoch(dev.name)) == 7
    assert bodies(synapse, matrix_user, dev) == ["temperature 0.1 °C", "temperature 0.2 °C"]


@pytest.mark.parametrize("impl", ["noiseprotocol", "wire"])
def test_xx_pairing_carries_the_epoch_in_message_3(device_factory, proxy_factory, synapse, matrix_user, impl):
    dev = device_factory()
    proxy = proxy_factory(handshake_impl=impl)
    old = dev.wire()
    for v in (1, 2):
        assert old.exchange(old.reading([v])).code == coap.CHANGED
    wire = dev.wire()
    msg = wire.reading([3], mid=1)  # a wiped device pairs again and counts from the start
    pairing = handshake.Pairing(wire.private_key, epoch=0x00C0FFEE)
    wire.send(pairing.start(coap.encode(msg)))
    session, caps, xx3 = pairing.finish(wire.recv())
    assert caps & handshake.CAP_EPOCH  # the proxy will read the epoch from message 3
    wire.send(xx3)
    wire.session = session
    answer = wire.open(wire.recv())
    assert answer.code == coap.CHANGED and answer.mid == msg.mid
    assert proxy.run(lambda: proxy.server.table.epoch(dev.name)) == 0x00C0FFEE
    assert bodies(synapse, matrix_user, dev) == [
        "temperature 0.1 °C",
        "temperature 0.2 °C",
        "temperature 0.3 °C",
    ]


def test_ik_claiming_an_epoch_it_does_not_carry_gets_no_answer(device_factory, proxy_factory):
    dev = device_factory()
    proxy = proxy_factory()
    wire = dev.wire()
    init = handshake.Initiator(wire.private_key, wire.proxy_public_key)
    init.caps |= handshake.CAP_EPOCH  # the bit, then a 3-byte payload
    wire.send(init.start(b"abc"))
    wire.expect_silence()
    assert proxy.server.stats()["sessions"] == 0
    assert proxy.run(lambda: proxy.server.table.epoch(dev.name)) == 0


def test_replayed_old_epoch_handshake_is_refused_after_its_ephemeral_is_forgotten(
    device_factory, proxy_factory, synapse, matrix_user
):
    dev = device_factory()
    proxy = proxy_factory()
    first = epoch_device(dev, 0x11111111)
    captured, _ = first.ik_datagram(first.reading([1], mid=1))
    first.send(captured)
    first.recv()
    second = epoch_device(dev, 0x22222222)  # wiped again
    assert second.exchange(second.reading([2], mid=1)).code == coap.CHANGED
    # Long after: the replay cache has forgotten the captured ephemeral
    # (the proxy keeps the last 256 per device); drop it by hand.
    import sqlite3

    db = sqlite3.connect(proxy.settings.registry_path)
    db.execute("DELETE FROM ephemerals")
    db.commit()
    db.close()
    attacker = dev.wire()
    attacker.send(captured)
    attacker.expect_silence()
    assert proxy.run(lambda: proxy.server.table.epoch(dev.name)) == 0x22222222
    assert bodies(synapse, matrix_user, dev) == ["temperature 0.1 °C", "temperature 0.2 °C"]
