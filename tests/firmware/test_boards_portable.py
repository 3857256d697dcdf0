"""Board, link, sensor and application pieces, on CPython and on MicroPython.

Plain ``test_*`` functions with asserts (tests/portable/mp_run.py
runs this module under the MicroPython unix port; pytest runs it here). The
hardware is replaced by named test doubles: ``fake_machine`` for MicroPython's
machine module (RTC memory, reset cause, sleep), ``FakeSerial`` for a UART
with a radio modem behind it, and ProxyCore (tests/firmware/proxycore.py) for
the proxy. Device clocks are manual, so nothing here waits for real time.
"""

import os

from firmware import app, boards, sensors
from firmware.sensors import ds18b20, simulated
from firmware.serial_link import SerialLink
from lowbw.device import config as devconfig
from lowbw.device import store as devstore
from lowbw.device.client import Device
from lowbw.device.config import ConfigError
from lowbw.wire import crypto, slip
from tests.firmware import fake_machine
from tests.firmware.proxycore import ProxyCore
from tests.portable.check import raises

# Need code the device does not freeze (the proxy's Noise responder, the
# in-memory store): run on the full tree only (tests/portable/mp_run.py).
FULL_TREE = (
    "test_esp32_power_loss_falls_back_to_flash_without_reusing_message_ids",
    "test_esp32_rtc_store_carries_the_session_through_deep_sleep",
    "test_esp32_state_too_big_for_rtc_memory_goes_to_flash_whole",
    "test_rebase_moves_relative_times_only",
    "test_serial_link_drives_a_device_over_slip",
    "test_serial_link_times_out_when_nothing_answers",
)


TMP = "/tmp"


def _tmp(name):
    path = "%s/lowbw-fw-%s-%s" % (TMP, name, os.urandom(4).hex())
    return path


def _cleanup(path):
    for p in (path, path + ".tmp", path + ".wake"):
        try:
            os.remove(p)
        except OSError:
            pass


class Setup:
    """Keys, a device config and a ProxyCore that knows the device."""

    def __init__(self, extra=None):
        self.device_priv = os.urandom(32)
        self.proxy_priv = os.urandom(32)
        obj = {
            "version": 1, "name": "sensor1",
            "proxy": {"host": "127.0.0.1", "port": 5683,
                      "public_key": crypto.x25519_base(self.proxy_priv).hex()},
            "device_private_key": self.device_priv.hex(), "link_bps": 100,
            "slots": [{"name": "climate", "fields": [{"name": "temperature", "unit": "°C", "scale": 1},
                                                     {"name": "humidity", "unit": "%", "scale": 0}]}],
        }
        if extra:
            obj.update(extra)
        self.obj = obj
        self.cfg = devconfig.from_dict(obj)
        self.core = ProxyCore(self.proxy_priv, crypto.x25519_base(self.device_priv))
        self.now = [1000.0]

    def clock(self):
        return self.now[0]

    def device(self, store):
        return Device(self.cfg, store, clock=self.clock, random=os.urandom)

    def exchange(self, dev, rounds=12):
        """Drive ``dev`` against the core until idle (datagrams delivered at once)."""
        for _ in range(rounds):
            out = dev.step(self.now[0])
            for d in out:
                answer = self.core.handle(d)
                if answer is not None:
                    dev.receive(answer, self.now[0])
            if not out and dev.idle():
                return
        raise AssertionError("device not idle after %d rounds" % rounds)


# ------------------------------------------------------------------- esp32


def test_esp32_rtc_store_carries_the_session_through_deep_sleep():
    fake_machine.install()
    path = _tmp("rtc")
    try:
        from firmware.boards import esp32

        su = Setup()
        board = esp32.Board()
        board.rtc_store = True
        store = board.open_store(path)
        dev = su.device(store)
        dev.send(0, [215, 40])
        su.exchange(dev)
        assert su.core.handshakes == 1 and len(su.core.readings) == 1
        # One flash write: the message-number floor. The rest went to RTC memory.
        assert store.flash_writes == 1
        assert fake_machine.state["rtc_writes"] > 1
        board.save_wake(path + ".wake", su.now[0], 60)

        for cycle in range(3):
            fake_machine.reset(fake_machine.DEEPSLEEP_RESET)
            su.now[0] += 60
            board = esp32.Board()
            board.rtc_store = True
            assert board.woke_from_deepsleep()
            note = board.take_wake(path + ".wake")
            assert note is not None and note[0] < su.now[0]
            store = board.open_store(path)
            assert store.session is not None
            dev = su.device(store)
            dev.send(0, [216 + cycle, 41])
            su.exchange(dev)
            assert store.flash_writes == 0, "a wake wrote flash"
            board.save_wake(path + ".wake", su.now[0], 60)
        assert su.core.handshakes == 1
        assert len(su.core.readings) == 4
    finally:
        fake_machine.uninstall()
        _cleanup(path)


def test_esp32_power_loss_falls_back_to_flash_without_reusing_message_ids():
    fake_machine.install()
    path = _tmp("power")
    try:
        from firmware.boards import esp32

        su = Setup()
        mids = []
        for _ in range(3):
            board = esp32.Board()
            board.rtc_store = True
            dev = su.device(board.open_store(path))
            for i in range(5):
                dev.send(0, [200 + i, 50])
                su.exchange(dev)
            fake_machine.reset(fake_machine.DEEPSLEEP_RESET)
        mids = [r[0] for r in su.core.readings]
        assert su.core.handshakes == 1
        logged = []
        fake_machine.power_off()
        board = esp32.Board()
        board.rtc_store = True
        board.log = logged.append
        store = board.open_store(path)
        assert store.session is None and store.queue == [] and store.inflight is None
        assert "power-off" in logged[0]
        dev = su.device(store)
        dev.send(0, [199, 49])
        su.exchange(dev)
        assert su.core.handshakes == 2
        new_mid = su.core.readings[-1][0]
        assert new_mid not in mids and new_mid > max(mids)
    finally:
        fake_machine.uninstall()
        _cleanup(path)


def test_esp32_state_too_big_for_rtc_memory_goes_to_flash_whole():
    fake_machine.install()
    path = _tmp("big")
    try:
        from firmware.boards import esp32

        su = Setup({"client": {"queue_limit": 200}})
        board = esp32.Board()
        board.rtc_store = True
        store = board.open_store(path)
        dev = su.device(store)
        n = 0
        while len(store.encode()) <= board.mem.room():
            dev.send(0, [100 + n, 30])
            n += 1
        assert board.mem.blob == b""
        # A power cut now loses nothing: flash holds the whole queue.
        fake_machine.power_off()
        board = esp32.Board()
        board.rtc_store = True
        store2 = board.open_store(path)
        assert len(store2.queue) == n
        dev = su.device(store2)
        su.exchange(dev, rounds=200)
        assert len(su.core.readings) == n
        # Drained, it fits RTC memory again; the flash copy is a floor once more.
        assert board.mem.blob != b""
        kid, session, mid_limit, queue = devstore.parse(open(path, "rb").read())[:4]
        assert session is None and queue == [] and mid_limit > max(r[0] for r in su.core.readings)
    finally:
        fake_machine.uninstall()
        _cleanup(path)


def test_esp32_wake_note_in_rtc_memory():
    fake_machine.install()
    try:
        from firmware.boards import esp32

        board = esp32.Board()
        board.save_wake("unused", 123.5, 30)
        fake_machine.reset(fake_machine.DEEPSLEEP_RESET)
        board = esp32.Board()
        mono, slept = board.take_wake("unused")
        assert mono == 123.5
        # time_ns ran (barely) between the two: measured, not the planned 30 s.
        assert 0 <= slept < 5
        assert board.take_wake("unused") is None  # used once
        board.save_wake("unused", 1.0, 30)
        fake_machine.power_off()
        assert esp32.Board().take_wake("unused") is None
    finally:
        fake_machine.uninstall()


def test_esp32_deepsleep_calls_machine():
    fake_machine.install()
    try:
        from firmware.boards import esp32

        e = raises(fake_machine.DeepSleep, esp32.Board().deepsleep, 2.5)
        assert e.args[0] == 2500
    finally:
        fake_machine.uninstall()


# --------------------------------------------------------------------- rp2


def test_rp2_wake_note_uses_the_planned_time():
    fake_machine.install()
    path = _tmp("rp2")
    try:
        from firmware.boards import rp2

        board = rp2.Board()
        assert not board.woke_from_deepsleep()
        board.save_wake(path, 50.25, 42)
        fake_machine.reset(fake_machine.WDT_RESET)
        board = rp2.Board()
        assert board.take_wake(path) == (50.25, 42.0)
        assert board.take_wake(path) is None
        board.lightsleep(1.5)
        assert fake_machine.state["lightsleeps"] == [1500]
        e = raises(fake_machine.DeepSleep, board.deepsleep, 2 * 3600 + 5)
        assert fake_machine.state["lightsleeps"] == [1500, 3600000, 3600000] and e.args[0] == 5000
        uart = board.uart({"id": 1, "tx": 4, "rx": 5, "baud": 19200})
        assert uart.args == (1, 19200, 4, 5, 1024, 0)
        i2c = board.i2c({"scl": 3, "sda": 2})
        assert i2c.args == (0, 3, 2, 100000)
    finally:
        fake_machine.uninstall()
        _cleanup(path)


# --------------------------------------------------------------- the clock


def test_clock_is_monotonic_across_tick_wraparound():
    saved = boards._ticks_ms, boards._ticks_diff
    period = 1 << 30
    ticks = [period - 500]

    def diff(a, b):
        return ((a - b + period // 2) % period) - period // 2

    boards._ticks_ms = lambda: ticks[0]
    boards._ticks_diff = diff
    try:
        c = boards.Clock(0)
        seen = []
        for _ in range(10):
            ticks[0] = (ticks[0] + 300) % period
            seen.append(c.ms())
        assert seen == [300 * (i + 1) for i in range(10)]
        assert c() == 3.0
    finally:
        boards._ticks_ms, boards._ticks_diff = saved


# ------------------------------------------------------------- serial link


class FakeSerial:
    """A UART with a radio modem behind it that delivers to ``core``: a test double.

    Frames the device writes are decoded as the modem would; the answer comes
    back with the same link address, preceded by line noise and a frame for
    another address, which the link must skip."""

    def __init__(self, core, address):
        self.core = core
        self.address = address
        self.decoder = slip.Decoder()
        self.rx = bytearray()
        self.frames_seen = 0

    def write(self, data):
        for frame in self.decoder.feed(data):
            addr, datagram = slip.split_addressed(frame)
            assert addr == self.address
            self.frames_seen += 1
            answer = self.core.handle(datagram)
            if answer is not None:
                self.rx += b"\x01\x02noise"
                self.rx += slip.encode_addressed(b"\x09", b"not for you")
                self.rx += slip.encode_addressed(self.address, answer)
        return len(data)

    def any(self):
        return len(self.rx)

    def read(self, n):
        out = bytes(self.rx[:n])
        self.rx = self.rx[n:]
        return out


def test_serial_link_drives_a_device_over_slip():
    su = Setup()
    port = FakeSerial(su.core, b"\x07")
    link = SerialLink(port, b"\x07", poll_ms=0)
    dev = su.device(devstore.MemoryStore())
    for i in range(3):
        dev.send(0, [210 + i, 45])
        assert link.run(dev, until=dev.idle, timeout=5, clock=su.clock)
    assert [r[2] for r in su.core.readings] == [[210, 45], [211, 45], [212, 45]]
    assert su.core.handshakes == 1
    # Per answer: the noise (it parses as a frame for address 02) and the frame for 09.
    assert link.foreign + link.malformed == 6
    assert link.received == 3 and link.sent == 3


def test_serial_link_times_out_when_nothing_answers():
    su = Setup()

    class Deaf:
        def write(self, data):
            return len(data)

        def any(self):
            return 0

        def read(self, n):
            return None

    t = [0.0]

    def clock():
        t[0] += 0.5
        return t[0]

    link = SerialLink(Deaf(), poll_ms=0)
    dev = Device(su.cfg, devstore.MemoryStore(), clock=clock, random=os.urandom)
    dev.send(0, [1, 2])
    assert link.run(dev, until=dev.idle, timeout=30, clock=clock) is False
    assert dev.pending() == 1 and link.sent >= 1


# ------------------------------------------------------------------ config


def _board_error(board, devcfg=None):
    cfg = devcfg or Setup().cfg
    return raises(ConfigError, app.parse_board, board, cfg, "c.json").message


def test_board_section_is_validated_with_the_key_named():
    sim = {"driver": "simulated"}
    assert "board.sensor" in _board_error({})
    assert "board.sensor" in _board_error({"sensor": {"driver": "bmp180"}})
    assert "board.slot" in _board_error({"sensor": sim, "slot": 1})
    assert "board.interval" in _board_error({"sensor": sim, "interval": 0})
    assert "board.interval" in _board_error({"sensor": sim, "interval": True})
    assert "board.sleep" in _board_error({"sensor": sim, "sleep": "hibernate"})
    assert "board.link" in _board_error({"sensor": sim, "link": {"type": "lora"}})
    assert "board.link.rx" in _board_error({"sensor": sim, "link": {"type": "uart", "tx": 1}})
    assert "board.link.address" in _board_error(
        {"sensor": sim, "link": {"type": "uart", "tx": 1, "rx": 2, "address": "zz"}})
    assert "board.type" in _board_error({"sensor": sim, "type": "stm32"})
    assert _board_error({"sensor": sim, "awake_max": -1}).startswith("c.json: board.awake_max")
    s = app.parse_board({"sensor": sim, "interval": 0.5 + 9.5, "sleep": "deep"}, Setup().cfg)
    assert s.interval == 10 and s.sleep == "deep" and s.awake_max == 60 and s.link == {"type": "udp"}


def test_rebase_moves_relative_times_only():
    st = devstore.MemoryStore()
    st.queue = [[0, 0, [1], 100.0, False], [1, 0, [2], 1795000000.0, True]]
    st.mid_limit = 16
    st.inflight = [3, "v", [[2, 0, [3], 90.0, False]]]
    st.mono = 120.0
    app.rebase(st, -110.0)
    assert st.queue[0][3] == -10.0 and st.queue[1][3] == 1795000000.0
    assert st.inflight[2][0][3] == -20.0
    assert st.mono == 10.0


# ----------------------------------------------------------------- sensors


def test_simulated_sensor_is_a_function_of_seed_and_index():
    a = simulated.Simulated(seed=3)
    first = [a.read() for _ in range(6)]
    b = simulated.Simulated(seed=3)
    b.index = 4
    assert [b.read(), b.read()] == first[4:]
    assert simulated.Simulated(seed=4).read() != first[0] or simulated.Simulated(seed=5).read() != first[0]
    for v in first:
        assert 150 <= v[0] <= 300 and 20 <= v[1] <= 80
    f = simulated.Simulated(seed=1, fail_every=3)
    f.read()
    f.read()
    raises(OSError, f.read)
    assert f.read() is not None
    t = simulated.Simulated(seed=1, fields=["humidity"])
    assert t.read() == [simulated.Simulated(seed=1).value(0)[1]]
    assert t.schema("rh") == "rh=humidity:%:0"


def test_scaling_down_rounds_half_away_from_zero():
    assert sensors._scale_down(25, 10) == 3 and sensors._scale_down(24, 10) == 2
    assert sensors._scale_down(-25, 10) == -3 and sensors._scale_down(-24, 10) == -2
    assert sensors._scale_down(None, 100) is None and sensors._scale_down(7, 1) == 7
    assert sensors._scale_down(21.5, 10) == 2.15
    s = sensors.load({"driver": "simulated", "scales": {"temperature": 0}}, None)
    assert s.fields[0] == ("temperature", "°C", 0)
    v = s.read()[0]
    assert v == (simulated.Simulated().value(0)[0] + 5) // 10
    raises(ValueError, sensors.load, {"driver": "simulated", "scales": {"humidity": 1}}, None)


def test_sensor_loader_names_the_drivers():
    e = raises(ValueError, sensors.load, {"driver": "bmp180"}, None)
    assert "bme280" in str(e)
    s = sensors.load({"driver": "simulated", "seed": 9}, None)
    assert s.fields == simulated.Simulated.FIELDS


def test_ds18b20_conversion():
    # Datasheet table 1: raw counts of 1/16 °C.
    assert ds18b20.centi_celsius(0xD0, 0x07) == 12500
    assert ds18b20.centi_celsius(0x91, 0x01) == 2506  # 25.0625
    assert ds18b20.centi_celsius(0x08, 0x00) == 50  # 0.5
    assert ds18b20.centi_celsius(0x00, 0x00) == 0
    assert ds18b20.centi_celsius(0xF8, 0xFF) == -50  # -0.5
    assert ds18b20.centi_celsius(0x5E, 0xFF) == -1013  # -10.125
    assert ds18b20.centi_celsius(0x90, 0xFC) == -5500


def test_config_example_is_valid_once_enrolled():
    import json

    here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
    with open(here + "/../../firmware/config.example.json") as f:
        obj = json.loads(f.read())
    # What enroll fills in.
    obj["proxy"]["public_key"] = "ab" * 32
    obj["device_private_key"] = "cd" * 32
    cfg = devconfig.from_dict(obj)
    s = app.parse_board(obj["board"], cfg)
    assert s.type == "esp32" and s.sleep == "deep" and s.interval == 300
    assert s.sensor["driver"] == "bme280" and s.link["type"] == "udp"
    # The sensor's fields at the example's scales are the enrolled slot's fields.
    from firmware.sensors import bme280

    fields = bme280.BME280.FIELDS
    scaled = [(n, u, obj["board"]["sensor"]["scales"][n]) for n, u, _ in fields]
    assert scaled == cfg.slots[s.slot][1]


def _app_with(board_section, name):
    import json

    su = Setup()
    obj = dict(su.obj)
    obj["board"] = board_section
    path = _tmp(name)
    with open(path, "w") as f:
        f.write(json.dumps(obj))
    b = boards.load("unix")
    b.log = lambda text: None
    return app.App(b, path), path


def test_sensor_and_slot_must_agree_on_scales():
    a, path = _app_with({"type": "unix", "sensor": {"driver": "simulated", "scales": {"temperature": 0}}},
                        "scale")
    try:
        e = raises(ConfigError, a.start)
        assert "scale 0 but slot field temperature has 1" in e.message
        assert "--schema 'climate=temperature:°C:0,humidity:%:0'" in e.message
    finally:
        _cleanup(path)
        _cleanup(path + ".state")


def test_commands_change_the_interval_and_persist_it():
    a, path = _app_with({"type": "unix", "sensor": {"driver": "simulated"}, "interval": 30}, "cmd")
    try:
        a.start()
        a.last_sample = 100.0
        a._on_command(1, "@a:x", "set_interval 90", "$e")
        assert a.interval == 90 and a.next_sample == 190.0
        a._on_command(2, "@a:x", "!sensor1 set_interval 0", "$e")
        a._on_command(3, "@a:x", "set_interval soon", "$e")
        assert a.interval == 90
        a._on_command(4, "@a:x", "sample", "$e")
        assert a.next_sample <= a.board.clock()
        b, _ = _app_with({"type": "unix", "sensor": {"driver": "simulated"}, "interval": 30}, "cmd2")
        b.state_path = a.state_path
        b._load_settings()
        assert b.interval == 90
        _cleanup(b.path)
    finally:
        a.stop()
        for p in (path, path + ".state", path + ".state.settings"):
            _cleanup(p)
