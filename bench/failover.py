"""Failover of a proxy node, end to end: ``python bench/failover.py [--json]``.

What it runs (also the end-to-end test tests/scale_out/test_scale_out.py): a real
PostgreSQL (``lowbw.testing.postgres``) as the shared registry, a real Synapse
(``lowbw.testing.synapse``), two ``lowbw proxy run`` processes (``--node 0``
and ``--node 1`` of ``[cluster] nodes = 2``) on one UDP port with
``SO_REUSEPORT``, and ``DEVICES`` MicroPython devices (``firmware/main.py``
under the unix port), each behind its own ``python -m radio_sim relay`` at
1 kbit/s (preset ``1kbps``: the frames of a 100 bit/s link, ten times faster).

Once every device has readings acknowledged and a command queued, the node
holding the most sessions gets SIGKILL. Its devices' next frames reach the
other node, which drops them (their owner is gone); the devices hear nothing,
make a new handshake there carrying the same reading, and carry on.

Checked (AssertionError otherwise): every reading in each room exactly once
and in order (a prefix of what the device sampled, at least everything it saw
acknowledged), every command delivered to the device's application exactly
once and acknowledged in the queue. Reported: per moved device, the bytes it
sent and heard from the kill until its first answer after the new handshake,
and the *extra* bytes against one warm reading (frame + 2.04).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import secrets
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = Path(__file__).resolve().parents[1]


def load_demo() -> ModuleType:
    """scripts/demo.py as a module (processes, relays, firmware, enrolment, Matrix calls)."""
    name = "lowbw_scripts_demo"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


demo = load_demo()

from lowbw.testing.firmwarelog import rendered, samples, summary  # noqa: E402  (after sys.path)

KEY = "org.lowbw.reading"
DEVICES = 4
LIMIT = 240.0
SCHEMA = "climate=temperature:°C:1,humidity:%:0"

# "-> frame #3 v (17 B)", "-> KK #3 v (70 B, try 3)", "-> IK+cookie ...": the handshake names its pattern.
SENT_RE = re.compile(r"-> ([A-Z]{2}(?:\+cookie)?|frame) #(\d+) \w+ \((\d+) B")
ANSWER_RE = re.compile(r"<- (\S+) for #(\d+) \w+ \((\d+) B\)")


def count(conn: Any, sql: str) -> int:
    row = conn.execute(sql).fetchone()
    return int(row[0]) if row else 0


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


def scenario(synapse: Any, appservice: Any, url: str, workdir: Path) -> dict[str, Any]:
    """Run the failover against ``synapse`` (a running ``SynapseServer`` that loaded
    ``appservice``) with the registry at ``url``; the report (module docstring)."""
    import psycopg

    from lowbw.proxy.config import write_default

    # Imported by name: firmware/ is MicroPython code, outside mypy's files.
    Simulated = importlib.import_module("firmware.sensors.simulated").Simulated
    ensure_built = importlib.import_module("firmware.build").ensure_built

    ensure_built()
    assert appservice.url is not None
    cfg = write_default(
        workdir / "proxy",
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
                workdir / ("proxy%d.log" % node),
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
            d = workdir / name
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
                lambda: count(conn, "SELECT count(*) FROM commands") >= DEVICES,
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
            pending = count(conn, "SELECT count(*) FROM commands WHERE acked_ms IS NULL")
        assert pending == 0
        delivered = sum(len(re.findall(r": command \d+ delivered", p.text())) for p in proxies)
        assert delivered == DEVICES, (survivor.tail(60), proxies[victim].tail(60))
        extra = [e["failover"]["extra"] for e in report["devices"].values() if "failover" in e]
        report["failover_extra_bytes"] = extra
        assert extra, "no device was on the killed node"
        return report
    finally:
        for p in reversed(procs):
            p.stop(timeout=10)


def main(argv: list[str] | None = None) -> int:
    from lowbw.testing.postgres import PostgresServer
    from lowbw.testing.synapse import SynapseServer, free_port, write_appservice_registration

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="one JSON line: the extra bytes per moved device")
    p.add_argument("--out", help="also write the whole report as JSON here")
    args = p.parse_args(argv)
    importlib.import_module("firmware.build").ensure_built()
    with tempfile.TemporaryDirectory(prefix="lowbw-failover-") as tmp:
        work = Path(tmp)
        reg = write_appservice_registration(
            work / "appservice.yaml",
            id="lowbw-proxy",
            as_token=secrets.token_urlsafe(24),
            hs_token=secrets.token_urlsafe(24),
            url="http://127.0.0.1:%d" % free_port(),
            sender_localpart="lowbw",
            user_namespace_regex=r"@lowbw_.*:lowbw\.test",
        )
        with (
            PostgresServer() as pg,
            SynapseServer(server_name="lowbw.test", app_service_config_files=[reg.path]) as hs,
        ):
            report = scenario(hs, reg, pg.new_database(unix_socket=True), work)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        moved = [d["failover"] for d in report["devices"].values() if "failover" in d]
        print(
            json.dumps(
                {
                    "killed_node": report["killed_node"],
                    "sessions_per_node": report["sessions_per_node"],
                    "moved_devices": len(moved),
                    "failover_extra_bytes": report["failover_extra_bytes"],
                    "failover_bytes_up_down": [[m["up"], m["down"]] for m in moved],
                    "warm_exchange_bytes": [m["warm"] for m in moved],
                }
            )
        )
    else:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
