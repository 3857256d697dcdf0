"""RP2040 (Raspberry Pi Pico) with a radio modem on a UART.

The link is ``uart``: SLIP frames (``lowbw.wire.slip``, with the modem's link
address) over ``machine.UART``, see ``firmware.serial_link``. A Pico W may use
``udp`` over Wi-Fi instead, exactly as the ESP32 does.

Sleep: ``light`` keeps RAM and the program running (``machine.lightsleep``:
clocks stopped, the UART deaf until the timer wakes the chip), which is the
natural mode for the RP2040; ``deep`` is MicroPython's ``machine.deepsleep``
(light sleep then a watchdog reset), after which main.py starts over from
the store. Both are done in slices of at most an hour, the longest single
``machine.lightsleep`` the port accepts.

The RP2040 has no memory that survives the reset, so the wake note goes to a
small file next to the state; its sleep time is the planned one (no clock
runs through the reset).
"""

import machine

from firmware.boards import BaseBoard

# machine.lightsleep refuses 2**32 microseconds (71 minutes) or more.
MAX_SLEEP = 3600


class Board(BaseBoard):
    name = "rp2"

    def woke_from_deepsleep(self):
        # deepsleep ends in a watchdog reset; a power-on cannot be a wake.
        return machine.reset_cause() != machine.PWRON_RESET

    def _long_sleep(self, seconds):
        while seconds > MAX_SLEEP:
            machine.lightsleep(MAX_SLEEP * 1000)
            seconds -= MAX_SLEEP
        return int(seconds * 1000)

    def lightsleep(self, seconds):
        machine.lightsleep(self._long_sleep(seconds))

    def deepsleep(self, seconds):
        self.network_down()
        machine.deepsleep(self._long_sleep(seconds))
