"""Device configs refuse unknown keys (a typo must not fall back to a default silently).

The same module runs on MicroPython; ``test_unknown_keys_under_micropython``
checks it there too, with the real unix port.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lowbw.device import config

ROOT = Path(__file__).resolve().parents[1]


def good() -> dict[str, Any]:
    return {
        "version": 1, "name": "s", "proxy": {"host": "h", "port": 1, "public_key": "ab" * 32},
        "device_private_key": "cd" * 32,
        "slots": [{"name": "t", "fields": [{"name": "t", "unit": "C", "scale": 1}]}],
        "client": {"max_rto": 10},
    }


@pytest.mark.parametrize(
    "where,path",
    [
        (lambda o: o, "link_bsp"),
        (lambda o: o["proxy"], "proxy.prot"),
        (lambda o: o["slots"][0], "slots[0].feilds"),
        (lambda o: o["slots"][0]["fields"][0], "slots[0].fields[0].scael"),
        (lambda o: o["client"], "client.max_rtt"),
    ],
)
def test_unknown_key_is_an_error_naming_it(where: Any, path: str) -> None:
    obj = good()
    where(obj)[path.rsplit(".", 1)[-1]] = 1
    with pytest.raises(config.ConfigError) as exc:
        config.from_dict(obj, "d.json")
    assert exc.value.message.startswith("d.json: device config %s: unknown key" % path)


def test_comments_and_the_firmware_board_are_allowed() -> None:
    obj = good()
    obj["_comment"] = "written by hand"
    obj["board"] = {"type": "esp32"}
    assert config.from_dict(obj).name == "s"


def test_unknown_keys_under_micropython(tmp_path: Path) -> None:
    micropython = shutil.which("micropython", path=str(ROOT / ".venv" / "bin"))
    if micropython is None:
        pytest.skip("the MicroPython unix port is not installed (make test installs it)")
    obj = good()
    obj["link_bsp"] = 100
    script = tmp_path / "check.py"
    script.write_text(
        "import sys\nsys.path.insert(0, %r)\nfrom lowbw.device import config\n"
        "try:\n    config.loads(%r)\n    print('accepted')\n"
        "except config.ConfigError as exc:\n    print(exc.message)\n" % (str(ROOT), json.dumps(obj))
    )
    out = subprocess.run([micropython, str(script)], capture_output=True, text=True, timeout=60)
    assert "device config link_bsp: unknown key" in out.stdout, (out.stdout, out.stderr)
