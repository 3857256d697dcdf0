"""What an encrypted device costs the proxy: memory, homeserver requests, CPU, and one reading.

A real Synapse (appservice mode) and ``lowbw proxy run`` as its own process.
N devices are enrolled into encrypted rooms (``lowbw.proxy.enroll``, the
enrollment code an operator runs); the proxy brings up one Matrix device per
device user (login, key upload, cross-signing, its sync loop). Measured from
outside the proxy process:

* ``rss_per_device_kb``: proxy resident memory growth per encrypted device
  once all are ready, against the same proxy with the devices unencrypted;
* ``startup_s_per_device``: time until every device logged "ready";
* ``idle_cpu_ms_per_device_min``: the sync loops' idle cost (each is a
  30-second long poll, so two ``/sync`` requests per idle minute);
* ``reading_ms_encrypted`` / ``reading_ms_plain``: one reading, device round
  trip over loopback (median of a few), encrypted room vs plain room.

Usage: python bench/e2ee_devices.py [--devices N] [--idle S] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lowbw.proxy.config import load, write_default  # noqa: E402
from lowbw.proxy.enroll import enroll  # noqa: E402
from lowbw.testing.synapse import SynapseServer, free_port, write_appservice_registration  # noqa: E402

SLOTS = [{"name": "temperature", "fields": [{"name": "temperature", "unit": "°C", "scale": 1}]}]
TICKS = os.sysconf("SC_CLK_TCK")


class Proxy:
    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lowbw", "proxy", "run", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self.up = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.up.wait(60):
            raise SystemExit("proxy did not start:\n" + "".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("lowbw proxy listening"):
                self.up.set()

    def count(self, text: str) -> int:
        return sum(text in line for line in list(self.lines))

    def rss(self) -> int:
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def cpu(self) -> float:
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def reading_ms(config: dict[str, Any], tries: int = 5) -> float:
    """Median device round trip of one reading (WireDevice-like, loopback), waiting out 5.03s."""
    import socket

    from lowbw.wire import coap, handshake, reading, routes

    proxy = config["proxy"]
    addr = (proxy["host"], int(proxy["port"]))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(20)
    ini = handshake.Initiator(bytes.fromhex(config["device_private_key"]), bytes.fromhex(proxy["public_key"]))
    sock.sendto(ini.start(b""), addr)
    session, _caps, _ = ini.finish(sock.recv(2048))
    times: list[float] = []
    mid = 1
    while len(times) < tries:
        mid += 1
        msg = coap.Message(
            coap.CON,
            coap.POST,
            mid,
            b"",
            ((coap.URI_PATH, routes.ROUTE_READING.encode()),),
            reading.encode_readings([(0, [mid], 0)]),
        )
        t0 = time.monotonic()
        sock.sendto(session.seal(coap.encode(msg)), addr)
        answer = coap.decode(session.open(sock.recv(2048)))
        if answer.code == coap.CHANGED:
            times.append((time.monotonic() - t0) * 1000)
        else:
            time.sleep(0.5)
    sock.close()
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=20)
    p.add_argument("--idle", type=float, default=60.0, help="seconds of idle measurement")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="lowbw-e2ee-bench-"))
    reg = write_appservice_registration(
        work / "as.yaml",
        id="lowbw",
        as_token=secrets.token_urlsafe(24),
        hs_token=secrets.token_urlsafe(24),
        url="http://127.0.0.1:%d" % free_port(),
        sender_localpart="lowbw",
        user_namespace_regex=r"@lowbw_.*:bench\.test",
    )
    out: dict[str, Any] = {"devices": args.devices}
    with SynapseServer(server_name="bench.test", app_service_config_files=[reg.path]) as syn:
        configs: dict[bool, list[dict[str, Any]]] = {}
        rss: dict[bool, int] = {}
        for encrypted in (False, True):
            result = write_default(
                work / ("proxy-%s" % encrypted),
                syn.url,
                server_name="bench.test",
                port=free_port(),
                link_bps=1_000_000,
                appservice_listen=reg.url.removeprefix("http://") if reg.url else "",
                user_prefix="lowbw_",
                appservice_id=reg.id,
                sender_localpart=reg.sender_localpart,
                as_token=reg.as_token,
                hs_token=reg.hs_token,
            )
            cfg = load(result.config.path)
            configs[encrypted] = []
            for i in range(args.devices):
                r = asyncio.run(
                    enroll(
                        cfg, "b%s%d" % ("e" if encrypted else "p", i), "new", slots=SLOTS, encrypted=encrypted
                    )
                )
                configs[encrypted].append(json.loads(Path(r.config_path).read_text()))
            t0 = time.monotonic()
            proxy = Proxy(result.config.path)
            try:
                if encrypted:
                    while proxy.count("end-to-end encryption ready") < args.devices:
                        if time.monotonic() - t0 > 60 + 10 * args.devices:
                            raise SystemExit("not all devices came up:\n" + "".join(proxy.lines[-20:]))
                        time.sleep(0.2)
                    out["startup_s_per_device"] = round((time.monotonic() - t0) / args.devices, 3)
                else:
                    time.sleep(2)
                rss[encrypted] = proxy.rss()
                out["reading_ms_%s" % ("encrypted" if encrypted else "plain")] = round(
                    reading_ms(configs[encrypted][0]), 1
                )
                if encrypted:
                    cpu0 = proxy.cpu()
                    time.sleep(args.idle)
                    spent = proxy.cpu() - cpu0
                    per_minute = spent * 1000 / args.devices / (args.idle / 60)
                    out["idle_cpu_ms_per_device_min"] = round(per_minute, 2)
            finally:
                proxy.stop()
        out["rss_plain_mb"] = round(rss[False] / 1e6, 1)
        out["rss_encrypted_mb"] = round(rss[True] / 1e6, 1)
        out["rss_per_device_kb"] = round((rss[True] - rss[False]) / args.devices / 1024, 1)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
