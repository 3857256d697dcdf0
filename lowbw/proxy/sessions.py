"""The proxy's session table: who may talk, on which session, with which keys.

A session is created by a handshake (``lowbw.wire.handshake`` formats, the
proxy side in ``lowbw.proxy.noise_ik``) and lives until the device makes a new
one, its device is revoked, or the proxy stops. Sessions never time out: a
device may sleep for days and wake with its persisted session (0 extra bytes).

Who gets in (everything else gets no answer at all):

* Before any crypto, ``lowbw.proxy.guard.HandshakeGuard``: per-source and
  global handshake budgets, a cookie round trip while under load, recently
  accepted ephemerals dropped as replays.
* IK message 1 must authenticate (a valid Noise message to our static key),
  its static key must be enrolled and not revoked (``registry.device_by_key``)
  and its handshake number must be above the device's last accepted one
  (``registry.accept_handshake``, which also keeps the old ephemeral check):
  a replayed IK1 is dropped however old it is, so it can neither replace the
  live session nor re-post its reading. Numbers are recorded only after the
  message authenticated, so forged datagrams cannot move them.
* XX message 1 is unauthenticated; its answer (100 bytes) is never larger than
  it (at least 100 bytes by the padding rule). Only when XX message 3 reveals
  an enrolled key does a session exist. Each source keeps at most
  ``xx_pending_per_source`` pairings waiting and the proxy
  ``xx_pending_total``, each for ``XX_TIMEOUT`` seconds; past a budget the
  oldest waiting pairing gives way, so a flood cannot lock pairing out.
* Revocation: a timer (``start_timers``, every ``registry_poll_interval``)
  asks the registry whether another process committed (``PRAGMA
  data_version``); if so it reloads the device list and closes the sessions
  of revoked devices at once, datagram or not.
* Rejections are counted (``RejectLog``), per key for unknown and revoked
  keys, and summarised in one log line per ``log_summary_interval``.

Session ids are 16-bit, random and unused. One session per device: a new
handshake replaces the device's old session.

Compact link profile (docs/PROTOCOL.md): a device enrolled ``compact`` opens
its session with Noise KK. Its message 1 names the device by a 2-byte key id
(``handshake.key_id``) in clear; the proxy tries the KK handshake with each
enrolled compact device of that id (a few at most), so a forged KK1 costs one
X25519 per candidate after the guard's budgets, like an IK1. Compact sessions
get ids below 0x80 while there are free ones (one byte on the air), else
below 0x8000, and carry ``CAP_COMPACT`` in their caps.

Counter epochs (``lowbw.wire.handshake``, CAP_EPOCH): an authenticated
handshake that announces an epoch other than the device's recorded one means
the device lost its store and counts its messages from 0 again. The epoch is
recorded and the device's message top goes back to -1 (registry and cache)
before the handshake's 0-RTT request is handled, and the answer echoes
CAP_EPOCH so the device stops announcing it. The same epoch again (the answer
to a fresh device's first handshake was lost) changes nothing. XX: the proxy
echoes CAP_EPOCH in message 2 when message 1 offered it (it will read the
epoch from message 3) and records the epoch once message 3 authenticates.

Saved sessions (graceful stop): one opaque blob per session, CBOR
``[1, sid, caps, send_key, recv_key, next_send, recv_top, recv_mask, unheard,
host, port, mid]``: exactly ``frames.Session.export_state`` plus the caps and the
last UDP address (``mid``, the compact rules' Message ID base, may be missing:
-1). ``restore`` reads them back at start (the registry deletes
them as it hands them out, so a state is never restored twice).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

from lowbw.proxy import noise_ik
from lowbw.proxy.clients import is_client
from lowbw.proxy.guard import HandshakeGuard, RejectLog, key_tag
from lowbw.proxy.limits import Limits
from lowbw.proxy.registry import DeviceRecord, Registry
from lowbw.proxy.transport import LinkTuning, LowbwTransport, SessionAddress, Sockaddr
from lowbw.wire import cbor, frames, handshake
from lowbw.wire.errors import AuthError, DecodeError, LowbwError, ReplayError

log = logging.getLogger("lowbw.proxy.sessions")

# A pairing waits this long for its third message (several airtimes of a
# 100-byte XX message 2 at 100 bit/s, plus the device's retries).
XX_TIMEOUT = 120.0
# caps, and a handshake number of at least one byte, after the fixed part.
IK1_MIN_LEN = 1 + noise_ik.IK1_FIXED + 2
KK1_MIN_LEN = 1 + handshake.KID_LEN + noise_ik.KK1_FIXED + 2
# KK message 1 names at most this many candidate devices by one key id (the
# id is 16 bits of a hash; more would make a forged KK1 costlier than an IK1).
KK_CANDIDATES = 4
# No handshake carries more than a request that fits the largest datagram.
MAX_HANDSHAKE_LEN = 65507


class HandshakeRefused(LowbwError):
    """A handshake message dropped before any crypto (budget, cookie, recent replay)."""


# Handshake outcomes as metrics name them (``SessionTable.handshake_counts``,
# keyed by (kind, outcome); kind is ik, xx1, xx3 or other).
HS_OK = "ok"
HS_UNKNOWN_KEY = "unknown_key"
HS_REVOKED = "revoked"
HS_REPLAY = "replay"
HS_AUTH_FAILED = "auth_failed"
HS_MALFORMED = "malformed"
HS_NO_PAIRING = "no_pairing"
HS_COOKIE = "cookie"
HS_BAD_COOKIE = "bad_cookie"
HS_OVER_SOURCE = "over_source_budget"
HS_OVER_GLOBAL = "over_global_budget"
HS_OUTCOMES = (
    HS_OK,
    HS_UNKNOWN_KEY,
    HS_REVOKED,
    HS_REPLAY,
    HS_AUTH_FAILED,
    HS_MALFORMED,
    HS_NO_PAIRING,
    HS_COOKIE,
    HS_BAD_COOKIE,
    HS_OVER_SOURCE,
    HS_OVER_GLOBAL,
)
_GUARD_OUTCOMES = {
    HandshakeGuard.COOKIE: HS_COOKIE,
    HandshakeGuard.BAD_COOKIE: HS_BAD_COOKIE,
    HandshakeGuard.OVER_SOURCE: HS_OVER_SOURCE,
    HandshakeGuard.OVER_GLOBAL: HS_OVER_GLOBAL,
    HandshakeGuard.REPLAY: HS_REPLAY,
}
_KIND_NAMES = {frames.HS_IK1: "ik", frames.HS_XX1: "xx1", frames.HS_XX3: "xx3", frames.HS_KK1: "kk"}


STATE_VERSION = 1
# The highest message number per device is written to the registry when it has
# moved this far (and at a graceful stop): a top that lags by less than 2**15
# still rebuilds every 16-bit MID exactly, and a write per reading is not free.
MSG_TOP_PERSIST_EVERY = 64
# Extra wait past EMPTY_ACK_DELAY before an IK answer goes out without a
# response (a request that asked for none, or one aiocoap swallowed).
PENDING_GRACE = 2.0


def encode_state(addr: SessionAddress) -> bytes:
    """The saved form of an established session (module docstring)."""
    if addr.session is None:
        raise LowbwError("a pending handshake cannot be saved")
    sid, _initiator, send_key, recv_key, next_send, top, mask, unheard, _c, _m = addr.session.export_state()
    host: str = ""
    port = 0
    if addr.sockaddr is not None:
        host, port = str(addr.sockaddr[0]), int(addr.sockaddr[1])
    mid = addr.session.mid
    return bytes(
        cbor.dumps(
            [STATE_VERSION, sid, addr.caps, send_key, recv_key, next_send, top, mask, unheard, host, port,
             mid]
        )
    )


def decode_state(blob: bytes) -> tuple[frames.Session, int, Sockaddr | None]:
    """(session, caps, sockaddr) from ``encode_state``; DecodeError if it is not one."""
    try:
        obj = cbor.loads(blob)
    except LowbwError:
        raise DecodeError("saved session is not CBOR") from None
    if not isinstance(obj, list) or len(obj) not in (11, 12) or obj[0] != STATE_VERSION:
        raise DecodeError("saved session has an unknown layout")
    _v, sid, caps, send_key, recv_key, next_send, top, mask, unheard, host, port = obj[:11]
    mid = obj[11] if len(obj) == 12 else -1
    ints = (sid, caps, next_send, top, mask, unheard, port, mid)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ints):
        raise DecodeError("saved session field is not an integer")
    if not isinstance(send_key, bytes) or not isinstance(recv_key, bytes) or not isinstance(host, str):
        raise DecodeError("saved session keys are not bytes")
    try:
        compact = bool(caps & handshake.CAP_COMPACT)
        session = frames.Session(send_key, recv_key, sid, False, next_send, top, mask, unheard, compact, mid)
    except ValueError as exc:
        raise DecodeError("saved session is invalid: %s" % exc) from None
    sockaddr: Sockaddr | None = (host, port) if host and port else None
    return session, caps, sockaddr


class SessionTable:
    """Sessions by id and by device, the handshakes that make them, the device cache.

    ``handshake_impl``: ``"noiseprotocol"`` (``lowbw.proxy.noise_ik``, the
    default) or ``"wire"`` (``lowbw.wire.handshake.Responder`` with the
    ``cryptography`` fast path); both give the same bytes.
    ``ephemeral`` (tests only) supplies the proxy's ephemeral private keys.
    """

    def __init__(
        self,
        registry: Registry,
        private_key: bytes,
        tuning: LinkTuning,
        *,
        handshake_impl: str = "noiseprotocol",
        ephemeral: Callable[[], bytes] | None = None,
        limits: Limits | None = None,
    ) -> None:
        if handshake_impl not in ("noiseprotocol", "wire"):
            raise ValueError("handshake_impl is 'noiseprotocol' or 'wire'")
        self.registry = registry
        self.limits = limits if limits is not None else Limits()
        self._private_key = bytes(private_key)
        self.tuning = tuning
        self.handshake_impl = handshake_impl
        self._ephemeral = ephemeral
        self.by_sid: dict[int, SessionAddress] = {}
        self.by_device: dict[str, SessionAddress] = {}
        # sid -> (responder, deadline, caps, ephemeral, source); oldest first
        self._pending_xx: dict[int, tuple[Any, float, int, bytes, Sockaddr]] = {}
        self.guard = HandshakeGuard(self.limits, time.monotonic())
        self.rejects = RejectLog()
        # (kind, outcome) -> handshake messages (metrics); _outcome is set where
        # a refusal is decided, for handshake() to count.
        self.handshake_counts: dict[tuple[str, str], int] = {}
        self._outcome: str | None = None
        self._kind = "other"
        # Commands queued (appservice pushes, encrypted rooms), delivered (acknowledged
        # by the device) and expired (still pending when their device was revoked).
        self.commands_queued = 0
        self.commands_delivered = 0
        self.commands_expired = 0
        # Called with the name of each device that was revoked (metrics forget it).
        self.on_revoked: Callable[[str], None] | None = None
        # IK answers that must tell the device to count its handshakes above a floor.
        self._floors: dict[int, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._next_summary = 0.0
        self.devices: dict[str, DeviceRecord] = {}
        # Key id -> compact devices (KK message 1 names its device by it).
        self._kids: dict[bytes, list[DeviceRecord]] = {}
        self._commands: dict[str, int] = {}
        self._tops: dict[str, int] = {}
        self._persisted_tops: dict[str, int] = {}
        # Writes a message top later, off the loop: (device, top, its epoch)
        # (lowbw.proxy.writebehind); None writes it at once.
        self.persist_top: Callable[[str, int, int], None] | None = None
        self._epochs: dict[str, int] = {}
        self.transport: LowbwTransport | None = None
        # The devices' Matrix devices in encrypted rooms (lowbw.proxy.e2ee), when running.
        self.e2ee: Any = None
        # Called with the device name when a command was queued for it.
        self.on_commands_changed: Callable[[str], None] | None = None
        # Called every log_summary_interval and at stop (the proxy's answer summary).
        self.on_summary: Callable[[], None] | None = None
        # Called with each session that closes.
        self.on_close: Callable[[SessionAddress], None] | None = None
        # Several proxies on one fleet (lowbw.proxy.cluster): session ids begin
        # with this node's number (sid_node_bits bits); on_add hears of each new
        # session; on_changes takes the registry's notices (PostgreSQL).
        self.sid_node = 0
        self.sid_node_bits = 0
        self.on_add: Callable[[SessionAddress], None] | None = None
        self.on_changes: Callable[[list[tuple[str, str]]], None] | None = None
        self.reload()

    # -- devices ----------------------------------------------------------------

    def reload(self) -> None:
        """Re-read the device list; close sessions of devices no longer allowed."""
        current = {rec.name: rec for rec in self.registry.devices() if not rec.revoked}
        gone = [name for name in self.devices if name not in current]
        self.devices = current
        kids: dict[bytes, list[DeviceRecord]] = {}
        for compact in current.values():
            if compact.profile == "compact":
                kids.setdefault(handshake.key_id(compact.public_key), []).append(compact)
        self._kids = kids
        for name, addr in list(self.by_device.items()):
            rec = current.get(name)
            if rec is None:
                log.info("%s: revoked, session %04x closed", name, addr.sid)
                self.close(addr)
        for name in gone:
            # Its pending commands can never be delivered now.
            self.commands_expired += self._commands.get(name, 0)
            if self.on_revoked is not None:
                self.on_revoked(name)
        if self.e2ee is not None:
            for name in list(self.e2ee.devices):
                if name not in current:
                    self.e2ee.forget(name)
            self.e2ee.start_all(list(current.values()))
        counts = self.registry.pending_counts()
        self._commands = {name: n for name, n in counts.items() if name in current and n}

    def room_encrypted(self, room_id: str) -> None:
        """``room_id`` got an ``m.room.encryption`` state event: its devices are
        encrypted from now on (recorded, and their Matrix devices started)."""
        for name, rec in list(self.devices.items()):
            if room_id in rec.rooms and not rec.encrypted:
                self.registry.set_encrypted(name)
                log.info("%s: room %s is now end-to-end encrypted", name, room_id)
                fresh = self.registry.device(name)
                if fresh is not None:
                    self.devices[name] = fresh
                    if self.e2ee is not None:
                        self.e2ee.ensure(fresh)

    def poll_changes(self) -> None:
        """Called for every datagram (a revocation takes effect on the very next
        one) and by the timer of ``start_timers`` (so it takes effect within
        ``registry_poll_interval`` even when the device stays silent, for
        example a parked sync). ``PRAGMA data_version`` costs microseconds; on
        PostgreSQL nothing is asked: the notices are already here (LISTEN)."""
        registry = self.registry
        if registry.notifies and self.on_changes is not None:
            changes = registry.take_changes()
            if changes:
                self.on_changes(changes)
        elif registry.changed():
            self.reload()

    def start_timers(self) -> None:
        """Run the periodic work on the running loop: registry changes
        (revocations, commands), expired pairings, the rejected-datagram summary."""
        self._next_summary = time.monotonic() + self.limits.log_summary_interval
        self._tick()

    def stop_timers(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.log_rejects()

    def _tick(self) -> None:
        try:
            self.poll_changes()
            self._purge_xx()
            if time.monotonic() >= self._next_summary:
                self._next_summary = time.monotonic() + self.limits.log_summary_interval
                self.log_rejects()
        except LowbwError as exc:
            log.warning("periodic registry check failed: %s", exc.message or type(exc).__name__)
        interval = max(0.05, min(self.limits.registry_poll_interval, self.limits.log_summary_interval))
        self._timer = asyncio.get_running_loop().call_later(interval, self._tick)

    def log_rejects(self) -> None:
        line = self.rejects.summary()
        if line is not None:
            log.warning("%s", line)
        if self.on_summary is not None:
            self.on_summary()

    def device(self, name: str) -> DeviceRecord | None:
        return self.devices.get(name)

    def is_client(self, device: str) -> bool:
        """Whether ``device`` is a client-proxy (transport: its repeated 0-RTT requests
        are answered from the first run; its compact frames use lowbw.compact.headers)."""
        rec = self.devices.get(device)
        return rec is not None and is_client(rec)

    def commands_pending(self, device: str) -> int:
        return self._commands.get(device, 0)

    def commands_pending_total(self) -> int:
        return sum(self._commands.values())

    def pairings_pending(self) -> int:
        return len(self._pending_xx)

    def refresh_commands(self, device: str, notify: bool = True) -> int:
        """Re-count ``device``'s pending commands; ``notify`` its observers (a new command)."""
        n = self.registry.count_pending(device)
        if n:
            self._commands[device] = n
        else:
            self._commands.pop(device, None)
        if notify and n and self.on_commands_changed is not None:
            self.on_commands_changed(device)
        return n

    # -- message numbers ----------------------------------------------------------

    def msg_top(self, device: str) -> int:
        """Highest message number seen from ``device`` (-1 before any)."""
        top = self._tops.get(device)
        if top is None:
            top = self.registry.msg_top(device)
            self._tops[device] = top
            self._persisted_tops[device] = top
        return top

    def advance_msg_top(self, device: str, n: int) -> None:
        if n <= self.msg_top(device):
            return
        self._tops[device] = n
        if n - self._persisted_tops.get(device, -1) >= MSG_TOP_PERSIST_EVERY:
            if self.persist_top is not None:
                self.persist_top(device, n, self.epoch(device))
            else:
                self.registry.advance_msg_top(device, n)
            self._persisted_tops[device] = n

    def epoch(self, device: str) -> int:
        """The device's counter epoch (0 if it never announced one)."""
        epoch = self._epochs.get(device)
        if epoch is None:
            epoch = self.registry.device_epoch(device)
            self._epochs[device] = epoch
        return epoch

    def set_epoch(self, device: str, epoch: int) -> bool:
        """Record a counter epoch the device announced; True if it is new (message top reset)."""
        if epoch == self._epochs.get(device):
            return False
        changed = self.registry.set_device_epoch(device, epoch)
        self._epochs[device] = epoch
        if changed:
            # Numbers of the old epoch say nothing about the new count.
            self._tops[device] = -1
            self._persisted_tops[device] = -1
            log.info("%s: new counter epoch %08x, message numbers start again", device, epoch)
        return changed

    def flush_msg_tops(self) -> None:
        for device, top in self._tops.items():
            if top > self._persisted_tops.get(device, -1) and device in self.devices:
                self.registry.advance_msg_top(device, top)
                self._persisted_tops[device] = top

    # -- session bookkeeping -----------------------------------------------------

    def lookup(self, sid: int) -> SessionAddress | None:
        return self.by_sid.get(sid)

    def _new_sid(self, compact: bool = False) -> int:
        """A free session id carrying this node's number in its top bits (``[cluster]``;
        ``lowbw.proxy.cluster.sid_owner``). A compact session's id is one byte on
        the air below 0x80 (``frames.sid_bytes``), else two (0x80..0x7FFF): the
        node's number tops its 7 or 15 bits; one byte while that space has room."""
        if len(self.by_sid) + len(self._pending_xx) >= 0x10000 >> self.sid_node_bits:
            raise LowbwError("session table full")
        widths = (7, 15) if compact else (16,)
        for width in widths:
            space = 1 << (width - self.sid_node_bits)
            base = self.sid_node << (width - self.sid_node_bits)
            low = 0x80 if width == 15 else 0  # two-byte compact ids are at least 0x80
            for _ in range(64):  # random probes: cheap while the space has room
                sid = base | secrets.randbelow(space)
                if sid >= low and sid not in self.by_sid and sid not in self._pending_xx:
                    return sid
            free = [
                sid
                for sid in range(max(base, low), base + space)
                if sid not in self.by_sid and sid not in self._pending_xx
            ]
            if free:
                return free[secrets.randbelow(len(free))]
        raise LowbwError("session ids exhausted")

    def _add(self, addr: SessionAddress) -> None:
        old = self.by_device.get(addr.device)
        if old is not None and old is not addr:
            log.info("%s: new handshake replaces session %04x", addr.device, old.sid)
            self.close(old)
        self.by_sid[addr.sid] = addr
        self.by_device[addr.device] = addr
        if self.on_add is not None and old is not addr:
            self.on_add(addr)

    def close(self, addr: SessionAddress) -> None:
        self._floors.pop(addr.sid, None)
        if self.by_sid.get(addr.sid) is addr:
            del self.by_sid[addr.sid]
        if self.by_device.get(addr.device) is addr:
            del self.by_device[addr.device]
        if self.transport is not None:
            self.transport.forget(addr)
        else:
            addr.closed = True
        if self.on_close is not None:
            self.on_close(addr)

    def close_all(self) -> None:
        for addr in list(self.by_sid.values()):
            self.close(addr)

    def __len__(self) -> int:
        return len(self.by_sid)

    # -- handshakes ---------------------------------------------------------------

    def _responder(self, rs: bytes | None = None) -> Any:
        e = self._ephemeral() if self._ephemeral is not None else None
        if self.handshake_impl == "noiseprotocol":
            return noise_ik.Responder(self._private_key, e_priv=e, rs=rs)
        return handshake.Responder(self._private_key, e_priv=e, rs=rs)

    def handshake(self, datagram: bytes, sockaddr: Sockaddr) -> tuple[SessionAddress, bytes] | None:
        """A handshake datagram: maybe a new session and its 0-RTT request.

        First the guard's cheap checks (``lowbw.proxy.guard``: budgets, cookies
        under load, recent ephemerals), then the crypto. Raises a LowbwError
        (the datagram is dropped without an answer, and counted) for anything
        that does not lead to a session; returns None when it answered with a
        cookie reply or an XX message 2. Each one is counted by kind and outcome
        in ``handshake_counts``.
        """
        self._outcome = None
        self._kind = "other"
        try:
            found = self._handshake(datagram, sockaddr)
        except LowbwError as exc:
            outcome = self._outcome
            if outcome is None:
                if isinstance(exc, ReplayError):
                    outcome = HS_REPLAY
                elif isinstance(exc, AuthError):
                    outcome = HS_AUTH_FAILED
                else:
                    outcome = HS_MALFORMED
            self._count_handshake(self._kind, outcome)
            raise
        self._count_handshake(self._kind, self._outcome or HS_OK)
        return found

    def _count_handshake(self, kind: str, outcome: str) -> None:
        key = (kind, outcome)
        self.handshake_counts[key] = self.handshake_counts.get(key, 0) + 1

    def _handshake(self, datagram: bytes, sockaddr: Sockaddr) -> tuple[SessionAddress, bytes] | None:
        kind = datagram[0] if datagram else -1
        cookie = None
        if kind == frames.HS_COOKIED:
            cookie, datagram = handshake.split_cookied(datagram)
            kind = datagram[0]
        self._kind = _KIND_NAMES.get(kind, "other")
        if kind == frames.HS_IK1:
            if len(datagram) < IK1_MIN_LEN or len(datagram) > MAX_HANDSHAKE_LEN:
                raise DecodeError("IK message 1 of impossible length")
        elif kind == frames.HS_KK1:
            if len(datagram) < KK1_MIN_LEN or len(datagram) > MAX_HANDSHAKE_LEN:
                raise DecodeError("KK message 1 of impossible length")
        elif kind == frames.HS_XX1:
            if len(datagram) < handshake.XX1_MIN_LEN or len(datagram) > MAX_HANDSHAKE_LEN:
                raise DecodeError("XX message 1 of impossible length")
        elif kind == frames.HS_XX3:
            if cookie is not None or len(datagram) > MAX_HANDSHAKE_LEN:
                raise DecodeError("XX message 3 of impossible length")
            if frames.peek_session_id(datagram) not in self._pending_xx:
                self._outcome = HS_NO_PAIRING
                raise AuthError("XX message 3 for no pairing in progress")
        else:
            raise DecodeError("not a handshake a proxy receives")
        initiation = kind != frames.HS_XX3
        ephemeral = handshake.init_ephemeral(datagram) if initiation else b""
        now = time.monotonic()
        verdict = self.guard.admit(sockaddr, initiation, ephemeral, cookie, now)
        if verdict != HandshakeGuard.PASS:
            self._outcome = _GUARD_OUTCOMES.get(verdict, HS_MALFORMED)
        if verdict == HandshakeGuard.COOKIE:
            self.rejects.count(verdict)
            if self.transport is not None:
                reply = bytes([frames.HS_COOKIE_REPLY]) + self.guard.cookie_for(sockaddr, ephemeral, now)
                self.transport.sendto(reply, sockaddr)
            return None
        if verdict != HandshakeGuard.PASS:
            self.rejects.count(verdict)
            raise HandshakeRefused(verdict)
        if kind == frames.HS_XX3:
            return self._xx_final(datagram, sockaddr)
        return self._initiation(datagram, sockaddr)

    def _refuse_key(self, device_pub: bytes) -> AuthError:
        """An authenticated handshake from a key that may not get in: counted per key."""
        name = self.registry.revoked_name(device_pub)
        if name is not None:
            self._outcome = HS_REVOKED
            self.rejects.count("handshake from a revoked device", name)
        else:
            self._outcome = HS_UNKNOWN_KEY
            self.rejects.count("handshake from an unknown key", key_tag(device_pub))
        return AuthError("static key not enrolled (or revoked)")

    def _read_kk(self, datagram: bytes) -> tuple[Any, bytes, int, bytes]:
        """KK message 1: the responder of the compact device its key id names
        whose handshake authenticates (AuthError if none)."""
        kid = bytes(datagram[1 : 1 + handshake.KID_LEN])
        for rec in self._kids.get(kid, [])[:KK_CANDIDATES]:
            responder = self._responder(rec.public_key)
            try:
                device_pub, offered, request = responder.read_init(datagram)
            except AuthError:
                continue
            return responder, device_pub, offered, request
        raise AuthError("KK message 1 for no enrolled compact device")

    def _initiation(self, datagram: bytes, sockaddr: Sockaddr) -> tuple[SessionAddress, bytes] | None:
        try:
            if datagram[0] == frames.HS_KK1:
                responder, device_pub, offered, request = self._read_kk(datagram)
            else:
                responder = self._responder()
                device_pub, offered, request = responder.read_init(datagram)
        except AuthError:
            self.rejects.count("handshake that did not authenticate")
            raise
        compact = datagram[0] == frames.HS_KK1
        caps = handshake.negotiate_caps(offered) | (handshake.CAP_COMPACT if compact else 0)
        if device_pub is None:
            # XX message 1 is not authenticated: the epoch comes in message 3.
            self._xx_start(responder, caps | (offered & handshake.CAP_EPOCH), datagram, sockaddr)
            return None
        epoch, hsn = responder.epoch, responder.hsn
        rec = self.registry.device_by_key(device_pub)
        if rec is None:
            raise self._refuse_key(device_pub)
        ephemeral = noise_ik.init_ephemeral(datagram)
        accepted, floor = self.registry.accept_handshake(rec.name, ephemeral, hsn, epoch)
        if not accepted:
            self.rejects.count("replayed handshake", rec.name)
            raise ReplayError("IK message 1 not newer than the device's last accepted handshake")
        self.guard.remember(ephemeral)
        self.devices[rec.name] = rec
        if epoch is not None:
            self.set_epoch(rec.name, epoch)
            caps |= handshake.CAP_EPOCH
        addr = SessionAddress(
            self._new_sid(compact), None, rec.name, caps, sockaddr, self.tuning, pending=responder
        )
        if floor is not None:
            self._floors[addr.sid] = floor
        self._add(addr)
        # Accepted handshakes only (budgets bound them): forged ones never get here.
        pattern = "KK" if compact else "IK"
        log.info("%s: %s handshake, session %04x (caps 0x%02x)", rec.name, pattern, addr.sid, caps)
        loop = asyncio.get_running_loop()
        addr.pending_timer = loop.call_later(
            self.tuning.EMPTY_ACK_DELAY + PENDING_GRACE, self._answer_pending, addr
        )
        return addr, request

    def complete(self, addr: SessionAddress, response: bytes) -> bytes | None:
        """The IK message 2 carrying ``response``; the session is established."""
        responder = addr.pending
        if responder is None or addr.closed:
            return None
        addr.pending = None
        if addr.pending_timer is not None:
            addr.pending_timer.cancel()
            addr.pending_timer = None
        floor = self._floors.pop(addr.sid, None)
        dgram, session = responder.respond(addr.sid, addr.caps, response, floor)
        addr.session = session
        return bytes(dgram)

    def _answer_pending(self, addr: SessionAddress) -> None:
        addr.pending_timer = None
        if addr.pending is not None and not addr.closed and self.transport is not None:
            dgram = self.complete(addr, b"")
            if dgram is not None and addr.sockaddr is not None:
                self.transport.send_to_session(addr, dgram)

    def _purge_xx(self) -> None:
        now = time.monotonic()
        for sid in [s for s, entry in self._pending_xx.items() if entry[1] < now]:
            del self._pending_xx[sid]

    def _xx_start(self, responder: Any, caps: int, datagram: bytes, sockaddr: Sockaddr) -> None:
        """Answer XX message 1, within the pairing budgets: a source keeps at most
        ``xx_pending_per_source`` pairings waiting and the proxy ``xx_pending_total``;
        past either, the oldest waiting one (of that source, or of all) gives way,
        so a flood can delay a pairing but never lock it out."""
        self._purge_xx()
        limits = self.limits
        mine = [sid for sid, entry in self._pending_xx.items() if entry[4] == sockaddr]
        while mine and len(mine) >= max(1, limits.xx_pending_per_source):
            del self._pending_xx[mine.pop(0)]
            self.rejects.count("pairing replaced by a newer one from its source")
        while self._pending_xx and len(self._pending_xx) >= max(1, limits.xx_pending_total):
            del self._pending_xx[next(iter(self._pending_xx))]
            self.rejects.count("pairing dropped: too many in progress")
        sid = self._new_sid()
        dgram, _ = responder.respond(sid, caps)
        if len(dgram) > len(datagram):
            raise LowbwError("XX answer would be larger than the request")
        self._pending_xx[sid] = (
            responder,
            time.monotonic() + XX_TIMEOUT,
            caps,
            noise_ik.init_ephemeral(datagram),
            sockaddr,
        )
        if self.transport is not None:
            self.transport.sendto(bytes(dgram), sockaddr)

    def _xx_final(self, datagram: bytes, sockaddr: Sockaddr) -> tuple[SessionAddress, bytes] | None:
        sid = frames.peek_session_id(datagram)
        pending = self._pending_xx.pop(sid, None)
        if pending is None:
            self._outcome = HS_NO_PAIRING
            raise AuthError("XX message 3 for no pairing in progress")
        responder, deadline, caps, e, _source = pending
        if deadline < time.monotonic():
            self._outcome = HS_NO_PAIRING
            raise AuthError("pairing timed out")
        try:
            device_pub, request, session = responder.read_final(datagram)
        except AuthError:
            self.rejects.count("handshake that did not authenticate")
            raise
        epoch = responder.epoch
        rec = self.registry.device_by_key(device_pub)
        if rec is None:
            raise self._refuse_key(device_pub)
        if not self.registry.remember_ephemeral(rec.name, e):
            self.rejects.count("replayed handshake", rec.name)
            raise ReplayError("XX with an ephemeral seen before")
        if epoch is not None and self.registry.epoch_retired(rec.name, epoch):
            self.rejects.count("replayed handshake", rec.name)
            raise ReplayError("XX announcing a retired counter epoch")
        self.devices[rec.name] = rec
        if epoch is not None:
            self.set_epoch(rec.name, epoch)
        addr = SessionAddress(sid, session, rec.name, caps, sockaddr, self.tuning)
        self._add(addr)
        log.info("%s: XX pairing, session %04x (caps 0x%02x)", rec.name, sid, caps)
        return addr, request

    # -- graceful stop and start ------------------------------------------------------

    def save(self) -> int:
        """Store every established session (and message numbers) in the registry; returns how many."""
        self.flush_msg_tops()
        rows = []
        for addr in self.by_sid.values():
            rec = self.devices.get(addr.device)
            # A client-proxy's session is not kept: its token bindings and
            # identifier table (lowbw.proxy.clients) live only in this process,
            # and it was told at the stop to handshake again.
            if addr.session is not None and not addr.closed and rec is not None and not is_client(rec):
                rows.append((addr.device, encode_state(addr)))
        self.registry.save_sessions(rows)
        return len(rows)

    def restore(
        self,
        rows: Iterable[tuple[str, bytes]] | None = None,
        keep: Callable[[str, frames.Session], bool] | None = None,
    ) -> int:
        """Bring back the sessions a graceful stop saved (``rows``: those of the
        registry by default), those ``keep`` accepts; returns how many."""
        n = 0
        for name, blob in self.registry.load_sessions() if rows is None else rows:
            if name not in self.devices:
                continue
            try:
                session, caps, sockaddr = decode_state(blob)
            except DecodeError as exc:
                log.warning("%s: saved session unusable (%s)", name, exc)
                continue
            if session.sid in self.by_sid or (keep is not None and not keep(name, session)):
                continue
            addr = SessionAddress(session.sid, session, name, caps, sockaddr, self.tuning)
            self._add(addr)
            n += 1
        return n
