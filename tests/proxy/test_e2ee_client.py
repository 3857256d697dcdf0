"""Stock end-to-end encrypting clients across the radio (issue 12).

Two matrix-nio clients with ``[e2e]`` (vodozemac) chat in an encrypted room
(``nio_session.run_encrypted_chat``): keys uploaded, queried and claimed, the
Megolm room keys shared by Olm to-device, ``m.room.encrypted`` sent and
decrypted, a ``/room_keys`` backup made and read back. Once directly against
Synapse, once with Alice through ``lowbw client-proxy`` at 1 kbit/s with
bursty loss; the two transcripts (what each client decrypted, every response
class and status, the room as Synapse stores it, what the backup gave back)
must be equal.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lowbw.testing.synapse import SynapseServer

from .nio_session import MEGOLM, E2eeTranscript, run, run_encrypted_chat

MESSAGES = 2
BOB_MESSAGES = 1


def _users(synapse: SynapseServer) -> tuple[tuple[str, str], tuple[str, str]]:
    pair = []
    for name in ("alice", "bob"):
        localpart = "e2ee_%s_%s" % (name, secrets.token_hex(4))
        password = secrets.token_urlsafe(12)
        synapse.register_user(localpart, password)
        pair.append((localpart, password))
    return pair[0], pair[1]


def _chat(
    synapse: SynapseServer, alice_url: str, store: Path, probe: Callable[[], dict[str, Any]] | None = None
) -> E2eeTranscript:
    alice, bob = _users(synapse)
    transcript: E2eeTranscript = run(
        run_encrypted_chat(
            alice_url,
            alice,
            synapse.url,
            bob,
            store,
            direct_url=synapse.url,
            messages=MESSAGES,
            bob_messages=BOB_MESSAGES,
            probe=probe,
        )
    )
    return transcript


def _report(label: str, t: E2eeTranscript, stats: dict[str, Any] | None = None) -> None:
    print("\n%s: %.1f s, %d sync rounds" % (label, sum(t.seconds.values()), t.sync_rounds))
    for phase, seconds in t.seconds.items():
        up, down = t.radio.get(phase, (0, 0))
        print("  %-34s %7.2f s   radio up %6d B, down %6d B" % (phase, seconds, up, down))
    if stats is not None:
        print("  radio (client-proxy UDP): %s" % json.dumps(stats, sort_keys=True))


def _check(t: E2eeTranscript) -> None:
    assert t.errors == []
    assert t.undecryptable == []
    from_alice = [("bob", "@alice", "RoomMessageText (decrypted)", "secret %d" % i) for i in range(MESSAGES)]
    from_bob = [
        ("alice", "@bob", "RoomMessageText (decrypted)", "bob secret %d" % i) for i in range(BOB_MESSAGES)
    ]
    assert [d for d in t.decrypted if d[1] == "@alice" and d[0] == "bob"] == from_alice
    assert [d for d in t.decrypted if d[1] == "@bob" and d[0] == "alice"] == from_bob
    # Synapse holds ciphertext only: every message is m.room.encrypted with Megolm.
    assert t.server_events == [("m.room.encryption", None)] + [("m.room.encrypted", MEGOLM)] * (
        MESSAGES + BOB_MESSAGES
    )
    phases = {(s.who, s.phase) for s in t.steps}
    assert {("alice", "keys_upload"), ("alice", "keys_query"), ("alice", "share_group_session")} <= phases
    assert t.room_keys[1:] == [
        ("put body", 200, 1),
        ("put path", 200, 2),
        ("read back", 200, True),
        ("read one", 200, True),
    ]


def test_encrypted_chat_direct(synapse: SynapseServer, tmp_path: Path) -> None:
    t = _chat(synapse, synapse.url, tmp_path / "direct")
    _report("direct", t)
    _check(t)


def test_encrypted_chat_through_lowbw_1kbps_lossy(
    synapse: SynapseServer, client_stack: Any, tmp_path: Path
) -> None:
    direct = _chat(synapse, synapse.url, tmp_path / "direct")
    stack = client_stack(preset="1kbps-lossy", seed=7)
    through = _chat(synapse, stack.url, tmp_path / "through", stack.radio_stats)
    stats = stack.radio_stats()
    _report("direct", direct)
    _report("through lowbw (1kbps-lossy, seed 7)", through, stats)
    _check(direct)
    _check(through)
    assert through == direct
    assert stats["tx_bytes"] > 0 and stats["rx_bytes"] > 0
