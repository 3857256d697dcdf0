"""The device's link over a serial line: SLIP frames to and from a radio modem.

Each lowbw datagram travels as one SLIP frame (``lowbw.wire.slip``) whose
first byte is the link-address length, then the address, then the datagram
(``slip.encode_addressed``). A device sends with its own address (empty on a
point-to-point line) and accepts frames carrying that address; frames for
other addresses, line noise and malformed frames are counted and dropped.

``port`` is anything with ``write(bytes)``, ``any() -> int`` and
``read(n) -> bytes or None``: a ``machine.UART`` on a board, a fake in the
tests. ``run()`` has the contract of ``lowbw.device.udp.UdpLink.run``; the
UART has no poll() on every port, so waiting is a sleep of ``poll_ms``
between looks at the receive buffer (the buffer holds what arrives meanwhile).
"""

import time

from lowbw.wire import slip
from lowbw.wire.errors import DecodeError

try:
    _sleep_ms = time.sleep_ms
except AttributeError:  # CPython (tests)

    def _sleep_ms(ms):
        time.sleep(ms / 1000)


class SerialLink:
    def __init__(self, port, address=b"", log=None, max_frame=512, poll_ms=10):
        self.port = port
        self.address = bytes(address)
        self._log = log
        self.poll_ms = poll_ms
        self.decoder = slip.Decoder(max_frame)
        self._inbox = []
        self.sent = 0
        self.received = 0
        self.foreign = 0
        self.malformed = 0

    def close(self):
        pass

    def send(self, datagram):
        try:
            self.port.write(slip.encode_addressed(self.address, datagram))
            self.sent += 1
        except OSError as exc:
            if self._log is not None:
                self._log("serial send failed: %r" % (exc,))

    def _pump(self):
        n = self.port.any()
        if not n:
            return
        data = self.port.read(n)
        if not data:
            return
        for frame in self.decoder.feed(data):
            try:
                addr, datagram = slip.split_addressed(frame)
            except DecodeError:
                self.malformed += 1
                continue
            if addr != self.address:
                self.foreign += 1
                continue
            self._inbox.append(datagram)

    def recv(self):
        """The next datagram for us, or None."""
        if not self._inbox:
            self._pump()
        if self._inbox:
            return self._inbox.pop(0)
        return None

    def run(self, device, until=None, timeout=None, clock=None):
        """Drive ``device`` until ``until()`` is true (True) or ``timeout``
        seconds pass (False); with neither, for ever."""
        clock = clock or device.clock
        end = None if timeout is None else clock() + timeout
        while True:
            if until is not None and until():
                return True
            now = clock()
            if end is not None and now >= end:
                return False
            for d in device.step(now):
                self.send(d)
            data = self.recv()
            if data is not None:
                self.received += 1
                device.receive(data, clock())
                continue
            due = device.next_deadline()
            if due is not None and due <= clock():
                continue
            _sleep_ms(self.poll_ms)
