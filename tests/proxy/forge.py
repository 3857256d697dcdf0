"""An attacker that floods the proxy with handshake messages, as its own process.

``python -m tests.proxy.forge HOST PORT --rate 8000 --seconds 20`` sends IK
message 1 lookalikes (the right kind byte and length, random bytes: they never
authenticate) from ``--sockets`` source ports, evenly paced in 5 ms slices.
``--replay HEX`` mixes in copies of a captured genuine datagram (half of the
traffic), ``--xx`` sends XX message 1 instead. It ignores every answer, as a
forger that cannot complete a handshake would. Prints one JSON line with what
it sent. Loopback targets only.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time

IK1_LEN = 111
XX1_LEN = 100


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--rate", type=float, default=8000.0, help="datagrams per second")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--sockets", type=int, default=16, help="source ports to send from")
    p.add_argument("--replay", default="", help="hex of a captured datagram to mix in")
    p.add_argument("--xx", action="store_true", help="XX message 1 instead of IK message 1")
    a = p.parse_args()
    if not a.host.startswith("127.") and a.host not in ("localhost", "::1"):
        p.error("loopback targets only")
    socks = []
    for _ in range(a.sockets):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        socks.append(s)
    kind, length = (0x83, XX1_LEN) if a.xx else (0x81, IK1_LEN)
    pool = [bytes([kind]) + os.urandom(length - 1) for _ in range(4096)]
    replay = bytes.fromhex(a.replay) if a.replay else b""
    target = (a.host, a.port)
    slice_s = 0.005
    per_slice = a.rate * slice_s
    sent = errors = 0
    owed = 0.0
    start = time.monotonic()
    end = start + a.seconds
    i = 0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        owed += per_slice
        while owed >= 1:
            owed -= 1
            i += 1
            dgram = replay if replay and i % 2 else pool[i % len(pool)]
            try:
                socks[i % len(socks)].sendto(dgram, target)
                sent += 1
            except OSError:
                errors += 1
        # Drain answers (cookie replies) so our buffers never matter.
        for s in socks:
            try:
                while s.recv(2048):
                    pass
            except OSError:
                pass
        delay = start + (int((now - start) / slice_s) + 1) * slice_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    elapsed = time.monotonic() - start
    print(json.dumps({"sent": sent, "errors": errors, "seconds": round(elapsed, 2),
                      "rate": round(sent / elapsed, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
