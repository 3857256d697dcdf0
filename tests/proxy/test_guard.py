"""The handshake guard's decisions and the rejected-datagram summary, on a virtual clock."""

from __future__ import annotations

import os

from lowbw.proxy.guard import HandshakeGuard, RateMeter, RejectLog, TokenBucket, key_tag
from lowbw.proxy.limits import Limits

A = ("127.0.0.1", 40000)
B = ("127.0.0.1", 40001)


def test_token_bucket_refills_at_its_rate() -> None:
    b = TokenBucket(2.0, 2.0, 0.0)
    assert [b.take(0.0) for _ in range(3)] == [True, True, False]
    assert b.take(0.5) and not b.take(0.5)
    assert b.take(10.0) and b.take(10.0) and not b.take(10.0)  # never more than the burst


def test_rate_meter() -> None:
    m = RateMeter()
    for i in range(100):
        m.note(10.0 + i / 100)
    assert 95 <= m.rate(10.999) <= 100
    assert 40 <= m.rate(11.5) <= 60
    assert m.rate(13.0) == 0


def test_each_source_spends_only_its_own_budget() -> None:
    g = HandshakeGuard(Limits(handshakes_per_source=4, cookie_threshold=1e9), 0.0)
    got = [g.admit(A, True, os.urandom(32), None, 0.0) for _ in range(10)]
    assert got.count(HandshakeGuard.PASS) == 4 and got.count(HandshakeGuard.OVER_SOURCE) == 6
    assert g.admit(B, True, os.urandom(32), None, 0.0) == HandshakeGuard.PASS
    assert g.admit(A, True, os.urandom(32), None, 0.3) == HandshakeGuard.PASS  # refilled


def test_global_budget() -> None:
    g = HandshakeGuard(Limits(handshakes_per_source=100, handshakes_global=5, cookie_threshold=1e9), 0.0)
    got = [g.admit(("10.0.0.%d" % i, 1), True, os.urandom(32), None, 0.0) for i in range(8)]
    assert got.count(HandshakeGuard.PASS) == 5 and got.count(HandshakeGuard.OVER_GLOBAL) == 3


def test_cookies_only_under_load_and_bound_to_source_and_ephemeral() -> None:
    g = HandshakeGuard(Limits(handshakes_per_source=1000, cookie_threshold=10), 0.0)
    e = os.urandom(32)
    # Quiet: no cookie asked for.
    assert g.admit(A, True, e, None, 0.0) == HandshakeGuard.PASS
    for _ in range(20):
        g.admit(B, True, os.urandom(32), None, 0.1)
    assert g.under_load(0.2)
    e2 = os.urandom(32)
    assert g.admit(A, True, e2, None, 0.2) == HandshakeGuard.COOKIE
    cookie = g.cookie_for(A, e2, 0.2)
    assert g.admit(A, True, e2, cookie, 0.3) == HandshakeGuard.PASS
    # Another source, or another ephemeral, cannot use it.
    assert g.admit(B, True, e2, cookie, 0.3) == HandshakeGuard.BAD_COOKIE
    assert g.admit(A, True, os.urandom(32), cookie, 0.3) == HandshakeGuard.BAD_COOKIE
    # It survives one rotation of the secret, not two.
    assert g.cookie_ok(cookie, A, e2, 0.2 + 130)
    assert not g.cookie_ok(cookie, A, e2, 0.2 + 260)
    # XX3 (not an initiation) never needs a cookie.
    assert g.admit(A, False, b"", None, 0.4) == HandshakeGuard.PASS


def test_recently_accepted_ephemeral_is_a_replay_before_any_crypto() -> None:
    g = HandshakeGuard(Limits(cookie_threshold=1e9, handshakes_per_source=100), 0.0)
    e = os.urandom(32)
    assert g.admit(A, True, e, None, 0.0) == HandshakeGuard.PASS
    g.remember(e)
    assert g.admit(B, True, e, None, 0.0) == HandshakeGuard.REPLAY


def test_source_table_is_bounded() -> None:
    from lowbw.proxy import guard

    g = HandshakeGuard(Limits(cookie_threshold=1e9, handshakes_global=1e9), 0.0)
    for i in range(guard.MAX_SOURCES + 500):
        g.admit(("127.0.0.1", i), True, os.urandom(32), None, 0.0)
    assert g.sources() == guard.MAX_SOURCES


def test_reject_log_summarises_and_names_keys_without_secrets() -> None:
    r = RejectLog()
    assert r.summary() is None
    for _ in range(5000):
        r.count("handshake over its source's budget")
    key = os.urandom(32)
    for _ in range(3):
        r.count("handshake from an unknown key", key_tag(key))
    r.count("handshake from a revoked device", "sensor1")
    line = r.summary()
    assert line is not None
    assert "5000 x handshake over its source's budget" in line
    assert "unknown key key %s: 3" % key_tag(key)[4:] in line and "sensor1: 1" in line
    assert key.hex() not in line
    assert r.summary() is None  # a new interval
    assert r.totals["handshake over its source's budget"] == 5000
    for i in range(100):
        r.count("handshake from an unknown key", "key %08d" % i)
    line = r.summary()
    assert line is not None and "(others): %d" % (100 - RejectLog.MAX_WHO) in line
