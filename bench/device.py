"""What the MicroPython device costs: bytes and airtime per reading, heap, frozen size.

Everything real: a throw-away Synapse with the proxy's appservice registration
(``lowbw proxy init``), the proxy (``python -m lowbw proxy run``), the device
enrolled with ``lowbw device enroll`` (one field, ``temperature:°C:1``, the
one-value reading of DESIGN.md §4), ``python -m radio_sim relay --preset
100bps`` between them, and the firmware's own code (``firmware.app.App`` on the
unix board, simulated sensor, ``lowbw.device``) running in the MicroPython unix
port, driven one step at a time by a small script on its stdin (``DRIVER``
below) so the relay's counters can be read between exchanges (SIGUSR1).

Phases (each reading waits for the previous one to be acknowledged):

* ``cold``: the first reading of a fresh device (a fresh store: its handshake
  announces the counter epoch, 4 bytes): Noise KK carrying it (the compact
  link profile, what ``lowbw device enroll`` gives a 100 bit/s link), or
  Noise IK with ``--profile standard``; one round trip;
* ``warm``: readings on the session, one per request;
* ``batch``: 8 readings queued at once, sent in one request (the device's
  ``batch_limit``), as when the queue backs up;
* ``after_wake``: a new MicroPython process started from the device's store,
  as after a reboot or a deep-sleep wake (the unix board's deep sleep is this
  very restart): no handshake.

Bytes are UDP payload bytes offered to the radio (``offered_bytes``), airtime
the radio's channel time (``airtime_s``), both from radio_sim's counters,
per reading. Readings per minute at 100 bit/s: measured, one reading at a time
(each request waits for its answer) and in batches of 8, from the wall time of
each exchange; plus the airtime bound (airtime up + down + latency per request).

Heap (``gc.mem_alloc()`` after ``gc.collect()``): at start, after importing the
firmware (the unix port compiles the .py files into the heap: frozen into a
board's flash, that bytecode costs no RAM, so the budget applies to the data
above this level), after each warm reading (steady state: absolute and delta
over the post-import level), and the peak during the cold exchange (IK
handshake) and during a warm one: every function and method of the lowbw
modules is wrapped to sample ``gc.mem_alloc()`` at entry and exit while
``gc.threshold(1024)`` keeps uncollected garbage under 1 KB, so the peak is the
live heap within about 1 KB (a lower bound between sampling points).

Frozen size: ``bench/frozen_size.py`` (``firmware_size()``).

Output: JSON on stdout (``--out FILE`` too). ``--quick``: fewer warm and
after-wake readings (about 45 s instead of 70 s; the radio is 100 bit/s either way).

Usage: python bench/device.py [--quick] [--warm N] [--wake N] [--profile P] [--out FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))

from bench.frozen_size import firmware_size  # noqa: E402
from bench.radiostats import diff  # noqa: E402
from firmware import build  # noqa: E402

SCHEMA = "temperature:°C:1"
PRESET = "100bps"
BATCH = 8

# Per link profile: the compact one's are issue 14's, the standard one's DESIGN.md §4.
BUDGETS = {"compact": (28, 120), "standard": (52, 170)}
BUDGET_HEAP = 24 * 1024
BUDGET_FROZEN = 48 * 1024

# Runs under MicroPython: one command per line on stdin, one "@@ {json}" line per answer.
DRIVER = r'''
import gc
import json
import sys

gc.collect()
heap_start = gc.mem_alloc()
sys.path.insert(0, ROOT)
sys.path.insert(0, TREE)  # the device tree (python -m firmware.build): what a board freezes
from firmware import app as _app
from firmware.boards import unix as _unix
from firmware.sensors import simulated as _simulated
from lowbw.device import udp as _udp

gc.collect()
heap_imported = gc.mem_alloc()


def emit(obj):
    print("@@ " + json.dumps(obj))


_peak = [0]
_saved = []


def _sample():
    m = gc.mem_alloc()
    if m > _peak[0]:
        _peak[0] = m


def _wrap(fn):
    def w(*a, **k):
        _sample()
        r = fn(*a, **k)
        _sample()
        return r
    return w


def instrument():
    """Wrap every lowbw function; returns the heap the wrappers themselves hold."""
    gc.collect()
    base = gc.mem_alloc()
    wrapped = {}
    for name in list(sys.modules):
        if not name.startswith("lowbw"):
            continue
        mod = sys.modules[name]
        for attr in dir(mod):
            v = getattr(mod, attr)
            t = type(v).__name__
            if t in ("function", "closure", "bound_method"):
                w = wrapped.get(id(v))
                if w is None:
                    w = wrapped[id(v)] = _wrap(v)
                _saved.append((mod, attr, v))
                setattr(mod, attr, w)
            elif t == "type" and getattr(v, "__module__", "").startswith("lowbw"):
                for mname, m in list(v.__dict__.items()):
                    if type(m).__name__ == "function":
                        w = wrapped.get(id(m))
                        if w is None:
                            w = wrapped[id(m)] = _wrap(m)
                        _saved.append((v, mname, m))
                        setattr(v, mname, w)
    wrapped = None
    gc.collect()
    overhead = gc.mem_alloc() - base
    gc.threshold(1024)
    _peak[0] = gc.mem_alloc()
    return overhead


def uninstrument():
    gc.threshold(-1)
    while _saved:
        obj, attr, v = _saved.pop()
        setattr(obj, attr, v)
    gc.collect()


board = _unix.Board()
app = _app.App(board, CONFIG)
app.start()
dev = app.device
link = board.open_link(app.devcfg, app.settings.link, app.log)
app.link = link
gc.collect()
emit({"event": "ready", "heap_start": heap_start, "heap_imported": heap_imported,
      "heap_started": gc.mem_alloc(), "session": dev.session is not None})

while True:
    line = sys.stdin.readline()
    if not line:
        break
    words = line.split()
    if words[0] == "exit":
        dev.flush()
        link.close()
        emit({"event": "bye"})
        break
    n = int(words[1])
    peak = len(words) > 2
    gc.collect()
    before = gc.mem_alloc()
    overhead = 0
    if peak:
        overhead = instrument()
    handshakes = dev.counters["handshakes"]
    for _ in range(n):
        app.sample(board.clock())
    t0 = board.clock()
    ok = link.run(dev, until=dev.idle, timeout=600)
    seconds = board.clock() - t0
    if peak:
        uninstrument()
    gc.collect()
    out = {"event": "reading", "readings": n, "ok": ok, "seconds": seconds, "heap_before": before,
           "heap_after": gc.mem_alloc(), "handshakes": dev.counters["handshakes"] - handshakes,
           "acked": dev.counters["acked"], "pending": dev.pending()}
    if peak:
        # The wrappers' own closures and bookkeeping are not the device's.
        out["peak"] = _peak[0] - overhead
        out["instrumentation"] = overhead
    emit(out)
'''


def load_demo() -> ModuleType:
    name = "lowbw_scripts_demo"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class Driver:
    """The MicroPython process running DRIVER; ``reading(n)`` is one exchange."""

    def __init__(
        self, demo: ModuleType, workdir: Path, config: Path, log_name: str, track: list[Any]
    ) -> None:
        script = workdir / "driver.py"
        tree = build.ensure_built()
        head = "ROOT = %r\nTREE = %r\nCONFIG = %r\n" % (str(ROOT), str(tree), str(config))
        script.write_text(head + DRIVER, encoding="utf-8")
        self.proc = demo.Proc(
            "device",
            [demo.micropython(), str(script)],
            workdir / log_name,
            cwd=workdir,
            stdin=True,
            track=track,
        )
        self._seen = 0
        self.ready = self._answer()

    def _answer(self, timeout: float = 900.0) -> dict[str, Any]:
        i, m = self.proc.wait_for(r"^@@ (.*)$", timeout, start=self._seen)
        self._seen = i + 1
        obj: dict[str, Any] = json.loads(m.group(1))
        return obj

    def command(self, line: str) -> dict[str, Any]:
        self.proc.write(line)
        return self._answer()

    def close(self) -> None:
        if self.proc.running():
            self.command("exit")
            self.proc.wait(30)
        self.proc.stop()


def per_reading(cost: Any, readings: int, result: dict[str, Any]) -> dict[str, Any]:
    return {
        "readings": readings,
        "bytes_up": cost.bytes_up / readings,
        "bytes_down": cost.bytes_down / readings,
        "bytes_total": cost.bytes_total / readings,
        "ip_bytes_total": cost.ip_bytes_total / readings,
        "frames_up": cost.frames_up / readings,
        "frames_down": cost.frames_down / readings,
        "airtime_up_s": round(cost.airtime_up_s / readings, 3),
        "airtime_down_s": round(cost.airtime_down_s / readings, 3),
        "airtime_s": round(cost.airtime_s / readings, 3),
        "handshakes": result["handshakes"],
        "exchange_wall_s": round(result["seconds"], 3),
    }


def exchange(driver: Driver, relay: Any, readings: int, peak: bool = False) -> tuple[dict[str, Any], Any]:
    before = relay.snapshot()
    result = driver.command("reading %d%s" % (readings, " peak" if peak else ""))
    if not result.get("ok"):
        raise RuntimeError("the device did not finish the exchange: %s\n%s" % (result, driver.proc.tail()))
    # The answer that ended the exchange was delivered, so it is counted.
    return result, diff(before, relay.snapshot())


def run(warm: int = 5, wake: int = 3, profile: str | None = None) -> dict[str, Any]:
    from lowbw.testing.synapse import SynapseServer

    demo = load_demo()
    work = Path(tempfile.mkdtemp(prefix="lowbw-bench-device-"))
    procs: list[Any] = []
    synapse = None
    drivers: list[Driver] = []
    t_start = time.monotonic()
    try:
        config_path = demo.init_proxy(
            work / "proxy",
            server_name="bench.test",
            udp_port=demo.free_udp_port(),
            appservice_listen="127.0.0.1:%d" % demo.free_tcp_port(),
        )
        synapse = SynapseServer(
            server_name="bench.test", app_service_config_files=[work / "proxy" / "appservice.yaml"]
        )
        synapse.start()
        demo.set_homeserver_url(config_path, synapse.url)
        device = demo.enroll(config_path, "bench", schema=[SCHEMA], profile=profile)
        link_profile = device.get("profile", "standard")
        budget_warm, budget_cold = BUDGETS[link_profile]
        proxy = demo.start_proxy(config_path, work / "proxy.log", track=procs)
        relay = demo.Relay(
            ("127.0.0.1", int(device["proxy"]["port"])),
            work / "relay.log",
            work / "radio.json",
            preset=PRESET,
            track=procs,
        )
        fw = demo.firmware_config(
            device, work / "bench.json", relay=(relay.host, relay.port), interval=3600, fields=["temperature"]
        )

        d = Driver(demo, work, fw, "device-1.log", procs)
        drivers.append(d)
        ready = d.ready
        cold, cold_cost = exchange(d, relay, 1, peak=True)
        warm_peak, warm_peak_cost = exchange(d, relay, 1, peak=True)
        steady = []
        warm_costs = [warm_peak_cost]
        warm_seconds = []
        for _ in range(warm):
            r, c = exchange(d, relay, 1)
            steady.append(r["heap_after"])
            warm_costs.append(c)
            warm_seconds.append(r["seconds"])
        batch, batch_cost = exchange(d, relay, BATCH)
        d.close()

        d2 = Driver(demo, work, fw, "device-2.log", procs)
        drivers.append(d2)
        wake_results = []
        wake_costs = []
        for _ in range(wake):
            r, c = exchange(d2, relay, 1)
            wake_results.append(r)
            wake_costs.append(c)
        d2.close()
        # The proxy's own view of handshakes, for the record.
        proxy_handshakes = proxy.count(r"bench: (IK|KK) handshake")
    finally:
        for dr in drivers:
            dr.proc.stop()
        for p in reversed(procs):
            p.stop()
        if synapse is not None:
            synapse.stop()
        shutil.rmtree(work, ignore_errors=True)

    def total(costs: list[Any]) -> Any:
        acc = costs[0]
        for c in costs[1:]:
            acc = _add(acc, c)
        return acc

    warm_total = total(warm_costs)
    wake_total = total(wake_costs)
    warm_row = per_reading(warm_total, len(warm_costs), warm_peak)
    warm_row["exchange_wall_s"] = round(sum(warm_seconds) / len(warm_seconds), 3)
    wake_row = per_reading(wake_total, len(wake_costs), wake_results[0])
    wake_row["handshakes"] = sum(r["handshakes"] for r in wake_results)
    wake_row["exchange_wall_s"] = round(sum(r["seconds"] for r in wake_results) / len(wake_results), 3)
    batch_row = per_reading(batch_cost, BATCH, batch)
    batch_row["request"] = {
        "bytes_up": batch_cost.bytes_up,
        "bytes_down": batch_cost.bytes_down,
        "airtime_s": round(batch_cost.airtime_s, 3),
    }

    latency = 2 * 0.020  # the preset's one-way latency, each way
    single_air = warm_total.airtime_s / len(warm_costs) + latency
    batch_air = batch_cost.airtime_s + latency
    imported = ready["heap_imported"]
    steady_abs = max(steady) if steady else warm_peak["heap_after"]
    frozen = firmware_size()
    report: dict[str, Any] = {
        "preset": PRESET,
        "profile": link_profile,
        "reading": "one value (%s), simulated sensor, firmware.app on the MicroPython unix port" % SCHEMA,
        "per_reading": {
            "cold": per_reading(cold_cost, 1, cold),
            "warm": warm_row,
            "after_wake": wake_row,
            "batch_%d" % BATCH: batch_row,
        },
        "readings_per_minute": {
            "single_measured": round(60 / warm_row["exchange_wall_s"], 1),
            "single_airtime_bound": round(60 / single_air, 1),
            "batch_%d_measured" % BATCH: round(BATCH * 60 / batch["seconds"], 1),
            "batch_%d_airtime_bound" % BATCH: round(BATCH * 60 / batch_air, 1),
            "note": "one request in flight at a time (zero-length tokens); single = one reading a request",
        },
        "heap": {
            "at_start": ready["heap_start"],
            "post_import": imported,
            "steady_state": steady_abs,
            "steady_state_delta": steady_abs - imported,
            "steady_state_samples": steady,
            "peak_cold_handshake": cold["peak"],
            "peak_cold_handshake_delta": cold["peak"] - imported,
            "peak_warm_exchange": warm_peak["peak"],
            "peak_warm_exchange_delta": warm_peak["peak"] - imported,
            "note": "gc.mem_alloc() after gc.collect(); the unix port holds the imported modules' "
            "bytecode in the heap (post_import), which frozen firmware keeps in flash: the budget applies "
            "to the delta. Peaks sampled at every lowbw function boundary with gc.threshold(1024).",
        },
        "frozen": {
            "total": frozen["total"],
            "groups": frozen["groups"],
            "variants": frozen["variants"],
            "largest": frozen["largest"],
        },
        "proxy_handshakes": proxy_handshakes,
        "budgets": {
            "warm_bytes": _budget(warm_row["bytes_total"], budget_warm),
            "cold_bytes": _budget(per_reading(cold_cost, 1, cold)["bytes_total"], budget_cold),
            "wake_extra_bytes": _budget(wake_row["bytes_total"] - warm_row["bytes_total"], 0),
            "wake_handshakes": _budget(wake_row["handshakes"], 0),
            "steady_heap_delta": _budget(steady_abs - imported, BUDGET_HEAP),
            "frozen_default_manifest": _budget(frozen["total"], BUDGET_FROZEN),
            "frozen_esp32_bme280": _budget(frozen["variants"]["esp32_bme280"], BUDGET_FROZEN),
            "frozen_esp32_bme280_sources_O3": _budget(frozen["variants"]["source_esp32_bme280_O3"],
                                                      BUDGET_FROZEN),
        },
        "run_seconds": round(time.monotonic() - t_start, 1),
    }
    return report


def _budget(value: float, target: float) -> dict[str, Any]:
    return {"value": value, "target": target, "met": value <= target}


def _add(a: Any, b: Any) -> Any:
    from bench.radiostats import ExchangeStats

    return ExchangeStats(
        preset=a.preset,
        frames_up=a.frames_up + b.frames_up,
        bytes_up=a.bytes_up + b.bytes_up,
        frames_down=a.frames_down + b.frames_down,
        bytes_down=a.bytes_down + b.bytes_down,
        airtime_up_s=a.airtime_up_s + b.airtime_up_s,
        airtime_down_s=a.airtime_down_s + b.airtime_down_s,
        delivered_frames=a.delivered_frames + b.delivered_frames,
        dropped_frames=a.dropped_frames + b.dropped_frames,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="2 warm and 1 after-wake readings (default 5 and 3)"
    )
    parser.add_argument("--warm", type=int, metavar="N", help="warm readings after the first warm one")
    parser.add_argument("--wake", type=int, metavar="N", help="readings after the restart")
    parser.add_argument("--out", metavar="FILE", help="also write the JSON here")
    parser.add_argument(
        "--profile",
        choices=("compact", "standard"),
        help="link profile to enroll the device with (default: what enrollment picks for the "
        "100 bit/s link, compact)",
    )
    args = parser.parse_args(argv)
    warm = args.warm if args.warm is not None else (2 if args.quick else 5)
    wake = args.wake if args.wake is not None else (1 if args.quick else 3)
    if warm < 1 or wake < 1:
        parser.error("--warm and --wake must be at least 1")
    report = run(warm=warm, wake=wake, profile=args.profile)
    text = json.dumps(report, indent=1, ensure_ascii=False)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
