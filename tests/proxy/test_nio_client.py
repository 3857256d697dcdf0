"""A real Matrix client (matrix-nio) through ``lowbw client-proxy`` sees what it sees on Synapse.

The scripted session lives in ``nio_session``; here it runs once directly against
Synapse and once through the client-side proxy, radio_sim and the lowbw proxy,
and the two transcripts are compared whole.  Bob talks to Synapse directly in
both runs, so only Alice's traffic crosses the radio.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from lowbw.testing.synapse import SynapseServer

from .nio_session import Transcript, make_room, run, run_chat, send_single

MESSAGES = 10


def _users(synapse: SynapseServer) -> tuple[tuple[str, str], tuple[str, str]]:
    """A fresh (localpart, password) pair for Alice and for Bob, registered on Synapse."""
    pair = []
    for name in ("alice", "bob"):
        localpart = "nio_%s_%s" % (name, secrets.token_hex(4))
        password = secrets.token_urlsafe(12)
        synapse.register_user(localpart, password)
        pair.append((localpart, password))
    return pair[0], pair[1]


def _direct(synapse: SynapseServer) -> Transcript:
    alice, bob = _users(synapse)
    transcript: Transcript = run(run_chat(synapse.url, alice, bob, synapse.url, MESSAGES))
    return transcript


def _report(label: str, transcript: Transcript, stats: dict[str, Any] | None = None) -> None:
    total = sum(transcript.seconds.values())
    print("\n%s: %.1f s, %d sync rounds" % (label, total, transcript.sync_rounds))
    for phase, seconds in transcript.seconds.items():
        print("  %-24s %7.2f s" % (phase, seconds))
    if stats is not None:
        print("  radio (client-proxy UDP): %s" % json.dumps(stats, sort_keys=True))


def test_direct_transcript(synapse: SynapseServer) -> None:
    transcript = _direct(synapse)
    _report("direct", transcript)

    assert transcript.errors == []
    sent = [("@alice", "message %d" % i) for i in range(MESSAGES)]
    from_bob = [("@bob", "bob message 0"), ("@bob", "bob message 1")]
    assert transcript.incremental_messages == from_bob
    # Pagination walks back to the room's creation and returns every message in order.
    assert transcript.paginated_messages == sent + from_bob
    assert transcript.pages[-1][-1]["type"] == "m.room.create"
    assert all(len(page) <= 5 for page in transcript.pages)
    assert transcript.members == [("@alice", "alice"), ("@bob", "bob")]
    # The initial sync held Alice's messages, each a RoomMessageText with its body.
    bodies = [e["content"]["body"] for e in transcript.initial_sync_timeline if e["type"] == "m.room.message"]
    assert bodies == [body for _, body in sent]
    assert {e["nio"] for e in transcript.initial_sync_timeline if e["type"] == "m.room.message"} == {
        "RoomMessageText"
    }
    phases = [(s.who, s.phase, s.response) for s in transcript.steps]
    assert phases[:5] == [
        ("alice", "login", "LoginResponse"),
        ("bob", "login", "LoginResponse"),
        ("alice", "room_create", "RoomCreateResponse"),
        ("alice", "room_invite", "RoomInviteResponse"),
        ("bob", "join", "JoinResponse"),
    ]
    login = transcript.steps[0]
    assert login.status == 200 and login.content_type == "application/json"
    assert {"access_token", "device_id", "user_id"} <= set(login.keys)
    assert {s.keys for s in transcript.steps if s.phase == "room_send"} == {("event_id",)}
    # Two runs against Synapse directly agree: the transcript holds nothing run-specific.
    assert _direct(synapse) == transcript


def test_nio_through_lowbw_1kbps_lossy(synapse: SynapseServer, client_stack: Any) -> None:
    direct = _direct(synapse)
    stack = client_stack(preset="1kbps-lossy", seed=7)
    alice, bob = _users(synapse)
    through: Transcript = run(run_chat(stack.url, alice, bob, synapse.url, MESSAGES))
    stats = stack.radio_stats()
    _report("direct", direct)
    _report("through lowbw (1kbps-lossy, seed 7)", through, stats)

    assert through.errors == []
    assert through == direct
    assert stats["tx"] > 0 and stats["rx"] > 0
    assert stats["tx_bytes"] > 0 and stats["rx_bytes"] > 0


def test_nio_single_message_100bps(synapse: SynapseServer, client_stack: Any) -> None:
    """One message from a logged-in nio client at 100 bit/s; Bob sees what a direct send gives."""
    alice = synapse.register_user("nio_alice_%s" % secrets.token_hex(4), secrets.token_urlsafe(12))
    bob = synapse.register_user("nio_bob_%s" % secrets.token_hex(4), secrets.token_urlsafe(12))
    room_id = run(make_room(synapse.url, alice, bob))
    body = "hello at 100 bit/s"
    direct = run(send_single(synapse.url, synapse.url, alice, bob, room_id, body))

    stack = client_stack(preset="100bps", seed=7)
    through = run(send_single(stack.url, synapse.url, alice, bob, room_id, body, request_timeout=240.0))
    stats = stack.radio_stats()
    print(
        "\n100 bit/s single message: direct %.2f s, through lowbw %.1f s" % (direct.seconds, through.seconds)
    )
    print("  radio (client-proxy UDP): %s" % json.dumps(stats, sort_keys=True))

    assert through == direct
    assert through.event["content"] == {"msgtype": "m.text", "body": body}
    assert through.event["sender"] == "@alice"
    assert stats["tx_bytes"] > 0 and stats["rx_bytes"] > 0
