"""The LoRaWAN bridge configs: the examples load, errors name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from lowbw.adapters.config import AdapterConfigError, load_bridge

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_examples_load() -> None:
    tts = load_bridge(EXAMPLES / "lorawan-tts.toml")
    assert tts.format == "tts-v3" and tts.mqtt.protocol == "3.1.1" and tts.devices == [] and tts.topics == []
    lw = tts.lorawan
    assert lw.application == "my-app@ttn" and lw.encrypted and lw.auto_enroll
    assert lw.profiles["raw-counter"].decoder[0].type == "i16"
    assert lw.profiles["env-sensor"].commands["reboot"].payload == b"\x01"
    assert lw.device_profile == {"eui-70b3d57ed0000002": "raw-counter"}
    cs = load_bridge(EXAMPLES / "lorawan-chirpstack.toml")
    assert cs.format == "chirpstack-v4" and cs.lorawan.profiles["env-sensor"].radio[3] == "dr"


BASE = """
[mqtt]
protocol = "%s"
[bridge]
format = "%s"
"""


@pytest.mark.parametrize(
    "fmt,protocol,extra,where",
    [
        ("tts-v3", "3.1.1", "", "lorawan: missing"),
        ("tts-v3", "5", '[lorawan]\napplication = "a"\nproxy_config = "p.toml"\n', "mqtt.protocol"),
        ("chirpstack-v4", "5", '[lorawan]\napplication = "a/b"\nproxy_config = "p"\n', "lorawan.application"),
        ("chirpstack-v4", "5", '[lorawan]\napplication = "a"\n', "lorawan.proxy_config"),
        (
            "chirpstack-v4",
            "5",
            '[lorawan]\napplication = "a"\nproxy_config = "p"\nroom = "x"\n',
            "lorawan.room",
        ),
        (
            "chirpstack-v4",
            "5",
            '[lorawan]\napplication = "a"\nproxy_config = "p"\nbogus = 1\n',
            "unknown key",
        ),
        (
            "chirpstack-v4",
            "5",
            '[lorawan]\napplication = "a"\nproxy_config = "p"\n[lorawan.profile.x]\n'
            'decoder = [{ name = "t", type = "f32" }]\n',
            "type 'f32'",
        ),
        (
            "chirpstack-v4",
            "5",
            '[lorawan]\napplication = "a"\nproxy_config = "p"\n[lorawan.profile.x]\nradio = ["mood"]\n',
            "radio field 'mood'",
        ),
        (
            "chirpstack-v4",
            "5",
            '[lorawan]\napplication = "a"\nproxy_config = "p"\n[lorawan.profile.x.commands]\n'
            'go = { f_port = 0, hex = "00" }\n',
            "commands.go",
        ),
        (
            "chirpstack-v4",
            "5",
            '[lorawan]\napplication = "a"\nproxy_config = "p"\ndefault_profile = "nope"\n',
            "nope",
        ),
        (
            "chirpstack-v4",
            "5",
            '[lorawan]\napplication = "a"\nproxy_config = "p"\n[[topic]]\nfilter = "x"\n',
            "topic",
        ),
        ("generic", "5", '[lorawan]\napplication = "a"\n', "lorawan: a [lorawan] table needs"),
    ],
)
def test_config_errors(tmp_path: Path, fmt: str, protocol: str, extra: str, where: str) -> None:
    p = tmp_path / "c.toml"
    p.write_text(BASE % (protocol, fmt) + extra)
    with pytest.raises(AdapterConfigError) as exc:
        load_bridge(p)
    assert where in exc.value.message, exc.value.message
