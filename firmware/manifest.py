# ruff: noqa: F821
"""Freeze the lowbw device stack into a MicroPython firmware image.

First build the device tree from the sources (CPython, in this checkout)::

    python -m firmware.build

then, from a MicroPython checkout (ports/esp32 or ports/rp2)::

    make BOARD=ESP32_GENERIC FROZEN_MANIFEST=/path/to/lowbw/firmware/manifest.py
    make BOARD=RPI_PICO FROZEN_MANIFEST=/path/to/lowbw/firmware/manifest.py

Then copy ``firmware/main.py`` (and ``boot.py``) and the config JSON to the
board's filesystem, or build with ``include(".../manifest.py", autorun=True)``
to freeze main.py too (a frozen main.py runs in place of any on the
filesystem). The port's own frozen modules (``_boot``, ``onewire``,
``ds18x20``, ``network`` helpers) come from the port manifest, included first.

Frozen: the modules the device imports and nothing else. From lowbw.wire,
routes.py and status.py serve the proxy only (the route table alone would
cost ~90 KB of heap); lowbw/device/cli.py is CPython only; boards/unix.py is
for the unix port, which runs from source. Options (``include(path,
NAME=VALUE)``): ``boards`` and ``sensors`` (default: all of them, so one
image fits any wiring and the config picks; name one of each for the
smallest image), ``opt`` (mpy-cross optimisation level, default 3: no line
numbers in tracebacks, no asserts), ``tree``, ``autorun``, ``port_manifest``.
tests/firmware/test_manifest.py checks that the list is exactly the import
closure of the firmware.

The files are taken from ``tree`` (default ``../build/device/src``, what
``python -m firmware.build`` writes: the shared sources trimmed to what the
device reaches, error texts as codes, private constants; docs/firmware.md);
``tree=".."`` freezes the sources as they are. ``opt`` defaults to 3.

Paths: ``base_path`` is relative to this file; the frozen name is the path
below it, so ``lowbw/wire/cbor.py`` imports as ``lowbw.wire.cbor``.
"""

options.defaults(port_manifest=True, autorun=False, boards=("esp32", "rp2"),
                 sensors=("bme280", "ds18b20", "simulated"), opt=3, tree="../build/device/src")

if options.port_manifest:
    include("$(PORT_DIR)/boards/manifest.py")

WIRE = [
    "__init__.py",
    "_compat.py",
    "cbor.py",
    "coap.py",
    "crypto.py",
    "errors.py",
    "frames.py",
    "handshake.py",
    "noise.py",
    "reading.py",
    "slip.py",
]
DEVICE = ["__init__.py", "client.py", "config.py", "store.py", "udp.py"]
FIRMWARE = ["__init__.py", "app.py", "serial_link.py", "boards/__init__.py", "sensors/__init__.py"]
FIRMWARE += ["boards/%s.py" % b for b in options.boards]
FIRMWARE += ["sensors/%s.py" % s for s in options.sensors]

module("lowbw/__init__.py", base_path=options.tree, opt=options.opt)
package("lowbw/wire", files=WIRE, base_path=options.tree, opt=options.opt)
package("lowbw/device", files=DEVICE, base_path=options.tree, opt=options.opt)
package("firmware", files=FIRMWARE, base_path=options.tree, opt=options.opt)

if options.autorun:
    module("main.py", base_path=options.tree + "/firmware", opt=options.opt)
