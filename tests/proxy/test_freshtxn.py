"""lowbw.proxy.freshtxn: which transaction ids need no registry lookup."""

from __future__ import annotations

from lowbw.proxy.freshtxn import KEEP, MARGIN, FreshTxns
from lowbw.proxy.sensor import txn_id


def test_only_numbers_above_the_floor_of_the_current_epoch_are_known() -> None:
    f = FreshTxns()
    assert f.lookup("d", txn_id("d", 500, 0, 7)) == (False, None)  # no session here
    f.start("d", 7, 100)
    floor = 100 + MARGIN
    assert f.lookup("d", txn_id("d", floor, 0, 7)) == (False, None)
    assert f.lookup("d", txn_id("d", floor + 1, 0, 7)) == (True, None)
    assert f.lookup("d", txn_id("d", floor + 1, 0, 8)) == (False, None)  # another epoch
    assert f.lookup("e", txn_id("e", floor + 1, 0, 7)) == (False, None)  # another device
    assert f.lookup("d", "lowbw.d.00000007.x.0") == (False, None)
    # A device name that is a prefix of another's does not match it.
    f.start("d.1", 7, -1)
    assert f.lookup("d", txn_id("d.1", 500, 0, 7)) == (False, None)


def test_what_was_recorded_here_is_remembered_and_the_floor_rises_when_forgotten() -> None:
    f = FreshTxns()
    f.start("d", 0, -1)
    base = MARGIN
    for n in range(base, base + KEEP + 10):
        f.recorded("d", txn_id("d", n, 0), "$%d" % n)
    # The newest KEEP are answered from memory...
    last = base + KEEP + 9
    assert f.lookup("d", txn_id("d", last, 0)) == (True, "$%d" % last)
    # ...the oldest ones are below the floor now: the registry is asked.
    assert f.lookup("d", txn_id("d", base, 0)) == (False, None)
    assert f.lookup("d", txn_id("d", base + 9, 0)) == (False, None)
    assert f.lookup("d", txn_id("d", base + 10, 0)) == (True, "$%d" % (base + 10))
    f.forget("d")
    assert f.lookup("d", txn_id("d", last, 0)) == (False, None)
