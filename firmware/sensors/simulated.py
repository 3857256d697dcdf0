"""A simulated climate sensor: deterministic, for the demo and the tests.

Temperature (0.1 °C, scale 1) and relative humidity (1 %, scale 0) follow a
slow daily-like triangle wave (``period`` samples) plus a little jitter from a
31-bit integer hash, so a given ``seed`` gives the same series on CPython and
on every MicroPython port (their ``random`` modules differ). Reading n is a
function of (seed, n) alone: ``index`` is the next n, and the application
sets it from the device's reading counter so a device that restarts or wakes
from deep sleep continues the series instead of repeating it. ``fail_every``
k > 0 makes every k-th read raise OSError, to exercise a failing sensor.

Config: {"driver": "simulated", "seed": 1, "period": 288, "fields": [...],
"scales": {...}, "fail_every": 0}.
"""

from firmware.sensors import Sensor

_M = 0x7FFFFFFF


def _tri(n, period, amp):
    p = n % period
    half = period // 2
    return (p if p < half else period - p) * amp // half


class Simulated(Sensor):
    FIELDS = (("temperature", "°C", 1), ("humidity", "%", 0))

    def __init__(self, seed=1, fields=None, fail_every=0, period=288, scales=None):
        Sensor.__init__(self, fields, scales)
        self.seed = seed & _M
        self.index = 0
        self.fail_every = fail_every
        self.period = max(2, period)

    def _jitter(self, n, k, spread):
        x = (self.seed * 7919 + n * 104729 + k * 15485863) & _M
        for _ in range(2):
            x = (x * 1103515245 + 12345) & _M
        return (x >> 8) % (2 * spread + 1) - spread

    def value(self, n):
        """[temperature, humidity] of reading n."""
        p = self.period
        t = 180 + _tri(n, p, 60) + self._jitter(n, 1, 2)
        h = 40 + _tri(n + p // 2, p, 20) + self._jitter(n, 2, 1)
        return [t, h]

    def measure(self):
        n = self.index
        self.index = n + 1
        if self.fail_every and (n + 1) % self.fail_every == 0:
            raise OSError("simulated sensor failure (reading %d)" % n)
        return self.value(n)


def open(spec, board):
    return Simulated(spec.get("seed", 1), spec.get("fields"), spec.get("fail_every", 0),
                     spec.get("period", 288), spec.get("scales"))
