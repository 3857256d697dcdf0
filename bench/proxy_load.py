"""Load on the proxy: many warm devices sending readings at once.

The proxy runs as an operator runs it (``python -m lowbw proxy run --config``,
its own process, logging at WARNING); the simulated devices are a second
process (this one): real lowbw.wire sessions on one UDP socket each, every
device sending its next reading as soon as the previous one is acknowledged
(closed loop). Two homeservers:

* ``sink``: a minimal aiohttp server (a third process) that accepts sends and
  stamps each request with CLOCK_MONOTONIC on arrival and departure, so the
  latency the proxy adds is measured per reading: device round trip minus the
  time the request spent in the sink.
* ``synapse``: the real Synapse (appservice, one room, every event stored).
  Synapse cannot be stamped from outside, so "added" there is the device
  round-trip percentile minus the same percentile of direct HTTP sends made at
  the same concurrency: an estimate, labelled as such.

Also measured: the proxy's CPU time per reading and share of one core
(``/proc/PID/stat``), and its resident memory growth for idle sessions
(``/proc/PID/status`` VmRSS before and after K extra devices each completed an
IK handshake with no request, then sent nothing).

Output: JSON on stdout (``--out FILE`` too). ``--quick`` runs small and short.

Usage: python bench/proxy_load.py [--quick] [--devices N] [--duration S]
       [--idle-sessions K] [--synapse-devices M] [--no-synapse] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lowbw.proxy.config import write_default  # noqa: E402
from lowbw.proxy.registry import DeviceRecord, Registry  # noqa: E402
from lowbw.wire import coap, crypto, handshake, reading, routes  # noqa: E402

SLOTS = [{"name": "temperature", "fields": [{"name": "temperature", "unit": "°C", "scale": 1}]}]
ROOM = "!bench:sink.test"
TICKS = os.sysconf("SC_CLK_TCK")


# ---- the proxy's process -------------------------------------------------------------


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_ticks(pid: int) -> tuple[int, int]:
    """(user, system) clock ticks ``pid`` has used (``/proc/PID/stat``); OSError if gone."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def cpu_seconds(pid: int) -> float:
    return sum(cpu_ticks(pid)) / TICKS


def machine_busy() -> float:
    """CPU seconds all cores spent not idle since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / TICKS


def rss_bytes(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class ProxyProcess:
    """``lowbw proxy run``; ``fast_paths=False`` runs it as before issue 13
    (``LOWBW_PROXY_FAST_PATHS=0``: asyncio's loop, every request through aiocoap,
    WAL checkpoints inside the commits)."""

    def __init__(
        self, config_path: Path, fast_paths: bool = True, log_level: str = "WARNING", uvloop: bool = True
    ) -> None:
        env = {
            **os.environ,
            "LOWBW_LOG_LEVEL": log_level,
            "LOWBW_PROXY_UVLOOP": "1" if uvloop else "0",
            "PYTHONUNBUFFERED": "1",
            "LOWBW_PROXY_FAST_PATHS": "1" if fast_paths else "0",
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lowbw", "proxy", "run", "--config", str(config_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        # Log lines may come first (--proxy-log DEBUG): up to the ready line.
        seen = []
        while True:
            line = self.proc.stdout.readline()
            if line.startswith("lowbw proxy listening"):
                break
            seen.append(line)
            if not line or len(seen) > 10000:
                self.proc.kill()
                raise RuntimeError("proxy did not start: %s%s" % ("".join(seen), self.proc.stdout.read()))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        return out


def longest_registry_calls(proxy_output: str) -> list[tuple[float, str]]:
    """(ms, operation) per phase: one per SIGUSR1 report ("longest registry call X ms:
    op (since the last report)"), then the one of the proxy's stop line."""
    return [
        (float(m.group(1)), m.group(2).strip())
        for m in re.finditer(r"longest registry call ([0-9.]+) ms: ([^()\n]*)", proxy_output)
    ]


def mark_phase(pid: int) -> None:
    """Ask the proxy for its longest registry call since the last mark (SIGUSR1)."""
    os.kill(pid, signal.SIGUSR1)


# ---- the sink homeserver (its own process) -------------------------------------------


def _sink_main(port: int, ready: Any) -> None:
    import gc

    from aiohttp import web

    # The sink's own collector pauses would be counted as latency the proxy
    # adds (they delay the arrival stamp); it makes no reference cycles worth
    # collecting during a run.
    gc.collect()
    gc.freeze()
    gc.disable()

    stamps: dict[str, tuple[float, float]] = {}

    async def send(request: web.Request) -> web.Response:
        t_in = time.monotonic()
        await request.read()
        txn = request.match_info["txn"]
        resp = web.json_response({"event_id": "$" + txn})
        stamps[txn] = (t_in, time.monotonic())
        return resp

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(stamps)

    async def reset(request: web.Request) -> web.Response:
        stamps.clear()
        return web.json_response({})

    app = web.Application()
    app.router.add_put("/_matrix/client/v3/rooms/{room}/send/{etype}/{txn}", send)
    app.router.add_post("/_matrix/client/v1/appservice/{id}/ping", ok)
    app.router.add_get("/_stats", stats)
    app.router.add_post("/_reset", reset)
    ready.set()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, handle_signals=True)


class Sink:
    def __init__(self) -> None:
        self.port = free_port()
        ctx = multiprocessing.get_context("spawn")
        ready = ctx.Event()
        self.proc = ctx.Process(target=_sink_main, args=(self.port, ready), daemon=True)
        self.proc.start()
        ready.wait(20)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sink did not start")

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    def _call(self, method: str, path: str) -> Any:
        import urllib.request

        req = urllib.request.Request(self.url + path, method=method, data=b"" if method == "POST" else None)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=60) as resp:
            return json.loads(resp.read())

    def stamps(self) -> dict[str, tuple[float, float]]:
        return {k: (v[0], v[1]) for k, v in self._call("GET", "/_stats").items()}

    def reset(self) -> None:
        self._call("POST", "/_reset")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join(10)


# ---- simulated devices ----------------------------------------------------------------


@dataclass
class SimDevice:
    name: str
    priv: bytes
    pub: bytes
    session: Any = None
    mid: int = 1
    transport: Any = None
    waiter: asyncio.Future[bytes] | None = None
    rtts: list[tuple[int, float, float]] = field(default_factory=list)  # (msgnum, t0, t3)
    retries: int = 0


class DeviceProtocol(asyncio.DatagramProtocol):
    def __init__(self, dev: SimDevice) -> None:
        self.dev = dev

    def datagram_received(self, data: bytes, addr: Any) -> None:
        w = self.dev.waiter
        if w is not None and not w.done():
            w.set_result(data)


def reading_request(mid: int, value: int) -> bytes:
    msg = coap.Message(
        mtype=coap.CON, code=coap.POST, mid=mid, payload=reading.encode_readings([(0, [value], 0)])
    )
    coap.set_uri_path(msg, [routes.ROUTE_READING])
    return bytes(coap.encode(msg))


async def open_device(dev: SimDevice) -> None:
    loop = asyncio.get_running_loop()
    dev.transport, _ = await loop.create_datagram_endpoint(
        lambda: DeviceProtocol(dev), local_addr=("127.0.0.1", 0)
    )


async def roundtrip(dev: SimDevice, proxy: tuple[str, int], dgram: bytes, timeout: float) -> bytes:
    loop = asyncio.get_running_loop()
    dev.waiter = loop.create_future()
    dev.transport.sendto(dgram, proxy)
    return await asyncio.wait_for(dev.waiter, timeout)


async def handshake_device(dev: SimDevice, proxy: tuple[str, int], proxy_pub: bytes, request: bytes) -> bool:
    for _ in range(5):
        init = handshake.Initiator(dev.priv, proxy_pub)
        try:
            answer = await roundtrip(dev, proxy, init.start(request), 10.0)
        except TimeoutError:
            dev.retries += 1
            continue
        dev.session, _, _ = init.finish(answer)
        return True
    return False


async def device_loop(
    dev: SimDevice,
    proxy: tuple[str, int],
    start: float,
    stop_at: float,
    slot: float | None,
    period: float | None,
) -> None:
    """Closed loop (``period`` None: the next reading as soon as the last one is
    acknowledged) or paced: this device's k-th reading is due at ``start + slot + k * period``."""
    k = 0
    while time.monotonic() < stop_at:
        if period is not None and slot is not None:
            delay = start + slot + k * period - time.monotonic()
            k += 1
            if delay > 0:
                await asyncio.sleep(delay)
            if time.monotonic() >= stop_at:
                break
        mid = dev.mid
        dev.mid += 1
        plain = reading_request(mid, mid % 1000)
        t0 = time.monotonic()
        while True:
            try:
                data = await roundtrip(dev, proxy, dev.session.seal(plain), 5.0)
            except TimeoutError:
                dev.retries += 1  # same MID again, as a real device does
                continue
            answer = coap.decode(dev.session.open(data))
            if answer.mid == mid:
                break
        dev.rtts.append((mid, t0, time.monotonic()))
        if answer.code != coap.CHANGED:
            raise RuntimeError("%s: reading answered %s" % (dev.name, coap.code_str(answer.code)))


def run_devices(coro: Any) -> Any:
    """Run the simulated devices on uvloop where installed (the same for every
    proxy column): their own event loop's delays are part of each measured round
    trip, and uvloop's are smaller than asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


async def warm_up(devices: list[SimDevice], proxy: tuple[str, int], proxy_pub: bytes) -> float:
    """Open every device's socket and run its IK handshake (0-RTT: a first reading)."""
    for dev in devices:
        await open_device(dev)
    t = time.monotonic()
    ok = await asyncio.gather(
        *(handshake_device(d, proxy, proxy_pub, reading_request(0, 0)) for d in devices)
    )
    if not all(ok):
        raise RuntimeError("%d handshakes failed" % ok.count(False))
    for dev in devices:
        dev.mid = 1
    return time.monotonic() - t


async def run_load(
    devices: list[SimDevice],
    proxy: tuple[str, int],
    duration: float,
    proxy_pid: int,
    rate: float | None = None,
) -> dict[str, Any]:
    """Readings for ``duration`` seconds: each as soon as the last is acknowledged, or
    ``rate`` per second in all, spread evenly over the devices."""
    for dev in devices:
        dev.rtts = []
        dev.retries = 0
    period = len(devices) / rate if rate else None
    # Likewise for the simulated devices' pauses (the proxy keeps its collector).
    gc.collect()
    gc.disable()
    cpu0 = cpu_seconds(proxy_pid)
    own0 = time.process_time()
    machine0 = machine_busy()
    start = time.monotonic()
    await asyncio.gather(
        *(
            device_loop(d, proxy, start, start + duration, i / rate if rate else None, period)
            for i, d in enumerate(devices)
        )
    )
    elapsed = time.monotonic() - start
    gc.enable()
    cpu = cpu_seconds(proxy_pid) - cpu0
    own = time.process_time() - own0
    machine = machine_busy() - machine0
    n = sum(len(d.rtts) for d in devices)
    rtts = [(t3 - t0) * 1000 for d in devices for _, t0, t3 in d.rtts]
    return {
        "devices": len(devices),
        "offered_per_s": rate,
        "readings": n,
        "seconds": round(elapsed, 2),
        "readings_per_s": round(n / elapsed, 1),
        "rtt_ms_p50": round(percentile(rtts, 50), 2),
        "rtt_ms_p99": round(percentile(rtts, 99), 2),
        "retransmissions": sum(d.retries for d in devices),
        "proxy_cpu_s": round(cpu, 2),
        "proxy_cpu_share_of_one_core": round(cpu / elapsed, 2),
        "proxy_cpu_us_per_reading": round(cpu / n * 1e6, 1) if n else None,
        # Who else used the CPUs: the simulated devices (this process), and the
        # whole machine (every core, all processes: 2.0 = both cores busy).
        "devices_cpu_share_of_one_core": round(own / elapsed, 2),
        "machine_busy_cores": round(machine / elapsed, 2),
    }


async def idle_sessions(
    count: int, keys: list[tuple[bytes, bytes]], proxy: tuple[str, int], proxy_pub: bytes, pid: int
) -> dict[str, Any]:
    """RSS growth of the proxy for ``count`` sessions that handshake and then stay idle."""
    devices = [SimDevice("idle%d" % i, priv, pub) for i, (priv, pub) in enumerate(keys[:count])]
    await asyncio.sleep(0.5)
    before = rss_bytes(pid)
    sem = asyncio.Semaphore(64)

    async def one(dev: SimDevice) -> bool:
        async with sem:
            await open_device(dev)
            try:
                return await handshake_device(dev, proxy, proxy_pub, b"")
            finally:
                dev.transport.close()

    ok = await asyncio.gather(*(one(d) for d in devices))
    await asyncio.sleep(1.0)
    after = rss_bytes(pid)
    done = ok.count(True)
    return {
        "sessions": done,
        "rss_before_mb": round(before / 1e6, 1),
        "rss_after_mb": round(after / 1e6, 1),
        "rss_growth_kb_per_1000_sessions": round((after - before) / done * 1000 / 1024, 1) if done else None,
        "bytes_per_session": round((after - before) / done) if done else None,
    }


# ---- setups --------------------------------------------------------------------------------


def new_keys(n: int) -> list[tuple[bytes, bytes]]:
    out = []
    for _ in range(n):
        priv = secrets.token_bytes(32)
        out.append((priv, bytes(crypto.x25519_base(priv))))
    return out


# The bench opens hundreds of sessions at once on purpose: that is load, not an
# attack, so the handshake budgets (docs/proxy.md, Limits) are lifted for it.
BENCH_LIMITS = "\n[limits]\nhandshakes_global = 1000000.0\ncookie_threshold = 1000000.0\n"


def bench_limits(cfg: Any) -> Any:
    """Append BENCH_LIMITS to the written proxy.toml; returns ``cfg``."""
    with open(cfg.path, "a", encoding="utf-8") as f:
        f.write(BENCH_LIMITS)
    return cfg


def proxy_dir(base: Path, hs_url: str, **kw: Any) -> Any:
    return bench_limits(
        write_default(
            base,
            hs_url,
            server_name=kw.pop("server_name", "sink.test"),
            port=free_port(socket.SOCK_DGRAM),
            appservice_listen="127.0.0.1:%d" % free_port(),
            **kw,
        ).config
    )


def bench_sink(args: argparse.Namespace, work: Path, fast_paths: bool = True) -> dict[str, Any]:
    sink = Sink()
    try:
        cfg = proxy_dir(work / ("sink" if fast_paths else "sink-before"), sink.url)
        keys = new_keys(args.devices + args.idle_sessions)
        with Registry(cfg.proxy.registry) as reg:
            for i, (_, pub) in enumerate(keys):
                name = "d%d" % i
                user = "@lowbw_%s:sink.test" % name
                reg.add_device(
                    DeviceRecord(name=name, public_key=pub, user_id=user, rooms=[ROOM], slots=SLOTS)
                )
        proxy_pub = cfg.read_public_key()
        proc = ProxyProcess(cfg.path, fast_paths, args.proxy_log, not args.no_uvloop)
        addr = (cfg.proxy.bind, cfg.proxy.port)
        devices = [SimDevice("d%d" % i, priv, pub) for i, (priv, pub) in enumerate(keys[: args.devices])]

        def added_latency(run: dict[str, Any]) -> None:
            """Per reading: device round trip minus the time it spent in the sink."""
            # Transaction IDs are lowbw.<device>.<epoch>.<msgnum>.<index>
            # (sensor.txn_id): look them up by device and message number.
            stamps: dict[tuple[str, int], tuple[float, float]] = {}
            for txn, st in sink.stamps().items():
                _, name, _, num, index = txn.split(".")
                if index == "0":
                    stamps[(name, int(num))] = st
            added = []
            for dev in devices:
                for msgnum, t0, t3 in dev.rtts:
                    found = stamps.get((dev.name, msgnum))
                    if found is not None:
                        added.append((t3 - t0 - (found[1] - found[0])) * 1000)
            run["added_ms_p50"] = round(percentile(added, 50), 2)
            run["added_ms_p99"] = round(percentile(added, 99), 2)
            run["added_ms_mean"] = round(statistics.fmean(added), 2) if added else None
            run["added_samples"] = len(added)

        async def runs() -> tuple[float, dict[str, Any], list[dict[str, Any]]]:
            warm = await warm_up(devices, addr, proxy_pub)
            await asyncio.sleep(0.2)  # the last handshakes' answers are out
            mark_phase(proc.pid)  # phase 1: the devices' handshakes
            sink.reset()
            load = await run_load(devices, addr, args.duration, proc.pid)
            added_latency(load)
            paced = []
            for rate in args.rates:
                sink.reset()  # message numbers go on; the sink's stamps start again
                run = await run_load(devices, addr, args.duration, proc.pid, rate)
                added_latency(run)
                paced.append(run)
            for dev in devices:
                dev.transport.close()
            mark_phase(proc.pid)  # phase 2: readings
            await asyncio.sleep(0.2)
            return warm, load, paced

        try:
            rss_start = rss_bytes(proc.pid)
            warm, load, paced = run_devices(runs())
            load["handshake_seconds"] = round(warm, 2)
            load["rss_mb_at_start"] = round(rss_start / 1e6, 1)
            load["rss_mb_after_load"] = round(rss_bytes(proc.pid) / 1e6, 1)
            idle = asyncio.run(
                idle_sessions(args.idle_sessions, keys[args.devices :], addr, proxy_pub, proc.pid)
            )
        finally:
            phases = longest_registry_calls(proc.stop())
        # The longest the proxy's event loop waited for one registry call: while
        # 100 devices handshake at once, under the reading load, while the idle
        # sessions handshake (a burst of --idle-sessions), and over all of it.
        named = dict(zip(("handshakes", "readings", "idle_handshakes"), phases, strict=False))
        worst = max(phases) if phases else (None, None)
        return {
            "fast_paths": fast_paths,
            "saturation": load,
            "paced": paced,
            "idle": idle,
            "max_loop_stall_ms": worst[0],
            "max_loop_stall_op": worst[1],
            "loop_stall_by_phase": {k: {"ms": v[0], "op": v[1]} for k, v in named.items()},
        }
    finally:
        sink.stop()


async def _synapse_setup(hs_url: str, as_token: str, names: list[str], server_name: str) -> str:
    from lowbw.proxy.homeserver import Homeserver

    async with Homeserver(hs_url, verify_tls=False) as hs:
        users = [await hs.register_appservice_user("lowbw_" + n, as_token) for n in names]
        room = (await hs.create_room(as_token, {"preset": "public_chat"}, as_user=users[0])).expect_ok()[
            "room_id"
        ]
        for u in users[1:]:
            (await hs.join_room(room, as_token, as_user=u)).expect_ok()
        return str(room)


async def _direct_baseline(
    hs_url: str, as_token: str, room: str, user: str, concurrency: int, n: int
) -> list[float]:
    from lowbw.proxy.homeserver import CLIENT_V3, Homeserver, encode_path

    times: list[float] = []
    async with Homeserver(hs_url, verify_tls=False) as hs:
        counter = iter(range(n))

        async def worker() -> None:
            for i in counter:
                path = encode_path(
                    CLIENT_V3 + "/rooms/{}/send/{}/{}", room, "m.room.message", "direct.%d" % i
                )
                t0 = time.monotonic()
                r = await hs.request(
                    "PUT",
                    path,
                    json_body={"msgtype": "m.notice", "body": "x %d" % i},
                    access_token=as_token,
                    as_user=user,
                )
                r.expect_ok()
                times.append((time.monotonic() - t0) * 1000)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return times


def bench_synapse(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from lowbw.testing.synapse import SynapseServer, write_appservice_registration

    as_token, hs_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    listen_port = free_port()
    reg_path = work / "appservice.yaml"
    write_appservice_registration(
        reg_path,
        "lowbw",
        as_token,
        hs_token,
        "http://127.0.0.1:%d" % listen_port,
        "lowbw",
        r"@lowbw_.*:bench\.test",
    )
    with SynapseServer(server_name="bench.test", app_service_config_files=[reg_path]) as hs:
        cfg = write_default(
            work / "synapse",
            hs.url,
            server_name="bench.test",
            port=free_port(socket.SOCK_DGRAM),
            appservice_listen="127.0.0.1:%d" % listen_port,
            as_token=as_token,
            hs_token=hs_token,
        ).config
        bench_limits(cfg)
        names = ["s%d" % i for i in range(args.synapse_devices)]
        room = asyncio.run(_synapse_setup(hs.url, as_token, names, "bench.test"))
        keys = new_keys(len(names))
        with Registry(cfg.proxy.registry) as reg:
            for name, (_, pub) in zip(names, keys, strict=True):
                reg.add_device(
                    DeviceRecord(
                        name=name,
                        public_key=pub,
                        user_id="@lowbw_%s:bench.test" % name,
                        rooms=[room],
                        slots=SLOTS,
                    )
                )
        proc = ProxyProcess(cfg.path, log_level=args.proxy_log)
        addr = (cfg.proxy.bind, cfg.proxy.port)
        devices = [SimDevice(n, priv, pub) for n, (priv, pub) in zip(names, keys, strict=True)]

        async def runs() -> dict[str, Any]:
            warm = await warm_up(devices, addr, cfg.read_public_key())
            result = await run_load(devices, addr, args.duration, proc.pid)
            result["handshake_seconds"] = round(warm, 2)
            for dev in devices:
                dev.transport.close()
            return result

        try:
            load = asyncio.run(runs())
        finally:
            proc.stop()
        synapse_rss = hs.rss_bytes() or 0
        direct = asyncio.run(
            _direct_baseline(
                hs.url,
                as_token,
                room,
                "@lowbw_s0:bench.test",
                len(devices),
                max(200, load["readings"] // 2),
            )
        )
    rtts = sorted((t3 - t0) * 1000 for d in devices for _, t0, t3 in d.rtts)
    load["direct_http_ms_p50"] = round(percentile(direct, 50), 2)
    load["direct_http_ms_p99"] = round(percentile(direct, 99), 2)
    load["added_ms_p50_estimate"] = round(percentile(rtts, 50) - percentile(direct, 50), 2)
    load["added_ms_p99_estimate"] = round(percentile(rtts, 99) - percentile(direct, 99), 2)
    load["synapse_rss_mb"] = round(synapse_rss / 1e6, 1)
    return load


PACED_TARGET = 1500.0


def figures(sink: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of one sink run (the --json line)."""
    sat = sink["saturation"]
    paced = {r["offered_per_s"]: r for r in sink["paced"]}
    at = paced.get(PACED_TARGET) or (sink["paced"][-1] if sink["paced"] else {})
    return {
        "readings_per_s": sat["readings_per_s"],
        "cpu_us_per_reading": sat["proxy_cpu_us_per_reading"],
        "paced_per_s": at.get("offered_per_s"),
        "p50_ms": at.get("added_ms_p50"),
        "p99_ms": at.get("added_ms_p99"),
        "max_loop_stall_ms": sink["max_loop_stall_ms"],
        "max_loop_stall_readings_ms": sink["loop_stall_by_phase"].get("readings", {}).get("ms"),
        "idle_session_bytes": sink["idle"]["bytes_per_session"],
    }


def table(result: dict[str, Any]) -> str:
    """The human-readable table: one column per proxy (before issue 13 / now)."""
    columns = (("sink_before", "before"), ("sink", "now"))
    runs = [(name, result[key]) for key, name in columns if key in result]
    head = "| run | " + " | ".join(name for name, _ in runs) + " |"
    rows = [head, "|" + " --- |" * (len(runs) + 1)]

    def row(label: str, cell: Any) -> None:
        rows.append("| %s | %s |" % (label, " | ".join(cell(sink) for _, sink in runs)))

    row(
        "saturated: readings/s (CPU per reading)",
        lambda k: (
            "%.0f (%.0f µs)"
            % (k["saturation"]["readings_per_s"], k["saturation"]["proxy_cpu_us_per_reading"])
        ),
    )
    for i, rate in enumerate(r["offered_per_s"] for r in runs[0][1]["paced"]):
        row(
            "paced %.0f/s: readings/s, added p50 / p99" % rate,
            lambda k, i=i: (
                "%.0f, %.2f / %.2f ms"
                % (
                    k["paced"][i]["readings_per_s"],
                    k["paced"][i]["added_ms_p50"],
                    k["paced"][i]["added_ms_p99"],
                )
            ),
        )
    for phase, label in (
        ("readings", "longest registry call on the loop: under the reading load"),
        ("handshakes", "... while %d devices handshake at once" % runs[0][1]["saturation"]["devices"]),
        ("idle_handshakes", "... while %d idle sessions handshake" % runs[0][1]["idle"]["sessions"]),
    ):
        row(
            label,
            lambda k, phase=phase: (
                "%s ms (%s)"
                % (
                    k["loop_stall_by_phase"].get(phase, {}).get("ms"),
                    k["loop_stall_by_phase"].get(phase, {}).get("op"),
                )
            ),
        )
    row(
        "idle session (%d sessions)" % runs[0][1]["idle"]["sessions"],
        lambda k: "%s B" % k["idle"]["bytes_per_session"],
    )
    if "synapse" in result:
        syn = result["synapse"]
        rows.append(
            "\nSynapse (%d devices): %.0f readings/s, added p50 / p99 estimate %.1f / %.1f ms"
            % (
                syn["devices"],
                syn["readings_per_s"],
                syn["added_ms_p50_estimate"],
                syn["added_ms_p99_estimate"],
            )
        )
    return "\n".join(rows)


def _main_nodes(args: argparse.Namespace, result: dict[str, Any]) -> int:
    """``--nodes N`` (issue 17): bench/proxy_nodes.py, one JSON line with ``--json``."""
    try:
        from bench.proxy_nodes import bench_nodes, summary
    except ImportError:
        from proxy_nodes import bench_nodes, summary  # type: ignore[no-redef]

    with tempfile.TemporaryDirectory(prefix="lowbw-bench-") as tmp:
        result["nodes"] = bench_nodes(args, Path(tmp))
    result["summary"] = summary(result["nodes"])
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"]) if args.json else json.dumps(result["nodes"], indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small and short (for a smoke run)")
    p.add_argument(
        "--devices", type=int, help="concurrent warm devices against the sink (default 100, quick 100)"
    )
    p.add_argument("--duration", type=float, help="seconds of load per run (default 10, quick 3)")
    p.add_argument(
        "--idle-sessions", type=int, help="idle sessions for the memory figure (default 5000, quick 1000)"
    )
    p.add_argument("--synapse-devices", type=int, help="devices against Synapse (default 50, quick 10)")
    p.add_argument(
        "--rates",
        help="paced runs at these total readings/s, comma-separated (default 500,1000,1500,2000; quick 1500)",
    )
    p.add_argument("--no-synapse", action="store_true", help="skip the real-Synapse run (quick: skipped)")
    p.add_argument(
        "--compare",
        action="store_true",
        help="also run the proxy as before issue 13 (LOWBW_PROXY_FAST_PATHS=0), side by side",
    )
    p.add_argument(
        "--no-uvloop",
        action="store_true",
        help="run the proxy on asyncio's loop (LOWBW_PROXY_UVLOOP=0), to measure what uvloop saves",
    )
    p.add_argument(
        "--proxy-log",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING"],
        help="the proxy's log level (default WARNING; INFO shows what its per-interval summaries cost)",
    )
    p.add_argument(
        "--nodes",
        type=int,
        help="several proxy processes on one fleet (PostgreSQL registry, SO_REUSEPORT): saturated "
        "readings/s of N processes against one (bench/proxy_nodes.py)",
    )
    p.add_argument("--rounds", type=int, help="with --nodes: repeat the runs, interleaved (default 1)")
    p.add_argument(
        "--sink",
        choices=["auto", "nginx", "aiohttp"],
        default="auto",
        help="with --nodes: the sink homeserver (default auto: nginx, bench/nginx_sink.py, where "
        "installed, else the aiohttp sink)",
    )
    p.add_argument(
        "--generator",
        choices=["epoll", "asyncio"],
        default="epoll",
        help="with --nodes: the simulated devices (default epoll: frames sealed ahead, bench/loadgen.py; "
        "asyncio: the single-proxy bench's devices, a seal per reading when due)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON line of headline figures, no table")
    p.add_argument("--out", help="also write the whole result as JSON here")
    args = p.parse_args(argv)
    q = args.quick
    args.devices = args.devices or 100
    args.duration = args.duration or (3.0 if q else 10.0)
    args.idle_sessions = args.idle_sessions or (1000 if q else 5000)
    args.synapse_devices = args.synapse_devices or (10 if q else 50)
    args.no_synapse = args.no_synapse or q
    args.rates = [float(r) for r in (args.rates or ("1500" if q else "500,1000,1500,2000")).split(",")]
    result: dict[str, Any] = {
        "command": "python bench/proxy_load.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "link_bps": 100,
        "targets": {
            "readings_per_s": 3000,
            "p99_ms_at_1500_per_s": 5,
            "max_loop_stall_ms": 5,
            "idle_session_bytes": 2048,
        },
    }
    if args.nodes:
        return _main_nodes(args, result)
    with tempfile.TemporaryDirectory(prefix="lowbw-bench-") as tmp:
        work = Path(tmp)
        if args.compare:
            result["sink_before"] = bench_sink(args, work, fast_paths=False)
        result["sink"] = bench_sink(args, work)
        if not args.no_synapse:
            result["synapse"] = bench_synapse(args, work)
    result["summary"] = figures(result["sink"])
    if "sink_before" in result:
        result["summary"]["before"] = figures(result["sink_before"])
    if "synapse" in result:
        result["summary"]["synapse_readings_per_s"] = result["synapse"]["readings_per_s"]
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result["summary"]))
    else:
        print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
