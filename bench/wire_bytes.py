"""Bytes on the air for one sensor reading, computed by the real wire code.

Prints JSON on stdout with the UDP payload sizes of:

* ``warm_request`` / ``warm_response``: a reading of one value on an
  established session (CoAP CON to route ``v``) and its piggybacked 2.04 ACK;
* ``cold_request`` / ``cold_response``: the first handshake datagram carrying
  the same request as 0-RTT payload, and the proxy's answer carrying the ACK;

for what a device enrolled for a 100 bit/s link gets by default: the compact
link profile (Noise KK, compact frames; docs/PROTOCOL.md). The same for the
standard profile (Noise IK, 16-byte tags) under ``standard_*`` keys, and a
fresh store's first handshake (4 more bytes: the counter epoch) under
``*_fresh_*``. Plus totals, the same with IPv4+UDP headers (28 B per
datagram), airtime at 100 bit/s and the budgets (``budget_*``,
``within_budget``). ``--example`` prints the datagrams of the worked examples
in docs/PROTOCOL.md (fixed keys, so the bytes are reproducible).

Usage: python bench/wire_bytes.py [--example]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lowbw.wire import coap, crypto, frames, handshake, reading, routes

IP_UDP_HEADER = 28
RATE_BPS = 100
# Budgets (UDP payload, request + response; docs/PROTOCOL.md): the compact
# profile's are issue 14's targets, the standard profile's DESIGN.md's.
BUDGETS = {"warm": 28, "cold": 120, "standard_warm": 52, "standard_cold": 170}
PROFILES = ("compact", "standard")
EXAMPLE_EPOCH = 0x89ABCDEF

# Fixed keys for the worked example; never used outside it.
EXAMPLE_DEVICE_PRIV = bytes(range(1, 33))
EXAMPLE_PROXY_PRIV = bytes(range(33, 65))
EXAMPLE_DEVICE_EPH = bytes(range(65, 97))
EXAMPLE_PROXY_EPH = bytes(range(97, 129))
EXAMPLE_SID = 0x002A


def reading_request(mid: int) -> coap.Message:
    """CON POST /r with one value, measured now: the sensor profile's hot path."""
    msg = coap.Message(mtype=coap.CON, code=coap.POST, mid=mid,
                       payload=reading.encode_readings([(0, [21.5], 0)]))
    coap.set_uri_path(msg, [routes.ROUTE_READING])
    return msg


EXAMPLE_HSN = 5


def exchange(deterministic: bool, profile: str = "compact", epoch: int | None = None) -> dict[str, bytes]:
    """Run a cold handshake then a warm exchange through the real wire code.

    ``profile`` "compact" (Noise KK, compact frames) or "standard" (Noise IK);
    ``epoch`` announces a counter epoch (a fresh store's first handshake)."""
    dev_eph: bytes | None
    proxy_eph: bytes | None
    if deterministic:
        dev_priv, proxy_priv = EXAMPLE_DEVICE_PRIV, EXAMPLE_PROXY_PRIV
        dev_eph, proxy_eph = EXAMPLE_DEVICE_EPH, EXAMPLE_PROXY_EPH
    else:
        import os

        dev_priv, proxy_priv = os.urandom(32), os.urandom(32)
        dev_eph = proxy_eph = None
    proxy_pub = crypto.x25519_base(proxy_priv)
    compact = profile == "compact"

    # Handshake number 5: a device's sixth handshake (one byte on the air).
    device_hs = handshake.Initiator(dev_priv, proxy_pub, e_priv=dev_eph, hsn=EXAMPLE_HSN, compact=compact,
                                    epoch=epoch)
    rs = crypto.x25519_base(dev_priv) if compact else None
    proxy_hs = handshake.Responder(proxy_priv, e_priv=proxy_eph, rs=rs)

    cold_req = reading_request(mid=1).encode()
    cold_request = device_hs.start(cold_req)
    _, caps, request = proxy_hs.read_init(cold_request)
    assert request == cold_req
    ack = coap.make_response(coap.decode(request), coap.CHANGED).encode()
    answer_caps = handshake.negotiate_caps(caps) | (caps & handshake.CAP_EPOCH)
    cold_response, proxy_session = proxy_hs.respond(EXAMPLE_SID, answer_caps, ack)
    device_session, _, response = device_hs.finish(cold_response)
    assert response == ack

    # The device side of a warm reading, as lowbw.device.client sends it.
    warm_req = reading_request(mid=2).encode()
    rule, residue = frames.compress_up(warm_req) if compact else (0, warm_req)
    warm_request = device_session.seal(residue, rule=rule)
    request = frames.open_up(proxy_session, warm_request)
    assert request == warm_req
    ack = coap.make_response(coap.decode(request), coap.CHANGED).encode()
    warm_response = frames.seal_down(proxy_session, ack)
    plain = device_session.open(warm_response, b"\x00\x02")
    if compact:
        plain = frames.expand_down(device_session.rule, plain, 2)
    assert coap.decode(plain).code == coap.CHANGED
    return {
        "warm_request": warm_request,
        "warm_response": warm_response,
        "cold_request": cold_request,
        "cold_response": cold_response,
    }


def examples() -> dict[str, bytes]:
    """Every datagram of docs/PROTOCOL.md's worked examples, by name."""
    out = {}
    for profile in PROFILES:
        for name, data in exchange(True, profile).items():
            out[("" if profile == "compact" else "standard_") + name] = data
    return out


def figures() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for profile in PROFILES:
        prefix = "" if profile == "compact" else "standard_"
        d = exchange(deterministic=False, profile=profile)
        fresh = exchange(deterministic=False, profile=profile, epoch=EXAMPLE_EPOCH)
        for k, v in d.items():
            out[prefix + k] = len(v)
        out[prefix + "cold_fresh_request"] = len(fresh["cold_request"])
        out[prefix + "cold_fresh_response"] = len(fresh["cold_response"])
    within = True
    for prefix in ("", "standard_"):
        out[prefix + "warm_total"] = out[prefix + "warm_request"] + out[prefix + "warm_response"]
        out[prefix + "cold_total"] = out[prefix + "cold_request"] + out[prefix + "cold_response"]
        fresh_total = out[prefix + "cold_fresh_request"] + out[prefix + "cold_fresh_response"]
        out[prefix + "cold_fresh_total"] = fresh_total
        for k in ("warm", "cold"):
            out[prefix + k + "_total_ip"] = out[prefix + k + "_total"] + 2 * IP_UDP_HEADER
            out[prefix + k + "_airtime_s"] = round(out[prefix + k + "_total"] * 8 / RATE_BPS, 2)
            budget = BUDGETS[prefix + k]
            out["budget_" + prefix + k + "_total"] = budget
            within = within and out[prefix + k + "_total"] <= budget
    out["within_budget"] = within
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--example", action="store_true",
                        help="print the worked example's datagrams (fixed keys) as hex")
    args = parser.parse_args(argv)
    if args.example:
        for name, data in examples().items():
            print("%s %d %s" % (name, len(data), data.hex()))
        return 0
    json.dump(figures(), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
