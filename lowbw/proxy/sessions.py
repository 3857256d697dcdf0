"""The proxy's session table: who may talk, on which session, with which keys.

A session is created by a handshake (``lowbw.wire.handshake`` formats, the
proxy side in ``lowbw.proxy.noise_ik``) and lives until the device makes a new
one, its device is revoked, or the proxy stops. Sessions never time out: a
device may sleep for days and wake with its persisted session (0 extra bytes).

Who gets in (everything else gets no answer at all):

* IK message 1 must authenticate (a valid Noise message to our static key),
  its static key must be enrolled and not revoked (``registry.device_by_key``)
  and its ephemeral key must be new for that device
  (``registry.remember_ephemeral``; a replayed IK1 is dropped). The ephemeral
  is recorded only after the message authenticated, so forged datagrams cannot
  fill the replay cache.
* XX message 1 is unauthenticated; its answer (100 bytes) is never larger than
  it (at least 100 bytes by the padding rule). Only when XX message 3 reveals
  an enrolled key does a session exist. At most ``MAX_PENDING_XX`` pairings
  wait at once, each for ``XX_TIMEOUT`` seconds.
* Revocation: ``poll_changes`` (called for every datagram) asks the registry
  whether another process committed (``PRAGMA data_version``); if so it
  reloads the device list and closes the sessions of revoked devices at once.

Session ids are 16-bit, random and unused. One session per device: a new
handshake replaces the device's old session.

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
host, port]``: exactly ``frames.Session.export_state`` plus the caps and the
last UDP address. ``restore`` reads them back at start (the registry deletes
them as it hands them out, so a state is never restored twice).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from lowbw.proxy import noise_ik
from lowbw.proxy.clients import is_client
from lowbw.proxy.limits import Limits
from lowbw.proxy.registry import DeviceRecord, Registry
from lowbw.proxy.transport import LinkTuning, LowbwTransport, SessionAddress, Sockaddr
from lowbw.wire import cbor, frames, handshake
from lowbw.wire.errors import AuthError, DecodeError, LowbwError, ReplayError

log = logging.getLogger("lowbw.proxy.sessions")

MAX_PENDING_XX = 256
XX_TIMEOUT = 300.0
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
    sid, _initiator, send_key, recv_key, next_send, top, mask, unheard = addr.session.export_state()
    host: str = ""
    port = 0
    if addr.sockaddr is not None:
        host, port = str(addr.sockaddr[0]), int(addr.sockaddr[1])
    return bytes(
        cbor.dumps(
            [STATE_VERSION, sid, addr.caps, send_key, recv_key, next_send, top, mask, unheard, host, port]
        )
    )


def decode_state(blob: bytes) -> tuple[frames.Session, int, Sockaddr | None]:
    """(session, caps, sockaddr) from ``encode_state``; DecodeError if it is not one."""
    try:
        obj = cbor.loads(blob)
    except LowbwError:
        raise DecodeError("saved session is not CBOR") from None
    if not isinstance(obj, list) or len(obj) != 11 or obj[0] != STATE_VERSION:
        raise DecodeError("saved session has an unknown layout")
    _v, sid, caps, send_key, recv_key, next_send, top, mask, unheard, host, port = obj
    ints = (sid, caps, next_send, top, mask, unheard, port)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ints):
        raise DecodeError("saved session field is not an integer")
    if not isinstance(send_key, bytes) or not isinstance(recv_key, bytes) or not isinstance(host, str):
        raise DecodeError("saved session keys are not bytes")
    try:
        session = frames.Session(send_key, recv_key, sid, False, next_send, top, mask, unheard)
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
        self._pending_xx: dict[int, tuple[Any, float, int, bytes]] = {}
        self.devices: dict[str, DeviceRecord] = {}
        self._commands: dict[str, int] = {}
        self._tops: dict[str, int] = {}
        self._persisted_tops: dict[str, int] = {}
        self._epochs: dict[str, int] = {}
        self.transport: LowbwTransport | None = None
        # Called with the device name when a command was queued for it.
        self.on_commands_changed: Callable[[str], None] | None = None
        # Called with each session that closes.
        self.on_close: Callable[[SessionAddress], None] | None = None
        self.reload()

    # -- devices ----------------------------------------------------------------

    def reload(self) -> None:
        """Re-read the device list; close sessions of devices no longer allowed."""
        current = {rec.name: rec for rec in self.registry.devices() if not rec.revoked}
        self.devices = current
        for name, addr in list(self.by_device.items()):
            rec = current.get(name)
            if rec is None:
                log.info("%s: revoked, session %04x closed", name, addr.sid)
                self.close(addr)
        self._commands = {}
        for name in current:
            n = self.registry.count_pending(name)
            if n:
                self._commands[name] = n

    def poll_changes(self) -> None:
        if self.registry.changed():
            self.reload()

    def device(self, name: str) -> DeviceRecord | None:
        return self.devices.get(name)

    def replays_zero_rtt(self, device: str) -> bool:
        """Client-proxies get a repeated 0-RTT request answered from the first run (transport)."""
        rec = self.devices.get(device)
        return rec is not None and is_client(rec)

    def commands_pending(self, device: str) -> int:
        return self._commands.get(device, 0)

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

    def _new_sid(self) -> int:
        if len(self.by_sid) + len(self._pending_xx) >= 0x10000:
            raise LowbwError("session table full")
        while True:
            sid = secrets.randbelow(0x10000)
            if sid not in self.by_sid and sid not in self._pending_xx:
                return sid

    def _add(self, addr: SessionAddress) -> None:
        old = self.by_device.get(addr.device)
        if old is not None and old is not addr:
            log.info("%s: new handshake replaces session %04x", addr.device, old.sid)
            self.close(old)
        self.by_sid[addr.sid] = addr
        self.by_device[addr.device] = addr

    def close(self, addr: SessionAddress) -> None:
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

    def _responder(self) -> Any:
        e = self._ephemeral() if self._ephemeral is not None else None
        if self.handshake_impl == "noiseprotocol":
            return noise_ik.Responder(self._private_key, e_priv=e)
        return handshake.Responder(self._private_key, e_priv=e)

    def handshake(self, datagram: bytes, sockaddr: Sockaddr) -> tuple[SessionAddress, bytes] | None:
        """A handshake datagram: maybe a new session and its 0-RTT request.

        Raises a LowbwError (the datagram is dropped without an answer) for
        anything that does not lead to a session.
        """
        kind = datagram[0] if datagram else -1
        if kind == frames.HS_IK1 or kind == frames.HS_XX1:
            return self._initiation(datagram, sockaddr)
        if kind == frames.HS_XX3:
            return self._xx_final(datagram, sockaddr)
        raise DecodeError("not a handshake a proxy receives")

    @staticmethod
    def _take_epoch(responder: Any, offered: int, payload: bytes) -> tuple[int | None, bytes]:
        # The wire Responder takes the epoch off itself; noise_ik's leaves it in the payload.
        if isinstance(responder, handshake.Responder):
            return responder.epoch, payload
        epoch, rest = handshake.split_epoch(offered, payload)
        return epoch, bytes(rest)

    def _initiation(self, datagram: bytes, sockaddr: Sockaddr) -> tuple[SessionAddress, bytes] | None:
        responder = self._responder()
        device_pub, offered, request = responder.read_init(datagram)
        caps = handshake.negotiate_caps(offered)
        if device_pub is None:
            # XX message 1 is not authenticated: the epoch comes in message 3.
            self._xx_start(responder, caps | (offered & handshake.CAP_EPOCH), datagram, sockaddr)
            return None
        epoch, request = self._take_epoch(responder, offered, request)
        rec = self.registry.device_by_key(device_pub)
        if rec is None:
            raise AuthError("static key not enrolled (or revoked)")
        if not self.registry.remember_ephemeral(rec.name, noise_ik.init_ephemeral(datagram)):
            log.info("%s: replayed handshake dropped", rec.name)
            raise ReplayError("IK message 1 with an ephemeral seen before")
        if epoch is not None and self.registry.epoch_retired(rec.name, epoch):
            log.info("%s: handshake for a retired counter epoch dropped (replay)", rec.name)
            raise ReplayError("IK message 1 announcing a retired counter epoch")
        self.devices[rec.name] = rec
        if epoch is not None:
            self.set_epoch(rec.name, epoch)
            caps |= handshake.CAP_EPOCH
        addr = SessionAddress(self._new_sid(), None, rec.name, caps, sockaddr, self.tuning, pending=responder)
        self._add(addr)
        log.info("%s: IK handshake, session %04x (caps 0x%02x)", rec.name, addr.sid, caps)
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
        dgram, session = responder.respond(addr.sid, addr.caps, response)
        addr.session = session
        return bytes(dgram)

    def _answer_pending(self, addr: SessionAddress) -> None:
        addr.pending_timer = None
        if addr.pending is not None and not addr.closed and self.transport is not None:
            dgram = self.complete(addr, b"")
            if dgram is not None and addr.sockaddr is not None:
                self.transport.sendto(dgram, addr.sockaddr)

    def _purge_xx(self) -> None:
        now = time.monotonic()
        for sid in [s for s, (_, deadline, _, _) in self._pending_xx.items() if deadline < now]:
            del self._pending_xx[sid]

    def _xx_start(self, responder: Any, caps: int, datagram: bytes, sockaddr: Sockaddr) -> None:
        self._purge_xx()
        if len(self._pending_xx) >= MAX_PENDING_XX:
            raise LowbwError("too many pairings in progress")
        sid = self._new_sid()
        dgram, _ = responder.respond(sid, caps)
        if len(dgram) > len(datagram):
            raise LowbwError("XX answer would be larger than the request")
        self._pending_xx[sid] = (
            responder,
            time.monotonic() + XX_TIMEOUT,
            caps,
            noise_ik.init_ephemeral(datagram),
        )
        if self.transport is not None:
            self.transport.sendto(bytes(dgram), sockaddr)

    def _xx_final(self, datagram: bytes, sockaddr: Sockaddr) -> tuple[SessionAddress, bytes] | None:
        sid = frames.peek_session_id(datagram)
        pending = self._pending_xx.pop(sid, None)
        if pending is None:
            raise AuthError("XX message 3 for no pairing in progress")
        responder, deadline, caps, e = pending
        if deadline < time.monotonic():
            raise AuthError("pairing timed out")
        device_pub, request, session = responder.read_final(datagram)
        epoch, request = self._take_epoch(responder, caps, request)
        rec = self.registry.device_by_key(device_pub)
        if rec is None:
            raise AuthError("static key not enrolled (or revoked)")
        if not self.registry.remember_ephemeral(rec.name, e):
            raise ReplayError("XX with an ephemeral seen before")
        if epoch is not None and self.registry.epoch_retired(rec.name, epoch):
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

    def restore(self) -> int:
        """Bring back the sessions a graceful stop saved; returns how many."""
        n = 0
        for name, blob in self.registry.load_sessions():
            if name not in self.devices:
                continue
            try:
                session, caps, sockaddr = decode_state(blob)
            except DecodeError as exc:
                log.warning("%s: saved session unusable (%s)", name, exc)
                continue
            if session.sid in self.by_sid:
                continue
            addr = SessionAddress(session.sid, session, name, caps, sockaddr, self.tuning)
            self._add(addr)
            n += 1
        return n
