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
                cookie, then the IK1, XX1 or KK1 datagram whole (its kind byte included)
    10001000    Noise KK message 1 (compact profile): key id (2 B) follows
    10001001    Noise KK message 2 (compact profile)
    11rrcccc    compact transport (compact profile): rr = rule (0 raw CoAP,
                1 and 2 header rules, 3 reserved), c = counter bits 0..3

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
HS_KK1 = const(0x88)
HS_KK2 = const(0x89)
HS_LAST = const(0x89)
COOKIE_LEN = const(16)
KIND_COMPACT = const(0xC0)

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

# The compact link profile (docs/PROTOCOL.md, "Compact link profile"): 8-byte
# tags, 4 counter bits in the kind byte and no long form (the receiver tries
# MAX_EPOCHS_AHEAD spans of 16 ahead), a 1- or 2-byte session id, and
# SCHC-style rules for the CoAP header. A compact session refuses every frame
# once FORGERY_LIMIT tag checks have failed on it (the device handshakes again).
C_TAG = const(8)
C_BITS = const(4)
RULE_RAW = const(0)
RULE_READING = const(1)
RULE_CODE = const(2)
FORGERY_LIMIT = const(1024)
C_SID_MAX = const(0x7FFF)

PROLOGUE = b"lowbw/1"


def kind_of(datagram):
    """Return the kind byte's class: KIND_SHORT, KIND_LONG or the handshake byte."""
    if not datagram:
        raise DecodeError("empty datagram")
    b0 = datagram[0]
    kind = b0 & KIND_MASK
    if kind == KIND_HANDSHAKE:
        if b0 < HS_IK1 or b0 > HS_LAST:
            raise DecodeError("unknown frame kind 0x%02x" % b0)
        return b0
    return kind


def _csid(data, pos=1):
    """(sid, end) of a compact session id at ``pos`` (1 byte below 0x80, else 2)."""
    if len(data) <= pos:
        raise DecodeError("frame too short for a session id")
    b = data[pos]
    if b < 0x80:
        return b, pos + 1
    if len(data) <= pos + 1:
        raise DecodeError("frame too short for a session id")
    return ((b & 0x7F) << 8) | data[pos + 1], pos + 2


def sid_bytes(sid):
    """A compact session id on the air: 1 byte below 0x80, else 2 (top bit set)."""
    if sid < 0x80:
        return bytes([sid])
    return bytes([0x80 | (sid >> 8), sid & 0xFF])


def peek_session_id(datagram):
    """Session id of an uplink transport or XX3 frame, without authenticating it.

    The proxy uses this to find the session; it proves nothing until the frame
    opens. Raises DecodeError for frames that carry no session id.
    """
    kind = kind_of(datagram)
    if kind == KIND_COMPACT:
        return _csid(datagram)[0]
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

    def candidates(self, low_bits, bits=SHORT_BITS):
        """Full counters whose low ``bits`` bits are low_bits, most likely first.

        The first is the value nearest the expected next counter (top + 1)
        within -span/2..+span/2-1 (span = 2**bits: 64, or 16 in the compact
        profile); then whole spans further ahead, for a peer whose frames
        were lost in a long run.
        """
        span = 1 << bits
        expected = self.top + 1
        base = expected - (span >> 1)
        if base < 0:
            base = 0
        first = (base & ~(span - 1)) | low_bits
        if first < base:
            first += span
        out = []
        for i in range(MAX_EPOCHS_AHEAD + 1):
            c = first + i * span
            if c >= COUNTER_LIMIT:
                break
            out.append(c)
        return out


class Session:
    """One side of an established session: seals and opens transport frames.

    ``initiator`` is True on the device. ``sid`` is the session id the proxy
    assigned. ``send_key``/``recv_key`` are the 32-byte keys from the Noise
    split. Counters are explicit, so frames may be lost or reordered.

    ``next_send`` is the next counter this side will use; a device that
    persists its session must store a value ahead of any counter it has used
    (see ``reserve``) so a reboot can never reuse a nonce.

    ``compact`` selects the compact link profile (module docstring): 8-byte
    tags, 4 counter bits, a short session id, a rule number in the kind byte
    (``seal(..., rule=)``; ``open`` leaves the frame's rule in ``self.rule``).
    ``mid`` is the CoAP Message ID the compact rules are relative to (-1:
    none yet); ``failures`` counts tag checks that failed.
    """

    def __init__(self, send_key, recv_key, sid, initiator, next_send=0, recv_top=-1, recv_mask=0,
                 unheard=0, compact=False, mid=-1):
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
        self.compact = compact
        self.mid = mid
        self.failures = 0

    def needs_rekey(self):
        return self.next_send >= REKEY_SOFT_LIMIT

    def _header(self, n, long_form, rule):
        c = self.compact
        bits = C_BITS if c else SHORT_BITS
        low = n & ((1 << bits) - 1)
        if c:
            hdr = bytearray([KIND_COMPACT | (rule << 4) | low])
        else:
            hdr = bytearray([(KIND_LONG if long_form else KIND_SHORT) | low])
        if self.initiator:
            sid = self.sid
            if c and sid < 0x80:
                hdr.append(sid)  # frames.sid_bytes
            else:
                hdr += bytes([(sid >> 8) | (0x80 if c else 0), sid & 0xFF])
        if long_form and not c:
            hi = n >> bits
            hdr += bytes([(hi >> 16) & 0xFF, (hi >> 8) & 0xFF, hi & 0xFF])
        return bytes(hdr)

    def seal(self, plaintext, long_form=None, rule=RULE_RAW, ad=b""):
        """Encrypt plaintext into a complete transport datagram.

        Uses the long counter form automatically when the peer has been silent
        for LONG_AFTER frames (never in the compact profile, which has no long
        form); pass long_form=True/False to force it. ``rule`` and ``ad``
        (associated data beyond the header: fields a rule implies) are for
        compact sessions.
        """
        n = self.next_send
        if n >= COUNTER_LIMIT:
            raise RekeyRequired("session counter exhausted; re-handshake")
        if long_form is None:
            long_form = self.unheard >= LONG_AFTER
        hdr = self._header(n, long_form, rule)
        # Advance before encrypting: even if the caller drops the frame, this
        # counter is spent and never used again.
        self.next_send = n + 1
        self.unheard += 1
        out = crypto.aead_encrypt(self.send_key, n, hdr + ad, plaintext)
        if self.compact:
            out = out[:C_TAG - TAG_LEN]
        return hdr + out

    def open(self, datagram, ad=b""):
        """Authenticate and decrypt a transport datagram; return the plaintext.

        Raises DecodeError (malformed), ReplayError (counter already seen or
        too old) or AuthError (no candidate counter authenticates); a compact
        session past FORGERY_LIMIT failed tag checks raises RekeyRequired.
        State changes only when a frame authenticates (and ``failures``).
        ``ad`` is associated data beyond the header for compact rules 1 and 2.
        """
        kind = kind_of(datagram)
        c = self.compact
        if kind != (KIND_COMPACT if c else KIND_SHORT) and (c or kind != KIND_LONG):
            raise DecodeError("not a transport frame of this session")
        if len(datagram) < 1 + C_TAG:
            raise DecodeError("truncated transport frame")
        if c and self.failures >= FORGERY_LIMIT:
            raise RekeyRequired("too many forged frames; re-handshake")
        bits = C_BITS if c else SHORT_BITS
        b0 = datagram[0]
        rule = (b0 >> 4) & 3 if c else RULE_RAW
        pos = 1
        if not self.initiator:
            # Frames to the responder carry the session id: the proxy found
            # this session by it, and it is authenticated (part of the AD).
            pos = (2 + (datagram[1] >> 7)) if c else 3
        low = b0 & ((1 << bits) - 1)
        if kind == KIND_LONG:
            if len(datagram) < pos + 3:
                raise DecodeError("truncated long counter")
            hi = (datagram[pos] << 16) | (datagram[pos + 1] << 8) | datagram[pos + 2]
            pos += 3
            candidates = [(hi << bits) | low]
        else:
            candidates = self.window.candidates(low, bits)
        if len(datagram) < pos + (C_TAG if c else TAG_LEN):
            raise DecodeError("transport frame shorter than its tag")
        if not rule:  # raw (every standard frame): nothing implied
            ad = b""
        ad = bytes(datagram[:pos]) + ad
        body = bytes(datagram[pos:])
        k = self.recv_key
        replayed = False
        for n in candidates:
            if self.window.seen(n):
                replayed = True
                continue
            try:
                # Compact: ChaCha20-Poly1305 with the tag cut to 8 bytes.
                plaintext = crypto.aead_open(k, n, ad, body, C_TAG if c else TAG_LEN)
            except AuthError:
                self.failures += 1
                continue
            self.window.accept(n)
            self.unheard = 0
            self.rule = rule
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
                self.window.top, self.window.mask, self.unheard, self.compact, self.mid)

    @classmethod
    def from_state(cls, state):
        sid, initiator, send_key, recv_key = state[:4]
        return cls(send_key, recv_key, sid, initiator, *state[4:])


# -- the compact profile's header rules (SCHC in spirit, RFC 8724) ----------------
#
# Uplink (device -> proxy), a CoAP message with version 1, type CON, no token:
#   rule 1: code 0.02 POST, one Uri-Path "v", a payload: residue = MID | payload
#   rule 2: anything else: residue = MID | code | options and payload
# MID is the Message ID's low byte in a transport frame (the receiver takes
# the value nearest the session's ``mid``), both bytes in a handshake.
# Downlink (proxy -> device), a piggybacked answer (type ACK, no token) whose
# Message ID is that of the request it answers, implied and bound to the tag:
#   rule 1: code 2.04: residue = options and payload
#   rule 2: residue = code | options and payload
# Anything else travels whole (rule 0).


def compress_up(m, full=False):
    """(rule, residue) of an uplink CoAP message (bytes, at least 4 of them)."""
    m = bytes(m)
    if m[0] != 0x40:
        return RULE_RAW, m
    mid = m[2:4] if full else m[3:4]
    if m[1:2] + m[4:7] == b"\x02\xb1\x76\xff" and len(m) > 7:
        return RULE_READING, mid + m[7:]
    return RULE_CODE, mid + m[1:2] + m[4:]


def expand_down(rule, residue, mid):
    """The CoAP answer of a downlink rule, for the request with Message ID ``mid``."""
    if rule:
        if rule == RULE_READING:
            residue = b"\x44" + residue
        if not residue:
            raise DecodeError("bad compact answer")
        residue = bytes([0x60, residue[0], (mid >> 8) & 0xFF, mid & 0xFF]) + residue[1:]
    return bytes(residue)


def expand_up(rule, residue, last_mid=None):
    """``(coap message, mid)`` of an uplink residue; ``last_mid`` None: a
    handshake's (2-byte MID), else a transport frame's (low byte, nearest
    ``last_mid``). The mid is None for rule 0."""
    if rule == RULE_RAW:
        return bytes(residue), None
    if rule != RULE_READING and rule != RULE_CODE:
        raise DecodeError("unknown compact rule")
    r = bytes(residue)
    if last_mid is None:
        if len(r) < 2:
            raise DecodeError("compact request too short")
        mid, r = (r[0] << 8) | r[1], r[2:]
    else:
        if len(r) < 1 or last_mid < 0:
            raise DecodeError("compact request without a Message ID base")
        mid, r = (last_mid + ((r[0] - last_mid + 128) & 0xFF) - 128) & 0xFFFF, r[1:]
    if rule == RULE_READING:
        if not r:
            raise DecodeError("compact reading without a payload")
        return bytes([0x40, 0x02, mid >> 8, mid & 0xFF, 0xB1, 0x76, 0xFF]) + r, mid
    if not r:
        raise DecodeError("compact request without a code")
    return bytes([0x40, r[0], mid >> 8, mid & 0xFF]) + r[1:], mid


def compress_down(m):
    """``(rule, residue, ad)`` of a downlink CoAP message (bytes)."""
    m = bytes(m)
    if len(m) >= 4 and m[0] == 0x60 and m[1] != 0:
        ad = m[2:4]
        if m[1] == 0x44:
            return RULE_READING, m[4:], ad
        return RULE_CODE, m[1:2] + m[4:], ad
    return RULE_RAW, m, b""


def open_up(session, datagram):
    """Proxy side: the CoAP message of an uplink transport frame, compact rules
    expanded; a compact session's ``mid`` follows the newest request."""
    pt = session.open(datagram)
    if not session.compact:
        return pt
    msg, mid = expand_up(session.rule, pt, session.mid)
    if mid is None and len(msg) >= 4 and msg[0] >> 6 == 1 and 0 < msg[1] < 32:
        mid = (msg[2] << 8) | msg[3]
    if mid is not None and (session.mid < 0 or 0 < ((mid - session.mid) & 0xFFFF) < 0x8000):
        session.mid = mid
    return msg


def seal_down(session, message):
    """Proxy side: a transport frame carrying the CoAP ``message`` (compact rules applied)."""
    if not session.compact:
        return session.seal(message)
    rule, residue, ad = compress_down(message)
    return session.seal(residue, rule=rule, ad=ad)
