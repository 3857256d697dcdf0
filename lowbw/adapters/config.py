"""The adapters' TOML config files (``examples/serial-gateway.toml``, ``examples/mqtt-bridge.toml``).

``load_gateway(path)`` and ``load_bridge(path)`` return validated settings or
raise ``AdapterConfigError`` naming the file and the key, e.g.
``gw.toml: serial.baud: expected an integer in 50..4000000``. Relative paths
in a file are relative to the file's directory. Unknown keys are errors (a
misspelt key would otherwise silently keep its default). The keys, defaults
and meaning are documented in docs/adapters.md.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowbw.adapters.line_protocol import FORMATS
from lowbw.wire.errors import LowbwError

PAYLOADS = ("auto", "number", "json", "cbor")
BRIDGE_FORMATS = ("generic", "tts-v3", "chirpstack-v4")
PROTOCOLS = ("5", "3.1.1")


class AdapterConfigError(LowbwError):
    """An adapter config file is missing, unreadable or invalid."""


class _Section:
    """Typed access to one TOML table; every error names ``file: path.key``."""

    def __init__(self, source: str, path: str, table: Any, base: Path) -> None:
        self.source = source
        self.path = path
        self.base = base
        if not isinstance(table, dict):
            self.fail("", "expected a table")
        self.table: dict[str, Any] = table
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return "%s.%s" % (self.path, name) if self.path else name

    def fail(self, name: str, why: str) -> None:
        where = self.key(name) if name else (self.path or "(top level)")
        raise AdapterConfigError("%s: %s: %s" % (self.source, where, why))

    def raw(self, name: str) -> Any:
        self.used.add(name)
        return self.table.get(name)

    def sub(self, name: str, required: bool = False) -> _Section | None:
        v = self.raw(name)
        if v is None:
            if required:
                self.fail(name, "missing (a [%s] table)" % self.key(name))
            return None
        return _Section(self.source, self.key(name), v, self.base)

    def text(self, name: str, default: str | None = None, required: bool = False) -> str | None:
        v = self.raw(name)
        if v is None:
            if required:
                self.fail(name, "missing")
            return default
        if not isinstance(v, str):
            self.fail(name, "expected a string")
        return v

    def req_text(self, name: str) -> str:
        v = self.text(name, required=True)
        assert v is not None
        if not v:
            self.fail(name, "must not be empty")
        return v

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        v = self.raw(name)
        if v is None:
            return default
        if isinstance(v, int | float) and not isinstance(v, bool):
            v = str(v)
        if v not in choices:
            self.fail(name, "expected one of %s, got %r" % (", ".join(repr(c) for c in choices), v))
        return str(v)

    def integer(self, name: str, default: int | None, lo: int, hi: int) -> int:
        v = self.raw(name)
        if v is None:
            if default is None:
                self.fail(name, "missing")
            assert default is not None
            return default
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            self.fail(name, "expected an integer in %d..%d" % (lo, hi))
        return int(v)

    def opt_integer(self, name: str, lo: int, hi: int) -> int | None:
        if self.table.get(name) is None:
            self.used.add(name)
            return None
        return self.integer(name, None, lo, hi)

    def number(self, name: str, default: float, lo: float, hi: float) -> float:
        v = self.raw(name)
        if v is None:
            return default
        if not isinstance(v, int | float) or isinstance(v, bool) or not lo <= v <= hi:
            self.fail(name, "expected a number in %g..%g" % (lo, hi))
        return float(v)

    def boolean(self, name: str, default: bool) -> bool:
        v = self.raw(name)
        if v is None:
            return default
        if not isinstance(v, bool):
            self.fail(name, "expected true or false")
        return bool(v)

    def path_value(self, name: str, default: Path | None = None, required: bool = False) -> Path | None:
        v = self.text(name, required=required)
        if v is None or v == "":
            if required:
                self.fail(name, "must not be empty")
            return default
        p = Path(os.path.expanduser(v))
        return p if p.is_absolute() else self.base / p

    def strings(self, name: str) -> list[str]:
        v = self.raw(name)
        if v is None:
            return []
        if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
            self.fail(name, "expected a list of non-empty strings")
        return list(v)

    def mapping(self, name: str) -> dict[str, str]:
        v = self.raw(name)
        if v is None:
            return {}
        if not isinstance(v, dict) or not all(isinstance(x, str) and x for x in v.values()):
            self.fail(name, 'expected a table of name = "field"')
        return dict(v)

    def done(self) -> None:
        extra = sorted(set(self.table) - self.used)
        if extra:
            self.fail(
                extra[0],
                "unknown key (valid here: %s)" % ", ".join(sorted(self.used)),
            )


def _read_toml(path: str | os.PathLike[str]) -> tuple[str, Path, dict[str, Any]]:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise AdapterConfigError("%s: cannot read config (%s)" % (p, exc.strerror or exc))
    try:
        obj = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise AdapterConfigError("%s: config is not UTF-8" % p)
    except tomllib.TOMLDecodeError as exc:
        raise AdapterConfigError("%s: not valid TOML (%s)" % (p, exc))
    return str(p), p.resolve().parent, obj


def _host_port(sec: _Section, name: str, default: str) -> tuple[str, int]:
    text = sec.text(name, default)
    assert text is not None
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        sec.fail(name, "expected HOST:PORT, got %r" % text)
    return host.strip("[]"), int(port)


# ---- serial gateway ----------------------------------------------------------


@dataclass
class SerialSettings:
    port: str
    baud: int = 9600
    bits_per_byte: int = 10
    reopen_interval: float = 2.0
    out_buffer: int = 4096
    mode: str = "modem"


@dataclass
class ModemSettings:
    proxy_host: str = "127.0.0.1"
    proxy_port: int = 5683
    max_frame: int = 1500
    max_devices: int = 64
    idle_timeout: float = 900.0


@dataclass
class LineSettings:
    device_config: Path
    state: Path
    format: str = "auto"
    max_line: int = 512
    command_poll: float = 300.0
    commands: str = "log"
    time_field: str | None = None
    rename: dict[str, str] = field(default_factory=dict)


@dataclass
class GatewayConfig:
    path: Path
    serial: SerialSettings
    modem: ModemSettings | None = None
    line: LineSettings | None = None
    metrics: Any = None  # lowbw.adapters.metrics.MetricsSettings when [metrics] listen is set


def load_gateway(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read and validate a serial gateway config."""
    source, base, obj = _read_toml(path)
    top = _Section(source, "", obj, base)
    ser = top.sub("serial", required=True)
    assert ser is not None
    port = ser.text("port", required=True)
    assert port is not None
    if not port:
        ser.fail("port", "must not be empty")
    port = os.path.expanduser(port)
    if not os.path.isabs(port):
        port = str(base / port)
    serial = SerialSettings(
        port=port,
        baud=ser.integer("baud", 9600, 50, 4_000_000),
        bits_per_byte=ser.integer("bits_per_byte", 10, 7, 12),
        reopen_interval=ser.number("reopen_interval", 2.0, 0.05, 3600),
        out_buffer=ser.integer("out_buffer", 4096, 64, 16 * 1024 * 1024),
        mode=ser.choice("mode", ("modem", "line"), "modem"),
    )
    ser.done()
    cfg = GatewayConfig(Path(source), serial)
    modem = top.sub("modem")
    line = top.sub("line")
    if serial.mode == "modem":
        sec = modem or _Section(source, "modem", {}, base)
        host, pport = _host_port(sec, "proxy", "127.0.0.1:5683")
        cfg.modem = ModemSettings(
            proxy_host=host,
            proxy_port=pport,
            max_frame=sec.integer("max_frame", 1500, 16, 65535),
            max_devices=sec.integer("max_devices", 64, 1, 65536),
            idle_timeout=sec.number("idle_timeout", 900.0, 1, 7 * 86400),
        )
        sec.done()
        if line is not None:
            top.fail("line", 'a [line] table needs serial.mode = "line"')
    else:
        if line is None:
            top.fail("line", 'missing: serial.mode = "line" needs a [line] table')
        assert line is not None
        dev = line.path_value("device_config", required=True)
        assert dev is not None
        state = line.path_value("state", Path(str(dev) + ".state"))
        assert state is not None
        poll = line.number("command_poll", 300.0, 0, 7 * 86400)
        cfg.line = LineSettings(
            device_config=dev,
            state=state,
            format=line.choice("format", FORMATS, "auto"),
            max_line=line.integer("max_line", 512, 16, 65536),
            command_poll=poll,
            commands=line.choice("commands", ("log", "serial"), "log"),
            time_field=line.text("time_field") or None,
            rename=line.mapping("rename"),
        )
        line.done()
        if modem is not None:
            top.fail("modem", 'a [modem] table needs serial.mode = "modem"')
    cfg.metrics = load_metrics(top)
    top.done()
    return cfg


def load_metrics(top: _Section) -> Any:
    """The optional ``[metrics]`` table (``lowbw.adapters.metrics``)."""
    from lowbw.adapters.metrics import load_metrics as load

    return load(top)


# ---- MQTT bridge ---------------------------------------------------------------


@dataclass
class TlsSettings:
    enabled: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False


@dataclass
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    protocol: str = "5"
    client_id: str = "lowbw-bridge"
    username: str | None = None
    password: str | None = None
    keepalive: int = 30
    session_expiry: int = 7 * 86400
    receive_maximum: int = 20
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0
    tls: TlsSettings = field(default_factory=TlsSettings)

    def __repr__(self) -> str:
        # Never the password.
        return "MqttSettings(%s:%d, MQTT %s, client_id=%s, user=%s, tls=%s)" % (
            self.host,
            self.port,
            self.protocol,
            self.client_id,
            self.username,
            self.tls.enabled,
        )


@dataclass
class BridgeDevice:
    config: Path
    state: Path
    aliases: list[str] = field(default_factory=list)
    commands_topic: str | None = None


@dataclass
class TopicRule:
    filter: str
    device: str | None = None
    device_segment: int | None = None
    slot: str | None = None
    slot_segment: int | None = None
    payload: str = "auto"
    field_name: str | None = None  # the "field" key
    time_field: str | None = None
    rename: dict[str, str] = field(default_factory=dict)


@dataclass
class BridgeConfig:
    path: Path
    mqtt: MqttSettings
    state: Path
    devices: list[BridgeDevice]
    topics: list[TopicRule]
    command_poll: float = 60.0
    commands_topic: str | None = None
    commands_format: str = "json"
    commands_qos: int = 1
    max_payload: int = 65536
    dedup_keep: int = 256
    format: str = "generic"
    lorawan: Any = None  # lowbw.adapters.lorawan.LorawanSettings with a LoRaWAN format
    metrics: Any = None  # lowbw.adapters.metrics.MetricsSettings when [metrics] listen is set


def _check_filter(sec: _Section, name: str, text: str) -> None:
    parts = text.split("/")
    for i, part in enumerate(parts):
        if "#" in part and (part != "#" or i != len(parts) - 1):
            sec.fail(name, "'#' must be a whole last level (%r)" % text)
        if "+" in part and part != "+":
            sec.fail(name, "'+' must be a whole level (%r)" % text)


def load_bridge(path: str | os.PathLike[str]) -> BridgeConfig:
    """Read and validate an MQTT bridge config."""
    source, base, obj = _read_toml(path)
    top = _Section(source, "", obj, base)
    m, mq = load_mqtt(top)
    return _load_bridge_rest(source, base, top, m, mq)


def load_mqtt(top: _Section) -> tuple[_Section, MqttSettings]:
    """The ``[mqtt]`` table (the bridge's, also the LoRaWAN gateway's)."""
    m = top.sub("mqtt", required=True)
    assert m is not None
    password = m.text("password")
    pw_file = m.path_value("password_file")
    if pw_file is not None:
        if password:
            m.fail("password_file", "give password or password_file, not both")
        try:
            password = pw_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeError) as exc:
            m.fail("password_file", "cannot read %s (%s)" % (pw_file, exc))
    tls_sec = m.sub("tls")
    tls = TlsSettings()
    if tls_sec is not None:
        tls = TlsSettings(
            enabled=tls_sec.boolean("enabled", True),
            ca_file=tls_sec.path_value("ca_file"),
            cert_file=tls_sec.path_value("cert_file"),
            key_file=tls_sec.path_value("key_file"),
            insecure=tls_sec.boolean("insecure", False),
        )
        if tls.key_file is not None and tls.cert_file is None:
            tls_sec.fail("key_file", "needs cert_file")
        tls_sec.done()
    mq = MqttSettings(
        host=m.text("host", "127.0.0.1") or "127.0.0.1",
        port=m.integer("port", 8883 if tls.enabled else 1883, 1, 65535),
        protocol=m.choice("protocol", PROTOCOLS, "5"),
        client_id=m.text("client_id", "lowbw-bridge") or "lowbw-bridge",
        username=m.text("username") or None,
        password=password or None,
        keepalive=m.integer("keepalive", 30, 5, 65535),
        session_expiry=m.integer("session_expiry", 7 * 86400, 0, 0xFFFFFFFF),
        receive_maximum=m.integer("receive_maximum", 20, 1, 65535),
        reconnect_min=m.number("reconnect_min", 1.0, 0.1, 3600),
        reconnect_max=m.number("reconnect_max", 60.0, 0.1, 86400),
        tls=tls,
    )
    if mq.password and not mq.username:
        m.fail("password", "a password needs a username")
    if mq.reconnect_max < mq.reconnect_min:
        m.fail("reconnect_max", "must be >= reconnect_min")
    m.done()
    return m, mq


def _load_bridge_rest(source: str, base: Path, top: _Section, m: _Section, mq: MqttSettings) -> BridgeConfig:

    b = top.sub("bridge") or _Section(source, "bridge", {}, base)
    state = b.path_value("state", base / "mqtt-bridge.state")
    assert state is not None
    cfg = BridgeConfig(
        path=Path(source),
        mqtt=mq,
        state=state,
        devices=[],
        topics=[],
        command_poll=b.number("command_poll", 60.0, 0, 7 * 86400),
        commands_topic=b.text("commands_topic") or None,
        commands_format=b.choice("commands_format", ("json", "text"), "json"),
        commands_qos=b.integer("commands_qos", 1, 0, 2),
        max_payload=b.integer("max_payload", 65536, 16, 256 * 1024 * 1024),
        dedup_keep=b.integer("dedup_keep", 256, 16, 1_000_000),
        format=b.choice("format", BRIDGE_FORMATS, "generic"),
    )
    if cfg.dedup_keep < 2 * mq.receive_maximum:
        b.fail("dedup_keep", "must be at least 2 x mqtt.receive_maximum (%d)" % (2 * mq.receive_maximum))
    b.done()

    lorawan = top.sub("lorawan")
    if cfg.format != "generic":
        from lowbw.adapters.lorawan import load_lorawan

        if lorawan is None:
            top.fail("lorawan", 'missing: format = "%s" needs a [lorawan] table' % cfg.format)
        assert lorawan is not None
        cfg.lorawan = load_lorawan(lorawan, cfg, _Section)
        if cfg.format == "tts-v3" and mq.protocol != "3.1.1":
            m.fail("protocol", 'The Things Stack speaks MQTT 3.1.1 only: set protocol = "3.1.1"')
    elif lorawan is not None:
        top.fail("lorawan", 'a [lorawan] table needs bridge.format = "tts-v3" or "chirpstack-v4"')
    devs = top.raw("device")
    if cfg.format != "generic" and devs is None:
        devs = []
    elif not isinstance(devs, list) or not devs:
        top.fail("device", "expected one or more [[device]] tables")
    assert isinstance(devs, list)
    for i, d in enumerate(devs):
        sec = _Section(source, "device[%d]" % i, d, base)
        conf = sec.path_value("config", required=True)
        assert conf is not None
        st = sec.path_value("state", Path(str(conf) + ".state"))
        assert st is not None
        cfg.devices.append(
            BridgeDevice(
                config=conf,
                state=st,
                aliases=sec.strings("aliases"),
                commands_topic=sec.text("commands_topic") or None,
            )
        )
        sec.done()

    topics = top.raw("topic")
    if cfg.format != "generic":
        if topics is not None:
            top.fail(
                "topic", "a LoRaWAN format subscribes to the network server's topics itself: no [[topic]]"
            )
        topics = []
    elif not isinstance(topics, list) or not topics:
        top.fail("topic", "expected one or more [[topic]] tables")
    assert isinstance(topics, list)
    for i, t in enumerate(topics):
        sec = _Section(source, "topic[%d]" % i, t, base)
        filt = sec.req_text("filter")
        _check_filter(sec, "filter", filt)
        slot_raw = sec.raw("slot")
        if slot_raw is not None and not (
            isinstance(slot_raw, str)
            and slot_raw
            or isinstance(slot_raw, int)
            and not isinstance(slot_raw, bool)
        ):
            sec.fail("slot", "expected a slot name or index")
        rule = TopicRule(
            filter=filt,
            device=sec.text("device") or None,
            device_segment=sec.opt_integer("device_segment", 0, 1000),
            slot=None if slot_raw is None else str(slot_raw),
            slot_segment=sec.opt_integer("slot_segment", 0, 1000),
            payload=sec.choice("payload", PAYLOADS, "auto"),
            field_name=sec.text("field") or None,
            time_field=sec.text("time_field") or None,
            rename=sec.mapping("rename"),
        )
        if rule.device is not None and rule.device_segment is not None:
            sec.fail("device_segment", "give device or device_segment, not both")
        if rule.slot is not None and rule.slot_segment is not None:
            sec.fail("slot_segment", "give slot or slot_segment, not both")
        levels = filt.split("/")
        for key, seg in (("device_segment", rule.device_segment), ("slot_segment", rule.slot_segment)):
            if seg is not None and "#" not in levels and seg >= len(levels):
                sec.fail(key, "topic filter %r has only %d levels (0-based)" % (filt, len(levels)))
        if rule.device is None and rule.device_segment is None and len(devs) > 1:
            sec.fail("device", "several devices: say which (device = NAME or device_segment = N)")
        sec.done()
        cfg.topics.append(rule)
    cfg.metrics = load_metrics(top)
    top.done()
    return cfg
