"""The MQTT bridge's own small state file: duplicate keys and the command outbox.

Why it exists. The bridge acknowledges an MQTT message (PUBACK) only after its
readings are durably queued in the device's store; from there the device
client delivers each exactly once. If the bridge dies between "queued" and
"acknowledged", the broker sends the message again with the DUP flag after the
bridge reconnects, and it must not be queued a second time. So before queuing,
the bridge records the message's key, and a DUP message whose key is recorded
is only acknowledged.

The key is (packet id, topic, SHA-256 of the payload, first 8 bytes). A packet
id is free for reuse once its acknowledgement reached the broker, so only a
DUP message can be a redelivery; mosquitto and most brokers hand out packet ids
sequentially, so an id comes round again only after 65535 others, long after
its entry was evicted (``keep`` entries, one per packet id, newest kept).

Which readings of a recorded message are really queued: the entry holds the
device store's ``next_rid`` before the first reading was queued
(``first_rid``) and how many there are (``count``); ``done`` is -1 until known.
Reading ids are sequential and persisted with the queue, so after a crash
``done = clamp(store.next_rid - first_rid, 0, count)`` exactly, for every
entry (a later message's readings only ever have higher ids). ``reconcile``
does that at start, and a redelivery queues only ``readings[done:]``.

The outbox holds commands that came down from the room, until the broker has
acknowledged their publication: the device acknowledges a command to the proxy
right after handing it over, so the hand-over is this file. Republished after a
restart (at least once; each carries its Matrix ``event_id``).

File: JSON, written to ``<path>.tmp``, fsynced and renamed over ``<path>``::

    {"version": 1,
     "seen": [[packet_id, topic, hash_hex, device, first_rid, count, done], ...],
     "outbox": [{"device": ..., "id": ..., "sender": ..., "body": ..., "event_id": ...}, ...]}
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowbw.wire.errors import LowbwError

VERSION = 1


class StateFileError(LowbwError):
    """The bridge state file cannot be read or written."""


def digest(payload: bytes) -> str:
    return hashlib.sha256(payload).digest()[:8].hex()


@dataclass
class SeenEntry:
    pid: int
    topic: str
    digest: str
    device: str
    first_rid: int
    count: int
    done: int = -1

    def row(self) -> list[Any]:
        return [self.pid, self.topic, self.digest, self.device, self.first_rid, self.count, self.done]


class BridgeState:
    """The state file's contents (module docstring); ``save()`` after every change."""

    def __init__(self, path: Path, keep: int = 256) -> None:
        self.path = Path(path)
        self.keep = keep
        self.seen: OrderedDict[int, SeenEntry] = OrderedDict()
        self.outbox: list[dict[str, Any]] = []
        self.saves = 0
        self._load()

    def _load(self) -> None:
        data = None
        for p in (self.path, Path(str(self.path) + ".tmp")):
            try:
                data = p.read_bytes()
                break
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StateFileError("%s: cannot read (%s)" % (p, exc.strerror or exc))
        if data is None:
            return
        try:
            obj = json.loads(data.decode("utf-8"))
            if not isinstance(obj, dict) or obj.get("version") != VERSION:
                raise ValueError("not a version %d bridge state" % VERSION)
            for row in obj.get("seen", []):
                pid, topic, dig, device, first, count, done = row
                if not (isinstance(pid, int) and isinstance(topic, str) and isinstance(dig, str)):
                    raise ValueError("bad entry")
                if not (isinstance(device, str) and isinstance(first, int) and isinstance(count, int)):
                    raise ValueError("bad entry")
                if not isinstance(done, int):
                    raise ValueError("bad entry")
                self.seen[pid] = SeenEntry(pid, topic, dig, device, first, count, done)
            outbox = obj.get("outbox", [])
            if not isinstance(outbox, list) or not all(isinstance(e, dict) for e in outbox):
                raise ValueError("bad outbox")
            self.outbox = outbox
        except (ValueError, TypeError, UnicodeError) as exc:
            raise StateFileError(
                "%s: not a bridge state file (%s); move it away to start afresh" % (self.path, exc)
            )

    def save(self) -> None:
        obj = {
            "version": VERSION,
            "seen": [e.row() for e in self.seen.values()],
            "outbox": self.outbox,
        }
        data = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        tmp = str(self.path) + ".tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dfd = os.open(str(self.path.parent), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            raise StateFileError("%s: cannot write (%s)" % (self.path, exc.strerror or exc))
        self.saves += 1

    # -- duplicate keys --------------------------------------------------------------

    def match(self, pid: int, topic: str, dig: str) -> SeenEntry | None:
        e = self.seen.get(pid)
        if e is not None and e.topic == topic and e.digest == dig:
            return e
        return None

    def record(self, pid: int, topic: str, dig: str, device: str, first_rid: int, count: int) -> SeenEntry:
        """Remember a message about to be queued (call ``save`` before queuing)."""
        e = SeenEntry(pid, topic, dig, device, first_rid, count, -1)
        self.seen.pop(pid, None)
        self.seen[pid] = e
        while len(self.seen) > self.keep:
            self.seen.popitem(last=False)
        return e

    def reconcile(self, next_rid: Callable[[str], int | None]) -> int:
        """Settle ``done`` of entries from the device stores; returns how many were partial."""
        partial = 0
        changed = False
        for e in self.seen.values():
            if e.done >= 0:
                continue
            top = next_rid(e.device)
            if top is None:
                continue  # that device is no longer configured
            e.done = max(0, min(e.count, top - e.first_rid))
            changed = True
            if e.done < e.count:
                partial += 1
        if changed:
            self.save()
        return partial
