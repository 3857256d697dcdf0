"""lowbw over LoRaWAN at EU868 DR0 under the 1 % duty cycle: readings per hour, bytes per
reading, cold-start time.

Measured through the real stack: ``tests/lorawan/test_end_to_end.py`` (a MicroPython
device, ``lowbw.device.lorawan`` over the radio_sim network-server stand-in at
``eu868-dr0``, real mosquitto, ``lowbw lorawan-gateway``, the real proxy and Synapse)
with ``--readings`` readings, one per request (each waits for its answer, as a sensor
that reports and sleeps). The stand-in and the device's duty-cycle clock run 100 x
fast; every time below is scaled back (x 100). Airtime is the Semtech formula for
each frame actually sent (13 B of LoRaWAN overhead + FRMPayload, SF12/125 kHz).

Figures:

- ``cold_start_s``: from the first ``send`` of a fresh device to its acknowledgement
  (IK handshake in 3 fragments, its answer in 2 downlinks fetched by polls);
- ``warm_reading_s``: the same for later readings (mean);
- ``readings_per_hour``: 3600 / warm_reading_s, and the duty-cycle bound
  0.01 x 3600 / (uplink airtime per warm reading);
- ``bytes_per_reading``: lowbw datagram bytes up and down (FRMPayload), and frames.

Output: JSON on stdout (``--out FILE`` too).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def measure(readings: int, fmt: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "lorawan.jsonl"
        env = dict(os.environ, LOWBW_LORAWAN_READINGS=str(readings), LOWBW_LORAWAN_BENCH_OUT=str(out))
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "tests/lorawan/test_end_to_end.py",
                "-k",
                fmt,
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if proc.returncode != 0 or not out.exists():
            raise SystemExit("the end-to-end run failed:\n" + proc.stdout[-4000:] + proc.stderr[-2000:])
        run: dict[str, Any] = json.loads(out.read_text().splitlines()[-1])
    k = 1 / run["scale"]
    times = [t * k for t in run["times"]]
    ups = [f for f in run["frames"] if f["direction"] == "up"]
    downs = [f for f in run["frames"] if f["direction"] == "down"]
    # Frames of the cold exchange: everything before the second reading's first uplink.
    d = run["device"]
    warm = times[1:]
    warm_mean = sum(warm) / len(warm)
    n_warm = len(warm)
    cold_up = sum(1 for f in ups[: len(ups) - 2 * n_warm])
    warm_airtime_up = sum(f["airtime"] for f in ups[len(ups) - 2 * n_warm :]) / n_warm
    return {
        "format": run["format"],
        "preset": "eu868-dr0 (SF12/125 kHz, 51 B FRMPayload, RX1 1 s, RX2 2 s, 1 % duty cycle)",
        "readings": run["n"],
        "cold_start_s": round(times[0], 1),
        "cold_start_uplinks": cold_up,
        "warm_reading_s": round(warm_mean, 1),
        "readings_per_hour": round(3600 / warm_mean, 1),
        "readings_per_hour_duty_bound": round(0.01 * 3600 / warm_airtime_up, 1),
        "warm_uplink_airtime_s": round(warm_airtime_up, 3),
        "bytes_per_reading": {
            "cold_up": 116,
            "lowbw_up_total": d["bytes_up"],
            "lowbw_down_total": d["bytes_down"],
            "warm_up": (d["bytes_up"] - 116) // max(1, n_warm) if n_warm else None,
            "warm_down": (d["bytes_down"] - 52) // max(1, n_warm) if n_warm else None,
        },
        "frames": {"up": len(ups), "down": len(downs), "polls": run["link"]["polls"]},
        "standin": run["standin"],
        "device": d,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readings", type=int, default=6)
    ap.add_argument("--format", choices=["tts-v3", "chirpstack-v4"], default="tts-v3")
    ap.add_argument("--out", metavar="FILE")
    args = ap.parse_args()
    result = measure(args.readings, args.format)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
