"""lowbw over a LoRaWAN modem: fragmentation, class A, duty cycle (docs/lorawan.md, part 2).

A lowbw datagram rides as the FRMPayload of LoRaWAN frames:

- FPort 1: one whole datagram, no header (a warm reading, 30 B, fits any data rate
  but US915 DR0);
- FPort 2: a fragment, one header byte ``SSSS III L``: S = datagram sequence
  number (mod 16), I = fragment index 0..7, L = 1 on the last fragment. At most
  8 fragments, so a datagram of up to 8 x (max payload - 1) bytes: 400 B at EU868
  DR0 (51 B frames), where a cold IK handshake of 111..115 B takes 3 frames and
  its 52 B answer 2 downlinks;
- FPort 3: an empty uplink that only opens the receive windows (a poll).

``fragment`` / ``Reassembler`` are used by both ends (the device here, the
gateway in ``lowbw.lorawan.gateway``). ``LorawanLink`` drives a ``Device`` over a
class-A modem the way ``lowbw.device.udp.UdpLink`` does over UDP:

- a downlink can only arrive in the receive windows after an uplink (the modem's
  ``transmit`` returns what came in them);
- the duty cycle: after a frame of airtime T the next waits T x (1/duty - 1)
  (1 %: 99 T);
- while the device waits for an answer and nothing came, it polls (FPort 3) when
  the duty cycle allows, at most ``max_polls`` times per request; a downlink with
  FPending set is fetched with a poll as soon as allowed;
- a retransmission of the device client that finds its previous copy still
  unsent replaces it (no storm of copies queued behind the duty cycle).

The modem here is the radio_sim network-server stand-in's UDP modem protocol
(``UdpModem``): uplink ``01 | DevEUI (8) | FPort | payload``, answer after the
receive windows ``02 | FPort | flags (bit 0 FPending) | payload`` or ``03`` (no
downlink) or ``04 | reason`` (refused). A board's real modem driver (AT commands
of an RN2483, an SX127x LoRaWAN stack) exposes the same ``transmit``.

Shared with MicroPython.
"""

import math
import socket
import time

try:
    import select
except ImportError:  # older MicroPython ports
    import uselect as select  # type: ignore[import-not-found,no-redef]

PORT_WHOLE = 1
PORT_FRAGMENT = 2
PORT_POLL = 3
MAX_FRAGMENTS = 8
LORAWAN_OVERHEAD = 13  # MHDR 1, DevAddr 4, FCtrl 1, FCnt 2, FPort 1, MIC 4

# EU868: data rate -> (spreading factor, bandwidth Hz, max FRMPayload without repeater)
EU868 = {0: (12, 125000, 51), 1: (11, 125000, 51), 2: (10, 125000, 51), 3: (9, 125000, 115),
         4: (8, 125000, 222), 5: (7, 125000, 222)}


class FragmentError(Exception):
    pass


def airtime(phy_len, sf, bw=125000, cr=1, preamble=8):
    """LoRa time on air in seconds (Semtech SX127x formula; explicit header, CRC,
    low-data-rate optimisation at SF11/12 on 125 kHz; radio_sim.lora has the same)."""
    t_sym = (1 << sf) / bw
    de = 1 if t_sym > 0.016 else 0
    n = 8 * phy_len - 4 * sf + 28 + 16
    n_payload = 8 + max(math.ceil(n / (4 * (sf - 2 * de))) * (cr + 4), 0)
    return (preamble + 4.25) * t_sym + n_payload * t_sym


def fragment(datagram, max_payload, seq):
    """[(fport, payload)] for ``datagram`` in frames of ``max_payload`` bytes."""
    n = len(datagram)
    if n <= max_payload:
        return [(PORT_WHOLE, bytes(datagram))]
    size = max_payload - 1
    count = (n + size - 1) // size
    if count > MAX_FRAGMENTS:
        raise FragmentError("datagram of %d bytes needs %d fragments (max %d)" % (n, count, MAX_FRAGMENTS))
    out = []
    for i in range(count):
        last = 1 if i == count - 1 else 0
        head = ((seq & 15) << 4) | (i << 1) | last
        out.append((PORT_FRAGMENT, bytes([head]) + bytes(datagram[i * size:(i + 1) * size])))
    return out


class Reassembler:
    """Fragments in, datagrams out; one datagram in progress per peer (a new sequence
    number drops the unfinished one). Bounded: 8 fragments of ``max_fragment`` bytes."""

    def __init__(self, max_fragment=242):
        self.max_fragment = max_fragment
        self.seq = -1
        self.parts = {}
        self.last = -1
        self.started = 0.0
        self.dropped = 0
        self.bad = 0

    def push(self, fport, payload, now=0.0):
        """A whole datagram when one is complete, else None; bad input is counted."""
        if fport == PORT_WHOLE:
            return bytes(payload) if payload else None
        if fport != PORT_FRAGMENT:
            return None
        if len(payload) < 2 or len(payload) > self.max_fragment + 1:
            self.bad += 1
            return None
        head = payload[0]
        seq, idx, last = head >> 4, (head >> 1) & 7, head & 1
        if seq != self.seq:
            if self.parts:
                self.dropped += 1
            self.seq, self.parts, self.last, self.started = seq, {}, -1, now
        if last:
            if self.last >= 0 and self.last != idx:
                self.bad += 1
                self.seq, self.parts, self.last = -1, {}, -1
                return None
            self.last = idx
        self.parts[idx] = bytes(payload[1:])
        if self.last < 0 or len(self.parts) != self.last + 1:
            return None
        for i in range(self.last + 1):
            if i not in self.parts:
                return None
        data = b"".join(self.parts[i] for i in range(self.last + 1))
        self.seq, self.parts, self.last = -1, {}, -1
        return data

    def expire(self, now, timeout):
        if self.parts and now - self.started > timeout:
            self.dropped += 1
            self.seq, self.parts, self.last = -1, {}, -1


class UdpModem:
    """The radio_sim network-server stand-in's modem protocol over UDP (module docstring)."""

    def __init__(self, host, port, dev_eui, rx_timeout=30.0):
        info = socket.getaddrinfo(host, port)[0]
        self.addr = info[-1]
        self.sock = socket.socket(info[0], socket.SOCK_DGRAM)
        self.dev_eui = bytes(dev_eui)
        self.rx_timeout = rx_timeout
        self.poller = select.poll()
        self.poller.register(self.sock, select.POLLIN)

    def transmit(self, fport, payload):
        """Send one uplink; block through its receive windows. Returns
        (fport, payload, pending) of a downlink, None, or raises OSError if refused."""
        self.sock.sendto(bytes([1]) + self.dev_eui + bytes([fport]) + bytes(payload), self.addr)
        end = time.time() + self.rx_timeout
        while True:
            left = end - time.time()
            if left <= 0:
                return None
            if not self.poller.poll(int(left * 1000) + 1):
                continue
            data = self.sock.recv(512)
            if not data:
                continue
            if data[0] == 2 and len(data) >= 3:
                return data[1], data[3:], bool(data[2] & 1)
            if data[0] == 3:
                return None
            if data[0] == 4:
                raise OSError("modem refused the frame: %s" % bytes(data[1:]).decode())

    def close(self):
        self.sock.close()


class LorawanLink:
    """Drives a ``Device`` over a class-A LoRaWAN modem (module docstring).

    ``dr``: EU868 data rate (frame size and airtime); ``duty``: the duty cycle
    (0.01); ``time_scale`` < 1 runs the duty-cycle waits faster, for tests against
    a stand-in that scales its airtime and windows the same way."""

    def __init__(self, modem, dr=0, duty=0.01, time_scale=1.0, max_polls=4, log=None):
        self.modem = modem
        self.sf, self.bw, self.max_payload = EU868[dr]
        self.duty = duty
        self.time_scale = time_scale
        self.max_polls = max_polls
        self.log = log
        self.reasm = Reassembler(self.max_payload)
        self.frames = []  # (fport, payload) waiting for the duty cycle
        self.seq = 0
        self.next_tx = 0.0
        self.polls = 0
        self.fetch = False
        self.counters = {"uplinks": 0, "polls": 0, "downlinks": 0, "bytes_up": 0, "bytes_down": 0,
                         "airtime": 0.0, "replaced": 0, "refused": 0, "waited": 0.0}

    def _say(self, text):
        if self.log is not None:
            self.log(text)

    def airtime_of(self, payload_len):
        return airtime(LORAWAN_OVERHEAD + payload_len, self.sf, self.bw)

    def queue(self, datagram):
        if self.frames:
            port, payload = self.frames[0]
            if port == PORT_WHOLE or (payload[0] >> 1) & 7 == 0:
                # Nothing of the earlier datagram went out yet (the duty cycle held
                # it): the device client's newer copy replaces it.
                self.frames = []
                self.counters["replaced"] += 1
        self.frames.extend(fragment(datagram, self.max_payload, self.seq))
        self.seq = (self.seq + 1) & 15
        self.polls = 0

    def _transmit(self, fport, payload, clock):
        t_air = self.airtime_of(len(payload))
        try:
            got = self.modem.transmit(fport, payload)
        except OSError as exc:
            self.counters["refused"] += 1
            self._say("uplink refused: %r" % (exc,))
            got = None
        self.counters["uplinks"] += 1
        self.counters["bytes_up"] += len(payload)
        self.counters["airtime"] += t_air
        self.next_tx = clock() + t_air * (1.0 / self.duty - 1.0) * self.time_scale
        return got

    def run(self, device, until=None, timeout=None, clock=None):
        """Drive ``device`` until ``until()`` (True) or ``timeout`` seconds (False)."""
        clock = clock or device.clock
        end = None if timeout is None else clock() + timeout
        while True:
            if until is not None and until():
                return True
            now = clock()
            if end is not None and now >= end:
                return False
            for d in device.step(now):
                self.queue(d)
            waiting = device.pending() > 0 or not device.idle()
            frame = None
            if self.frames:
                frame = self.frames[0]
            elif self.fetch or (waiting and self.polls < self.max_polls):
                frame = (PORT_POLL, b"")
            due = device.next_deadline()
            if frame is not None and now >= self.next_tx:
                if frame[0] == PORT_POLL:
                    self.polls += 1
                    self.counters["polls"] += 1
                else:
                    self.frames.pop(0)
                got = self._transmit(frame[0], frame[1], clock)
                self.fetch = False
                if got is not None:
                    fport, payload, pending = got
                    self.counters["downlinks"] += 1
                    self.counters["bytes_down"] += len(payload)
                    self.fetch = pending
                    data = self.reasm.push(fport, payload, clock())
                    if data is not None:
                        self.polls = 0
                        device.receive(data, clock())
                    elif fport == PORT_FRAGMENT:
                        self.fetch = True
                continue
            wake = self.next_tx if frame is not None else None
            if due is not None and (wake is None or due < wake):
                wake = due
            if end is not None and (wake is None or end < wake):
                wake = end
            if wake is None:
                wake = now + 1.0
            pause = max(0.0, wake - now)
            self.counters["waited"] += pause
            time.sleep(min(pause, 1.0))
