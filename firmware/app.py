"""The firmware application: sample, queue, send, sleep, repeat.

The config file is one JSON object: the device config ``lowbw device enroll``
wrote (``lowbw.device.config``), plus a ``board`` object read here:

==============  ==========  ==================================================
key             default     meaning
==============  ==========  ==================================================
type            detected    ``esp32``, ``rp2`` or ``unix`` (sys.platform)
sensor          (required)  ``{"driver": NAME, ...driver options}``;
                            drivers: bme280, ds18b20, simulated
slot            0           the device-config slot the sensor's values go to;
                            its field count must match the sensor's fields
interval        60          seconds between samples (command ``set_interval``)
link            udp         ``{"type": "udp"}`` (host network; ``ssid`` and
                            ``password`` for Wi-Fi; ``host``/``port`` override
                            the proxy address) or ``{"type": "uart", "id",
                            "tx", "rx", "baud", "address": hex}`` (radio modem)
sleep           none        ``none`` (stay awake), ``light``, ``deep``
awake_max       60          seconds a sleeping device stays awake per cycle
                            waiting for the link; unfinished work resumes at
                            the next wake with the same message numbers
state           CONFIG.state  path of the device state (lowbw.device.store)
rtc_store       false       ESP32: keep the state in RTC memory (boards/esp32)
sync_time       false       ask the proxy for the wall time at a cold boot
boot_delay      board's     seconds to wait at a cold boot (REPL access)
==============  ==========  ==================================================

A cycle: take a sample and queue it in the ``Device`` (stored before
anything is sent), bring the link up, drive it until the device is idle
(readings acknowledged, commands fetched and acknowledged) or ``awake_max``
passes, then sleep until the next sample. With ``sleep`` ``none`` the link is
driven while waiting, so retransmissions and late answers are handled at once.

Deep sleep restarts the program on wake. The store carries the session, the
message-number reservation, the queue and the in-flight request across it, so
the device goes on with no handshake and never reuses a nonce or a message
number; the board's wake note (how long it slept) lets ``rebase`` keep the
age of every queued reading true although the clock restarted.

Commands (sent from the room as ``!<device> <command>``): ``set_interval N``
(seconds, 1..604800; kept in ``STATE.settings``), ``sample`` (sample now).
Anything else is logged and acknowledged.
"""

import json

from firmware import boards, sensors
from lowbw.device import config as _devconfig
from lowbw.device.client import Device
from lowbw.device.config import ConfigError

SLEEP_MODES = ("none", "light", "deep")
MIN_SLEEP = 1
MAX_INTERVAL = 604800
LINK_RETRY = 30

try:
    import gc

    _mem_alloc = getattr(gc, "mem_alloc", None)
except ImportError:  # pragma: no cover
    _mem_alloc = None


class Settings:
    """The validated ``board`` object (see the module docstring)."""

    def __init__(self):
        self.type = None
        self.sensor = None
        self.slot = 0
        self.interval = 60
        self.link = {"type": "udp"}
        self.sleep = "none"
        self.awake_max = 60
        self.state = None
        self.rtc_store = False
        self.sync_time = False
        self.boot_delay = None


def _fail(source, key, why):
    raise ConfigError("%sboard.%s: %s" % ((source + ": ") if source else "", key, why))


def _number(obj, key, lo, hi, default, source, integer=False):
    v = obj.get(key, default)
    ok = (isinstance(v, int) or (not integer and isinstance(v, float))) and v is not True and v is not False
    if not ok or not lo <= v <= hi:
        _fail(source, key, "expected %s in %s..%s" % ("an integer" if integer else "a number", lo, hi))
    return v


def parse_board(obj, devcfg, source=""):
    """Settings from the config's ``board`` object; ConfigError naming the key."""
    if obj is None:
        obj = {}
    if not isinstance(obj, dict):
        _fail(source, "(object)", "expected an object")
    s = Settings()
    s.type = obj.get("type")
    if s.type is not None and s.type not in boards.BOARDS:
        _fail(source, "type", "expected one of %s" % ", ".join(boards.BOARDS))
    s.sensor = obj.get("sensor")
    if not isinstance(s.sensor, dict) or s.sensor.get("driver") not in sensors.DRIVERS:
        _fail(source, "sensor", "expected an object with \"driver\": one of %s" % ", ".join(sensors.DRIVERS))
    fields = s.sensor.get("fields")
    if fields is not None and (not isinstance(fields, list) or not fields):
        _fail(source, "sensor.fields", "expected a non-empty list of field names")
    if not isinstance(s.sensor.get("scales", {}), dict):
        _fail(source, "sensor.scales", "expected an object {field: scale}")
    s.slot = _number(obj, "slot", 0, len(devcfg.slots) - 1, 0, source, True)
    s.interval = _number(obj, "interval", 1, MAX_INTERVAL, 60, source)
    link = obj.get("link", {"type": "udp"})
    if not isinstance(link, dict) or link.get("type", "udp") not in ("udp", "uart"):
        _fail(source, "link", "expected an object with \"type\": \"udp\" or \"uart\"")
    if link.get("type") == "uart":
        for key in ("tx", "rx"):
            if key not in link:
                _fail(source, "link." + key, "missing (the UART's pin number)")
        try:
            bytes.fromhex(link.get("address", ""))
        except (ValueError, TypeError):
            _fail(source, "link.address", "expected hex digits")
    s.link = link
    s.sleep = obj.get("sleep", "none")
    if s.sleep not in SLEEP_MODES:
        _fail(source, "sleep", "expected one of %s" % ", ".join(SLEEP_MODES))
    s.awake_max = _number(obj, "awake_max", 1, 86400, 60, source)
    s.state = obj.get("state")
    if s.state is not None and (not isinstance(s.state, str) or not s.state):
        _fail(source, "state", "expected a file path")
    s.rtc_store = obj.get("rtc_store", False) is True
    s.sync_time = obj.get("sync_time", False) is True
    if "boot_delay" in obj:
        s.boot_delay = _number(obj, "boot_delay", 0, 60, 0, source)
    return s


def load_config(path):
    """(raw object, DeviceConfig, Settings) from the config file at ``path``."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError("%s: cannot read the config (%s)" % (path, exc))
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise ConfigError("%s: not valid JSON (%s)" % (path, exc))
    devcfg = _devconfig.from_dict(obj, path)
    return obj, devcfg, parse_board(obj.get("board"), devcfg, path)


def rebase(store, shift):
    """Move every monotonic time in ``store`` by ``shift`` seconds.

    After a deep sleep the clock restarts near zero; the wake note says where
    the old clock would be now, and this moves the queued readings (and the
    store's own timestamp) onto the new clock, so their ages stay true.
    """
    store.rebase(shift)  # absolute (wall-clock) times need no shift
    store.mono += shift


class App:
    def __init__(self, board, path, log=None):
        self.board = board
        self.path = path
        self.log = log or board.log
        self.raw, self.devcfg, self.settings = load_config(path)
        s = self.settings
        self.state_path = s.state or path + ".state"
        self.interval = s.interval
        self._load_settings()
        self.device = None
        self.sensor = None
        self.link = None
        self.samples = 0
        self.sensor_errors = 0
        self.next_sample = 0.0
        self.last_sample = None
        self._link_retry = 0.0

    # --------------------------------------------------------------- set-up

    def _settings_path(self):
        return self.state_path + ".settings"

    def _load_settings(self):
        try:
            with open(self._settings_path()) as f:
                saved = json.loads(f.read())
            v = saved.get("interval")
            if isinstance(v, int) and 1 <= v <= MAX_INTERVAL:
                self.interval = v
        except (OSError, ValueError, AttributeError):
            pass

    def _save_settings(self):
        with open(self._settings_path(), "w") as f:
            f.write(json.dumps({"interval": self.interval}))

    def start(self):
        b = self.board
        s = self.settings
        if s.rtc_store:
            if hasattr(b, "rtc_store"):
                b.rtc_store = True
            else:
                self.log("board.rtc_store ignored: %s has no RTC memory" % b.name)
        woke = b.woke_from_deepsleep()
        store = b.open_store(self.state_path)
        note = b.take_wake(self.state_path + ".wake")
        if note is not None:
            mono, slept = note
            rebase(store, b.clock() - (mono + slept))
            self.log("woke after %.1f s" % slept)
        dev = Device(self.devcfg, store, clock=b.clock, random=b.random, log=self.log)
        dev.on_command = self._on_command
        dev.on_result = self._on_result
        self.device = dev
        if s.sync_time and not woke:
            dev.sync_time()
        self._open_sensor()
        self.log("%s on %s: slot %d every %s s, sleep %s, %d reading(s) waiting" % (
            self.devcfg.name, b.name, s.slot, self.interval, s.sleep, dev.pending()))

    def _open_sensor(self):
        s = self.settings
        try:
            sensor = sensors.load(s.sensor, self.board)
        except OSError as exc:
            self.log("sensor: %s (retrying at the next sample)" % (exc,))
            return
        except ValueError as exc:
            raise ConfigError("%s: board.sensor: %s" % (self.path, exc))
        slot_name, slot_fields = self.devcfg.slots[s.slot]
        if len(sensor.fields) != len(slot_fields):
            raise ConfigError(
                "%s: board.sensor gives %d value(s) but slot %d (%s) has %d field(s); enroll with "
                "--schema '%s' or pick fields with board.sensor.fields" % (
                    self.path, len(sensor.fields), s.slot, slot_name, len(slot_fields),
                    sensor.schema(slot_name)))
        if hasattr(sensor, "index") and self.device is not None:
            # A simulated series continues where the device left it.
            sensor.index = self.device.store.next_rid
        for i in range(len(slot_fields)):
            name, _u, scale = sensor.fields[i]
            fname, _fu, fscale = slot_fields[i]
            if scale != fscale:
                # The proxy would render every value 10**k times off.
                raise ConfigError("%s: board.sensor field %s has scale %d but slot field %s has %d; "
                                  "set board.sensor.scales or enroll with --schema '%s'" % (
                                      self.path, name, scale, fname, fscale, sensor.schema(slot_name)))
            if name != fname:
                self.log("sensor field %s goes to slot field %s" % (name, fname))
        self.sensor = sensor

    # -------------------------------------------------------------- actions

    def sample(self, now):
        slot = self.settings.slot
        values = None
        if self.sensor is None:
            self._open_sensor()
        if self.sensor is not None:
            try:
                values = self.sensor.read()
            except OSError as exc:
                self.log("sensor: %s" % (exc,))
        if values is None:
            # A reading of nulls says "the sensor failed" in the room.
            self.sensor_errors += 1
            values = [None] * self.devcfg.field_count(slot)
        rid = self.device.send(slot, values, now)
        self.samples += 1
        self.last_sample = now
        heap = ""
        if _mem_alloc is not None:
            gc.collect()
            heap = ", heap %d B" % _mem_alloc()
        self.log("sample %d: reading %d = %s (%d waiting%s)" % (
            self.samples, rid, values, self.device.pending(), heap))

    def _on_result(self, rid, status, code, reason):
        self.log("reading %d %s%s" % (rid, status, "" if reason is None else " (%s)" % reason))

    def _on_command(self, cid, sender, body, event_id):
        words = body.split()
        if words and words[0].startswith("!"):
            words = words[1:]  # "!<device> command" if the proxy left the address in
        cmd = words[0] if words else ""
        if cmd == "set_interval" and len(words) == 2:
            try:
                n = int(words[1])
            except ValueError:
                n = 0
            if 1 <= n <= MAX_INTERVAL:
                self.interval = n
                self._save_settings()
                if self.last_sample is not None:
                    self.next_sample = self.last_sample + n
                self.log("command %d from %s: interval now %d s" % (cid, sender, n))
                return
            self.log("command %d from %s: bad interval %r" % (cid, sender, words[1]))
            return
        if cmd == "sample" and len(words) == 1:
            self.next_sample = self.board.clock()
            self.log("command %d from %s: sampling now" % (cid, sender))
            return
        self.log("command %d from %s: unknown %r (acknowledged, ignored)" % (cid, sender, body))

    def _ensure_link(self):
        if self.link is not None:
            return True
        now = self.board.clock()
        if now < self._link_retry:
            return False
        try:
            self.link = self.board.open_link(self.devcfg, self.settings.link, self.log)
        except OSError as exc:
            self._link_retry = now + LINK_RETRY
            self.log("link down: %s (readings stay queued)" % (exc,))
            return False
        return True

    def _close_link(self):
        if self.link is not None:
            self.link.close()
            self.link = None

    # ----------------------------------------------------------------- loop

    def run(self, cycles=None):
        """Sample and send for ever, or until ``cycles`` samples were taken and
        delivered (or ``awake_max`` passed after the last one). Returns a summary."""
        self.start()
        b = self.board
        clock = b.clock
        dev = self.device
        mode = self.settings.sleep
        self.next_sample = clock()
        while True:
            now = clock()
            if now >= self.next_sample and (cycles is None or self.samples < cycles):
                self.sample(now)
                self.next_sample = now + self.interval
            last = cycles is not None and self.samples >= cycles
            if mode == "none" and not last:
                wait = self.next_sample - clock()
                if wait <= 0:
                    continue
                if self.link is not None and not b.link_ok():
                    self.log("link lost: reconnecting")
                    self._close_link()
                if self._ensure_link():
                    self.link.run(dev, until=self._sample_due, timeout=wait)
                else:
                    b.lightsleep(min(wait, LINK_RETRY))
                continue
            if self._ensure_link():
                self.link.run(dev, until=dev.idle, timeout=self.settings.awake_max)
            if last:
                break
            wait = self.next_sample - clock()
            if wait < MIN_SLEEP:
                wait = MIN_SLEEP
            dev.flush()
            if mode == "light":
                self.log("light sleep %.1f s" % wait)
                b.lightsleep(wait)
                continue
            self._deep_sleep(wait)
        return self.stop()

    def _sample_due(self):
        return self.board.clock() >= self.next_sample

    def _deep_sleep(self, seconds):
        self._close_link()
        self.log("deep sleep %.1f s (%d reading(s) waiting)" % (seconds, self.device.pending()))
        self.board.save_wake(self.state_path + ".wake", self.board.clock(), seconds)
        self.board.deepsleep(seconds)

    def stop(self):
        """Save the state, close the link; return a summary dict."""
        dev = self.device
        if dev is not None:
            dev.flush()
        self._close_link()
        out = {"samples": self.samples, "sensor_errors": self.sensor_errors,
               "pending": dev.pending() if dev is not None else 0}
        if dev is not None:
            for k in ("sent", "acked", "rejected", "dropped", "handshakes", "bytes_up", "bytes_down"):
                out[k] = dev.counters[k]
        return out


def _usage():
    print("usage: micropython firmware/main.py [CONFIG] [--cycles N]")


def main(argv=()):
    """Run the firmware; on a board with no arguments, ``/config.json``."""
    import sys
    import time

    path = None
    cycles = None
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "--cycles" and args:
            cycles = int(args.pop(0))
        elif a in ("-h", "--help"):
            _usage()
            return 0
        elif a.startswith("-") or path is not None:
            _usage()
            return 2
        else:
            path = a
    name = boards.detect()
    board = boards.load(name)
    if path is None:
        path = board.config_path
    try:
        _raw, _devcfg, settings = load_config(path)
    except ConfigError as exc:
        print("lowbw firmware: %s" % exc.message)
        return 2
    if settings.type is not None and settings.type != name:
        board = boards.load(settings.type)
    if not board.woke_from_deepsleep():
        delay = board.boot_delay if settings.boot_delay is None else settings.boot_delay
        if delay:
            print("lowbw firmware: starting in %s s (Ctrl-C for the REPL)" % delay)
            time.sleep(delay)
    while True:
        app = None
        try:
            app = App(board, path)
            summary = app.run(cycles)
        except boards.SoftReboot:
            if cycles is not None:
                cycles -= app.samples
            continue
        except ConfigError as exc:
            print("lowbw firmware: %s" % exc.message)
            return 2
        except KeyboardInterrupt:
            if app is not None and app.device is not None:
                summary = app.stop()
                board.log("stopped: %s" % json.dumps(summary))
            return 0
        except Exception as exc:
            if board.name == "unix":
                raise
            # A field device must not sit in the REPL: log, then reset and
            # carry on from the store.
            board.log("crashed: %r; reset in 10 s" % (exc,))
            sys.print_exception(exc)
            time.sleep(10)
            board.reset()
        board.log("done: %s" % json.dumps(summary))
        return 0
