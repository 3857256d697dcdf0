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
    # Both link profiles: the compact one's example and the standard one's.
    for name, data in wire_bytes.examples().items():
        assert data.hex() in flat, "%s (%d bytes) in PROTOCOL.md is out of date" % (name, len(data))
        assert "(%d bytes)" % len(data) in text, name


def test_budget_figures_in_the_document_match_the_code() -> None:
    f = wire_bytes.figures()
    text = DOC.read_text(encoding="utf-8")
    assert "%d + %d = %d bytes" % (f["warm_request"], f["warm_response"], f["warm_total"]) in text
    assert "%d + %d = %d" % (f["cold_request"], f["cold_response"], f["cold_total"]) in text
    for k in ("standard_warm", "standard_cold"):
        assert "%d + %d = %d" % (f[k + "_request"], f[k + "_response"], f[k + "_total"]) in text


def test_byte_budgets_hold() -> None:
    """Issue 14's targets for the default (compact) profile of a 100 bit/s link, and
    DESIGN.md's for the standard one: this fails as soon as a budget is exceeded."""
    f = wire_bytes.figures()
    assert f["warm_total"] <= 28 and f["budget_warm_total"] == 28
    assert f["cold_total"] <= 120 and f["budget_cold_total"] == 120
    assert f["cold_fresh_total"] <= 120
    assert f["standard_warm_total"] <= 52 and f["standard_cold_total"] <= 170
    assert f["within_budget"] is True


def test_commands_pending_example_matches_the_codec() -> None:
    from lowbw.proxy.transport import COMMANDS_PENDING_OPTION
    from lowbw.wire import coap

    ack = coap.Message(mtype=coap.ACK, code=coap.CHANGED, mid=2)
    ack.add_option(COMMANDS_PENDING_OPTION, coap.uint_encode(1))
    assert "`%s`" % ack.encode().hex(" ") in DOC.read_text(encoding="utf-8")


def client_send_example() -> dict[str, bytes]:
    """The worked example of "Client sessions": a message send on a client session, both ways."""
    from lowbw.clientproxy.txnids import short_id
    from lowbw.compact.codec import BodyCodec
    from lowbw.compact.refs import ClientRefs, ProxyRefs
    from lowbw.proxy.clients import BEARER_SLOT_OPTION
    from lowbw.wire import coap, keys, routes

    room = "!MNJs0Rw3dayqN8OtY4NhNcbwOrs7XOkopiiddy_ij4Q"
    event = "$w-_jwf6X9-DFZdrxRimJB9jFLohPp_dzw8hpLsr5tbw"
    txn = "2b3c5d7e-1111-4222-8333-944455556666"
    table = keys.get_table(keys.TABLE_LOWBW_V1)
    proxy, client = ProxyRefs(), ClientRefs()
    # Earlier in the session the room ID came down once (createRoom) and the
    # client-proxy reported holding it.
    client.decode(proxy.encode({"room_id": room}, table.ids), table.names)
    proxy.confirm(client.known)
    segs = routes.encode_path("/_matrix/client/v3/rooms/%s/send/m.room.message/%s" % (room, short_id(txn)))
    request = coap.Message(coap.CON, coap.PUT, 0x1234, b"\x05")
    coap.set_uri_path(request, [client.refer_text(s) for s in segs])
    payload, cf = BodyCodec(keys.TABLE_LOWBW_V1, 1, client).encode(
        {"msgtype": "m.text", "body": "The door is open"}
    )
    coap.set_content_format(request, cf)
    request.add_option(BEARER_SLOT_OPTION, b"")
    request.payload = payload
    answer = coap.Message(coap.ACK, coap.CHANGED, 0x1234, b"\x05")
    answer.payload, _ = BodyCodec(keys.TABLE_LOWBW_V1, 1, proxy).encode({"event_id": event})
    return {"client request": coap.encode(request), "client answer": coap.encode(answer)}


def test_client_session_example_is_what_the_code_sends() -> None:
    flat = table_hex()
    text = DOC.read_text(encoding="utf-8")
    for name, data in client_send_example().items():
        assert data.hex() in flat, "%s (%d bytes) in PROTOCOL.md is out of date" % (name, len(data))
        assert "(%d bytes)" % len(data) in text, name


def test_unconfirmed_receipt_example_is_what_the_client_proxy_sends() -> None:
    """*Receipts, read markers and typing*: the NON request with No-Response, built
    by the client-proxy's own request code (``ClientProxy._message``)."""
    from aiocoap.numbers.types import NON

    from lowbw.clientproxy.app import NO_RESPONSE_ALL, ClientProxy, _SessionState
    from lowbw.compact.refs import ClientRefs
    from lowbw.wire import coap, handshake, keys

    class Link:
        remote = None
        caps = keys.TABLE_LOWBW_V1 | handshake.CAP_DICT_V1
        compact = False  # the standard profile: the example as documented

    refs = ClientRefs()
    for i in range(16):  # identifier 3: the room, 15: the event
        refs._learn(i, {3: "!R", 15: "$E"}.get(i, "@u%d:x" % i))
    st = _SessionState(refs=refs, slots={"tok": 0}, confirmed={"tok"})
    st.refs.reported = st.refs.known  # nothing new to report
    cp = ClientProxy.__new__(ClientProxy)
    cp.config = type("C", (), {"identifier_refs": True, "byte_strings": False, "dictionary": True})()
    cp.link = Link()  # type: ignore[assignment]
    cp._sessions = {"session": st}
    msg, report = cp._message(
        coap.POST,  # type: ignore[arg-type]
        "/_matrix/client/v3/rooms/!R/receipt/m.read/$E",
        [],
        {"thread_id": "main"},
        "tok",
        "session",
        st,
        unconfirmed=True,
    )
    assert report is None
    msg.mtype = NON
    msg.mid = 0x1234
    msg.opt.no_response = NO_RESPONSE_ALL
    data = msg.encode()
    assert data.hex() in table_hex(), "the receipt example (%d bytes) in PROTOCOL.md is out of date" % len(
        data
    )
    assert "Client request (%d bytes)" % len(data) in DOC.read_text(encoding="utf-8")


def test_parked_sync_example_is_what_the_options_make() -> None:
    """*Syncs*: a parked sync with Query-Same, Echo-Hold and Park-Ack, in the
    option numbers and values the client-proxy uses."""
    from aiocoap.message import Message
    from aiocoap.numbers.codes import Code
    from aiocoap.numbers.types import CON
    from aiocoap.optiontypes import OpaqueOption, UintOption

    from lowbw.clientproxy.app import PARK_ACK_ASKED
    from lowbw.clientproxy.config import DEFAULT_ECHO_HOLD
    from lowbw.proxy.clients import (
        BEARER_SLOT_OPTION,
        ECHO_HOLD_OPTION,
        PARK_ACK_OPTION,
        QUERY_SAME_OPTION,
    )

    msg = Message(code=Code.GET, uri_path=["~"], uri_query=["since=\x0141"])
    msg.mtype, msg.mid, msg.token = CON, 0x1235, b"\x07"
    msg.opt.add_option(UintOption(BEARER_SLOT_OPTION, 0))
    msg.opt.add_option(UintOption(ECHO_HOLD_OPTION, int(DEFAULT_ECHO_HOLD)))
    msg.opt.add_option(OpaqueOption(QUERY_SAME_OPTION, b""))
    msg.opt.add_option(UintOption(PARK_ACK_OPTION, PARK_ACK_ASKED))
    data = msg.encode()
    assert data.hex() in table_hex()
    assert "parked sync, %d bytes" % len(data) in DOC.read_text(encoding="utf-8")


def compact_client_example() -> dict[str, bytes]:
    """*Compact client sessions*: a whoami request and its answer, as CoAP and as
    rule-3 frames of a KK session made with the worked examples' fixed keys."""
    from lowbw.compact import headers
    from lowbw.proxy.clients import BEARER_SLOT_OPTION
    from lowbw.wire import cbor, coap, crypto, frames, handshake, keys, routes

    proxy_pub = crypto.x25519_base(wire_bytes.EXAMPLE_PROXY_PRIV)
    client_pub = crypto.x25519_base(wire_bytes.EXAMPLE_DEVICE_PRIV)
    caps = keys.TABLE_LOWBW_V1 | handshake.CAP_DICT_V1  # the client-proxy's, CAP_COMPACT added by KK
    ini = handshake.Initiator(
        wire_bytes.EXAMPLE_DEVICE_PRIV,
        proxy_pub,
        caps=caps,
        e_priv=wire_bytes.EXAMPLE_DEVICE_EPH,
        hsn=wire_bytes.EXAMPLE_HSN,
        compact=True,
    )
    login = coap.Message(coap.CON, coap.POST, 0x1234, b"\x05")
    coap.set_uri_path(login, routes.encode_path("/_matrix/client/v3/login"))
    kk1 = ini.start(coap.encode(login))
    assert kk1[0] == frames.HS_KK1 and kk1[1:3] == handshake.key_id(client_pub)
    responder = handshake.Responder(
        wire_bytes.EXAMPLE_PROXY_PRIV, e_priv=wire_bytes.EXAMPLE_PROXY_EPH, rs=client_pub
    )
    _, offered, request = responder.read_init(kk1)
    assert offered == caps | handshake.CAP_COMPACT == 0x92 and request == coap.encode(login)
    kk2, proxy = responder.respond(wire_bytes.EXAMPLE_SID, handshake.negotiate_caps(offered), b"")
    client, _, _ = ini.finish(kk2)
    assert client.mid == proxy.mid == 0x1234

    msg = coap.Message(coap.CON, coap.GET, 0x1235, b"\x06")
    coap.set_uri_path(msg, routes.encode_path("/_matrix/client/v3/account/whoami"))
    msg.add_option(BEARER_SLOT_OPTION, b"")
    req = coap.encode(msg)
    tokens = headers.TokenMids()
    tokens.sent(req)
    up = headers.seal_up(client, req)
    assert headers.open_up(proxy, up) == req
    ans = coap.Message(coap.ACK, coap.CONTENT, 0x1235, b"\x06")
    ans.payload = bytes(cbor.dumps(keys.compress({"user_id": "@ann:example.org"}, keys.TABLE_LOWBW_V1)))
    answer = coap.encode(ans)
    down = headers.seal_down(proxy, answer)
    assert tokens.open_down(client, down) == answer
    return {
        "Compact client request, CoAP": req,
        "Compact client request, on the air": up,
        "Compact client answer, CoAP": answer,
        "Compact client answer, on the air": down,
    }


def test_compact_client_example_is_what_the_code_sends() -> None:
    import os

    from lowbw.wire import frames

    flat = table_hex()
    text = DOC.read_text(encoding="utf-8")
    ex = compact_client_example()
    for name, data in ex.items():
        assert data.hex() in flat, "%s (%d bytes) in PROTOCOL.md is out of date" % (name, len(data))
        assert "%s (%d bytes)" % (name, len(data)) in text, name
    up, down = ex["Compact client request, on the air"], ex["Compact client answer, on the air"]
    req, answer = ex["Compact client request, CoAP"], ex["Compact client answer, CoAP"]
    # The savings the text states: 2 bytes up (and 2 for the renumbered Bearer-Slot), 3 down,
    # against whole compact frames and standard ones.
    raw_up, raw_down = 2 + len(req) + frames.C_TAG, 1 + len(answer) + frames.C_TAG
    assert (raw_up - len(up), raw_down - len(down)) == (4, 3)
    std_up = len(frames.Session(os.urandom(32), os.urandom(32), 0x2A, True).seal(req))
    std_down = len(frames.Session(os.urandom(32), os.urandom(32), 0x2A, False).seal(answer))
    figures = (
        "%d + %d = %d bytes; whole in compact frames (rule 0) %d + %d = %d, in a\n"
        "standard session %d + %d = %d."
        % (
            len(up),
            len(down),
            len(up) + len(down),
            raw_up,
            raw_down,
            raw_up + raw_down,
            std_up,
            std_down,
            std_up + std_down,
        )
    )
    assert figures in text
