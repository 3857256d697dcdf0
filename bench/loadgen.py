"""A cheap closed-loop load generator for the multi-process bench (``--nodes``).

bench/proxy_load.py's simulated devices run on asyncio and encrypt every
reading when it is due: about 120-150 µs of CPU per reading, a quarter of a
core at 2,000 readings/s, CPU a second proxy process on the 2-core machine
does not get (docs/scale-out.md). Here the work that is not the proxy's is
moved out of the measured window:

* handshakes on plain blocking sockets before the run (one per device, its
  own source port kept for the run: ``SO_REUSEPORT`` steers by it);
* each device's next ``frames`` readings sealed ahead, with successive
  counters and message numbers (short counter form, as a device that hears
  its answers sends);
* the measured loop only sends bytes and counts answers: one ``epoll`` over
  the devices' connected sockets, one reading outstanding per device (a
  device's next frame leaves when its answer arrives);
* every answer is kept and, after the run, opened in order with the device's
  session: each must authenticate and be the 2.04 Changed of the reading it
  answers (``verify``), so the count is of real answers, not datagrams.

A device that ran out of sealed frames seals on the fly (counted in the
generator's CPU); one whose answer is ``timeout`` late is sent the same
reading again under a new counter and seals on the fly from then on (the
proxy's replay window would refuse the older sealed frames).
"""

from __future__ import annotations

import select
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from lowbw.wire import coap, handshake

try:
    from bench.proxy_load import percentile, reading_request
except ImportError:  # run from bench/ as a script
    from proxy_load import percentile, reading_request  # type: ignore[no-redef]


# Seconds between the generator's polls (``run``): answers taken in batches.
BATCH_SECONDS = 0.001


@dataclass
class FastDevice:
    name: str
    priv: bytes
    pub: bytes
    sock: socket.socket | None = None
    session: Any = None
    mid: int = 1  # the next reading's message number
    frames: list[bytes] = field(default_factory=list)
    first_mid: int = 0  # message number of frames[0]
    sent: int = 0  # readings sent (index into frames while sealed ahead)
    sealed_ahead: bool = True
    answers: list[bytes] = field(default_factory=list)
    rtts: list[float] = field(default_factory=list)
    sent_at: float = 0.0
    retries: int = 0

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def connect(
    devices: list[FastDevice], proxy: tuple[str, int], proxy_pub: bytes, timeout: float = 5.0
) -> float:
    """Open every device's socket and run its IK handshake (0-RTT: a first reading).
    Seconds it took."""
    t = time.monotonic()
    for dev in devices:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.connect(proxy)
        sock.settimeout(timeout)
        dev.sock = sock
        for _ in range(5):
            init = handshake.Initiator(dev.priv, proxy_pub)
            sock.send(init.start(reading_request(0, 0)))
            try:
                answer = sock.recv(2048)
            except TimeoutError:
                dev.retries += 1
                continue
            dev.session, _, _ = init.finish(answer)
            break
        else:
            raise RuntimeError("%s: handshake failed 5 times" % dev.name)
        sock.setblocking(False)
    return time.monotonic() - t


def seal_ahead(devices: list[FastDevice], count: int) -> float:
    """Seal each device's next ``count`` readings (before the measured window). Seconds it took."""
    t = time.monotonic()
    for dev in devices:
        dev.first_mid = dev.mid
        dev.frames = [
            dev.session.seal(reading_request(m & 0xFFFF, m % 1000), long_form=False)
            for m in range(dev.mid, dev.mid + count)
        ]
        dev.sent = 0
        dev.sealed_ahead = True
        dev.answers, dev.rtts = [], []
    return time.monotonic() - t


def _frame(dev: FastDevice) -> bytes:
    """The frame of reading number ``dev.mid`` (sealed ahead, or now)."""
    i = dev.mid - dev.first_mid
    if dev.sealed_ahead and i < len(dev.frames):
        return dev.frames[i]
    dev.sealed_ahead = False
    return bytes(dev.session.seal(reading_request(dev.mid & 0xFFFF, dev.mid % 1000), long_form=False))


def run(
    devices: list[FastDevice],
    duration: float,
    timeout: float = 2.0,
    drain: float = 2.0,
    batch: float = BATCH_SECONDS,
) -> dict[str, Any]:
    """Closed loop for ``duration`` seconds: readings answered in the window, and this
    process's CPU seconds in it (the generator's own cost). Answers still out at
    the end are waited for (``drain`` seconds at most) and verified, not counted."""
    ep = select.epoll()
    by_fd: dict[int, tuple[FastDevice, socket.socket]] = {}
    for dev in devices:
        assert dev.sock is not None
        by_fd[dev.sock.fileno()] = (dev, dev.sock)
        ep.register(dev.sock.fileno(), select.EPOLLIN)
    waiting: set[str] = set()
    mono = time.monotonic
    cpu0 = time.process_time()
    window_cpu: float | None = None
    start = mono()
    stop_at = start + duration
    for dev in devices:
        assert dev.sock is not None
        dev.sent_at = mono()
        dev.sock.send(_frame(dev))
        waiting.add(dev.name)
    counted = 0
    next_check = start + timeout / 4
    now = start
    poll = ep.poll
    sleep = time.sleep
    # The loop below is the generator's whole cost per reading: kept to a recv,
    # a clock read, two appends and a send (attribute lookups hoisted).
    while waiting and now < stop_at + drain:
        if batch:
            # Answers trickle in one or two per wake-up at these rates: a wake-up
            # (epoll_wait, the context switch) cost more than the answers it
            # brought (~16 µs of CPU per reading, measured). Waiting ``batch``
            # seconds between polls takes them ~10 at a time (~5 µs per
            # reading); a device's next reading leaves that much later, while
            # the other devices' keep the proxies busy (the proxies' CPU share
            # and machine_busy_cores show whether they were).
            sleep(batch)
        for fd, _ in poll(0.05):
            dev, sock = by_fd[fd]
            try:
                data = sock.recv(2048)
            except BlockingIOError:
                continue
            now = mono()
            dev.answers.append(data)
            dev.mid += 1
            if now < stop_at:
                counted += 1
                dev.rtts.append(now - dev.sent_at)
                dev.sent_at = now
                i = dev.mid - dev.first_mid
                sock.send(dev.frames[i] if dev.sealed_ahead and i < len(dev.frames) else _frame(dev))
            else:
                waiting.discard(dev.name)
        now = mono()
        if window_cpu is None and now >= stop_at:
            window_cpu = time.process_time() - cpu0
        if now >= next_check and now < stop_at:
            next_check = now + timeout / 4
            for dev in devices:
                if now - dev.sent_at > timeout:
                    # Lost (or very late): the same reading again, under a new counter.
                    assert dev.sock is not None
                    dev.retries += 1
                    dev.sealed_ahead = False
                    dev.sent_at = now
                    dev.sock.send(_frame(dev))
    if window_cpu is None:
        window_cpu = time.process_time() - cpu0
    ep.close()
    return {"readings": counted, "seconds": duration, "cpu_s": window_cpu, "unanswered_at_end": len(waiting)}


def verify(devices: list[FastDevice]) -> dict[str, int]:
    """Open every answer in order: authenticated, a CoAP ACK 2.04 of the reading it was counted for."""
    good = bad = 0
    for dev in devices:
        # One answer per reading, in order: the i-th answers reading first_mid + i
        # (a retried reading answered twice shifts the rest: all counted bad).
        for i, data in enumerate(dev.answers):
            mid = dev.first_mid + i
            try:
                answer = coap.decode(dev.session.open(data))
            except Exception:  # noqa: BLE001 - any failure to open is a bad answer, counted
                bad += 1
                continue
            if answer.mid == mid & 0xFFFF and answer.code == coap.CHANGED:
                good += 1
            else:
                bad += 1
    return {"answers_verified": good, "answers_bad": bad}


def percentile_ms(devices: list[FastDevice], p: float) -> float | None:
    values = [r for d in devices for r in d.rtts]
    return round(percentile(values, p) * 1000, 2) if values else None


def default_frames(duration: float, devices: int) -> int:
    """Frames to seal ahead per device: enough for 8,000 readings/s in all (more
    than two proxies reach here), the rest sealed on the fly."""
    return max(100, int(duration * 8000 / max(1, devices)) + 1)
