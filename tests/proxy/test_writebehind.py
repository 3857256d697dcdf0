"""The reading path's registry writes off the loop (``lowbw.proxy.writebehind``),
on a real registry file and a real writer thread."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from lowbw.proxy.registry import Registry
from lowbw.proxy.writebehind import WriteBehind

from .test_registry import record


@pytest.fixture
def registry(tmp_path: Path) -> Any:
    reg = Registry(tmp_path / "registry.sqlite3")
    reg.add_device(record("a"))
    reg.add_device(record("b"))
    yield reg
    reg.close()


def run(coro: Any) -> None:
    asyncio.run(coro)


def test_rows_are_answered_at_once_and_written_off_the_loop(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    real = registry.write_behind

    def spy(events: Any, tops: Any) -> None:
        threads.append(threading.current_thread().name)
        real(events, tops)

    monkeypatch.setattr(registry, "write_behind", spy)
    loop_ops: list[str] = []
    registry.on_timing = lambda op, seconds: loop_ops.append(op)

    async def main() -> None:
        writes = WriteBehind(registry, delay=0.05)
        for i in range(10):
            writes.record("a" if i % 2 else "b", "t%d" % i, "$e%d" % i)
        # Not written yet, but known: a retry now is a duplicate.
        assert registry.sent_event("a", "t1") is None
        assert writes.lookup("a", "t1") == "$e1" and writes.pending == 10
        await writes.flush()
        assert writes.pending == 0 and writes.written == 10
        assert writes.lookup("b", "t8") == "$e8"
        writes.close()

    run(main())
    assert threads and all(name.startswith("lowbw-registry-writer") for name in threads)
    assert "record_event" not in loop_ops
    assert [registry.sent_event("a" if i % 2 else "b", "t%d" % i) for i in range(10)] == [
        "$e%d" % i for i in range(10)
    ]


def test_same_transaction_keeps_its_first_event(registry: Registry) -> None:
    registry.record_event("a", "t0", "$first")

    async def main() -> None:
        writes = WriteBehind(registry, delay=0.01)
        writes.record("a", "t0", "$second")  # a race the homeserver already settled
        writes.record("a", "t1", "$x")
        writes.record("a", "t1", "$y")
        assert writes.lookup("a", "t1") == "$x"
        await writes.flush()
        writes.close()

    run(main())
    assert registry.sent_event("a", "t0") == "$first"
    assert registry.sent_event("a", "t1") == "$x"


def test_rows_of_an_unknown_device_are_left_out_the_others_kept(registry: Registry) -> None:
    async def main() -> None:
        writes = WriteBehind(registry, delay=0.01)
        writes.record("a", "t0", "$a")
        writes.record("ghost", "t0", "$g")
        writes.record("b", "t0", "$b")
        writes.advance_top("ghost", 64, 0)
        await writes.flush()
        assert writes.pending == 0
        writes.close()

    run(main())
    assert registry.sent_event("a", "t0") == "$a" and registry.sent_event("b", "t0") == "$b"
    assert registry.sent_event("ghost", "t0") is None


def test_message_tops_grow_only_and_only_in_their_epoch(registry: Registry) -> None:
    async def main() -> None:
        writes = WriteBehind(registry, delay=0.01)
        writes.advance_top("a", 64, 0)
        writes.advance_top("a", 128, 0)
        writes.advance_top("a", 100, 0)  # lower: no effect
        await writes.flush()
        assert registry.msg_top("a") == 128
        # The device announces a new epoch; a top of the old one arrives late.
        registry.set_device_epoch("a", 7)
        writes.advance_top("a", 192, 0)
        writes.advance_top("b", 64, 0)
        await writes.flush()
        assert registry.msg_top("a") == -1  # the new count is untouched
        assert registry.msg_top("b") == 64
        writes.advance_top("a", 64, 7)
        writes.close()  # written at the stop

    run(main())
    assert registry.msg_top("a") == 64


def test_a_failed_batch_stays_pending_and_is_tried_again(
    registry: Registry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A fake fault (a full or locked disk cannot be produced on demand here):
    # the first batch fails as SQLite would.
    real = registry.write_behind
    calls: list[int] = []

    def flaky(events: Any, tops: Any) -> None:
        calls.append(len(events))
        if len(calls) == 1:
            raise sqlite3.OperationalError("database or disk is full")
        real(events, tops)

    monkeypatch.setattr(registry, "write_behind", flaky)
    monkeypatch.setattr("lowbw.proxy.writebehind.RETRY_DELAY", 0.05)

    async def main() -> None:
        writes = WriteBehind(registry, delay=0.01)
        writes.record("a", "t0", "$a")
        await asyncio.sleep(0.03)
        assert calls == [1] and writes.pending == 1
        assert writes.lookup("a", "t0") == "$a"  # still a duplicate if retried meanwhile
        writes.record("a", "t1", "$b")
        await asyncio.sleep(0.2)
        assert writes.pending == 0 and calls == [1, 2]
        writes.close()

    run(main())
    assert "database or disk is full" in caplog.text
    assert registry.sent_event("a", "t0") == "$a" and registry.sent_event("a", "t1") == "$b"


def test_close_writes_what_is_pending(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    with Registry(path) as reg:
        reg.add_device(record("a"))

        async def main() -> None:
            writes = WriteBehind(reg, delay=60.0)
            writes.record("a", "t0", "$a")
            writes.advance_top("a", 640, 0)
            writes.close()
            assert writes.pending == 0

        run(main())
    with Registry(path) as again:
        assert again.sent_event("a", "t0") == "$a" and again.msg_top("a") == 640


def test_without_delay_every_row_is_written_at_once(registry: Registry) -> None:
    ops: list[str] = []
    registry.on_timing = lambda op, seconds: ops.append(op)
    writes = WriteBehind(registry, delay=None)
    writes.record("a", "t0", "$a")
    writes.advance_top("a", 64, 0)
    assert registry.sent_event("a", "t0") == "$a" and registry.msg_top("a") == 64
    assert "record_event" in ops and "advance_msg_top" in ops
