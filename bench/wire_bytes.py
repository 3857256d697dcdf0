"""Bytes on the air for one sensor reading, computed by the real wire code.

Prints JSON on stdout with the UDP payload sizes of:

* ``warm_request`` / ``warm_response``: a reading of one value on an
  established session (CoAP CON to route ``r``) and its piggybacked 2.04 ACK;
* ``cold_request`` / ``cold_response``: the Noise IK first datagram carrying
  the same request as 0-RTT payload, and the proxy's IK answer carrying the ACK.

plus totals, the same with IPv4+UDP headers (28 B per datagram) and airtime at
100 bit/s. ``--example`` prints the datagrams of the worked example in
docs/PROTOCOL.md (fixed keys, so the bytes are reproducible).

Usage: python bench/wire_bytes.py [--example]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lowbw.wire import coap, crypto, handshake, reading, routes

IP_UDP_HEADER = 28
RATE_BPS = 100

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


def exchange(deterministic: bool) -> dict[str, bytes]:
    """Run a cold IK exchange then a warm one through the real wire code."""
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

    # Handshake number 5: a device's sixth handshake (one byte on the air).
    device_hs = handshake.Initiator(dev_priv, proxy_pub, e_priv=dev_eph, hsn=EXAMPLE_HSN)
    proxy_hs = handshake.Responder(proxy_priv, e_priv=proxy_eph)

    cold_req = reading_request(mid=1).encode()
    cold_request = device_hs.start(cold_req)
    _, caps, request = proxy_hs.read_init(cold_request)
    ack = coap.make_response(coap.decode(request), coap.CHANGED).encode()
    cold_response, proxy_session = proxy_hs.respond(EXAMPLE_SID, handshake.negotiate_caps(caps), ack)
    device_session, _, response = device_hs.finish(cold_response)
    assert coap.decode(response).code == coap.CHANGED

    warm_request = device_session.seal(reading_request(mid=2).encode())
    request = proxy_session.open(warm_request)
    warm_response = proxy_session.seal(coap.make_response(coap.decode(request), coap.CHANGED).encode())
    assert coap.decode(device_session.open(warm_response)).code == coap.CHANGED
    return {
        "warm_request": warm_request,
        "warm_response": warm_response,
        "cold_request": cold_request,
        "cold_response": cold_response,
    }


def figures() -> dict[str, Any]:
    d = exchange(deterministic=False)
    out: dict[str, Any] = {k: len(v) for k, v in d.items()}
    out["warm_total"] = out["warm_request"] + out["warm_response"]
    out["cold_total"] = out["cold_request"] + out["cold_response"]
    for k in ("warm", "cold"):
        out[k + "_total_ip"] = out[k + "_total"] + 2 * IP_UDP_HEADER
        out[k + "_airtime_s"] = round(out[k + "_total"] * 8 / RATE_BPS, 2)
    out["budget_warm_total"] = 52
    out["budget_cold_total"] = 170
    out["within_budget"] = out["warm_total"] <= 52 and out["cold_total"] <= 170
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--example", action="store_true",
                        help="print the worked example's datagrams (fixed keys) as hex")
    args = parser.parse_args(argv)
    if args.example:
        for name, data in exchange(deterministic=True).items():
            print("%s %d %s" % (name, len(data), data.hex()))
        return 0
    json.dump(figures(), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
