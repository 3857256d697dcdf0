"""The multi-process bench's parts (bench/proxy_nodes.py, bench/loadgen.py,
bench/nginx_sink.py): the sink answers what the proxy asks, the generator
counts only answers that open and match, and a short run end to end."""

from __future__ import annotations

import argparse
import http.client
import os
from pathlib import Path

import pytest

from bench import loadgen
from bench.nginx_sink import NginxSink
from bench.nginx_tls import find_nginx
from lowbw.wire import coap, frames

needs_nginx = pytest.mark.skipif(find_nginx() is None, reason="nginx is not installed")


@needs_nginx
def test_nginx_sink_answers_sends_ping_and_404_on_one_connection() -> None:
    sink = NginxSink()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", sink.port, timeout=5)
        for n in (1000, 1001):
            conn.request(
                "PUT",
                "/_matrix/client/v3/rooms/%21bench%3Asink.test/send/m.x/lowbw.d0.00000000."
                + str(n)
                + ".0?user_id=%40lowbw_d0%3Asink.test",
                body=b'{"temperature": 1}',
                headers={"Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            assert resp.status == 200 and resp.getheader("Content-Type") == "application/json"
            assert resp.read() == b'{"event_id":"$lowbw.d0.00000000.%d.0"}' % n
        conn.request("POST", "/_matrix/client/v1/appservice/lowbw/ping", body=b"{}")
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"{}")
        conn.request("GET", "/_matrix/client/v3/account/whoami")
        resp = conn.getresponse()
        assert resp.status == 404 and b"M_UNRECOGNIZED" in resp.read()
        conn.close()
        assert len(sink.pids) == 2  # master and worker: both measured
    finally:
        sink.stop()


def test_generator_verifies_answers_not_datagrams() -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    device = frames.Session(k1, k2, 0x1234, initiator=True)
    proxy = frames.Session(k2, k1, 0x1234, initiator=False)
    dev = loadgen.FastDevice("d0", b"", b"", session=device)

    def answer(mid: int, code: int = coap.CHANGED) -> bytes:
        return bytes(proxy.seal(bytes(coap.encode(coap.Message(coap.ACK, code, mid)))))

    dev.first_mid = 1000  # the i-th answer is of reading 1000 + i
    dev.answers = [answer(1000), answer(7), answer(1002, coap.INTERNAL_SERVER_ERROR), b"\x00garbage"]
    assert loadgen.verify([dev]) == {"answers_verified": 1, "answers_bad": 3}


@needs_nginx
def test_a_short_two_node_run(tmp_path: Path) -> None:
    from lowbw.testing.postgres import find_bin_dir

    if find_bin_dir() is None:
        pytest.skip("PostgreSQL is not installed")
    from bench.proxy_nodes import bench_nodes, summary

    args = argparse.Namespace(nodes=2, devices=10, duration=1.0, rounds=1, sink="auto", generator="epoll")
    result = bench_nodes(args, tmp_path)
    s = summary(result)
    assert s["sink"] == "nginx" and s["generator"] == "epoll"
    for label in ("sqlite_1", "pg_1", "pg_n"):
        (run,) = result["rounds"][label]
        assert run["readings"] > 0 and run["answers_bad"] == 0
        # Every answer counted, plus the last one of each device after the window.
        assert run["answers_verified"] >= run["readings"]
        # nginx counted one send per answered reading (checked by the bench too).
        assert run["sink_requests"] == run["answers_verified"]
        assert run["proxy_cpu_us_per_reading"] > 0 and run["devices_cpu_us_per_reading"] > 0
    assert result["rounds"]["pg_n"][0]["postgres_cpu_us_per_reading"] > 0
    assert len(s["proxy_cpu_share_each"]) == 2
    assert s["speedup"] is not None and s["speedup_by_round"] == [s["speedup"]]
