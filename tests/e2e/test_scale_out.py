"""Two ``lowbw proxy run`` processes on one fleet, one of them killed with SIGKILL mid-stream.

The real pieces: PostgreSQL (``lowbw.testing.postgres``) as the shared registry,
the session's Synapse, two proxies (``--node 0`` and ``--node 1`` of
``[cluster] nodes = 2``) bound to one UDP port with ``SO_REUSEPORT`` and
sharing the appservice port, and MicroPython devices (``firmware/main.py``
under the unix port) each behind its own ``python -m radio_sim relay``
(preset ``1kbps``: the same frames as at 100 bit/s, ten times faster, so the
failover takes seconds, not minutes). The kernel spreads the relays' source
addresses over the two processes.

Once every device has readings acknowledged and a command queued, the node
holding the most sessions is killed. Its devices' next frames reach the other
node, which drops them (their owner is gone); the devices hear nothing, make
a new handshake there (KK for compact devices, IK otherwise) carrying the same reading, and carry on. Checked:
every reading in each room exactly once and in order (a prefix of what the
device sampled, at least everything it saw acknowledged), every command
delivered exactly once, and the bytes the failover cost each moved device
(printed; the figure in docs/scale-out.md comes from here).
"""

from __future__ import annotations

import re
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from firmware.sensors.simulated import Simulated
from tests.e2e.stack import demo, rendered, samples, summary

KEY = "org.lowbw.reading"
DEVICES = 4
LIMIT = 240.0
SCHEMA = "climate=temperature:°C:1,humidity:%:0"

# "-> frame #3 v (17 B)", "-> KK #3 v (70 B, try 3)", "-> IK+cookie ...": the handshake names its pattern.
SENT_RE = re.compile(r"-> ([A-Z]{2}(?:\+cookie)?|frame) #(\d+) \w+ \((\d+) B")
ANSWER_RE = re.compile(r"<- (\S+) for #(\d+) \w+ \((\d+) B\)")


def acks(fw: Any) -> int:
    return fw.count(r"<- 2\.04 for #\d+ v")


def wait_until(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.25)
    raise AssertionError("timed out waiting for %s" % what)


def failover_bytes(fw: Any, killed_at: float) -> dict[str, Any]:
    """What the device sent and heard from the kill until its first answer after a new
    handshake, against one warm reading (frame + 2.04) from before the kill."""
    warm_up = warm_down = 0
    up = down = 0
    window: list[str] = []
    handshake_seen = False
    done = False
    for t, line in fw.lines():
        sent = SENT_RE.search(line)
        heard = ANSWER_RE.search(line)
        if t < killed_at:
            if sent and sent.group(1) == "frame" and "try" not in line:
                warm_up = int(sent.group(3))
            if heard and heard.group(1) == "2.04":
                warm_down = int(heard.group(3))
            continue
        if done:
            break
        if sent or heard:
            window.append(line.split(": ", 1)[-1])
        if sent:
            up += int(sent.group(3))
            if sent.group(1) != "frame":
                handshake_seen = True
        if heard:
            down += int(heard.group(3))
            if handshake_seen:
                done = True
    return {
        "up": up,
        "down": down,
        "warm": warm_up + warm_down,
        "extra": up + down - (warm_up + warm_down),
        "window": window,
    }


def test_two_proxies_one_killed_every_reading_and_command_once(
    synapse: Any, appservice: Any, postgres: Any, tmp_path: Path
) -> None:
    from firmware.build import ensure_built
    from lowbw.proxy.config import write_default

    ensure_built()
    url = postgres.new_database(unix_socket=True)
    assert appservice.url is not None
    cfg = write_default(
        tmp_path / "proxy",
        synapse.url,
        server_name="lowbw.test",
        port=demo.free_udp_port(),
        link_bps=1000,
        mode="appservice",
        appservice_listen=appservice.url.removeprefix("http://"),
        user_prefix="lowbw_",
        appservice_id=appservice.id,
        sender_localpart=appservice.sender_localpart,
        as_token=appservice.as_token,
        hs_token=appservice.hs_token,
        registry=url,
    ).config
    with open(cfg.path, "a", encoding="utf-8") as f:
        f.write('\n[cluster]\nnodes = 2\nforward = "127.0.0.1:0"\nnode_timeout = 3.0\n')
    password = secrets.token_urlsafe(12)
    user_id, token = synapse.register_user("so_%s" % secrets.token_hex(4), password)

    procs: list[Any] = []
    try:
        proxies = []
        for node in (0, 1):
            p = demo.Proc(
                "proxy%d" % node,
                [
                    sys.executable,
                    "-m",
                    "lowbw",
                    "proxy",
                    "run",
                    "--config",
                    str(cfg.path),
                    "--node",
                    str(node),
                ],
                tmp_path / ("proxy%d.log" % node),
                cwd=demo.ROOT,
                track=procs,
            )
            p.wait_for(r"lowbw proxy listening on udp", 60)
            proxies.append(p)

        devices = []
        for i in range(DEVICES):
            name = "so-%d-%s" % (i, secrets.token_hex(2))
            config = demo.enroll(cfg.path, name, schema=[SCHEMA], invite=[user_id])
            demo.join_room(synapse.url, token, config["room_id"])
            d = tmp_path / name
            d.mkdir()
            relay = demo.Relay(
                ("127.0.0.1", cfg.proxy.port), d / "relay.log", d / "radio.json", preset="1kbps", track=procs
            )
            path = demo.firmware_config(
                config,
                d / "firmware.json",
                relay=(relay.host, relay.port),
                interval=2,
                seed=100 + i,
                client={"proxy_allowance": 2, "max_rto": 8},
            )
            fw = demo.start_firmware(path, d / "device.log", track=procs)
            devices.append((name, config, relay, fw))

        for name, _, _, fw in devices:
            wait_until(lambda fw=fw: acks(fw) >= 2, LIMIT, "%s: two readings acknowledged" % name)

        # Which node holds which device's session (the registry says).
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT device, node FROM cluster_sessions").fetchall()
        where = {str(d): int(n) for d, n in rows}
        assert set(where) == {name for name, _, _, _ in devices}, where
        per_node = [sum(1 for n in where.values() if n == k) for k in (0, 1)]
        victim = 0 if per_node[0] >= per_node[1] else 1

        # A command for every device, queued before the kill.
        for name, config, _, _ in devices:
            status, body = demo.matrix(
                synapse.url,
                "PUT",
                "/_matrix/client/v3/rooms/%s/send/m.room.message/%s"
                % (demo.quote(config["room_id"]), secrets.token_hex(8)),
                token,
                {"msgtype": "m.text", "body": "!%s set_interval 2" % name},
            )
            assert status == 200, body
        with psycopg.connect(url) as conn:
            wait_until(
                lambda: conn.execute("SELECT count(*) FROM commands").fetchone()[0] >= DEVICES,
                60,
                "every command queued",
            )

        acked_before = {name: acks(fw) for name, _, _, fw in devices}
        killed_at = time.time()
        proxies[victim].kill()
        moved = [name for name, n in where.items() if n == victim]

        for name, _, _, fw in devices:
            wait_until(
                lambda name=name, fw=fw: (
                    acks(fw) >= acked_before[name] + 3 and fw.count(r"command \d+ from ") >= 1
                ),
                LIMIT,
                "%s: three more readings and its command after the kill" % name,
            )
        survivor = proxies[1 - victim]
        for _, _, _, fw in devices:
            fw.stop(sig=2)  # SIGINT: the firmware prints its summary
        time.sleep(1.0)

        report: dict[str, Any] = {"killed_node": victim, "sessions_per_node": per_node, "devices": {}}
        for name, config, relay, fw in devices:
            dev_log = fw.text()
            sampled = samples(fw)
            scales = [int(f.get("scale", 0)) for f in config["slots"][0]["fields"]]
            status, body = demo.matrix(
                synapse.url,
                "GET",
                "/_matrix/client/v3/rooms/%s/messages" % demo.quote(config["room_id"]),
                token,
                query={"dir": "b", "limit": 1000},
            )
            assert status == 200, body
            events = [
                e
                for e in reversed(body["chunk"])
                if e.get("type") == "m.room.message" and KEY in e.get("content", {})
            ]
            got = [[v["value"] for v in e["content"][KEY]["values"]] for e in events]
            sim = Simulated(seed=100 + devices.index((name, config, relay, fw)))
            want = [rendered(sim.value(rid), scales) for rid, _, _ in sampled]
            # Exactly once, in order: a prefix of what was sampled, at least what was acknowledged.
            assert got == want[: len(got)], "%s: room %s, sampled %s\n%s" % (name, got, want, fw.tail(40))
            assert len(got) >= acks(fw), (name, len(got), acks(fw))
            ids = [(e["content"][KEY]["seq"], e["content"][KEY].get("index", 0)) for e in events]
            assert len(set(ids)) == len(ids), ids
            # The command: delivered to the application once.
            assert len(re.findall(r"command \d+ from \S+: interval now 2 s", dev_log)) == 1, fw.tail(60)
            s = summary(fw)
            assert s is not None, fw.tail(20)
            entry: dict[str, Any] = {"node": where[name], "handshakes": s.get("handshakes")}
            if name in moved:
                entry["failover"] = failover_bytes(fw, killed_at)
                assert s.get("handshakes", 0) >= 2, fw.tail(60)
            report["devices"][name] = entry
        # The queue: every command acknowledged once.
        with psycopg.connect(url) as conn:
            pending = conn.execute("SELECT count(*) FROM commands WHERE acked_ms IS NULL").fetchone()[0]
        assert pending == 0
        delivered = sum(len(re.findall(r": command \d+ delivered", p.text())) for p in proxies)
        assert delivered == DEVICES, (survivor.tail(60), proxies[victim].tail(60))
        extra = [e["failover"]["extra"] for e in report["devices"].values() if "failover" in e]
        report["failover_extra_bytes"] = extra
        print("\nscale-out failover: %s" % report)
        assert extra, "no device was on the killed node"
    finally:
        for p in reversed(procs):
            p.stop(timeout=10)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-s"]))
