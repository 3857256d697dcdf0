"""Devices in encrypted rooms, in-process proxy on real sockets, real Synapse, a matrix-nio person."""

from __future__ import annotations

import time
import urllib.parse

from lowbw.wire import coap, routes
from tests.proxy.conftest import matrix_call

from .person import Person, notices


def exchange_until_acked(wire, make, timeout: float = 40.0):
    """Send a reading until it is acknowledged (5.03 while the proxy's crypto comes up)."""
    deadline = time.monotonic() + timeout
    answers = []
    mid = wire.mid()
    while time.monotonic() < deadline:
        answer = wire.exchange(make(mid))
        answers.append(answer.code)
        if answer.code == coap.CHANGED:
            return answers
        time.sleep(0.5)
    raise AssertionError("never acknowledged: %s" % answers)


def raw_events(synapse, user, room_id: str) -> list[dict]:
    status, body = matrix_call(
        synapse.url, "GET", "/_matrix/client/v3/rooms/%s/messages" % urllib.parse.quote(room_id, safe=""),
        user.access_token, query={"dir": "b", "limit": 100},
    )
    assert status == 200, body
    return list(reversed(body["chunk"]))


def test_readings_are_megolm_and_decrypt_for_the_person(device_factory, proxy_factory, synapse, matrix_user,
                                                         tmp_path):
    person = Person(synapse.url, matrix_user.user_id, matrix_user.password, tmp_path / "person")
    try:
        dev = device_factory(encrypted=True)
        person.join(dev.room_id)
        proxy = proxy_factory()
        wire = dev.wire()
        codes = exchange_until_acked(wire, lambda mid: wire.reading([215], mid=mid))
        assert codes[-1] == coap.CHANGED and all(c in (coap.CHANGED, coap.SERVICE_UNAVAILABLE) for c in codes)
        # The homeserver holds only ciphertext.
        events = [e for e in raw_events(synapse, matrix_user, dev.room_id) if e["sender"] == dev.user_id]
        types = [e["type"] for e in events]
        assert "m.room.encrypted" in types and "m.room.message" not in types, types
        # The person decrypts it to what an unencrypted room would show.
        got = []
        deadline = time.monotonic() + 20
        while not got and time.monotonic() < deadline:
            person.sync(1000)
            got = notices(person.seen)
        assert [n.body for n in got] == ["temperature 21.5 °C"], person.seen
        reading = got[0].source["content"]["org.lowbw.reading"]
        assert (reading["device"], reading["slot"], reading["name"]) == (dev.name, 0, "temperature"), reading
        assert reading["values"][0]["name"] == "temperature" and reading["values"][0]["unit"] == "°C"
        # A command typed into the encrypted room reaches the device.
        person.say(dev.room_id, "!%s open valve" % dev.name)
        deadline = time.monotonic() + 20
        fetched = None
        while time.monotonic() < deadline:
            fetched = wire.exchange(wire.request(coap.GET, [routes.ROUTE_COMMANDS]))
            if fetched.code == coap.CONTENT:
                break
            time.sleep(0.5)
        assert fetched is not None and fetched.code == coap.CONTENT, fetched
        from lowbw.wire import cbor

        cid, sender, body, _event_id = cbor.loads(fetched.payload)
        assert sender == matrix_user.user_id and body == "open valve"
        proxy.stop()
    finally:
        person.close()
