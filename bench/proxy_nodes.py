"""Several ``lowbw proxy run`` processes on one fleet: ``python bench/proxy_load.py --nodes N``.

One PostgreSQL (``lowbw.testing.postgres``), the sink homeserver of
bench/proxy_load.py, one ``proxy.toml`` with ``registry = "postgresql://..."``
and ``[cluster] nodes = N``. Two saturated runs with the same simulated warm
devices (closed loop, one UDP socket each, this process):

1. one proxy process (``[cluster]`` off, the same PostgreSQL registry);
2. N processes (``lowbw proxy run --node K``) bound to the same UDP port with
   ``SO_REUSEPORT``: the kernel spreads the devices' source addresses over
   them, every handshake lands where the kernel sends it, and the session id
   says which node owns it (frames that land elsewhere are forwarded).

``speedup`` = readings/s of run 2 / readings/s of run 1. Also reported: the
proxies' CPU per reading, how busy the whole machine was (all cores: the
simulated devices, the sink and PostgreSQL share them with the proxies), and
the datagrams forwarded between nodes (``lowbw proxy run`` prints nothing of
that at WARNING; the count comes from the proxies' stats at stop).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import proxy_load as pl  # noqa: E402
from lowbw.proxy.registry import DeviceRecord, Registry  # noqa: E402
from lowbw.testing.postgres import PostgresServer  # noqa: E402


class NodeProcess:
    """``lowbw proxy run --config C [--node K]`` at WARNING logging."""

    def __init__(self, config_path: Path, node: int | None) -> None:
        env = {**os.environ, "LOWBW_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "lowbw", "proxy", "run", "--config", str(config_path)]
        if node is not None:
            cmd += ["--node", str(node)]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("lowbw proxy listening"):
            self.proc.kill()
            raise RuntimeError("proxy did not start: %s%s" % (line, self.proc.stdout.read()))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        return out


def _config(work: Path, sink_url: str, pg_url: str, nodes: int, port: int) -> Any:
    cfg = pl.write_default(
        work,
        sink_url,
        server_name="sink.test",
        port=port,
        appservice_listen="127.0.0.1:%d" % pl.free_port(),
        registry=pg_url,
    ).config
    pl.bench_limits(cfg)
    if nodes > 1:
        with open(cfg.path, "a", encoding="utf-8") as f:
            f.write('\n[cluster]\nnodes = %d\nforward = "127.0.0.1:0"\n' % nodes)
    return cfg


def _saturate(
    procs: list[NodeProcess], addr: tuple[str, int], proxy_pub: bytes, keys: Any, duration: float
) -> dict[str, Any]:
    devices = [pl.SimDevice("d%d" % i, priv, pub) for i, (priv, pub) in enumerate(keys)]

    async def run() -> dict[str, Any]:
        await pl.warm_up(devices, addr, proxy_pub)
        cpu0 = sum(pl.cpu_seconds(p.pid) for p in procs)
        load = await pl.run_load(devices, addr, duration, procs[0].pid)
        cpu = sum(pl.cpu_seconds(p.pid) for p in procs) - cpu0
        for dev in devices:
            dev.transport.close()
        load["proxies"] = len(procs)
        load["proxy_cpu_s"] = round(cpu, 2)
        load["proxy_cpu_share_of_one_core"] = round(cpu / load["seconds"], 2)
        load["proxy_cpu_us_per_reading"] = (
            round(cpu / load["readings"] * 1e6, 1) if load["readings"] else None
        )
        return load

    return asyncio.run(run())


def bench_nodes(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    nodes = int(args.nodes)
    sink = pl.Sink()
    try:
        with PostgresServer() as pg:
            url = pg.new_database()
            port = pl.free_port(socket.SOCK_DGRAM)
            keys = pl.new_keys(args.devices)
            with Registry(url) as reg:
                for i, (_, pub) in enumerate(keys):
                    name = "d%d" % i
                    reg.add_device(
                        DeviceRecord(
                            name=name,
                            public_key=pub,
                            user_id="@lowbw_%s:sink.test" % name,
                            rooms=[pl.ROOM],
                            slots=pl.SLOTS,
                        )
                    )
            runs: dict[str, Any] = {}
            for count in (1, nodes):
                cfg = _config(work / ("n%d" % count), sink.url, url, count, port)
                procs = [NodeProcess(cfg.path, k if count > 1 else None) for k in range(count)]
                try:
                    time.sleep(0.5)
                    runs[str(count)] = _saturate(
                        procs, (cfg.proxy.bind, cfg.proxy.port), cfg.read_public_key(), keys, args.duration
                    )
                finally:
                    for p in procs:
                        p.stop()
                sink.reset()
            one, many = runs["1"], runs[str(nodes)]
            return {
                "nodes": nodes,
                "devices": args.devices,
                "registry": "postgresql",
                "one_process": one,
                "n_processes": many,
                "speedup": round(many["readings_per_s"] / one["readings_per_s"], 2)
                if one["readings_per_s"]
                else None,
            }
    finally:
        sink.stop()


def summary(result: dict[str, Any]) -> dict[str, Any]:
    one, many = result["one_process"], result["n_processes"]
    return {
        "nodes": result["nodes"],
        "readings_per_s_1": one["readings_per_s"],
        "readings_per_s_n": many["readings_per_s"],
        "speedup": result["speedup"],
        "cpu_us_per_reading_1": one["proxy_cpu_us_per_reading"],
        "cpu_us_per_reading_n": many["proxy_cpu_us_per_reading"],
        "machine_busy_cores_1": one["machine_busy_cores"],
        "machine_busy_cores_n": many["machine_busy_cores"],
        "devices_cpu_share_1": one["devices_cpu_share_of_one_core"],
        "devices_cpu_share_n": many["devices_cpu_share_of_one_core"],
    }
