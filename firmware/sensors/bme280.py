"""Bosch BME280 (and BMP280) over I2C, with the datasheet's integer compensation.

The chip gives raw 20-bit temperature and pressure and 16-bit humidity
readings; the per-chip calibration words in its NVM turn them into physical
values through the fixed-point formulas of the BME280 datasheet (section 4.2.3,
"Compensation formulas"): temperature in 0.01 °C, pressure in Pa as Q24.8
(the 64-bit variant), humidity in %RH as Q22.10. They are reproduced here in
Python integers, which are exact; C's truncating division is reproduced where
the formula divides (``//`` floors), and right shifts of negative numbers are
arithmetic in both languages.

Registers used::

    0x88..0xA1  calib00..25: T1 u16, T2 s16, T3 s16, P1 u16, P2..P9 s16,
                (0xA0 unused), H1 u8                       little-endian
    0xE1..0xE7  calib26..32: H2 s16, H3 u8, H4 s12 = E4<<4 | E5[3:0],
                H5 s12 = E6<<4 | E5[7:4], H6 s8
    0xD0        chip id: 0x60 BME280, 0x58 BMP280 (no humidity)
    0xF2        ctrl_hum: osrs_h[2:0] (takes effect at the next ctrl_meas write)
    0xF3        status: bit 3 measuring
    0xF4        ctrl_meas: osrs_t[7:5] osrs_p[4:2] mode[1:0] (01 = forced)
    0xF7..0xFE  press[19:0], temp[19:0], hum[15:0], msb first (xlsb in [7:4])

The driver uses forced mode: one measurement per ``read()``, the chip sleeps
in between (0.1 uA), which suits a sensor that deep-sleeps between samples.

Fields (scaled integers, exact): temperature 0.01 °C (scale 2), pressure in
hPa with scale 2 (that is, whole Pa), humidity 0.01 %RH (scale 2).
"""

import struct

from firmware.sensors import Sensor

try:
    from time import sleep_ms
except ImportError:  # CPython tests
    from time import sleep as _sleep

    def sleep_ms(ms):
        _sleep(ms / 1000)


CHIP_BME280 = 0x60
CHIP_BMP280 = 0x58
REG_CALIB_TP = 0x88
REG_CALIB_H = 0xE1
REG_CHIP_ID = 0xD0
REG_CTRL_HUM = 0xF2
REG_STATUS = 0xF3
REG_CTRL_MEAS = 0xF4
REG_DATA = 0xF7
MODE_FORCED = 0x01
STATUS_MEASURING = 0x08
# A disabled (skipped) channel reads as this raw value.
SKIPPED_20 = 0x80000
SKIPPED_16 = 0x8000
OVERSAMPLING = (1, 2, 4, 8, 16)


def parse_calibration(tp, h):
    """Calibration tuple (T1..T3, P1..P9, H1..H6) from the 26 bytes at 0x88
    and the 7 bytes at 0xE1 (``h`` may be None for a BMP280)."""
    w = struct.unpack("<HhhHhhhhhhhhBB", tp)
    t_p = w[:12]
    if h is None:
        return t_p + (0, 0, 0, 0, 0, 0)
    h1 = w[13]
    h2, h3, e4, e5, e6, h6 = struct.unpack("<hBbBbb", h)
    h4 = (e4 << 4) | (e5 & 0x0F)
    h5 = (e6 << 4) | (e5 >> 4)
    return t_p + (h1, h2, h3, h4, h5, h6)


def _div_trunc(a, b):
    # C integer division truncates toward zero.
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def compensate_t(c, adc_t):
    """(temperature in 0.01 °C, t_fine) from the raw 20-bit value."""
    t1, t2, t3 = c[0], c[1], c[2]
    var1 = (((adc_t >> 3) - (t1 << 1)) * t2) >> 11
    d = (adc_t >> 4) - t1
    var2 = (((d * d) >> 12) * t3) >> 14
    t_fine = var1 + var2
    return (t_fine * 5 + 128) >> 8, t_fine


def compensate_p(c, adc_p, t_fine):
    """Pressure in Pa as Q24.8 (value / 256 = Pa), the datasheet's 64-bit formula."""
    p1, p2, p3, p4, p5, p6, p7, p8, p9 = c[3:12]
    var1 = t_fine - 128000
    var2 = var1 * var1 * p6
    var2 = var2 + ((var1 * p5) << 17)
    var2 = var2 + (p4 << 35)
    var1 = ((var1 * var1 * p3) >> 8) + ((var1 * p2) << 12)
    var1 = (((1 << 47) + var1) * p1) >> 33
    if var1 == 0:
        return 0  # the datasheet's guard against dividing by zero
    p = 1048576 - adc_p
    p = _div_trunc(((p << 31) - var2) * 3125, var1)
    var1 = (p9 * (p >> 13) * (p >> 13)) >> 25
    var2 = (p8 * p) >> 19
    return ((p + var1 + var2) >> 8) + (p7 << 4)


def compensate_h(c, adc_h, t_fine):
    """Humidity in %RH as Q22.10 (value / 1024 = %RH)."""
    h1, h2, h3, h4, h5, h6 = c[12:18]
    v = t_fine - 76800
    v = (((((adc_h << 14) - (h4 << 20) - (h5 * v)) + 16384) >> 15)
         * (((((((v * h6) >> 10) * (((v * h3) >> 11) + 32768)) >> 10) + 2097152) * h2 + 8192) >> 14))
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * h1) >> 4)
    if v < 0:
        v = 0
    if v > 419430400:
        v = 419430400
    return v >> 12


def raw_values(data):
    """(adc_p, adc_t, adc_h) from the 8 data bytes at 0xF7 (adc_h None if absent)."""
    adc_p = (data[0] << 12) | (data[1] << 4) | (data[2] >> 4)
    adc_t = (data[3] << 12) | (data[4] << 4) | (data[5] >> 4)
    adc_h = (data[6] << 8) | data[7] if len(data) >= 8 else None
    return adc_p, adc_t, adc_h


def convert(c, adc_p, adc_t, adc_h):
    """[temperature 0.01 °C, pressure Pa (= hPa at scale 2), humidity 0.01 %RH];
    None for a skipped or absent channel."""
    if adc_t == SKIPPED_20:
        return [None, None, None]  # pressure and humidity need t_fine
    t, t_fine = compensate_t(c, adc_t)
    p = None
    if adc_p != SKIPPED_20:
        p = (compensate_p(c, adc_p, t_fine) + 128) >> 8
    h = None
    if adc_h is not None and adc_h != SKIPPED_16:
        h = (compensate_h(c, adc_h, t_fine) * 100 + 512) >> 10
    return [t, p, h]


def _osrs(n):
    # Register code of an oversampling factor: 1 -> 1, 2 -> 2, 4 -> 3, ...
    if n not in OVERSAMPLING:
        raise ValueError("bme280 oversampling must be one of 1, 2, 4, 8, 16")
    return OVERSAMPLING.index(n) + 1


class BME280(Sensor):
    FIELDS = (("temperature", "°C", 2), ("pressure", "hPa", 2), ("humidity", "%", 2))

    def __init__(self, i2c, address=0x76, oversampling=1, fields=None, scales=None):
        Sensor.__init__(self, fields, scales)
        self.i2c = i2c
        self.address = address
        os_code = _osrs(oversampling)
        chip = i2c.readfrom_mem(address, REG_CHIP_ID, 1)[0]
        if chip == CHIP_BME280:
            self.humidity = True
        elif chip == CHIP_BMP280:
            self.humidity = False
        else:
            raise OSError("no BME280/BMP280 at 0x%02x (chip id 0x%02x)" % (address, chip))
        tp = i2c.readfrom_mem(address, REG_CALIB_TP, 26)
        h = i2c.readfrom_mem(address, REG_CALIB_H, 7) if self.humidity else None
        self.calib = parse_calibration(tp, h)
        self._hum = bytes([os_code])
        self._meas = bytes([(os_code << 5) | (os_code << 2) | MODE_FORCED])
        # Datasheet 9.1, maximum measurement time in ms:
        # 1.25 + 2.3 * T_os + (2.3 * P_os + 0.575) + (2.3 * H_os + 0.575).
        self._wait_ms = (1250 + 2300 * oversampling * 3 + 575 * 2 + 999) // 1000

    def measure(self):
        i2c, a = self.i2c, self.address
        if self.humidity:
            i2c.writeto_mem(a, REG_CTRL_HUM, self._hum)
        i2c.writeto_mem(a, REG_CTRL_MEAS, self._meas)
        sleep_ms(self._wait_ms)
        tries = 10
        while i2c.readfrom_mem(a, REG_STATUS, 1)[0] & STATUS_MEASURING:
            tries -= 1
            if not tries:
                raise OSError("bme280: measurement did not finish")
            sleep_ms(2)
        data = i2c.readfrom_mem(a, REG_DATA, 8 if self.humidity else 6)
        adc_p, adc_t, adc_h = raw_values(data)
        return convert(self.calib, adc_p, adc_t, adc_h)


def open(spec, board):
    """Config: {"driver": "bme280", "i2c": {"id": 0, "scl": 22, "sda": 21},
    "address": 118, "oversampling": 1, "fields": [...], "scales": {...}}."""
    return BME280(board.i2c(spec.get("i2c") or {}), spec.get("address", 0x76),
                  spec.get("oversampling", 1), spec.get("fields"), spec.get("scales"))
