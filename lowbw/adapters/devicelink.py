"""An enrolled device that an adapter speaks for: ``lowbw.device`` over UDP, in a select loop.

The serial gateway's line mode and the MQTT bridge are *devices*: each has a
device config from ``lowbw device enroll`` and sends its readings through the
proxy like any sensor, with the device client's guarantees (readings stored
before ``send`` returns, one message number per request kept through every
retry and restart, so each lands in the room exactly once).

``DeviceLink`` owns the ``Device``, its ``FileStore`` and a UDP socket, and
fits a ``selectors`` loop: register ``fileno()`` for reading, call
``readable(now)`` when it is, and ``service(now)`` every turn; ``service``
returns the monotonic time it wants calling again.

Readings carry their absolute measurement time, to the millisecond
(``StatedTimeDevice``): the adapter knows it (the MQTT payload's ``ts``, the
time a serial line arrived), and the proxy keeps an absolute time exactly,
whereas a relative age ("now", "3 s ago") is counted back from when the proxy
received the datagram, minus the datagram's airtime at the proxy's
``link_bps``; wrong by seconds when no radio was crossed. It costs 9 bytes of
CBOR per reading (a float64; float32 cannot hold a Unix time to the ms), 5 for
a whole second, instead of 1 for "now".

Commands wait at the proxy until the device talks to it (every answer says
how many are pending), so an adapter that has nothing to send asks for the
time every ``command_poll`` seconds: a 6-byte request whose answer carries
that count.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lowbw.device import client, store, udp
from lowbw.device import config as device_config
from lowbw.wire import reading
from lowbw.wire.errors import DecodeError, LowbwError

Value = int | float | None


class DeviceLinkError(LowbwError):
    """The device config or its state file cannot be used."""


def load_device_config(path: Path) -> Any:
    try:
        return device_config.load(str(path))
    except device_config.ConfigError as exc:
        raise DeviceLinkError(exc.message)


def wire_time(unix_seconds: float) -> int | float:
    """A reading's ``t`` for an absolute time (lowbw.wire.reading: Unix seconds),
    rounded to the millisecond.

    The proxy stores ``int(t * 1000)`` ms, so the float is nudged up until that
    product gives the intended millisecond (``1795666000.123 * 1000`` is
    ``...122.99997`` in binary floating point). A whole second goes as an
    integer: 5 bytes of CBOR instead of 9.
    """
    ms = int(round(unix_seconds * 1000))
    if ms % 1000 == 0:
        return ms // 1000
    t = ms / 1000
    while int(t * 1000) < ms:
        t = math.nextafter(t, math.inf)
    return t


class StatedTimeDevice(client.Device):  # type: ignore[misc]
    """The device client, sending each reading's absolute time (to the ms) instead of its age.

    ``Device`` sends an age in whole seconds, counted from the request, which the
    proxy turns into a time by subtracting it and the datagram's airtime from
    its arrival: right for a sensor on the radio, wrong for an adapter whose
    measurement time is known exactly. Queue entries are already absolute
    (``set_wall_time`` is called before anything is queued), so only the
    payload differs; entries from a store written without a wall clock
    (monotonic) still go as ages.
    """

    def send_at(self, slot: int, values: list[Value], unix_seconds: float) -> int:
        """Queue a reading measured at ``unix_seconds``; return its id (stored before this returns)."""
        offset = self.wall_offset()
        rid: int = self.send(slot, values, unix_seconds - offset)
        return rid

    def wall_offset(self) -> float:
        now = client.monotonic()
        wall = self.wall_time(now)
        if wall is None:
            raise DeviceLinkError("%s: the wall clock is not set" % self.config.name)
        return float(wall - now)

    def _payload(self, entries: list[Any], now: float) -> Any:
        items = []
        for _rid, slot, values, t, absolute in entries:
            if absolute:
                items.append((slot, values, wire_time(t)))
            else:
                age = now - t
                items.append((slot, values, -int(age + 0.5) if age > 0 else 0))
        return reading.encode_readings(items)


class DeviceLink:
    """One enrolled device driven over UDP (module docstring)."""

    def __init__(
        self,
        cfg: Any,
        state_path: Path,
        *,
        command_poll: float = 0.0,
        logger: logging.Logger | None = None,
    ) -> None:
        self.cfg = cfg
        self.name: str = cfg.name
        self.log = logger or logging.getLogger("lowbw.adapters")
        self._dlog = logging.getLogger("lowbw.adapters.device")
        try:
            self.store = store.FileStore(str(state_path))
        except DecodeError as exc:
            raise DeviceLinkError(
                "%s: state file is not a lowbw device state (%s); move it away to start afresh"
                % (state_path, exc.message)
            )
        except OSError as exc:
            raise DeviceLinkError("%s: cannot read state file (%s)" % (state_path, exc))
        self.device = StatedTimeDevice(cfg, self.store, log=self._dlog.debug)
        # This host's clock is set: readings carry absolute times, which stay
        # right in the state file across restarts.
        self.device.set_wall_time(time.time())
        try:
            self.link = udp.UdpLink(cfg.proxy_host, cfg.proxy_port, log=self._dlog.debug)
        except OSError as exc:
            raise DeviceLinkError(
                "%s: cannot reach the proxy %s:%d (%s)" % (self.name, cfg.proxy_host, cfg.proxy_port, exc)
            )
        self.device.on_result = self._on_result
        self.command_poll = command_poll
        self.next_poll: float | None = (client.monotonic() + command_poll) if command_poll > 0 else None
        self.result_hooks: list[Callable[[int, str, int | None, str | None], None]] = []
        self.counters = {"queued": 0, "acked": 0, "rejected": 0, "dropped": 0, "polls": 0}
        # Why readings were not acknowledged: CoAP code ("4.00", or "reset"); drop reason.
        self.rejected_by: dict[str, int] = {}
        self.dropped_by: dict[str, int] = {}
        pending = self.device.pending()
        if pending:
            self.log.info("%s: %d reading(s) from the state file still to send", self.name, pending)

    # -- what the adapters use -----------------------------------------------

    def fileno(self) -> int:
        fd: int = self.link.sock.fileno()
        return fd

    @property
    def next_rid(self) -> int:
        """The id the next ``queue`` call will return (persisted with the queue)."""
        n: int = self.store.next_rid
        return n

    def room_for(self, n: int) -> bool:
        """True if ``n`` more readings fit in the queue without dropping any."""
        return bool(len(self.store.queue) + n <= self.cfg.queue_limit)

    def queue(self, slot: int, values: list[Value], at: float | None = None) -> int:
        """Queue a reading measured at ``at`` (Unix seconds; default now), durable when
        this returns; EncodeError if it does not fit the slot."""
        rid: int = self.device.send_at(slot, values, time.time() if at is None else at)
        self.counters["queued"] += 1
        return rid

    def readable(self, now: float) -> None:
        for _ in range(64):
            data = self.link.recv()
            if data is None:
                return
            self.link.received += 1
            self.device.receive(data, now)

    def service(self, now: float) -> float | None:
        if self.next_poll is not None and now >= self.next_poll:
            if self.device.idle():
                self.device.sync_time()
                self.counters["polls"] += 1
            self.next_poll = now + self.command_poll
        for datagram in self.device.step(now):
            self.link.send(datagram)
        due: float | None = self.device.next_deadline()
        if self.next_poll is not None:
            due = self.next_poll if due is None else min(due, self.next_poll)
        return due

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counters)
        out["pending"] = self.device.pending()
        out["device"] = dict(self.device.counters)
        return out

    def close(self) -> None:
        try:
            self.device.flush()
        except OSError as exc:
            self.log.error("%s: cannot write the state file: %s", self.name, exc)
        self.link.close()

    # -- callbacks -------------------------------------------------------------

    def _on_result(self, rid: int, status: str, code: int | None, reason: str | None) -> None:
        if status == client.ACKED:
            self.counters["acked"] += 1
            self.log.debug("%s: reading %d acknowledged", self.name, rid)
        elif status == client.REJECTED:
            self.counters["rejected"] += 1
            what = "%d.%02d" % (code >> 5, code & 31) if code is not None else "reset"
            self.rejected_by[what] = self.rejected_by.get(what, 0) + 1
            self.log.warning(
                "%s: reading %d rejected by the proxy: %s %s", self.name, rid, what, reason or ""
            )
        else:
            self.counters["dropped"] += 1
            why = "queue_full" if reason == "queue full" else "other"
            self.dropped_by[why] = self.dropped_by.get(why, 0) + 1
            self.log.warning("%s: reading %d dropped (%s)", self.name, rid, reason or status)
        for hook in self.result_hooks:
            hook(rid, status, code, reason)
