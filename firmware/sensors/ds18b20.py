"""Maxim DS18B20 1-Wire thermometer (MicroPython's ``onewire``/``ds18x20``).

The chip reports temperature as a 16-bit two's-complement count of 1/16 °C
(scratchpad bytes 0..1, little-endian, CRC-checked by ``ds18x20``); the driver
returns it in 0.01 °C (scale 2), rounded half away from zero. Conversion takes
up to 750 ms at 12-bit resolution. With several sensors on the bus, ``rom``
(16 hex digits) picks one; otherwise the first found is used.

Config: {"driver": "ds18b20", "onewire": {"pin": 4}, "rom": "28ff...",
"scales": {"temperature": 1}}.
"""

from firmware.sensors import Sensor

try:
    from time import sleep_ms
except ImportError:  # CPython tests
    from time import sleep as _sleep

    def sleep_ms(ms):
        _sleep(ms / 1000)


def centi_celsius(lsb, msb):
    """0.01 °C from the scratchpad's temperature bytes."""
    raw = (msb << 8) | lsb
    if raw & 0x8000:
        raw -= 0x10000
    v = raw * 625  # 1/16 °C = 0.0625 °C = 625 * 1e-4 °C
    return (v + 50) // 100 if v >= 0 else -((-v + 50) // 100)


class DS18B20(Sensor):
    FIELDS = (("temperature", "°C", 2),)

    def __init__(self, ow, rom=None, fields=None, scales=None):
        Sensor.__init__(self, fields, scales)
        import ds18x20

        self.ds = ds18x20.DS18X20(ow)
        if rom is None:
            roms = self.ds.scan()
            if not roms:
                raise OSError("ds18b20: no sensor on the 1-Wire bus")
            rom = roms[0]
        self.rom = bytes(rom)

    def measure(self):
        self.ds.convert_temp()
        sleep_ms(750)
        s = self.ds.read_scratch(self.rom)
        return [centi_celsius(s[0], s[1])]


def open(spec, board):
    rom = spec.get("rom")
    return DS18B20(board.onewire(spec.get("onewire") or {}), bytes.fromhex(rom) if rom else None,
                   spec.get("fields"), spec.get("scales"))
