"""Several proxies on one fleet (``[cluster]`` in proxy.toml; docs/scale-out.md).

Every node is a ``lowbw proxy run`` process with the same proxy key and the
same PostgreSQL registry. What holds across nodes, and how:

* **Session ids carry the owning node.** With ``nodes = N`` the top
  ``node_bits`` = ceil(log2 N) bits of every 16-bit session id a node hands
  out are its node number (``SessionTable.sid_node``), so any node can tell
  from a frame's first three bytes whose session it is.
* **Forwarding.** A transport frame (or XX message 3) that reaches a node
  other than its owner -- the kernel's ``SO_REUSEPORT`` hash chose another
  process because the device woke on a new source port, or a load balancer
  chose another machine -- is sent on to the owner's *forward* address
  (``[cluster] forward``) over UDP, wrapped with the device's address
  (``FORWARD_MAGIC``, host, port, datagram). The owner opens it as if it had
  received it and answers the device directly from its own socket (same
  address and port on one machine, thanks to ``SO_REUSEPORT``). Forwarded
  datagrams are accepted only from the forward addresses of registered nodes.
  Handshakes are never forwarded: any node takes them and the new session
  is its own.
* **One session per device.** A node that adds a session writes
  ``cluster_sessions`` (device -> node, sid) and notifies ``session``; every
  other node holding a session of that device (checked against the row, so a
  late notice never closes a newer session) flushes its message top, closes
  the session and forgets its cached counters, so the next node to see the
  device reads them from the registry.
* **Handshake replay rule.** ``Registry.accept_handshake`` is one
  transaction with the device row locked (``FOR UPDATE``): two nodes deciding
  on copies of one IK message 1 take turns and only one accepts it.
* **Commands.** The queue is the registry's ``commands`` table (an ack is a
  conditional UPDATE: one node wins). Any node may take the homeserver's
  pushes (the appservice listener binds with ``SO_REUSEPORT`` too); the
  ``command`` notice makes the node holding the device's session push to its
  observers.
* **Failure.** Each node writes a heartbeat every ``HEARTBEAT`` seconds
  (``cluster_nodes.seen_ms``). A frame owned by a node silent for
  ``node_timeout`` seconds is dropped (counted ``owner_down``): the device
  hears nothing, gives up on its request and makes a new handshake (IK, or KK for compact devices),
  which the receiving node takes (one round trip; its request rides in it as
  0-RTT data, and the transaction id, device + counter, makes the reading land
  once). Sessions are *not* taken over from a dead node: docs/scale-out.md.
* **Graceful stop.** A node saves its own sessions under its node number
  (``cluster_saved``) and restores only those still recorded as its own in
  ``cluster_sessions`` (a device that moved on meanwhile keeps its new one).

The tables (``cluster_nodes``, ``cluster_sessions``, ``cluster_saved``) are
created when a cluster node first starts, written in the registry's SQLite
dialect and translated like the rest (``lowbw.proxy.regdb``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any, cast

from aiocoap.protocol import Context
from aiocoap.tokenmanager import TokenManager

from lowbw.proxy.config import ClusterSection
from lowbw.proxy.regdb import NOTIFY_CHANNEL
from lowbw.proxy.registry import Registry, RegistryError, now_ms
from lowbw.proxy.transport import (
    RECEIVE_BUFFER,
    FrameHandler,
    LowbwMessageManager,
    LowbwTransport,
    Sockaddr,
)
from lowbw.wire import frames
from lowbw.wire.errors import DecodeError, LowbwError

log = logging.getLogger("lowbw.proxy.cluster")

# Seconds between heartbeats (and peer-table refreshes).
HEARTBEAT = 1.0
NODE_TIMEOUT = 3.0
# A frame for an unknown node re-reads the node table at most this often (seconds).
PEER_REFRESH_MIN = 0.2
FORWARD_MAGIC = b"\xfeLF1"
# A forwarded datagram: magic, host length, host, port (2 bytes), the device's datagram.
_MAX_HOST = 64

DROP_OWNER_DOWN = "owner_down"
DROP_FORWARD_REFUSED = "forward_refused"

_TABLES = (
    "CREATE TABLE IF NOT EXISTS cluster_nodes (node INTEGER PRIMARY KEY NOT NULL, "
    "forward TEXT NOT NULL, pid INTEGER NOT NULL, host TEXT NOT NULL, started_ms INTEGER NOT NULL, "
    "seen_ms INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS cluster_sessions (device TEXT PRIMARY KEY NOT NULL REFERENCES devices(name), "
    "node INTEGER NOT NULL, sid INTEGER NOT NULL, since_ms INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS cluster_saved (node INTEGER NOT NULL, "
    "device TEXT NOT NULL REFERENCES devices(name), state BLOB NOT NULL)",
)


# ``[cluster]`` of proxy.toml (lowbw.proxy.config.ClusterSection).
ClusterSettings = ClusterSection


def sid_owner(sid: int, node_bits: int, compact: bool = False) -> int:
    """The node number a session id belongs to: the top ``node_bits`` of its 16 bits,
    or of a compact session id's 7 (one byte on the air, below 0x80) or 15 bits
    (``SessionTable._new_sid``)."""
    if not node_bits:
        return 0
    width = (7 if sid < 0x80 else 15) if compact else 16
    return sid >> (width - node_bits)


def _split_forward(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise LowbwError("[cluster] forward must be HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def encode_forward(data: bytes, sockaddr: Sockaddr) -> bytes:
    host = str(sockaddr[0]).encode("ascii")
    port = int(sockaddr[1])
    return FORWARD_MAGIC + bytes([len(host)]) + host + port.to_bytes(2, "big") + data


def decode_forward(packet: bytes) -> tuple[bytes, Sockaddr]:
    if not packet.startswith(FORWARD_MAGIC) or len(packet) < len(FORWARD_MAGIC) + 4:
        raise DecodeError("not a forwarded datagram")
    i = len(FORWARD_MAGIC)
    n = packet[i]
    if n == 0 or n > _MAX_HOST or len(packet) < i + 1 + n + 2 + 1:
        raise DecodeError("forwarded datagram too short")
    host = packet[i + 1 : i + 1 + n].decode("ascii", "replace")
    port = int.from_bytes(packet[i + 1 + n : i + 3 + n], "big")
    return bytes(packet[i + 3 + n :]), (host, port)


class ClusterStore:
    """The cluster tables, through the registry's connection and lock."""

    def __init__(self, registry: Registry) -> None:
        if not registry.notifies:
            raise LowbwError("several proxies on one fleet need the registry on PostgreSQL")
        self.registry = registry
        # host/random: who holds a node number (a second process with the same number is refused).
        self.instance = "%s/%s" % (socket.gethostname(), secrets.token_hex(4))
        with registry._write() as db:
            db.lock_schema()
            for statement in _TABLES:
                db.execute(statement)

    def register(self, node: int, forward: str, timeout: float) -> None:
        """Take node number ``node``; refused while another live process has it."""
        reg = self.registry
        with reg._write() as db:
            row = db.execute(
                "SELECT pid, host, seen_ms FROM cluster_nodes WHERE node = ? /*FOR UPDATE*/", (node,)
            ).fetchone()
            now = now_ms()
            me = self.instance
            if row is not None and now - int(row["seen_ms"]) < timeout * 1000:
                if row["host"] != me:
                    raise LowbwError(
                        "cluster node %d is running already (pid %d on %s, seen %.1f s ago)"
                        % (node, int(row["pid"]), row["host"], (now - int(row["seen_ms"])) / 1000)
                    )
            db.execute("DELETE FROM cluster_nodes WHERE node = ?", (node,))
            db.execute(
                "INSERT INTO cluster_nodes (node, forward, pid, host, started_ms, seen_ms) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (node, forward, os.getpid(), me, now, now),
            )

    def heartbeat(self, node: int) -> dict[int, tuple[str, int]]:
        """Mark this node alive; every node's (forward address, ms since last seen)."""
        reg = self.registry
        now = now_ms()
        with reg._lock:
            reg.engine.execute("UPDATE cluster_nodes SET seen_ms = ? WHERE node = ?", (now, node))
            rows = reg.engine.execute("SELECT node, forward, seen_ms FROM cluster_nodes").fetchall()
        return {int(r["node"]): (str(r["forward"]), now - int(r["seen_ms"])) for r in rows}

    def leave(self, node: int) -> None:
        with self.registry._lock:
            self.registry.engine.execute(
                "DELETE FROM cluster_nodes WHERE node = ? AND pid = ?", (node, os.getpid())
            )

    def claim(self, device: str, node: int, sid: int) -> None:
        """The device's session is now (node, sid); the other nodes hear of it.

        One statement (one round trip, its own transaction): the upsert and the
        notice commit together."""
        reg = self.registry
        with reg._lock:
            reg.engine.execute(
                "WITH up AS (INSERT INTO cluster_sessions (device, node, sid, since_ms) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (device) DO UPDATE SET node = excluded.node, sid = excluded.sid, "
                "since_ms = excluded.since_ms RETURNING 1) "
                "SELECT pg_notify(?, ?) FROM up",
                (device, node, sid, now_ms(), NOTIFY_CHANNEL, "session %s %d %d" % (device, node, sid)),
            )

    def owner(self, device: str) -> tuple[int, int] | None:
        rows = self.registry._read("SELECT node, sid FROM cluster_sessions WHERE device = ?", (device,))
        return (int(rows[0]["node"]), int(rows[0]["sid"])) if rows else None

    def save(self, node: int, rows: list[tuple[str, bytes]]) -> None:
        with self.registry._write() as db:
            db.execute("DELETE FROM cluster_saved WHERE node = ?", (node,))
            for name, state in rows:
                db.execute(
                    "INSERT INTO cluster_saved (node, device, state) VALUES (?, ?, ?)", (node, name, state)
                )

    def load(self, node: int) -> list[tuple[str, bytes]]:
        """This node's saved sessions still recorded as its own; handed out once."""
        with self.registry._write() as db:
            rows = db.execute(
                "SELECT s.device, s.state FROM cluster_saved s JOIN devices d ON d.name = s.device "
                "WHERE s.node = ? AND d.revoked = 0",
                (node,),
            ).fetchall()
            db.execute("DELETE FROM cluster_saved WHERE node = ?", (node,))
            return [(str(r["device"]), bytes(r["state"])) for r in rows]


class ClusterTransport(LowbwTransport):
    """The proxy's transport on a cluster node: frames of other nodes' sessions go on to them."""

    cluster: Cluster

    def datagram_received(self, data: bytes, sockaddr: Sockaddr) -> None:
        if data:
            kind = data[0] & frames.KIND_MASK
            compact = kind == frames.KIND_COMPACT
            if compact or kind == frames.KIND_SHORT or kind == frames.KIND_LONG or data[0] == frames.HS_XX3:
                try:
                    sid = frames.peek_session_id(data)
                except LowbwError:
                    sid = None
                if sid is not None:
                    owner = sid_owner(sid, self.cluster.node_bits, compact)
                    if owner != self.cluster.node:
                        self.stats.rx += 1
                        self.stats.rx_bytes += len(data)
                        self.cluster.forward(owner, data, sockaddr)
                        return
        LowbwTransport.datagram_received(self, data, sockaddr)

    def forwarded(self, data: bytes, sockaddr: Sockaddr) -> None:
        """A datagram another node received for one of our sessions."""
        LowbwTransport.datagram_received(self, data, sockaddr)


class _ForwardProtocol(asyncio.DatagramProtocol):
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.cluster.received_forward(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("forward socket error: %s", type(exc).__name__)


class Cluster:
    """This node: forwarding, heartbeats, session claims, saved sessions."""

    def __init__(self, settings: ClusterSettings, registry: Registry, table: Any) -> None:
        settings.check()
        self.settings = settings
        self.node = settings.node
        self.node_bits = settings.node_bits
        self.store = ClusterStore(registry)
        self.table = table
        self.transport: ClusterTransport | None = None
        self._forward: asyncio.DatagramTransport | None = None
        self.forward_address: tuple[str, int] = ("", 0)
        # node -> (forward address, ms since its last heartbeat at the last refresh)
        self.peers: dict[int, tuple[tuple[str, int], int]] = {}
        self._peer_sources: set[tuple[str, int]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._refreshed = 0.0
        self.forwarded_out = 0
        self.forwarded_in = 0
        table.on_changes = ChangeHandler(table, self)
        table.sid_node = self.node
        table.sid_node_bits = self.node_bits

    # -- start and stop ------------------------------------------------------------

    async def create_transport(
        self, ctx: Context, bind: tuple[str, int], handler: FrameHandler
    ) -> ClusterTransport:
        """The device socket (``SO_REUSEPORT``: every node on this machine binds the
        same port) and the forward socket; as ``add_lowbw_transport`` otherwise."""
        loop = asyncio.get_running_loop()
        tman = TokenManager(ctx)
        mman = LowbwMessageManager(tman)
        transport = ClusterTransport(mman, handler)
        transport.cluster = self
        family = socket.AF_INET6 if ":" in bind[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.bind(bind)
        except OSError:
            sock.close()
            raise
        await loop.create_datagram_endpoint(lambda: transport, sock=sock)
        mman.message_interface = transport
        tman.token_interface = mman
        ctx.request_interfaces.append(tman)
        self.transport = transport
        host, port = _split_forward(self.settings.forward)
        fwd, _ = await loop.create_datagram_endpoint(lambda: _ForwardProtocol(self), local_addr=(host, port))
        self._forward = cast(asyncio.DatagramTransport, fwd)
        name = self._forward.get_extra_info("sockname")
        self.forward_address = (str(name[0]), int(name[1]))
        self.store.register(self.node, "%s:%d" % self.forward_address, self.settings.node_timeout)
        self._refresh()
        return transport

    def start_timers(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(HEARTBEAT, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._forward is not None:
            self._forward.close()
            self._forward = None
        try:
            self.store.leave(self.node)
        except (LowbwError, Exception) as exc:  # noqa: BLE001 - stopping anyway
            log.warning("cluster: could not leave: %s", exc)

    def _tick(self) -> None:
        try:
            self._refresh()
        except Exception as exc:  # noqa: BLE001 - PostgreSQL away: try again next time
            log.warning("cluster heartbeat failed: %s", exc)
        self._timer = asyncio.get_running_loop().call_later(HEARTBEAT, self._tick)

    def _refresh(self) -> None:
        self._refreshed = time.monotonic()
        peers: dict[int, tuple[tuple[str, int], int]] = {}
        for node, (forward, age) in self.store.heartbeat(self.node).items():
            try:
                peers[node] = (_split_forward(forward), age)
            except LowbwError:
                continue
        self.peers = peers
        self._peer_sources = {addr for n, (addr, _age) in peers.items() if n != self.node}

    def alive(self, node: int) -> bool:
        peer = self.peers.get(node)
        return peer is not None and peer[1] < self.settings.node_timeout * 1000

    # -- forwarding ------------------------------------------------------------------

    def forward(self, owner: int, data: bytes, sockaddr: Sockaddr) -> None:
        transport = self.transport
        peer = self.peers.get(owner)
        if peer is None and time.monotonic() - self._refreshed > PEER_REFRESH_MIN:
            # A node that started since the last heartbeat: look again (rate-limited).
            try:
                self._refresh()
            except Exception:  # noqa: BLE001 - PostgreSQL away: drop as below
                pass
            peer = self.peers.get(owner)
        if peer is None or not self.alive(owner) or self._forward is None:
            if transport is not None:
                transport.stats.drop(DROP_OWNER_DOWN)
            return
        self.forwarded_out += 1
        self._forward.sendto(encode_forward(data, sockaddr), peer[0])

    def received_forward(self, packet: bytes, source: Any) -> None:
        transport = self.transport
        if transport is None:
            return
        if (str(source[0]), int(source[1])) not in self._peer_sources:
            # Refresh once: a node that just started may not be in the table yet.
            try:
                self._refresh()
            except Exception:  # noqa: BLE001
                pass
            if (str(source[0]), int(source[1])) not in self._peer_sources:
                transport.stats.drop(DROP_FORWARD_REFUSED)
                return
        try:
            data, sockaddr = decode_forward(packet)
        except DecodeError:
            transport.stats.drop(DROP_FORWARD_REFUSED)
            return
        self.forwarded_in += 1
        transport.forwarded(data, sockaddr)

    # -- sessions ----------------------------------------------------------------------

    def session_added(self, addr: Any) -> None:
        """A new session of ours (handshake or restore): claim the device."""
        try:
            self.store.claim(addr.device, self.node, addr.sid)
        except (LowbwError, Exception) as exc:  # noqa: BLE001 - the session works; the rule waits
            log.warning("%s: session claim not recorded: %s", addr.device, exc)
            fresh = self.table.registry.fresh
            if fresh is not None:
                fresh.forget(addr.device)
            return
        self.table.refresh_commands(addr.device, notify=False)
        start_fresh(self.table, addr.device)

    def session_moved(self, device: str) -> None:
        """A ``session`` notice: close ours if the registry says the device is elsewhere."""
        table = self.table
        addr = table.by_device.get(device)
        if addr is not None:
            owner = self.store.owner(device)
            if owner is None or owner == (self.node, addr.sid):
                return
            log.info("%s: session %04x closed (the device is on node %d now)", device, addr.sid, owner[0])
            table.close(addr)
        forget_counters(table, device)

    def save(self) -> int:
        from lowbw.proxy.sessions import encode_state

        table = self.table
        table.flush_msg_tops()
        rows = []
        for addr in table.by_sid.values():
            rec = table.devices.get(addr.device)
            if (
                addr.session is not None
                and not addr.closed
                and rec is not None
                and "client" not in rec.permissions
            ):
                rows.append((addr.device, encode_state(addr)))
        self.store.save(self.node, rows)
        return len(rows)

    def restore(self) -> int:
        """This node's saved sessions that are still its own (the device made no
        session on another node meanwhile)."""

        def mine(name: str, session: Any) -> bool:
            compact = bool(getattr(session, "compact", False))
            if sid_owner(session.sid, self.node_bits, compact) != self.node:
                return False
            # The device made a session elsewhere while this node was down?
            return self.store.owner(name) == (self.node, session.sid)

        return int(self.table.restore(self.store.load(self.node), mine))


def start_fresh(table: Any, device: str) -> None:
    """The device's session is here: its unsent transaction ids need no lookup
    (``lowbw.proxy.freshtxn``), from its message top in the registry on."""
    fresh = table.registry.fresh
    if fresh is None:
        return
    try:
        top = max(table.registry.msg_top(device), table._tops.get(device, -1))
        fresh.start(device, table.epoch(device), top)
    except LowbwError:
        fresh.forget(device)


def forget_counters(table: Any, device: str) -> None:
    """Drop the node's cached message top and epoch of ``device`` (another node
    serves it now and moves them on in the registry; they are read again when
    it comes back). The top is written first: ``flush_msg_tops`` writes only
    what moved."""
    top = table._tops.get(device)
    if top is not None and top > table._persisted_tops.get(device, -1) and device in table.devices:
        try:
            table.registry.advance_msg_top(device, top)
        except RegistryError:
            pass
    table._tops.pop(device, None)
    table._persisted_tops.pop(device, None)
    table._epochs.pop(device, None)
    if table.registry.fresh is not None:
        table.registry.fresh.forget(device)


class ChangeHandler:
    """What the registry's notices (PostgreSQL LISTEN) do to this node's session table.

    ``device NAME``: re-read that device (revoked: its session closes);
    ``command NAME``: re-count its commands and push to its observers here;
    ``session NAME NODE SID``: the one-session rule (``Cluster.session_moved``);
    ``all``: reload everything (after the listening connection was lost).
    """

    def __init__(self, table: Any, cluster: Cluster | None = None) -> None:
        self.table = table
        self.cluster = cluster

    def __call__(self, changes: list[tuple[str, str]]) -> None:
        table = self.table
        for kind, arg in changes:
            if kind == "all":
                if table.registry.fresh is not None:
                    table.registry.fresh.forget_all()
                table.reload()
                for name in list(table._tops):
                    if name not in table.by_device:
                        forget_counters(table, name)
            elif kind == "device":
                self._device(arg)
            elif kind == "command":
                if self.cluster is not None and arg not in table.by_device:
                    # Counted again when the device makes a session here (session_added).
                    table._commands.pop(arg, None)
                elif arg in table.devices:
                    table.refresh_commands(arg, notify=True)
            elif kind == "session" and self.cluster is not None:
                name, _, rest = arg.partition(" ")
                node = rest.split(" ")[0]
                if node.isdigit() and int(node) != self.cluster.node:
                    self.cluster.session_moved(name)

    def _device(self, name: str) -> None:
        table = self.table
        rec = table.registry.device(name)
        if rec is not None and not rec.revoked and name in table.devices and rec == table.devices[name]:
            return
        # Rare (enrolment, revocation, a room turning encrypted): the full reload
        # keeps every rule of SessionTable.reload in one place.
        table.reload()


def wake_on_changes(registry: Registry, table: Any, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """A listener-thread hook that makes the loop look at the notices at once."""

    def wake() -> None:
        try:
            loop.call_soon_threadsafe(table.poll_changes)
        except RuntimeError:  # the loop is closed: stopping
            pass

    return wake
