"""docs/PROTOCOL.md's worked example is what the code actually sends."""

from __future__ import annotations

import re
from pathlib import Path

from bench import wire_bytes

DOC = Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"


def table_hex() -> str:
    """The first cell of every Markdown table row that holds only hex bytes,
    concatenated in document order (a datagram is labelled over several rows)."""
    out = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| `"):
            continue
        cell = line.split("|")[1].replace("`", "").strip()
        if re.fullmatch(r"[0-9a-f]{2}( [0-9a-f]{2})*( +[0-9a-f]{2}( [0-9a-f]{2})*)*", cell):
            out.append(cell.replace(" ", ""))
    return "".join(out)


def test_worked_example_bytes_are_in_the_document() -> None:
    text = DOC.read_text(encoding="utf-8")
    flat = table_hex()
    for name, data in wire_bytes.exchange(deterministic=True).items():
        assert data.hex() in flat, "%s (%d bytes) in PROTOCOL.md is out of date" % (name, len(data))
        assert "(%d bytes)" % len(data) in text, name


def test_budget_figures_in_the_document_match_the_code() -> None:
    f = wire_bytes.figures()
    text = DOC.read_text(encoding="utf-8")
    assert "%d + %d = %d bytes" % (f["warm_request"], f["warm_response"], f["warm_total"]) in text
    assert "%d + %d = %d" % (f["cold_request"], f["cold_response"], f["cold_total"]) in text


def test_commands_pending_example_matches_the_codec() -> None:
    from lowbw.proxy.transport import COMMANDS_PENDING_OPTION
    from lowbw.wire import coap

    ack = coap.Message(mtype=coap.ACK, code=coap.CHANGED, mid=2)
    ack.add_option(COMMANDS_PENDING_OPTION, coap.uint_encode(1))
    assert "`%s`" % ack.encode().hex(" ") in DOC.read_text(encoding="utf-8")
