"""Datagram framing: handshake and transport frames, counters, replay window.

Every lowbw datagram starts with one *kind byte*. Transport frames carry a
partial counter in that byte; the receiver rebuilds the full 64-bit Noise
nonce from it and a sliding replay window (docs/PROTOCOL.md, "Frames").

    kind byte   meaning
    00cccccc    transport, short form: c = counter bits 0..5
    01cccccc    transport, long form: c = counter bits 0..5, 3 more counter
                bytes (bits 6..29) follow the session id
    10000001    Noise IK message 1 (device -> proxy)
    10000010    Noise IK message 2 (proxy -> device)
    10000011    Noise XX message 1 (device -> proxy)
    10000100    Noise XX message 2 (proxy -> device)
    10000101    Noise XX message 3 (device -> proxy), session id follows
    10000110    cookie reply (proxy -> device, only under load): 16-byte cookie
    10000111    a handshake initiation with a cookie (device -> proxy): 16-byte
                cookie, then the IK1 or XX1 datagram whole (its kind byte included)

Transport frames from the initiator (device) carry the 2-byte session id the
proxy assigned, so a session survives a change of source address; frames from
the proxy to the device do not need it. The frame header is the AEAD's
associated data, so none of it can be altered in flight.

Why a 6-bit counter: at 100 bit/s each byte costs 80 ms of airtime. Six bits
cover any reordering a radio link produces; a sender that has not heard from
its peer for LONG_AFTER frames switches to the long form so the receiver can
never lose track, and a receiver also tries the next few 64-frame epochs.

This module is sans-I/O and shared with MicroPython.
"""

from lowbw.wire import crypto
from lowbw.wire._compat import const
from lowbw.wire.errors import AuthError, DecodeError, RekeyRequired, ReplayError

KIND_MASK = const(0xC0)
KIND_SHORT = const(0x00)
KIND_LONG = const(0x40)
KIND_HANDSHAKE = const(0x80)

HS_IK1 = const(0x81)
HS_IK2 = const(0x82)
HS_XX1 = const(0x83)
HS_XX2 = const(0x84)
HS_XX3 = const(0x85)
HS_COOKIE_REPLY = const(0x86)
HS_COOKIED = const(0x87)
COOKIE_LEN = const(16)

SHORT_BITS = const(6)
SHORT_MASK = const(0x3F)
SHORT_SPAN = const(64)
COUNTER_BITS = const(30)
# A session never sends a counter at or past this; RekeyRequired first.
COUNTER_LIMIT = 1 << COUNTER_BITS
# Applications should re-handshake once a sender passes this, long before the limit.
REKEY_SOFT_LIMIT = 1 << (COUNTER_BITS - 1)
WINDOW = const(64)
# Sender switches to the long form after this many frames without hearing back.
LONG_AFTER = const(32)
# Receiver tries this many 64-frame epochs ahead when rebuilding a short counter.
MAX_EPOCHS_AHEAD = const(8)
TAG_LEN = const(16)
SID_LEN = const(2)

PROLOGUE = b"lowbw/1"


def kind_of(datagram):
    """Return the kind byte's class: KIND_SHORT, KIND_LONG or the handshake byte."""
    if not datagram:
        raise DecodeError("empty datagram")
    b0 = datagram[0]
    kind = b0 & KIND_MASK
    if kind == KIND_HANDSHAKE or kind == 0xC0:
        if b0 < HS_IK1 or b0 > HS_COOKIED:
            raise DecodeError("unknown frame kind 0x%02x" % b0)
        return b0
    return kind


def peek_session_id(datagram):
    """Session id of an uplink transport or XX3 frame, without authenticating it.

    The proxy uses this to find the session; it proves nothing until the frame
    opens. Raises DecodeError for frames that carry no session id.
    """
    kind = kind_of(datagram)
    if kind == KIND_SHORT or kind == KIND_LONG or kind == HS_XX3:
        if len(datagram) < 1 + SID_LEN:
            raise DecodeError("frame too short for a session id")
        return (datagram[1] << 8) | datagram[2]
    raise DecodeError("frame kind 0x%02x carries no session id" % datagram[0])


class ReplayWindow:
    """Highest counter seen plus a WINDOW-bit map of the ones just below it.

    ``top`` is -1 before anything was accepted. Bit i of ``mask`` set means
    counter ``top - i`` was accepted (bit 0 is ``top`` itself).
    """

    def __init__(self, top=-1, mask=0):
        self.top = top
        self.mask = mask

    def seen(self, n):
        """True if n was accepted before or is too old to judge (so must be refused)."""
        if n > self.top:
            return False
        age = self.top - n
        if age >= WINDOW:
            return True
        return bool((self.mask >> age) & 1)

    def accept(self, n):
        """Record n as accepted. Call only after the frame authenticated."""
        if n > self.top:
            shift = n - self.top
            if shift >= WINDOW:
                self.mask = 1
            else:
                self.mask = ((self.mask << shift) | 1) & ((1 << WINDOW) - 1)
            self.top = n
        else:
            self.mask |= 1 << (self.top - n)

    def candidates(self, low_bits):
        """Full counters whose low 6 bits are low_bits, most likely first.

        The first is the value nearest the expected next counter (top + 1)
        within -32..+31; then whole 64-frame epochs further ahead, for a peer
        whose frames were lost in a long run.
        """
        expected = self.top + 1
        base = expected - (SHORT_SPAN >> 1)
        if base < 0:
            base = 0
        first = (base & ~SHORT_MASK) | low_bits
        if first < base:
            first += SHORT_SPAN
        out = []
        for i in range(MAX_EPOCHS_AHEAD + 1):
            c = first + i * SHORT_SPAN
            if c >= COUNTER_LIMIT:
                break
            out.append(c)
        return out


class Session:
    """One side of an established session: seals and opens transport frames.

    ``initiator`` is True on the device. ``sid`` is the 2-byte session id the
    proxy assigned. ``send_key``/``recv_key`` are the 32-byte keys from the
    Noise split. Counters are explicit, so frames may be lost or reordered.

    ``next_send`` is the next counter this side will use; a device that
    persists its session must store a value ahead of any counter it has used
    (see ``reserve``) so a reboot can never reuse a nonce.
    """

    def __init__(self, send_key, recv_key, sid, initiator, next_send=0, recv_top=-1, recv_mask=0,
                 unheard=0):
        if len(send_key) != 32 or len(recv_key) != 32:
            raise ValueError("session keys are 32 bytes")
        if not 0 <= sid <= 0xFFFF:
            raise ValueError("session id is 16 bits")
        self.send_key = bytes(send_key)
        self.recv_key = bytes(recv_key)
        self.sid = sid
        self.initiator = initiator
        self.next_send = next_send
        self.window = ReplayWindow(recv_top, recv_mask)
        # Frames sent since the last authenticated frame from the peer.
        self.unheard = unheard

    def needs_rekey(self):
        return self.next_send >= REKEY_SOFT_LIMIT

    def _header(self, n, long_form):
        kind = KIND_LONG if long_form else KIND_SHORT
        hdr = bytearray()
        hdr.append(kind | (n & SHORT_MASK))
        if self.initiator:
            hdr.append(self.sid >> 8)
            hdr.append(self.sid & 0xFF)
        if long_form:
            hi = n >> SHORT_BITS
            hdr.append((hi >> 16) & 0xFF)
            hdr.append((hi >> 8) & 0xFF)
            hdr.append(hi & 0xFF)
        return bytes(hdr)

    def seal(self, plaintext, long_form=None):
        """Encrypt plaintext into a complete transport datagram.

        Uses the long counter form automatically when the peer has been silent
        for LONG_AFTER frames; pass long_form=True/False to force it.
        """
        n = self.next_send
        if n >= COUNTER_LIMIT:
            raise RekeyRequired("session counter exhausted; re-handshake")
        if long_form is None:
            long_form = self.unheard >= LONG_AFTER
        hdr = self._header(n, long_form)
        # Advance before encrypting: even if the caller drops the frame, this
        # counter is spent and never used again.
        self.next_send = n + 1
        self.unheard += 1
        return hdr + crypto.aead_encrypt(self.send_key, n, hdr, plaintext)

    def open(self, datagram):
        """Authenticate and decrypt a transport datagram; return the plaintext.

        Raises DecodeError (malformed), ReplayError (counter already seen or
        too old) or AuthError (no candidate counter authenticates). State
        changes only when a frame authenticates.
        """
        kind = kind_of(datagram)
        if kind != KIND_SHORT and kind != KIND_LONG:
            raise DecodeError("not a transport frame")
        pos = 1
        if not self.initiator:
            # Frames to the responder carry the session id.
            if len(datagram) < 3:
                raise DecodeError("truncated transport frame")
            if ((datagram[1] << 8) | datagram[2]) != self.sid:
                raise AuthError("frame is for another session")
            pos = 3
        low = datagram[0] & SHORT_MASK
        if kind == KIND_LONG:
            if len(datagram) < pos + 3:
                raise DecodeError("truncated long counter")
            hi = (datagram[pos] << 16) | (datagram[pos + 1] << 8) | datagram[pos + 2]
            pos += 3
            candidates = [(hi << SHORT_BITS) | low]
        else:
            candidates = self.window.candidates(low)
        if len(datagram) < pos + TAG_LEN:
            raise DecodeError("transport frame shorter than its tag")
        hdr = bytes(datagram[:pos])
        body = bytes(datagram[pos:])
        replayed = False
        for n in candidates:
            if self.window.seen(n):
                replayed = True
                continue
            try:
                plaintext = crypto.aead_decrypt(self.recv_key, n, hdr, body)
            except AuthError:
                continue
            self.window.accept(n)
            self.unheard = 0
            self.last_counter = n
            return plaintext
        if replayed:
            raise ReplayError("replayed or too old frame")
        raise AuthError("transport frame failed authentication")

    def reserve(self, block):
        """Counter value to persist so that ``block`` more frames may be sent
        before the store must be written again (never reuse a nonce)."""
        return self.next_send + block

    def export_state(self):
        """Plain tuple of everything needed to resume this session later."""
        return (self.sid, self.initiator, self.send_key, self.recv_key, self.next_send,
                self.window.top, self.window.mask, self.unheard)

    @classmethod
    def from_state(cls, state):
        sid, initiator, send_key, recv_key, next_send, top, mask, unheard = state
        return cls(send_key, recv_key, sid, initiator, next_send, top, mask, unheard)
