"""The proxy's status page: a read-only fleet view on the metrics listener.

Served next to ``/metrics`` (``lowbw.metrics.MetricsServer``, same access
rules: loopback, or the ``[metrics]`` token):

* ``/`` (and ``/status``): the fleet table, one row per enrolled device or
  client key: name, permission, room, session state, last seen, last reading,
  readings today, bytes and airtime today, and a small chart of readings per
  interval. The page reloads itself every ``REFRESH`` seconds.
* ``/device/NAME``: one device's charts, airtime (up and down) and readings
  per ``history_interval``, over the history kept in memory
  (``lowbw.proxy.metrics.History``: ``history_points`` intervals).

Server-rendered HTML with inline CSS and inline SVG: no script, no build step,
nothing loaded from anywhere else (the Content-Security-Policy says so).
Every text from the registry or a device is HTML-escaped. "Today" is the UTC
day, counted from the proxy's start if that was later. The last reading of a
device in an end-to-end encrypted room is not shown (the page is for
operators, the room's content is not).
"""

from __future__ import annotations

import html
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from lowbw.metrics import MetricsServer
from lowbw.proxy.clients import is_client
from lowbw.proxy.metrics import ProxyMetrics

REFRESH = 30
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
UP_COLOUR = "#2f6fb3"
DOWN_COLOUR = "#e0902f"
READING_COLOUR = "#3c9a5f"

CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em;color:#1d2125;
background:#fafbfc}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
.meta{color:#57606a;margin:0 0 1em}.meta b{color:#1d2125}
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px #0001}
th,td{padding:.35em .7em;border-bottom:1px solid #e4e7eb;text-align:left;vertical-align:middle;
white-space:nowrap}
th{background:#f0f2f5;font-weight:600;font-size:.9em}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.room{max-width:16em;overflow:hidden;text-overflow:ellipsis}
.state-established{color:#1a7f37}.state-handshake{color:#9a6700}.state-none{color:#8c959f}
.quiet{color:#8c959f}a{color:#0b57b3;text-decoration:none}a:hover{text-decoration:underline}
.chart{background:#fff;box-shadow:0 1px 2px #0001;margin:.3em 0 1em}
.legend span{display:inline-block;width:.8em;height:.8em;margin:0 .3em 0 1em;vertical-align:-1px}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _ago(seconds: float) -> str:
    if seconds < 1:
        return "just now"
    if seconds < 90:
        return "%d s ago" % seconds
    if seconds < 90 * 60:
        return "%d min ago" % (seconds / 60)
    if seconds < 36 * 3600:
        return "%.1f h ago" % (seconds / 3600)
    return "%.1f d ago" % (seconds / 86400)


def _utc(ts: float, fmt: str = "%Y-%m-%d %H:%M:%SZ") -> str:
    return time.strftime(fmt, time.gmtime(ts))


def _bytes(n: int) -> str:
    if n < 10_000:
        return "%d B" % n
    if n < 10_000_000:
        return "%.1f kB" % (n / 1000)
    return "%.1f MB" % (n / 1e6)


def _duration(seconds: float) -> str:
    if seconds == 0:
        return "0 s"
    if seconds < 1:
        return "%.3g ms" % (seconds * 1000)
    if seconds < 60:
        return "%.1f s" % seconds
    if seconds < 3600:
        return "%.1f min" % (seconds / 60)
    return "%.2f h" % (seconds / 3600)


def bar_chart(
    times: Sequence[float],
    stacks: Sequence[Sequence[float]],
    colours: Sequence[str],
    *,
    width: int = 720,
    height: int = 160,
    fmt: Callable[[float], str] | None = None,
    names: Sequence[str] = (),
    label: str = "",
    axes: bool = True,
) -> str:
    """An inline SVG bar chart: one bar per time, each a stack of values (bottom first);
    ``fmt`` formats the axis and tooltip values."""
    show = fmt or _short
    left, bottom, top = (48, 20, 8) if axes else (0, 0, 0)
    plot_w, plot_h = width - left - 4 * axes, height - bottom - top
    totals = [sum(s) for s in stacks]
    peak = max(totals, default=0) or 1
    n = max(1, len(stacks))
    step = plot_w / n
    bar_w = max(1.0, step * 0.8)
    parts = [
        '<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="%d" height="%d" '
        'viewBox="0 0 %d %d" role="img" aria-label="%s">' % (width, height, width, height, _e(label))
    ]
    if axes:
        parts.append(
            '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#c9ced6"/>'
            % (left, top + plot_h, left + plot_w, top + plot_h)
        )
        for frac in (0.5, 1.0):
            y = top + plot_h * (1 - frac)
            parts.append(
                '<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#eef0f3"/>' % (left, y, left + plot_w, y)
            )
            parts.append(
                '<text x="%d" y="%.1f" font-size="10" text-anchor="end" fill="#57606a">%s</text>'
                % (left - 4, y + 4, _e(show(peak * frac)))
            )
        parts.append(
            '<text x="%d" y="%.1f" font-size="10" text-anchor="end" fill="#57606a">0</text>'
            % (left - 4, top + plot_h + 4)
        )
        span = times[-1] - times[0] if times else 0
        tfmt = "%H:%M:%SZ" if span < 3600 else "%m-%d %H:%MZ"
        if times:
            parts.append(
                '<text x="%d" y="%d" font-size="10" fill="#57606a">%s</text>'
                % (left, height - 5, _e(_utc(times[0], tfmt)))
            )
            parts.append(
                '<text x="%d" y="%d" font-size="10" text-anchor="end" fill="#57606a">%s</text>'
                % (left + plot_w, height - 5, _e(_utc(times[-1], tfmt)))
            )
    for i, stack in enumerate(stacks):
        x = left + i * step + (step - bar_w) / 2
        y = top + plot_h
        tip = ", ".join("%s %s" % (show(v), names[j] if j < len(names) else "") for j, v in enumerate(stack))
        when = _utc(times[i], "%H:%M:%SZ") if i < len(times) else ""
        parts.append("<g><title>%s</title>" % _e("%s: %s" % (when, tip)))
        for j, value in enumerate(stack):
            if value <= 0:
                continue
            h = plot_h * value / peak
            y -= h
            parts.append(
                '<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>'
                % (x, y, bar_w, max(h, 0.5), colours[j % len(colours)])
            )
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def _rate(bps: float) -> str:
    if bps >= 1_000_000:
        return "%g Mbit/s" % (bps / 1e6)
    if bps >= 10_000:
        return "%g kbit/s" % (bps / 1e3)
    return "%g bit/s" % bps


def _short(value: float) -> str:
    if value == int(value) and abs(value) < 1e6:
        return "%d" % value
    if abs(value) >= 100:
        return "%.0f" % value
    if abs(value) >= 1:
        return "%.1f" % value
    return "%.2g" % value


class StatusPages:
    """The pages of the module docstring, for one running proxy."""

    def __init__(self, server: Any, metrics: ProxyMetrics) -> None:
        self.server = server
        self.metrics = metrics

    def install(self, listener: MetricsServer) -> None:
        listener.add_page("/", self.fleet)
        listener.add_page("/status", self.fleet)
        listener.add_page("/device/", self.device, prefix=True)

    # -- helpers ---------------------------------------------------------------------------

    def _page(self, title: str, body: str, status: int = 200) -> web.Response:
        doc = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<meta http-equiv="refresh" content="%d"><title>%s</title><style>%s</style></head>'
            "<body>%s</body></html>" % (REFRESH, _e(title), CSS, body)
        )
        return web.Response(
            text=doc, status=status, content_type="text/html", charset="utf-8", headers=SECURITY_HEADERS
        )

    def _session_state(self, name: str) -> tuple[str, str]:
        table = self.server.table
        addr = table.by_device.get(name) if table is not None else None
        if addr is None:
            return "none", "no session"
        if addr.pending is not None:
            return "handshake", "handshake (%04x)" % addr.sid
        return "established", "established (%04x)" % addr.sid

    @staticmethod
    def _permission(rec: Any) -> str:
        if is_client(rec):
            return "client"
        perms = [p for p in rec.permissions if p != "client"]
        return "sensor" + (" + " + ", ".join(perms) if perms else "")

    def _header(self, title: str) -> str:
        server = self.server
        table = server.table
        m = self.metrics
        st = server.transport.stats if server.transport is not None else None
        sessions = len(table) if table is not None else 0
        devices = len(table.devices) if table is not None else 0
        dropped = sum(st.dropped.values()) if st is not None else 0
        return (
            '<header><h1>%s</h1><p class="meta">%s mode · link <b>%s</b> · <b>%d</b> devices · '
            "<b>%d</b> sessions · <b>%d</b> readings acknowledged, <b>%d</b> refused · <b>%d</b> "
            'datagrams dropped · up since %s · <a href="/metrics">/metrics</a></p></header>'
            % (
                _e(title),
                _e(m.mode),
                _e(_rate(m.link_bps)),
                devices,
                sessions,
                m.readings.acked,
                sum(m.readings.rejects.values()),
                dropped,
                _e(_utc(m.started)),
            )
        )

    # -- pages -----------------------------------------------------------------------------

    async def fleet(self, request: web.Request) -> web.Response:
        m = self.metrics
        table = self.server.table
        now = time.time()
        totals = m.device_totals()
        m.history.roll_day(now, totals)
        rows = []
        for name in sorted(table.devices) if table is not None else []:
            rec = table.devices[name]
            traffic = m.traffic(name)
            readings = m.readings.devices.get(name)
            values = totals.get(name, (0, 0, 0))
            r_today, up_today, down_today = m.history.today(name, values)
            state, state_text = self._session_state(name)
            if traffic is not None and traffic.last_seen:
                seen = '<span title="%s">%s</span>' % (
                    _e(_utc(traffic.last_seen)),
                    _e(_ago(now - traffic.last_seen)),
                )
            else:
                seen = '<span class="quiet">not since start</span>'
            if readings is not None and readings.last_at:
                last = '%s <span class="quiet" title="%s">(%s)</span>' % (
                    _e(readings.last_text),
                    _e(_utc(readings.last_at)),
                    _e(_ago(now - readings.last_at)),
                )
            else:
                last = '<span class="quiet">none since start</span>'
            room = rec.rooms[0] if rec.rooms else ""
            more = " (+%d)" % (len(rec.rooms) - 1) if len(rec.rooms) > 1 else ""
            series = m.history.series(name, values)[-48:]
            spark = bar_chart(
                [p[0] for p in series],
                [[p[1]] for p in series],
                [READING_COLOUR],
                width=120,
                height=24,
                names=["readings"],
                label="readings of %s" % name,
                axes=False,
            )
            href = "/device/" + urllib.parse.quote(name, safe="")
            rows.append(
                '<tr data-device="%s"><td class="device"><a href="%s">%s</a></td>'
                '<td class="permission">%s</td><td class="room" title="%s">%s</td>'
                '<td class="session state-%s">%s</td><td class="last-seen">%s</td>'
                '<td class="last-reading">%s</td><td class="num readings-today">%d</td>'
                '<td class="num bytes-today">%s ↑ / %s ↓</td><td class="num airtime-today">%s</td>'
                '<td class="spark">%s</td></tr>'
                % (
                    _e(name),
                    _e(href),
                    _e(name),
                    _e(self._permission(rec)),
                    _e(room),
                    _e(room + more) if room else '<span class="quiet">—</span>',
                    state,
                    _e(state_text),
                    seen,
                    last,
                    r_today,
                    _e(_bytes(up_today)),
                    _e(_bytes(down_today)),
                    _e(_duration(m.airtime(up_today + down_today))),
                    spark,
                )
            )
        if not rows:
            rows.append('<tr><td colspan="10" class="quiet">no devices enrolled</td></tr>')
        body = (
            self._header("lowbw proxy: fleet")
            + '<table id="fleet"><thead><tr><th>Device</th><th>Permission</th><th>Room</th><th>Session</th>'
            '<th>Last seen</th><th>Last reading</th><th class="num">Readings today</th>'
            '<th class="num">Bytes today</th><th class="num">Airtime today</th>'
            "<th>Readings per %s</th></tr></thead><tbody>%s</tbody></table>"
            % (_e(_duration(m.history.interval)), "".join(rows))
        )
        return self._page("lowbw proxy: fleet", body)

    async def device(self, request: web.Request) -> web.Response:
        m = self.metrics
        table = self.server.table
        name = urllib.parse.unquote(request.path[len("/device/") :])
        rec = table.devices.get(name) if table is not None else None
        if rec is None:
            return self._page("not found", self._header("lowbw proxy") + "<p>No such device.</p>", status=404)
        values = m.device_totals().get(name, (0, 0, 0))
        series = m.history.series(name, values)
        times = [p[0] for p in series]
        airtime = bar_chart(
            times,
            [[m.airtime(p[2]), m.airtime(p[3])] for p in series],
            [UP_COLOUR, DOWN_COLOUR],
            fmt=_duration,
            names=["up", "down"],
            label="airtime of %s" % name,
        )
        readings = bar_chart(
            times,
            [[p[1]] for p in series],
            [READING_COLOUR],
            names=["readings"],
            label="readings of %s" % name,
        )
        state, state_text = self._session_state(name)
        traffic = m.traffic(name)
        d = m.readings.devices.get(name)
        facts = [
            ("Permission", _e(self._permission(rec))),
            ("Rooms", _e(", ".join(rec.rooms)) or "—"),
            ("User", _e(rec.user_id) or "—"),
            ("Session", '<span class="state-%s">%s</span>' % (state, _e(state_text))),
            ("Last seen", _e(_utc(traffic.last_seen)) if traffic is not None and traffic.last_seen else "—"),
            ("Last reading", _e(d.last_text) if d is not None and d.last_at else "—"),
            (
                "Readings (since start)",
                "%d acknowledged, %d refused" % (d.readings, d.rejected) if d else "0",
            ),
            (
                "Bytes (since start)",
                "%s up, %s down" % (_bytes(traffic.rx_bytes), _bytes(traffic.tx_bytes)) if traffic else "0",
            ),
            (
                "Airtime (since start)",
                _e(_duration(m.airtime(traffic.rx_bytes + traffic.tx_bytes))) if traffic else "0",
            ),
        ]
        rows = "".join("<tr><th>%s</th><td>%s</td></tr>" % (k, v) for k, v in facts)
        per = _e(_duration(m.history.interval))
        body = (
            self._header("lowbw proxy: %s" % name)
            + '<p><a href="/">← fleet</a></p><table id="device" data-device="%s">%s</table>'
            % (_e(name), rows)
            + '<h2>Airtime per %s</h2><div class="legend"><span style="background:%s"></span>up'
            '<span style="background:%s"></span>down (estimated at %s)</div>%s'
            % (per, UP_COLOUR, DOWN_COLOUR, _e(_rate(m.link_bps)), airtime)
            + "<h2>Readings per %s</h2>%s" % (per, readings)
        )
        return self._page("lowbw proxy: %s" % name, body)
