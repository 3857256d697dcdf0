"""The reading path's registry writes, off the event loop: sent events and message tops.

Exactly-once sending rests on two things: the homeserver makes one event of
one transaction ID (it keeps its own record of them), and the proxy does not
even ask again for a transaction it has recorded (``Registry.sent_event``).
Each reading also moves its device's highest message number, persisted every
``MSG_TOP_PERSIST_EVERY`` messages (``lowbw.proxy.sessions``).

Written on the event loop, one commit per reading cost about a tenth of the
proxy's CPU per reading at load (issue 13), and on a disk busy with other
work a single commit waited 20-300 ms in ``write()`` (measured on the shared
development machine): every reading in flight waited with it. So the rows are
kept in memory, answered from there at once, and written by one thread in
batches (``Registry.write_behind``: its own connection, one statement per
batch; SQLite releases the GIL while it writes). A batch leaves as soon as
the previous one is done, at most every ``delay`` (10 ms by default).

On PostgreSQL the thread has its own psycopg connection and writes a batch
in one transaction of two statements over arrays (``unnest``), message tops
before sent events (``regdb.PostgresEngine.write_batch``): the loop makes no
round trip for a warm reading at all (its lookup is answered by
``lowbw.proxy.freshtxn``, its record and top by this module), where it made
one synchronous ``record_event`` per reading before (~150-300 µs of the loop's
time, issue 17). The thread blocks in libpq with the GIL released; it needs
the GIL only to build each batch's three lists.

Several proxies on one PostgreSQL (``[cluster]``): a row still in this memory
is invisible to the other nodes until its batch commits (10 ms plus a round
trip at most while the database answers). A device whose session moves to
another node in that window and retries a reading there is posted again with
the same transaction ID, and the homeserver answers with the event it already
made (one appservice, one transaction scope for all nodes): the same case as
a crash, below. No event is duplicated; only that one reading costs an HTTP
request more.

What a crash can lose is the last batches of rows, never an event: a reading
retried after the restart is sent again with the same transaction ID and the
homeserver answers with the event it already made; a message top that lags
rebuilds MIDs exactly (sessions.py). A graceful stop writes everything
(``close``). If the disk stalls, rows wait in memory (about 150 bytes each)
and readings go on being answered.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging

from lowbw.proxy.registry import Registry

log = logging.getLogger(__name__)

WRITE_DELAY = 0.01  # seconds between batches at most
RETRY_DELAY = 1.0  # after a failed batch (a locked or full disk)

_Events = list[tuple[str, str, str]]  # (device, txn_id, event_id)
_Tops = list[tuple[str, int, int]]  # (device, message number, counter epoch)


class WriteBehind:
    """``lookup``/``record``/``advance_top`` in front of the registry.

    ``delay`` None writes every row at once on the caller's thread, as before
    (``LOWBW_PROXY_FAST_PATHS=0``, SQLite registries in memory).
    """

    def __init__(self, registry: Registry, delay: float | None = WRITE_DELAY) -> None:
        self.registry = registry
        self.delay = delay if registry.writes_behind else None
        self._events: dict[tuple[str, str], str] = {}
        self._tops: dict[tuple[str, int], int] = {}  # (device, epoch) -> top
        self._timer: asyncio.TimerHandle | None = None
        self._writing: asyncio.Future[None] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.written = 0  # event rows written so far (tests, metrics)
        self._closed = False

    # -- sent events -----------------------------------------------------------------

    def lookup(self, device: str, txn_id: str) -> str | None:
        """The event ``txn_id`` of ``device`` became, or None if it was never sent."""
        event_id = self._events.get((device, txn_id))
        if event_id is not None:
            return event_id
        return self.registry.sent_event(device, txn_id)

    def record(self, device: str, txn_id: str, event_id: str) -> None:
        if self.delay is None or self._closed:
            # (After close: a reading answered during the stop is written at once.)
            self.registry.record_event(device, txn_id, event_id)
            self.written += 1
            return
        key = (device, txn_id)
        if key not in self._events:
            self._events[key] = event_id
            fresh = self.registry.fresh
            if fresh is not None:
                # PostgreSQL: once the row is written and out of this memory,
                # lookups above the device's floor are answered by freshtxn
                # (record_event tells it the same when it writes at once). On
                # the loop's thread: FreshTxns is not shared with the writer.
                fresh.recorded(device, txn_id, event_id)
        self._soon()

    # -- message tops ----------------------------------------------------------------

    def advance_top(self, device: str, n: int, epoch: int) -> None:
        """Persist ``device``'s highest message number ``n`` of counter ``epoch``.

        It only grows, and only while the device is still in that epoch: a top
        written late must not land on the new count of a device that announced
        a new epoch meanwhile (``Registry.set_device_epoch`` reset it)."""
        if self.delay is None or self._closed:
            self.registry.advance_msg_top(device, n, epoch)
            return
        if n > self._tops.get((device, epoch), -1):
            self._tops[(device, epoch)] = n
        self._soon()

    # -- the writer ------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._events) + len(self._tops)

    def _soon(self) -> None:
        if self._timer is None and self._writing is None:
            self._timer = asyncio.get_running_loop().call_later(self.delay or 0.0, self._write)

    def _write(self) -> None:
        self._timer = None
        if self._closed or self._writing is not None or not (self._events or self._tops):
            return
        events = [(d, t, e) for (d, t), e in self._events.items()]
        tops = [(d, n, e) for (d, e), n in self._tops.items()]
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, "lowbw-registry-writer")
        loop = asyncio.get_running_loop()
        writing = loop.run_in_executor(self._executor, self.registry.write_behind, events, tops)
        self._writing = writing
        writing.add_done_callback(lambda done: self._written(events, tops, done))

    def _written(self, events: _Events, tops: _Tops, done: asyncio.Future[None]) -> None:
        if self._closed:
            return  # close() wrote what was left
        self._writing = None
        if done.cancelled():
            return
        exc = done.exception()
        if exc is not None:
            # The rows stay (answered from memory) and are tried again.
            log.error("registry writes waiting (%d events, %d tops): %s", len(events), len(tops), exc)
        else:
            for d, t, e in events:
                if self._events.get((d, t)) == e:
                    del self._events[(d, t)]
            for device, top, epoch in tops:
                if self._tops.get((device, epoch)) == top:
                    del self._tops[(device, epoch)]
            self.written += len(events)
        if (self._events or self._tops) and self._timer is None:
            delay = RETRY_DELAY if exc is not None else (self.delay or 0.0)
            self._timer = asyncio.get_running_loop().call_later(delay, self._write)

    async def flush(self) -> None:
        """Wait until every row recorded so far is written (or a batch failed)."""
        while self._events or self._tops or self._writing is not None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._writing is None:
                self._write()
            writing = self._writing
            if writing is None:
                return
            try:
                await asyncio.shield(writing)
            except Exception:
                return  # said by _written; the rows stay for the next batch

    def close(self) -> None:
        """Write what is pending, on this thread, and stop the writer (at stop); rows
        recorded after this are written at once."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)  # a batch under way finishes
            self._executor = None
        self._writing = None
        if not (self._events or self._tops):
            return
        events = [(d, t, e) for (d, t), e in self._events.items()]
        tops = [(d, n, e) for (d, e), n in self._tops.items()]
        try:
            self.registry.write_behind(events, tops)
        except Exception as exc:  # sqlite3.Error, RegistryError: said, not raised at stop
            log.error("registry writes lost at stop (%d events, %d tops): %s", len(events), len(tops), exc)
            return
        self._events.clear()
        self._tops.clear()
        self.written += len(events)
