"""A test double for MicroPython's ``machine`` module, as the board modules use it.

The firmware tests have no ESP32 or RP2040: this stands in for the parts of
``machine`` that firmware/boards/esp32.py and rp2.py touch: RTC slow memory
(kept across "resets" until ``power_off()``), the reset cause, sleep calls
(``deepsleep`` raises ``DeepSleep``, as a real board never returns from it),
Pin/I2C/UART constructors that record their arguments. ``install()`` puts it
in ``sys.modules`` as ``machine``; ``uninstall()`` restores what was there.
"""

import sys

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
RTC_MEMORY_MAX = 2048

state = {"cause": PWRON_RESET, "rtc": b"", "lightsleeps": [], "rtc_writes": 0}


class DeepSleep(Exception):
    pass


class RTC:
    def memory(self, data=None):
        if data is None:
            return state["rtc"]
        if len(data) > RTC_MEMORY_MAX:
            raise ValueError("rtc memory overflow")
        state["rtc"] = bytes(data)
        state["rtc_writes"] += 1


def reset_cause():
    return state["cause"]


def deepsleep(ms=0):
    raise DeepSleep(ms)


def lightsleep(ms=0):
    state["lightsleeps"].append(ms)


class Pin:
    def __init__(self, n, *args, **kwargs):
        self.n = n


class I2C:
    def __init__(self, bus_id, scl=None, sda=None, freq=None):
        self.args = (bus_id, scl.n, sda.n, freq)


class UART:
    def __init__(self, uart_id, baudrate=9600, tx=None, rx=None, rxbuf=256, timeout=0):
        self.args = (uart_id, baudrate, tx.n, rx.n, rxbuf, timeout)


def power_off():
    state["rtc"] = b""
    state["cause"] = PWRON_RESET


def reset(cause):
    state["cause"] = cause


_saved = []


def install():
    me = sys.modules[__name__]
    _saved.append(sys.modules.get("machine"))
    sys.modules["machine"] = me
    for name in ("firmware.boards.esp32", "firmware.boards.rp2"):
        if name in sys.modules:
            del sys.modules[name]
    state["cause"] = PWRON_RESET
    state["rtc"] = b""
    state["lightsleeps"] = []
    state["rtc_writes"] = 0


def uninstall():
    prev = _saved.pop()
    if prev is None:
        del sys.modules["machine"]
    else:
        sys.modules["machine"] = prev
    for name in ("firmware.boards.esp32", "firmware.boards.rp2"):
        if name in sys.modules:
            del sys.modules[name]
