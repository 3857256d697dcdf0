"""The bench helper: bytes and airtime of an exchange."""

import json
import os
import subprocess
import sys

import pytest

from bench.radiostats import airtime, diff, format_table, from_link, from_stats, main, measure_frames
from radio_sim.sim import Simulation

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_warm_reading_budget_example():
    # DESIGN.md section 4: 30 B request + 22 B answer = 52 B, 4.16 s at 100 bit/s.
    r = measure_frames([("up", bytes(30)), ("down", bytes(22))], preset="100bps")
    assert (r.bytes_up, r.bytes_down, r.bytes_total) == (30, 22, 52)
    assert r.frames_total == 2
    assert r.ip_bytes_total == 52 + 2 * 28
    assert r.airtime_s == pytest.approx(4.16)
    assert r.airtime_up_s == pytest.approx(2.40)
    assert r.duration_s == pytest.approx(4.16 + 2 * 0.02)
    assert "52 B" in r.summary() and "4.160 s" in r.summary()
    d = r.as_dict()
    assert d["bytes_total"] == 52 and d["airtime_s"] == pytest.approx(4.16)
    json.dumps(d)


def test_lora_airtime_of_an_exchange():
    r = measure_frames([("up", bytes(108)), ("down", bytes(52))], preset="lora-sf7")
    assert r.airtime_s == pytest.approx(airtime(108, "lora-sf7") + airtime(52, "lora-sf7", "down"))


def test_from_link_and_diff():
    sim = Simulation("1kbps", seed=0)
    sim.a.send(bytes(100))
    sim.run()
    before = sim.stats()
    sim.b.send(bytes(40))
    sim.a.send(bytes(10))
    sim.run()
    delta = diff(before, sim.stats())
    assert (delta.bytes_up, delta.bytes_down, delta.frames_total) == (10, 40, 2)
    assert delta.airtime_s == pytest.approx(50 * 8 / 1000)
    total = from_link(sim)
    assert total.bytes_total == 150 and total.duration_s == sim.now
    table = format_table([("first", from_stats(before)), ("rest", delta)])
    assert "| rest | 2 | 50 (10 + 40) | 106 | 0.40 |" in table


def test_cli_on_a_stats_file(tmp_path, capsys):
    sim = Simulation("100bps", seed=0)
    sim.a.send(bytes(52))
    sim.run()
    path = tmp_path / "stats.json"
    path.write_text(json.dumps(sim.stats()))
    assert main([str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bytes_total"] == 52 and out["airtime_s"] == pytest.approx(4.16)
    # Also as a script, from outside the repository's import path.
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "radiostats.py"), str(path)],
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert "52 B in 1 frames" in r.stdout
    assert main([str(tmp_path / "nope.json")]) == 1
