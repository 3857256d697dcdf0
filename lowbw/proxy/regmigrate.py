"""``lowbw proxy migrate-registry --from FILE --to postgresql://...``: copy an SQLite registry.

The source is opened as a ``Registry`` (so an older schema is first migrated in
place, as any proxy opening it would), the target likewise (its schema is
created). The target must hold no device yet: the copy is one transaction on
the target, all tables in an order their foreign keys accept, with the ids of
queued commands and the order of ephemerals kept (identity sequences are moved
past the copied ids). Nothing is written to the source.

Stop every proxy using the SQLite file first (a reading recorded in the file
after the copy would be missing in PostgreSQL, and its retry would post again
as far as the registry knows; Synapse's transaction-ID check still catches
that for a while). Then point ``[proxy] registry`` of every proxy at the URL.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from lowbw.proxy import regdb
from lowbw.proxy.registry import Registry, RegistryError

# Parents before children (foreign keys).
TABLES = (
    "devices",
    "matrix_devices",
    "ephemerals",
    "sent_events",
    "commands",
    "sessions",
    "retired_epochs",
    "client_tokens",
)
# Tables whose integer primary key is an identity column on PostgreSQL.
_IDENTITY = {"ephemerals": "seq", "commands": "id"}
BATCH = 1000


def migrate(
    source: str | os.PathLike[str],
    target: str,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, int]:
    """Copy every table of the SQLite registry ``source`` into the PostgreSQL ``target``.

    Returns rows copied per table. RegistryError if the source is not a
    registry file, the target is not PostgreSQL, or it already has devices.
    """
    if regdb.fix_url(target) is None:
        raise RegistryError("the target must be a postgresql:// URL")
    if regdb.fix_url(source) is not None or not os.path.exists(source):
        raise RegistryError("the source must be an existing SQLite registry file: %s" % source)
    counts: dict[str, int] = {}
    with Registry(source) as src, Registry(target) as dst:
        if dst.devices():
            raise RegistryError("%s already has devices: refusing to mix two registries" % dst.location)
        engine = dst.engine
        with dst._write():
            for table in TABLES:
                cols = [r[1] for r in src.engine.execute("PRAGMA table_info(%s)" % table).fetchall()]
                dst_cols = [
                    r[0]
                    for r in engine.execute(
                        "SELECT column_name FROM information_schema.columns WHERE table_schema = "
                        "current_schema() AND table_name = ?",
                        (table,),
                    ).fetchall()
                ]
                common = [c for c in cols if c in dst_cols]
                if not common:
                    continue
                order = _IDENTITY.get(table, "rowid")
                rows = src.engine.execute(
                    "SELECT %s FROM %s ORDER BY %s" % (", ".join(common), table, order)
                ).fetchall()
                insert = "INSERT INTO %s (%s) VALUES (%s)" % (
                    table,
                    ", ".join(common),
                    ", ".join("?" * len(common)),
                )
                if table in _IDENTITY:
                    insert = insert.replace(") VALUES", ") OVERRIDING SYSTEM VALUE VALUES")
                for start in range(0, len(rows), BATCH):
                    for row in rows[start : start + BATCH]:
                        engine.execute(
                            insert, tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                        )
                counts[table] = len(rows)
                if progress is not None:
                    progress(table, len(rows))
                key = _IDENTITY.get(table)
                if key is not None and rows:
                    top = max(int(r[common.index(key)]) for r in rows)
                    engine.execute(
                        "SELECT setval(pg_get_serial_sequence('%s', '%s'), %d)" % (table, key, top)
                    )
            dst._notify("all", "")
    return counts
