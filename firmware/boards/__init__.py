"""Board support: what differs between an ESP32, an RP2040 and the unix port.

A board module defines ``Board`` (a subclass of ``BaseBoard`` below) with:

- ``clock()``: monotonic seconds (``Clock``: integer milliseconds underneath,
  so the value never stops advancing on ports whose floats are 32-bit);
- ``random(n)``: n random bytes (ephemeral keys, timer jitter);
- ``i2c(spec)``, ``onewire(spec)``, ``uart(spec)``: buses for sensors and modems;
- ``open_store(path)``: the device state (``lowbw.device.store``) on flash;
- ``open_link(devcfg, spec, log)``: the link to the proxy: ``udp`` (the host
  network, or Wi-Fi with ``ssid``/``password``) or ``uart`` (a radio modem
  with SLIP framing, ``firmware.serial_link``);
- ``save_wake(path, mono, seconds)`` before a deep sleep and ``take_wake(path)``
  after it: how long the board slept, so the ages of readings still queued
  stay right although the clock restarts at every wake;
- ``deepsleep(seconds)`` (does not return on a real board: the board resets
  on wake and runs main.py again), ``lightsleep(seconds)``;
- ``woke_from_deepsleep()``, ``link_ok()`` (Wi-Fi still associated),
  ``reset()`` (after an unexpected error, so a field device recovers).

``detect()`` picks the module for ``sys.platform``; ``load(name)`` imports one.
"""

import os
import sys
import time

BOARDS = ("esp32", "rp2", "unix")

try:
    _ticks_ms = time.ticks_ms
    _ticks_diff = time.ticks_diff
except AttributeError:  # CPython (tests)

    def _ticks_ms():
        return int(time.monotonic() * 1000)

    def _ticks_diff(a, b):
        return a - b


class Clock:
    """Monotonic seconds from ticks_ms, accumulated as an integer.

    ticks_ms wraps (2**30 ms on most ports) and ESP32/RP2040 floats are
    single precision, so adding small float steps to a large float total would
    eventually stop the clock; an integer total converted on each call cannot.
    """

    def __init__(self, start_ms=None):
        self._last = _ticks_ms()
        self._ms = self._last if start_ms is None else start_ms

    def ms(self):
        t = _ticks_ms()
        self._ms += _ticks_diff(t, self._last)
        self._last = t
        return self._ms

    def __call__(self):
        return self.ms() / 1000


class SoftReboot(Exception):
    """Raised by a board whose deep sleep is emulated (the unix port): the
    application starts over from its store, as a real board would on wake."""


def _read_text(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


class BaseBoard:
    name = "generic"
    # Where main.py looks for the config when none is given.
    config_path = "/config.json"
    # Seconds to wait at a cold boot before starting, so a developer can break
    # into the REPL of a board that would otherwise go straight to deep sleep.
    boot_delay = 3

    def __init__(self):
        self.clock = Clock()
        self._wlan = None

    # ---------------------------------------------------------------- basics

    def random(self, n):
        return os.urandom(n)

    def log(self, text):
        print("%9.3f %s" % (self.clock(), text))

    def rtc_ns(self):
        """Nanoseconds from a clock that keeps running through deep sleep, or None."""
        return None

    def woke_from_deepsleep(self):
        return False

    # ----------------------------------------------------------------- buses

    def i2c(self, spec):
        import machine

        return machine.I2C(spec.get("id", 0), scl=machine.Pin(spec["scl"]), sda=machine.Pin(spec["sda"]),
                           freq=spec.get("freq", 100000))

    def onewire(self, spec):
        import machine
        import onewire

        return onewire.OneWire(machine.Pin(spec["pin"]))

    def uart(self, spec):
        import machine

        return machine.UART(spec.get("id", 0), baudrate=spec.get("baud", 9600), tx=machine.Pin(spec["tx"]),
                            rx=machine.Pin(spec["rx"]), rxbuf=spec.get("rxbuf", 1024), timeout=0)

    # ----------------------------------------------------------- state, link

    def open_store(self, path):
        from lowbw.device.store import FileStore

        return FileStore(path)

    def network_up(self, spec, log):
        """Join the Wi-Fi network in ``spec`` (ssid, password) if there is one."""
        ssid = spec.get("ssid")
        if not ssid:
            return
        import network

        wlan = self._wlan
        if wlan is None:
            iface = getattr(getattr(network, "WLAN", None), "IF_STA", None)
            if iface is None:
                iface = network.STA_IF  # MicroPython before 1.24
            wlan = self._wlan = network.WLAN(iface)
        wlan.active(True)
        if wlan.isconnected():
            return
        wlan.connect(ssid, spec.get("password", ""))
        limit = self.clock() + spec.get("connect_timeout", 20)
        while not wlan.isconnected():
            if self.clock() > limit:
                wlan.active(False)
                raise OSError("wi-fi: could not join %r (status %r)" % (ssid, wlan.status()))
            time.sleep_ms(100)
        log("wi-fi: joined %r as %s" % (ssid, wlan.ifconfig()[0]))

    def network_down(self):
        if self._wlan is not None:
            self._wlan.active(False)

    def link_ok(self):
        """False when the Wi-Fi association was lost (the link must be reopened)."""
        return self._wlan is None or self._wlan.isconnected()

    def reset(self):
        import machine

        machine.reset()

    def open_link(self, devcfg, spec, log):
        kind = spec.get("type", "udp")
        if kind == "udp":
            self.network_up(spec, log)
            from lowbw.device.udp import UdpLink

            return UdpLink(spec.get("host", devcfg.proxy_host), spec.get("port", devcfg.proxy_port), log)
        if kind == "uart":
            from firmware.serial_link import SerialLink

            addr = bytes.fromhex(spec.get("address", ""))
            return SerialLink(self.uart(spec), addr, log, spec.get("max_frame", 512))
        raise OSError("link.type %r is not supported on %s" % (kind, self.name))

    # ----------------------------------------------------------------- sleep

    def save_wake(self, path, mono, seconds):
        """Note, before a deep sleep of ``seconds``, the clock reading ``mono``."""
        rtc = self.rtc_ns()
        with open(path, "w") as f:
            f.write("%r %r %r" % (mono, seconds, rtc))

    def take_wake(self, path):
        """(mono before the sleep, seconds slept) if this boot is a wake from
        a deep sleep we noted, else None. The note is used once."""
        text = _read_text(path)
        if text is None:
            return None
        _remove(path)
        if not self.woke_from_deepsleep():
            return None
        parts = text.split()
        try:
            mono = float(parts[0])
            planned = float(parts[1])
            rtc = None if parts[2] == "None" else int(parts[2])
        except (IndexError, ValueError):
            return None
        return self._elapsed(mono, planned, rtc)

    def _elapsed(self, mono, planned, rtc):
        slept = planned
        now = self.rtc_ns()
        if rtc is not None and now is not None:
            measured = (now - rtc) / 1e9
            # Trust the running clock unless it was reset meanwhile.
            if 0 <= measured < planned * 2 + 60:
                slept = measured
        return mono, slept

    def lightsleep(self, seconds):
        import machine

        machine.lightsleep(int(seconds * 1000))

    def deepsleep(self, seconds):
        import machine

        self.network_down()
        machine.deepsleep(int(seconds * 1000))


def load(name):
    if name not in BOARDS:
        raise ValueError("board.type: expected one of %s, got %r" % (", ".join(BOARDS), name))
    mod = __import__("firmware.boards." + name, None, None, ["Board"])
    return mod.Board()


def detect():
    p = sys.platform
    if p == "esp32":
        return "esp32"
    if p == "rp2":
        return "rp2"
    return "unix"
