"""Several ``lowbw proxy run`` processes on one fleet: ``python bench/proxy_load.py --nodes N``.

One PostgreSQL (``lowbw.testing.postgres``), a sink homeserver, one
``proxy.toml`` with ``registry = "postgresql://..."`` and ``[cluster] nodes =
N``. Three saturated runs with the same simulated warm devices (closed loop,
one UDP socket each, this process):

0. one proxy process on an SQLite registry (a single proxy as before);
1. one proxy process (``[cluster]`` off, the same PostgreSQL registry);
2. N processes (``lowbw proxy run --node K``) bound to the same UDP port with
   ``SO_REUSEPORT``: the kernel spreads the devices' source addresses over
   them, every handshake lands where the kernel sends it, and the session id
   says which node owns it (frames that land elsewhere are forwarded).

What is measured is the proxies, so the rest is made cheap and the same for
all three runs: the devices are bench/loadgen.py (frames sealed before the
window, an epoll loop that only sends and receives, every answer opened and
checked afterwards; ``--generator asyncio``: proxy_load.py's devices), the
sink is nginx answering from its configuration (bench/nginx_sink.py;
``--sink aiohttp`` or nginx missing: proxy_load.py's sink), and the sink and
PostgreSQL run at the bench's scheduling priority (``share_priority``).

The devices continue at message number 1000 after their handshake (a device
whose session has run a while: its numbers are above the registry's top + 64,
so on PostgreSQL a reading's lookup is answered from memory,
``lowbw.proxy.freshtxn``, and its row written behind, ``lowbw.proxy.writebehind``).
Each run gets a fresh registry.

``speedup`` = readings/s of run 2 / readings/s of run 1 (medians of the
rounds; ``speedup_by_round`` pairs each round's runs). Also reported: CPU per
reading of the proxies, the devices, the sink and PostgreSQL (``/proc/PID/stat``
over the window), each proxy's share of a core, and how busy the whole machine
was (all cores, every process: 2.0 = both cores busy).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
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

from bench import loadgen as lg  # noqa: E402
from bench import proxy_load as pl  # noqa: E402
from bench.nginx_sink import NginxSink, children  # noqa: E402
from bench.nginx_tls import NginxError  # noqa: E402
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


class CpuMeter:
    """CPU seconds of the bench's parts over the measured window (``/proc/PID/stat``):
    the proxies, the sink homeserver, PostgreSQL (its postmaster and every backend),
    and the whole machine (``machine_busy_cores``)."""

    def __init__(
        self, proxies: list[int], sink: list[int], postgres: int | None, sink_requests: Any = None
    ) -> None:
        self.groups = {"proxies": proxies, "sink": sink}
        self.postgres = postgres
        # () -> requests the sink served so far (nginx), or None.
        self.sink_requests = sink_requests

    def _pids(self) -> dict[str, list[int]]:
        pids = dict(self.groups)
        if self.postgres is not None:
            pids["postgres"] = [self.postgres, *children(self.postgres)]
        return pids

    def sample(self) -> dict[str, float]:
        out: dict[str, float] = {"machine": pl.machine_busy()}
        for group, pids in self._pids().items():
            total = 0.0
            for pid in pids:
                try:
                    total += pl.cpu_seconds(pid)
                except OSError:
                    pass  # a backend that ended: its time is lost (only at a connection's end)
            out[group] = total
        out["devices_sys"] = _sys_seconds(os.getpid())
        out["sink_sys"] = sum(_sys_seconds(p) for p in self.groups["sink"])
        for pid in self.groups["proxies"]:
            try:
                out["proxy %d" % pid] = pl.cpu_seconds(pid)
            except OSError:
                out["proxy %d" % pid] = 0.0
        return out


def share_priority(pids: list[int]) -> None:
    """Give ``pids``' scheduling groups this process's priority.

    nginx (its own session, for its process group) and PostgreSQL (pg_ctl starts
    it with setsid) each get an autogroup of their own at nice 0, while the
    proxies and the devices run in the caller's, which a bench run on the shared
    machine raises (``echo -19 > /proc/self/autogroup``). At weights of ~70:1 the
    sink and the database wait for a CPU behind the proxies they answer, the
    proxies wait for them, and a core idles. Where the kernel has no autogroups
    (or refuses): nothing changes.
    """
    try:
        with open("/proc/self/autogroup") as f:
            nice = int(f.read().split("nice")[1])
    except (OSError, IndexError, ValueError):
        return
    for pid in pids:
        try:
            with open("/proc/%d/autogroup" % pid, "w") as f:
                f.write(str(nice))
        except OSError:
            pass


def _sys_seconds(pid: int) -> float:
    """Kernel-mode CPU seconds of ``pid`` (its sends and receives on loopback)."""
    try:
        return pl.cpu_ticks(pid)[1] / pl.TICKS
    except (OSError, ValueError, IndexError):
        return 0.0


def _postmaster_pid(pg: PostgresServer) -> int | None:
    try:
        assert pg.dir is not None
        return int((pg.dir / "data" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError, AssertionError):
        return None


def _shares(load: dict[str, Any], before: dict[str, float], after: dict[str, float]) -> None:
    """CPU of each part over the window: share of one core and µs per reading."""
    seconds, n = load["seconds"], load["readings"]
    cpu = {k: after[k] - before[k] for k in after}
    for part in ("sink", "postgres"):
        if part in cpu:
            load["%s_cpu_share_of_one_core" % part] = round(cpu[part] / seconds, 2)
            load["%s_cpu_us_per_reading" % part] = round(cpu[part] / n * 1e6, 1) if n else None
    load["machine_busy_cores"] = round(cpu["machine"] / seconds, 2)
    for part in ("devices", "sink"):
        load["%s_sys_us_per_reading" % part] = round(cpu["%s_sys" % part] / n * 1e6, 1) if n else None
    load["proxy_cpu_s"] = round(cpu["proxies"], 2)
    load["proxy_cpu_share_of_one_core"] = round(cpu["proxies"] / seconds, 2)
    load["proxy_cpu_us_per_reading"] = round(cpu["proxies"] / n * 1e6, 1) if n else None
    # Each process's share: an uneven split of the devices (the kernel hashes source
    # ports) or a process that waits shows here.
    load["proxy_cpu_share_each"] = [
        round((after[k] - before[k]) / seconds, 2) for k in sorted(after) if k.startswith("proxy ")
    ]
    load["machine_cpu_us_per_reading"] = round(cpu["machine"] / n * 1e6, 1) if n else None


def _saturate(
    procs: list[NodeProcess],
    addr: tuple[str, int],
    proxy_pub: bytes,
    keys: Any,
    duration: float,
    meter: CpuMeter,
    generator: str,
) -> dict[str, Any]:
    if generator == "asyncio":
        return _saturate_asyncio(procs, addr, proxy_pub, keys, duration, meter)
    devices = [lg.FastDevice("d%d" % i, priv, pub) for i, (priv, pub) in enumerate(keys)]
    try:
        handshakes = lg.connect(devices, addr, proxy_pub)
        for dev in devices:
            # Steady state: a device whose session has run a while sends numbers
            # above its registry top + 64 (lowbw.proxy.freshtxn).
            dev.mid = STEADY_MID
        handshake_retries = sum(d.retries for d in devices)
        for dev in devices:
            dev.retries = 0
        sealing = lg.seal_ahead(devices, lg.default_frames(duration, len(devices)))
        time.sleep(0.2)  # the handshakes' registry writes are done
        gc.collect()
        gc.disable()
        try:
            requests0 = meter.sink_requests() if meter.sink_requests else None
            before = meter.sample()
            load = lg.run(devices, duration)
            after = meter.sample()  # (includes the drain of the last answers: < 10 ms)
        finally:
            gc.enable()
        sent: int | None = None
        if requests0 is not None:
            # PUTs the sink answered for this run's readings (its two status requests
            # taken off): one per answered reading, or a reading was not posted (a
            # retransmitted reading is answered from the sent table, without one).
            sent = meter.sink_requests() - requests0 - 1
            answered = sum(len(d.answers) for d in devices)
            retried = sum(d.retries for d in devices)
            if not answered - retried <= sent <= answered:
                raise RuntimeError("%d readings answered, %d sent to the sink" % (answered, sent))
        checked = lg.verify(devices)
    finally:
        for dev in devices:
            dev.close()
    n = load["readings"]
    out: dict[str, Any] = {
        "generator": "epoll, sealed ahead",
        "devices": len(devices),
        "readings": n,
        "seconds": duration,
        "readings_per_s": round(n / duration, 1),
        "rtt_ms_p50": lg.percentile_ms(devices, 50),
        "rtt_ms_p99": lg.percentile_ms(devices, 99),
        "retransmissions": sum(d.retries for d in devices),
        "handshake_seconds": round(handshakes, 2),
        "handshake_retries": handshake_retries,
        "sealing_seconds": round(sealing, 2),
        "sealed_on_the_fly": sum(1 for d in devices if not d.sealed_ahead),
        "unanswered_at_end": load["unanswered_at_end"],
        # The sink's count of sends in the run (nginx), checked against the answers.
        "sink_requests": sent,
        **checked,
        "devices_cpu_share_of_one_core": round(load["cpu_s"] / duration, 2),
        "devices_cpu_us_per_reading": round(load["cpu_s"] / n * 1e6, 1) if n else None,
    }
    _shares(out, before, after)
    out["proxies"] = len(procs)
    if checked["answers_bad"]:
        raise RuntimeError("%d answers did not verify (%s)" % (checked["answers_bad"], out))
    return out


def _saturate_asyncio(
    procs: list[NodeProcess],
    addr: tuple[str, int],
    proxy_pub: bytes,
    keys: Any,
    duration: float,
    meter: CpuMeter,
) -> dict[str, Any]:
    """The simulated devices of bench/proxy_load.py (asyncio, a seal per reading when due)."""
    devices = [pl.SimDevice("d%d" % i, priv, pub) for i, (priv, pub) in enumerate(keys)]

    async def run() -> dict[str, Any]:
        await pl.warm_up(devices, addr, proxy_pub)
        for dev in devices:
            dev.mid = STEADY_MID
        before = meter.sample()
        load = await pl.run_load(devices, addr, duration, procs[0].pid)
        after = meter.sample()
        for dev in devices:
            dev.transport.close()
        load["generator"] = "asyncio, sealed when due"
        load["devices_cpu_us_per_reading"] = (
            round(load["devices_cpu_share_of_one_core"] * load["seconds"] / load["readings"] * 1e6, 1)
            if load["readings"]
            else None
        )
        _shares(load, before, after)
        load["proxies"] = len(procs)
        return load

    return asyncio.run(run())


def bench_nodes(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    nodes = int(args.nodes)
    sink: Any = None
    sink_kind = getattr(args, "sink", None) or "auto"
    if sink_kind in ("auto", "nginx"):
        try:
            sink = NginxSink()
        except NginxError as exc:
            if sink_kind == "nginx":
                raise
            print("nginx sink unavailable (%s): the aiohttp sink instead" % exc, file=sys.stderr)
    if sink is None:
        sink = pl.Sink()
    sink_name = "nginx" if isinstance(sink, NginxSink) else "aiohttp"
    sink_pids = sink.pids if isinstance(sink, NginxSink) else [sink.proc.pid]
    generator = getattr(args, "generator", None) or "epoll"
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
                        postmaster = _postmaster_pid(pg)
                        share_priority(sink_pids + ([postmaster] if postmaster else []))
                        meter = CpuMeter(
                            [p.pid for p in procs],
                            sink_pids,
                            postmaster,
                            sink.requests if isinstance(sink, NginxSink) else None,
                        )
                        run = _saturate(
                            procs,
                            (cfg.proxy.bind, cfg.proxy.port),
                            cfg.read_public_key(),
                            keys,
                            args.duration,
                            meter,
                            generator,
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
                "sink": sink_name,
                "generator": generator,
                "sqlite_one_process": base,
                "one_process": one,
                "n_processes": many,
                "speedup": ratio(many, one),
                # Each round's own ratio (its runs were back to back: the same neighbours).
                "speedup_by_round": [
                    ratio(n, o) for o, n in zip(all_runs["pg_1"], all_runs["pg_n"], strict=True)
                ],
                "speedup_vs_sqlite": ratio(many, base),
                "rounds": all_runs,
            }
    finally:
        sink.stop()


def summary(result: dict[str, Any]) -> dict[str, Any]:
    base, one, many = result["sqlite_one_process"], result["one_process"], result["n_processes"]

    def each(key: str) -> list[Any]:
        return [base.get(key), one.get(key), many.get(key)]

    return {
        "nodes": result["nodes"],
        "sink": result.get("sink"),
        "generator": result.get("generator"),
        "readings_per_s_sqlite_1": base["readings_per_s"],
        "readings_per_s_1": one["readings_per_s"],
        "readings_per_s_n": many["readings_per_s"],
        "speedup": result["speedup"],
        "speedup_vs_sqlite_1": result["speedup_vs_sqlite"],
        "speedup_by_round": result.get("speedup_by_round"),
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
        # CPU per reading of each part, [sqlite 1, pg 1, pg N]: where the machine's time goes.
        "devices_cpu_us_per_reading": each("devices_cpu_us_per_reading"),
        "sink_cpu_us_per_reading": each("sink_cpu_us_per_reading"),
        "postgres_cpu_us_per_reading": each("postgres_cpu_us_per_reading"),
        "machine_cpu_us_per_reading": each("machine_cpu_us_per_reading"),
        "devices_sys_us_per_reading": each("devices_sys_us_per_reading"),
        "sink_sys_us_per_reading": each("sink_sys_us_per_reading"),
        "sink_cpu_share": each("sink_cpu_share_of_one_core"),
        "postgres_cpu_share": each("postgres_cpu_share_of_one_core"),
        "proxy_cpu_share": each("proxy_cpu_share_of_one_core"),
        "proxy_cpu_share_each": many.get("proxy_cpu_share_each"),
        "answers_verified": sum(r.get("answers_verified", 0) for rs in result["rounds"].values() for r in rs),
        "max_loop_stall_ms": [base["max_loop_stall_ms"], one["max_loop_stall_ms"], many["max_loop_stall_ms"]],
        "max_loop_stall_op": [base["max_loop_stall_op"], one["max_loop_stall_op"], many["max_loop_stall_op"]],
        "rounds": len(result["rounds"]["pg_n"]),
        "readings_per_s_all": {k: [r["readings_per_s"] for r in v] for k, v in result["rounds"].items()},
    }
