"""lowbw end to end over LoRaWAN: a MicroPython device -> the network-server stand-in
(radio_sim, EU868 DR0: 51-byte frames, 1 % duty cycle, class A) -> real mosquitto ->
lowbw lorawan-gateway -> the real proxy -> real Synapse, and back.

The cold IK handshake (about 115 B) crosses as 3 fragments and its answer comes
back as 2 downlinks fetched by polls; readings after it are single frames. Time
runs 100 x faster in the stand-in and the device's duty-cycle clock (airtime,
windows and waits scaled alike); the frames themselves are the real ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from lowbw.adapters.config import MqttSettings
from lowbw.lorawan.gateway import GatewayConfig, LorawanGateway
from radio_sim.lorawan import NetworkServerStandIn

from .conftest import room_events

ROOT = Path(__file__).resolve().parents[2]
MICROPYTHON = Path(sys.executable).parent / "micropython"
SCALE = 0.01
# bench/lorawan.py runs this test with more readings and collects its figures.
N_READINGS = int(os.environ.get("LOWBW_LORAWAN_READINGS", "3"))
BENCH_OUT = os.environ.get("LOWBW_LORAWAN_BENCH_OUT")

MP_SCRIPT = r"""
import sys, json, time
sys.path.insert(0, sys.argv[1])
from lowbw.device import config, store, client, lorawan
cfg = config.load(sys.argv[2])
dev = client.Device(cfg, store.FileStore(sys.argv[3]))
modem = lorawan.UdpModem("127.0.0.1", int(sys.argv[4]), bytes.fromhex(sys.argv[5]))
link = lorawan.LorawanLink(modem, dr=0, time_scale=float(sys.argv[6]))
n = int(sys.argv[7])
times = []
for i in range(n):
    t0 = time.time()
    dev.send(0, [200 + i])
    ok = link.run(dev, until=lambda: dev.pending() == 0, timeout=120)
    times.append(time.time() - t0)
    if not ok:
        print(json.dumps({"error": "timeout", "i": i, "device": dev.counters, "link": link.counters}))
        sys.exit(1)
modem.close()
print(json.dumps({"device": dev.counters, "link": link.counters, "times": times}))
"""


def run_device(tmp_path: Path, conf: Path, standin_port: int, eui: str, n: int) -> dict[str, Any]:
    script = tmp_path / "mp_lorawan.py"
    script.write_text(MP_SCRIPT)
    proc = subprocess.run(
        [
            str(MICROPYTHON),
            "-X",
            "heapsize=2M",
            str(script),
            str(ROOT),
            str(conf),
            str(tmp_path / "dev.state"),
            str(standin_port),
            eui,
            str(SCALE),
            str(n),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.skipif(not MICROPYTHON.exists(), reason="MicroPython unix port not installed")
@pytest.mark.parametrize("fmt", ["tts-v3", "chirpstack-v4"])
def test_micropython_device_across_the_standin_at_dr0(
    tmp_path, fmt, device_factory, proxy_factory, synapse, matrix_user, mosquitto
) -> None:
    dev = device_factory()
    cfg = dict(dev.config)
    # Class A under a 1 % duty cycle: the answer comes after polls, seconds later at
    # this time scale (minutes at DR0 for real); the client must not retransmit before.
    cfg["client"] = {"proxy_allowance": 60, "max_rto": 120, "queue_limit": 32, "batch_limit": 8}
    conf = tmp_path / "dev.json"
    conf.write_text(json.dumps(cfg))
    proxy_factory()
    app = "lowbw-e2e@ttn" if fmt == "tts-v3" else "6d1c2b8a-0d35-4c8e-9d64-0a8c6a3e2f10"
    ns = NetworkServerStandIn(mosquitto.port, fmt=fmt, application=app, preset="eu868-dr0", time_scale=SCALE)
    ns.start()
    gw_cfg = GatewayConfig(
        path=tmp_path / "gw.toml",
        mqtt=MqttSettings(
            port=mosquitto.port, protocol="3.1.1" if fmt == "tts-v3" else "5", client_id="lowbw-gw"
        ),
        format=fmt,
        application=app,
        proxy_host=cfg["proxy"]["host"],
        proxy_port=cfg["proxy"]["port"],
    )
    gw = LorawanGateway(gw_cfg)
    thread = threading.Thread(target=gw.run, daemon=True)
    thread.start()
    eui = "70b3d57ed00000%02x" % (1 if fmt == "tts-v3" else 2)
    try:
        deadline = time.monotonic() + 10
        while not gw.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        result = run_device(tmp_path, conf, ns.port, eui, N_READINGS)
    finally:
        gw.stop()
        thread.join(10)
        ns.stop()
    events = [
        e["content"]["org.lowbw.reading"]
        for e in room_events(synapse.url, matrix_user.access_token, dev.room_id, sender=dev.user_id)
        if "org.lowbw.reading" in e.get("content", {})
    ]
    assert [r["values"][0]["value"] for r in events] == ["%.1f" % (20 + i / 10) for i in range(N_READINGS)]
    d, link, standin, gws = result["device"], result["link"], ns.stats(), gw.stats()
    if BENCH_OUT:
        with open(BENCH_OUT, "a", encoding="utf-8") as f:
            f.write(
                json.dumps(
                    {
                        "format": fmt,
                        "scale": SCALE,
                        "n": N_READINGS,
                        **result,
                        "standin": ns.stats(),
                        "frames": [vars(x) for x in ns.frames],
                    }
                )
                + "\n"
            )
    assert d["acked"] == N_READINGS and d["handshakes"] == 1 and d["retransmissions"] == 0, result
    # The cold handshake crossed in fragments (51-byte frames) and its answer came back in 2.
    assert standin["refused_size"] == 0 and standin["refused_duty"] == 0, standin
    assert link["uplinks"] >= 6 and link["downlinks"] >= 4 and link["refused"] == 0, link
    assert gws["datagrams_up"] == N_READINGS and gws["datagrams_down"] == N_READINGS and gws["bad"] == 0, gws
    print(
        "\nlorawan %s DR0 (time x%g): device %s link %s stand-in %s readings took %s s (scaled)"
        % (fmt, 1 / SCALE, json.dumps(d), json.dumps(link), json.dumps(standin), result["times"])
    )
