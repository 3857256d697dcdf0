"""In-process runs: the virtual-clock Simulation and the asyncio integration."""

import asyncio

import pytest

from radio_sim.aio import AsyncLink, VirtualTimeLoop, run
from radio_sim.model import LinkParams
from radio_sim.sim import Simulation, exchange

REQUEST = bytes(range(30))  # the size of a warm reading request (DESIGN.md section 4)
ANSWER = bytes(range(22))


def test_request_response_airtime_is_exact():
    sim = Simulation("100bps", seed=0)
    got = []
    sim.b.serve(lambda frame: ANSWER if frame == REQUEST else None)
    sim.a.on_receive = got.append
    sim.a.send(REQUEST)
    end = sim.run()
    assert got == [ANSWER]
    assert sim.link.airtime("up") == pytest.approx(2.40, abs=1e-12)
    assert sim.link.airtime("down") == pytest.approx(1.76, abs=1e-12)
    assert sim.link.airtime() == pytest.approx(4.16, abs=1e-12)
    # Two serializations plus two 20 ms latencies of the preset.
    assert end == pytest.approx(4.16 + 0.04, abs=1e-12)
    st = sim.stats()
    assert st["up"]["offered_bytes"] == 30 and st["down"]["delivered_bytes"] == 22
    assert sim.a.received_bytes == 22 and sim.b.received_bytes == 30


def test_sans_io_protocol_objects():
    """Two small state machines that only exchange bytes, as the wire core does."""

    class Counter:
        def __init__(self, limit):
            self.limit = limit
            self.seen = []

        def receive(self, data):
            n = int.from_bytes(data, "big")
            self.seen.append(n)
            return None if n >= self.limit else (n + 1).to_bytes(2, "big")

    alice, bob = Counter(9), Counter(9)
    sim = Simulation("1kbps", seed=0)
    sim.a.serve(alice.receive)
    sim.b.serve(bob.receive)
    sim.a.send((0).to_bytes(2, "big"))
    sim.run()
    assert bob.seen == [0, 2, 4, 6, 8]
    assert alice.seen == [1, 3, 5, 7, 9]
    assert sim.link.airtime() == pytest.approx(10 * 16 / 1000)


def test_timers_and_until():
    sim = Simulation(LinkParams.symmetric(rate_bps=100.0), seed=0)
    fired = []
    sim.call_later(100.0, fired.append, "late")
    t = sim.call_later(5.0, fired.append, "cancelled")
    t.cancel()
    sim.call_at(1.0, lambda: sim.a.send(bytes(10)))
    assert sim.run(until=50.0) == 50.0
    assert fired == [] and sim.b.inbox == [bytes(10)]
    sim.run()
    assert fired == ["late"] and sim.now == 100.0


def test_exchange_helper_sequential_and_burst():
    frames = [("up", bytes(52)), ("down", bytes(10)), ("up", bytes(5))]
    seq = exchange(frames, "100bps")
    assert seq.now == pytest.approx((52 + 10 + 5) * 8 / 100 + 3 * 0.02)
    burst = exchange(frames, "100bps", sequential=False)
    # Both directions start at 0: the longest direction sets the end.
    assert burst.now == pytest.approx(57 * 8 / 100 + 0.02)
    assert seq.link.airtime() == burst.link.airtime() == pytest.approx(67 * 8 / 100)


def test_exchange_continues_after_a_loss():
    sim = exchange([("up", b"a"), ("up", b"b"), ("up", b"c")], "100bps", up_loss=1.0)
    st = sim.stats()["up"]
    assert st["dropped"]["loss"]["frames"] == 3
    assert sim.b.inbox == []


def test_simulation_with_overrides():
    sim = Simulation("100bps", seed=0, rate_bps=200.0)
    sim.a.send(bytes(50))
    sim.run()
    assert sim.link.airtime("up") == pytest.approx(2.0)


# -- asyncio ------------------------------------------------------------------


def test_virtual_loop_jumps_over_sleeps():
    async def main():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.sleep(3600)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(10), timeout=2.5)
        return loop.time() - t0

    assert run(main()) == pytest.approx(3602.5)


def test_async_link_request_response():
    async def main():
        link = AsyncLink("100bps", seed=0)
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def server():
            req = await link.b.recv()
            link.b.send(ANSWER if req == REQUEST else b"?")

        task = asyncio.create_task(server())
        link.a.send(REQUEST)
        answer = await link.a.recv()
        await task
        return answer, loop.time() - t0, link.stats()

    answer, elapsed, st = run(main())
    assert answer == ANSWER
    assert elapsed == pytest.approx(4.16 + 0.04, abs=1e-9)
    assert st["up"]["airtime_s"] + st["down"]["airtime_s"] == pytest.approx(4.16)


def test_async_datagram_endpoints():
    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            self.transport.sendto(data[::-1], addr)

    class Client(asyncio.DatagramProtocol):
        def __init__(self):
            self.got = asyncio.get_running_loop().create_future()

        def datagram_received(self, data, addr):
            self.got.set_result((data, addr))

    async def main():
        link = AsyncLink("lora-sf7", seed=0)
        await link.create_datagram_endpoint("b", Echo)
        transport, client = await link.create_datagram_endpoint("a", Client)
        transport.sendto(b"hello radio")
        data, addr = await asyncio.wait_for(client.got, timeout=60)
        transport.close()
        return data, addr, link.link.airtime()

    data, addr, airtime = run(main())
    assert data == b"oidar olleh"
    assert addr == ("10.0.1.1", 5683)
    from radio_sim.lora import LoRaParams

    assert airtime == pytest.approx(2 * LoRaParams(sf=7).time_on_air(11))


def test_async_link_on_a_real_loop():
    # The same driver under the ordinary loop (what the relay uses), with a fast link.
    async def main():
        link = AsyncLink("fast", seed=0)
        link.a.send(b"ping")
        return await asyncio.wait_for(link.b.recv(), timeout=10)

    assert asyncio.run(main()) == b"ping"


def test_virtual_loop_many_deliveries_terminates():
    # Times that are not exact binary fractions must not leave a timer one ulp short.
    async def main():
        link = AsyncLink(LinkParams.symmetric(rate_bps=3.0, latency_s=0.1, queue_frames=None), seed=0)
        for i in range(50):
            link.a.send(bytes([i]) * (i % 7 + 1))
        got = [await asyncio.wait_for(link.b.recv(), timeout=1000) for _ in range(50)]
        return got

    loop = VirtualTimeLoop()
    try:
        got = loop.run_until_complete(main())
    finally:
        loop.close()
    assert [g[0] for g in got] == list(range(50))
