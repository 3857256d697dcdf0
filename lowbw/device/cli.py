"""``lowbw device send``: send one reading from this host as an enrolled device.

CPython only. Loads the device config and its state file, queues the reading,
and drives the device over UDP until the proxy acknowledges it (exit 0),
rejects it (exit 1, with the reason) or the timeout passes (exit 1). On a
timeout it says what the proxy last answered (``5.03``: the homeserver is
unreachable from the proxy) or, if nothing came back although this device had
completed a handshake before, that its key is unknown or revoked (the proxy
never answers those). The reading stays queued in the state file either way.
Usage errors exit 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any

from lowbw.device import client, config, store, udp
from lowbw.wire.errors import DecodeError, EncodeError

DEFAULT_TIMEOUT = 120.0


def parse_value(text: str) -> int | float | None:
    """``"215"`` -> 215, ``"21.5"`` -> 21.5, ``"null"`` -> None (a failed sensor)."""
    if text.lower() in ("null", "none", "n/a"):
        return None
    try:
        return int(text, 10)
    except ValueError:
        pass
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number: %r" % text) from None
    if math.isnan(v) or math.isinf(v):
        raise argparse.ArgumentTypeError("not a finite number: %r" % text)
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lowbw device send",
        description="Send one reading as an enrolled device and wait until the proxy acknowledges it.",
        epilog="Exit status: 0 acknowledged; 1 rejected, timed out (the reading stays queued in the "
        "state file for the next run) or a config/state problem; 2 usage error.",
    )
    p.add_argument("--device-config", required=True, metavar="FILE",
                   help="device config JSON written by `lowbw device enroll`")
    p.add_argument("values", nargs="+", metavar="VALUE", type=parse_value,
                   help="one value per field of the slot: 215 is an integer (scaled by the field's scale), "
                   "21.5 a float, null a failed sensor")
    p.add_argument("--slot", type=int, default=0, metavar="N", help="slot index in the config (default 0)")
    p.add_argument("--state", metavar="FILE",
                   help="state file: session, message counter, queue (default: <device config>.state)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                   help="give up after S seconds (default %g)" % DEFAULT_TIMEOUT)
    p.add_argument("-v", "--verbose", action="store_true", help="log every datagram and answer to stderr")
    return p


def _err(text: str) -> None:
    print("lowbw device send: error: " + text, file=sys.stderr)


def _warn(text: str) -> None:
    print("lowbw device send: warning: " + text, file=sys.stderr)


# What CoAP answers mean to an operator, for the ones that make the client wait and retry.
ANSWER_MEANING = {
    "5.02": "the homeserver answered something the proxy could not use",
    "5.03": "the proxy cannot reach the homeserver",
    "5.04": "the homeserver did not answer the proxy in time",
    "4.29": "rate-limited",
}


class _ReportingDevice(client.Device):  # type: ignore[misc]
    """The device client, remembering the last answer the proxy gave (for the final message)."""

    last_answer: tuple[str, str] | None = None

    def _on_response(self, req: Any, msg: Any, now: float) -> None:
        self.last_answer = ("%d.%02d" % (msg.code >> 5, msg.code & 31), self._reason(msg) or "")
        super()._on_response(req, msg, now)


def _timeout_message(
    dev: _ReportingDevice, cfg: Any, mine: int, timeout: float, state_path: str, had_session: bool
) -> str:
    """Why a reading was not acknowledged within the timeout, as far as this end can tell."""
    queued = "reading %d stays queued in %s" % (mine, state_path)
    where = "%s:%d" % (cfg.proxy_host, cfg.proxy_port)
    if dev.last_answer is not None:
        code, reason = dev.last_answer
        meaning = ANSWER_MEANING.get(code, "")
        return "not acknowledged within %g s: the proxy answered %s%s%s; %s and is sent again by the " \
            "next run" % (timeout, code, " (%s)" % meaning if meaning else "", ": " + reason.strip() if reason
                          else "", queued)
    if dev.counters["bytes_down"] == 0:
        if had_session:
            # The proxy answers nothing to a key it does not know (no oracle),
            # so silence after earlier handshakes most likely means a revoke.
            return "no answer from the proxy at %s within %g s: key unknown or revoked? (this device " \
                "completed a handshake before; the proxy never answers a revoked or unknown key; %s)" % (
                    where, timeout, queued)
        return "no answer from the proxy at %s within %g s: is it running there, and was this device " \
            "enrolled with that proxy? (%s; -v shows every datagram)" % (where, timeout, queued)
    return "no acknowledgement within %g s from the proxy at %s; %s and is sent again by the next run" % (
        timeout, where, queued)


def send_main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    if args.timeout <= 0:
        _err("--timeout must be positive")
        return 2
    try:
        cfg = config.load(args.device_config)
    except config.ConfigError as exc:
        _err(exc.message)
        return 1
    try:
        if os.stat(args.device_config).st_mode & 0o077:
            _warn("%s holds the device's private key but others can read it (chmod 600)"
                  % args.device_config)
    except OSError:
        pass
    state_path = args.state or args.device_config + ".state"
    try:
        st = store.FileStore(state_path)
    except DecodeError as exc:
        _err("state file %s is unreadable (%s). Move it away to start afresh; readings queued in it "
             "would be lost." % (state_path, exc.message))
        return 1
    except OSError as exc:
        _err("cannot read state file %s: %s" % (state_path, exc))
        return 1

    log = (lambda line: print(line, file=sys.stderr)) if args.verbose else None
    # A session or a confirmed epoch in the store: a handshake with this proxy completed before.
    had_session = st.session is not None or bool(st.epoch_confirmed)
    dev = _ReportingDevice(cfg, st, log=log)
    # This host's clock is set: stamp readings with absolute times, which stay
    # right in the state file across runs.
    dev.set_wall_time(time.time())
    earlier = dev.pending()
    outcome: dict[str, Any] = {}
    mine = -1  # send() may report older readings dropped before it returns ours

    def on_result(rid: int, status: str, code: int | None, reason: str | None) -> None:
        if rid == mine:
            outcome.update(status=status, code=code, reason=reason)

    dev.on_result = on_result
    try:
        mine = dev.send(args.slot, args.values)
    except EncodeError as exc:
        _err(exc.message)
        return 2
    except OSError as exc:
        _err("cannot write state file %s: %s" % (state_path, exc))
        return 1
    if earlier:
        print("also sending %d reading(s) queued by earlier runs" % earlier, file=sys.stderr)

    started = time.monotonic()
    try:
        link = udp.UdpLink(cfg.proxy_host, cfg.proxy_port, log=log)
    except OSError as exc:
        _err("cannot reach %s:%d: %s" % (cfg.proxy_host, cfg.proxy_port, exc))
        return 1
    try:
        link.run(dev, until=lambda: bool(outcome), timeout=args.timeout)
    except KeyboardInterrupt:
        _err("interrupted; the reading stays queued in %s" % state_path)
        return 1
    finally:
        link.close()
    took = time.monotonic() - started
    c = dev.counters
    traffic = "%d B up, %d B down, %d handshake(s), %d retransmission(s)" % (
        c["bytes_up"], c["bytes_down"], c["handshakes"], c["retransmissions"])
    slot_name = cfg.slots[args.slot][0]
    status = outcome.get("status")
    if status == client.ACKED:
        print("%s: reading %d (%s) acknowledged in %.1f s; %s" % (cfg.name, mine, slot_name, took, traffic))
        return 0
    if status == client.REJECTED:
        code = outcome.get("code")
        what = "%d.%02d" % (code >> 5, code & 31) if code is not None else "reset"
        _err("reading %d (%s) rejected by the proxy: %s %s" % (mine, slot_name, what,
                                                              outcome.get("reason") or ""))
        return 1
    if status == client.DROPPED:
        _err("reading %d dropped: the queue of readings waiting is full (client.queue_limit)" % mine)
        return 1
    _err(_timeout_message(dev, cfg, mine, args.timeout, state_path, had_session))
    return 1
