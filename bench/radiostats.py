"""Bytes and airtime of an exchange, from radio_sim's counters.

Benchmarks use this to report what an exchange costs on the radio, either
in-process (virtual clock, exact) or from the stats file of a relay run:

    from bench.radiostats import measure_frames, from_stats_file, snapshot_relay, diff

    r = measure_frames([("up", request), ("down", answer)], preset="100bps")
    r.bytes_total, r.airtime_s, r.duration_s, r.ip_bytes_total
    print(r.summary())

    before = snapshot_relay(relay_pid, "run/stats.json")   # SIGUSR1, wait for the file
    ...  # the exchange, through a real relay
    r = diff(before, snapshot_relay(relay_pid, "run/stats.json"))

``bytes_*`` count UDP payload bytes offered to the radio (what the endpoints
sent, lost frames included); ``ip_bytes_*`` add 28 B of IPv4+UDP header per
frame for comparison with published IP-level figures; ``airtime_*`` is the
channel time those frames used (radio overheads and fragment headers
included).

Command line: ``python bench/radiostats.py STATS.json [--json]`` prints the
summary of a relay stats file.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from radio_sim.model import DOWN, UP, Link, LinkParams  # noqa: E402
from radio_sim.presets import get_preset  # noqa: E402
from radio_sim.sim import Simulation, exchange  # noqa: E402

IP_UDP_HEADER = 28


@dataclass(frozen=True)
class ExchangeStats:
    """What one exchange (or one run) cost on the radio."""

    preset: str
    frames_up: int
    bytes_up: int
    frames_down: int
    bytes_down: int
    airtime_up_s: float
    airtime_down_s: float
    delivered_frames: int
    dropped_frames: int
    duration_s: float | None = None  # virtual time from the first offer to the last delivery

    @property
    def frames_total(self) -> int:
        return self.frames_up + self.frames_down

    @property
    def bytes_total(self) -> int:
        return self.bytes_up + self.bytes_down

    @property
    def ip_bytes_up(self) -> int:
        return self.bytes_up + IP_UDP_HEADER * self.frames_up

    @property
    def ip_bytes_down(self) -> int:
        return self.bytes_down + IP_UDP_HEADER * self.frames_down

    @property
    def ip_bytes_total(self) -> int:
        return self.ip_bytes_up + self.ip_bytes_down

    @property
    def airtime_s(self) -> float:
        return self.airtime_up_s + self.airtime_down_s

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            frames_total=self.frames_total,
            bytes_total=self.bytes_total,
            ip_bytes_up=self.ip_bytes_up,
            ip_bytes_down=self.ip_bytes_down,
            ip_bytes_total=self.ip_bytes_total,
            airtime_s=self.airtime_s,
        )
        return out

    def summary(self) -> str:
        dur = "" if self.duration_s is None else ", done in %.3f s" % self.duration_s
        return (
            "%s: %d B in %d frames (%d B with IPv4+UDP): up %d B, down %d B; "
            "airtime %.3f s (up %.3f, down %.3f)%s"
            % (
                self.preset,
                self.bytes_total,
                self.frames_total,
                self.ip_bytes_total,
                self.bytes_up,
                self.bytes_down,
                self.airtime_s,
                self.airtime_up_s,
                self.airtime_down_s,
                dur,
            )
        )


def from_stats(stats: Mapping[str, Any], *, duration_s: float | None = None) -> ExchangeStats:
    """From a stats dictionary (``Link.stats()`` or a relay stats file)."""
    up, down = stats[UP], stats[DOWN]
    return ExchangeStats(
        preset=str(stats.get("preset", "?")),
        frames_up=int(up["offered_frames"]),
        bytes_up=int(up["offered_bytes"]),
        frames_down=int(down["offered_frames"]),
        bytes_down=int(down["offered_bytes"]),
        airtime_up_s=float(up["airtime_s"]),
        airtime_down_s=float(down["airtime_s"]),
        delivered_frames=int(up["delivered_frames"]) + int(down["delivered_frames"]),
        dropped_frames=int(up["dropped_frames"]) + int(down["dropped_frames"]),
        duration_s=duration_s,
    )


def from_stats_file(path: str) -> ExchangeStats:
    with open(path, encoding="utf-8") as fh:
        return from_stats(json.load(fh))


def from_link(link: Link | Simulation) -> ExchangeStats:
    """From a live in-process link or simulation."""
    if isinstance(link, Simulation):
        return from_stats(link.stats(), duration_s=link.now)
    return from_stats(link.stats())


def diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> ExchangeStats:
    """The cost of what happened between two stats snapshots of the same run."""
    a, b = from_stats(before), from_stats(after)
    t0, t1 = before.get("elapsed_s"), after.get("elapsed_s")
    return ExchangeStats(
        preset=b.preset,
        frames_up=b.frames_up - a.frames_up,
        bytes_up=b.bytes_up - a.bytes_up,
        frames_down=b.frames_down - a.frames_down,
        bytes_down=b.bytes_down - a.bytes_down,
        airtime_up_s=b.airtime_up_s - a.airtime_up_s,
        airtime_down_s=b.airtime_down_s - a.airtime_down_s,
        delivered_frames=b.delivered_frames - a.delivered_frames,
        dropped_frames=b.dropped_frames - a.dropped_frames,
        duration_s=(float(t1) - float(t0)) if t0 is not None and t1 is not None else None,
    )


def measure_frames(
    frames: Iterable[tuple[str, bytes]],
    preset: str | LinkParams = "100bps",
    *,
    seed: int = 0,
    sequential: bool = True,
    **overrides: Any,
) -> ExchangeStats:
    """Run scripted frames (``("up"|"down", bytes)``) through a fresh in-process link.

    ``sequential``: each frame leaves when the previous one arrived, like a
    request/response dialogue, so ``duration_s`` is the dialogue's length.
    """
    sim = exchange(frames, preset, seed=seed, sequential=sequential, **overrides)
    return from_link(sim)


def airtime(nbytes: int, preset: str | LinkParams = "100bps", direction: str = UP) -> float:
    """Seconds on the air for one frame of ``nbytes`` under a preset."""
    params = get_preset(preset) if isinstance(preset, str) else preset
    return params.direction(direction).airtime(nbytes)


def read_stats(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        obj = json.load(fh)
    if not isinstance(obj, dict):
        raise ValueError("%s is not a radio_sim stats file" % path)
    return obj


def snapshot_relay(pid: int, stats_path: str, *, timeout: float = 10.0) -> dict[str, Any]:
    """Ask a running relay for fresh stats (SIGUSR1) and return them once written."""
    try:
        old = int(read_stats(stats_path).get("generation", 0))
    except (OSError, ValueError):
        old = 0
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stats = read_stats(stats_path)
        except (OSError, ValueError):
            stats = {}
        if int(stats.get("generation", 0)) > old:
            return stats
        time.sleep(0.02)
    raise TimeoutError("relay %d did not write %s within %.1f s" % (pid, stats_path, timeout))


def format_table(rows: Sequence[tuple[str, ExchangeStats]]) -> str:
    """A Markdown table: exchange, frames, bytes, bytes with IPv4+UDP, airtime."""
    lines = [
        "| exchange | frames | bytes (up + down) | with IPv4+UDP | airtime (s) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows:
        lines.append(
            "| %s | %d | %d (%d + %d) | %d | %.2f |"
            % (name, r.frames_total, r.bytes_total, r.bytes_up, r.bytes_down, r.ip_bytes_total, r.airtime_s)
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Summarise a radio_sim stats file: bytes and airtime.")
    parser.add_argument("stats", help="stats JSON written by python -m radio_sim relay --stats")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    try:
        stats = read_stats(args.stats)
        r = from_stats(stats, duration_s=stats.get("elapsed_s"))
    except (OSError, ValueError, KeyError) as exc:
        print("radiostats: %s: %s" % (args.stats, exc), file=sys.stderr)
        return 1
    print(json.dumps(r.as_dict(), indent=1) if args.json else r.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
