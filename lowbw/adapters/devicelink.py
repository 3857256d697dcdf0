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

Commands wait at the proxy until the device talks to it (every answer says
how many are pending), so an adapter that has nothing to send asks for the
time every ``command_poll`` seconds: a 6-byte request whose answer carries
that count.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lowbw.device import client, store, udp
from lowbw.device import config as device_config
from lowbw.wire.errors import DecodeError, LowbwError

Value = int | float | None


class DeviceLinkError(LowbwError):
    """The device config or its state file cannot be used."""


def load_device_config(path: Path) -> Any:
    try:
        return device_config.load(str(path))
    except device_config.ConfigError as exc:
        raise DeviceLinkError(exc.message)


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
        self.device = client.Device(cfg, self.store, log=self._dlog.debug)
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

    def queue(self, slot: int, values: list[Value], when: float | None = None) -> int:
        """Queue a reading (durable when this returns); EncodeError if it does not fit the slot."""
        rid: int = self.device.send(slot, values, when)
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
            self.log.warning(
                "%s: reading %d rejected by the proxy: %s %s", self.name, rid, what, reason or ""
            )
        else:
            self.counters["dropped"] += 1
            self.log.warning("%s: reading %d dropped (%s)", self.name, rid, reason or status)
        for hook in self.result_hooks:
            hook(rid, status, code, reason)
