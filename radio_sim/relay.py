"""Real-time UDP relay through the link model.

``python -m radio_sim relay --listen HOST:PORT --to HOST:PORT --preset NAME``

Datagrams from any client to ``--listen`` cross the model's ``up`` direction
and leave towards ``--to``; replies cross ``down`` and go back to the client.
Each client address gets its own upstream socket, so the server sees one
distinct source port per client and its replies find their way back. All
clients share one radio channel (one model).

The relay prints ``listening HOST:PORT`` on stdout once bound (useful with
port 0), writes the stats JSON on SIGUSR1, every ``--stats-interval``
seconds and at exit (SIGINT/SIGTERM), atomically (write then rename).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from typing import Any

from radio_sim.aio import LoopDriver
from radio_sim.model import DOWN, UP, Delivery, Link, LinkParams
from radio_sim.observe import EventLog, PcapWriter

MAX_DATAGRAM = 65535


def parse_hostport(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6ADDR]:PORT`` -> (host, port); ValueError otherwise."""
    host: str
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise ValueError("expected [HOST]:PORT, got %r" % (text,))
        host, port_s = text[1:end], text[end + 2 :]
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep or not host:
            raise ValueError("expected HOST:PORT, got %r" % (text,))
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError("bad port in %r" % (text,)) from None
    if not 0 <= port <= 65535:
        raise ValueError("port out of range in %r" % (text,))
    return host, port


def format_hostport(host: str, port: int) -> str:
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def _resolve(host: str, port: int) -> tuple[int, Any]:
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM, 0, socket.AI_NUMERICSERV)
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


class _Client:
    __slots__ = ("index", "addr", "sock", "up_frames", "down_frames")

    def __init__(self, index: int, addr: Any, sock: socket.socket) -> None:
        self.index = index
        self.addr = addr
        self.sock = sock
        self.up_frames = 0
        self.down_frames = 0


class Relay:
    """The relay's state; :meth:`start` binds, :meth:`close` tears down."""

    def __init__(
        self,
        params: LinkParams,
        listen: tuple[str, int],
        to: tuple[str, int],
        *,
        seed: int | None = None,
        stats_path: str | None = None,
        log_path: str | None = None,
        pcap_path: str | None = None,
        stats_interval: float | None = None,
        max_clients: int = 1024,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.loop = loop if loop is not None else asyncio.get_running_loop()
        self.params = params
        self.listen_addr = listen
        self.to_addr = to
        self.stats_path = stats_path
        self.stats_interval = stats_interval
        self.max_clients = max_clients
        self.link = Link(params, seed=seed, start=self.loop.time())
        self.started_wall = time.time()
        self._log = EventLog(log_path) if log_path else None
        self._pcap = PcapWriter(pcap_path, epoch=self.started_wall) if pcap_path else None
        for obs in (self._log, self._pcap):
            if obs is not None:
                self.link.add_observer(obs)
        self.driver = LoopDriver(self.link, self.loop, self._deliver)
        self.clients: dict[Any, _Client] = {}
        self.by_index: list[_Client] = []
        self.counters = {
            "send_errors": 0,
            "recv_errors": 0,
            "rejected_clients": 0,
        }
        self.generation = 0
        self._listen: socket.socket | None = None
        self._to_family, self._to_sockaddr = _resolve(*to)
        self._interval_handle: asyncio.TimerHandle | None = None

    # -- lifecycle --------------------------------------------------------

    def start(self) -> tuple[str, int]:
        family, sockaddr = _resolve(*self.listen_addr)
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(sockaddr)
        self._listen = sock
        self.loop.add_reader(sock.fileno(), self._on_listen)
        if self.stats_interval:
            self._interval_handle = self.loop.call_later(self.stats_interval, self._on_interval)
        name = sock.getsockname()
        return str(name[0]), int(name[1])

    def close(self) -> None:
        self.driver.close()
        if self._interval_handle is not None:
            self._interval_handle.cancel()
        if self._listen is not None:
            self.loop.remove_reader(self._listen.fileno())
            self._listen.close()
            self._listen = None
        for c in self.by_index:
            self.loop.remove_reader(c.sock.fileno())
            c.sock.close()
        for obs in (self._log, self._pcap):
            if obs is not None:
                obs.close()

    # -- traffic ----------------------------------------------------------

    def _client_for(self, addr: Any) -> _Client | None:
        c = self.clients.get(addr)
        if c is not None:
            return c
        if len(self.by_index) >= self.max_clients:
            self.counters["rejected_clients"] += 1
            return None
        sock = socket.socket(self._to_family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect(self._to_sockaddr)
        c = _Client(len(self.by_index), addr, sock)
        self.clients[addr] = c
        self.by_index.append(c)
        self.loop.add_reader(sock.fileno(), self._on_upstream, c)
        return c

    def _on_listen(self) -> None:
        assert self._listen is not None
        while True:
            try:
                data, addr = self._listen.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.counters["recv_errors"] += 1
                return
            c = self._client_for(addr)
            if c is None:
                continue
            c.up_frames += 1
            self.driver.offer(UP, data, flow=c.index, meta=c)

    def _on_upstream(self, c: _Client) -> None:
        while True:
            try:
                data = c.sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # ICMP port unreachable from an earlier send, typically.
                self.counters["recv_errors"] += 1
                return
            c.down_frames += 1
            self.driver.offer(DOWN, data, flow=c.index, meta=c)

    def _deliver(self, d: Delivery) -> None:
        c = d.meta
        assert isinstance(c, _Client)
        try:
            if d.direction == UP:
                c.sock.send(d.data)
            elif self._listen is not None:
                self._listen.sendto(d.data, c.addr)
        except OSError:
            self.counters["send_errors"] += 1

    # -- stats ------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        stats = self.link.stats(self.loop.time())
        self.generation += 1
        stats["generation"] = self.generation
        stats["written_at"] = time.time()
        stats["started_at"] = self.started_wall
        stats["relay"] = {
            "listen": format_hostport(*self.listen_addr),
            "to": format_hostport(*self.to_addr),
            "clients": [
                {
                    "index": c.index,
                    "addr": format_hostport(str(c.addr[0]), int(c.addr[1])),
                    "upstream_port": c.sock.getsockname()[1],
                    "up_frames": c.up_frames,
                    "down_frames": c.down_frames,
                }
                for c in self.by_index
            ],
            **self.counters,
        }
        return stats

    def write_stats(self) -> None:
        if not self.stats_path:
            return
        write_json_atomic(self.stats_path, self.snapshot())

    def _on_interval(self) -> None:
        self.write_stats()
        assert self.stats_interval
        self._interval_handle = self.loop.call_later(self.stats_interval, self._on_interval)


def write_json_atomic(path: str, obj: Any) -> None:
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1, sort_keys=False)
        fh.write("\n")
    os.replace(tmp, path)


async def serve(relay_kwargs: dict[str, Any], *, announce: bool = True) -> dict[str, Any]:
    """Run a relay until SIGINT/SIGTERM; return the final stats."""
    loop = asyncio.get_running_loop()
    relay = Relay(loop=loop, **relay_kwargs)
    host, port = relay.start()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, relay.write_stats)
    if announce:
        sys.stdout.write("listening %s\n" % format_hostport(host, port))
        sys.stdout.flush()
    relay.write_stats()
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            loop.remove_signal_handler(sig)
        final = relay.snapshot()
        if relay.stats_path:
            write_json_atomic(relay.stats_path, final)
        relay.close()
    return final
