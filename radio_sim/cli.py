"""Command line: ``python -m radio_sim {relay,serial,plot,presets,airtime} ...``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from radio_sim.lora import LoRaParams
from radio_sim.model import DIRECTIONS, GilbertElliott, LinkParams
from radio_sim.presets import PRESET_NAMES, UnknownPresetError, describe_presets, get_preset

DESCRIPTION = """\
radio_sim: emulate a slow radio link (bit rate, latency, jitter, loss and
loss bursts, duplication, reordering, MTU, half duplex, duty cycle, LoRa
airtime) between real processes, and report what crossed it."""

EPILOG = """\
examples:
  python -m radio_sim relay --listen 127.0.0.1:5684 --to 127.0.0.1:5683 --preset 100bps --stats run/stats.json
  python -m radio_sim relay --listen 127.0.0.1:0 --to 127.0.0.1:5683 --preset lossy-100bps --seed 7 \\
      --stats s.json --log events.jsonl --pcap air.pcap
  python -m radio_sim serial --baud 1200
  python -m radio_sim plot events.jsonl -o airtime.png
  python -m radio_sim presets
  python -m radio_sim airtime --preset lora-sf12 51 52"""


def _preset(text: str) -> str:
    try:
        get_preset(text)
    except UnknownPresetError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _fraction(text: str) -> float:
    """0.01 or 1% -> 0.01."""
    try:
        v = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a fraction like 0.2 or 20%%, got %r" % text) from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1 (0%%..100%%), got %r" % text)
    return v


def _nonneg(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number, got %r" % text) from None
    if not v >= 0 or math.isinf(v):
        raise argparse.ArgumentTypeError("must be a finite number >= 0, got %r" % text)
    return v


def _positive(text: str) -> float:
    v = _nonneg(text)
    if v == 0:
        raise argparse.ArgumentTypeError("must be > 0, got %r" % text)
    return v


def _rate(text: str) -> float:
    if text.lower() in ("inf", "none", "unlimited"):
        return math.inf  # no serialization delay
    v = text.lower()
    mult = 1.0
    for suffix, m in (("kbps", 1e3), ("mbps", 1e6), ("bps", 1.0), ("k", 1e3), ("m", 1e6)):
        if v.endswith(suffix):
            v, mult = v[: -len(suffix)], m
            break
    return _positive(v) * mult


def _int_ge(lo: int) -> Any:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError("expected an integer, got %r" % text) from None
        if v < lo:
            raise argparse.ArgumentTypeError("must be >= %d, got %r" % (lo, text))
        return v

    return parse


def _hostport(text: str) -> tuple[str, int]:
    from radio_sim.relay import parse_hostport

    try:
        return parse_hostport(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("link model (override the preset; both directions)")
    g.add_argument(
        "--preset",
        type=_preset,
        default="100bps",
        help="one of: %s (default 100bps)" % ", ".join(PRESET_NAMES),
    )
    g.add_argument(
        "--seed", type=int, default=None, help="random seed (default: random, recorded in the stats)"
    )
    g.add_argument("--rate", type=_rate, metavar="BPS", help="bit rate, e.g. 100, 1200, 9.6k, or inf")
    g.add_argument("--loss", type=_fraction, metavar="P", help="loss rate, e.g. 0.2 or 20%%")
    g.add_argument(
        "--burst",
        type=_positive,
        metavar="FRAMES",
        help="mean loss-burst length; > 1 makes --loss bursty (Gilbert-Elliott)",
    )
    g.add_argument("--latency", type=_nonneg, metavar="S", help="one-way propagation latency, seconds")
    g.add_argument("--jitter", type=_nonneg, metavar="S", help="extra delay uniform in [0, S]; keeps order")
    g.add_argument("--dup", type=_fraction, metavar="P", help="probability a frame arrives twice")
    g.add_argument("--reorder", type=_fraction, metavar="P", help="probability a frame is held back")
    g.add_argument("--reorder-delay", type=_nonneg, metavar="S", help="how long a reordered frame is held")
    g.add_argument("--mtu", type=_int_ge(0), metavar="BYTES", help="largest frame; 0 means no limit")
    g.add_argument(
        "--fragment", action=argparse.BooleanOptionalAction, default=None, help="fragment at the MTU"
    )
    g.add_argument("--fragment-overhead", type=_int_ge(0), metavar="BYTES", help="header bytes per fragment")
    g.add_argument("--overhead", type=_int_ge(0), metavar="BYTES", help="radio overhead bytes per frame")
    g.add_argument(
        "--queue", type=_int_ge(-1), metavar="FRAMES", help="waiting frames before tail drop; -1 no limit"
    )
    g.add_argument(
        "--half-duplex", action=argparse.BooleanOptionalAction, default=None, help="one shared channel"
    )
    g.add_argument("--turnaround", type=_nonneg, metavar="S", help="half-duplex direction switch time")
    g.add_argument("--duty-cycle", type=_fraction, metavar="F", help="airtime budget, e.g. 1%%; 0 means none")
    g.add_argument("--duty-window", type=_positive, metavar="S", help="duty-cycle window (default 3600)")
    g.add_argument("--duty-policy", choices=("wait", "drop"), help="frames beyond the budget wait or drop")
    g.add_argument("--sf", type=int, help="LoRa spreading factor (makes the link LoRa)")
    g.add_argument("--bw", type=_positive, metavar="HZ", help="LoRa bandwidth in Hz (e.g. 125000)")
    g.add_argument("--cr", type=int, choices=(5, 6, 7, 8), metavar="5..8", help="LoRa coding rate 4/CR")


def params_from_args(args: argparse.Namespace) -> LinkParams:
    """The preset with command-line overrides applied; ValueError when inconsistent."""
    params = get_preset(args.preset)
    kw: dict[str, Any] = {}
    simple = {
        "latency": "latency_s",
        "jitter": "jitter_s",
        "dup": "duplicate",
        "reorder": "reorder",
        "reorder_delay": "reorder_delay_s",
        "fragment": "fragment",
        "fragment_overhead": "fragment_overhead",
        "overhead": "frame_overhead",
        "duty_window": "duty_window_s",
        "duty_policy": "duty_policy",
    }
    for arg, key in simple.items():
        v = getattr(args, arg, None)
        if v is not None:
            kw[key] = v
    if args.rate is not None:
        kw["rate_bps"] = None if math.isinf(args.rate) else args.rate
        kw["lora"] = None
    if args.mtu is not None:
        kw["mtu"] = args.mtu or None
    if args.queue is not None:
        kw["queue_frames"] = None if args.queue < 0 else args.queue
    if args.duty_cycle is not None:
        kw["duty_cycle"] = args.duty_cycle or None
    if args.loss is not None or args.burst is not None:
        loss = args.loss
        if loss is None:
            b = params.up.burst
            loss = b.loss_rate if b is not None else params.up.loss
        if args.burst is not None and args.burst > 1.0:
            kw["burst"] = GilbertElliott.from_loss(loss, args.burst)
            kw["loss"] = 0.0
        else:
            kw["loss"] = loss
            kw["burst"] = None
    if args.sf is not None or args.bw is not None or args.cr is not None:
        for d in DIRECTIONS:
            base = params.direction(d).lora or LoRaParams()
            lora = dataclasses.replace(
                base,
                sf=args.sf if args.sf is not None else base.sf,
                bw_hz=args.bw if args.bw is not None else base.bw_hz,
                cr=args.cr - 4 if args.cr is not None else base.cr,
            )
            kw["%s_lora" % d] = lora
    link_kw: dict[str, Any] = {}
    if args.half_duplex is not None:
        link_kw["half_duplex"] = args.half_duplex
    if args.turnaround is not None:
        link_kw["turnaround_s"] = args.turnaround
    if kw or link_kw:
        params = params.replace(**kw, **link_kw)
    params.validate()
    return params


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m radio_sim",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "relay",
        help="forward UDP both ways through the model, in real time",
        description="Forward UDP datagrams between clients (to --listen) and a server (--to) through "
        "the link model in real time. Prints 'listening HOST:PORT' once bound.",
    )
    p.add_argument(
        "--listen",
        type=_hostport,
        required=True,
        metavar="HOST:PORT",
        help="where clients send (port 0: any)",
    )
    p.add_argument("--to", type=_hostport, required=True, metavar="HOST:PORT", help="the server")
    p.add_argument(
        "--stats", metavar="FILE", help="stats JSON, written at exit, on SIGUSR1 and every --stats-interval"
    )
    p.add_argument(
        "--stats-interval", type=_positive, metavar="S", help="also write the stats every S seconds"
    )
    p.add_argument("--log", metavar="FILE", help="JSON-lines event log")
    p.add_argument("--pcap", metavar="FILE", help="pcap of delivered frames (synthetic IPv4/UDP)")
    p.add_argument(
        "--max-clients", type=_int_ge(1), default=1024, help="distinct client addresses (default 1024)"
    )
    add_model_args(p)

    p = sub.add_parser(
        "serial",
        help="bridge two pseudo-terminals at a baud rate",
        description="Create two PTY pairs, print 'pty-a PATH' and 'pty-b PATH', and forward bytes between "
        "them no faster than the baud rate allows. Runs until SIGINT/SIGTERM.",
    )
    p.add_argument("--baud", type=_int_ge(1), required=True, help="line speed in bit/s, e.g. 1200")
    p.add_argument("--bits-per-byte", type=_int_ge(1), default=10, help="10 for 8N1 (default)")
    p.add_argument(
        "--latency", type=_nonneg, default=0.0, metavar="S", help="extra delay before the first byte"
    )
    p.add_argument("--link-a", metavar="PATH", help="also make a symlink PATH -> pty-a")
    p.add_argument("--link-b", metavar="PATH", help="also make a symlink PATH -> pty-b")
    p.add_argument("--stats", metavar="FILE", help="stats JSON, written at exit and on SIGUSR1")

    p = sub.add_parser(
        "plot",
        help="plot airtime and queue delay from an event log or a stats file",
        description="Draw a PNG of cumulative airtime and queue delay over time per direction from a "
        "JSON-lines event log (--log of the relay), or bars from a stats file.",
    )
    p.add_argument("input", metavar="STATS_OR_LOG")
    p.add_argument("-o", "--output", required=True, metavar="FILE.png")
    p.add_argument("--title", default="")

    p = sub.add_parser("presets", help="list the presets", description="List the presets and their numbers.")
    p.add_argument("--json", action="store_true", help="full parameters as JSON")

    p = sub.add_parser(
        "airtime",
        help="airtime of frames of given sizes under a preset",
        description="Print the seconds on the air for frames of the given sizes (bytes).",
    )
    p.add_argument("sizes", type=_int_ge(0), nargs="+", metavar="BYTES")
    add_model_args(p)
    return parser


def _cmd_relay(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from radio_sim.relay import serve

    try:
        params = params_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    kwargs = {
        "params": params,
        "listen": args.listen,
        "to": args.to,
        "seed": args.seed,
        "stats_path": args.stats,
        "log_path": args.log,
        "pcap_path": args.pcap,
        "stats_interval": args.stats_interval,
        "max_clients": args.max_clients,
    }
    try:
        asyncio.run(serve(kwargs))
    except OSError as exc:
        print("radio_sim relay: %s" % exc, file=sys.stderr)
        return 1
    return 0


def _cmd_serial(args: argparse.Namespace) -> int:
    from radio_sim.relay import write_json_atomic
    from radio_sim.serial_link import PtyBridge

    bridge = PtyBridge(args.baud, bits_per_byte=args.bits_per_byte, latency_s=args.latency)
    links = []
    for path, target in ((args.link_a, bridge.path_a), (args.link_b, bridge.path_b)):
        if path:
            if os.path.islink(path):
                os.unlink(path)
            os.symlink(target, path)
            links.append(path)
    stop = threading.Event()

    def write_stats() -> None:
        if args.stats:
            write_json_atomic(
                args.stats, {"pty_a": bridge.path_a, "pty_b": bridge.path_b, **bridge.link.stats()}
            )

    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: write_stats())
    bridge.start()
    print("pty-a %s" % bridge.path_a)
    print("pty-b %s" % bridge.path_b, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        write_stats()
        bridge.close()
        for path in links:
            try:
                os.unlink(path)
            except OSError:
                pass
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from radio_sim.plot import plot_file

    try:
        kind = plot_file(args.input, args.output, args.title)
    except (OSError, ValueError) as exc:
        print("radio_sim plot: %s" % exc, file=sys.stderr)
        return 1
    print("wrote %s (from %s)" % (args.output, "event log" if kind == "log" else "stats file"))
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps({n: get_preset(n).to_dict() for n in PRESET_NAMES}, indent=1))
    else:
        print(describe_presets())
    return 0


def _cmd_airtime(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        params = params_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    for n in args.sizes:
        print("%d B: up %.6f s, down %.6f s" % (n, params.up.airtime(n), params.down.airtime(n)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "relay":
        return _cmd_relay(args, parser)
    if args.command == "serial":
        return _cmd_serial(args)
    if args.command == "plot":
        return _cmd_plot(args)
    if args.command == "presets":
        return _cmd_presets(args)
    if args.command == "airtime":
        return _cmd_airtime(args, parser)
    parser.error("unknown command %r" % args.command)
    return 2
