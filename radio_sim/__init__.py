"""radio_sim: a userspace emulator of slow radio links.

- :mod:`radio_sim.model` -- the sans-I/O link model (:class:`Link`,
  :class:`LinkParams`, :class:`DirectionParams`, :class:`GilbertElliott`).
- :mod:`radio_sim.lora` -- LoRa time on air (Semtech formula).
- :mod:`radio_sim.presets` -- named presets (``100bps``, ``lora-sf12``, ...).
- :mod:`radio_sim.sim` -- in-process runs on a virtual clock (:class:`Simulation`).
- :mod:`radio_sim.aio` -- asyncio: virtual-time loop, :class:`AsyncLink`, loop driver.
- :mod:`radio_sim.relay` -- the real-time UDP relay (``python -m radio_sim relay``).
- :mod:`radio_sim.serial_link` -- a baud-paced bridge between two PTYs.
- :mod:`radio_sim.observe` -- JSON-lines event log and pcap writer.
- :mod:`radio_sim.plot` -- PNG of airtime and queue delay.
"""

from radio_sim.lora import LoRaParams, time_on_air
from radio_sim.model import (
    DIRECTIONS,
    DOWN,
    UP,
    Delivery,
    DirectionParams,
    GilbertElliott,
    Link,
    LinkParams,
    OfferResult,
    make_link,
)
from radio_sim.observe import EventLog, EventRecorder, PcapWriter
from radio_sim.presets import PRESET_NAMES, UnknownPresetError, get_preset
from radio_sim.sim import Port, Simulation, exchange

__all__ = [
    "DIRECTIONS",
    "DOWN",
    "PRESET_NAMES",
    "UP",
    "Delivery",
    "DirectionParams",
    "EventLog",
    "EventRecorder",
    "GilbertElliott",
    "Link",
    "LinkParams",
    "LoRaParams",
    "OfferResult",
    "PcapWriter",
    "Port",
    "Simulation",
    "UnknownPresetError",
    "exchange",
    "get_preset",
    "make_link",
    "time_on_air",
]
