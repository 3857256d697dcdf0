"""A serial line paced at a baud rate, between two pseudo-terminals.

A PTY ignores the baud rate it is configured with: bytes cross instantly. For
software that must see a real 1200-baud line (a radio modem on a UART), a
:class:`PacedSerialLink` sits between two PTY masters and forwards each byte
no sooner than the line could have carried it: ``bits_per_byte / baud``
seconds per byte (10 bits for 8N1), back to back, plus ``latency_s``.

``python -m radio_sim serial --baud 1200`` makes two PTY pairs, prints
``pty-a PATH`` and ``pty-b PATH`` and bridges them until SIGINT/SIGTERM;
open the two paths with pyserial (or anything) at either end.

Pacing is scheduled, not measured: byte i of a burst leaves at
``max(arrival, previous departure) + bits_per_byte / baud``. The bridge
never writes a byte before its departure time; it can write later if the
process is slow. ``stats()`` reports bytes and line time per direction.
"""

from __future__ import annotations

import collections
import errno
import os
import select
import threading
import time
import tty
from collections.abc import Callable
from typing import Any

A_TO_B = "a_to_b"
B_TO_A = "b_to_a"


def open_pty() -> tuple[int, int, str]:
    """A raw PTY pair: (master fd, slave fd, slave path)."""
    master, slave = os.openpty()
    # Raw mode: no echo, no CR/LF translation, no line buffering.
    tty.setraw(slave)
    return master, slave, os.ttyname(slave)


class _Lane:
    def __init__(self, name: str) -> None:
        self.name = name
        # (departure time, byte value) in order
        self.queue: collections.deque[tuple[float, int]] = collections.deque()
        self.last_departure = -1.0
        self.bytes_in = 0
        self.bytes_out = 0
        self.line_time_s = 0.0
        self.max_backlog = 0
        self.late_s = 0.0  # how far behind schedule writes ran, at worst
        self.pending_out = b""


class PacedSerialLink:
    """Bridges two file descriptors (PTY masters) at ``baud`` in a thread.

    ``record=True`` keeps ``(direction, scheduled, written)`` per write batch
    in ``self.record`` so a test can check that nothing left early.
    """

    def __init__(
        self,
        fd_a: int,
        fd_b: int,
        baud: int,
        *,
        bits_per_byte: int = 10,
        latency_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        record: bool = False,
    ) -> None:
        if baud <= 0:
            raise ValueError("baud must be > 0, got %r" % (baud,))
        if bits_per_byte <= 0:
            raise ValueError("bits per byte must be > 0")
        if latency_s < 0:
            raise ValueError("latency must be >= 0")
        self.fd_a = fd_a
        self.fd_b = fd_b
        self.baud = baud
        self.bits_per_byte = bits_per_byte
        self.byte_time = bits_per_byte / baud
        self.latency_s = latency_s
        self.clock = clock
        self.lanes = {A_TO_B: _Lane(A_TO_B), B_TO_A: _Lane(B_TO_A)}
        self.record: list[tuple[str, float, float, int]] | None = [] if record else None
        self._wake_r, self._wake_w = os.pipe()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.started = self.clock()
        for fd in (fd_a, fd_b, self._wake_r):
            os.set_blocking(fd, False)

    # -- lifecycle --------------------------------------------------------

    def start(self) -> PacedSerialLink:
        self._thread = threading.Thread(target=self._run, name="PacedSerialLink", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(timeout)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> PacedSerialLink:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- the pump ---------------------------------------------------------

    def _schedule(self, lane: _Lane, data: bytes, now: float) -> None:
        t = max(now + self.latency_s, lane.last_departure)
        for b in data:
            t += self.byte_time
            lane.queue.append((t, b))
        lane.last_departure = t
        lane.bytes_in += len(data)
        lane.line_time_s += len(data) * self.byte_time
        lane.max_backlog = max(lane.max_backlog, len(lane.queue))

    def _flush(self, lane: _Lane, fd: int, now: float) -> None:
        if lane.pending_out:
            lane.pending_out = self._write(fd, lane.pending_out)
            if lane.pending_out:
                return
        due = bytearray()
        last = 0.0
        while lane.queue and lane.queue[0][0] <= now:
            last, b = lane.queue.popleft()
            due.append(b)
        if not due:
            return
        lane.late_s = max(lane.late_s, now - last)
        if self.record is not None:
            self.record.append((lane.name, last - self.started, now - self.started, len(due)))
        lane.bytes_out += len(due)
        lane.pending_out = self._write(fd, bytes(due))

    @staticmethod
    def _write(fd: int, data: bytes) -> bytes:
        try:
            n = os.write(fd, data)
        except BlockingIOError:
            return data
        except OSError as exc:
            if exc.errno == errno.EIO:  # nobody holds the other side open
                return b""
            raise
        return data[n:]

    def _next_due(self) -> float | None:
        times = [lane.queue[0][0] for lane in self.lanes.values() if lane.queue]
        return min(times) if times else None

    def _run(self) -> None:
        lane_ab, lane_ba = self.lanes[A_TO_B], self.lanes[B_TO_A]
        while not self._stop:
            now = self.clock()
            due = self._next_due()
            timeout = None if due is None else max(0.0, due - now)
            if lane_ab.pending_out or lane_ba.pending_out:
                timeout = 0.01 if timeout is None else min(timeout, 0.01)
            try:
                readable, _, _ = select.select([self.fd_a, self.fd_b, self._wake_r], [], [], timeout)
            except InterruptedError:
                continue
            now = self.clock()
            with self._lock:
                for fd, lane in ((self.fd_a, lane_ab), (self.fd_b, lane_ba)):
                    if fd in readable:
                        try:
                            data = os.read(fd, 4096)
                        except (BlockingIOError, InterruptedError):
                            data = b""
                        except OSError as exc:
                            if exc.errno != errno.EIO:
                                raise
                            data = b""
                        if data:
                            self._schedule(lane, data, now)
                self._flush(lane_ab, self.fd_b, now)
                self._flush(lane_ba, self.fd_a, now)
            if self._wake_r in readable:
                try:
                    os.read(self._wake_r, 64)
                except OSError:
                    pass

    # -- counters ---------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {
                "baud": self.baud,
                "bits_per_byte": self.bits_per_byte,
                "byte_time_s": self.byte_time,
                "latency_s": self.latency_s,
            }
            for name, lane in self.lanes.items():
                out[name] = {
                    "bytes_in": lane.bytes_in,
                    "bytes_out": lane.bytes_out,
                    "queued": len(lane.queue),
                    "line_time_s": lane.line_time_s,
                    "max_backlog": lane.max_backlog,
                    "max_late_s": lane.late_s,
                }
            return out


class PtyBridge:
    """Two raw PTY pairs joined by a :class:`PacedSerialLink`; ``path_a``/``path_b`` are the ends."""

    def __init__(self, baud: int, **kwargs: Any) -> None:
        self.master_a, self.slave_a, self.path_a = open_pty()
        self.master_b, self.slave_b, self.path_b = open_pty()
        # The slave fds stay open here so a client closing its end never
        # turns the master into EIO for the next client.
        self.link = PacedSerialLink(self.master_a, self.master_b, baud, **kwargs)

    def start(self) -> PtyBridge:
        self.link.start()
        return self

    def close(self) -> None:
        self.link.stop()
        for fd in (self.master_a, self.slave_a, self.master_b, self.slave_b):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> PtyBridge:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()
