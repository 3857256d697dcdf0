"""Handshake admission: what the proxy checks before it spends a Diffie-Hellman.

A handshake message costs the proxy one or two X25519 operations and a
registry lookup before it knows whether the sender is enrolled, and anybody can
send one. So, before any of that work (``HandshakeGuard.admit``):

1. **Per-source budget.** A token bucket per source (IP address and UDP port:
   many radio devices may share one gateway IP, a port is one sender),
   ``handshakes_per_source`` per second with the same burst. A flooding source
   spends only its own budget.
2. **Load and cookies.** The guard counts every handshake message over the last
   second. Above ``cookie_threshold`` per second the proxy is *under load*: an
   initiation (IK1/XX1) without a valid cookie gets a cookie reply (17 bytes,
   smaller than any initiation, no state kept) instead of any crypto. A cookie
   is a keyed BLAKE2s MAC of the source address and the initiation's
   ephemeral key under a secret that rotates every ``COOKIE_ROTATE`` seconds
   (the previous secret stays valid), so only a sender that receives at its
   address can present one, and only with that initiation. On a quiet link no
   cookie is asked for and a cold device keeps its single round trip.
3. **Global budget.** At most ``handshakes_global`` handshake messages per
   second reach the Diffie-Hellman work, whatever their sources.
4. **Recent ephemerals.** An initiation whose ephemeral key was accepted
   recently is a replay: dropped without crypto. (Older replays are refused
   after authentication by the handshake number, ``Registry.accept_handshake``.)

Everything here is bounded: at most ``MAX_SOURCES`` buckets (the oldest idle
ones go first) and ``RECENT_EPHEMERALS`` keys. The clock is passed in (seconds,
monotonic), so the guard is tested without sleeping.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from typing import Any

from lowbw.proxy.limits import Limits
from lowbw.wire import frames

# How long one cookie secret is used; a cookie stays valid for up to twice this.
COOKIE_ROTATE = 120.0
# Source buckets kept at once (a bucket that is full again carries no information,
# so dropping the oldest costs an attacker nothing it did not have).
MAX_SOURCES = 16384
RECENT_EPHEMERALS = 8192


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; ``take()`` spends one if there is one."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float) -> bool:
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class RateMeter:
    """Events per second over the last second or so (two one-second buckets, interpolated)."""

    def __init__(self) -> None:
        self._second = 0
        self._current = 0
        self._previous = 0

    def note(self, now: float) -> None:
        self._roll(now)
        self._current += 1

    def rate(self, now: float) -> float:
        self._roll(now)
        part = now - int(now)
        return self._previous * (1.0 - part) + self._current

    def _roll(self, now: float) -> None:
        second = int(now)
        if second != self._second:
            self._previous = self._current if second == self._second + 1 else 0
            self._current = 0
            self._second = second


def _source_bytes(sockaddr: Any) -> bytes:
    return ("%s|%d" % (sockaddr[0], sockaddr[1])).encode()


class HandshakeGuard:
    """The checks of the module docstring, in the order ``admit`` applies them."""

    # Outcomes of ``admit``.
    PASS = "pass"
    OVER_SOURCE = "handshake over its source's budget"
    OVER_GLOBAL = "handshake over the global budget"
    COOKIE = "cookie reply sent"
    BAD_COOKIE = "handshake with an invalid cookie"
    REPLAY = "replayed handshake (recent ephemeral)"

    def __init__(self, limits: Limits, now: float) -> None:
        self.limits = limits
        self._sources: OrderedDict[Any, TokenBucket] = OrderedDict()
        self._global = TokenBucket(limits.handshakes_global, max(1.0, limits.handshakes_global), now)
        self._meter = RateMeter()
        self._secret = secrets.token_bytes(32)
        self._previous_secret = self._secret
        self._rotated = now
        self._recent: OrderedDict[bytes, None] = OrderedDict()

    # -- pieces ------------------------------------------------------------------

    def under_load(self, now: float) -> bool:
        return self._meter.rate(now) > self.limits.cookie_threshold

    def _source_allows(self, sockaddr: Any, now: float) -> bool:
        bucket = self._sources.get(sockaddr)
        if bucket is None:
            rate = self.limits.handshakes_per_source
            bucket = TokenBucket(rate, max(1.0, rate), now)
            self._sources[sockaddr] = bucket
            if len(self._sources) > MAX_SOURCES:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(sockaddr)
        return bucket.take(now)

    def _rotate(self, now: float) -> None:
        if now - self._rotated >= COOKIE_ROTATE:
            self._previous_secret = self._secret
            self._secret = secrets.token_bytes(32)
            self._rotated = now

    @staticmethod
    def _mac(secret: bytes, sockaddr: Any, ephemeral: bytes) -> bytes:
        h = hashlib.blake2s(_source_bytes(sockaddr) + ephemeral, key=secret, digest_size=frames.COOKIE_LEN)
        return h.digest()

    def cookie_for(self, sockaddr: Any, ephemeral: bytes, now: float) -> bytes:
        self._rotate(now)
        return self._mac(self._secret, sockaddr, ephemeral)

    def cookie_ok(self, cookie: bytes, sockaddr: Any, ephemeral: bytes, now: float) -> bool:
        self._rotate(now)
        for secret in (self._secret, self._previous_secret):
            if secrets.compare_digest(cookie, self._mac(secret, sockaddr, ephemeral)):
                return True
        return False

    def remember(self, ephemeral: bytes) -> None:
        """An initiation with this ephemeral authenticated and was accepted."""
        self._recent[ephemeral] = None
        if len(self._recent) > RECENT_EPHEMERALS:
            self._recent.popitem(last=False)

    # -- the decision ----------------------------------------------------------------

    def admit(
        self, sockaddr: Any, initiation: bool, ephemeral: bytes, cookie: bytes | None, now: float
    ) -> str:
        """What to do with one handshake message (one of the class's outcome strings).

        ``initiation``: IK1 or XX1 (``ephemeral`` is its key; a cookie may ride
        on it); else XX3, which only a pairing in progress can answer.
        """
        self._meter.note(now)
        if not self._source_allows(sockaddr, now):
            return self.OVER_SOURCE
        if initiation:
            if ephemeral in self._recent:
                return self.REPLAY
            if cookie is not None:
                if not self.cookie_ok(cookie, sockaddr, ephemeral, now):
                    return self.BAD_COOKIE
            elif self.under_load(now):
                return self.COOKIE
        if not self._global.take(now):
            return self.OVER_GLOBAL
        return self.PASS

    def sources(self) -> int:
        return len(self._sources)


class RejectLog:
    """Rejected datagrams, counted and summarised in one log line per interval.

    A flood must not turn into a flood of log lines, so nothing here logs per
    datagram: ``count(reason)`` adds to a counter, ``count(reason, who)`` also
    to a per-key tally (a device name, or the first 8 hex digits of an unknown
    key's SHA-256; never a key itself), and ``summary()`` returns the line for
    the interval and starts a new one. At most ``MAX_WHO`` keys per interval
    are named; the rest are counted as "others".
    """

    MAX_WHO = 20

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}
        self._interval: dict[str, int] = {}
        self._who: dict[tuple[str, str], int] = {}
        self._others: dict[str, int] = {}

    def count(self, reason: str, who: str | None = None) -> None:
        self.totals[reason] = self.totals.get(reason, 0) + 1
        self._interval[reason] = self._interval.get(reason, 0) + 1
        if who is not None:
            key = (reason, who)
            if key in self._who or len(self._who) < self.MAX_WHO:
                self._who[key] = self._who.get(key, 0) + 1
            else:
                self._others[reason] = self._others.get(reason, 0) + 1

    def summary(self) -> str | None:
        """One line for everything counted since the last call, or None if nothing was."""
        if not self._interval:
            return None
        parts = ["%d x %s" % (n, reason) for reason, n in sorted(self._interval.items())]
        named = ["%s %s: %d" % (reason, who, n) for (reason, who), n in sorted(self._who.items())]
        named += ["%s (others): %d" % (reason, n) for reason, n in sorted(self._others.items())]
        line = "rejected: " + ", ".join(parts)
        if named:
            line += "; by key: " + ", ".join(named)
        self._interval = {}
        self._who = {}
        self._others = {}
        return line


def key_tag(public_key: bytes) -> str:
    """How a log names a key nobody enrolled: 8 hex digits of its SHA-256."""
    return "key " + hashlib.sha256(public_key).hexdigest()[:8]
