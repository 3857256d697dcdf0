"""A blocking poll loop that drives a ``Device`` over one UDP socket.

Runs on the MicroPython unix port (``socket``, ``select.poll``) and on
CPython. The loop, with ``now`` from the device's monotonic clock::

    step(now) -> sendto each datagram
    wait in poll() until a datagram arrives or next_deadline() is due
    recv into a preallocated buffer -> receive(view, now)

It stops when ``until()`` returns true (checked every turn) or after
``timeout`` seconds. Replies are not filtered by source address: the frames
are authenticated, and a radio relay in between answers from its own address.

Shared with MicroPython.
"""

import socket

try:
    import select
except ImportError:  # older MicroPython ports
    import uselect as select  # type: ignore[import-not-found,no-redef]

MAX_DATAGRAM = 1500


class UdpLink:
    """A UDP socket towards ``host:port`` and the loop that drives a Device."""

    def __init__(self, host, port, log=None, bufsize=MAX_DATAGRAM):
        info = socket.getaddrinfo(host, port)[0]
        self.addr = info[-1]
        self.sock = socket.socket(info[0], socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.poller = select.poll()
        self.poller.register(self.sock, select.POLLIN)
        self._buf = bytearray(bufsize)
        self._mv = memoryview(self._buf)
        self._log = log
        # CPython has recv_into; MicroPython's socket reads a datagram with readinto.
        self._into = getattr(self.sock, "recv_into", None) or self.sock.readinto
        self.sent = 0
        self.received = 0

    def close(self):
        try:
            self.poller.unregister(self.sock)
        except (OSError, ValueError, KeyError):
            pass
        self.sock.close()

    def _say(self, text):
        if self._log is not None:
            self._log(text)

    def send(self, datagram):
        try:
            self.sock.sendto(datagram, self.addr)
            self.sent += 1
        except OSError as exc:
            # A full buffer or an unreachable network is a lost datagram to the
            # device; its retransmission timer copes.
            self._say("udp send failed: %r" % (exc,))

    def recv(self):
        """A memoryview of the next datagram (valid until the next recv), or None."""
        try:
            n = self._into(self._buf)
        except OSError:
            return None
        if not n:
            return None
        return self._mv[:n]

    def run(self, device, until=None, timeout=None, clock=None):
        """Drive ``device`` until ``until()`` is true (return True) or
        ``timeout`` seconds pass (return False). With neither, runs forever."""
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
            if until is not None and until():
                return True
            due = device.next_deadline()
            wait = None if due is None else max(0, due - now)
            if end is not None and (wait is None or end - now < wait):
                wait = end - now
            ms = -1 if wait is None else int(wait * 1000) + 1
            if self.poller.poll(ms):
                data = self.recv()
                if data is not None:
                    self.received += 1
                    device.receive(data, clock())
