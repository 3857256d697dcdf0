"""Issue 11, client-proxy side: a dead link is noticed, the client stays on the radio,
answers match the homeserver's, config typos are refused, lossy links do not stall.

Real processes throughout (tests/proxy/clientstack.py): Synapse, ``lowbw proxy
run``, ``radio_sim relay`` and ``lowbw client-proxy``; answers are compared
with what the same Synapse says directly.
"""

from __future__ import annotations

import http.client as httpc
import json
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from lowbw.clientproxy.retransmit import DEAD_LINK_ACK_TIMEOUTS, ClientTuning
from lowbw.testing.synapse import SynapseServer
from tests.proxy.clientstack import demo
from tests.proxy.test_client_proxy import http, login_body, person  # noqa: F401 (fixture)


def raw_http(
    base: str, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request with exactly the headers given (``Host`` included), as a browser might send it."""
    parts = urllib.parse.urlsplit(base)
    conn = httpc.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host="Host" in (headers or {}))
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def login(stack: Any, who: tuple[str, str, str]) -> str:
    status, _, body = http(stack.url, "POST", "/_matrix/client/v3/login", login_body(who[0], who[1]))
    assert status == 200, body
    token: str = body["access_token"]
    return token


# -- 1. dead link -------------------------------------------------------------------------


def test_dead_link_is_noticed_within_the_bound_and_the_next_request_handshakes(
    client_stack: Any,
    person: tuple[str, str, str],  # noqa: F811
) -> None:
    stack = client_stack(preset="fast")
    token = login(stack, person)
    assert http(stack.url, "GET", "/_matrix/client/v3/account/whoami", token=token)[0] == 200
    handshakes = stack.radio_stats()["handshakes"]
    # The bound: dead_link_timeout's default at the configured rate (request_timeout stays 300 s).
    link_bps = float(stack.client_config.read_text().split("link_bps = ")[1].split()[0])
    bound = ClientTuning(link_bps, mtu=65507).dead_link_timeout
    assert bound <= DEAD_LINK_ACK_TIMEOUTS * ClientTuning(link_bps, mtu=65507).ACK_TIMEOUT

    stack.proxy.popen.kill()  # SIGKILL: no Session-End, the session just vanishes
    stack.proxy.popen.wait(10)
    t0 = time.monotonic()
    status, _, body = http(stack.url, "GET", "/_matrix/client/v3/account/whoami", token=token, timeout=120)
    took = time.monotonic() - t0
    print("\n504 after %.1f s (dead_link_timeout %.1f s)" % (took, bound))
    assert status == 504 and body["errcode"] == "M_UNKNOWN" and body["error"].startswith("lowbw:")
    assert took <= bound + 3.0
    assert stack.radio_stats()["dead"] == 1

    # A proxy again, same port and registry: the next request handshakes anew and succeeds.
    assert stack.proxy_config is not None
    stack.proxy = demo.start_proxy(stack.proxy_config, stack.workdir / "proxy2.log", track=stack.procs)
    t0 = time.monotonic()
    status, _, who = http(stack.url, "GET", "/_matrix/client/v3/account/whoami", token=token, timeout=120)
    assert status == 200 and who["user_id"] == person[2]
    assert time.monotonic() - t0 < bound
    assert stack.radio_stats()["handshakes"] > handshakes


# -- 2. Host header -----------------------------------------------------------------------


def test_only_local_host_names_are_served_and_cors_stays(client_stack: Any) -> None:
    stack = client_stack(preset="fast")
    port = urllib.parse.urlsplit(stack.url).port
    path = "/_matrix/client/versions"
    for host in ("localhost", "localhost:%d" % port, "127.0.0.1:%d" % port, "127.0.0.1", "[::1]:%d" % port):
        status, _, _ = raw_http(stack.url, "GET", path, {"Host": host})
        assert status == 200, host
    for host in ("evil.example", "evil.example:%d" % port, "localhost.evil.example", "[::1", "a:b:c"):
        status, headers, body = raw_http(stack.url, "GET", path, {"Host": host})
        assert status == 421, host
        err = json.loads(body)
        assert err["errcode"] == "M_FORBIDDEN" and err["error"].startswith("lowbw:")
        assert headers["Content-Type"].startswith("application/json")
    # Nothing crossed for the refused ones, not even a login attempt.
    before = stack.radio_stats()
    status, _, _ = raw_http(
        stack.url, "POST", "/_matrix/client/v3/login", {"Host": "rebound.example:%d" % port}, b"{}"
    )
    assert status == 421 and stack.radio_stats()["tx"] == before["tx"]
    # Element Web's preflight and CORS headers, from a page on another origin.
    status, headers, _ = raw_http(
        stack.url,
        "OPTIONS",
        "/_matrix/client/v3/login",
        {
            "Host": "localhost:%d" % port,
            "Origin": "https://app.element.io",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert "Authorization" in headers["Access-Control-Allow-Headers"]
    status, headers, _ = raw_http(
        stack.url, "GET", path, {"Host": "localhost:%d" % port, "Origin": "https://app.element.io"}
    )
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"


# -- 3. never leave the radio ---------------------------------------------------------------


def test_well_known_names_the_client_proxy(
    client_stack: Any,
    synapse: SynapseServer,
    person: tuple[str, str, str],  # noqa: F811
) -> None:
    stack = client_stack(preset="fast")
    direct = http(synapse.url, "POST", "/_matrix/client/v3/login", login_body(person[0], person[1]))[2]
    assert direct["well_known"]["m.homeserver"]["base_url"].startswith(
        synapse.url
    )  # what a client would follow
    status, _, body = http(stack.url, "POST", "/_matrix/client/v3/login", login_body(person[0], person[1]))
    assert status == 200 and body["access_token"].startswith("lbwh_")
    assert body["well_known"]["m.homeserver"]["base_url"] == stack.url
    # Discovery too, also under the other local name.
    port = urllib.parse.urlsplit(stack.url).port
    status, _, raw = raw_http(stack.url, "GET", "/.well-known/matrix/client", {"Host": "localhost:%d" % port})
    assert status == 200 and json.loads(raw)["m.homeserver"]["base_url"] == "http://localhost:%d" % port
    # The handle works where well_known sent the client.
    base = body["well_known"]["m.homeserver"]["base_url"]
    status, _, who = http(base, "GET", "/_matrix/client/v3/account/whoami", token=body["access_token"])
    assert status == 200 and who["user_id"] == person[2]


# -- 4. match the homeserver -------------------------------------------------------------------


def test_answers_match_the_homeserver(
    client_stack: Any,
    synapse: SynapseServer,
    person: tuple[str, str, str],  # noqa: F811
) -> None:
    stack = client_stack(preset="1kbps")
    token = login(stack, person)
    direct_token = http(synapse.url, "POST", "/_matrix/client/v3/login", login_body(person[0], person[1]))[2][
        "access_token"
    ]
    # A bad since: the homeserver's error on this very poll (not an empty 200 first).
    path = "/_matrix/client/v3/sync?since=garbage&timeout=3000"
    direct = http(synapse.url, "GET", path, token=direct_token)
    assert direct[0] == 400
    t0 = time.monotonic()
    via = http(stack.url, "GET", path, token=token)
    assert (via[0], via[2]["errcode"]) == (direct[0], direct[2]["errcode"]), via
    print("\nsince=garbage: %d %s after %.1f s" % (via[0], via[2]["errcode"], time.monotonic() - t0))
    # A bad timeout: M_INVALID_PARAM, as Synapse says, without the radio.
    before = stack.radio_stats()
    for bad in ("soon", "-5", "1.5"):
        path = "/_matrix/client/v3/sync?since=s1_2&timeout=%s" % bad
        direct = http(synapse.url, "GET", path, token=direct_token)
        via = http(stack.url, "GET", path, token=token)
        assert (via[0], via[2]["errcode"]) == (direct[0], direct[2]["errcode"]) == (400, "M_INVALID_PARAM"), (
            bad
        )
    assert stack.radio_stats()["tx"] == before["tx"]
    # HEAD /versions: GET's status and headers, no body.
    for base in (synapse.url, stack.url):
        status, headers, body = raw_http(base, "HEAD", "/_matrix/client/versions")
        assert (status, body) == (200, b"") and headers["Content-Type"].startswith("application/json"), base


def test_dot_segments_are_carried(
    client_stack: Any,
    synapse: SynapseServer,
    person: tuple[str, str, str],  # noqa: F811
) -> None:
    stack = client_stack(preset="fast")
    token = login(stack, person)
    room = http(stack.url, "POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat"}, token)[2][
        "room_id"
    ]
    for key in ("%2E", "%2E%2E"):
        path = "/_matrix/client/v3/rooms/%s/state/org.example.dots/%s" % (urllib.parse.quote(room), key)
        status, _, body = http(stack.url, "PUT", path, {"k": key}, token)
        assert status == 200 and body["event_id"].startswith("$"), body
        status, _, body = http(stack.url, "GET", path, token=token)
        assert status == 200 and body == {"k": key}
    # The homeserver holds them under the state keys "." and "..", not folded away.
    status, _, state = http(
        stack.url, "GET", "/_matrix/client/v3/rooms/%s/state" % urllib.parse.quote(room), token=token
    )
    assert status == 200
    keys = {e["state_key"]: e["content"] for e in state if e["type"] == "org.example.dots"}
    assert keys == {".": {"k": "%2E"}, "..": {"k": "%2E%2E"}}, keys


# -- 5. unknown config keys ----------------------------------------------------------------------


def test_unknown_config_keys_are_refused(tmp_path: Path) -> None:
    good = 'proxy = "127.0.0.1:5683"\nproxy_public_key = "%s"\nprivate_key = "%s"\n' % ("11" * 32, "22" * 32)
    for extra, named in (
        ('listn = "127.0.0.1:9999"\n', "listn"),
        ("[listen]\nport = 1\n", "listen"),
        ("dead_link_timout = 5\n", "dead_link_timout"),
    ):
        cfg = tmp_path / "cp.toml"
        cfg.write_text(good + extra)
        cfg.chmod(0o600)
        for argv in (["-m", "lowbw", "client-proxy"], ["-m", "lowbw.clientproxy.main"]):
            proc = subprocess.run(
                [sys.executable, *argv, "--config", str(cfg)],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=demo.ROOT,
            )
            assert proc.returncode == 1, proc
            assert proc.stderr.startswith("lowbw client-proxy: error: "), proc.stderr
            assert str(cfg) in proc.stderr and named in proc.stderr
            assert proc.stdout == ""  # never started listening
    cfg.write_text(good + "dead_link_timeout = -1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "lowbw", "client-proxy", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=demo.ROOT,
    )
    assert proc.returncode == 1 and "dead_link_timeout" in proc.stderr
