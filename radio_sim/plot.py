"""``python -m radio_sim plot STATS_OR_LOG -o FILE.png``.

From a JSON-lines event log: cumulative airtime and per-frame queue delay
over time, one line per direction. From a stats file (no time series in it):
bars of airtime, queue delay (mean and max) and bytes per direction.
Uses matplotlib's Agg canvas directly (no pyplot, no display needed).
"""

from __future__ import annotations

import json
from typing import Any

from radio_sim.model import DIRECTIONS


def load(path: str) -> tuple[str, Any]:
    """("stats", dict) or ("log", list of events)."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        obj = None
    if isinstance(obj, dict) and "up" in obj and "down" in obj:
        return "stats", obj
    if isinstance(obj, dict) and "ev" in obj:
        return "log", [obj]
    events = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError("%s:%d: neither a stats file nor a JSON-lines event log" % (path, n)) from None
        if not isinstance(ev, dict) or "ev" not in ev:
            raise ValueError("%s:%d: not a radio_sim event" % (path, n))
        events.append(ev)
    return "log", events


def _figure() -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 6.5), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _delay_axis(ax: Any, delays: list[float]) -> None:
    """A queue delay is never negative; all zero (nothing ever waited) would leave an
    empty panel with an axis from -0.05 to 0.05, so say it in words instead."""
    top = max(delays, default=0.0)
    if top > 0:
        ax.set_ylim(0.0, top * 1.1)
        return
    ax.set_ylim(0.0, 1.0)
    ax.text(
        0.5,
        0.5,
        "no queue delay: every frame went on air at once",
        transform=ax.transAxes,
        ha="center",
        va="center",
        color="0.35",
    )


def plot_log(events: list[dict[str, Any]], out: str, title: str = "") -> Any:
    """Plot an event log into ``out``; return the matplotlib Figure."""
    fig = _figure()
    delays: list[float] = []
    ax1 = fig.add_subplot(2, 1, 1)
    ax2 = fig.add_subplot(2, 1, 2, sharex=ax1)
    txs = sorted((e for e in events if e.get("ev") == "tx"), key=lambda e: float(e["t"]))
    for d in DIRECTIONS:
        mine = [e for e in txs if e.get("dir") == d]
        if not mine:
            continue
        xs: list[float] = [0.0]
        ys: list[float] = [0.0]
        total = 0.0
        for e in mine:
            xs.append(float(e["t"]))
            ys.append(total)
            total += float(e["airtime"])
            xs.append(float(e["end"]))
            ys.append(total)
        ax1.plot(xs, ys, label="%s (%.2f s)" % (d, total))
        first = [e for e in mine if int(e.get("frag", 0)) == 0]
        delays += [float(e["queue_delay"]) for e in first]
        ax2.plot(
            [float(e["t"]) - float(e["queue_delay"]) for e in first],
            [float(e["queue_delay"]) for e in first],
            marker=".",
            linestyle="-",
            label=d,
            clip_on=False,  # points at 0 sit on the axis: keep them whole
        )
    drops = [e for e in events if e.get("ev") == "drop"]
    for e in drops:
        ax2.axvline(float(e["t"]), color="red", alpha=0.15, linewidth=0.8)
    ax1.set_ylabel("cumulative airtime (s)")
    ax1.set_title(title or "radio_sim: airtime and queue delay")
    ax1.legend(loc="upper left")
    ax1.grid(True, alpha=0.3)
    ax2.set_xlabel("time (s)")
    ax2.set_ylabel("queue delay (s)")
    _delay_axis(ax2, delays)
    if txs:
        ax2.legend(loc="upper left")
    ax2.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, format="png")
    return fig


def plot_stats(stats: dict[str, Any], out: str, title: str = "") -> Any:
    """Plot a stats file's figures into ``out``; return the matplotlib Figure."""
    fig = _figure()
    dirs = [d for d in DIRECTIONS if isinstance(stats.get(d), dict)]
    ax1 = fig.add_subplot(1, 3, 1)
    ax1.bar(dirs, [float(stats[d].get("airtime_s", 0.0)) for d in dirs], color=["C0", "C1"][: len(dirs)])
    ax1.set_ylabel("airtime (s)")
    ax1.set_title("airtime")
    ax2 = fig.add_subplot(1, 3, 2)
    width = 0.38
    xs = list(range(len(dirs)))
    means = [float(stats[d].get("queue_delay_s", {}).get("mean", 0.0)) for d in dirs]
    maxes = [float(stats[d].get("queue_delay_s", {}).get("max", 0.0)) for d in dirs]
    ax2.bar([x - width / 2 for x in xs], means, width, label="mean")
    ax2.bar([x + width / 2 for x in xs], maxes, width, label="max")
    ax2.set_xticks(xs, dirs)
    ax2.set_ylabel("queue delay (s)")
    ax2.set_title("queue delay")
    _delay_axis(ax2, means + maxes)
    ax2.legend()
    ax3 = fig.add_subplot(1, 3, 3)
    keys = ("offered_bytes", "delivered_bytes", "dropped_bytes")
    for i, key in enumerate(keys):
        ax3.bar(
            [x + (i - 1) * 0.27 for x in xs],
            [int(stats[d].get(key, 0)) for d in dirs],
            0.27,
            label=key.split("_")[0],
        )
    ax3.set_xticks(xs, dirs)
    ax3.set_ylabel("bytes")
    ax3.set_title("bytes")
    ax3.legend()
    fig.suptitle(title or "radio_sim stats: %s" % stats.get("preset", "?"))
    fig.tight_layout()
    fig.savefig(out, format="png")
    return fig


def plot_file(path: str, out: str, title: str = "") -> str:
    """Plot a stats file or event log into a PNG; return which kind it was."""
    kind, obj = load(path)
    if kind == "stats":
        plot_stats(obj, out, title)
    else:
        plot_log(obj, out, title)
    return kind
