"""The adapters' config files: the examples load, and errors name file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from lowbw.adapters import mqtt_bridge, serial_gateway
from lowbw.adapters.config import AdapterConfigError, load_bridge, load_gateway

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_examples_load():
    gw = load_gateway(EXAMPLES / "serial-gateway.toml")
    assert gw.serial.mode == "modem" and gw.modem is not None and gw.modem.proxy_port == 5683
    assert gw.serial.baud == 9600 and gw.line is None
    br = load_bridge(EXAMPLES / "mqtt-bridge.toml")
    assert [d.config.name for d in br.devices] == ["kitchen.json"]
    assert br.devices[0].config.is_absolute() and br.devices[0].state.name == "kitchen.json.state"
    assert br.topics[1].rename == {"temp": "temperature", "hum": "humidity"}
    assert br.mqtt.password is None or isinstance(br.mqtt.password, str)


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text,where",
    [
        ("", "serial: missing"),
        ('[serial]\nport = "/dev/x"\nbaud = "fast"\n', "serial.baud: expected an integer"),
        ('[serial]\nport = "/dev/x"\nbaudrate = 9600\n', "serial.baudrate: unknown key"),
        ('[serial]\nport = "/dev/x"\nmode = "line"\n', "line: missing"),
        ('[serial]\nport = "/dev/x"\n[modem]\nproxy = "nohost"\n', "modem.proxy: expected HOST:PORT"),
        ('[serial]\nport = "/dev/x"\n[line]\ndevice_config = "d.json"\n', "line: a [line] table needs"),
        ("[serial\n", "not valid TOML"),
    ],
)
def test_gateway_config_errors_name_the_key(tmp_path, text, where):
    with pytest.raises(AdapterConfigError) as exc:
        load_gateway(_write(tmp_path, text))
    assert where in exc.value.message and "c.toml" in exc.value.message


BRIDGE = """
[mqtt]
host = "127.0.0.1"
[[device]]
config = "d.json"
[[topic]]
filter = "a/+/b"
"""


@pytest.mark.parametrize(
    "extra,where",
    [
        ('[[topic]]\nfilter = "a/b#"\n', "topic[1].filter: '#' must be a whole last level"),
        ('[[topic]]\nfilter = "a/b+/c"\n', "'+' must be a whole level"),
        (
            '[[topic]]\nfilter = "a/b"\nslot_segment = 5\n',
            "topic[1].slot_segment: topic filter 'a/b' has only",
        ),
        ('[[topic]]\nfilter = "a"\nslot = "x"\nslot_segment = 0\n', "give slot or slot_segment"),
        ('[[topic]]\nfilter = "a"\npayload = "xml"\n', "topic[1].payload: expected one of"),
        ("[bridge]\ndedup_keep = 20\n", "bridge.dedup_keep: must be at least 2 x"),
    ],
)
def test_bridge_config_errors_name_the_key(tmp_path, extra, where):
    with pytest.raises(AdapterConfigError) as exc:
        load_bridge(_write(tmp_path, BRIDGE + extra))
    assert where in exc.value.message


def test_bridge_config_defaults_and_secrets(tmp_path):
    (tmp_path / "pw").write_text("hunter2\n")
    cfg = load_bridge(
        _write(tmp_path, BRIDGE.replace('host = "127.0.0.1"', 'username = "u"\npassword_file = "pw"'))
    )
    assert cfg.mqtt.password == "hunter2" and "hunter2" not in repr(cfg.mqtt)
    assert cfg.mqtt.protocol == "5" and cfg.topics[0].payload == "auto"
    assert cfg.state == tmp_path / "mqtt-bridge.state"
    with pytest.raises(AdapterConfigError, match="several devices: say which"):
        load_bridge(_write(tmp_path, BRIDGE + '[[device]]\nconfig = "e.json"\n'))


def test_cli_help_and_usage_errors(tmp_path, capsys):
    for mod, prog in ((serial_gateway, "lowbw serial-gateway"), (mqtt_bridge, "lowbw mqtt-bridge")):
        with pytest.raises(SystemExit) as exc:
            mod.main(["--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert prog in out and "--config FILE" in out
        assert mod.main(["--config", str(tmp_path / "missing.toml")]) == 1
        assert "cannot read config" in capsys.readouterr().err
    assert serial_gateway.main(["--config", str(EXAMPLES / "serial-gateway.toml"), "--check"]) == 0
    # The example bridge names device configs that do not exist here.
    assert mqtt_bridge.main(["--config", str(EXAMPLES / "mqtt-bridge.toml"), "--check"]) == 1
    assert "kitchen.json" in capsys.readouterr().err
