"""The firmware on the real MicroPython unix port: imports, portable tests, BME280.

- every firmware module imports under MicroPython (the ESP32 and RP2040 board
  modules with tests/firmware/fake_machine.py standing in for ``machine``);
- tests/firmware/test_*_portable.py pass there (run by tests/portable/mp_run.py), the same
  functions pytest runs on CPython, against the device tree (python -m firmware.build)
  but for the FULL_TREE ones;
- main.py answers --help.
(tests/portable/test_bme280.py runs on MicroPython with the other portable
tests, through tests/test_micropython.py.)
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import subprocess

import firmware.build
import tests.firmware
from tests.firmware.conftest import ROOT, micropython
from tests.test_micropython import run_portable

# The modules come from the device tree (python -m firmware.build, what a
# board freezes); the test helpers from the checkout.
IMPORT_CHECK = r"""
import sys
sys.path.insert(0, %(root)r)
sys.path.insert(0, %(tree)r)
from tests.firmware import fake_machine
names = %(names)r
for name in names:
    if name in ("firmware.boards.esp32", "firmware.boards.rp2"):
        fake_machine.install()
        try:
            __import__(name)
            sys.modules[name].Board()
        finally:
            fake_machine.uninstall()
    else:
        __import__(name)
    print("imported", name)
assert sys.modules["firmware.app"].__file__.startswith(%(tree)r)
print("from the device tree")
"""

MODULES = [
    "firmware", "firmware.app", "firmware.serial_link", "firmware.boards", "firmware.boards.unix",
    "firmware.boards.esp32", "firmware.boards.rp2", "firmware.sensors", "firmware.sensors.bme280",
    "firmware.sensors.ds18b20", "firmware.sensors.simulated", "lowbw.device.client", "lowbw.device.udp",
    "lowbw.device.store", "lowbw.device.config",
]


def test_every_firmware_module_imports_on_micropython() -> None:
    tree = str(firmware.build.ensure_built())
    script = IMPORT_CHECK % {"root": str(ROOT), "tree": tree, "names": MODULES}
    proc = subprocess.run([micropython(), "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.findall(r"^imported (\S+)$", proc.stdout, re.M) == MODULES
    assert "from the device tree" in proc.stdout


def test_all_firmware_modules_are_in_the_import_check() -> None:
    found = {"firmware"}
    for p in (ROOT / "firmware").rglob("*.py"):
        rel = p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
        if rel.endswith(".__init__"):
            rel = rel[: -len(".__init__")]
        found.add(rel)
    # Entry scripts and the build manifest are run, not imported.
    found -= {"firmware.main", "firmware.boot", "firmware.manifest", "firmware.build"}
    assert found <= set(MODULES), found - set(MODULES)


def portable_names() -> set[str]:
    names = set()
    for info in pkgutil.iter_modules(tests.firmware.__path__):
        if info.name.startswith("test_") and info.name.endswith("_portable"):
            mod = importlib.import_module("tests.firmware." + info.name)
            names |= {info.name + "::" + a for a in dir(mod) if a.startswith("test_")}
    return names


def test_portable_firmware_tests_pass_on_micropython() -> None:
    # On the device tree, then the FULL_TREE ones (they need the proxy's side) on the sources.
    frozen = run_portable("tests/firmware", "_portable.py", firmware.build.ensure_built())
    full = run_portable("tests/firmware", "_portable.py", None)
    expected = portable_names()
    assert frozen and not frozen & full
    assert expected and frozen | full == expected, (frozen | full) ^ expected


def test_main_script_runs_the_device_tree() -> None:
    firmware.build.ensure_built()
    proc = subprocess.run([micropython(), str(ROOT / "firmware/main.py"), "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "running the sources" not in proc.stdout


def test_main_script_help_and_usage_errors() -> None:
    ok = subprocess.run([micropython(), str(ROOT / "firmware/main.py"), "--help"], capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0 and "usage:" in ok.stdout
    bad = subprocess.run([micropython(), str(ROOT / "firmware/main.py"), "a.json", "b.json"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    missing = subprocess.run([micropython(), str(ROOT / "firmware/main.py"), "/nonexistent/config.json"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "cannot read the config" in missing.stdout
