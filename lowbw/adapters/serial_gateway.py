"""``lowbw serial-gateway``: devices on a UART or radio modem, through the proxy.

Two modes (``serial.mode`` in the config):

**modem** -- a radio modem (or a wired device) on the port carries lowbw
datagrams in SLIP frames with link addresses (``lowbw.wire.slip``,
docs/PROTOCOL.md "Serial lines"). For each link address the gateway keeps one
UDP socket towards the proxy, so the proxy sees one source port per device and
its answers come back on that socket; they go out on the port framed with the
same address. The gateway never decrypts: Noise stays end to end between
device and proxy. Frames that are not SLIP, have a bad address or do not hold a
lowbw datagram are logged and skipped.

**line** -- a sensor that cannot run the device client writes lines
(``temperature=21.5 humidity=40`` or ``{"temperature": 21.5}``,
``lowbw.adapters.line_protocol``). The gateway *is* an enrolled device (its own
device config from ``lowbw device enroll``): each good line becomes readings of
that device's slots (``lowbw.adapters.values``), sent through the proxy by
``lowbw.device.client.Device`` with its exactly-once guarantees. Bad lines are
logged with the reason and skipped. Commands for the device are logged, or
written to the port as lines (``line.commands = "serial"``).

Both modes: the port is reopened when it disappears and comes back (a USB
adapter unplugged; a symlink such as /dev/serial/by-id/... is resolved again on
every attempt); output to the port is paced at ``baud / bits_per_byte`` bytes
per second so a modem without flow control is never overrun; the output buffer
is bounded (``out_buffer`` bytes; a frame that does not fit is dropped and
counted), so are input frames (``max_frame``) and lines (``max_line``). Nothing
on the port or the network makes the gateway exit; SIGINT/SIGTERM stop it
cleanly (line mode: the device state is written first).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import selectors
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import serial

from lowbw.adapters import config as adapter_config
from lowbw.adapters.devicelink import DeviceLink, DeviceLinkError, load_device_config
from lowbw.adapters.line_protocol import LineError, LineSplitter, parse_line
from lowbw.adapters.logutil import Throttle, setup_logging
from lowbw.adapters.metrics import serial_families
from lowbw.adapters.runner import serve
from lowbw.adapters.values import SlotMapper, describe, unix_from_timestamp
from lowbw.wire import frames, slip
from lowbw.wire.errors import DecodeError, EncodeError

log = logging.getLogger("lowbw.adapters.serial")

# Write at most this much line time at once: small enough that pacing is even,
# large enough that a fast line is not written a byte per system call.
WRITE_SLICE_S = 0.02
MAX_DATAGRAM = 65535


class SerialPort:
    """A pyserial port that comes and goes; raw non-blocking reads and writes on its fd."""

    def __init__(self, settings: adapter_config.SerialSettings) -> None:
        self.settings = settings
        self.ser: serial.Serial | None = None
        self.reopen_at = 0.0
        self.opens = 0
        self.losses = 0
        self._complained = False

    @property
    def is_open(self) -> bool:
        return self.ser is not None

    def fileno(self) -> int:
        assert self.ser is not None
        fd: int = self.ser.fileno()
        return fd

    def try_open(self, now: float) -> bool:
        s = self.settings
        try:
            ser = serial.Serial(port=s.port, baudrate=s.baud, timeout=0, write_timeout=0, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            self.reopen_at = now + s.reopen_interval
            if not self._complained:
                log.warning(
                    "cannot open %s (%s); trying again every %g s", s.port, _short(exc), s.reopen_interval
                )
                self._complained = True
            return False
        os.set_blocking(ser.fileno(), False)
        self.ser = ser
        self.opens += 1
        self._complained = False
        real = os.path.realpath(s.port)
        log.info(
            "opened %s%s at %d baud",
            s.port,
            " (%s)" % real if real != s.port else "",
            s.baud,
        )
        return True

    def lost(self, now: float, why: str) -> None:
        self.losses += 1
        log.warning(
            "lost %s: %s; reopening every %g s", self.settings.port, why, self.settings.reopen_interval
        )
        self.close()
        self.reopen_at = now + self.settings.reopen_interval
        self._complained = True

    def read(self, first: bool) -> bytes:
        """Available bytes, or b"" if none; OSError/EOFError when the device went away.

        pyserial sets VMIN = VTIME = 0, so a read with nothing to read returns
        b"" rather than EAGAIN; only right after select() said "readable" does
        b"" mean a hang-up (an unplugged USB adapter, a closed PTY master).
        """
        assert self.ser is not None
        try:
            data = os.read(self.ser.fileno(), 4096)
        except (BlockingIOError, InterruptedError):
            return b""
        if not data and first:
            raise EOFError("the device reports readiness but returns no data (unplugged?)")
        return data

    def write(self, data: bytes | memoryview) -> int:
        assert self.ser is not None
        try:
            return os.write(self.ser.fileno(), data)
        except (BlockingIOError, InterruptedError):
            return 0

    def close(self) -> None:
        if self.ser is not None:
            try:
                self.ser.close()
            except (OSError, serial.SerialException):
                pass
            self.ser = None


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


@dataclass
class Peer:
    """A device behind the modem: its link address and its own UDP socket towards the proxy."""

    addr: bytes
    sock: socket.socket
    last_heard: float
    up: int = 0
    down: int = 0
    up_bytes: int = 0
    down_bytes: int = 0
    handler: Callable[[float], None] | None = field(default=None, repr=False)


class SerialGateway:
    """The gateway's event loop (module docstring). ``run()`` until ``stop()``."""

    def __init__(self, cfg: adapter_config.GatewayConfig) -> None:
        self.cfg = cfg
        s = cfg.serial
        self.port = SerialPort(s)
        self.rate = s.baud / s.bits_per_byte  # bytes per second on the line
        self.slice = max(1, int(self.rate * WRITE_SLICE_S))
        self.out = bytearray()
        self.next_write = 0.0
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, self._drain_wake)
        self._stop = False
        self._closed = False
        self.throttle = Throttle(log)
        self.counters: dict[str, int] = {
            "bytes_in": 0,
            "bytes_out": 0,
            "frames_in": 0,
            "frames_out": 0,
            "datagram_bytes_up": 0,
            "datagram_bytes_down": 0,
            "malformed": 0,
            "dropped_out": 0,
            "dropped_peers": 0,
            "udp_errors": 0,
            "lines": 0,
            "lines_bad": 0,
            "readings": 0,
            "commands": 0,
        }
        self.peers: dict[bytes, Peer] = {}
        self.decoder: slip.Decoder | None = None
        self.splitter: LineSplitter | None = None
        self.link: DeviceLink | None = None
        self.mapper: SlotMapper | None = None
        self.next_sweep = 0.0
        if cfg.modem is not None:
            m = cfg.modem
            self.decoder = slip.Decoder(m.max_frame)
            self._resync()
            info = socket.getaddrinfo(m.proxy_host, m.proxy_port, type=socket.SOCK_DGRAM)[0]
            self.proxy_family = info[0]
            self.proxy_addr = info[4]
        if cfg.line is not None:
            ln = cfg.line
            self.splitter = LineSplitter(ln.max_line)
            dcfg = load_device_config(ln.device_config)
            self.mapper = SlotMapper(dcfg.slots, ln.rename, strict=True)
            self.link = DeviceLink(dcfg, ln.state, command_poll=ln.command_poll, logger=log)
            self.link.device.on_command = self._on_command
            self.sel.register(self.link.fileno(), selectors.EVENT_READ, self._device_readable)

    # -- life cycle ----------------------------------------------------------------

    def stop(self) -> None:
        """Ask ``run`` to return (thread- and signal-safe)."""
        self._stop = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def run(self) -> None:
        mode = "modem" if self.cfg.modem is not None else "line"
        if self.link is not None:
            log.info(
                "line mode: readings of device %s (slots: %s) to the proxy %s:%d",
                self.link.name,
                ", ".join(name for name, _f in self.link.cfg.slots),
                self.link.cfg.proxy_host,
                self.link.cfg.proxy_port,
            )
        elif self.cfg.modem is not None:
            log.info(
                "modem mode: SLIP frames to the proxy %s:%d",
                self.cfg.modem.proxy_host,
                self.cfg.modem.proxy_port,
            )
        log.info("serial gateway (%s mode) on %s", mode, self.cfg.serial.port)
        try:
            while not self._stop:
                now = time.monotonic()
                if not self.port.is_open and now >= self.port.reopen_at:
                    if self.port.try_open(now):
                        self.sel.register(self.port.fileno(), selectors.EVENT_READ, self._serial_readable)
                        self._resync()
                wake = self._timers(now)
                timeout = None if wake is None else max(0.0, wake - time.monotonic())
                for key, _events in self.sel.select(timeout):
                    key.data(time.monotonic())
        finally:
            self.close()

    def close(self) -> None:
        if self.port.is_open:
            self._unregister_port()
            self.port.close()
        for peer in list(self.peers.values()):
            self._drop_peer(peer, "gateway stopping")
        if self.link is not None and not self._closed:
            self.link.close()
        self._closed = True
        try:
            self.sel.close()
        except (OSError, ValueError):
            pass
        self._wake_r.close()
        self._wake_w.close()
        log.info("serial gateway stopped: %s", json.dumps(self.stats(), sort_keys=True))

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counters)
        out["port_opens"] = self.port.opens
        out["port_losses"] = self.port.losses
        out["out_queued"] = len(self.out)
        if self.decoder is not None:
            out["oversize"] = self.decoder.oversize
            out["bad_escape"] = self.decoder.bad_escape
            out["peers"] = len(self.peers)
        if self.splitter is not None:
            out["too_long"] = self.splitter.too_long
        if self.link is not None:
            out["device"] = self.link.stats()
        return out

    # -- the loop's pieces ---------------------------------------------------------

    def _drain_wake(self, now: float) -> None:
        try:
            self._wake_r.recv(4096)
        except OSError:
            pass

    def _timers(self, now: float) -> float | None:
        """Do what is due; return when something next will be."""
        wake: float | None = None if self.port.is_open else self.port.reopen_at

        def sooner(t: float | None) -> None:
            nonlocal wake
            if t is not None and (wake is None or t < wake):
                wake = t

        sooner(self._pump_out(now))
        if self.link is not None:
            try:
                sooner(self.link.service(now))
            except OSError as exc:
                # The store could not be written: nothing was sent; try again soon.
                log.error("%s: cannot write the device state: %s", self.link.name, exc)
                sooner(now + 1.0)
        if self.decoder is not None and self.peers:
            if now >= self.next_sweep:
                self._sweep(now)
            sooner(self.next_sweep)
        return wake

    def _pump_out(self, now: float) -> float | None:
        if not self.out or not self.port.is_open:
            return None
        if now < self.next_write:
            return self.next_write
        try:
            n = self.port.write(memoryview(self.out)[: self.slice])
        except OSError as exc:
            self._port_lost(now, "write failed: %s" % _short(exc))
            return None
        if n == 0:
            return now + 0.01  # the tty's buffer is full
        del self.out[:n]
        self.counters["bytes_out"] += n
        self.next_write = max(self.next_write, now) + n / self.rate
        return self.next_write if self.out else None

    def _enqueue(self, data: bytes, now: float, what: str) -> bool:
        if len(self.out) + len(data) > self.cfg.serial.out_buffer:
            self.counters["dropped_out"] += 1
            self.throttle.warning(
                now,
                "output buffer full (%d of %d bytes): dropped %s (%d bytes)",
                len(self.out),
                self.cfg.serial.out_buffer,
                what,
                len(data),
            )
            return False
        self.out += data
        return True

    def _unregister_port(self) -> None:
        try:
            self.sel.unregister(self.port.fileno())
        except (KeyError, ValueError, OSError):
            pass

    def _port_lost(self, now: float, why: str) -> None:
        self._unregister_port()
        self.port.lost(now, why)

    def _resync(self) -> None:
        # A (re)opened port starts a new stream. SLIP: every lowbw frame starts
        # with END, so whatever comes before the first END is the tail of a
        # frame whose start was lost: drop it. Lines have no such marker; a
        # partial first line starts mid-name or mid-value and fails to parse
        # (logged) rather than being thrown away unseen.
        if self.decoder is not None:
            self.decoder.buf = bytearray()
            self.decoder.escaped = False
            self.decoder.discard = True
        if self.splitter is not None:
            self.splitter.reset()

    def _serial_readable(self, now: float) -> None:
        total = 0
        while self.port.is_open and total < 65536:
            try:
                data = self.port.read(first=total == 0)
            except (OSError, EOFError) as exc:
                self._port_lost(now, _short(exc))
                return
            if not data:
                return
            total += len(data)
            self.counters["bytes_in"] += len(data)
            if self.decoder is not None:
                for frame in self.decoder.feed(data):
                    self._frame_in(frame, now)
            elif self.splitter is not None:
                for line in self.splitter.feed(data):
                    self._line_in(line, now)

    # -- modem mode ----------------------------------------------------------------

    def _frame_in(self, frame: bytes, now: float) -> None:
        try:
            addr, datagram = slip.split_addressed(frame)
            frames.kind_of(datagram)
        except DecodeError as exc:
            self.counters["malformed"] += 1
            self.throttle.warning(now, "skipped a malformed frame (%d bytes): %s", len(frame), exc.message)
            return
        self.counters["frames_in"] += 1
        peer = self._peer(addr, now)
        if peer is None:
            return
        peer.last_heard = now
        peer.up += 1
        peer.up_bytes += len(datagram)
        self.counters["datagram_bytes_up"] += len(datagram)
        try:
            peer.sock.send(datagram)
        except OSError as exc:
            # Proxy down or unreachable: the device's retransmission copes.
            self.counters["udp_errors"] += 1
            self.throttle.warning(
                now, "link %s: send to the proxy failed: %s", addr.hex() or "-", _short(exc)
            )

    def _peer(self, addr: bytes, now: float) -> Peer | None:
        peer = self.peers.get(addr)
        if peer is not None:
            return peer
        m = self.cfg.modem
        assert m is not None
        if len(self.peers) >= m.max_devices:
            oldest = min(self.peers.values(), key=lambda p: p.last_heard)
            self.counters["dropped_peers"] += 1
            self._drop_peer(oldest, "%d devices at most (modem.max_devices)" % m.max_devices)
        try:
            sock = socket.socket(self.proxy_family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect(self.proxy_addr)
        except OSError as exc:
            self.counters["udp_errors"] += 1
            self.throttle.warning(
                now, "link %s: cannot open a UDP socket: %s", addr.hex() or "-", _short(exc)
            )
            return None
        peer = Peer(addr, sock, now)
        peer.handler = lambda t, p=peer: self._peer_readable(p, t)
        self.sel.register(sock, selectors.EVENT_READ, peer.handler)
        self.peers[addr] = peer
        log.info("link address %s: new device, UDP port %d", addr.hex() or "-", sock.getsockname()[1])
        return peer

    def _drop_peer(self, peer: Peer, why: str) -> None:
        try:
            self.sel.unregister(peer.sock)
        except (KeyError, ValueError, OSError):
            pass
        peer.sock.close()
        self.peers.pop(peer.addr, None)
        log.info(
            "link address %s: closed (%s; %d up, %d down)", peer.addr.hex() or "-", why, peer.up, peer.down
        )

    def _sweep(self, now: float) -> None:
        m = self.cfg.modem
        assert m is not None
        for peer in list(self.peers.values()):
            if now - peer.last_heard > m.idle_timeout:
                self._drop_peer(peer, "idle %.0f s" % (now - peer.last_heard))
        self.next_sweep = now + max(1.0, min(60.0, m.idle_timeout / 4))

    def _peer_readable(self, peer: Peer, now: float) -> None:
        for _ in range(32):
            try:
                data = peer.sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.ECONNREFUSED:
                    self.counters["udp_errors"] += 1
                    self.throttle.warning(now, "link %s: the proxy is not listening", peer.addr.hex() or "-")
                    continue
                self.counters["udp_errors"] += 1
                return
            peer.last_heard = now
            peer.down += 1
            try:
                frame = slip.encode_addressed(peer.addr, data)
            except EncodeError:
                continue
            if self._enqueue(frame, now, "a frame for link %s" % (peer.addr.hex() or "-")):
                self.counters["frames_out"] += 1
                self.counters["datagram_bytes_down"] += len(data)
                peer.down_bytes += len(data)

    # -- line mode -------------------------------------------------------------------

    def _device_readable(self, now: float) -> None:
        assert self.link is not None
        self.link.readable(now)

    def _line_in(self, raw: bytes, now: float) -> None:
        assert self.link is not None and self.mapper is not None and self.cfg.line is not None
        self.counters["lines"] += 1
        n = self.counters["lines"]
        try:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise LineError("not UTF-8 text")
            values = parse_line(text, self.cfg.line.format)
            if values is None:
                return
            # The line's arrival (``now`` is when select saw it) on the wall clock,
            # or the time the line states: sent as an absolute time, kept exactly.
            when = time.time() - max(0.0, time.monotonic() - now)
            tf = self.cfg.line.time_field
            if tf is not None and tf in values:
                when = unix_from_timestamp(values.pop(tf), time.time(), tf)
            readings = self.mapper.map(values)
        except DecodeError as exc:
            self.counters["lines_bad"] += 1
            self.throttle.warning(now, "line %d skipped: %s", n, exc.message)
            return
        for slot, vals in readings:
            try:
                self.link.queue(slot, vals, when)
            except EncodeError as exc:
                self.counters["lines_bad"] += 1
                self.throttle.warning(now, "line %d skipped: %s", n, exc.message)
                return
            except OSError as exc:
                log.error("line %d: cannot write the device state, reading lost: %s", n, exc)
                return
            self.counters["readings"] += 1
        log.info("line %d: queued %s", n, describe(self.mapper, readings))

    def _on_command(self, command_id: int, sender: str, body: str, event_id: str) -> None:
        self.counters["commands"] += 1
        assert self.cfg.line is not None
        log.info("command %d from %s (%s): %s", command_id, sender, event_id, body)
        if self.cfg.line.commands == "serial":
            line = body.replace("\r", " ").replace("\n", " ") + "\n"
            self._enqueue(line.encode("utf-8"), time.monotonic(), "command %d" % command_id)


# ---- command line -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lowbw serial-gateway",
        description=(
            "Bridge a serial port to the lowbw proxy. modem mode: SLIP-framed lowbw datagrams "
            "from one or many devices (link addresses), forwarded over UDP without decrypting. "
            "line mode: sensor lines such as 'temperature=21.5 humidity=40' or JSON objects, sent "
            "as readings of the enrolled device the gateway represents."
        ),
        epilog=(
            "The port is reopened when it disappears; output is paced at the configured baud rate. "
            "See examples/serial-gateway.toml and docs (Adapters) for every key. "
            "Exit status: 0 stopped by SIGINT/SIGTERM, 1 failure (bad config included), 2 bad usage."
        ),
    )
    p.add_argument("--config", required=True, metavar="FILE", help="gateway config (TOML)")
    p.add_argument("--check", action="store_true", help="validate the config (and device config) and exit")
    p.add_argument("--stats", metavar="FILE", help="write counters as JSON to FILE when stopping")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: every datagram)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        cfg = adapter_config.load_gateway(args.config)
        if args.check:
            if cfg.line is not None:
                dcfg = load_device_config(cfg.line.device_config)
                SlotMapper(dcfg.slots, cfg.line.rename)
            print("%s: OK (%s mode, %s)" % (args.config, cfg.serial.mode, cfg.serial.port))
            return 0
    except (adapter_config.AdapterConfigError, DeviceLinkError) as exc:
        # A bad config is a failure like any other (exit 1); 2 is for usage errors only.
        print("lowbw serial-gateway: error: %s" % exc.message, file=sys.stderr)
        return 1
    return serve(
        "serial gateway",
        "lowbw serial-gateway",
        cfg.metrics,
        lambda: SerialGateway(cfg),
        args.stats,
        log,
        lambda adapter, started: serial_families(adapter, cfg.metrics, started),
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
