"""ESP32: Wi-Fi and UDP to the proxy, deep sleep between samples.

Deep sleep powers the chip down except the RTC domain; on wake the board
resets and runs main.py again, so everything the device needs comes back from
the store. Two things live in RTC slow memory (``machine.RTC().memory()``,
2 KB, kept through deep sleep and soft resets, lost on power-off) so a
sleep/wake cycle writes nothing to flash unless asked to:

- the wake note: the clock reading before the sleep and the RTC time
  (``time.time_ns()`` runs through deep sleep), so readings still queued keep
  their true age;
- with ``"rtc_store": true``, the device state itself. Flash then gets a
  copy only when the state's message-number reservation passes the copy's.
  That copy has no session and no queue and reserves FLOOR_AHEAD numbers
  more, so it is rewritten only every ~64 wakes, and after a power loss the
  device re-handshakes and never reuses a message number; what was waiting
  in RTC memory is lost (and said so at the next boot). Without
  ``rtc_store`` the state goes to flash as on every other board: a few flash
  writes per cycle, and a power cut loses nothing.

RTC memory layout: b"LBw1" | mono (f64) | rtc_ns (i64, -1 none) | planned
seconds (f64) | blob length (u16) | blob.
"""

import struct
import time

import machine

from firmware.boards import BaseBoard
from lowbw.device import store as _store

MAGIC = b"LBw1"
_HEAD = "<4sdqdH"
_HEAD_LEN = struct.calcsize(_HEAD)
RTC_MEMORY = 2048
# The flash copy reserves this many message numbers beyond the state's own
# reservation. The device reserves a fresh block at every boot, so without
# the margin every wake would write flash.
FLOOR_AHEAD = 1024


class RtcMemory:
    """The wake note and (optionally) the state blob in RTC slow memory."""

    def __init__(self):
        self.rtc = machine.RTC()
        self.wake = None
        self.blob = b""
        raw = self.rtc.memory()
        if len(raw) >= _HEAD_LEN and raw[:4] == MAGIC:
            _m, mono, rtc, planned, n = struct.unpack(_HEAD, raw[:_HEAD_LEN])
            if _HEAD_LEN + n <= len(raw):
                self.blob = bytes(raw[_HEAD_LEN:_HEAD_LEN + n])
                if planned >= 0:
                    self.wake = (mono, planned, None if rtc < 0 else rtc)
        self.valid = raw[:4] == MAGIC

    def room(self):
        return RTC_MEMORY - _HEAD_LEN

    def write(self):
        mono, planned, rtc = self.wake if self.wake is not None else (0.0, -1.0, None)
        self.rtc.memory(struct.pack(_HEAD, MAGIC, mono, -1 if rtc is None else rtc, planned,
                                    len(self.blob)) + self.blob)


class RtcStore(_store.FileStore):
    """State in RTC memory; flash holds the message-number floor (see above)."""

    def __init__(self, path, mem, log):
        self.mem = mem
        self.floor = 0
        self._flash_full = False
        self.flash_writes = 0
        self._log = log
        _store.FileStore.__init__(self, path)

    def _read(self):
        flash = _store.FileStore._read(self)
        if flash is not None:
            try:
                self.floor = _store.parse(flash)[2]
            except Exception:
                self.floor = 0
        if self.mem.blob:
            return self.mem.blob
        if not self.mem.valid and flash is not None:
            self._log("rtc memory lost (power-off): carrying on from the flash copy; "
                      "readings that were waiting in RTC memory are lost")
        # What flash holds may carry a session: the next write replaces it
        # with a floor copy, or a power cut later would revive stale counters.
        self._flash_full = flash is not None
        return flash

    def _write(self, data):
        # Flash first, RTC memory second: a reset between the two leaves an
        # older RTC state whose reservations were never exceeded.
        if len(data) > self.mem.room():
            self.flash_writes += 1
            _store.FileStore._write(self, data)
            self._flash_full = True
            self.floor = self.mid_limit
            self.mem.blob = b""
            self.mem.write()
            return
        if self.mid_limit > self.floor or self._flash_full:
            keep = self.session, self.queue, self.inflight, self.mid_limit
            floor = self.mid_limit + FLOOR_AHEAD
            self.session, self.queue, self.inflight, self.mid_limit = None, [], None, floor
            try:
                self.flash_writes += 1
                _store.FileStore._write(self, self.encode())
            finally:
                self.session, self.queue, self.inflight, self.mid_limit = keep
            self.floor = floor
            self._flash_full = False
        self.mem.blob = data
        self.mem.write()


class Board(BaseBoard):
    name = "esp32"

    def __init__(self):
        BaseBoard.__init__(self)
        self.mem = RtcMemory()
        self.rtc_store = False

    def rtc_ns(self):
        return time.time_ns()

    def woke_from_deepsleep(self):
        return machine.reset_cause() == machine.DEEPSLEEP_RESET

    def open_store(self, path):
        if self.rtc_store:
            return RtcStore(path, self.mem, self.log)
        return BaseBoard.open_store(self, path)

    def save_wake(self, path, mono, seconds):
        self.mem.wake = (mono, seconds, self.rtc_ns())
        self.mem.write()

    def take_wake(self, path):
        note = self.mem.wake
        if note is None:
            return None
        self.mem.wake = None
        self.mem.write()
        if not self.woke_from_deepsleep():
            return None
        return self._elapsed(note[0], note[1], note[2])

    def lightsleep(self, seconds):
        # Light sleep would drop the Wi-Fi association; stay awake and idle.
        time.sleep_ms(int(seconds * 1000))
