"""Byte budgets of a stock client's sessions through lowbw (issue 14): fail when exceeded.

``bench/chat_session.py`` itself, side (b) only (``--only lowbw``: no nginx
needed), on the ``fast`` radio preset so that the test waits for no airtime:
the bytes on the air are those of the 1 kbit/s run (the same datagrams; the
MTU is larger, but every answer of these sessions fits one frame either way).
The realistic session runs reduced (4 messages, 1 s long-polls). The budgets
are the measured figures plus a margin for what varies from run to run
(Synapse's numbers and timestamps, the length of sync tokens); the README
gives the full sessions against HTTPS+JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench import chat_session

# IP bytes (UDP payload + 28 B per datagram) of the whole session, side (b).
CHAT_BUDGET = 3_000
# The realistic session reduced to 4 messages (2 each way), 1 s long-polls.
REALISTIC_4_BUDGET = 3_100


def run(tmp_path: Path, *args: str) -> dict[str, object]:
    out = tmp_path / "result.json"
    status = chat_session.main(
        ["--only", "lowbw", "--preset", "fast", "--capture", "no", "--json", str(out), *args]
    )
    result: dict[str, object] = json.loads(out.read_text())
    assert status == 0, result.get("lowbw")
    return result


def lowbw_total(result: dict[str, object]) -> int:
    lowbw = result["lowbw"]
    assert isinstance(lowbw, dict)
    return int(lowbw["total"]["ip_bytes"])


def test_chat_session_stays_within_its_byte_budget(tmp_path: Path) -> None:
    result = run(tmp_path, "--session", "chat")
    total = lowbw_total(result)
    assert total <= CHAT_BUDGET, "chat session: %d IP bytes on the air, budget %d" % (total, CHAT_BUDGET)
    phases = {p["name"]: p for p in result["lowbw"]["phases"]}  # type: ignore[index]
    assert phases["empty_sync"]["ip_bytes"] == 0  # idle long-polls cost nothing on the air


def test_realistic_session_stays_within_its_byte_budget(tmp_path: Path) -> None:
    result = run(tmp_path, "--session", "realistic", "--messages", "4", "--sync-timeout", "1000")
    total = lowbw_total(result)
    assert total <= REALISTIC_4_BUDGET, "realistic session (4 messages): %d IP bytes, budget %d" % (
        total,
        REALISTIC_4_BUDGET,
    )
    phases = {p["name"]: p for p in result["lowbw"]["phases"]}  # type: ignore[index]
    assert phases["idle"]["ip_bytes"] == 0  # the sync loop between messages: free
    # A receipt is one datagram up and nothing back.
    assert phases["receipt"]["packets_down"] == 0
