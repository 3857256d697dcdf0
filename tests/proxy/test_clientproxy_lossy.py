"""Issue 11: lossy links must not stall (the service target, measured on real processes).

At ``1kbps-lossy`` (1000 bit/s, 10 % loss in bursts of mean length 2) a
``full_state`` sync once took 207 s (a block-wise transfer idle 3 min 23 s
between blocks: aiocoap's doubling backoff) and a logout 116 s. Target: no
request takes more than 30 s beyond its own airtime, the bytes the
client-proxy sent and received for it at 1 kbit/s.
"""

from __future__ import annotations

import base64
import random
import time
import urllib.parse
from typing import Any

import pytest

from lowbw.testing.synapse import SynapseServer
from tests.proxy.test_client_proxy import http, login_body, person  # noqa: F401 (fixture)

TARGET_BEYOND_AIRTIME = 30.0
LINK_BPS = 1000.0


def quiet(stack: Any, settle: float = 2.0, limit: float = 20.0) -> dict[str, Any]:
    """The radio counters once nothing has moved for ``settle`` seconds (the park that
    follows a sync, retransmissions), so each request is measured on its own bytes."""
    deadline = time.monotonic() + limit
    last = stack.radio_stats()
    while time.monotonic() < deadline:
        time.sleep(settle)
        now = stack.radio_stats()
        if now == last:
            break
        last = now
    return last


@pytest.mark.parametrize("seed", [116])
def test_no_request_stalls_at_1kbps_lossy(
    client_stack: Any,
    synapse: SynapseServer,
    person: tuple[str, str, str],  # noqa: F811
    seed: int,
) -> None:
    localpart, password, user_id = person
    # Something for the full_state sync to carry, several blocks long: a room with
    # messages of incompressible text (set up directly at the homeserver).
    direct = http(synapse.url, "POST", "/_matrix/client/v3/login", login_body(localpart, password))[2][
        "access_token"
    ]
    room = http(synapse.url, "POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat"}, direct)[2][
        "room_id"
    ]
    rng = random.Random(seed)
    for i in range(8):
        text = base64.b64encode(rng.randbytes(240)).decode()
        http(
            synapse.url,
            "PUT",
            "/_matrix/client/v3/rooms/%s/send/m.room.message/pre%d" % (urllib.parse.quote(room), i),
            {"msgtype": "m.text", "body": text},
            direct,
        )
    stack = client_stack(preset="1kbps-lossy", seed=seed)
    token = ""
    steps: list[tuple[str, str, str, Any]] = [
        ("login", "POST", "/_matrix/client/v3/login", login_body(localpart, password)),
        ("full_state sync", "GET", "/_matrix/client/v3/sync?full_state=true&timeout=0", None),
        (
            "send",
            "PUT",
            "/_matrix/client/v3/rooms/%s/send/m.room.message/lossy1" % urllib.parse.quote(room),
            {"msgtype": "m.text", "body": "sent across a lossy radio"},
        ),
        ("logout", "POST", "/_matrix/client/v3/logout", {}),
    ]
    report = []
    for name, method, path, body in steps:
        before = quiet(stack)
        t0 = time.monotonic()
        status, _, answer = http(stack.url, method, path, body, token=token or None, timeout=300)
        took = time.monotonic() - t0
        after = stack.radio_stats()
        assert status == 200, (name, status, answer)
        if name == "login":
            token = answer["access_token"]
        if name == "full_state sync":
            events = answer["rooms"]["join"][room]["timeline"]["events"]
            assert sum(e["type"] == "m.room.message" for e in events) >= 5
        nbytes = (after["tx_bytes"] - before["tx_bytes"]) + (after["rx_bytes"] - before["rx_bytes"])
        airtime = nbytes * 8 / LINK_BPS
        report.append((name, took, nbytes, airtime, after["tx"] - before["tx"]))
    print("\nseed %d at 1kbps-lossy:" % seed)
    for name, took, nbytes, airtime, tx in report:
        print(
            "  %-16s %6.1f s  %6d B on the air (%5.1f s airtime, %d datagrams up)  beyond airtime %5.1f s"
            % (name, took, nbytes, airtime, tx, took - airtime)
        )
    for name, took, _, airtime, _ in report:
        assert took - airtime <= TARGET_BEYOND_AIRTIME, (name, took, airtime)
