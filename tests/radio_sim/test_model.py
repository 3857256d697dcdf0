"""The link model: arithmetic, queueing, duty cycle, loss statistics, determinism."""

import itertools
import random

import pytest

from radio_sim.model import GilbertElliott, Link, LinkParams
from radio_sim.observe import EventRecorder
from radio_sim.presets import PRESET_NAMES, UnknownPresetError, get_preset


def plain(**kw):
    base = {"rate_bps": 100.0, "queue_frames": None}
    base.update(kw)
    return LinkParams.symmetric(**base)


def drain(link):
    out = []
    while link.next_deadline() is not None:
        out.extend(link.poll(link.next_deadline()))
    return out


def check_invariant(stats):
    for d in ("up", "down"):
        s = stats[d]
        assert s["offered_frames"] == s["delivered_frames"] + s["dropped_frames"] + s["pending_frames"]
        assert s["offered_bytes"] == s["delivered_bytes"] + s["dropped_bytes"] + s["pending_bytes"]


# -- arithmetic -------------------------------------------------------------


def test_52_bytes_at_100bps_is_4_16_seconds():
    link = Link(plain(), seed=1)
    res = link.offer("up", bytes(52), 10.0)
    assert res.tx_start == 10.0
    assert res.airtime == pytest.approx(4.16, abs=1e-12)
    assert res.deliver_at == pytest.approx(14.16, abs=1e-12)
    assert link.airtime("up") == pytest.approx(4.16, abs=1e-12)
    assert link.airtime("down") == 0.0
    [d] = drain(link)
    assert d.data == bytes(52) and d.time == res.deliver_at


def test_latency_and_overhead_add_up():
    link = Link(plain(latency_s=0.25, frame_overhead=3), seed=1)
    res = link.offer("down", bytes(22), 0.0)
    assert res.airtime == pytest.approx(25 * 8 / 100)
    assert res.deliver_at == pytest.approx(2.0 + 0.25)
    assert link.stats()["down"]["air_bytes"] == 25


def test_back_to_back_frames_queue():
    link = Link(plain(), seed=1)
    r = [link.offer("up", bytes(52), t) for t in (0.0, 1.0, 2.0)]
    assert [x.tx_start for x in r] == pytest.approx([0.0, 4.16, 8.32])
    assert [x.deliver_at for x in r] == pytest.approx([4.16, 8.32, 12.48])
    q = link.stats()["up"]["queue_delay_s"]
    assert q["count"] == 3
    assert q["max"] == pytest.approx(6.32)
    assert q["mean"] == pytest.approx((0 + 3.16 + 6.32) / 3)
    # A frame offered after the queue drained starts at once.
    later = link.offer("up", bytes(10), 100.0)
    assert later.tx_start == 100.0


def test_directions_are_independent_in_full_duplex():
    link = Link(plain(), seed=1)
    a = link.offer("up", bytes(50), 0.0)
    b = link.offer("down", bytes(50), 1.0)
    assert b.tx_start == 1.0 and a.tx_end == pytest.approx(4.0)


def test_half_duplex_shares_the_channel_with_turnaround():
    link = Link(plain(half_duplex=True, turnaround_s=0.5), seed=1)
    a = link.offer("up", bytes(50), 0.0)  # [0, 4]
    b = link.offer("down", bytes(50), 1.0)  # waits for the channel and the turnaround
    c = link.offer("up", bytes(10), 2.0)  # cannot squeeze into [4, 4.5)
    assert (a.tx_start, a.tx_end) == pytest.approx((0.0, 4.0))
    assert (b.tx_start, b.tx_end) == pytest.approx((4.5, 8.5))
    assert (c.tx_start, c.tx_end) == pytest.approx((9.0, 9.8))


def test_half_duplex_fills_a_gap_that_fits():
    link = Link(plain(half_duplex=True), seed=1)
    link.offer("up", bytes(50), 0.0)  # [0, 4]
    link.offer("up", bytes(50), 0.0)  # [4, 8]
    d = link.offer("down", bytes(10), 1.0)  # must wait for the up burst
    assert d.tx_start == pytest.approx(8.0)


def test_queue_tail_drop():
    link = Link(plain(queue_frames=3), seed=1)
    res = [link.offer("up", bytes(52), 0.0) for _ in range(10)]
    causes = [r.cause for r in res]
    assert causes == [None] * 4 + ["queue_full"] * 6  # one on the air, three waiting
    s = link.stats()["up"]
    assert s["dropped"]["queue_full"] == {"frames": 6, "bytes": 6 * 52}
    assert s["airtime_s"] == pytest.approx(4 * 4.16)
    # Once the first has left the queue there is room for one more.
    assert link.offer("up", bytes(52), 4.2).accepted


def test_queue_of_zero_only_takes_an_idle_channel():
    link = Link(plain(queue_frames=0), seed=1)
    assert link.offer("up", bytes(52), 0.0).accepted
    assert link.offer("up", bytes(52), 1.0).cause == "queue_full"
    assert link.offer("up", bytes(52), 4.16).accepted


def test_mtu_drop_and_fragmentation():
    link = Link(plain(mtu=100), seed=1)
    assert link.offer("up", bytes(100), 0.0).accepted
    assert link.offer("up", bytes(101), 0.0).cause == "mtu"
    assert link.stats()["up"]["dropped"]["mtu"] == {"frames": 1, "bytes": 101}

    frag = Link(plain(mtu=64, fragment=True, fragment_overhead=4), seed=1)
    res = frag.offer("up", bytes(150), 0.0)
    sizes = [t.nbytes for t in res.transmissions]
    assert sizes == [64, 64, 34]  # 60 + 60 + 30 payload bytes, 4-byte header each
    assert res.airtime == pytest.approx(162 * 8 / 100)
    assert res.deliver_at == pytest.approx(res.transmissions[-1].end)
    [d] = drain(frag)
    assert d.data == bytes(150)
    assert frag.stats()["up"]["fragmented_frames"] == 1


def test_fragmented_frame_is_lost_with_any_fragment():
    params = plain(mtu=20, fragment=True, fragment_overhead=2, loss=0.1)
    link = Link(params, seed=4)
    lost = sum(link.offer("up", bytes(180), float(i * 100)).cause == "loss" for i in range(3000))
    # 10 fragments each surviving with 0.9: the frame survives with 0.9**10.
    assert lost / 3000 == pytest.approx(1 - 0.9**10, abs=0.03)


# -- duty cycle ---------------------------------------------------------------


def test_duty_cycle_wait():
    # 1 % of an hour is 36 s: eight 4.16 s frames fit (33.28 s), the ninth waits
    # until the first leaves the window, the tenth until the second does.
    link = Link(plain(duty_cycle=0.01, duty_window_s=3600.0), seed=1)
    res = [link.offer("up", bytes(52), 0.0) for _ in range(10)]
    starts = [r.tx_start for r in res]
    assert starts[:8] == pytest.approx([i * 4.16 for i in range(8)])
    assert starts[8] == pytest.approx(3600.0)
    assert starts[9] == pytest.approx(3604.16)
    used_in_first_hour = sum(r.airtime for r in res if r.tx_start < 3600.0)
    assert used_in_first_hour <= 36.0
    # The other direction has its own budget.
    assert link.offer("down", bytes(52), 0.0).tx_start == 0.0


def test_duty_cycle_drop():
    link = Link(plain(duty_cycle=0.01, duty_policy="drop"), seed=1)
    res = [link.offer("up", bytes(52), 0.0) for _ in range(10)]
    assert [r.cause for r in res] == [None] * 8 + ["duty_cycle"] * 2
    assert link.stats()["up"]["dropped"]["duty_cycle"]["frames"] == 2
    # After the window has slid past the first frame, sending works again.
    assert link.offer("up", bytes(52), 3600.0 + 0.001).accepted


def test_duty_cycle_over_budget_frame_is_never_sent():
    link = Link(plain(duty_cycle=0.001, duty_window_s=100.0), seed=1)  # 0.1 s budget
    assert link.offer("up", bytes(52), 0.0).cause == "duty_cycle"


def test_lora_preset_duty_cycle():
    link = Link(get_preset("lora-sf12"), seed=1)
    res = [link.offer("up", bytes(51), 0.0) for _ in range(16)]
    per = 2.465792
    assert res[0].airtime == pytest.approx(per)
    fits = int(36.0 // per)  # 14 frames in the hourly budget
    assert all(r.tx_start < 3600 for r in res[:fits])
    assert res[fits].tx_start == pytest.approx(3600.0)


# -- jitter, reordering, duplication ----------------------------------------------


def test_jitter_never_reorders():
    link = Link(plain(rate_bps=None, latency_s=1.0, jitter_s=5.0), seed=3)
    for i in range(500):
        link.offer("up", bytes([i % 256]), i * 0.01)
    got = drain(link)
    assert [d.seq for d in got] == list(range(1, 501))
    delays = [d.time - d.offered_at for d in got]
    assert min(delays) >= 1.0
    assert max(delays) > 3.0  # the jitter did something


def test_reordering_when_asked():
    link = Link(plain(rate_bps=None, latency_s=0.1, reorder=0.1, reorder_delay_s=1.0), seed=3)
    for i in range(2000):
        link.offer("up", b"x", i * 0.01)
    got = drain(link)
    seqs = [d.seq for d in got]
    assert sorted(seqs) == list(range(1, 2001))
    overtaken = sum(1 for a, b in zip(seqs, seqs[1:], strict=False) if b < a)
    assert overtaken > 0
    assert link.stats()["up"]["reordered_frames"] / 2000 == pytest.approx(0.1, abs=0.02)


def test_duplication():
    link = Link(plain(rate_bps=None, duplicate=0.3, duplicate_delay_s=0.5), seed=3)
    for i in range(2000):
        link.offer("down", b"d", float(i))
    got = drain(link)
    dups = [d for d in got if d.duplicate]
    assert len(dups) / 2000 == pytest.approx(0.3, abs=0.03)
    s = link.stats()["down"]
    assert s["duplicated_frames"] == len(dups)
    assert s["delivered_frames"] == 2000
    check_invariant(link.stats())


# -- loss statistics ------------------------------------------------------------


def runs_of_loss(flags):
    return [len(list(g)) for k, g in itertools.groupby(flags) if k]


def test_independent_loss_rate():
    link = Link(plain(rate_bps=None, loss=0.2), seed=11)
    flags = [link.offer("up", b"x", float(i)).cause == "loss" for i in range(20000)]
    assert sum(flags) / len(flags) == pytest.approx(0.2, abs=0.015)
    # Independent losses: bursts average 1 / (1 - p) = 1.25 frames.
    bursts = runs_of_loss(flags)
    assert sum(bursts) / len(bursts) == pytest.approx(1.25, abs=0.05)


@pytest.mark.parametrize("rate,burst", [(0.2, 3.0), (0.1, 2.0), (0.05, 5.0)])
def test_gilbert_elliott_rate_and_burst_length(rate, burst):
    ge = GilbertElliott.from_loss(rate, burst)
    assert ge.loss_rate == pytest.approx(rate)
    assert ge.mean_burst == pytest.approx(burst)
    link = Link(plain(rate_bps=None, burst=ge), seed=7)
    flags = [link.offer("up", b"x", float(i)).cause == "loss" for i in range(60000)]
    assert sum(flags) / len(flags) == pytest.approx(rate, rel=0.1)
    bursts = runs_of_loss(flags)
    assert sum(bursts) / len(bursts) == pytest.approx(burst, rel=0.1)


def test_lossy_preset_is_bursty_20_percent():
    link = Link(get_preset("lossy-100bps").replace(rate_bps=None, jitter_s=0.0), seed=5)
    flags = [link.offer("up", b"x", float(i)).cause == "loss" for i in range(40000)]
    assert sum(flags) / len(flags) == pytest.approx(0.2, abs=0.02)
    bursts = runs_of_loss(flags)
    assert sum(bursts) / len(bursts) > 1.6  # independent 20 % loss would give 1.25


def test_lost_frames_still_use_airtime():
    link = Link(plain(loss=1.0), seed=1)
    res = link.offer("up", bytes(52), 0.0)
    assert res.cause == "loss" and res.deliver_at is None
    s = link.stats()["up"]
    assert s["airtime_s"] == pytest.approx(4.16)
    assert s["dropped"]["loss"] == {"frames": 1, "bytes": 52}
    assert drain(link) == []


# -- determinism --------------------------------------------------------------------


def scripted_run(seed, preset="lossy-100bps"):
    rec = EventRecorder()
    link = Link(
        get_preset(preset).replace(reorder=0.05, duplicate=0.05, queue_frames=8), seed=seed, observers=[rec]
    )
    traffic = random.Random(1234)  # the same offered traffic for every seed
    t = 0.0
    for _ in range(400):
        t += traffic.expovariate(1 / 3.0)
        link.offer(traffic.choice(("up", "down")), bytes(traffic.randrange(1, 120)), t)
        link.poll(t)
    drain(link)
    return rec.events, link.stats()


def test_same_seed_same_run():
    ev1, st1 = scripted_run(42)
    ev2, st2 = scripted_run(42)
    assert ev1 == ev2
    assert st1 == st2
    check_invariant(st1)


def test_different_seed_different_run():
    ev1, _ = scripted_run(42)
    ev3, _ = scripted_run(43)
    lost1 = [(e["dir"], e["seq"]) for e in ev1 if e["ev"] == "drop" and e["cause"] == "loss"]
    lost3 = [(e["dir"], e["seq"]) for e in ev3 if e["ev"] == "drop" and e["cause"] == "loss"]
    assert lost1 and lost3 and lost1 != lost3


def test_unseeded_link_records_its_seed():
    a = Link(get_preset("lossy-100bps"))
    b = Link(get_preset("lossy-100bps"), seed=a.seed)
    for link in (a, b):
        for i in range(200):
            link.offer("up", b"x", float(i))
    assert a.stats()["seed"] == a.seed
    assert a.stats()["up"] == b.stats()["up"]


# -- invariants, time, validation, presets ---------------------------------------------


def test_counters_balance_at_every_poll():
    link = Link(get_preset("lossy-100bps").replace(queue_frames=4, mtu=60), seed=9)
    rng = random.Random(5)
    for i in range(300):
        now = i * 0.7
        link.offer(rng.choice(("up", "down")), bytes(rng.randrange(0, 80)), now)
        link.poll(now)
        check_invariant(link.stats(now))
    drain(link)
    st = link.stats()
    check_invariant(st)
    assert st["up"]["pending_frames"] == 0
    causes = {c for d in ("up", "down") for c, v in st[d]["dropped"].items() if v["frames"]}
    assert {"loss", "mtu", "queue_full"} <= causes


def test_time_does_not_run_backwards():
    link = Link(plain(), seed=1)
    link.offer("up", bytes(10), 5.0)
    late = link.offer("up", bytes(10), 1.0)  # a confused driver
    assert late.tx_start >= 5.0


@pytest.mark.parametrize(
    "kw",
    [
        {"rate_bps": 0.0},
        {"loss": 1.5},
        {"duplicate": -0.1},
        {"mtu": 0},
        {"fragment": True},  # without an mtu
        {"mtu": 10, "fragment": True, "fragment_overhead": 10},
        {"duty_cycle": 0.0},
        {"duty_policy": "later"},
        {"queue_frames": -1},
        {"latency_s": -1.0},
    ],
)
def test_invalid_parameters(kw):
    with pytest.raises(ValueError):
        Link(plain(**kw))


def test_gilbert_elliott_validation():
    with pytest.raises(ValueError):
        GilbertElliott.from_loss(0.9, 1.0)
    with pytest.raises(ValueError):
        GilbertElliott.from_loss(0.2, 0.5)


def test_replace_per_direction():
    p = get_preset("100bps").replace(up_loss=0.5, latency_s=1.0)
    assert p.up.loss == 0.5 and p.down.loss == 0.0
    assert p.up.latency_s == p.down.latency_s == 1.0
    with pytest.raises(ValueError):
        p.replace(colour="blue")


def test_presets_exist_and_validate():
    for name in ("100bps", "lora-sf12", "lora-sf7", "satellite-geo", "lossy-100bps", "1kbps", "1kbps-lossy"):
        assert name in PRESET_NAMES
    for name in PRESET_NAMES:
        p = get_preset(name)
        p.validate()
        assert p.name == name and p.description
    assert get_preset("100bps").up.airtime(52) == pytest.approx(4.16)
    assert get_preset("satellite-geo").up.latency_s >= 0.25
    with pytest.raises(UnknownPresetError) as err:
        get_preset("9600bps")
    assert "100bps" in str(err.value) and "lora-sf12" in str(err.value)
