"""SLIP framing (RFC 1055) for lowbw datagrams on a serial line.

A UART or radio modem has no datagram boundaries; SLIP adds them: each frame
ends (and, for resynchronisation after line noise, also starts) with END
0xC0; a 0xC0 inside the frame is sent as ESC 0xDB + 0xDC and a 0xDB as
0xDB 0xDD.

lowbw's serial frames carry one datagram each, optionally prefixed by a link
address so one line can carry many devices (a radio modem): the first byte of
the frame is the address length L (0..16), followed by L address bytes and the
lowbw datagram. ``encode_addressed``/``split_addressed`` do that part.

The decoder is incremental (feed it whatever the UART gave), bounded (a frame
longer than ``max_frame`` is dropped and counted, never buffered), and never
raises on line noise: bad escapes and oversize frames are counted and skipped.

Shared with MicroPython.
"""

from lowbw.wire._compat import const
from lowbw.wire.errors import DecodeError, EncodeError

END = const(0xC0)
ESC = const(0xDB)
ESC_END = const(0xDC)
ESC_ESC = const(0xDD)
MAX_ADDR = const(16)


def encode(frame):
    """One SLIP frame, END at both ends."""
    out = bytearray([END])
    for b in frame:
        if b == END:
            out.append(ESC)
            out.append(ESC_END)
        elif b == ESC:
            out.append(ESC)
            out.append(ESC_ESC)
        else:
            out.append(b)
    out.append(END)
    return bytes(out)


class Decoder:
    """Feed bytes, get whole frames.

    ``feed(data)`` returns a list of complete frames (bytes). Counters:
    ``frames``, ``oversize`` (frames dropped for exceeding max_frame),
    ``bad_escape`` (frames dropped for an invalid escape sequence).
    """

    def __init__(self, max_frame=1500):
        self.max_frame = max_frame
        self.buf = bytearray()
        self.escaped = False
        self.discard = False
        self.frames = 0
        self.oversize = 0
        self.bad_escape = 0

    def feed(self, data):
        out = []
        for b in data:
            if b == END:
                if self.buf and not self.discard:
                    out.append(bytes(self.buf))
                    self.frames += 1
                self.buf = bytearray()
                self.escaped = False
                self.discard = False
                continue
            if self.discard:
                continue
            if self.escaped:
                self.escaped = False
                if b == ESC_END:
                    b = END
                elif b == ESC_ESC:
                    b = ESC
                else:
                    self.bad_escape += 1
                    self.discard = True
                    self.buf = bytearray()
                    continue
            elif b == ESC:
                self.escaped = True
                continue
            if len(self.buf) >= self.max_frame:
                self.oversize += 1
                self.discard = True
                self.buf = bytearray()
                continue
            self.buf.append(b)
        return out


def encode_addressed(addr, datagram):
    """A SLIP frame carrying ``datagram`` from/to link address ``addr``."""
    if len(addr) > MAX_ADDR:
        raise EncodeError("link address longer than %d bytes" % MAX_ADDR)
    return encode(bytes([len(addr)]) + bytes(addr) + bytes(datagram))


def split_addressed(frame):
    """(addr, datagram) from a decoded frame; DecodeError if malformed."""
    if not frame:
        raise DecodeError("empty serial frame")
    n = frame[0]
    if n > MAX_ADDR:
        raise DecodeError("link address length %d > %d" % (n, MAX_ADDR))
    if len(frame) < 1 + n + 1:
        raise DecodeError("serial frame shorter than its address and one byte")
    return bytes(frame[1:1 + n]), bytes(frame[1 + n:])
