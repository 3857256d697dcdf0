"""The three denial-of-service findings of issue 11, against ``lowbw proxy run``.

Each test starts the real proxy process, lets one enrolled sensor (the lowest
permission) attack it, and then measures what a neighbour device gets: its
reading must be acknowledged within 15 s, and the proxy's resident memory may
grow by less than 50 MB during the attack.
"""

from __future__ import annotations

import signal
import threading
import time
import urllib.parse
from typing import Any

from lowbw.wire import cbor, coap, keys

from .conftest import WireDevice, matrix_call
from .test_server_cli import start_proxy
from .test_server_client_api import fetch

ACK_WITHIN = 15.0
RSS_GROWTH_MAX = 50 * 1024 * 1024
TABLE = keys.TABLE_LOWBW_V1


def rss(pid: int) -> int:
    with open("/proc/%d/status" % pid, encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def flood(wire: WireDevice, messages: Any, window: int = 16) -> int:
    """Send sealed requests with up to ``window`` unanswered at a time (as fast as
    the proxy answers, not faster: a flood of the kernel's buffer would measure
    the socket, not the proxy); returns how many were sent."""
    n = 0
    outstanding: set[int] = set()
    for msg in messages:
        while len(outstanding) >= window:
            try:
                answer = wire.open(wire.recv(2.0))
            except TimeoutError:
                outstanding.clear()  # some went unanswered: carry on
                break
            if answer.mtype == coap.CON:
                wire.send(wire.seal(coap.make_ack(answer)))
            outstanding.discard(answer.mid)
        outstanding.add(msg.mid)
        wire.sock.sendto(wire.seal(msg), wire.proxy_addr)
        n += 1
    return n


def neighbour_ack_seconds(dev: Any) -> float:
    """A fresh device's cold reading (handshake + 0-RTT request): seconds until acknowledged."""
    wire = dev.wire(timeout=ACK_WITHIN)
    t0 = time.monotonic()
    try:
        answer = wire.exchange(wire.reading([215]))
    except TimeoutError:
        return float("inf")
    finally:
        wire.close()
    assert answer.code == coap.CHANGED, coap.code_str(answer.code)
    return time.monotonic() - t0


def attack_and_measure(
    proxy_config_path: str, attacker: Any, neighbours: list[Any], attack: Any
) -> tuple[list[float], int]:
    """Start the proxy, run ``attack(wire)`` in a thread, measure a neighbour's cold
    reading during the attack and another one after it; (ack seconds, RSS growth)."""
    proc, lines = start_proxy(proxy_config_path)
    # The proxy logs each answer: read its output as it comes, or a full pipe stops it.
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    try:
        wire = attacker.wire(timeout=10.0)
        assert wire.exchange(wire.reading([1])).code == coap.CHANGED
        base = rss(proc.pid)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                attack(wire)
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(2.0)
        seconds = [neighbour_ack_seconds(neighbours[0])]
        thread.join(300)
        assert not errors, errors
        grown = rss(proc.pid) - base
        seconds.append(neighbour_ack_seconds(neighbours[1]))
        grown = max(grown, rss(proc.pid) - base)
        print(
            "\nRSS growth %.1f MB; neighbour acknowledged after %.2f s during, %.2f s after the attack"
            % (grown / 1e6, seconds[0], seconds[1])
        )
        wire.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        reader.join(5)
    assert proc.returncode == 0, "".join(lines[-20:])
    return seconds, grown


def test_observe_flood(device_factory, proxy_config_path, synapse, matrix_user):
    attacker = device_factory()
    neighbours = [device_factory(), device_factory()]

    def attack(wire: WireDevice) -> None:
        def observes() -> Any:
            for i in range(20_000):
                msg = wire.request(coap.GET, ["x"], token=i.to_bytes(3, "big"))
                coap.set_observe(msg, 0)
                yield msg

        flood(wire, observes())
        # One command queued for the attacker: notifies only its few observations.
        status, _ = matrix_call(
            synapse.url,
            "PUT",
            "/_matrix/client/v3/rooms/%s/send/m.room.message/flood"
            % urllib.parse.quote(attacker.room_id, safe=""),
            matrix_user.access_token,
            {"msgtype": "m.text", "body": "!%s light on" % attacker.name},
        )
        assert status == 200

    seconds, grown = attack_and_measure(proxy_config_path, attacker, neighbours, attack)
    assert max(seconds) < ACK_WITHIN
    assert grown < RSS_GROWTH_MAX


def test_long_poll_flood(device_factory, proxy_config_path):
    attacker = device_factory()
    neighbours = [device_factory(), device_factory()]

    def attack(wire: WireDevice) -> None:
        first, body, _ = fetch(wire, lambda: wire.request(coap.GET, ["~"], query=["timeout=0"]))
        assert first.code == coap.CONTENT
        since = keys.expand(cbor.loads(body, max_items=100_000, max_depth=32), TABLE)["next_batch"]

        def polls() -> Any:
            for i in range(300):
                yield wire.request(
                    coap.GET, ["~"], query=["since=" + since, "timeout=600000"], token=i.to_bytes(2, "big")
                )

        flood(wire, polls())

    seconds, grown = attack_and_measure(proxy_config_path, attacker, neighbours, attack)
    assert max(seconds) < ACK_WITHIN
    assert grown < RSS_GROWTH_MAX


def test_blockwise_flood(device_factory, proxy_config_path):
    attacker = device_factory()
    neighbours = [device_factory(), device_factory()]

    def attack(wire: WireDevice) -> None:
        room = attacker.room_id

        def uploads() -> Any:
            # 2,000 unfinished uploads of 1 KB blocks ...
            for i in range(2_000):
                msg = wire.request(
                    coap.PUT, ["_matrix", "client", "v3", "rooms", room, "send", "m.room.message", "t%d" % i]
                )
                msg.payload = b"\x00" * 1024
                coap.set_block1(msg, 0, True, 6)
                yield msg
            # ... 60 KB "blocks" (BERT) ...
            for i in range(100):
                msg = wire.request(
                    coap.PUT, ["_matrix", "client", "v3", "rooms", room, "send", "m.room.message", "b%d" % i]
                )
                msg.payload = b"\x00" * 60 * 1024
                msg.set_option(27, b"\x0f")
                yield msg
            # ... and a 6 MB body.
            for n in range(6 * 1024):
                msg = wire.request(
                    coap.PUT, ["_matrix", "client", "v3", "rooms", room, "send", "m.room.message", "big"]
                )
                msg.payload = b"\x00" * 1024
                coap.set_block1(msg, n, True, 6)
                yield msg

        flood(wire, uploads())

    seconds, grown = attack_and_measure(proxy_config_path, attacker, neighbours, attack)
    assert max(seconds) < ACK_WITHIN
    assert grown < RSS_GROWTH_MAX
