"""Which transaction IDs became events: the registry's ``sent_events``, written in batches.

Exactly-once sending rests on two things: the homeserver makes one event of
one transaction ID (it keeps its own record of them), and the proxy does not
even ask again for a transaction it has recorded (``Registry.sent_event``).
One commit per reading cost about a tenth of the proxy's CPU per reading at
load (issue 13); one transaction for all the rows of ``delay`` (10 ms by
default) costs a third of that per row, and the loop waits for it once per
batch (about 0.5 ms for 40 rows) instead of once per reading. Rows waiting
for their batch are answered from memory.

Why on the loop and not on a writer thread: a thread holding SQLite's write
lock while the machine is busy made the loop's own writes (handshakes, message
counters) wait in SQLite's busy handler for tens to hundreds of milliseconds
(measured); a batch on the loop costs a fixed, small pause instead.

What a crash can lose is the last ``delay`` of rows, never an event: a
reading retried after the restart is sent again with the same transaction ID
and the homeserver answers with the event it already made. A graceful stop
writes everything (``close``).
"""

from __future__ import annotations

import asyncio
import logging

from lowbw.proxy.registry import Registry

log = logging.getLogger(__name__)

WRITE_DELAY = 0.01  # seconds a recorded row may wait for its batch
WRITE_BATCH = 256  # rows that make a batch at once, without waiting
RETRY_DELAY = 1.0  # after a failed batch (a busy or full disk)


class SentEvents:
    """``lookup``/``record`` in front of ``Registry.sent_event``/``record_event``.

    ``delay`` None writes every row at once, as before (``LOWBW_PROXY_FAST_PATHS=0``).
    """

    def __init__(self, registry: Registry, delay: float | None = WRITE_DELAY) -> None:
        self.registry = registry
        self.delay = delay
        self._pending: dict[tuple[str, str], str] = {}
        self._timer: asyncio.TimerHandle | None = None
        self.written = 0  # rows written so far (tests, metrics)

    def lookup(self, device: str, txn_id: str) -> str | None:
        """The event ``txn_id`` of ``device`` became, or None if it was never sent."""
        event_id = self._pending.get((device, txn_id))
        if event_id is not None:
            return event_id
        return self.registry.sent_event(device, txn_id)

    def record(self, device: str, txn_id: str, event_id: str) -> None:
        if self.delay is None:
            self.registry.record_event(device, txn_id, event_id)
            self.written += 1
            return
        self._pending.setdefault((device, txn_id), event_id)
        if len(self._pending) >= WRITE_BATCH:
            self.write()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.delay, self.write)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def write(self) -> None:
        """Write every pending row now (one transaction)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        rows = [(d, t, e) for (d, t), e in self._pending.items()]
        try:
            refused = self.registry.record_events(rows)
        except Exception as exc:  # sqlite3.Error (busy, disk full) or RegistryError
            # The rows stay pending (answered from memory) and are tried again.
            log.error("sent events not written yet (%d rows): %s", len(rows), exc)
            self._timer = asyncio.get_running_loop().call_later(RETRY_DELAY, self.write)
            return
        for d, t, _ in refused:
            log.warning("%s: transaction %s not recorded (device removed)", d, t)
        self._pending.clear()
        self.written += len(rows) - len(refused)

    def close(self) -> None:
        """Write what is pending (at stop)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending:
            rows = [(d, t, e) for (d, t), e in self._pending.items()]
            try:
                self.registry.record_events(rows)
                self._pending.clear()
            except Exception as exc:
                log.error("%d sent events not recorded at stop: %s", len(rows), exc)
