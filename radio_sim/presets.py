"""Named link presets.

Numbers, and why:

- ``100bps``: the mission's link. 100 bit/s each way (52 B take 4.16 s),
  20 ms modem latency, 256-byte frames, no loss. Full duplex.
- ``lossy-100bps``: the same with 20 % bursty loss (Gilbert-Elliott, mean
  burst 2 frames) and 50 ms of jitter.
- ``lora-sf7`` / ``lora-sf12``: a raw LoRa PHY at 125 kHz, CR 4/5, 8-symbol
  preamble, explicit header, CRC, low-data-rate optimisation automatic (on at
  SF12). 255-byte PHY payload limit, half duplex (a LoRa transceiver cannot
  receive while it sends), 1 % duty cycle per hour per transmitter as in the
  EU868 g sub-bands; frames beyond the budget wait.
- ``satellite-geo``: 2400 bit/s through a geostationary satellite: 280 ms one
  way (36,000 km up and down plus processing), 20 ms jitter, 1 % loss.
- ``packet-1200``: a 1200 bit/s packet-radio modem that fragments datagrams
  into 64-byte radio frames with a 2-byte fragment header each.
- ``1kbps`` / ``1kbps-lossy``: 1000 bit/s, 1024-byte frames, for stock-client
  tests that move larger bodies; the lossy one drops 10 % in bursts of 2.
- ``fast``: 1 Mbit/s, 1 ms latency, 64 KiB frames, long queue. For tests of
  the plumbing that should not wait for the radio.
"""

from __future__ import annotations

from collections.abc import Callable

from radio_sim.lora import LoRaParams
from radio_sim.model import GilbertElliott, LinkParams


def _p100() -> LinkParams:
    return LinkParams.symmetric(
        name="100bps",
        description="100 bit/s, 20 ms latency, MTU 256, no loss (the mission's link)",
        rate_bps=100.0,
        latency_s=0.02,
        mtu=256,
        queue_frames=32,
    )


def _lossy100() -> LinkParams:
    return LinkParams.symmetric(
        name="lossy-100bps",
        description="100 bit/s, 20 % bursty loss (Gilbert-Elliott, mean burst 2), 50 ms jitter",
        rate_bps=100.0,
        latency_s=0.02,
        jitter_s=0.05,
        mtu=256,
        queue_frames=32,
        burst=GilbertElliott.from_loss(0.20, 2.0),
    )


def _lora(sf: int) -> Callable[[], LinkParams]:
    def make() -> LinkParams:
        lora = LoRaParams(sf=sf, bw_hz=125_000.0, cr=1, preamble=8)
        return LinkParams.symmetric(
            name="lora-sf%d" % sf,
            description="LoRa SF%d/125 kHz CR4/5, half duplex, MTU 255, 1 %% duty cycle per hour (wait)" % sf,
            half_duplex=True,
            turnaround_s=0.001,
            rate_bps=None,
            lora=lora,
            latency_s=0.005,
            mtu=255,
            queue_frames=16,
            duty_cycle=0.01,
            duty_window_s=3600.0,
            duty_policy="wait",
        )

    return make


def _geo() -> LinkParams:
    return LinkParams.symmetric(
        name="satellite-geo",
        description="2400 bit/s via GEO satellite: 280 ms one way, 20 ms jitter, 1 % loss, MTU 1500",
        rate_bps=2400.0,
        latency_s=0.28,
        jitter_s=0.02,
        loss=0.01,
        mtu=1500,
        queue_frames=64,
    )


def _packet1200() -> LinkParams:
    return LinkParams.symmetric(
        name="packet-1200",
        description="1200 bit/s packet radio, fragments into 64-byte frames (2-byte header each)",
        rate_bps=1200.0,
        latency_s=0.05,
        mtu=64,
        fragment=True,
        fragment_overhead=2,
        queue_frames=64,
    )


def _k1() -> LinkParams:
    return LinkParams.symmetric(
        name="1kbps",
        description="1000 bit/s, 20 ms latency, MTU 1024, no loss",
        rate_bps=1000.0,
        latency_s=0.02,
        mtu=1024,
        queue_frames=64,
    )


def _k1lossy() -> LinkParams:
    return LinkParams.symmetric(
        name="1kbps-lossy",
        description="1000 bit/s, 10 % bursty loss (mean burst 2), 20 ms jitter, MTU 1024",
        rate_bps=1000.0,
        latency_s=0.02,
        jitter_s=0.02,
        mtu=1024,
        queue_frames=64,
        burst=GilbertElliott.from_loss(0.10, 2.0),
    )


def _fast() -> LinkParams:
    return LinkParams.symmetric(
        name="fast",
        description="1 Mbit/s, 1 ms latency, MTU 65535, for plumbing tests",
        rate_bps=1_000_000.0,
        latency_s=0.001,
        mtu=65535,
        queue_frames=4096,
    )


_PRESETS: dict[str, Callable[[], LinkParams]] = {
    "100bps": _p100,
    "lossy-100bps": _lossy100,
    "lora-sf7": _lora(7),
    "lora-sf12": _lora(12),
    "satellite-geo": _geo,
    "packet-1200": _packet1200,
    "1kbps": _k1,
    "1kbps-lossy": _k1lossy,
    "fast": _fast,
}

PRESET_NAMES: tuple[str, ...] = tuple(_PRESETS)


class UnknownPresetError(ValueError):
    """A preset name that does not exist; the message lists the valid ones."""

    def __init__(self, name: str) -> None:
        super().__init__("unknown preset %r (valid: %s)" % (name, ", ".join(PRESET_NAMES)))
        self.name = name


def get_preset(name: str) -> LinkParams:
    try:
        make = _PRESETS[name]
    except KeyError:
        raise UnknownPresetError(name) from None
    return make()


def describe_presets() -> str:
    """A plain-text table of the presets (``python -m radio_sim presets``)."""
    lines = []
    width = max(len(n) for n in PRESET_NAMES)
    for name in PRESET_NAMES:
        lines.append("%-*s  %s" % (width, name, get_preset(name).description))
    return "\n".join(lines)
