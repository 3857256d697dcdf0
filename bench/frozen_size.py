"""Frozen code size of the device firmware, measured with mpy-cross.

Builds the device tree (``python -m firmware.build``: the shared sources
trimmed to what the device reaches, error texts as codes, private names,
``-O3``) into a temporary directory and sums the .mpy files that
firmware/manifest.py freezes. Prints JSON::

    {"frozen_bytes": 48000, "target": 49152, "within_target": true,
     "modules": {"lowbw/wire/cbor.py": 3400, ...}, "total": 50200,
     "groups": {"lowbw/wire": ..., "lowbw/device": ..., "firmware": ...},
     "largest": [[path, bytes], ...],
     "variants": {"esp32_bme280": ..., "any_board": ...,
                  "source_esp32_bme280": ..., "source_esp32_bme280_O3": ...}}

``frozen_bytes`` is the image the target is for: ESP32 + BME280 (one board,
one sensor) as the firmware build makes it. ``modules``/``total`` are the
default manifest (every board and sensor module, the image that fits any
wiring). ``source_*`` variants compile the sources as they are (no build
step), at mpy-cross's default level and at -O3, for comparison.

Sizes are .mpy bytes: bytecode, its constants and the names it uses. A frozen
module costs about that in flash (freezing turns the same data into C
structures, and names shared with the firmware are stored once).
``--all`` also compiles every MicroPython module of lowbw/wire, lowbw/device
and firmware, frozen or not, as a compile check.

Usage: python bench/frozen_size.py [--json] [--all]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from firmware import build  # noqa: E402

MANIFEST = ROOT / "firmware" / "manifest.py"
TARGET = 48 * 1024
# CPython-only or build files under the MicroPython trees.
NOT_DEVICE_CODE = {"lowbw/device/cli.py", "firmware/manifest.py", "firmware/build.py"}


ManifestError = build.ManifestError
manifest_entries = build.manifest_entries
manifest_files = build.manifest_files
mpy_cross = build.mpy_cross


def device_sources() -> list[str]:
    """Every MicroPython module of the device side (frozen or not)."""
    out = []
    for tree in ("lowbw/wire", "lowbw/device", "firmware"):
        for p in sorted((ROOT / tree).rglob("*.py")):
            rel = p.relative_to(ROOT).as_posix()
            if rel not in NOT_DEVICE_CODE and "__pycache__" not in rel:
                out.append(rel)
    return out


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


SMALL: dict[str, Any] = {"boards": ("esp32",), "sensors": ("bme280",)}


def built_sizes(tree: Path, **options: Any) -> dict[str, int]:
    """.mpy size in the built ``tree`` of each file the manifest freezes."""
    return {rel: (tree / (rel[:-3] + ".mpy")).stat().st_size for rel in manifest_files(**options)}


def firmware_size() -> dict[str, Any]:
    """The frozen size report (see the module docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        summary = build.build(Path(tmp) / "device")
        tree = Path(summary["out"]) / "mpy"
        sizes = built_sizes(tree)
        frozen = sum(built_sizes(tree, **SMALL).values())
    total = sum(sizes.values())
    groups: dict[str, int] = {}
    for path, n in sizes.items():
        key = "firmware" if path.startswith("firmware/") else "/".join(path.split("/")[:2])
        if key == "lowbw/__init__.py":
            key = "lowbw/wire"
        groups[key] = groups.get(key, 0) + n
    largest = sorted(sizes.items(), key=lambda kv: -kv[1])[:6]
    small_files = manifest_files(**SMALL)
    variants = {
        "esp32_bme280": frozen,
        "any_board": total,
        "source_esp32_bme280": sum(compile_sizes(small_files).values()),
        "source_esp32_bme280_O3": sum(compile_sizes(small_files, 3).values()),
    }
    return {"frozen_bytes": frozen, "target": TARGET, "within_target": frozen <= TARGET,
            "modules": sizes, "total": total, "groups": groups,
            "largest": [list(kv) for kv in largest], "variants": variants,
            "error_codes": summary["errors"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="JSON output (the only format)")
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
