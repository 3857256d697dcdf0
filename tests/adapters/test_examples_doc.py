"""The adapter examples run as documented: the enroll command the README and
docs/adapters.md show, then ``lowbw mqtt-bridge --config examples/mqtt-bridge.toml``.

The documented commands are parsed from the docs themselves, run against the
session's real Synapse with only what is site-specific replaced (the proxy.toml
path, the invited user, the proxy's host name), in a copy of ``examples/``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lowbw.adapters.config import load_bridge
from lowbw.adapters.mqtt_bridge import Incoming, MqttBridge, digest

ROOT = Path(__file__).resolve().parents[2]


def shell_commands(doc: Path) -> list[tuple[list[str], str]]:
    """(argv, trailing comment) of every command in the doc's ```sh blocks, continuation lines joined."""
    out: list[tuple[list[str], str]] = []
    for block in re.findall(r"```sh\n(.*?)```", doc.read_text(encoding="utf-8"), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            command, _, comment = line.partition("  #")
            out.append((shlex.split(command), comment.strip().lstrip("# ").strip()))
    return out


def lowbw_commands(doc: Path, *words: str) -> list[tuple[list[str], str]]:
    """The documented ``lowbw WORDS...`` commands, argv after ``lowbw``."""
    found = []
    for argv, comment in shell_commands(doc):
        if argv and argv[0].endswith("lowbw") and argv[1 : 1 + len(words)] == list(words):
            found.append((argv[1:], comment))
    return found


def run_lowbw(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "lowbw", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(cwd),
        env=env,
    )


@pytest.mark.parametrize("doc", ["README.md", "docs/adapters.md"])
def test_documented_mqtt_example_runs_after_the_documented_enroll(
    doc: str, tmp_path: Path, proxy_config_path: str, matrix_user, synapse
) -> None:
    site = tmp_path / "site"
    shutil.copytree(ROOT / "examples", site / "examples")
    documented = lowbw_commands(ROOT / doc, "device", "enroll")
    enrolls = [a for a, _c in documented if "examples/devices/" in " ".join(a)]
    assert enrolls, "%s shows no enroll command for the examples" % doc
    for argv in enrolls:
        # Only what is site-specific changes: which proxy.toml, who is invited, the proxy's host.
        argv = [proxy_config_path if a == "/etc/lowbw/proxy.toml" else a for a in argv]
        argv = [matrix_user.user_id if a == "@you:example.org" else a for a in argv]
        argv = ["127.0.0.1" if a == "proxy.example.org" else a for a in argv]
        r = run_lowbw(argv, site)
        assert r.returncode == 0, (argv, r.stderr)
    checks = lowbw_commands(ROOT / doc, "mqtt-bridge")
    assert any("--check" in a for a, _c in checks), "%s does not show mqtt-bridge --check" % doc
    for argv, comment in checks:
        if "--check" not in argv:
            continue
        r = run_lowbw(argv, site)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == comment, (r.stdout, comment)
    assert any(a[-2:] == ["--config", "examples/mqtt-bridge.toml"] for a, _c in checks)

    # The example's topic rules fit the slots the documented enroll gave the device.
    cfg = load_bridge(site / "examples" / "mqtt-bridge.toml")
    bridge = MqttBridge(cfg)
    try:
        def resolve(topic: str, payload: bytes) -> tuple[str, list[str], float]:
            m = Incoming(topic, payload, 1, 1, False, False, digest(payload), 1.0)
            link, readings, when = bridge._resolve(m)
            return link.name, [link.cfg.slots[slot][0] for slot, _v in readings], when

        assert resolve("site/kitchen/temperature", b"21.5")[:2] == ("kitchen", ["temperature"])
        payload = json.dumps({"temp": 21.5, "hum": 40, "ts": 1795666000}).encode()
        name, slots, when = resolve("site/kitchen/climate", payload)
        assert (name, slots) == ("kitchen", ["climate"]) and when == pytest.approx(1795666000)
    finally:
        bridge.close()
