"""The byte examples of the firmware documentation are what the code produces.

The fragment docs/firmware.md is merged into docs/PROTOCOL.md; the
test reads whichever holds the "## Firmware" section (both, if both do).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from firmware.sensors import bme280
from lowbw.wire import reading, slip
from tests.firmware import fake_machine
from tests.portable.test_bme280 import FakeBus

ROOT = Path(__file__).resolve().parent.parent.parent
DOCS = [p for p in (ROOT / "docs/firmware.md", ROOT / "docs/PROTOCOL.md")
        if p.is_file() and "## Firmware" in p.read_text(encoding="utf-8")]


def flat(text: str) -> str:
    """The document with whitespace and '|' separators squeezed out of hex runs."""
    return re.sub(r"[\s|]+", " ", text)


def hexs(data: bytes) -> str:
    return data.hex(" ")


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_bme280_example_bytes(doc: Path) -> None:
    text = flat(doc.read_text(encoding="utf-8"))
    bus = FakeBus()
    assert hexs(bus.readfrom_mem(0x76, 0x88, 26)) in text
    assert hexs(bus.readfrom_mem(0x76, 0xE1, 7)) in text
    assert hexs(bus.readfrom_mem(0x76, 0xF7, 8)) in text
    native = bme280.BME280(bus).read()
    coarse = bme280.BME280(FakeBus(), scales={"temperature": 1, "pressure": 1, "humidity": 0}).read()
    assert "[0, %d, %d, %d]" % tuple(native) in text and "[0, %d, %d, %d]" % tuple(coarse) in text
    assert hexs(reading.encode_readings([(0, native, 0)])) in text
    assert hexs(reading.encode_readings([(0, coarse, 0)])) in text


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_slip_example_bytes(doc: Path) -> None:
    text = flat(doc.read_text(encoding="utf-8"))
    frame = slip.encode_addressed(b"\x07", bytes.fromhex("050102c0db7e"))
    assert flat("c0 | 01 | 07 | 05 01 02 db dc db dd 7e | c0") in text
    assert frame.hex(" ") == "c0 01 07 05 01 02 db dc db dd 7e c0"


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_rtc_memory_example_bytes(doc: Path) -> None:
    text = flat(doc.read_text(encoding="utf-8"))
    fake_machine.install()
    try:
        from firmware.boards import esp32

        mem = esp32.RtcMemory()
        mem.wake = (1234.5, 300.0, 5_000_000_000)
        mem.write()
        assert hexs(fake_machine.state["rtc"]) in text
        assert esp32.RtcMemory().wake == (1234.5, 300.0, 5_000_000_000)
    finally:
        fake_machine.uninstall()


def test_the_firmware_section_exists() -> None:
    assert DOCS, "neither docs/firmware.md nor docs/PROTOCOL.md has a Firmware section"


def test_error_code_table_is_the_build() -> None:
    # The device reports errors by number (python -m firmware.build, "Error codes").
    import firmware.build

    _sources, tree = firmware.build.device_sources()
    text = (ROOT / "docs/firmware.md").read_text(encoding="utf-8")
    table = text.split("#### Error codes", 1)[1]
    rows = dict(re.findall(r"^\| (\d+) \| (.*) \|$", table, re.M))
    assert {int(k): v.replace("\\|", "|") for k, v in rows.items()} == tree.errors
