"""The protocol core of TinyProxy (tests/firmware/tinyproxy.py), without sockets.

A stand-in for the lowbw proxy built from lowbw.wire, for the firmware tests
only: one enrolled device, the sensor profile's routes (v readings, z time,
x commands with the Commands-Pending option 65004), CoAP deduplication by
message ID, sessions that outlive device restarts. ``handle(datagram)`` gives
the answer datagram or None (silence, as the proxy gives to anything that
does not authenticate). Written in the MicroPython subset, so the same core
serves the CPython tests (behind a UDP socket) and the MicroPython ones
(behind a fake serial line).
"""

import os
import time

from lowbw.wire import cbor, coap, frames, handshake, reading
from lowbw.wire.errors import LowbwError

COMMANDS_PENDING = 65004


class ProxyCore:
    def __init__(self, proxy_priv, device_pub):
        self.priv = proxy_priv
        self.device_pub = device_pub
        self.sessions = {}
        self.answers = {}
        # (message ID, slot, values, measured at in Unix seconds)
        self.readings = []
        self.handshakes = 0
        self.frames = 0
        self.rejected_keys = 0
        self.commands = []
        self.acked_commands = []

    def handle(self, data):
        try:
            return self._handle(bytes(data))
        except LowbwError:
            return None

    def _handle(self, data):
        kind = frames.kind_of(data)
        if kind == frames.HS_IK1:
            hs = handshake.Responder(self.priv)
            remote, caps, request = hs.read_init(data)
            if remote != self.device_pub:
                self.rejected_keys += 1
                return None
            self.handshakes += 1
            answer = self._coap(request) or b""
            sid = int.from_bytes(os.urandom(2), "big")
            dgram, session = hs.respond(sid, handshake.negotiate_caps(caps), answer)
            self.sessions[sid] = session
            return dgram
        if kind == frames.KIND_SHORT or kind == frames.KIND_LONG:
            sess = self.sessions.get(frames.peek_session_id(data))
            if sess is None:
                return None
            plaintext = sess.open(data)
            self.frames += 1
            answer = self._coap(plaintext)
            return None if answer is None else sess.seal(answer)
        return None

    def _coap(self, plaintext):
        msg = coap.decode(plaintext)
        if msg.mtype == coap.ACK or msg.mtype == coap.RST:
            return None
        cached = self.answers.get(msg.mid)
        if cached is not None:
            return cached
        path = coap.uri_path(msg)
        payload = b""
        if path == ["v"] and msg.code == coap.POST:
            now_ms = int(time.time() * 1000)
            for slot, values, t in reading.decode_readings(msg.payload):
                self.readings.append((msg.mid, slot, list(values), reading.measured_at_ms(t, now_ms) / 1000))
            code = coap.CHANGED
        elif path == ["z"] and msg.code == coap.GET:
            code, payload = coap.CONTENT, cbor.dumps(int(time.time() * 1000))
        elif path == ["x"] and msg.code == coap.GET:
            if self.commands:
                code, payload = coap.CONTENT, cbor.dumps(list(self.commands[0]))
            else:
                code = coap.VALID
        elif path == ["x"] and msg.code == coap.POST:
            cid = cbor.loads(msg.payload)
            before = len(self.commands)
            self.commands = [c for c in self.commands if c[0] != cid]
            if len(self.commands) < before:
                self.acked_commands.append(cid)
                code = coap.CHANGED
            else:
                code = coap.NOT_FOUND
        else:
            code = coap.NOT_FOUND
        resp = coap.make_response(msg, code, payload)
        if self.commands:
            coap.set_uint(resp, COMMANDS_PENDING, len(self.commands))
        out = resp.encode()
        self.answers[msg.mid] = out
        return out
