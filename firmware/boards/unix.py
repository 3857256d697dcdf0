"""The MicroPython unix port (and CPython): a development and test board.

UDP over the host's network; the state in a file; no sleep modes: ``light``
is ``time.sleep`` and ``deep`` is emulated by noting the wake time, sleeping,
restarting the clock at zero and raising ``SoftReboot`` so main.py starts the
application over from its store, as a board does after a real deep sleep. ``time.time_ns()`` measures
the sleep. There are no buses: a real sensor driver fails with OSError here,
use the ``simulated`` one.
"""

import time

from firmware.boards import BaseBoard, Clock, SoftReboot


class Board(BaseBoard):
    name = "unix"
    config_path = "config.json"
    boot_delay = 0

    def __init__(self):
        BaseBoard.__init__(self)
        self._slept = False

    def rtc_ns(self):
        return time.time_ns()

    def woke_from_deepsleep(self):
        return self._slept

    def i2c(self, spec):
        raise OSError("no I2C bus on the unix port (use the simulated sensor)")

    def onewire(self, spec):
        raise OSError("no 1-Wire bus on the unix port (use the simulated sensor)")

    def uart(self, spec):
        raise OSError("no UART on the unix port")

    def reset(self):
        raise SystemExit(1)

    def lightsleep(self, seconds):
        time.sleep(seconds)

    def deepsleep(self, seconds):
        time.sleep(seconds)
        self._slept = True
        # A real board's clock restarts at the reset that ends a deep sleep.
        self.clock = Clock(0)
        raise SoftReboot()
