"""Command line: help, clear errors, overrides, plot, presets, airtime."""

import os
import subprocess
import sys

import pytest

from radio_sim.cli import build_parser, main, params_from_args
from radio_sim.model import GilbertElliott
from radio_sim.presets import PRESET_NAMES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_main(capsys, *argv):
    try:
        rc = main(list(argv))
    except SystemExit as exc:
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def params(*argv):
    args = build_parser().parse_args(["airtime", *argv, "1"])
    return params_from_args(args)


def test_module_help_runs():
    r = subprocess.run(
        [sys.executable, "-m", "radio_sim", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0
    for word in ("relay", "serial", "plot", "presets", "airtime"):
        assert word in r.stdout


@pytest.mark.parametrize("cmd", ["relay", "serial", "plot", "presets", "airtime"])
def test_subcommand_help(capsys, cmd):
    rc, out, _ = run_main(capsys, cmd, "--help")
    assert rc == 0 and "usage:" in out


def test_relay_help_mentions_the_model_options(capsys):
    _, out, _ = run_main(capsys, "relay", "--help")
    for opt in (
        "--listen",
        "--to",
        "--preset",
        "--stats",
        "--log",
        "--pcap",
        "--stats-interval",
        "--rate",
        "--loss",
        "--latency",
        "--jitter",
        "--mtu",
        "--seed",
        "--duty-cycle",
        "--half-duplex",
    ):
        assert opt in out


def test_unknown_preset_lists_valid_ones(capsys):
    rc, _, err = run_main(
        capsys, "relay", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:9", "--preset", "9k6"
    )
    assert rc == 2
    assert "unknown preset '9k6'" in err
    for name in PRESET_NAMES:
        assert name in err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["relay", "--listen", "localhost", "--to", "127.0.0.1:9"], "HOST:PORT"),
        (["relay", "--listen", "127.0.0.1:70000", "--to", "127.0.0.1:9"], "port out of range"),
        (["relay", "--listen", "127.0.0.1:0"], "--to"),
        (["airtime", "--loss", "1.5", "10"], "between 0 and 1"),
        (["airtime", "--rate", "-3", "10"], ">= 0"),
        (["airtime", "--mtu", "0", "--fragment", "10"], "fragmentation needs an mtu"),
        (["airtime", "--sf", "13", "10"], "spreading factor"),
        (["airtime", "--loss", "0.9", "--burst", "1.05", "10"], "P(good->bad) > 1"),
        (["serial"], "--baud"),
        (["plot", "x.jsonl"], "--output"),
        ([], "COMMAND"),
    ],
)
def test_bad_arguments_are_clear(capsys, argv, needle):
    rc, _, err = run_main(capsys, *argv)
    assert rc == 2
    assert needle in err


def test_overrides():
    p = params("--preset", "100bps", "--rate", "1200", "--loss", "5%", "--latency", "0.3", "--mtu", "0")
    assert p.up.rate_bps == 1200.0 and p.down.loss == 0.05 and p.up.latency_s == 0.3 and p.up.mtu is None
    p = params("--preset", "100bps", "--loss", "0.2", "--burst", "3")
    assert p.up.loss == 0.0 and p.up.burst == GilbertElliott.from_loss(0.2, 3.0)
    p = params("--preset", "lossy-100bps", "--loss", "0.1")  # explicit loss without bursts
    assert p.up.burst is None and p.up.loss == 0.1
    p = params("--preset", "lora-sf12", "--sf", "9", "--cr", "8", "--no-half-duplex", "--duty-cycle", "0")
    assert p.up.lora is not None and p.up.lora.sf == 9 and p.up.lora.cr == 4
    assert not p.half_duplex and p.up.duty_cycle is None
    p = params("--preset", "lora-sf7", "--rate", "9.6k")
    assert p.up.lora is None and p.up.rate_bps == 9600.0
    p = params("--queue", "-1", "--duty-cycle", "1%", "--duty-policy", "drop")
    assert p.up.queue_frames is None and p.up.duty_cycle == 0.01 and p.up.duty_policy == "drop"


def test_airtime_command(capsys):
    rc, out, _ = run_main(capsys, "airtime", "--preset", "lora-sf12", "51")
    assert rc == 0 and "2.465792" in out
    rc, out, _ = run_main(capsys, "airtime", "52")
    assert "4.160000" in out


def test_presets_command(capsys):
    rc, out, _ = run_main(capsys, "presets")
    assert rc == 0
    assert all(name in out for name in PRESET_NAMES)
    rc, out, _ = run_main(capsys, "presets", "--json")
    import json

    assert json.loads(out)["100bps"]["up"]["rate_bps"] == 100.0


def test_plot_command_errors(capsys, tmp_path):
    rc, _, err = run_main(capsys, "plot", str(tmp_path / "missing.json"), "-o", str(tmp_path / "x.png"))
    assert rc == 1 and "missing.json" in err


def test_plot_command(capsys, tmp_path):
    from radio_sim.observe import EventLog
    from radio_sim.sim import exchange

    log_path = tmp_path / "events.jsonl"
    log = EventLog(str(log_path))
    exchange([("up", bytes(30)), ("down", bytes(22))] * 3, "100bps", observers=[log])
    log.close()
    out_png = tmp_path / "out.png"
    rc, out, _ = run_main(capsys, "plot", str(log_path), "-o", str(out_png))
    assert rc == 0 and "event log" in out
    assert out_png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
