"""The CoAP header rule of compact client sessions (rule 3).

A client-proxy enrolled ``compact`` opens its sessions with Noise KK, as a
compact device does, so its transport frames are compact ones
(``lowbw.wire.frames``, "Compact link profile"): 8-byte tags, a 1-byte session
id, and a rule number in the kind byte. The device rules 1 and 2 describe
token-less requests answered piggybacked, one at a time; a client-proxy runs
aiocoap, whose every request carries a token and several of which may be under
way (a parked sync beside the others). Rule 3 is theirs:

==========  ======================================  =================================
direction   the CoAP message                        residue (after the kind byte)
==========  ======================================  =================================
up          version 1, CON, 1-byte token            MID low byte | code | token | rest
down        version 1, ACK, 1-byte token, code > 0  code | token | rest
==========  ======================================  =================================

``rest`` is the options and payload, with lowbw's own options (65008 to
65040 in steps of 4: Bearer-Bind, Bearer-Slot, ... Park-Ack;
lowbw.proxy.clients) renumbered to ``VIRTUAL`` (16, 18, 19, 21, 22, 24, 25,
26, 29: numbers no CoAP option has) and sorted again: the first of them then
follows Uri-Path, Content-Format or Uri-Query with a 1-byte option header
instead of 3 (its delta from there needs a 2-byte extension). A message that
has an option with one of the ``VIRTUAL`` numbers itself, or that is not
well-formed CoAP, travels whole (rule 0). Up, the proxy takes the
Message ID nearest its session's newest (``Session.mid``, as for the device
rules). Down, the Message ID is the one of the request the token names: the
client-proxy remembers the token of every confirmable request it sent
(``TokenMids``); an answer naming a token it does not know is dropped. The
token is inside the ciphertext, so neither field can be altered in flight;
nothing is added to the associated data. Anything else travels whole (rule 0).
Saved per exchange: 2 bytes up, 3 down, and 2 more each way for a message
carrying any of lowbw's options.

Only sessions of client keys use rule 3, and only in compact sessions; a
device session that shows it is refused (``DecodeError``), as before.
"""

from __future__ import annotations

from collections import OrderedDict

from lowbw.wire import frames
from lowbw.wire.errors import DecodeError

RULE_CLIENT = 3
# How near its base a Message ID must be to go as its low byte: the proxy's
# base may lag the client-proxy's by frames lost on the way, so half the
# 128 the low byte could reach.
NEAR = 64
_CON_TKL1 = 0x41
_ACK_TKL1 = 0x61


# lowbw's options (lowbw.proxy.clients) <-> their numbers in a rule-3 residue.
PRIVATE = tuple(range(65008, 65044, 4))
VIRTUAL = (16, 18, 19, 21, 22, 24, 25, 26, 29)
_TO_VIRTUAL = dict(zip(PRIVATE, VIRTUAL, strict=True))
_TO_PRIVATE = dict(zip(VIRTUAL, PRIVATE, strict=True))


class _NotCoap(Exception):
    """Options that do not parse: the message goes whole (rule 0)."""


def _parse_options(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """(options as (number, value), payload with its 0xFF marker) of CoAP options bytes."""
    options: list[tuple[int, bytes]] = []
    number = 0
    pos = 0
    n = len(data)
    while pos < n:
        head = data[pos]
        if head == 0xFF:
            return options, data[pos:]
        pos += 1
        fields = []
        for nibble in (head >> 4, head & 0x0F):
            if nibble == 13:
                if pos >= n:
                    raise _NotCoap()
                nibble = data[pos] + 13
                pos += 1
            elif nibble == 14:
                if pos + 1 >= n:
                    raise _NotCoap()
                nibble = ((data[pos] << 8) | data[pos + 1]) + 269
                pos += 2
            elif nibble == 15:
                raise _NotCoap()
            fields.append(nibble)
        number += fields[0]
        if pos + fields[1] > n:
            raise _NotCoap()
        options.append((number, data[pos : pos + fields[1]]))
        pos += fields[1]
    return options, b""


def _nibble(value: int) -> tuple[int, bytes]:
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes([value - 13])
    return 14, (value - 269).to_bytes(2, "big")


def _encode_options(options: list[tuple[int, bytes]], payload: bytes) -> bytes:
    out = bytearray()
    last = 0
    for number, value in sorted(options, key=lambda o: o[0]):  # stable: repeats keep their order
        d, dx = _nibble(number - last)
        length, lx = _nibble(len(value))
        out.append((d << 4) | length)
        out += dx + lx + value
        last = number
    return bytes(out) + payload


def _renumber(rest: bytes, table: dict[int, int], clash: dict[int, int]) -> bytes:
    """``rest`` with the options of ``table`` renumbered; _NotCoap if it does not
    parse or already has an option numbered as one of ``clash``'s keys."""
    options, payload = _parse_options(rest)
    if not any(number in table for number, _ in options):
        return rest
    if any(number in clash for number, _ in options):
        raise _NotCoap()
    return _encode_options([(table.get(number, number), value) for number, value in options], payload)


def _to_residue(rest: bytes) -> bytes:
    return _renumber(rest, _TO_VIRTUAL, _TO_PRIVATE)


def _from_residue(rest: bytes) -> bytes:
    try:
        return _renumber(rest, _TO_PRIVATE, _TO_VIRTUAL)
    except _NotCoap:
        raise DecodeError("malformed options in a compact client message") from None


def _nearest(last_mid: int, low: int) -> int:
    """The 16-bit Message ID whose low byte is ``low``, nearest ``last_mid``."""
    return (last_mid + ((low - last_mid + 128) & 0xFF) - 128) & 0xFFFF


def seal_up(session: frames.Session, message: bytes) -> bytes:
    """Client-proxy side: a compact transport frame for a CoAP message (rule 3
    when it applies and the session has a Message ID base), and the base moved on."""
    m = bytes(message)
    if len(m) >= 5 and m[0] == _CON_TKL1 and 0 < m[1] < 32:
        mid = (m[2] << 8) | m[3]
        base = session.mid
        try:
            rest = _to_residue(m[5:])
        except _NotCoap:
            rest = None
        if rest is not None and base >= 0 and abs(((mid - base + 0x8000) & 0xFFFF) - 0x8000) < NEAR:
            if 0 < ((mid - base) & 0xFFFF) < 0x8000:
                session.mid = mid
            return bytes(session.seal(m[3:4] + m[1:2] + m[4:5] + rest, rule=RULE_CLIENT))
        # Too far from the base to name by its low byte: whole, and the proxy's
        # base follows it (frames.open_up does the same for a whole request).
        if base < 0 or 0 < ((mid - base) & 0xFFFF) < 0x8000:
            session.mid = mid
    return bytes(session.seal(m))


def open_up(session: frames.Session, datagram: bytes) -> bytes:
    """Proxy side: the CoAP message of a client's compact frame (rules 0 and 3)."""
    pt = bytes(session.open(datagram))
    rule = session.rule
    if rule == RULE_CLIENT:
        if len(pt) < 3 or session.mid < 0:
            raise DecodeError("compact client request too short or without a Message ID base")
        mid = _nearest(session.mid, pt[0])
        msg = bytes([_CON_TKL1, pt[1], mid >> 8, mid & 0xFF]) + pt[2:3] + _from_residue(pt[3:])
    elif rule == frames.RULE_RAW:
        msg = pt
        if not (len(msg) >= 4 and msg[0] >> 6 == 1 and 0 < msg[1] < 32):
            return msg  # not a request (an empty ACK): the base stays
        mid = (msg[2] << 8) | msg[3]
    else:
        raise DecodeError("device header rule on a client session")
    if session.mid < 0 or 0 < ((mid - session.mid) & 0xFFFF) < 0x8000:
        session.mid = mid
    return msg


def seal_down(session: frames.Session, message: bytes) -> bytes:
    """Proxy side: a compact frame for a CoAP message to a client-proxy."""
    m = bytes(message)
    if len(m) >= 5 and m[0] == _ACK_TKL1 and m[1] != 0:
        try:
            return bytes(session.seal(m[1:2] + m[4:5] + _to_residue(m[5:]), rule=RULE_CLIENT))
        except _NotCoap:
            pass
    return bytes(session.seal(m))


class TokenMids:
    """The Message IDs of the last ``keep`` confirmable requests, by token (client-proxy)."""

    def __init__(self, keep: int = 256) -> None:
        self._mids: OrderedDict[bytes, int] = OrderedDict()
        self.keep = keep

    def sent(self, message: bytes) -> None:
        m = bytes(message)
        if len(m) >= 5 and m[0] == _CON_TKL1 and 0 < m[1] < 32:
            token = m[4:5]
            self._mids[token] = (m[2] << 8) | m[3]
            self._mids.move_to_end(token)
            while len(self._mids) > self.keep:
                self._mids.popitem(last=False)

    def open_down(self, session: frames.Session, datagram: bytes) -> bytes:
        """The CoAP message of a compact frame from the proxy (rules 0 and 3)."""
        pt = bytes(session.open(datagram))
        rule = session.rule
        if rule == frames.RULE_RAW:
            return pt
        if rule != RULE_CLIENT or len(pt) < 2:
            raise DecodeError("not a client header rule")
        mid = self._mids.get(pt[1:2])
        if mid is None:
            raise DecodeError("answer for a token we did not send")
        return bytes([_ACK_TKL1, pt[0], mid >> 8, mid & 0xFF]) + pt[1:2] + _from_residue(pt[2:])
