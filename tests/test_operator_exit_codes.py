"""One exit-code rule for every ``lowbw`` command, checked on real processes.

The rule (docs/operator.md, "Exit status"): 0 ok; 1 the command failed, a bad
config file and a port in use included, with one line on stderr
``lowbw COMMAND: error: ...`` and no traceback; 2 bad usage (argparse).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ERROR_LINE = re.compile(r"^lowbw( [a-z-]+)*: error: \S")


def lowbw(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), LOWBW_LOG_LEVEL="WARNING")
    return subprocess.run(
        [sys.executable, "-m", "lowbw", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(ROOT),
        env=env,
    )


def assert_failed_in_one_line(r: subprocess.CompletedProcess[str], *, command: str, mentions: str) -> None:
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert ERROR_LINE.match(lines[0]), lines[0]
    assert lines[0].startswith(command + ": error: "), lines[0]
    assert mentions in lines[0], lines[0]


def bad_files(tmp_path: Path) -> tuple[Path, Path]:
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("this is = = not toml\n")
    bad_toml.chmod(0o600)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    bad_json.chmod(0o600)
    return bad_toml, bad_json


COMMANDS = [
    ("lowbw proxy run", ["proxy", "run", "--config", "{toml}"]),
    ("lowbw proxy enroll-client", ["proxy", "enroll-client", "--config", "{toml}", "laptop"]),
    ("lowbw device enroll", ["device", "enroll", "--config", "{toml}", "s1", "--room", "new", "--schema=t"]),
    ("lowbw device list", ["device", "list", "--config", "{toml}"]),
    ("lowbw device revoke", ["device", "revoke", "--config", "{toml}", "s1"]),
    ("lowbw device send", ["device", "send", "--device-config", "{json}", "215"]),
    ("lowbw client-proxy", ["client-proxy", "--config", "{toml}"]),
    ("lowbw serial-gateway", ["serial-gateway", "--config", "{toml}"]),
    ("lowbw mqtt-bridge", ["mqtt-bridge", "--config", "{toml}"]),
]


@pytest.mark.parametrize("command,argv", COMMANDS, ids=[c for c, _a in COMMANDS])
def test_bad_config_file_exits_1_with_one_error_line(command: str, argv: list[str], tmp_path: Path) -> None:
    bad_toml, bad_json = bad_files(tmp_path)
    args = [a.format(toml=bad_toml, json=bad_json) for a in argv]
    r = lowbw(*args)
    assert_failed_in_one_line(r, command=command, mentions=str(bad_toml if "{toml}" in argv else bad_json))


@pytest.mark.parametrize("command,argv", COMMANDS, ids=[c for c, _a in COMMANDS])
def test_usage_errors_exit_2(command: str, argv: list[str]) -> None:
    # The first words of the command and an option nobody has.
    words = command.split()[1:]
    r = lowbw(*words, "--no-such-option")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(command + ": error: "), r.stderr


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_proxy_run_with_its_udp_port_taken_says_which_and_what_to_change(tmp_path: Path) -> None:
    port = _free_udp_port()
    init = lowbw(
        "proxy", "init", "--homeserver", "http://127.0.0.1:9", "--dir", str(tmp_path / "p"),
        "--port", str(port), "--appservice-listen", "127.0.0.1:%d" % _free_tcp_port(),
    )
    assert init.returncode == 0, init.stderr
    config = tmp_path / "p" / "proxy.toml"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", port))
        r = lowbw("proxy", "run", "--config", str(config))
    assert_failed_in_one_line(r, command="lowbw proxy run", mentions="127.0.0.1:%d" % port)
    line = r.stderr.strip()
    assert "cannot listen on udp 127.0.0.1:%d: address already in use" % port in line
    assert "set [proxy] port in %s" % config in line
    assert "ValueError" not in line


def test_proxy_run_with_its_appservice_port_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        as_port = taken.getsockname()[1]
        init = lowbw(
            "proxy", "init", "--homeserver", "http://127.0.0.1:9", "--dir", str(tmp_path / "p"),
            "--port", str(_free_udp_port()), "--appservice-listen", "127.0.0.1:%d" % as_port,
        )
        assert init.returncode == 0, init.stderr
        r = lowbw("proxy", "run", "--config", str(tmp_path / "p" / "proxy.toml"))
    assert_failed_in_one_line(r, command="lowbw proxy run", mentions="tcp 127.0.0.1:%d" % as_port)
    assert "set [appservice] listen" in r.stderr


def test_device_send_config_with_unknown_key_exits_1(tmp_path: Path) -> None:
    # A well-formed config with a typo (item 5): a failure, not silently ignored.
    config = {
        "version": 1, "name": "s1",
        "proxy": {"host": "127.0.0.1", "port": 9, "public_key": "00" * 32},
        "device_private_key": "11" * 32,
        "slots": [{"name": "t", "fields": [{"name": "t"}]}],
        "link_bsp": 100,
    }
    path = tmp_path / "s1.json"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    r = lowbw("device", "send", "--device-config", str(path), "1", "--timeout", "1")
    assert_failed_in_one_line(r, command="lowbw device send", mentions="link_bsp")
