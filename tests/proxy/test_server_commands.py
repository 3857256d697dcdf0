"""Downlink: a command an ordinary user posts in the device's room reaches the device.

Synapse pushes the room's events to the proxy's appservice listener; the proxy
queues commands in the registry and flags every answer to the device with
option 65004 (Commands-Pending) until the device has fetched (GET x) and
acknowledged (POST x id) each one.
"""

from __future__ import annotations

import time
import urllib.parse

from lowbw.proxy.registry import Registry
from lowbw.proxy.transport import COMMANDS_PENDING_OPTION
from lowbw.wire import cbor, coap, routes

from .conftest import matrix_call


def pending(msg: coap.Message) -> int | None:
    return coap.get_uint(msg, COMMANDS_PENDING_OPTION)


def wait_for_commands(proxy, name: str, count: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proxy.run(lambda: proxy.server.table.commands_pending(name)) >= count:
            return
        time.sleep(0.05)
    raise AssertionError("the homeserver did not push %d command(s) for %s" % (count, name))


def send_event(synapse, user, room_id: str, etype: str, content: dict, txn: str) -> str:
    status, body = matrix_call(
        synapse.url,
        "PUT",
        "/_matrix/client/v3/rooms/%s/send/%s/%s" % (urllib.parse.quote(room_id, safe=""), etype, txn),
        user.access_token,
        content,
    )
    assert status == 200, body
    return str(body["event_id"])


def test_command_reaches_the_device_and_is_acknowledged(device_factory, proxy_factory, synapse, matrix_user):
    dev = device_factory()
    proxy = proxy_factory()
    wire = dev.wire()
    first = wire.exchange(wire.reading([1]))
    assert first.code == coap.CHANGED and pending(first) is None

    chat = send_event(
        synapse, matrix_user, dev.room_id, "m.room.message", {"msgtype": "m.text", "body": "hello"}, "c0"
    )
    cmd1 = send_event(
        synapse,
        matrix_user,
        dev.room_id,
        "m.room.message",
        {"msgtype": "m.text", "body": "!%s open valve 3" % dev.name},
        "c1",
    )
    cmd2 = send_event(
        synapse,
        matrix_user,
        dev.room_id,
        "org.lowbw.command",
        {"device": dev.name, "body": "reboot"},
        "c2",
    )
    wait_for_commands(proxy, dev.name, 2)
    assert chat not in (cmd1, cmd2)

    # The next exchange tells the device that commands wait.
    answer = wire.exchange(wire.reading([2]))
    assert answer.code == coap.CHANGED and pending(answer) == 2

    got = []
    while True:
        fetched = wire.exchange(wire.request(coap.GET, [routes.ROUTE_COMMANDS]))
        if fetched.code == coap.VALID:
            assert fetched.payload == b"" and pending(fetched) is None
            break
        assert fetched.code == coap.CONTENT
        cid, sender, body, event_id = cbor.loads(fetched.payload)
        assert sender == matrix_user.user_id
        got.append((body, event_id))
        # Not acknowledged yet: fetched again, never lost.
        again = wire.exchange(wire.request(coap.GET, [routes.ROUTE_COMMANDS]))
        assert cbor.loads(again.payload)[0] == cid
        ack = wire.exchange(wire.request(coap.POST, [routes.ROUTE_COMMANDS], bytes(cbor.dumps(cid))))
        assert ack.code == coap.CHANGED
    assert got == [("open valve 3", cmd1), ("reboot", cmd2)]
    assert pending(wire.exchange(wire.reading([3]))) is None
    with Registry(proxy.settings.registry_path) as registry:
        assert registry.count_pending(dev.name) == 0


def test_commands_survive_a_restart(device_factory, proxy_factory, synapse, matrix_user):
    dev = device_factory()
    proxy = proxy_factory()
    wire = dev.wire()
    wire.exchange(wire.reading([1]))
    send_event(
        synapse,
        matrix_user,
        dev.room_id,
        "m.room.message",
        {"msgtype": "m.text", "body": "!%s ping" % dev.name},
        "r1",
    )
    wait_for_commands(proxy, dev.name, 1)
    proxy.stop()
    proxy_factory()
    answer = wire.exchange(wire.reading([2]))
    assert pending(answer) == 1
    fetched = wire.exchange(wire.request(coap.GET, [routes.ROUTE_COMMANDS]))
    assert cbor.loads(fetched.payload)[2] == "ping"


def test_observing_commands_pushes_them_at_once(device_factory, proxy_factory, synapse, matrix_user):
    dev = device_factory()
    proxy_factory()
    wire = dev.wire()
    wire.exchange(wire.reading([1]))
    watch = wire.request(coap.GET, [routes.ROUTE_COMMANDS], token=b"\x07")
    coap.set_observe(watch, 0)
    first = wire.exchange(watch)
    assert first.code == coap.VALID and coap.observe(first) == 0 and first.token == b"\x07"

    event_id = send_event(
        synapse,
        matrix_user,
        dev.room_id,
        "m.room.message",
        {"msgtype": "m.text", "body": "!%s light on" % dev.name},
        "o1",
    )
    note = wire.open(wire.recv(timeout=15))
    assert note.mtype == coap.CON and note.token == b"\x07" and note.code == coap.CONTENT
    assert coap.observe(note) == 1
    cid, sender, body, eid = cbor.loads(note.payload)
    assert (sender, body, eid) == (matrix_user.user_id, "light on", event_id)
    wire.send(wire.seal(coap.make_ack(note)))
    ack = wire.exchange(wire.request(coap.POST, [routes.ROUTE_COMMANDS], bytes(cbor.dumps(cid))))
    assert ack.code == coap.CHANGED and pending(ack) is None


def test_appservice_listener_checks_the_homeserver_token(device_factory, proxy_factory, appservice):
    import json
    import urllib.error
    import urllib.request

    dev = device_factory()
    proxy = proxy_factory()
    port = proxy.server.appservice_port
    event = {
        "type": "m.room.message",
        "room_id": dev.room_id,
        "sender": "@mallory:lowbw.test",
        "event_id": "$forged",
        "content": {"msgtype": "m.text", "body": "!%s open the door" % dev.name},
    }
    body = json.dumps({"events": [event]}).encode()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def push(token: str | None, txn: str) -> int:
        req = urllib.request.Request(
            "http://127.0.0.1:%d/_matrix/app/v1/transactions/%s" % (port, txn), data=body, method="PUT"
        )
        req.add_header("Content-Type", "application/json")
        if token is not None:
            req.add_header("Authorization", "Bearer " + token)
        try:
            with opener.open(req, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    assert push(None, "t1") == 401
    assert push("not-the-token", "t2") == 403
    assert proxy.run(lambda: proxy.server.table.commands_pending(dev.name)) == 0
    assert push(appservice.hs_token, "t3") == 200
    assert proxy.run(lambda: proxy.server.table.commands_pending(dev.name)) == 1
    assert push(appservice.hs_token, "t3") == 200  # pushed again: still one command
    assert proxy.run(lambda: proxy.server.table.commands_pending(dev.name)) == 1
