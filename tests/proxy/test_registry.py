"""lowbw.proxy.registry: every method, bad inputs, and sharing the file with another connection/process."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lowbw.proxy.registry import EPHEMERALS_KEPT, SCHEMA_VERSION, DeviceRecord, Registry, RegistryError
from lowbw.wire.errors import LowbwError


def record(name: str = "sensor1", key: bytes | None = None, **kw: object) -> DeviceRecord:
    fields: dict[str, object] = {
        "name": name,
        "public_key": key if key is not None else os.urandom(32),
        "user_id": "@lowbw_%s:lowbw.test" % name,
        "rooms": ["!room:lowbw.test"],
        "slots": [{"name": "temperature", "fields": [{"name": "temperature", "unit": "°C", "scale": 1}]}],
    }
    fields.update(kw)
    return DeviceRecord(**fields)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "postgresql"])
def reg(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Registry]:
    """Every test taking ``reg`` runs on both engines."""
    if request.param == "sqlite":
        registry = Registry(tmp_path / "registry.sqlite3")
    else:
        registry = Registry(request.getfixturevalue("postgres_url"))
    yield registry
    registry.close()


def test_file_is_private_wal_and_versioned(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    with Registry(path) as r:
        r.add_device(record())
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        wal = Path(str(path) + "-wal")
        assert wal.exists() and stat.S_IMODE(wal.stat().st_mode) == 0o600
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()
    # Reopening keeps the data.
    with Registry(path) as r:
        assert [d.name for d in r.devices()] == ["sensor1"]


def test_refuses_newer_schema_and_foreign_databases(tmp_path: Path) -> None:
    newer = tmp_path / "newer.sqlite3"
    Registry(newer).close()
    db = sqlite3.connect(newer)
    db.execute("PRAGMA user_version = %d" % (SCHEMA_VERSION + 1))
    db.close()
    with pytest.raises(RegistryError, match="schema version"):
        Registry(newer)

    foreign = tmp_path / "foreign.sqlite3"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(RegistryError, match="not a lowbw registry"):
        Registry(foreign)

    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(RegistryError):
        Registry(garbage)


def test_add_and_read_back(reg: Registry) -> None:
    key = os.urandom(32)
    rec = record("sensor1", key, access_token="syt_secret", permissions=["create_room"], created_ms=1234)
    reg.add_device(rec)
    got = reg.device("sensor1")
    assert got == rec
    assert reg.device_by_key(key) == rec
    assert reg.device("nope") is None
    assert reg.device_by_key(os.urandom(32)) is None
    reg.add_device(record("a"))
    assert [d.name for d in reg.devices()] == ["a", "sensor1"]


def test_duplicates_and_bad_records_are_refused(reg: Registry) -> None:
    key = os.urandom(32)
    reg.add_device(record("sensor1", key))
    with pytest.raises(RegistryError, match="already enrolled"):
        reg.add_device(record("sensor1"))
    with pytest.raises(RegistryError, match="already enrolled as device 'sensor1'"):
        reg.add_device(record("other", key))
    with pytest.raises(RegistryError):
        reg.add_device(record("short", b"\x01" * 31))
    with pytest.raises(RegistryError):
        reg.add_device(record(""))
    with pytest.raises(RegistryError):
        reg.add_device(record("x", user_id="not-a-user"))
    with pytest.raises(RegistryError):
        reg.add_device(record("y", slots=[{"bad": object()}]))
    assert isinstance(RegistryError("x"), LowbwError)
    assert [d.name for d in reg.devices()] == ["sensor1"]


def test_revoked_key_cannot_come_back_under_another_name(reg: Registry) -> None:
    key = os.urandom(32)
    reg.add_device(record("old", key))
    assert reg.revoke("old")
    with pytest.raises(RegistryError):
        reg.add_device(record("new", key))


def test_repr_hides_the_access_token() -> None:
    rec = record(access_token="syt_TOPSECRET_token")
    assert "TOPSECRET" not in repr(rec)
    assert "TOPSECRET" not in str(rec)
    assert "sensor1" in repr(rec)


def test_revoke(reg: Registry) -> None:
    key = os.urandom(32)
    reg.add_device(record("sensor1", key))
    assert reg.revoke("sensor1") is True
    assert reg.revoke("sensor1") is False  # already revoked
    assert reg.revoke("unknown") is False
    assert reg.device_by_key(key) is None
    got = reg.device("sensor1")
    assert got is not None and got.revoked


def test_changed_sees_another_connections_revoke(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    key = os.urandom(32)
    proxy = Registry(path)
    cli = Registry(path)
    try:
        proxy.add_device(record("sensor1", key))
        assert proxy.changed() is False  # own commits do not count
        assert proxy.device_by_key(key) is not None
        assert proxy.changed() is False
        assert cli.revoke("sensor1")
        assert proxy.changed() is True
        assert proxy.changed() is False  # only once per change
        assert proxy.device_by_key(key) is None
    finally:
        proxy.close()
        cli.close()


def test_revoke_from_another_process(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    key = os.urandom(32)
    with Registry(path) as proxy:
        proxy.add_device(record("sensor1", key))
        proxy.save_sessions([("sensor1", b"state")])
        assert proxy.changed() is False
        code = (
            "import sys; from lowbw.proxy.registry import Registry\n"
            "r = Registry(sys.argv[1]); sys.exit(0 if r.revoke('sensor1') else 3)"
        )
        subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=60)
        assert proxy.changed() is True
        assert proxy.device_by_key(key) is None
        # Saved sessions of a revoked device are gone, never restored.
        assert proxy.load_sessions() == []


def test_ephemerals(reg: Registry) -> None:
    reg.add_device(record("a"))
    reg.add_device(record("b"))
    e = os.urandom(32)
    assert reg.remember_ephemeral("a", e) is True
    assert reg.remember_ephemeral("a", e) is False
    assert reg.remember_ephemeral("b", e) is True  # per device
    with pytest.raises(RegistryError):
        reg.remember_ephemeral("unknown", os.urandom(32))


def test_ephemerals_keep_the_last_256(reg: Registry) -> None:
    reg.add_device(record("a"))
    keys = [i.to_bytes(32, "big") for i in range(EPHEMERALS_KEPT + 10)]
    for k in keys:
        assert reg.remember_ephemeral("a", k)
    # The newest 256 are remembered; the oldest were forgotten.
    assert reg.remember_ephemeral("a", keys[-1]) is False
    assert reg.remember_ephemeral("a", keys[10]) is False
    assert reg.remember_ephemeral("a", keys[0]) is True


def test_msg_top(reg: Registry) -> None:
    reg.add_device(record("a"))
    assert reg.msg_top("a") == -1
    reg.advance_msg_top("a", 5)
    reg.advance_msg_top("a", 3)
    assert reg.msg_top("a") == 5
    reg.advance_msg_top("a", 70000)
    assert reg.msg_top("a") == 70000
    assert reg.msg_top("unknown") == -1
    with pytest.raises(RegistryError):
        reg.advance_msg_top("unknown", 1)
    with pytest.raises(RegistryError):
        reg.advance_msg_top("a", -1)
    with pytest.raises(RegistryError):
        reg.advance_msg_top("a", True)


def test_device_epoch(reg: Registry) -> None:
    reg.add_device(record("a"))
    reg.add_device(record("b"))
    assert reg.device_epoch("a") == 0 and reg.device_epoch("unknown") == 0
    reg.advance_msg_top("a", 500)
    reg.advance_msg_top("b", 9)
    # The epoch a device never announced is 0: announcing 0 changes nothing.
    assert reg.set_device_epoch("a", 0) is False and reg.msg_top("a") == 500
    assert reg.set_device_epoch("a", 0xDEADBEEF) is True
    assert reg.device_epoch("a") == 0xDEADBEEF and reg.msg_top("a") == -1
    assert reg.msg_top("b") == 9 and reg.device_epoch("b") == 0
    reg.advance_msg_top("a", 3)
    # The same epoch again (a retried fresh handshake) keeps the count.
    assert reg.set_device_epoch("a", 0xDEADBEEF) is False and reg.msg_top("a") == 3
    assert reg.set_device_epoch("a", 0xFFFFFFFF) is True and reg.msg_top("a") == -1
    for bad in (-1, 1 << 32, True, 1.5, "1"):
        with pytest.raises(RegistryError):
            reg.set_device_epoch("a", bad)  # type: ignore[arg-type]
    with pytest.raises(RegistryError):
        reg.set_device_epoch("unknown", 1)
    assert reg.device_epoch("a") == 0xFFFFFFFF
    # Epochs a device moved away from never come back (a replayed old handshake).
    assert reg.epoch_retired("a", 0xDEADBEEF) and reg.epoch_retired("a", 0)
    assert not reg.epoch_retired("a", 0xFFFFFFFF) and not reg.epoch_retired("b", 0xDEADBEEF)
    with pytest.raises(RegistryError):
        reg.set_device_epoch("a", 0xDEADBEEF)
    assert reg.device_epoch("a") == 0xFFFFFFFF


def test_schema_1_registry_gains_the_epoch_column(tmp_path: Path) -> None:
    from lowbw.proxy import registry as registry_module

    path = tmp_path / "v1.sqlite3"
    # A version 1 file as the previous lowbw wrote it: today's schema without
    # devices.epoch, one device that has sent messages.
    v1_schema = registry_module._SCHEMA.split("CREATE TABLE retired_epochs")[0]
    v1_schema = v1_schema.replace(",\n    epoch INTEGER NOT NULL DEFAULT 0", "")
    v1_schema = v1_schema.replace(",\n    hs_floor INTEGER NOT NULL DEFAULT -1", "")
    v1_schema = v1_schema.replace(",\n    hs_announce INTEGER NOT NULL DEFAULT -1", "")
    v1_schema = v1_schema.replace(",\n    encrypted INTEGER NOT NULL DEFAULT 0", "")
    v1_schema = v1_schema.replace(",\n    profile TEXT NOT NULL DEFAULT 'standard'", "")
    v1_schema = v1_schema.split("CREATE TABLE matrix_devices")[0] + "CREATE TABLE ephemerals" + (
        v1_schema.split("CREATE TABLE ephemerals")[1]
    )
    assert v1_schema != registry_module._SCHEMA
    db = sqlite3.connect(path)
    db.executescript(v1_schema)
    db.execute(
        "INSERT INTO devices (name, public_key, user_id, rooms, event_types, slots, permissions, "
        "created_ms, msg_top) VALUES ('old', ?, '@lowbw_old:lowbw.test', '[\"!r:lowbw.test\"]', "
        "'[\"m.room.message\"]', '[]', '[]', 1, 1234)",
        (os.urandom(32),),
    )
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with Registry(path) as r:
        assert r.device_epoch("old") == 0 and r.msg_top("old") == 1234
        assert [d.name for d in r.devices()] == ["old"]
        r.record_event("old", "lowbw.old.00000000.1234.0", "$e")
        assert r.set_device_epoch("old", 5) is True and r.msg_top("old") == -1
        # Version 3 added client-proxy token handles.
        r.add_client_token("old", "lbwh_x", "syt_secret")
        assert r.client_token("old", "lbwh_x") == "syt_secret"
        assert r.drop_client_token("old", "syt_secret") == 1 and r.client_token("old", "lbwh_x") is None
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
    db.close()
    with Registry(path) as r:  # opening a migrated file again changes nothing
        assert r.device_epoch("old") == 5
        assert r.sent_event("old", "lowbw.old.00000000.1234.0") == "$e"
        # Version 6 added the link profile: devices from before speak the standard one.
        assert r.device("old").profile == "standard"


def test_schema_5_registry_gains_the_profile_column(tmp_path: Path) -> None:
    from lowbw.proxy import registry as registry_module

    path = tmp_path / "v5.sqlite3"
    v5_schema = registry_module._SCHEMA.replace(",\n    profile TEXT NOT NULL DEFAULT 'standard'", "")
    assert v5_schema != registry_module._SCHEMA
    db = sqlite3.connect(path)
    db.executescript(v5_schema)
    db.execute(
        "INSERT INTO devices (name, public_key, user_id, rooms, event_types, slots, permissions, "
        "created_ms) VALUES ('five', ?, '@lowbw_five:lowbw.test', '[]', '[]', '[]', '[]', 1)",
        (os.urandom(32),),
    )
    db.execute("PRAGMA user_version = 5")
    db.commit()
    db.close()
    with Registry(path) as r:
        assert r.device("five").profile == "standard"
        r.add_device(record("six", profile="compact"))
        assert r.device("six").profile == "compact"
        with pytest.raises(RegistryError, match="link profile"):
            r.add_device(record("seven", profile="fast"))


def test_sent_events(reg: Registry) -> None:
    reg.add_device(record("a"))
    reg.add_device(record("b"))
    txn = "lowbw.a.00000000.1.0"
    assert reg.sent_event("a", txn) is None
    reg.record_event("a", txn, "$e1")
    reg.record_event("a", txn, "$e1")  # idempotent
    assert reg.sent_event("a", txn) == "$e1"
    assert reg.sent_event("b", txn) is None
    with pytest.raises(RegistryError):
        reg.record_event("a", txn, "$other")
    with pytest.raises(RegistryError):
        reg.record_event("unknown", "t", "$e")


def test_commands(reg: Registry) -> None:
    reg.add_device(record("a"))
    reg.add_device(record("b"))
    assert reg.pending_commands("a") == [] and reg.count_pending("a") == 0
    first = reg.enqueue_command("a", "$c1", "@u:lowbw.test", "reboot")
    second = reg.enqueue_command("a", "$c2", "@u:lowbw.test", "led on")
    assert isinstance(first, int) and isinstance(second, int) and second > first
    assert reg.enqueue_command("a", "$c1", "@u:lowbw.test", "reboot") is None  # pushed twice
    assert reg.enqueue_command("b", "$c1", "@u:lowbw.test", "x") is not None  # other device
    assert reg.count_pending("a") == 2
    assert reg.pending_commands("a") == [(first, "@u:lowbw.test", "reboot", "$c1")]
    assert [c[0] for c in reg.pending_commands("a", limit=10)] == [first, second]
    assert reg.ack_command("b", first) is False  # not b's
    assert reg.ack_command("a", first) is True
    assert reg.ack_command("a", first) is False
    assert reg.ack_command("a", 99999) is False
    assert reg.count_pending("a") == 1
    assert reg.pending_commands("a")[0][0] == second
    # An acknowledged command is not queued again when the homeserver re-pushes it.
    assert reg.enqueue_command("a", "$c1", "@u:lowbw.test", "reboot") is None
    with pytest.raises(RegistryError):
        reg.enqueue_command("unknown", "$c", "@u:lowbw.test", "x")


def test_sessions(reg: Registry) -> None:
    reg.add_device(record("a"))
    reg.add_device(record("b"))
    reg.save_sessions([("a", b"\x01" * 40), ("b", b"\x02")])
    reg.save_sessions([("a", b"\x03")])  # replaces all
    assert reg.load_sessions() == [("a", b"\x03")]
    # Handed out once: restoring a Noise state twice would reuse nonces.
    assert reg.load_sessions() == []
    with pytest.raises(RegistryError):
        reg.save_sessions([("a", b"x"), ("unknown", b"y")])
    # The failed save changed nothing.
    reg.save_sessions([("b", b"keep")])
    with pytest.raises(RegistryError):
        reg.save_sessions([("unknown", b"y")])
    assert reg.load_sessions() == [("b", b"keep")]


def test_threads_share_one_registry(reg: Registry) -> None:
    reg.add_device(record("a"))
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for i in range(50):
                reg.record_event("a", "t%d.%d" % (offset, i), "$e%d.%d" % (offset, i))
                reg.advance_msg_top("a", offset * 100 + i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert reg.msg_top("a") == 349
    assert reg.sent_event("a", "t3.49") == "$e3.49"


def test_two_connections_write_concurrently(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    with Registry(path) as one, Registry(path) as two:
        one.add_device(record("a"))
        errors: list[BaseException] = []

        def worker(r: Registry, tag: str) -> None:
            try:
                for i in range(40):
                    assert r.enqueue_command("a", "$%s%d" % (tag, i), "@u:x", "c") is not None
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(r, tag)) for r, tag in ((one, "x"), (two, "y"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert one.count_pending("a") == 80 == two.count_pending("a")


def test_client_tokens_and_client_records(reg: Registry) -> None:
    client = DeviceRecord(
        name="cp", public_key=os.urandom(32), user_id="", rooms=[], event_types=[], permissions=["client"]
    )
    reg.add_device(client)
    with pytest.raises(RegistryError):  # only a client may have no user
        reg.add_device(DeviceRecord(name="dev", public_key=os.urandom(32), user_id=""))
    with pytest.raises(RegistryError):
        reg.add_client_token("nobody", "lbwh_a", "t")
    reg.add_client_token("cp", "lbwh_a", "syt_1")
    reg.add_client_token("cp", "lbwh_b", "syt_1")
    assert reg.client_token("cp", "lbwh_a") == "syt_1"
    assert reg.client_token("other", "lbwh_a") is None
    assert reg.drop_client_token("cp", "syt_1") == 2
    reg.add_client_token("cp", "lbwh_c", "syt_2")
    assert reg.revoke("cp") is True
    assert reg.client_token("cp", "lbwh_c") is None  # revocation forgets the handles too


def test_handshake_numbers_only_grow(reg: Registry) -> None:
    reg.add_device(record("a"))
    reg.add_device(record("b"))
    e = iter(os.urandom(32) for _ in range(100))
    assert reg.accept_handshake("a", next(e), 0, None) == (True, None)
    assert reg.accept_handshake("a", next(e), 0, None) == (False, None)  # not above 0
    assert reg.accept_handshake("a", next(e), 5, None) == (True, None)
    for old in (0, 3, 5):
        assert reg.accept_handshake("a", next(e), old, None) == (False, None)
    # Another device has its own numbers; an ephemeral seen before is refused too.
    assert reg.accept_handshake("b", next(e), 1, None) == (True, None)
    same = next(e)
    assert reg.accept_handshake("b", same, 2, None) == (True, None)
    assert reg.accept_handshake("b", same, 3, None) == (False, None)
    for bad in (-1, 1 << 63, True):
        assert reg.accept_handshake("a", next(e), bad, None) == (False, None)  # type: ignore[arg-type]
    with pytest.raises(RegistryError):
        reg.accept_handshake("nobody", next(e), 9, None)


def test_a_fresh_epoch_restarts_the_count_above_the_old_numbers(reg: Registry) -> None:
    reg.add_device(record("a"))
    e = iter(os.urandom(32) for _ in range(100))
    assert reg.accept_handshake("a", next(e), 0, 0x11) == (True, None)
    assert reg.set_device_epoch("a", 0x11)
    for n in range(1, 41):
        assert reg.accept_handshake("a", next(e), n, None)[0]
    # The device loses its store: a new epoch, numbers from 0 again. Accepted,
    # and told to continue above 40; a retry of it (answer lost) too.
    assert reg.accept_handshake("a", next(e), 0, 0x22) == (True, 40)
    assert reg.set_device_epoch("a", 0x22)
    assert reg.accept_handshake("a", next(e), 0, 0x22) == (False, None)  # the same one replayed
    assert reg.accept_handshake("a", next(e), 1, 0x22) == (True, 40)
    # An old handshake without an epoch (numbers of the lost store) stays dead,
    # as does one announcing the retired epoch.
    for n in (1, 20, 40):
        assert reg.accept_handshake("a", next(e), n, None) == (False, None)
    assert reg.accept_handshake("a", next(e), 50, 0x11) == (False, None)
    assert reg.accept_handshake("a", next(e), 41, None) == (True, None)
    # A new epoch whose number is already above the floor needs no jump.
    assert reg.accept_handshake("a", next(e), 99, 0x33) == (True, None)


def test_revoked_name(reg: Registry) -> None:
    key = os.urandom(32)
    reg.add_device(record("a", key))
    assert reg.revoked_name(key) is None
    reg.revoke("a")
    assert reg.revoked_name(key) == "a" and reg.revoked_name(os.urandom(32)) is None


def test_encrypted_flag_and_matrix_devices(reg: Registry) -> None:
    reg.add_device(record("a"))
    reg.add_device(record("b", encrypted=True))
    assert reg.device("a").encrypted is False and reg.device("b").encrypted is True  # type: ignore[union-attr]
    assert reg.set_encrypted("a") is True and reg.set_encrypted("a") is False
    assert reg.device("a").encrypted is True  # type: ignore[union-attr]
    assert reg.matrix_device("a") is None
    reg.set_matrix_device("a", "DEVA", "syt_secret")
    assert reg.matrix_device("a") == ("DEVA", "syt_secret")
    reg.set_matrix_device("a", "DEVB", "syt_other")
    assert reg.matrix_device("a") == ("DEVB", "syt_other")
    with pytest.raises(RegistryError):
        reg.set_matrix_device("nobody", "X", "Y")
    reg.revoke("a")
    assert reg.matrix_device("a") is None


def test_changed_sees_other_processes_changes_not_bookkeeping(tmp_path: Path) -> None:
    """The change counter (schema 6): a revocation, an enrolment or a command by another
    connection is a change; message tops, epochs and sent events (the proxy's own
    write-behind thread, lowbw.proxy.writebehind) are not."""
    path = tmp_path / "registry.sqlite3"
    with Registry(path) as proxy, Registry(path) as other:
        proxy.add_device(record("a"))
        proxy.add_device(record("b"))
        assert proxy.changed() is False  # its own commits never count
        proxy.write_behind([("a", "t0", "$e")], [("a", 64, 0)])  # its writer connection
        assert proxy.changed() is False
        other.advance_msg_top("b", 10)
        other.set_device_epoch("b", 3)
        other.record_event("b", "t1", "$f")
        assert proxy.changed() is False
        other.revoke("b")
        assert proxy.changed() is True
        assert proxy.changed() is False  # seen once
        other.enqueue_command("a", "$cmd", "@u:x", "open")
        assert proxy.changed() is True
        other.add_device(record("c"))
        assert proxy.changed() is True
        other.ack_command("a", other.pending_commands("a")[0][0])
        assert proxy.changed() is True
