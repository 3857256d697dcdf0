"""lowbw board firmware: a MicroPython sensor that publishes to Matrix.

Modules (all MicroPython code, also importable on CPython for tests):

- ``main``: the entry script (a board's ``/main.py``, or
  ``micropython firmware/main.py CONFIG`` on the unix port);
- ``app``: the application: config, sampling, the link, sleep, commands;
- ``boards``: one module per board family (``esp32``, ``rp2``, ``unix``);
- ``sensors``: the driver interface and drivers (``bme280``, ``ds18b20``,
  ``simulated``);
- ``serial_link``: SLIP over a UART for radio modems;
- ``manifest.py``: freezes lowbw.wire, lowbw.device and this package into a
  firmware image.

docs/PROTOCOL.md, "Firmware", describes the config file and the cycle.
"""
