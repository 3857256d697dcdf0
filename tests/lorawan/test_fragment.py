"""Fragmentation (lowbw.device.lorawan), the gateway's config, and bad input."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbw.adapters.config import AdapterConfigError
from lowbw.device import lorawan as lw
from lowbw.lorawan.gateway import load_config
from radio_sim.lorawan import LORAWAN_PRESETS

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_cold_handshake_takes_three_dr0_frames_and_answer_two() -> None:
    frames = lw.fragment(bytes(116), 51, 5)
    assert [(p, len(x)) for p, x in frames] == [(2, 51), (2, 51), (2, 17)]
    assert [x[0] for _p, x in frames] == [0x50, 0x52, 0x55]
    assert len(lw.fragment(bytes(52), 51, 0)) == 2
    assert lw.fragment(bytes(29), 51, 0) == [(1, bytes(29))]
    with pytest.raises(lw.FragmentError):
        lw.fragment(bytes(401), 51, 0)


@settings(max_examples=200, deadline=None)
@given(
    st.binary(min_size=1, max_size=400), st.sampled_from([11, 51, 115, 222]), st.integers(0, 15), st.randoms()
)
def test_round_trip_in_any_order(data: bytes, mtu: int, seq: int, rnd: random.Random) -> None:
    try:
        frames = lw.fragment(data, mtu, seq)
    except lw.FragmentError:
        assert len(data) > 8 * (mtu - 1)
        return
    r = lw.Reassembler()
    order = frames[:]
    rnd.shuffle(order)
    out = [r.push(p, x) for p, x in order]
    assert out[-1] == data and all(o is None for o in out[:-1])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=300)), max_size=20))
def test_reassembler_takes_garbage(pushes: list[tuple[int, bytes]]) -> None:
    r = lw.Reassembler(max_fragment=242)
    for port, payload in pushes:
        out = r.push(port, payload)
        assert out is None or isinstance(out, bytes)
        assert len(r.parts) <= 8


def test_bad_fragments_are_counted() -> None:
    r = lw.Reassembler(max_fragment=50)
    assert r.push(2, b"") is None and r.push(2, b"\x01") is None and r.push(2, bytes(60)) is None
    assert r.bad == 3
    a, b = lw.fragment(bytes(range(60)), 51, 1)
    r.push(*a)
    r.push(*lw.fragment(bytes(70), 51, 2)[0])  # a new datagram: the unfinished one goes
    assert r.dropped == 1 and r.push(*b) is None
    r.push(*a)
    r.expire(1e9, 10)
    assert r.dropped == 2 and r.push(*b) is None
    assert r.push(9, b"xx") is None and r.push(1, b"") is None


def test_airtime_matches_radio_sim_and_tts() -> None:
    p = LORAWAN_PRESETS["eu868-dr0"]
    for n in (0, 29, 51):
        assert abs(lw.airtime(13 + n, 12) - p.airtime(n)) < 1e-9
    assert abs(p.airtime(0) - 1.155072) < 1e-9  # TTS consumed_airtime of an empty SF12 frame
    assert LORAWAN_PRESETS["us915-dr0"].max_payload == 11 and LORAWAN_PRESETS["eu868-dr3"].max_payload == 115


def test_gateway_examples_and_errors(tmp_path: Path) -> None:
    tts = load_config(EXAMPLES / "lorawan-gateway-tts.toml")
    assert tts.format == "tts-v3" and tts.downlink_max == 51
    cs = load_config(EXAMPLES / "lorawan-gateway-chirpstack.toml")
    assert cs.format == "chirpstack-v4" and cs.proxy_port == 5683
    for text, where in [
        ('[mqtt]\n[gateway]\napplication = "a"\n', "mqtt.protocol"),
        ('[mqtt]\nprotocol = "3.1.1"\n[gateway]\n', "gateway.application"),
        ('[mqtt]\nprotocol = "3.1.1"\n[gateway]\napplication = "a"\ndownlink_max = 5\n', "downlink_max"),
        ('[mqtt]\nprotocol = "3.1.1"\n[gateway]\napplication = "a"\nproxy = "x"\n', "gateway.proxy"),
        ('[mqtt]\nprotocol = "3.1.1"\n[gateway]\napplication = "a"\nbogus = 1\n', "unknown key"),
    ]:
        p = tmp_path / "g.toml"
        p.write_text(text)
        with pytest.raises(AdapterConfigError) as exc:
            load_config(p)
        assert where in exc.value.message, exc.value.message
