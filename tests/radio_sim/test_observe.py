"""Event log, pcap and plot."""

import json
import shutil
import subprocess

import pytest

from radio_sim.observe import EventLog, PcapWriter, read_log
from radio_sim.plot import load, plot_file
from radio_sim.sim import Simulation
from tests.radio_sim.pcapread import read_pcap

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_with_observers(tmp_path, preset="lossy-100bps", n=40, seed=3):
    log_path = str(tmp_path / "events.jsonl")
    pcap_path = str(tmp_path / "air.pcap")
    log = EventLog(log_path)
    pcap = PcapWriter(pcap_path, epoch=1_700_000_000.0)
    sim = Simulation(preset, seed=seed, observers=[log, pcap], duplicate=0.1)
    sim.flow = 2
    sim.b.serve(lambda frame: frame[::-1] + b"!")
    for i in range(n):
        sim.call_at(i * 7.0, sim.a.send, bytes([i]) * (1 + i % 40))
    sim.run()
    log.close()
    pcap.close()
    return sim, log_path, pcap_path


def test_pcap_holds_every_delivery_with_valid_checksums(tmp_path):
    sim, _, pcap_path = run_with_observers(tmp_path)
    linktype, packets = read_pcap(pcap_path)
    assert linktype == 1
    assert len(packets) == len(sim.deliveries) > 0
    assert all(p.ip_ok and p.udp_ok for p in packets)
    for p, d in zip(packets, sim.deliveries, strict=True):
        assert p.payload == d.data
        assert p.ts == pytest.approx(1_700_000_000.0 + d.time, abs=2e-6)
        if d.direction == "up":
            assert (p.src, p.sport, p.dst, p.dport) == ("10.0.0.3", 40002, "10.0.1.1", 5683)
        else:
            assert (p.src, p.sport, p.dst, p.dport) == ("10.0.1.1", 5683, "10.0.0.3", 40002)
    st = sim.stats()
    expected = sum(st[d]["delivered_frames"] + st[d]["duplicated_frames"] for d in ("up", "down"))
    assert len(packets) == expected
    assert [p.ts for p in packets] == sorted(p.ts for p in packets)


def test_pcap_checker_catches_corruption(tmp_path):
    _, _, pcap_path = run_with_observers(tmp_path, n=3, preset="100bps")
    raw = bytearray(open(pcap_path, "rb").read())
    raw[-1] ^= 0x40  # flip a payload bit of the last packet
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(bytes(raw))
    _, packets = read_pcap(str(bad))
    assert packets[-1].ip_ok and not packets[-1].udp_ok


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_pcap_opens_in_tshark(tmp_path):
    sim, _, pcap_path = run_with_observers(tmp_path)
    out = subprocess.run(
        [
            "tshark",
            "-r",
            pcap_path,
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "udp.check_checksum:TRUE",
            "-T",
            "fields",
            "-e",
            "udp.length",
            "-e",
            "ip.checksum.status",
            "-e",
            "udp.checksum.status",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split("\n")
    rows = [r.split("\t") for r in out if r.strip()]
    assert [int(r[0]) - 8 for r in rows] == [len(d.data) for d in sim.deliveries]
    assert all(r[1] == "1" and r[2] == "1" for r in rows)  # 1: checksum good


def test_event_log(tmp_path):
    sim, log_path, _ = run_with_observers(tmp_path)
    events = read_log(log_path)
    kinds = {e["ev"] for e in events}
    assert {"offer", "tx", "deliver", "drop"} <= kinds
    st = sim.stats()
    offers = [e for e in events if e["ev"] == "offer"]
    assert len(offers) == st["up"]["offered_frames"] + st["down"]["offered_frames"]
    airtime = sum(e["airtime"] for e in events if e["ev"] == "tx" and e["dir"] == "up")
    assert airtime == pytest.approx(st["up"]["airtime_s"])
    losses = [e for e in events if e["ev"] == "drop" and e["cause"] == "loss"]
    assert len(losses) == st["up"]["dropped"]["loss"]["frames"] + st["down"]["dropped"]["loss"]["frames"]
    assert all("data" not in e for e in events)
    json.dumps(events)  # plain JSON all the way


def test_plot_from_log_and_from_stats(tmp_path):
    sim, log_path, _ = run_with_observers(tmp_path)
    out1 = tmp_path / "log.png"
    assert plot_file(log_path, str(out1)) == "log"
    stats_path = tmp_path / "stats.json"
    stats_path.write_text(json.dumps(sim.stats()))
    out2 = tmp_path / "stats.png"
    assert plot_file(str(stats_path), str(out2)) == "stats"
    for out in (out1, out2):
        data = out.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000


def test_plot_rejects_other_files(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("hello\n")
    with pytest.raises(ValueError):
        load(str(p))


def test_plot_with_no_queue_delay_says_so_on_a_non_negative_axis(tmp_path):
    from radio_sim.plot import plot_log, plot_stats
    from radio_sim.sim import exchange

    log_path = tmp_path / "events.jsonl"
    log = EventLog(str(log_path))
    # One frame each way, far apart: nothing ever waits for the channel.
    exchange([("up", bytes(30)), ("down", bytes(22))], "100bps", observers=[log])
    log.close()
    kind, events = load(str(log_path))
    assert kind == "log"
    assert all(float(e["queue_delay"]) == 0 for e in events if e["ev"] == "tx")
    fig = plot_log(events, str(tmp_path / "log.png"))
    delay_ax = fig.axes[1]
    assert delay_ax.get_ylim()[0] == 0.0 and delay_ax.get_ylim()[1] > 0
    assert any("no queue delay" in t.get_text() for t in delay_ax.texts)
    stats = {d: {"airtime_s": 1.0, "queue_delay_s": {"mean": 0.0, "max": 0.0}} for d in ("up", "down")}
    fig = plot_stats(stats, str(tmp_path / "stats.png"))
    assert fig.axes[1].get_ylim()[0] == 0.0
    assert any("no queue delay" in t.get_text() for t in fig.axes[1].texts)
