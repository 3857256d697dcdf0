"""Several ``lowbw proxy run`` processes on one fleet: ``python bench/proxy_load.py --nodes N``.

One PostgreSQL (``lowbw.testing.postgres``), the sink homeserver of
bench/proxy_load.py, one ``proxy.toml`` with ``registry = "postgresql://..."``
and ``[cluster] nodes = N``. Three saturated runs with the same simulated warm
devices (closed loop, one UDP socket each, this process):

0. one proxy process on an SQLite registry (a single proxy as before);
1. one proxy process (``[cluster]`` off, the same PostgreSQL registry);
2. N processes (``lowbw proxy run --node K``) bound to the same UDP port with
   ``SO_REUSEPORT``: the kernel spreads the devices' source addresses over
   them, every handshake lands where the kernel sends it, and the session id
   says which node owns it (frames that land elsewhere are forwarded).

The devices continue at message number 1000 after their handshake (a device
whose session has run a while: its numbers are above the registry's top + 64,
so on PostgreSQL a reading makes one round trip, ``lowbw.proxy.freshtxn``; the
first 64 readings after a handshake make two). Each run gets a fresh registry.

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

# Message number the simulated devices continue from after their handshake.
STEADY_MID = 1000


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


def _config(work: Path, sink_url: str, registry: str, nodes: int, port: int) -> Any:
    cfg = pl.write_default(
        work,
        sink_url,
        server_name="sink.test",
        port=port,
        appservice_listen="127.0.0.1:%d" % pl.free_port(),
        registry=registry,
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
        for dev in devices:
            # Steady state: a device whose session has run a while sends numbers
            # above its registry top + 64 (lowbw.proxy.freshtxn).
            dev.mid = STEADY_MID
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
            port = pl.free_port(socket.SOCK_DGRAM)
            keys = pl.new_keys(args.devices)

            def fresh_registry(label: str) -> str:
                """A new registry with the devices enrolled: every run starts with an
                empty sent table (a reading of an earlier run with the same message
                number would be skipped as a retry, without the HTTP request)."""
                if label.startswith("pg"):
                    where = pg.new_database(unix_socket=True)
                else:
                    path = work / ("%s.sqlite3" % label)
                    where = str(path)
                with Registry(where) as reg:
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
                return where

            rounds = max(1, int(getattr(args, "rounds", None) or 1))
            all_runs: dict[str, list[dict[str, Any]]] = {"sqlite_1": [], "pg_1": [], "pg_n": []}
            # (label, registry, processes): a single proxy on SQLite as before,
            # one on PostgreSQL, N on PostgreSQL; interleaved ``rounds`` times, so
            # a neighbour's load on a shared machine falls on all three alike.
            for r in range(rounds):
                for label, count in (("sqlite_1", 1), ("pg_1", 1), ("pg_n", nodes)):
                    run_name = "%s-%d" % (label, r)
                    where = fresh_registry(run_name)
                    cfg = _config(work / run_name, sink.url, where, count, port)
                    procs = [NodeProcess(cfg.path, k if count > 1 else None) for k in range(count)]
                    outputs: list[str] = []
                    try:
                        time.sleep(0.5)
                        run = _saturate(
                            procs,
                            (cfg.proxy.bind, cfg.proxy.port),
                            cfg.read_public_key(),
                            keys,
                            args.duration,
                        )
                    finally:
                        for p in procs:
                            outputs.append(p.stop())
                    known = [st for out in outputs for st in pl.longest_registry_calls(out)]
                    worst: tuple[float | None, str | None] = max(known) if known else (None, None)
                    run["max_loop_stall_ms"], run["max_loop_stall_op"] = worst
                    all_runs[label].append(run)
                    sink.reset()
            # The median run of each (by readings/s); every run is kept in "rounds".
            runs = {
                label: sorted(rs, key=lambda x: x["readings_per_s"])[len(rs) // 2]
                for label, rs in all_runs.items()
            }
            base, one, many = runs["sqlite_1"], runs["pg_1"], runs["pg_n"]

            def ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
                return round(a["readings_per_s"] / b["readings_per_s"], 2) if b["readings_per_s"] else None

            return {
                "nodes": nodes,
                "devices": args.devices,
                "sqlite_one_process": base,
                "one_process": one,
                "n_processes": many,
                "speedup": ratio(many, one),
                "speedup_vs_sqlite": ratio(many, base),
                "rounds": all_runs,
            }
    finally:
        sink.stop()


def summary(result: dict[str, Any]) -> dict[str, Any]:
    base, one, many = result["sqlite_one_process"], result["one_process"], result["n_processes"]
    return {
        "nodes": result["nodes"],
        "readings_per_s_sqlite_1": base["readings_per_s"],
        "readings_per_s_1": one["readings_per_s"],
        "readings_per_s_n": many["readings_per_s"],
        "speedup": result["speedup"],
        "speedup_vs_sqlite_1": result["speedup_vs_sqlite"],
        "cpu_us_per_reading_sqlite_1": base["proxy_cpu_us_per_reading"],
        "cpu_us_per_reading_1": one["proxy_cpu_us_per_reading"],
        "cpu_us_per_reading_n": many["proxy_cpu_us_per_reading"],
        "machine_busy_cores": [
            base["machine_busy_cores"],
            one["machine_busy_cores"],
            many["machine_busy_cores"],
        ],
        "devices_cpu_share": [
            base["devices_cpu_share_of_one_core"],
            one["devices_cpu_share_of_one_core"],
            many["devices_cpu_share_of_one_core"],
        ],
        "max_loop_stall_ms": [base["max_loop_stall_ms"], one["max_loop_stall_ms"], many["max_loop_stall_ms"]],
        "max_loop_stall_op": [base["max_loop_stall_op"], one["max_loop_stall_op"], many["max_loop_stall_op"]],
        "rounds": len(result["rounds"]["pg_n"]),
        "readings_per_s_all": {k: [r["readings_per_s"] for r in v] for k, v in result["rounds"].items()},
    }
