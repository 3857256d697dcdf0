"""``make demo`` (scripts/demo.py), run as a person runs it.

Two runs, side by side with the other end-to-end scenarios: one until two
readings have landed (``--readings 2``), one stopped with Ctrl-C (SIGINT) soon
after it printed the login details. Each must exit 0, print how to log in,
and leave nothing behind: every process it announced gone, its temporary
directory removed, no process still referring to it.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from typing import Any

import pytest

from tests.e2e.stack import ROOT, Proc, Runs, scenario

DEMO = ROOT / "scripts" / "demo.py"


def _demo(args: list[str]) -> Any:
    # Its output stays in memory (Proc.lines): no log file to leave behind.
    return Proc("demo", [sys.executable, str(DEMO), *args], os.devnull, cwd=ROOT)


def _wait(proc: Any, timeout: float) -> None:
    try:
        proc.wait(timeout)
    except Exception:
        proc.stop()
        raise


@scenario("demo", stack=False)
def run_demo(env: Any) -> Any:
    proc = _demo(["--readings", "2", "--duration", "300", "--interval", "5", "--password", "correct-horse"])
    _wait(proc, 420)
    return proc


@scenario("demo_interrupt", stack=False)
def run_demo_interrupt(env: Any) -> Any:
    proc = _demo(["--interval", "5"])
    try:
        proc.wait_for(r"^Readings as they land", 180)
    finally:
        proc.send_signal(signal.SIGINT)  # a terminal's Ctrl-C
    _wait(proc, 120)
    return proc


def _alive(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid, encoding="ascii") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _referring_to(path: str) -> list[int]:
    """Live processes whose command line mentions ``path``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as fh:
                cmdline = fh.read().decode("utf-8", "replace")
        except OSError:
            continue
        if path in cmdline and _alive(int(entry)):
            found.append(int(entry))
    return found


def assert_nothing_left(out: str) -> None:
    m = re.search(r"^processes: synapse=(\d+) proxy=(\d+) relay=(\d+) device=(\d+)$", out, re.M)
    assert m, out
    left = [int(pid) for pid in m.groups() if _alive(int(pid))]
    assert left == [], "still running: %s" % left
    w = re.search(r"work directory\s+(\S+)", out)
    assert w, out
    assert not os.path.exists(w.group(1))
    assert _referring_to(w.group(1)) == []
    assert "stopped: every process ended" in out


def assert_login_info(out: str) -> None:
    assert re.search(r"^  homeserver  http://127\.0\.0\.1:\d+$", out, re.M), out
    assert re.search(r"^  user        demo   \(@demo:localhost\)$", out, re.M), out
    assert re.search(r"^  password    \S+$", out, re.M), out
    assert re.search(r"^  room        !\S+", out, re.M), out


@pytest.mark.e2e_scenario("demo")
def test_demo_shows_readings_landing_and_cleans_up(runs: Runs) -> None:
    proc = runs.result("demo")
    out = proc.text()
    assert proc.returncode == 0, out
    assert_login_info(out)
    assert "  password    correct-horse" in out
    landed = re.findall(
        r"^reading (\d+)  \d\d:\d\d:\d\d  climate: temperature [0-9.]+ °C, humidity \d+ %", out, re.M
    )
    assert landed == ["1", "2"], out
    # The live radio counter, per direction.
    radio = re.findall(r"^radio  up +(\d+) B +\d+ frames +[0-9.]+ s on air \| down +(\d+) B", out, re.M)
    # The demo's device is enrolled for its 100 bit/s link: the compact profile (a KK
    # message 1 of at least 61 B, then warm frames of at least 15 B; a 52 B KK answer).
    assert radio and int(radio[-1][0]) >= 61 + 15 and int(radio[-1][1]) >= 52, out
    assert "(2 reading(s) landed)" in out
    assert_nothing_left(out)


@pytest.mark.e2e_scenario("demo_interrupt")
def test_demo_stops_everything_on_ctrl_c(runs: Runs) -> None:
    proc = runs.result("demo_interrupt")
    out = proc.text()
    assert proc.returncode == 0, out
    assert_login_info(out)
    assert "stopping" in out
    assert_nothing_left(out)
