"""The device, end to end, on the real runtime.

Each scenario runs the firmware under the MicroPython unix port as its own
process (``firmware/main.py``, simulated climate sensor, UDP link), through its
own ``python -m radio_sim relay`` at 100 bit/s, to the proxy as an operator
runs it (``python -m lowbw proxy run``), to the session's real Synapse; the
room is read back as an ordinary user reads it (``/messages``). The scenarios
run side by side (tests/e2e/stack.py); each test asserts on the evidence its
scenario gathered.

What a device logs (firmware/app.py, lowbw/device/client.py) and what the
proxy logs (lowbw/proxy) are part of the evidence: "-> KK" (or "-> IK", the
standard profile) / "-> frame" for each transmission, "<- 2.04 for #N v" for
each answer, the proxy's "NAME: KK handshake" for each handshake it accepted.
Devices are enrolled for the proxy's 100 bit/s link, so they get the compact
link profile (docs/PROTOCOL.md); the "standard" scenario runs the standard
one (Noise IK, 16-byte tags) the same way.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from firmware.sensors.simulated import Simulated
from tests.e2e.stack import Device, Env, Runs, rendered, samples, scenario, summary

KEY = "org.lowbw.reading"
# Generous: nothing here is a timing assertion, only a bound on a hung run.
LIMIT = 600.0


@dataclass
class Outcome:
    dev: Device
    runs: list[Any]  # the firmware processes, in order
    events: list[dict[str, Any]]  # the device's events in its room, oldest first
    radio: dict[str, Any]  # the relay's counters at the end
    proxy_lines: list[str]  # the proxy's log lines about this device
    extra: dict[str, Any] = field(default_factory=dict)

    def handshakes_at_proxy(self) -> int:
        pattern = r"%s: (IK|KK) handshake" % re.escape(self.dev.name)
        return sum(1 for line in self.proxy_lines if re.search(pattern, line))


def finish(env: Env, dev: Device, relay: Any, runs: list[Any], **extra: Any) -> Outcome:
    radio = relay.snapshot()
    proxy_lines = [line for _, line in env.proxy.lines() if dev.name in line]
    return Outcome(dev, runs, env.room(dev), radio, proxy_lines, extra)


def wait_exit(proc: Any, timeout: float = LIMIT) -> int:
    deadline = time.monotonic() + timeout
    while proc.running() and time.monotonic() < deadline:
        time.sleep(0.2)
    if proc.running():
        proc.stop()
        raise AssertionError("%s still running after %.0f s:\n%s" % (proc.name, timeout, proc.tail()))
    code: int = proc.wait(10)
    return code


def values_in_room(o: Outcome) -> list[list[str | None]]:
    return [[v["value"] for v in ev["content"][KEY]["values"]] for ev in o.events]


def assert_exactly_once(o: Outcome, expected: list[list[int | None]]) -> None:
    """The room holds exactly these readings, each once, in order."""
    want = [rendered(values, o.dev.scales) for values in expected]
    got = values_in_room(o)
    assert got == want, "room %s, sampled %s" % (got, want)
    ids = [(ev["content"][KEY]["seq"], ev["content"][KEY].get("index", 0)) for ev in o.events]
    assert len(set(ids)) == len(ids), ids
    for ev in o.events:
        assert ev["content"][KEY]["device"] == o.dev.name
        assert ev["content"]["body"].startswith("climate: temperature ")


def log_text(o: Outcome) -> str:
    return "\n\n".join("--- %s ---\n%s" % (p.log_path.name, p.tail(60)) for p in o.runs) + (
        "\n--- proxy ---\n" + "\n".join(o.proxy_lines[-40:])
    )


# ------------------------------------------------------------------ scenarios


@scenario("delivery")
def run_delivery(env: Env) -> Outcome:
    dev = env.enroll("deliv")
    relay = env.relay(dev)
    fw = env.firmware(dev, relay, cycles=4, interval=6, seed=11)
    wait_exit(fw)
    return finish(env, dev, relay, [fw])


@scenario("standard")
def run_standard(env: Env) -> Outcome:
    dev = env.enroll("std", profile="standard")
    relay = env.relay(dev)
    fw = env.firmware(dev, relay, cycles=3, interval=6, seed=29)
    wait_exit(fw)
    return finish(env, dev, relay, [fw])


@scenario("lossy")
def run_lossy(env: Env) -> Outcome:
    dev = env.enroll("lossy")
    # radio_sim draws loss per transmission, so whatever the timing, seed 37 loses
    # the 3rd downlink transmission (an answer: the proxy has posted the reading,
    # the device retries it) and the 4th uplink one (that retry: the device then
    # re-handshakes, carrying the same message number), then more later on.
    relay = env.relay(dev, "lossy-100bps", seed=37)
    fw = env.firmware(dev, relay, cycles=5, interval=5, seed=12)
    wait_exit(fw)
    return finish(env, dev, relay, [fw])


@scenario("restart")
def run_restart(env: Env) -> Outcome:
    dev = env.enroll("restart")
    relay = env.relay(dev)
    first = env.firmware(dev, relay, interval=5, seed=13)  # no --cycles: runs until killed
    i, _ = first.wait_for(r"<- 2\.04 for #\d+ v", LIMIT)
    i, _ = first.wait_for(r"<- 2\.04 for #\d+ v", LIMIT, start=i + 1)
    _, m = first.wait_for(r"-> frame #(\d+) v", LIMIT, start=i + 1)
    # 19 B up (the compact profile) take 1.5 s on air: by now the proxy has the
    # reading and its 9-byte 2.04 (0.7 s of airtime, after the homeserver's
    # answer) is still on the way. The device dies without it.
    time.sleep(1.9)
    first.kill()
    second = env.firmware(dev, relay, cycles=2, run=2)
    wait_exit(second)
    return finish(env, dev, relay, [first, second], inflight=int(m.group(1)))


@scenario("command")
def run_command(env: Env) -> Outcome:
    dev = env.enroll("cmd")
    relay = env.relay(dev)
    fw = env.firmware(dev, relay, interval=6, seed=17)
    fw.wait_for(r"<- 2\.04 for #\d+ v", LIMIT)
    env.say(dev, "nice weather")  # an ordinary message: not a command
    event_id = env.say(dev, "!%s set_interval 9" % dev.name)
    _, m = fw.wait_for(r"command (\d+) from (\S+): ", LIMIT)
    cid = int(m.group(1))
    env.proxy.wait_for(r"%s: command %d delivered" % (re.escape(dev.name), cid), LIMIT)
    from lowbw.proxy.registry import Registry

    assert env.config_path is not None
    with Registry(env.config_path.parent / "registry.sqlite3") as registry:
        pending = registry.count_pending(dev.name)
    fw.stop()
    settings = (dev.dir / "firmware.json.state.settings").read_text()
    return finish(env, dev, relay, [fw], event_id=event_id, cid=cid, pending=pending, settings=settings)


@scenario("revoked")
def run_revoked(env: Env) -> Outcome:
    dev = env.enroll("revoked")
    assert env.config_path is not None
    revoke = env.lowbw("device", "revoke", "--config", str(env.config_path), dev.name)
    relay = env.relay(dev)
    fw = env.firmware(dev, relay, cycles=1, interval=60, seed=19)
    # The first retransmission of the IK comes 26-39 s after the first try.
    i, _ = fw.wait_for(r"no answer to handshake", LIMIT)
    fw.wait_for(r"-> KK #\d+ v \(\d+ B, try 2\)", LIMIT, start=i)
    time.sleep(0.5)  # on its way through the relay
    fw.stop()
    return finish(env, dev, relay, [fw], revoke=revoke)


@scenario("encrypted")
def run_encrypted(env: Env) -> Outcome:
    from tests.e2ee.person import Person, notices

    dev = env.enroll("enc", encrypted=True)
    person = Person(env.hs_url, env.user_id, env.password, dev.dir / "person")
    try:
        relay = env.relay(dev)
        fw = env.firmware(dev, relay, cycles=3, interval=6, seed=23)
        wait_exit(fw)
        # A command typed into the encrypted room reaches the device's callback.
        second = env.firmware(dev, relay, interval=6, seed=24, run=2)
        second.wait_for(r"<- 2\.04 for #\d+ v", LIMIT)
        event_id = person.say(dev.room_id, "!%s set_interval 9" % dev.name)
        _, m = second.wait_for(r"command (\d+) from (\S+): ", LIMIT)
        env.proxy.wait_for(r"%s: command %s delivered" % (re.escape(dev.name), m.group(1)), LIMIT)
        second.stop()
        posted = [e for e in env.raw_room(dev) if e["type"] == "m.room.encrypted"]
        deadline = time.monotonic() + 60

        def mine() -> list[Any]:
            # The e2e user is in every scenario's room: this device's readings only.
            return [n for n in notices(person.seen) if n.sender == dev.user_id]

        decrypted = mine()
        while len(decrypted) < len(posted) and time.monotonic() < deadline:
            person.sync(2000)
            decrypted = mine()
        settings = (dev.dir / "firmware.json.state.settings").read_text()
    finally:
        person.close()
    return finish(
        env, dev, relay, [fw, second], raw=env.raw_room(dev), decrypted=[n.source for n in decrypted],
        event_id=event_id, command_sender=m.group(2), settings=settings,
    )


# ---------------------------------------------------------------------- tests


@pytest.mark.e2e_scenario("delivery")
def test_readings_reach_the_room_exactly_once_with_measurement_times(runs: Runs) -> None:
    o: Outcome = runs.result("delivery")
    fw = o.runs[0]
    assert fw.returncode == 0, log_text(o)
    # The device ran the built (frozen) tree, not the sources.
    assert fw.count(r"running the sources") == 0, log_text(o)
    s = summary(fw)
    assert s is not None and s["pending"] == 0 and s["acked"] == 4, log_text(o)
    assert s["handshakes"] == 1 and o.handshakes_at_proxy() == 1
    sampled = samples(fw)
    assert [rid for rid, _, _ in sampled] == [0, 1, 2, 3]
    # The simulated sensor is a function of (seed, n): the log parse is right.
    assert [v for _, v, _ in sampled] == [Simulated(seed=11).value(n) for n in range(4)]
    assert_exactly_once(o, [v for _, v, _ in sampled])

    # Measurement times: the event's origin_server_ts is the time the device
    # sampled, up to the airtime of the request that carried it (the device
    # sends ages in whole seconds and does not subtract its own airtime: up to
    # 5.6 s for the 70-byte KK that carries a fresh store's first reading).
    for (rid, _, sampled_at), ev in zip(sampled, o.events, strict=True):
        ts = ev["origin_server_ts"]
        assert ev["content"][KEY]["measured_at"] == ts
        lag = ts / 1000 - sampled_at
        assert -1.0 <= lag <= 10.5, "reading %d: origin_server_ts %.2f s after sampling" % (rid, lag)
    # Radio: what the device sent is what crossed the relay, none lost.
    assert o.radio["up"]["offered_frames"] == fw.count(r"-> (KK|frame) #")
    assert o.radio["up"]["dropped_frames"] == 0 and o.radio["down"]["dropped_frames"] == 0
    # The compact profile's sizes, as the device logged them (a two-value
    # reading: 2 bytes more than the one-value budgets of bench/wire_bytes.py).
    kk = [int(n) for n in re.findall(r"-> KK #\d+ v \((\d+) B", fw.text())]
    warm = [int(n) for n in re.findall(r"-> frame #\d+ v \((\d+) B", fw.text())]
    assert len(kk) == 1 and kk[0] <= 70 and warm and max(warm) <= 20, (kk, warm)


@pytest.mark.e2e_scenario("standard")
def test_the_standard_profile_still_delivers_exactly_once(runs: Runs) -> None:
    o: Outcome = runs.result("standard")
    fw = o.runs[0]
    assert fw.returncode == 0, log_text(o)
    s = summary(fw)
    assert s is not None and s["pending"] == 0 and s["acked"] == 3 and s["handshakes"] == 1, log_text(o)
    assert fw.count(r"-> IK #") == 1 and fw.count(r"-> KK #") == 0
    assert any("%s: IK handshake" % o.dev.name in line for line in o.proxy_lines)
    assert_exactly_once(o, [v for _, v, _ in samples(fw)])
    # Standard sizes: 16-byte tags, 2-byte session ids.
    warm = [int(n) for n in re.findall(r"-> frame #\d+ v \((\d+) B", fw.text())]
    assert warm and min(warm) >= 30, warm


@pytest.mark.e2e_scenario("lossy")
def test_a_batch_arrives_exactly_once_through_bursty_loss(runs: Runs) -> None:
    o: Outcome = runs.result("lossy")
    fw = o.runs[0]
    assert fw.returncode == 0, log_text(o)
    s = summary(fw)
    assert s is not None and s["pending"] == 0 and s["acked"] == 5 and s["rejected"] == 0, log_text(o)
    sampled = samples(fw)
    assert [rid for rid, _, _ in sampled] == [0, 1, 2, 3, 4]
    assert_exactly_once(o, [v for _, v, _ in sampled])
    # The run did test loss, both ways: a lost request and a lost answer.
    assert o.radio["up"]["dropped"]["loss"]["frames"] > 0, o.radio["up"]
    assert o.radio["down"]["dropped"]["loss"]["frames"] > 0, o.radio["down"]
    assert fw.count(r", try \d+\)") > 0  # the device retransmitted


@pytest.mark.e2e_scenario("restart")
def test_killed_and_restarted_device_loses_and_duplicates_nothing_without_a_handshake(runs: Runs) -> None:
    o: Outcome = runs.result("restart")
    first, second = o.runs
    assert second.returncode == 0, log_text(o)
    # The reading in flight at the kill is resumed with its message number.
    assert "resuming request #%d (v) from the store" % o.extra["inflight"] in second.text(), log_text(o)
    # No handshake after the restart: not in the device's log or counters, not at the proxy.
    assert second.count(r"-> (IK|KK)") == 0, log_text(o)
    s = summary(second)
    assert s is not None and s["handshakes"] == 0 and s["pending"] == 0, log_text(o)
    assert first.count(r"-> KK") == 1
    assert o.handshakes_at_proxy() == 1, log_text(o)
    # Every reading ever sampled, exactly once: ids continue across the kill,
    # and the last one the second run sampled bounds them all.
    last = samples(second)[-1][0]
    assert last >= 4
    sim = Simulated(seed=13)
    logged = samples(first) + samples(second)
    for rid, values, _ in logged:
        assert values == sim.value(rid)
    assert_exactly_once(o, [sim.value(n) for n in range(last + 1)])


@pytest.mark.e2e_scenario("command")
def test_a_command_from_the_room_reaches_the_device_callback(runs: Runs) -> None:
    o: Outcome = runs.result("command")
    fw = o.runs[0]
    cid = o.extra["cid"]
    text = fw.text()
    # The application's callback (firmware/app.py) acted on it: one command only,
    # the ordinary message before it was not one.
    assert re.search(r"command %d from @e2e_\w+:lowbw\.test: interval now 9 s" % cid, text), log_text(o)
    assert len(re.findall(r"command \d+ from \S+: (interval|unknown|bad|sampling)", text)) == 1
    assert o.extra["settings"] == '{"interval": 9}'
    # Acknowledged: the proxy's durable queue is empty.
    assert o.extra["pending"] == 0
    assert any("command %d queued" % cid in line for line in o.proxy_lines)
    assert any("command %d delivered" % cid in line for line in o.proxy_lines)


@pytest.mark.e2e_scenario("revoked")
def test_a_revoked_device_gets_nowhere_and_says_so(runs: Runs) -> None:
    o: Outcome = runs.result("revoked")
    fw = o.runs[0]
    assert o.extra["revoke"].returncode == 0, o.extra["revoke"].stderr
    assert re.search(
        r"no answer to handshake \(\d+ tries\): proxy down, or this device's key unknown or revoked",
        fw.text(),
    ), log_text(o)
    assert fw.count(r"<- ") == 0  # nothing ever came back
    assert o.events == []
    assert o.radio["up"]["offered_frames"] >= 2  # it kept trying ...
    assert o.radio["down"]["offered_frames"] == 0  # ... and the proxy never answered
    assert o.handshakes_at_proxy() == 0


@pytest.mark.e2e_scenario("encrypted")
def test_encrypted_room_readings_are_megolm_and_commands_arrive(runs: Runs) -> None:
    o: Outcome = runs.result("encrypted")
    fw, second = o.runs
    assert fw.returncode == 0, log_text(o)
    s = summary(fw)
    assert s is not None and s["pending"] == 0 and s["acked"] == 3, log_text(o)
    # The homeserver holds only ciphertext from the device.
    types = [e["type"] for e in o.extra["raw"] if "state_key" not in e]
    assert types and set(types) == {"m.room.encrypted"}, types
    assert o.events == []  # nothing readable as m.room.message
    # The person decrypts each reading once, with the fields an unencrypted room shows.
    sampled = samples(fw) + samples(second)
    contents = [d["content"] for d in o.extra["decrypted"]]
    assert len(contents) == len(types) >= 3
    seqs = [(c[KEY]["seq"], c[KEY].get("index", 0)) for c in contents]
    assert len(set(seqs)) == len(seqs), seqs
    want = [rendered(values, o.dev.scales) for _, values, _ in sampled]
    got = [[v["value"] for v in c[KEY]["values"]] for c in contents]
    assert got[: len(want)] == want[: len(got)] and got[:3] == want[:3], (got, want)
    for c in contents:
        assert c[KEY]["device"] == o.dev.name and c["body"].startswith("climate: temperature ")
    # The encrypted command reached the device's callback.
    assert o.extra["command_sender"].startswith("@e2e_")
    assert "9" in o.extra["settings"], o.extra["settings"]
