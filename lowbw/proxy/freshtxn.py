"""Transaction ids known to be unsent, so a warm reading on PostgreSQL makes one round trip.

Each reading asks the registry whether its transaction id was sent before
(``Registry.sent_event``, the exactly-once rule) and records it after the
homeserver answered (``record_event``). On SQLite the lookup costs ~20 µs; on
PostgreSQL it is a round trip (~150 µs of waiting on the event loop and ~65 µs
of CPU). Most lookups are for a number the device never used before; this
module answers those without asking.

When a device's session starts on this proxy (``start``), every reading
anyone ever recorded for the device in its current counter epoch has a number
at most the registry's message top + ``MSG_TOP_PERSIST_EVERY`` - 1: a proxy
writes the device's top before it gets that far ahead of the stored one
(``SessionTable.advance_msg_top``), before it posts the reading, and at a
graceful stop; a proxy that crashed lost at most that lag. (With the
write-behind, ``lowbw.proxy.writebehind``, "writes" means "queues": the top
commits in the same batch as the reading's row or an earlier one, tops first,
so the registry keeps the promise at every commit.) So a transaction
id of that epoch numbered above ``floor`` = top + ``MARGIN`` was never
recorded by anyone but this proxy, which remembers what it recorded above the
floor (``recorded``; the newest ``KEEP`` of them: when one is dropped, the floor
rises to its number, so nothing above the floor is ever forgotten).

The premise is the one-session rule: while this proxy holds the device's
session nobody else records its readings. The proxy forgets the device
(``forget``) when its session moves to another node (``lowbw.proxy.cluster``)
or the registry was reloaded after lost notices; the next session starts again
from the registry. Only used with the registry on PostgreSQL; any other
lookup (an older number, another epoch, a device without a session here)
asks the registry as before.
"""

from __future__ import annotations

from lowbw.proxy.sessions import MSG_TOP_PERSIST_EVERY

# A proxy writes a device's top before it is MSG_TOP_PERSIST_EVERY above the
# stored one, and before it posts the reading: everything recorded is at most
# the stored top + MSG_TOP_PERSIST_EVERY - 1.
MARGIN = MSG_TOP_PERSIST_EVERY
KEEP = 256


class FreshTxns:
    """Per device: (txn id prefix of its epoch, floor) and what was recorded above the floor here."""

    def __init__(self) -> None:
        self._floors: dict[str, tuple[str, int]] = {}
        self._mine: dict[str, dict[str, str]] = {}

    def start(self, device: str, epoch: int, top: int) -> None:
        """The device's session is here now; ``top`` is its message top as the registry has it."""
        self._floors[device] = ("lowbw.%s.%08x." % (device, epoch), top + MARGIN)
        self._mine[device] = {}

    def forget(self, device: str) -> None:
        self._floors.pop(device, None)
        self._mine.pop(device, None)

    def forget_all(self) -> None:
        self._floors.clear()
        self._mine.clear()

    def _number(self, device: str, txn_id: str) -> int | None:
        """The message number of ``txn_id`` if it is above the device's floor, else None."""
        entry = self._floors.get(device)
        if entry is None:
            return None
        prefix, floor = entry
        if not txn_id.startswith(prefix):
            return None
        digits, dot, index = txn_id[len(prefix) :].partition(".")
        if not dot or not digits.isdigit() or not index.isdigit():
            return None
        n = int(digits)
        return n if n > floor else None

    def lookup(self, device: str, txn_id: str) -> tuple[bool, str | None]:
        """(True, event id or None) when known without the registry; (False, None): ask it."""
        if self._number(device, txn_id) is None:
            return False, None
        return True, self._mine[device].get(txn_id)

    def recorded(self, device: str, txn_id: str, event_id: str) -> None:
        if self._number(device, txn_id) is None:
            return
        mine = self._mine[device]
        mine[txn_id] = event_id
        if len(mine) > KEEP:
            oldest = next(iter(mine))
            del mine[oldest]
            prefix, floor = self._floors[device]
            n = int(oldest[len(prefix) :].partition(".")[0])
            if n > floor:
                self._floors[device] = (prefix, n)
