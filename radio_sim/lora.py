"""LoRa time-on-air (the Semtech formula).

For spreading factor SF, bandwidth BW (Hz), coding rate CR (1..4 for 4/5..4/8),
preamble length n_pre, payload length PL bytes, IH = 1 for implicit header,
CRC = 1 with the payload CRC, DE = 1 with low-data-rate optimisation:

    T_sym      = 2**SF / BW
    T_preamble = (n_pre + 4.25) * T_sym
    n_payload  = 8 + max(ceil((8*PL - 4*SF + 28 + 16*CRC - 20*IH) / (4*(SF - 2*DE))) * (CR + 4), 0)
    T_packet   = T_preamble + n_payload * T_sym

Source: Semtech SX1276/77/78/79 datasheet rev. 6, section 4.1.1.7 "Time on air"
(also AN1200.13, "LoRa Modem Designer's Guide"). The datasheet mandates
low-data-rate optimisation when a symbol lasts longer than 16 ms, which is what
``ldro=None`` (automatic) selects: SF11 and SF12 at 125 kHz.

The SX126x family counts SF5/SF6 differently; this module models SX127x only.
"""

from __future__ import annotations

from dataclasses import dataclass

# Datasheet rule: LowDataRateOptimize is mandated above 16 ms per symbol.
LDRO_SYMBOL_THRESHOLD_S = 0.016


@dataclass(frozen=True)
class LoRaParams:
    """Modulation settings of a LoRa radio (SX127x)."""

    sf: int = 7
    bw_hz: float = 125_000.0
    cr: int = 1  # 1..4 means coding rate 4/5..4/8
    preamble: int = 8
    explicit_header: bool = True
    crc: bool = True
    ldro: bool | None = None  # None: on when a symbol lasts > 16 ms

    def validate(self) -> None:
        if not 6 <= self.sf <= 12:
            raise ValueError("LoRa spreading factor must be 6..12, got %r" % (self.sf,))
        if not self.bw_hz > 0:
            raise ValueError("LoRa bandwidth must be > 0 Hz, got %r" % (self.bw_hz,))
        if self.cr not in (1, 2, 3, 4):
            raise ValueError("LoRa coding rate must be 1..4 (4/5..4/8), got %r" % (self.cr,))
        if self.preamble < 0:
            raise ValueError("LoRa preamble length must be >= 0, got %r" % (self.preamble,))

    @property
    def symbol_time(self) -> float:
        return float(2**self.sf) / self.bw_hz

    @property
    def low_data_rate_optimize(self) -> bool:
        if self.ldro is not None:
            return self.ldro
        return self.symbol_time > LDRO_SYMBOL_THRESHOLD_S

    def payload_symbols(self, payload_len: int) -> int:
        de = 1 if self.low_data_rate_optimize else 0
        ih = 0 if self.explicit_header else 1
        crc = 1 if self.crc else 0
        num = 8 * payload_len - 4 * self.sf + 28 + 16 * crc - 20 * ih
        den = 4 * (self.sf - 2 * de)
        # Integer ceiling: a float division could land a hair above an integer.
        blocks = -(-num // den)
        return 8 + max(blocks * (self.cr + 4), 0)

    def time_on_air(self, payload_len: int) -> float:
        """Seconds a packet with ``payload_len`` bytes of PHY payload is on the air."""
        if payload_len < 0:
            raise ValueError("payload length must be >= 0")
        symbols = self.preamble + 4.25 + self.payload_symbols(payload_len)
        return symbols * self.symbol_time

    def bit_rate(self) -> float:
        """Nominal bit rate SF * (BW / 2**SF) * 4/(4+CR), bit/s."""
        return self.sf * (self.bw_hz / 2**self.sf) * 4.0 / (4 + self.cr)

    def to_dict(self) -> dict[str, object]:
        return {
            "sf": self.sf,
            "bw_hz": self.bw_hz,
            "cr": "4/%d" % (4 + self.cr),
            "preamble": self.preamble,
            "explicit_header": self.explicit_header,
            "crc": self.crc,
            "ldro": self.low_data_rate_optimize,
        }


def time_on_air(
    payload_len: int,
    sf: int = 7,
    bw_hz: float = 125_000.0,
    cr: int = 1,
    preamble: int = 8,
    explicit_header: bool = True,
    crc: bool = True,
    ldro: bool | None = None,
) -> float:
    """Seconds on the air for one LoRa packet; see the module docstring."""
    params = LoRaParams(sf, bw_hz, cr, preamble, explicit_header, crc, ldro)
    params.validate()
    return params.time_on_air(payload_len)


def max_payload_for(airtime_s: float, params: LoRaParams, limit: int = 255) -> int:
    """Largest payload whose time on air stays within ``airtime_s`` (-1 if none)."""
    best = -1
    for n in range(limit + 1):
        if params.time_on_air(n) <= airtime_s + 1e-12:
            best = n
        else:
            break
    return best


__all__ = ["LoRaParams", "time_on_air", "max_payload_for"]
