"""The enrollment registry: devices, their message counters, sent events, commands, sessions.

One SQLite file (WAL mode) shared by the running proxy and the ``lowbw device``
commands of the operator, or a PostgreSQL database (``Registry("postgresql://...")``)
shared by several proxies on one fleet (docs/scale-out.md). The SQL below is
written once, in SQLite's dialect; ``lowbw.proxy.regdb`` runs it on either
engine (translating it for PostgreSQL), so a new column or migration is written
once too.  A device is its Noise static public key; the record
says which Matrix user it acts as, which rooms and event types it may use and
how its readings are rendered (``slots``, as in the device config).

Tables (schema version 6, kept in ``PRAGMA user_version``):

``devices``      name (primary key), public_key (unique, revoked devices included:
                 a revoked key is never let in again under another name), user_id,
                 access_token (token mode only), rooms/event_types/slots/permissions
                 as JSON, revoked, created_ms, msg_top (highest message number
                 seen, -1 before the first), epoch (the device's counter epoch,
                 0 until it announces one; ``lowbw.wire.handshake``: a new epoch
                 means its message counter started again, so msg_top goes back
                 to -1 in the same transaction), hs_floor (highest IK handshake
                 number accepted, -1 before any) and hs_announce (highest
                 handshake number among the IK messages that announced the
                 current epoch): ``accept_handshake``, encrypted (1: the
                 device's room is end-to-end encrypted, so its events go out
                 as Megolm ciphertext, ``lowbw.proxy.e2ee``), profile (the
                 link profile recorded at enrollment: ``standard`` or
                 ``compact``, docs/PROTOCOL.md; only a compact device is let
                 in by a Noise KK handshake)
``ephemerals``   the last 256 IK ephemeral keys per device (a second, older
                 replay check; the handshake number is the one that holds forever)
``sent_events``  (device, Matrix txn_id) -> event_id: exactly-once sending
``commands``     downlink commands; acknowledged ones stay (acked_ms set) so a
                 transaction the homeserver pushes again is not queued twice
``sessions``     opaque session states saved at a graceful stop
``matrix_devices`` for devices in encrypted rooms: the Matrix device (device
                 ID and its access token) the proxy logged in for the device
                 user, whose Olm/Megolm state lives in the e2ee store
``client_tokens`` for client-proxy keys (permission ``client``): handle ->
                 the Matrix access token it stands for. A login through a
                 client-proxy answers the client with the handle, so the real
                 token never crosses the radio (``lowbw.proxy.clients``).

Revocation across processes: the proxy calls ``changed()`` (``PRAGMA
data_version``, which moves when another connection commits, then the change
counter that only enrolment, revocation, commands and tokens move) on each datagram
(on PostgreSQL the writers of devices and commands ``NOTIFY`` instead, and
``listen``/``take_changes`` say what changed: nothing is polled);
``device_by_key`` never returns a revoked device, and ``revoke`` deletes the
device's saved sessions.  ``load_sessions`` hands the saved states out once and
deletes them: restoring the same Noise state twice (after a crash that followed
a restore) would reuse nonces.

Schema history: version 1 had no ``epoch`` column; opening a version 1 file
adds it (default 0, the epoch of every device that never announced one).
Version 2 had no ``client_tokens``; opening it adds the (empty) table.
Version 3 had no handshake numbers; opening it adds ``hs_floor`` and
``hs_announce`` (-1: the next handshake of every device is accepted once).
Version 4 had no ``encrypted`` column and no ``matrix_devices``.
Version 5 had no ``profile`` column; opening it adds it (``standard``, what
every device enrolled before it speaks). Nor had it the change counter
(``changes`` and its triggers): ``changed()`` then took every commit of another
connection for a change, the proxy's own write-behind thread
(``lowbw.proxy.writebehind``) included.

Durability: ``synchronous=NORMAL`` in WAL mode survives a crash of the process
(each commit is in the WAL before the call returns); a power loss may roll back
the last commits, and a retried reading is then still deduplicated by the
homeserver's own transaction-ID check.  The file is created 0600 (it may hold
access tokens); SQLite gives its -wal and -shm files the same mode.

One connection per ``Registry``; a lock makes each method atomic, so it may be
called from the event loop and from worker threads alike.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from lowbw.proxy import regdb
from lowbw.wire.errors import LowbwError

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _timed(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Time the method: its wall time goes to ``Registry.on_timing`` (operation
    name, seconds) when set, and the longest call so far is kept in
    ``Registry.longest`` (what a call costs the event loop that made it; two
    clock reads, so it is always on).

    The proxy's metrics set ``on_timing``
    (``lowbw_proxy_registry_operation_duration_seconds``).
    """
    op = method.__name__

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        reg = args[0]
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            took = time.perf_counter() - started
            if took > reg.longest[0]:  # type: ignore[attr-defined]
                reg.longest = (took, op)  # type: ignore[attr-defined]
            report = reg.on_timing  # type: ignore[attr-defined]
            if report is not None:
                report(op, took)

    return wrapper


SCHEMA_VERSION = 6

# Many rows in one statement: (sent_ms, JSON array of [device, txn_id, event_id]).
# "WHERE true" keeps SQLite from reading ON CONFLICT as part of the SELECT.
_INSERT_SENT_JSON = (
    "INSERT INTO sent_events (device, txn_id, event_id, sent_ms) "
    "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'), ? "
    "FROM json_each(?) WHERE true ON CONFLICT (device, txn_id) DO NOTHING"
)
# The same, leaving out rows of devices that do not exist (slower: only after
# the foreign key refused the plain statement).
_INSERT_SENT_KNOWN_JSON = (
    "INSERT INTO sent_events (device, txn_id, event_id, sent_ms) "
    "SELECT d.name, json_extract(j.value, '$[1]'), json_extract(j.value, '$[2]'), ? "
    "FROM json_each(?) AS j JOIN devices AS d ON d.name = json_extract(j.value, '$[0]') "
    "WHERE true ON CONFLICT (device, txn_id) DO NOTHING"
)
# (JSON array of [device, top, epoch]): each device's top raised to at least its
# value, if the device is still in that counter epoch.
_ADVANCE_TOPS_JSON = (
    "UPDATE devices SET msg_top = max(msg_top, t.top) "
    "FROM (SELECT json_extract(value, '$[0]') AS name, max(json_extract(value, '$[1]')) AS top, "
    "json_extract(value, '$[2]') AS epoch FROM json_each(?) GROUP BY 1, 3) AS t "
    "WHERE devices.name = t.name AND devices.epoch = t.epoch"
)
_INSERT_SENT = (
    "INSERT INTO sent_events (device, txn_id, event_id, sent_ms) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (device, txn_id) DO NOTHING"
)
PROFILES = ("standard", "compact")
# Handshake numbers are kept in a signed 64-bit column.
MAX_HSN = (1 << 63) - 1
MAX_EPOCH = 0xFFFFFFFF
EPHEMERALS_KEPT = 256
PUBLIC_KEY_LEN = 32
BUSY_TIMEOUT_MS = 5000
# Seconds between the background WAL checkpoints of ``start_checkpoints``.
CHECKPOINT_INTERVAL = 0.5

_SCHEMA = """
CREATE TABLE devices (
    name TEXT PRIMARY KEY NOT NULL,
    public_key BLOB NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    access_token TEXT,
    rooms TEXT NOT NULL,
    event_types TEXT NOT NULL,
    slots TEXT NOT NULL,
    permissions TEXT NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    msg_top INTEGER NOT NULL DEFAULT -1,
    epoch INTEGER NOT NULL DEFAULT 0,
    hs_floor INTEGER NOT NULL DEFAULT -1,
    hs_announce INTEGER NOT NULL DEFAULT -1,
    encrypted INTEGER NOT NULL DEFAULT 0,
    profile TEXT NOT NULL DEFAULT 'standard'
);
CREATE TABLE matrix_devices (
    device TEXT PRIMARY KEY NOT NULL REFERENCES devices(name),
    device_id TEXT NOT NULL,
    access_token TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE ephemerals (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL REFERENCES devices(name),
    e BLOB NOT NULL,
    UNIQUE (device, e)
);
CREATE TABLE sent_events (
    device TEXT NOT NULL REFERENCES devices(name),
    txn_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    sent_ms INTEGER NOT NULL,
    PRIMARY KEY (device, txn_id)
);
CREATE TABLE commands (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL REFERENCES devices(name),
    event_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    body TEXT NOT NULL,
    queued_ms INTEGER NOT NULL,
    acked_ms INTEGER,
    UNIQUE (device, event_id)
);
CREATE INDEX commands_pending ON commands (device, id) WHERE acked_ms IS NULL;
CREATE TABLE sessions (
    device TEXT NOT NULL REFERENCES devices(name),
    state BLOB NOT NULL
);
CREATE TABLE retired_epochs (
    device TEXT NOT NULL REFERENCES devices(name),
    epoch INTEGER NOT NULL,
    PRIMARY KEY (device, epoch)
);
CREATE TABLE client_tokens (
    device TEXT NOT NULL REFERENCES devices(name),
    handle TEXT NOT NULL,
    token TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (device, handle)
);
"""

# The change counter (schema 6): bumped by every change another process must
# see (devices enrolled, revoked or edited, commands, tokens, Matrix devices),
# not by the bookkeeping of the reading path and handshakes (message tops,
# epochs, handshake numbers, sent events, ephemerals), so ``changed()`` can tell
# a revocation from the proxy's own writes. Statements one by one: a trigger's
# body has semicolons of its own.
_BUMP = "BEGIN UPDATE changes SET n = n + 1; END"
_RECORD_COLUMNS = (
    "name",
    "public_key",
    "user_id",
    "access_token",
    "rooms",
    "event_types",
    "slots",
    "permissions",
    "revoked",
    "encrypted",
    "profile",
)
_CHANGE_COUNTER: tuple[str, ...] = (
    "CREATE TABLE changes (id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL)",
    "INSERT INTO changes (id, n) VALUES (1, 0)",
    "CREATE TRIGGER devices_added AFTER INSERT ON devices " + _BUMP,
    "CREATE TRIGGER devices_removed AFTER DELETE ON devices " + _BUMP,
    # An update of what the proxy reloads (DeviceRecord's columns), not of its
    # bookkeeping (msg_top, epoch, handshake numbers), no-op updates included. A
    # column added to DeviceRecord is added here too (test_registry checks).
    "CREATE TRIGGER devices_changed AFTER UPDATE ON devices WHEN "
    + " OR ".join("NEW.%s IS NOT OLD.%s" % (c, c) for c in _RECORD_COLUMNS)
    + " "
    + _BUMP,
)
for _table in ("commands", "client_tokens", "matrix_devices"):
    for _what in ("INSERT", "UPDATE", "DELETE"):
        _CHANGE_COUNTER += (
            "CREATE TRIGGER %s_%s AFTER %s ON %s %s" % (_table, _what.lower(), _what, _table, _BUMP),
        )

# Each step takes the schema from version N to N + 1, inside _init_schema's transaction.
_MIGRATIONS = {
    1: (
        "ALTER TABLE devices ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0",
        "CREATE TABLE retired_epochs (device TEXT NOT NULL REFERENCES devices(name), "
        "epoch INTEGER NOT NULL, PRIMARY KEY (device, epoch))",
    ),
    2: (
        "CREATE TABLE client_tokens (device TEXT NOT NULL REFERENCES devices(name), "
        "handle TEXT NOT NULL, token TEXT NOT NULL, created_ms INTEGER NOT NULL, "
        "PRIMARY KEY (device, handle))",
    ),
    3: (
        "ALTER TABLE devices ADD COLUMN hs_floor INTEGER NOT NULL DEFAULT -1",
        "ALTER TABLE devices ADD COLUMN hs_announce INTEGER NOT NULL DEFAULT -1",
    ),
    4: (
        "ALTER TABLE devices ADD COLUMN encrypted INTEGER NOT NULL DEFAULT 0",
        "CREATE TABLE matrix_devices (device TEXT PRIMARY KEY NOT NULL REFERENCES devices(name), "
        "device_id TEXT NOT NULL, access_token TEXT NOT NULL, created_ms INTEGER NOT NULL)",
    ),
    # (On SQLite, _init_schema adds the change counter as well: triggers are SQLite's.)
    5: ("ALTER TABLE devices ADD COLUMN profile TEXT NOT NULL DEFAULT 'standard'",),
}


class RegistryError(LowbwError):
    """A registry operation was refused (duplicate name or key, unknown device, bad value)."""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class DeviceRecord:
    """One enrolled device.  ``repr`` leaves the access token out."""

    name: str
    public_key: bytes
    user_id: str
    access_token: str | None = field(default=None, repr=False)
    rooms: list[str] = field(default_factory=list)
    event_types: list[str] = field(default_factory=lambda: ["m.room.message"])
    slots: list[dict[str, Any]] = field(default_factory=list)
    permissions: list[str] = field(default_factory=list)
    revoked: bool = False
    created_ms: int = field(default_factory=now_ms)
    # The device's room is end-to-end encrypted (lowbw.proxy.e2ee).
    encrypted: bool = False
    # The link profile recorded at enrollment (PROFILES; docs/PROTOCOL.md).
    profile: str = "standard"


def _device_from_row(row: Any) -> DeviceRecord:
    return DeviceRecord(
        name=row["name"],
        public_key=bytes(row["public_key"]),
        user_id=row["user_id"],
        access_token=row["access_token"],
        rooms=json.loads(row["rooms"]),
        event_types=json.loads(row["event_types"]),
        slots=json.loads(row["slots"]),
        permissions=json.loads(row["permissions"]),
        revoked=bool(row["revoked"]),
        created_ms=int(row["created_ms"]),
        encrypted=bool(row["encrypted"]),
        profile=str(row["profile"]),
    )


_DEVICE_COLUMNS = (
    "name, public_key, user_id, access_token, rooms, event_types, slots, permissions, revoked, created_ms, "
    "encrypted, profile"
)


class Registry:
    """The registry file at ``path`` (created with its schema if missing), or the
    PostgreSQL database at a ``postgresql://`` URL (``lowbw.proxy.regdb``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.url = regdb.fix_url(path)
        self.path = Path(path) if self.url is None else Path("postgresql")
        # Changes other proxies or the CLI made ("kind name"), from PostgreSQL's
        # LISTEN/NOTIFY (``listen``); drained by ``take_changes``.
        self._changes: list[str] = []
        self._changes_lock = threading.Lock()
        self.on_change: Callable[[], None] | None = None
        # lowbw.proxy.freshtxn.FreshTxns when the proxy runs on PostgreSQL:
        # transaction ids it knows are unsent, answered without a round trip.
        self.fresh: Any = None
        # Called with (operation, seconds) after each public operation, when set (metrics).
        self.on_timing: Callable[[str, float], None] | None = None
        # The longest public operation so far: (seconds, operation name) (``_timed``).
        self.longest: tuple[float, str] = (0.0, "")
        self._checkpointer: threading.Thread | None = None
        self._checkpoints_stop = threading.Event()
        self._lock = threading.RLock()
        # write_behind's own connection (SQLite; opened on first use, by its one thread).
        self._writer_db: sqlite3.Connection | None = None
        # The change counter as this connection last saw it (SQLite; changed());
        # kept by _write once the schema is known to have it.
        self._change_seen = 0
        self._counting = False
        self._closed = False
        if self.url is not None:
            try:
                self.engine: regdb.Engine = regdb.PostgresEngine(self.url)
            except Exception as exc:  # psycopg's errors, a bad URL
                raise RegistryError("cannot open registry %s: %s" % (regdb.redact(self.url), exc)) from None
            try:
                self._init_schema()
            except self.engine.errors as exc:
                self.engine.close()
                raise RegistryError("%s is not a usable lowbw registry: %s" % (regdb.redact(self.url), exc))
            except RegistryError:
                self.engine.close()
                raise
            self._data_version = 0
            return
        if str(path) != ":memory:" and not self.path.exists():
            # Created here, not by sqlite3, so it never exists with a looser mode.
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
        try:
            sqlite = regdb.SqliteEngine(str(path), BUSY_TIMEOUT_MS)
        except sqlite3.Error as exc:
            raise RegistryError("cannot open registry %s: %s" % (path, exc))
        self.engine = sqlite
        try:
            sqlite.configure()
            self._init_schema()
            self._data_version = sqlite.data_version()
            self._change_seen = self._change_count()
            self._counting = True
        except sqlite3.DatabaseError as exc:
            sqlite.close()
            raise RegistryError("%s is not a usable lowbw registry: %s" % (path, exc))
        except RegistryError:
            sqlite.close()
            raise

    @property
    def location(self) -> str:
        """The file, or the URL without its password (for messages)."""
        return regdb.redact(self.url) if self.url is not None else str(self.path)

    @property
    def notifies(self) -> bool:
        """True on PostgreSQL: changes arrive by ``listen`` and ``take_changes``, nothing is polled."""
        return self.engine.notifies

    def _init_schema(self) -> None:
        """Create or migrate the schema (``_SCHEMA``, ``_MIGRATIONS``: SQLite's dialect,
        translated for PostgreSQL by ``regdb``), in one transaction."""
        engine = self.engine
        where = self.location
        with self._write() as db:
            engine.lock_schema()
            version = engine.schema_version()
            if version == SCHEMA_VERSION:
                return
            if version > SCHEMA_VERSION:
                raise RegistryError(
                    "registry %s has schema version %d; this lowbw knows up to %d"
                    % (where, version, SCHEMA_VERSION)
                )
            if version == 0 and engine.table_count():
                if engine.kind == "sqlite":
                    raise RegistryError("%s is an SQLite file but not a lowbw registry" % where)
                raise RegistryError("%s is a database with tables but not a lowbw registry" % where)
            if version > 0:
                counter = engine.kind == "sqlite" and version < 6
                while version < SCHEMA_VERSION:
                    for statement in _MIGRATIONS[version]:
                        db.execute(statement)
                    version += 1
                if counter:  # once every table its triggers watch exists
                    for statement in _CHANGE_COUNTER:
                        db.execute(statement)
                engine.set_schema_version(SCHEMA_VERSION)
                return
            # executescript would COMMIT our transaction first; run statement by statement.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            if engine.kind == "sqlite":
                for statement in _CHANGE_COUNTER:
                    db.execute(statement)
            engine.set_schema_version(SCHEMA_VERSION)

    def close(self) -> None:
        self._closed = True
        self.stop_checkpoints()
        with self._lock:
            if self._writer_db is not None:
                self._writer_db.close()
                self._writer_db = None
            self.engine.close()

    # -- change notification (PostgreSQL) -----------------------------------------

    def listen(self) -> None:
        """PostgreSQL: start receiving other writers' changes (``take_changes``).
        SQLite: nothing (``changed`` polls ``PRAGMA data_version``)."""
        engine = self.engine
        if isinstance(engine, regdb.PostgresEngine):
            engine.listen(self._on_notify)

    def _on_notify(self, payload: str) -> None:
        # On the listener thread.
        with self._changes_lock:
            self._changes.append(payload)
        hook = self.on_change
        if hook is not None:
            hook()

    def take_changes(self) -> list[tuple[str, str]]:
        """The changes notified since the last call, oldest first: (kind, argument)
        with kind ``device`` (enrolled, revoked, changed), ``command`` (queued),
        ``session`` (argument ``name node sid``: the device's session is now
        there) or ``all`` (reload everything)."""
        if not self._changes:
            return []
        with self._changes_lock:
            changes, self._changes = self._changes, []
        out = []
        for payload in changes:
            kind, _, arg = payload.partition(" ")
            out.append((kind, arg))
        return out

    def _notify(self, kind: str, arg: str) -> None:
        """Inside a write transaction: tell the listening proxies at commit (PostgreSQL)."""
        self.engine.notify("%s %s" % (kind, arg))

    # -- WAL checkpoints off the caller's thread ------------------------------------

    def start_checkpoints(self, interval: float = CHECKPOINT_INTERVAL) -> None:
        """Checkpoint the WAL on a thread of its own instead of in the commits.

        By default the commit that takes the WAL past 1000 pages also copies it
        into the database file and syncs it: 5-8 ms inside one ``record_event``,
        on the proxy's event loop. After this call this connection never
        checkpoints (``wal_autocheckpoint = 0``); a daemon thread with its own
        connection runs ``PRAGMA wal_checkpoint(PASSIVE)`` every ``interval``
        seconds (passive: it never waits for, nor blocks, a writer or a reader;
        sqlite3 releases the GIL while it copies and syncs). Durability is the
        same (every commit is in the WAL before it returns). ``close`` stops
        the thread; closing the last connection checkpoints once more.
        """
        if self._checkpointer is not None or str(self.path) == ":memory:" or self.url is not None:
            return
        with self._lock:
            self.engine.execute("PRAGMA wal_autocheckpoint = 0")
        self._checkpoints_stop.clear()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, args=(interval,), name="lowbw-registry-checkpoint", daemon=True
        )
        self._checkpointer.start()

    def stop_checkpoints(self) -> None:
        thread, self._checkpointer = self._checkpointer, None
        if thread is None:
            return
        self._checkpoints_stop.set()
        thread.join()
        with self._lock:
            self.engine.execute("PRAGMA wal_autocheckpoint = 1000")

    def _checkpoint_loop(self, interval: float) -> None:
        db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA busy_timeout = %d" % BUSY_TIMEOUT_MS)
            while not self._checkpoints_stop.wait(interval):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # a busy moment or a full disk: next time
                    logging.getLogger("lowbw.proxy.registry").warning("WAL checkpoint failed: %s", exc)
        finally:
            db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[regdb.Engine]:
        """One write transaction, taken up front so two processes never deadlock upgrading
        (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: ``BEGIN`` and row locks)."""
        engine = self.engine
        with self._lock:
            engine.begin()
            try:
                # This connection's own bumps of the change counter are not
                # changes to it (changed()); another's, before our BEGIN, still
                # are. Counted once the commit has succeeded.
                before = self._change_count() if self._counting else 0
                yield engine
                own = self._change_count() - before if self._counting else 0
            except BaseException:
                engine.rollback()
                raise
            engine.commit()
            self._change_seen += own

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            rows: list[Any] = self.engine.execute(sql, args).fetchall()
            return rows

    def _require_device(self, db: regdb.Engine, name: str) -> None:
        if db.execute("SELECT 1 FROM devices WHERE name = ?", (name,)).fetchone() is None:
            raise RegistryError("no device named %r" % name)

    # -- devices ----------------------------------------------------------------

    def add_device(self, rec: DeviceRecord) -> None:
        if not isinstance(rec.name, str) or not rec.name:
            raise RegistryError("a device needs a name")
        if not isinstance(rec.public_key, bytes) or len(rec.public_key) != PUBLIC_KEY_LEN:
            raise RegistryError("a device public key is %d bytes" % PUBLIC_KEY_LEN)
        # A client-proxy (permission "client") acts for whoever logs in: no user of its own.
        client = "client" in rec.permissions
        if rec.profile not in PROFILES:
            raise RegistryError("link profile %r is not one of %s" % (rec.profile, ", ".join(PROFILES)))
        if not (client and rec.user_id == "") and (not rec.user_id.startswith("@") or ":" not in rec.user_id):
            raise RegistryError("user ID %r is not @localpart:server" % rec.user_id)
        try:
            encoded = (
                json.dumps(list(rec.rooms)),
                json.dumps(list(rec.event_types)),
                json.dumps(list(rec.slots), ensure_ascii=False),
                json.dumps(list(rec.permissions)),
            )
        except (TypeError, ValueError) as exc:
            raise RegistryError("device %r has a field that is not JSON: %s" % (rec.name, exc))
        with self._write() as db:
            if db.execute("SELECT 1 FROM devices WHERE name = ?", (rec.name,)).fetchone():
                raise RegistryError("a device named %r is already enrolled" % rec.name)
            other = db.execute("SELECT name FROM devices WHERE public_key = ?", (rec.public_key,)).fetchone()
            if other is not None:
                raise RegistryError("that public key is already enrolled as device %r" % other["name"])
            db.execute(
                "INSERT INTO devices (%s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)" % _DEVICE_COLUMNS,
                (
                    rec.name,
                    rec.public_key,
                    rec.user_id,
                    rec.access_token,
                    *encoded,
                    int(rec.revoked),
                    int(rec.created_ms),
                    int(rec.encrypted),
                    rec.profile,
                ),
            )
            self._notify("device", rec.name)

    @_timed
    def device(self, name: str) -> DeviceRecord | None:
        """The device called ``name``, revoked or not."""
        rows = self._read("SELECT %s FROM devices WHERE name = ?" % _DEVICE_COLUMNS, (name,))
        return _device_from_row(rows[0]) if rows else None

    @_timed
    def device_by_key(self, public_key: bytes) -> DeviceRecord | None:
        """The device with this static key; None if unknown or revoked (both get no answer)."""
        rows = self._read(
            "SELECT %s FROM devices WHERE public_key = ? AND revoked = 0" % _DEVICE_COLUMNS,
            (bytes(public_key),),
        )
        return _device_from_row(rows[0]) if rows else None

    @_timed
    def set_encrypted(self, name: str, encrypted: bool = True) -> bool:
        """Mark the device's room as encrypted (never back: encryption cannot be
        turned off in a Matrix room); True if that changed anything."""
        with self._write() as db:
            cur = db.execute(
                "UPDATE devices SET encrypted = ? WHERE name = ? AND encrypted != ?",
                (int(encrypted), name, int(encrypted)),
            )
            if cur.rowcount == 1:
                self._notify("device", name)
            return bool(cur.rowcount == 1)

    @_timed
    def matrix_device(self, name: str) -> tuple[str, str] | None:
        """(device_id, access_token) of the Matrix device the proxy logged in for ``name``."""
        rows = self._read("SELECT device_id, access_token FROM matrix_devices WHERE device = ?", (name,))
        return (str(rows[0]["device_id"]), str(rows[0]["access_token"])) if rows else None

    @_timed
    def set_matrix_device(self, name: str, device_id: str, access_token: str) -> None:
        with self._write() as db:
            self._require_device(db, name)
            db.execute(
                "INSERT INTO matrix_devices (device, device_id, access_token, created_ms) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (device) DO UPDATE SET device_id = excluded.device_id, "
                "access_token = excluded.access_token, created_ms = excluded.created_ms",
                (name, device_id, access_token, now_ms()),
            )

    def drop_matrix_device(self, name: str) -> None:
        """Forget the device's Matrix login (its token was refused): the proxy logs in again."""
        with self._write() as db:
            db.execute("DELETE FROM matrix_devices WHERE device = ?", (name,))

    @_timed
    def revoked_name(self, public_key: bytes) -> str | None:
        """The name of the revoked device that had this key; None if no revoked device had it."""
        rows = self._read(
            "SELECT name FROM devices WHERE public_key = ? AND revoked = 1", (bytes(public_key),)
        )
        return str(rows[0]["name"]) if rows else None

    @_timed
    def devices(self) -> list[DeviceRecord]:
        rows = self._read("SELECT %s FROM devices ORDER BY name" % _DEVICE_COLUMNS)
        return [_device_from_row(r) for r in rows]

    def revoke(self, name: str) -> bool:
        """Cut the device off; True if it was enrolled and not yet revoked."""
        with self._write() as db:
            cur = db.execute("UPDATE devices SET revoked = 1 WHERE name = ? AND revoked = 0", (name,))
            db.execute("DELETE FROM sessions WHERE device = ?", (name,))
            db.execute("DELETE FROM client_tokens WHERE device = ?", (name,))
            db.execute("DELETE FROM matrix_devices WHERE device = ?", (name,))
            if cur.rowcount == 1:
                self._notify("device", name)
            return bool(cur.rowcount == 1)

    def _change_count(self) -> int:
        """SQLite's change counter (schema 6); 0 on PostgreSQL, which notifies instead."""
        if self.engine.kind != "sqlite":
            return 0
        count: int = self.engine.execute("SELECT n FROM changes").fetchone()[0]
        return count

    @_timed
    def changed(self) -> bool:
        """True if another connection (another process) committed a change that
        matters since the last call.

        SQLite: ``PRAGMA data_version`` first (microseconds, no read of the
        database): it moves on every commit of another connection, the proxy's
        own write-behind thread included, so only then is the change counter
        (schema 6) read. PostgreSQL: whether a change was notified (and the
        notified changes are dropped: the caller reloads everything;
        ``take_changes`` says what changed instead).
        """
        engine = self.engine
        if not isinstance(engine, regdb.SqliteEngine):
            return bool(self.take_changes())
        with self._lock:
            version = engine.data_version()
            if version == self._data_version:
                return False
            count = self._change_count()  # may raise: then the next call reads it again
            self._data_version = version
            moved = count != self._change_seen
            self._change_seen = count
            return moved

    # -- replay and message counters ---------------------------------------------

    @_timed
    def remember_ephemeral(self, name: str, e: bytes) -> bool:
        """Record an IK ephemeral key; False if this device used it before (a replayed IK1)."""
        with self._write() as db:
            self._require_device(db, name)
            cur = db.execute("INSERT OR IGNORE INTO ephemerals (device, e) VALUES (?, ?)", (name, bytes(e)))
            if cur.rowcount == 0:
                return False
            db.execute(
                "DELETE FROM ephemerals WHERE device = ? AND seq <= "
                "(SELECT seq FROM ephemerals WHERE device = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (name, name, EPHEMERALS_KEPT),
            )
            return True

    @_timed
    def accept_handshake(self, name: str, e: bytes, hsn: int, epoch: int | None) -> tuple[bool, int | None]:
        """Decide on an authenticated IK message 1 of ``name``: ``(accepted, floor)``.

        ``hsn`` is its handshake number, ``epoch`` the counter epoch it
        announces (None: it announces none). Not accepted (a replay, however
        old): its ephemeral was seen, or

        * it announces no epoch and ``hsn`` is not above the highest accepted;
        * it announces a retired epoch;
        * it announces the current epoch and ``hsn`` is not above the highest
          among the accepted handshakes that announced it.

        A handshake announcing a new epoch is accepted whatever its number
        (the device lost its store and counts from 0 again); ``floor`` is then
        the highest number accepted before when ``hsn`` is not above it, and
        the device is told to continue above it. Recorded in one transaction
        with the ephemeral; the epoch itself is recorded by ``set_device_epoch``.
        """
        if not isinstance(hsn, int) or isinstance(hsn, bool) or not 0 <= hsn <= MAX_HSN:
            return False, None
        with self._write() as db:
            row = db.execute(
                "SELECT epoch, hs_floor, hs_announce FROM devices WHERE name = ? /*FOR UPDATE*/", (name,)
            ).fetchone()
            if row is None:
                raise RegistryError("no device named %r" % name)
            current, floor, announce = int(row["epoch"]), int(row["hs_floor"]), int(row["hs_announce"])
            if epoch is None:
                if hsn <= floor:
                    return False, None
            elif epoch == current:
                if hsn <= announce:
                    return False, None
            elif db.execute(
                "SELECT 1 FROM retired_epochs WHERE device = ? AND epoch = ?", (name, epoch)
            ).fetchone():
                return False, None
            cur = db.execute("INSERT OR IGNORE INTO ephemerals (device, e) VALUES (?, ?)", (name, bytes(e)))
            if cur.rowcount == 0:
                return False, None
            db.execute(
                "DELETE FROM ephemerals WHERE device = ? AND seq <= "
                "(SELECT seq FROM ephemerals WHERE device = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (name, name, EPHEMERALS_KEPT),
            )
            jump = floor if epoch is not None and hsn <= floor else None
            db.execute(
                "UPDATE devices SET hs_floor = max(hs_floor, ?), hs_announce = ? WHERE name = ?",
                (hsn, hsn if epoch is not None else announce, name),
            )
            return True, jump

    @_timed
    def msg_top(self, name: str) -> int:
        """Highest message number seen from the device; -1 if none (or no such device)."""
        rows = self._read("SELECT msg_top FROM devices WHERE name = ?", (name,))
        return int(rows[0]["msg_top"]) if rows else -1

    @_timed
    def advance_msg_top(self, name: str, n: int, epoch: int | None = None) -> bool:
        """Raise the device's message top to ``n``. With ``epoch``: only while the
        device is still in that counter epoch (one statement, so a new epoch
        announced meanwhile by another proxy is never overwritten); False if not."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise RegistryError("a message number is a non-negative integer")
        with self._write() as db:
            if epoch is not None:
                cur = db.execute(
                    "UPDATE devices SET msg_top = max(msg_top, ?) WHERE name = ? AND epoch = ?",
                    (n, name, epoch),
                )
                return bool(cur.rowcount)
            cur = db.execute("UPDATE devices SET msg_top = max(msg_top, ?) WHERE name = ?", (n, name))
            if cur.rowcount == 0:
                raise RegistryError("no device named %r" % name)
            return True

    @_timed
    def device_epoch(self, name: str) -> int:
        """The device's counter epoch; 0 if it never announced one (or no such device)."""
        rows = self._read("SELECT epoch FROM devices WHERE name = ?", (name,))
        return int(rows[0]["epoch"]) if rows else 0

    @_timed
    def set_device_epoch(self, name: str, epoch: int) -> bool:
        """Record the device's counter epoch; True if it changed, and then msg_top is -1 again.

        The same epoch again (a retried handshake of a fresh device) changes
        nothing, so the retried message keeps its number.
        """
        if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch <= MAX_EPOCH:
            raise RegistryError("a counter epoch is a 32-bit unsigned integer")
        with self._write() as db:
            row = db.execute("SELECT epoch FROM devices WHERE name = ? /*FOR UPDATE*/", (name,)).fetchone()
            if row is None:
                raise RegistryError("no device named %r" % name)
            if int(row["epoch"]) == epoch:
                return False
            if db.execute(
                "SELECT 1 FROM retired_epochs WHERE device = ? AND epoch = ?", (name, epoch)
            ).fetchone():
                # Going back would reuse transaction ids of that epoch: only a
                # replayed old handshake can ask for it.
                raise RegistryError("counter epoch %08x of %r was retired" % (epoch, name))
            db.execute(
                "INSERT OR IGNORE INTO retired_epochs (device, epoch) VALUES (?, ?)",
                (name, int(row["epoch"])),
            )
            db.execute("UPDATE devices SET epoch = ?, msg_top = -1 WHERE name = ?", (epoch, name))
            return True

    @_timed
    def epoch_retired(self, name: str, epoch: int) -> bool:
        """True if the device used ``epoch`` before and moved on (a replay wants it back)."""
        rows = self._read("SELECT 1 FROM retired_epochs WHERE device = ? AND epoch = ?", (name, epoch))
        return bool(rows)

    @_timed
    def sent_event(self, name: str, txn_id: str) -> str | None:
        fresh = self.fresh
        if fresh is not None:
            known, event_id = fresh.lookup(name, txn_id)
            if known:
                return event_id  # type: ignore[no-any-return]
        rows = self._read("SELECT event_id FROM sent_events WHERE device = ? AND txn_id = ?", (name, txn_id))
        return str(rows[0]["event_id"]) if rows else None

    @_timed
    def record_event(self, name: str, txn_id: str, event_id: str) -> None:
        """Remember that ``txn_id`` became ``event_id``; recording the same pair again is fine.

        One statement (its own transaction): the foreign key refuses an unknown
        device, the primary key a second row; only then is the row read back.
        """
        try:
            with self._lock:
                cur = self.engine.execute(_INSERT_SENT, (name, txn_id, event_id, now_ms()))
        except self.engine.integrity_errors:
            raise RegistryError("no device named %r" % name) from None
        if cur.rowcount == 1:
            if self.fresh is not None:
                self.fresh.recorded(name, txn_id, event_id)
            return
        if self.sent_event(name, txn_id) != event_id:
            raise RegistryError("transaction %r of %r already made another event" % (txn_id, name))

    def write_behind(self, events: list[tuple[str, str, str]], tops: list[tuple[str, int, int]]) -> None:
        """Sent events (device, txn_id, event_id) and message-number tops (device,
        n, counter epoch), for ``lowbw.proxy.writebehind``'s thread, never the event loop.

        On a connection of its own, one statement each over a JSON array: the
        thread needs the GIL only to start each statement, so SQLite's write
        lock is never held while it waits for the GIL, and the loop's reads on
        the main connection never wait (WAL readers do not block on a writer).
        On PostgreSQL: the writer thread's own connection, tops then events in
        one transaction (``regdb.PostgresEngine.write_batch``). Rows of devices
        that no longer exist are skipped, as are transaction IDs that already
        made an event; a top only ever grows, and only in the
        device's current counter epoch.
        """
        if isinstance(self.engine, regdb.PostgresEngine):
            if self._closed:
                raise RegistryError("registry %s is closed" % self.location)
            self.engine.write_batch(events, tops, now_ms())
            return
        db = self._writer()
        if events:
            args = (now_ms(), json.dumps(events))
            try:
                db.execute(_INSERT_SENT_JSON, args)
            except sqlite3.IntegrityError:
                db.execute(_INSERT_SENT_KNOWN_JSON, args)
        if tops:
            db.execute(_ADVANCE_TOPS_JSON, (json.dumps(tops),))

    @property
    def writes_behind(self) -> bool:
        """Whether ``write_behind`` can run: a second connection to the same data
        (PostgreSQL, or an SQLite file; not an SQLite database in memory)."""
        if self.engine.kind == "postgresql":
            return True
        return self.engine.kind == "sqlite" and str(self.path) != ":memory:"

    def _writer(self) -> sqlite3.Connection:
        if not self.writes_behind:
            raise RegistryError("this registry has no second connection to write behind on")
        if self._closed:
            raise RegistryError("registry %s is closed" % self.location)
        with self._lock:
            if self._writer_db is None:
                db = sqlite3.connect(
                    str(self.path),
                    isolation_level=None,
                    check_same_thread=False,
                    timeout=BUSY_TIMEOUT_MS / 1000,
                )
                db.execute("PRAGMA busy_timeout = %d" % BUSY_TIMEOUT_MS)
                db.execute("PRAGMA foreign_keys = ON")
                db.execute("PRAGMA wal_autocheckpoint = 0")  # checkpoints are start_checkpoints' job
                self._writer_db = db
            return self._writer_db

    # -- downlink commands --------------------------------------------------------

    @_timed
    def enqueue_command(self, name: str, event_id: str, sender: str, body: str) -> int | None:
        """Queue a command; its id, or None if this event was queued before (acked or not)."""
        with self._write() as db:
            self._require_device(db, name)
            row = db.execute(
                "INSERT OR IGNORE INTO commands (device, event_id, sender, body, queued_ms) "
                "VALUES (?, ?, ?, ?, ?) RETURNING id",
                (name, event_id, sender, body, now_ms()),
            ).fetchone()
            if row is None:
                return None
            self._notify("command", name)
            return int(row[0])

    @_timed
    def pending_commands(self, name: str, limit: int = 1) -> list[tuple[int, str, str, str]]:
        """The oldest unacknowledged commands: (id, sender, body, event_id)."""
        rows = self._read(
            "SELECT id, sender, body, event_id FROM commands WHERE device = ? AND acked_ms IS NULL "
            "ORDER BY id LIMIT ?",
            (name, max(0, int(limit))),
        )
        return [(int(r["id"]), str(r["sender"]), str(r["body"]), str(r["event_id"])) for r in rows]

    @_timed
    def count_pending(self, name: str) -> int:
        rows = self._read("SELECT count(*) AS n FROM commands WHERE device = ? AND acked_ms IS NULL", (name,))
        return int(rows[0]["n"])

    @_timed
    def pending_counts(self) -> dict[str, int]:
        """Unacknowledged commands per device (only devices that have some), in one query."""
        rows = self._read("SELECT device, count(*) AS n FROM commands WHERE acked_ms IS NULL GROUP BY device")
        return {str(r["device"]): int(r["n"]) for r in rows}

    @_timed
    def ack_command(self, name: str, command_id: int) -> bool:
        """Mark the device's command delivered; False if unknown, another device's, or acked already."""
        with self._write() as db:
            cur = db.execute(
                "UPDATE commands SET acked_ms = ? WHERE id = ? AND device = ? AND acked_ms IS NULL",
                (now_ms(), int(command_id), name),
            )
            return cur.rowcount == 1

    # -- sessions across a graceful restart ---------------------------------------

    @_timed
    def save_sessions(self, rows: list[tuple[str, bytes]]) -> None:
        """Replace all saved sessions with ``rows`` of (device name, opaque state)."""
        with self._write() as db:
            db.execute("DELETE FROM sessions")
            for name, state in rows:
                self._require_device(db, name)
                db.execute("INSERT INTO sessions (device, state) VALUES (?, ?)", (name, bytes(state)))

    @_timed
    def load_sessions(self) -> list[tuple[str, bytes]]:
        """The saved sessions of devices not revoked; they are deleted as they are handed out."""
        with self._write() as db:
            rows = db.execute(
                "SELECT s.device, s.state FROM sessions s JOIN devices d ON d.name = s.device "
                "WHERE d.revoked = 0 ORDER BY s.rowid"
            ).fetchall()
            db.execute("DELETE FROM sessions")
            return [(str(r["device"]), bytes(r["state"])) for r in rows]

    # -- client-proxy token handles ----------------------------------------------

    @_timed
    def add_client_token(self, name: str, handle: str, token: str) -> None:
        with self._write() as db:
            self._require_device(db, name)
            db.execute(
                "INSERT INTO client_tokens (device, handle, token, created_ms) VALUES (?, ?, ?, ?)",
                (name, handle, token, now_ms()),
            )

    @_timed
    def client_token(self, name: str, handle: str) -> str | None:
        rows = self._read("SELECT token FROM client_tokens WHERE device = ? AND handle = ?", (name, handle))
        return str(rows[0]["token"]) if rows else None

    @_timed
    def drop_client_token(self, name: str, token: str) -> int:
        """Forget every handle of ``name`` standing for ``token`` (after a logout)."""
        with self._write() as db:
            cur = db.execute("DELETE FROM client_tokens WHERE device = ? AND token = ?", (name, token))
            return int(cur.rowcount)
