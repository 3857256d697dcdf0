"""Devices in encrypted rooms: the real proxy process, real Synapse, matrix-nio people (vodozemac).

The proxy runs as its own process here, not in a thread: matrix-nio's crypto
store binds its database per call (peewee ``bind_ctx``), which is safe in one
thread (the proxy's event loop) but not with a second nio client in another
thread of the same process (the test's person).
"""

from __future__ import annotations

import time
import urllib.parse

from lowbw.wire import coap, routes
from tests.proxy.conftest import matrix_call
from tests.proxy.proxyproc import ProxyProcess

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


def fetch_command(wire, timeout: float = 20.0):
    """GET x until a command is waiting (its 2.05), or the last answer after ``timeout``."""
    deadline = time.monotonic() + timeout
    fetched = None
    while time.monotonic() < deadline:
        fetched = wire.exchange(wire.request(coap.GET, [routes.ROUTE_COMMANDS]))
        if fetched.code == coap.CONTENT:
            break
        time.sleep(0.5)
    return fetched


def raw_events(synapse, user, room_id: str) -> list[dict]:
    status, body = matrix_call(
        synapse.url,
        "GET",
        "/_matrix/client/v3/rooms/%s/messages" % urllib.parse.quote(room_id, safe=""),
        user.access_token,
        query={"dir": "b", "limit": 100},
    )
    assert status == 200, body
    return list(reversed(body["chunk"]))


def test_readings_are_megolm_and_decrypt_for_the_person(
    device_factory, proxy_config_path, synapse, matrix_user, tmp_path
):
    person = Person(synapse.url, matrix_user.user_id, matrix_user.password, tmp_path / "person")
    proxy = None
    try:
        dev = device_factory(encrypted=True)
        person.join(dev.room_id)
        proxy = ProxyProcess(proxy_config_path)
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
        fetched = fetch_command(wire)
        assert fetched is not None and fetched.code == coap.CONTENT, fetched
        from lowbw.wire import cbor

        cid, sender, body, _event_id = cbor.loads(fetched.payload)
        assert sender == matrix_user.user_id and body == "open valve"
    finally:
        person.close()
        if proxy is not None:
            proxy.stop()


def _session_ids(synapse, user, room_id: str, sender: str) -> list[str]:
    return [
        e["content"]["session_id"]
        for e in raw_events(synapse, user, room_id)
        if e["sender"] == sender and e["type"] == "m.room.encrypted"
    ]


def _wait_notices(person: Person, count: int, timeout: float = 20.0) -> list:
    deadline = time.monotonic() + timeout
    got = notices(person.seen)
    while len(got) < count and time.monotonic() < deadline:
        person.sync(1000)
        got = notices(person.seen)
    return got


def test_existing_encrypted_room_rotation_new_devices_leavers_and_restart(
    proxy_config_path, synapse, matrix_user, tmp_path
):
    """--room ID of an encrypted room the person made (rotation every 2 messages): detected at
    enrollment; a second device of the person that logs in later gets keys for later readings;
    a member who left gets none; after a proxy restart the person still decrypts everything."""
    import secrets as _secrets

    from lowbw.proxy.config import load
    from lowbw.proxy.enroll import enroll

    person = Person(synapse.url, matrix_user.user_id, matrix_user.password, tmp_path / "person")
    pw = _secrets.token_urlsafe(12)
    other_id, _other_token = synapse.register_user("other_%s" % _secrets.token_hex(4), pw)
    other = Person(synapse.url, other_id, pw, tmp_path / "other")
    later = None
    proxy = None
    try:
        status, body = matrix_call(
            synapse.url,
            "POST",
            "/_matrix/client/v3/createRoom",
            matrix_user.access_token,
            {
                "preset": "private_chat",
                "initial_state": [
                    {
                        "type": "m.room.encryption",
                        "state_key": "",
                        "content": {"algorithm": "m.megolm.v1.aes-sha2", "rotation_period_msgs": 2},
                    }
                ],
            },
        )
        assert status == 200, body
        room = body["room_id"]
        name = "enc%s" % _secrets.token_hex(3)
        import asyncio
        import json
        from pathlib import Path

        from tests.proxy.conftest import DEFAULT_SLOTS

        cfg = load(proxy_config_path)
        user_localpart = cfg.user_localpart(name)
        device_user = "@%s:%s" % (user_localpart, cfg.homeserver.server_name)
        # Invite the device user and the other person, then enroll into the existing room.
        for invitee in (device_user, other_id):
            status, body = matrix_call(
                synapse.url,
                "POST",
                "/_matrix/client/v3/rooms/%s/invite" % urllib.parse.quote(room, safe=""),
                matrix_user.access_token,
                {"user_id": invitee},
            )
            assert status == 200, body
        result = asyncio.run(enroll(cfg, name, room, slots=DEFAULT_SLOTS))
        assert result.record.encrypted and not result.created_room
        config = json.loads(Path(result.config_path).read_text())
        proxy = ProxyProcess(proxy_config_path)
        other.join(room)
        person.sync()
        from tests.proxy.conftest import WireDevice

        wire = WireDevice.from_config(config)
        for v in (101, 102):
            exchange_until_acked(wire, lambda mid, v=v: wire.reading([v], mid=mid))
        assert len(_wait_notices(person, 2)) == 2
        assert len(_wait_notices(other, 2)) == 2  # a member gets the keys
        # The other member leaves; the person logs in on a second device.
        other.leave(room)
        other_sessions = {s for s in _session_ids(synapse, matrix_user, room, device_user)}
        later = Person(synapse.url, matrix_user.user_id, matrix_user.password, tmp_path / "later")
        later.sync()
        for v in (103, 104, 105):
            exchange_until_acked(wire, lambda mid, v=v: wire.reading([v], mid=mid))
        # A restart between readings: the store keeps the keys, the person still decrypts.
        proxy.stop()
        proxy = ProxyProcess(proxy_config_path)
        exchange_until_acked(wire, lambda mid: wire.reading([106], mid=mid))
        sessions = _session_ids(synapse, matrix_user, room, device_user)
        assert len(sessions) == 6
        # Rotation every 2 messages, and a new session after the member left.
        assert sessions[0] == sessions[1] and sessions[1] != sessions[2], sessions
        assert sessions[2] not in other_sessions
        got = _wait_notices(person, 6)
        assert [n.body for n in got] == [
            "temperature %s °C" % t for t in ("10.1", "10.2", "10.3", "10.4", "10.5", "10.6")
        ], person.seen
        got_later = _wait_notices(later, 4)
        assert [n.body for n in got_later][-4:] == [
            "temperature %s °C" % t for t in ("10.3", "10.4", "10.5", "10.6")
        ]
        # The member who left holds none of the sessions made after they left.
        other.sync(1000)  # whatever to-device messages would reach them
        held = {s.id for s in other.client.olm.inbound_group_store}
        assert sessions[0] in held  # they did get the keys while they were a member
        assert not (set(sessions[2:]) & held), (sessions, held)
    finally:
        if proxy is not None:
            proxy.stop()
        person.close()
        other.close()
        if later is not None:
            later.close()


def _verify(obj: dict, user_id: str, pub_b64: str) -> bool:
    import base64

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from lowbw.proxy.crosssign import canonical_json

    def unb64(text: str) -> bytes:
        return base64.b64decode(text + "=" * (-len(text) % 4))

    sig = obj.get("signatures", {}).get(user_id, {}).get("ed25519:" + pub_b64)
    if sig is None:
        return False
    body = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    try:
        Ed25519PublicKey.from_public_bytes(unb64(pub_b64)).verify(unb64(sig), canonical_json(body))
    except InvalidSignature:
        return False
    return True


def test_device_is_cross_signed_and_bad_input_is_ignored(
    device_factory, proxy_config_path, synapse, matrix_user, tmp_path
):
    dev = device_factory(encrypted=True)
    status, _ = matrix_call(
        synapse.url,
        "POST",
        "/_matrix/client/v3/join/%s" % urllib.parse.quote(dev.room_id, safe=""),
        matrix_user.access_token,
        {},
    )
    proxy = ProxyProcess(proxy_config_path)
    try:
        wire = dev.wire()
        exchange_until_acked(wire, lambda mid: wire.reading([1], mid=mid))
        status, keys = matrix_call(
            synapse.url,
            "POST",
            "/_matrix/client/v3/keys/query",
            matrix_user.access_token,
            {"device_keys": {dev.user_id: []}},
        )
        assert status == 200, keys
        master = keys["master_keys"][dev.user_id]
        ssk = keys["self_signing_keys"][dev.user_id]
        (master_pub,) = master["keys"].values()
        (ssk_pub,) = ssk["keys"].values()
        assert _verify(ssk, dev.user_id, master_pub)
        devices = keys["device_keys"][dev.user_id]
        assert len(devices) == 1
        (device,) = devices.values()
        assert _verify(device, dev.user_id, ssk_pub), device
        assert master_pub in proxy.output()  # logged for people who verify out of band
        # A signed fallback key is uploaded (the device's own sync says it has an unused one).
        from lowbw.proxy.config import load
        from lowbw.proxy.registry import Registry

        with Registry(load(proxy_config_path).proxy.registry) as registry:
            _device_id, device_token = registry.matrix_device(dev.name)
        status, own = matrix_call(
            synapse.url,
            "GET",
            "/_matrix/client/v3/sync",
            device_token,
            query={"timeout": "0", "filter": '{"room":{"rooms":[]}}'},
        )
        assert status == 200, own
        assert own.get("device_unused_fallback_key_types") == ["signed_curve25519"], proxy.output()
        # The crypto store is private: directory 0700, every file 0600, no token or key in clear.
        import os
        import stat

        store = load(proxy_config_path).proxy.registry.parent / "e2ee"
        assert stat.S_IMODE(os.stat(store).st_mode) == 0o700
        files = [f for f in store.iterdir() if f.is_file()]
        assert files and all(stat.S_IMODE(f.stat().st_mode) & 0o077 == 0 for f in files), [
            (f.name, oct(f.stat().st_mode)) for f in files
        ]
        assert not any(device_token.encode() in f.read_bytes() for f in files)
        # Garbage where ciphertext should be: a room event and a to-device message.
        status, _ = matrix_call(
            synapse.url,
            "PUT",
            "/_matrix/client/v3/rooms/%s/send/m.room.encrypted/bad1"
            % urllib.parse.quote(dev.room_id, safe=""),
            matrix_user.access_token,
            {
                "algorithm": "m.megolm.v1.aes-sha2",
                "sender_key": "AAAA",
                "session_id": "nope",
                "ciphertext": "!!!not base64!!!",
                "device_id": "FORGED",
            },
        )
        assert status == 200
        (device_id,) = devices.keys()
        status, _ = matrix_call(
            synapse.url,
            "PUT",
            "/_matrix/client/v3/sendToDevice/m.room.encrypted/bad2",
            matrix_user.access_token,
            {
                "messages": {
                    dev.user_id: {
                        device_id: {
                            "algorithm": "m.olm.v1.curve25519-aes-sha2",
                            "sender_key": "garbage",
                            "ciphertext": {"nobody": {"type": 0, "body": "AAAA"}},
                        }
                    }
                }
            },
        )
        assert status == 200
        status, _ = matrix_call(
            synapse.url,
            "PUT",
            "/_matrix/client/v3/sendToDevice/m.room_key/bad3",
            matrix_user.access_token,
            {
                "messages": {
                    dev.user_id: {
                        device_id: {
                            "algorithm": "m.megolm.v1.aes-sha2",
                            "room_id": "!elsewhere:lowbw.test",
                            "session_id": "x",
                            "session_key": "y",
                        }
                    }
                }
            },
        )
        assert status == 200
        assert proxy.wait_for("not decrypted", 20), proxy.output()
        # Still up, still encrypting.
        exchange_until_acked(wire, lambda mid: wire.reading([2], mid=mid))
        assert proxy.proc.poll() is None
    finally:
        out = proxy.stop()
    assert "Traceback" not in out, out


def test_fail_closed_until_encryption_works_then_the_reading_lands_once(
    device_factory, proxy_config_path, synapse, matrix_user, tmp_path
):
    """A Matrix login the homeserver no longer knows: readings get 5.03 (the device keeps
    them), nothing is posted in plaintext; the proxy logs in again and the same reading lands once."""
    from lowbw.proxy.config import load
    from lowbw.proxy.registry import Registry

    person = Person(synapse.url, matrix_user.user_id, matrix_user.password, tmp_path / "person")
    proxy = None
    try:
        dev = device_factory(encrypted=True)
        person.join(dev.room_id)
        with Registry(load(proxy_config_path).proxy.registry) as registry:
            registry.set_matrix_device(dev.name, "GONE", "syt_not_a_token_anymore")
        proxy = ProxyProcess(proxy_config_path)
        wire = dev.wire()
        codes = exchange_until_acked(wire, lambda mid: wire.reading([333], mid=mid))
        assert coap.SERVICE_UNAVAILABLE in codes and codes[-1] == coap.CHANGED, codes
        assert proxy.wait_for("no longer knows", 5), proxy.output()
        events = [e for e in raw_events(synapse, matrix_user, dev.room_id) if e["sender"] == dev.user_id]
        assert [e["type"] for e in events if "state_key" not in e] == ["m.room.encrypted"]
        got = _wait_notices(person, 1)
        assert [n.body for n in got] == ["temperature 33.3 °C"]
    finally:
        person.close()
        if proxy is not None:
            proxy.stop()


def test_token_mode_encrypts_too(token_proxy_config_path, synapse, matrix_user, tmp_path):
    """Token mode: the device user's own token is its Matrix device; readings are Megolm."""
    from tests.proxy.conftest import enroll_device

    person = Person(synapse.url, matrix_user.user_id, matrix_user.password, tmp_path / "person")
    proxy = None
    try:
        dev = enroll_device(token_proxy_config_path, matrix_user, synapse, encrypted=True)
        person.sync()
        proxy = ProxyProcess(token_proxy_config_path)
        wire = dev.wire()
        exchange_until_acked(wire, lambda mid: wire.reading([222], mid=mid))
        events = [e for e in raw_events(synapse, matrix_user, dev.room_id) if e["sender"] == dev.user_id]
        assert [e["type"] for e in events if "state_key" not in e] == ["m.room.encrypted"]
        assert [n.body for n in _wait_notices(person, 1)] == ["temperature 22.2 °C"]
        person.say(dev.room_id, "!%s ping" % dev.name)
        fetched = fetch_command(wire)
        assert fetched is not None and fetched.code == coap.CONTENT, proxy.output()
    finally:
        person.close()
        if proxy is not None:
            proxy.stop()


def test_a_room_that_becomes_encrypted_gets_megolm_from_then_on(
    device_factory, proxy_config_path, synapse, matrix_user, appservice, tmp_path
):
    person = Person(synapse.url, matrix_user.user_id, matrix_user.password, tmp_path / "person")
    proxy = None
    try:
        dev = device_factory()  # a plaintext room
        person.sync()
        proxy = ProxyProcess(proxy_config_path)
        wire = dev.wire()
        assert wire.exchange(wire.reading([1])).code == coap.CHANGED
        status, body = matrix_call(
            synapse.url,
            "PUT",
            "/_matrix/client/v3/rooms/%s/state/m.room.encryption/" % urllib.parse.quote(dev.room_id, safe=""),
            appservice.as_token,  # the room's creator (the device user) turns encryption on
            {"algorithm": "m.megolm.v1.aes-sha2"},
            query={"user_id": dev.user_id},
        )
        assert status == 200, body
        assert proxy.wait_for("%s: room %s is now end-to-end encrypted" % (dev.name, dev.room_id), 20)
        exchange_until_acked(wire, lambda mid: wire.reading([2], mid=mid))
        events = [
            e
            for e in raw_events(synapse, matrix_user, dev.room_id)
            if e["sender"] == dev.user_id and "state_key" not in e
        ]
        assert [e["type"] for e in events] == ["m.room.message", "m.room.encrypted"], events
        assert [n.body for n in _wait_notices(person, 2)][-1] == "temperature 0.2 °C"
    finally:
        person.close()
        if proxy is not None:
            proxy.stop()


def test_other_events_from_an_encrypted_device_are_megolm_too(
    device_factory, proxy_config_path, synapse, matrix_user, tmp_path
):
    """A client-API send (not a reading) into the encrypted room goes out encrypted."""
    from lowbw.wire import cbor, keys

    person = Person(synapse.url, matrix_user.user_id, matrix_user.password, tmp_path / "person")
    proxy = None
    try:
        dev = device_factory(encrypted=True)
        person.join(dev.room_id)
        proxy = ProxyProcess(proxy_config_path)
        wire = dev.wire()
        exchange_until_acked(wire, lambda mid: wire.reading([1], mid=mid))
        body = bytes(
            cbor.dumps(keys.compress({"msgtype": "m.text", "body": "door open"}, keys.TABLE_LOWBW_V1))
        )
        path = "/_matrix/client/v3/rooms/%s/send/m.room.message/t1" % urllib.parse.quote(dev.room_id, safe="")
        answer = wire.exchange(
            wire.request(coap.PUT, routes.encode_path(path), body, options=[(coap.CONTENT_FORMAT, b"\x3c")])
        )
        assert answer.code == coap.CHANGED, answer
        events = [
            e
            for e in raw_events(synapse, matrix_user, dev.room_id)
            if e["sender"] == dev.user_id and "state_key" not in e
        ]
        assert [e["type"] for e in events] == ["m.room.encrypted", "m.room.encrypted"]
        deadline = time.monotonic() + 20
        texts: list[str] = []
        while "door open" not in texts and time.monotonic() < deadline:
            person.sync(1000)
            texts = [getattr(e, "body", None) for e in person.seen]
        assert "door open" in texts, person.seen
    finally:
        person.close()
        if proxy is not None:
            proxy.stop()


def test_a_command_whose_key_comes_late_is_decrypted_when_it_arrives(
    device_factory, proxy_config_path, synapse, matrix_user, tmp_path
):
    """The person's client posts an encrypted command before sharing its room key (a key that
    arrives late): the proxy logs why it cannot decrypt it, keeps it, and delivers it once
    the key arrives."""
    person = Person(synapse.url, matrix_user.user_id, matrix_user.password, tmp_path / "person")
    proxy = None
    try:
        dev = device_factory(encrypted=True)
        person.join(dev.room_id)
        proxy = ProxyProcess(proxy_config_path)
        wire = dev.wire()
        exchange_until_acked(wire, lambda mid: wire.reading([1], mid=mid))
        olm = person.client.olm
        olm.create_outbound_group_session(dev.room_id)
        session = olm.outbound_group_sessions[dev.room_id]
        at_index_0 = session.pickle("t")  # the key as it was before this message
        session.shared = True  # encrypt before any device has the key
        payload = olm.group_encrypt(
            dev.room_id,
            {"type": "m.room.message", "content": {"msgtype": "m.text", "body": "!%s late key" % dev.name}},
        )
        status, body = matrix_call(
            synapse.url,
            "PUT",
            "/_matrix/client/v3/rooms/%s/send/m.room.encrypted/late1"
            % urllib.parse.quote(dev.room_id, safe=""),
            matrix_user.access_token,
            payload,
        )
        assert status == 200, body
        assert proxy.wait_for("not decrypted: no room key", 20), proxy.output()
        fetched = wire.exchange(wire.request(coap.GET, [routes.ROUTE_COMMANDS]))
        assert fetched.code == coap.VALID  # nothing to deliver yet
        # Now the key: shared over Olm to every device in the room.
        # Share the key the message was encrypted with (index 0), as a client whose
        # to-device message was merely delayed would have.
        from nio.crypto.sessions import OutboundGroupSession

        olm.outbound_group_sessions[dev.room_id] = OutboundGroupSession.from_pickle(at_index_0, "t")

        async def share() -> None:
            c = person.client
            await c.joined_members(dev.room_id)
            c.olm.users_for_key_query.add(dev.user_id)
            await c.keys_query()
            await c.share_group_session(dev.room_id, ignore_unverified_devices=True)

        person.run(share())
        assert proxy.wait_for("decrypted after its room key arrived", 40), proxy.output()
        fetched = fetch_command(wire)
        from lowbw.wire import cbor

        _cid, sender, text, _event_id = cbor.loads(fetched.payload)
        assert (sender, text) == (matrix_user.user_id, "late key")
    finally:
        person.close()
        if proxy is not None:
            proxy.stop()
