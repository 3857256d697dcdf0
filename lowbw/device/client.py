"""The device client: a sans-I/O state machine that sends readings to the proxy.

``Device(config, store)`` holds no socket and reads no clock on its own hot
path: the I/O shell (``lowbw.device.udp``, or a board's radio loop) calls

- ``send(slot, values, when=None)`` to queue a reading (stored at once),
- ``step(now)`` for the datagrams to transmit now,
- ``receive(datagram, now)`` with every datagram from the proxy,
- ``next_deadline()`` to learn when ``step`` wants calling again,

with ``now`` in monotonic seconds. Callbacks: ``on_result(rid, status, code,
reason)`` for each reading (status ACKED, REJECTED or DROPPED; ``rid`` is what
``send`` returned) and ``on_command(command_id, sender, body, event_id)`` for
downlink commands.

One request is in flight at a time (the sensor profile uses zero-length
tokens). What goes next, in order: a command acknowledgement, the time
(``sync_time()``), a command fetch (the proxy's Commands-Pending option,
65004, said one is waiting), then readings: every queued reading up to
``batch_limit`` and the link MTU goes in one request, so a backed-up queue
drains in few round trips.

Each request gets a new message number (the CoAP Message ID is its low 16
bits) and keeps it through every retransmission, re-handshake and reboot: the
proxy derives the Matrix transaction ids from it, so a retry never makes a
second event. A reading's time travels as its age in whole seconds at the
moment of each transmission (0 means "now"), so every copy is right even if it
goes out minutes later.

Transport: no session -> Noise IK with the request as 0-RTT payload (one
round trip), or Noise KK for a device of the compact link profile
(``config.compact``; docs/PROTOCOL.md), whose session then uses compact
frames: 8-byte tags and the CoAP header rules of ``lowbw.wire.frames``
(requests go compressed while ``mid_block`` is below 128, so the proxy
rebuilds every Message ID from its low byte); a session -> ``Session.seal``. After 2 transmissions on a
session without any authenticated frame back, or when the session wants a
rekey, the next transmission is a new IK carrying the same request. An IK is
never retransmitted as is (the proxy refuses a repeated ephemeral as a
replay): each attempt is a fresh handshake; an answer to either of the last
two is accepted.

Counter epoch: a fresh store (no blob yet) gets a random non-zero 32-bit
epoch, and every IK announces it (4 more bytes, ``handshake.CAP_EPOCH``)
until an answer's caps carry CAP_EPOCH back; then it is marked confirmed in
the store and handshakes leave it out. The proxy keys its transaction ids by
epoch too, so a device whose store was wiped (message numbers from 0 again)
does not have its new readings taken for delivered ones. A store from before
epochs (format 1) is epoch 0, confirmed: its counter never restarted.

Timers: a transmission waits ``airtime(request) + airtime(expected answer) +
proxy_allowance`` seconds, times a random 1..1.5 on the first try, doubling on
each retry up to ``max_rto``. Answers: 2.xx done; 5.xx and 4.29 -> wait
Max-Age (60 s if absent for 5.03/4.29) and send the same request again; other
4.xx -> the readings are reported rejected and the queue moves on; RST ->
rejected too. An in-flight request is never given up: only the queue bound
drops readings, oldest first, and says so (``on_result`` DROPPED, counted).

Shared with MicroPython.
"""

from lowbw.device import store as _store
from lowbw.wire import cbor, coap, frames, handshake, reading
from lowbw.wire._compat import const
from lowbw.wire.errors import DecodeError, EncodeError, LowbwError, RekeyRequired

# lowbw.wire.routes ROUTE_READING / ROUTE_COMMANDS / ROUTE_TIME. Not imported:
# its route table costs ~90 KB of heap on the unix port for three letters.
ROUTE_READING = "v"
ROUTE_COMMANDS = "x"
ROUTE_TIME = "z"
COMMANDS_PENDING = const(65004)

ACKED = "acked"
REJECTED = "rejected"
DROPPED = "dropped"

UNANSWERED_LIMIT = const(2)
# Datagram sizes the timer expects back: downlink frame = kind + CoAP + tag;
# IK2 = kind + e + sid/caps + tag + CoAP.
_DOWN_OVERHEAD = const(17)
_IK2_OVERHEAD = const(52)
_IK1_OVERHEAD = const(98)  # without the 4-byte counter epoch and the handshake number
_UP_OVERHEAD = const(22)  # long form, the worst case
_ANSWER_COAP = const(9)  # 4-byte header + Commands-Pending option (delta 65004: 5 B)
_ANSWER_EXTRA = {"f": 64, "t": 10, "v": 0, "a": 0}
_DEFAULT_MAX_AGE = const(60)
_REQ_HEAD = const(7)  # CoAP header + one-letter Uri-Path + payload marker

# Request states
# (errcode, error) key ids per key table; tests check them against keys.py.
_ERROR_KEY_IDS = {1: (102, 103), 2: (103, 104)}

_WAIT_ANSWER = const(0)
_WAIT_RETRY = const(1)  # answered "later" (5.xx, 4.29): wait Max-Age
_WAIT_SEPARATE = const(2)  # empty ACK: the answer comes as its own message

try:
    from time import monotonic  # CPython
except ImportError:  # MicroPython: ticks_ms wraps, so accumulate differences
    import time as _time

    # Integer milliseconds: adding small float steps to a growing single-
    # precision float (ESP32, RP2040) would stop the clock after about a day.
    _ticks = [None, 0]

    def monotonic():
        """Seconds; call at least every few days (ticks_diff spans half a wrap)."""
        t = _time.ticks_ms()
        last = _ticks[0]
        if last is None:
            _ticks[1] = t
        else:
            _ticks[1] += _time.ticks_diff(t, last)
        _ticks[0] = t
        return _ticks[1] / 1000


def _urandom(n):
    import os

    return os.urandom(n)


def _check_value(v):
    if v is None:
        return True
    if v is True or v is False:
        return False
    return isinstance(v, (int, float))


class _Request:
    """The one request in flight. ``msgnum`` is the full message number."""

    def __init__(self, msgnum, kind, data):
        self.msgnum = msgnum
        self.kind = kind
        self.data = data
        self.state = _WAIT_ANSWER
        self.deadline = None  # None: not sent yet (send at the next step)
        self.rto = 0.0
        self.sends = 0

    def persisted(self):
        return [self.msgnum, self.kind, self.data]


class Device:
    """A device's protocol state; see the module docstring.

    ``config`` is a ``lowbw.device.config.DeviceConfig``; ``store`` a
    ``lowbw.device.store.Store``. ``clock()`` gives monotonic seconds (used by
    ``send`` when ``when`` is omitted); ``random(n)`` gives n random bytes
    (ephemeral keys, timer jitter); ``log(text)`` receives one line per event.
    """

    def __init__(self, config, store, clock=None, random=None, log=None):
        self.config = config
        self.store = store
        self.clock = clock or monotonic
        self.random = random or _urandom
        self._log = log
        self.on_result = None
        self.on_command = None
        self.counters = {
            "sent": 0, "acked": 0, "rejected": 0, "dropped": store.dropped, "retransmissions": 0,
            "handshakes": 0, "commands": 0, "bytes_up": 0, "bytes_down": 0,
        }
        self.session = None
        self.caps = None
        self._ctr_limit = 0
        self._hs = []
        self._cookie = None
        self._req = None
        self._out = []
        self._acks = []
        self._want_fetch = False
        self._want_time = False
        self._wall_offset = None
        self._unanswered = 0
        self._last_separate = -1
        self._dirty = False
        self._rx_len = 0
        self._buf = bytearray(config.mtu)
        self._mv = memoryview(self._buf)

        now = self.clock()
        kid = _store.keyid(config.private_key, config.proxy_public_key)
        if store.keyid != kid:
            if store.session is not None:
                self._say("state of other keys: its session is not used")
            store.session = None
            store.keyid = kid
            self._dirty = True
        if store.epoch is None:
            store.epoch = self._draw_epoch()
            store.epoch_confirmed = False
            self._dirty = True
            self._say("fresh store: counter epoch %08x" % store.epoch)
        if store.session is not None:
            self.session = frames.Session.from_state(store.session)
            self._ctr_limit = self.session.next_send
        self._next_msgnum = store.mid_limit
        if now < store.mono:
            # The monotonic clock restarted (a reboot): keep each reading's age
            # as it was at the last write; the time the device was down is lost.
            self._rebase(now - store.mono)
        if store.inflight is not None:
            msgnum, kind, data = store.inflight
            self._req = _Request(msgnum, kind, data)
            self._say("resuming request #%d (%s) from the store" % (msgnum, kind))

    # ------------------------------------------------------------------ API

    def send(self, slot, values, when=None):
        """Queue a reading; return its id. ``when`` is the monotonic time it
        was measured (default: now). Stored before this returns."""
        cfg = self.config
        if not (isinstance(slot, int) and 0 <= slot < len(cfg.slots)) or slot is True or slot is False:
            raise EncodeError("slot must be 0..%d (the device config's slots)" % (len(cfg.slots) - 1))
        n = cfg.field_count(slot)
        if len(values) != n:
            raise EncodeError("slot %d (%s) takes %d value(s), got %d" % (slot, cfg.slots[slot][0], n,
                                                                         len(values)))
        for v in values:
            if not _check_value(v):
                raise EncodeError("reading values are numbers or None")
        if when is None:
            when = self.clock()
        st = self.store
        rid = st.next_rid
        st.next_rid = rid + 1
        if self._wall_offset is not None:
            entry = [rid, slot, list(values), when + self._wall_offset, True]
        else:
            entry = [rid, slot, list(values), when, False]
        st.queue.append(entry)
        while len(st.queue) > cfg.queue_limit:
            old = st.queue.pop(0)
            st.dropped += 1
            self.counters["dropped"] = st.dropped
            self._say("queue full (%d): dropped reading %d" % (cfg.queue_limit, old[0]))
            self._result(old[0], DROPPED, None, "queue full")
        self._save(self.clock())
        return rid

    def step(self, now):
        """Datagrams to transmit now (possibly none)."""
        out = self._out
        self._out = []
        req = self._req
        if req is None:
            req = self._next_request(now)
            if req is not None:
                self._transmit(req, now, out, False)
        elif req.deadline is None:
            self._transmit(req, now, out, False)
        elif now >= req.deadline:
            if req.state == _WAIT_ANSWER:
                self.counters["retransmissions"] += 1
                if self.session is None:
                    self._say("no answer to handshake (%d tries): proxy down, or this device's key "
                              "unknown or revoked" % req.sends)
                self._transmit(req, now, out, True)
            else:
                req.state = _WAIT_ANSWER
                self._transmit(req, now, out, False)
        if self._dirty:
            self._save(now)
        n = 0
        for d in out:
            n += len(d)
        self.counters["bytes_up"] += n
        return out

    def receive(self, datagram, now):
        """Process one datagram from the proxy. Bad or foreign ones are dropped."""
        if not datagram:
            return
        self._rx_len = len(datagram)
        self.counters["bytes_down"] += self._rx_len
        try:
            kind = frames.kind_of(datagram)
        except DecodeError:
            self._say("dropped a datagram that is not a lowbw frame")
            return
        if kind == frames.HS_IK2 or kind == frames.HS_KK2:
            plaintext = self._finish_handshake(datagram)
        elif kind == frames.HS_COOKIE_REPLY:
            self._take_cookie(datagram, now)
            plaintext = None
        elif kind & 0x40 or not kind:  # transport: KIND_SHORT, KIND_LONG, KIND_COMPACT
            plaintext = None
            s = self.session
            if s is not None:
                # Compact rules 1 and 2 bind the Message ID they imply: that of
                # the request in flight (an answer to none is dropped anyway).
                mid = self._req.msgnum & 0xFFFF if self._req else 0xFFFF
                try:
                    plaintext = s.open(datagram, bytes([mid >> 8, mid & 0xFF]))
                    if s.compact:
                        plaintext = frames.expand_down(s.rule, plaintext, mid)
                except LowbwError as exc:
                    # Also RekeyRequired (forgery limit): no answer gets through,
                    # so the next transmissions end in a new handshake.
                    self._say("dropped a frame: %s" % exc.message)
        else:
            plaintext = None
        if plaintext is None:
            return
        self._unanswered = 0
        try:
            msg = coap.decode(plaintext)
        except DecodeError as exc:
            self._say("dropped a bad CoAP message: %s" % exc.message)
            return
        self._on_message(msg, now)
        if self._dirty:
            self._save(now)

    def next_deadline(self):
        """Monotonic time at which ``step`` wants calling; a time in the past
        means at once; None means only after ``send``/``receive``."""
        req = self._req
        if self._out:
            return 0.0
        if req is None:
            if self._acks or self._want_time or self._want_fetch or self.store.queue:
                return 0.0
            return None
        if req.deadline is None:
            return 0.0
        return req.deadline

    def pending(self):
        """Readings not yet acknowledged: queued plus in flight."""
        n = len(self.store.queue)
        req = self._req
        if req is not None and req.kind == "v":
            n += len(req.data)
        return n

    def idle(self):
        return self._req is None and self.next_deadline() is None

    def sync_time(self):
        """Ask the proxy for the wall-clock time (GET the time route) soon."""
        self._want_time = True

    def set_wall_time(self, unix_seconds, now=None):
        """Tell the device the wall-clock time (a board with a set RTC)."""
        if now is None:
            now = self.clock()
        self._wall_offset = unix_seconds - now

    def wall_time(self, now=None):
        """Unix seconds, or None before ``sync_time``/``set_wall_time``."""
        if self._wall_offset is None:
            return None
        if now is None:
            now = self.clock()
        return now + self._wall_offset

    def flush(self, now=None):
        self._save(self.clock() if now is None else now)

    # ------------------------------------------------------------ internals

    def _say(self, text):
        if self._log is not None:
            self._log("%s: %s" % (self.config.name, text))

    def _result(self, rid, status, code, reason):
        cb = self.on_result
        if cb is not None:
            try:
                cb(rid, status, code, reason)
            except Exception as exc:  # a callback bug must not wedge the link
                self._say("on_result callback raised %r" % (exc,))

    def _rebase(self, shift):
        n = self.store.rebase(shift)
        if n:
            self._say("clock restarted: ages of %d stored reading(s) are lower bounds" % n)
        self._dirty = True

    def _save(self, now):
        st = self.store
        s = self.session
        if s is None:
            st.session = None
        else:
            nxt = s.next_send
            if self._ctr_limit > nxt:
                nxt = self._ctr_limit
            st.session = [s.sid, True, s.send_key, s.recv_key, nxt, s.window.top, s.window.mask,
                          s.unheard, s.compact]
        st.mid_limit = max(st.mid_limit, self._next_msgnum)
        st.inflight = None if self._req is None else self._req.persisted()
        st.mono = now
        st.save()
        self._dirty = False

    def _draw_epoch(self):
        # Never 0: that is the epoch of every device that announced none, and
        # an announced epoch equal to the recorded one resets nothing.
        for _ in range(8):
            e = int.from_bytes(bytes(self.random(4)), "big")
            if e:
                return e
        raise LowbwError("random source returns only zeros")

    def _epoch_to_announce(self):
        st = self.store
        return None if st.epoch_confirmed else st.epoch

    def _alloc_msgnum(self):
        n = self._next_msgnum
        self._next_msgnum = n + 1
        st = self.store
        if n >= st.mid_limit:
            st.mid_limit = n + self.config.mid_block
        return n

    def _next_request(self, now):
        st = self.store
        if self._acks:
            kind, data = "a", self._acks.pop(0)
        elif self._want_time:
            kind, data = "t", None
            self._want_time = False
        elif self._want_fetch:
            kind, data = "f", None
            self._want_fetch = False
        elif st.queue:
            kind, data = "v", self._take_batch(now)
        else:
            return None
        req = _Request(self._alloc_msgnum(), kind, data)
        self._req = req
        if kind == "v":
            self.counters["sent"] += len(data)
        self._dirty = True
        return req

    def _take_batch(self, now):
        cfg = self.config
        q = self.store.queue
        if self.session is not None:
            room = cfg.mtu - _REQ_HEAD - _UP_OVERHEAD
        else:
            room = (cfg.mtu - _REQ_HEAD - _IK1_OVERHEAD - len(handshake.encode_uint(self.store.hs_next))
                    - (0 if self.store.epoch_confirmed else handshake.EPOCH_LEN))
        n = 1
        limit = min(cfg.batch_limit, len(q), reading.MAX_READINGS)
        while n < limit and len(self._payload(q[:n + 1], now)) <= room:
            n += 1
        batch = q[:n]
        del q[:n]
        return batch

    def _payload(self, entries, now):
        off = self._wall_offset
        items = []
        for _rid, slot, values, t, absolute in entries:
            if absolute:
                if off is None:
                    items.append((slot, values, int(t)))
                    continue
                age = now + off - t
            else:
                age = now - t
            a = int(age + 0.5) if age > 0 else 0
            items.append((slot, values, -a))
        return reading.encode_readings(items)

    def _coap(self, req, now):
        kind = req.kind
        if kind == "v":
            code, path, payload = coap.POST, ROUTE_READING, self._payload(req.data, now)
        elif kind == "a":
            code, path, payload = coap.POST, ROUTE_COMMANDS, cbor.dumps(req.data)
        elif kind == "f":
            code, path, payload = coap.GET, ROUTE_COMMANDS, b""
        else:
            code, path, payload = coap.GET, ROUTE_TIME, b""
        msg = coap.Message(coap.CON, code, req.msgnum & 0xFFFF, b"",
                           ((coap.URI_PATH, path.encode()),), payload)
        try:
            n = coap.encode_into(msg, self._buf, 0)
        except EncodeError:  # larger than the MTU buffer: send it anyway
            return coap.encode(msg)
        return self._mv[:n]

    def _transmit(self, req, now, out, backoff):
        cfg = self.config
        plaintext = self._coap(req, now)
        s = self.session
        if s is not None and (self._unanswered >= UNANSWERED_LIMIT or s.needs_rekey()):
            self._say("re-handshake: %s" % ("no answer on session %d" % s.sid
                                            if self._unanswered >= UNANSWERED_LIMIT else "rekey due"))
            self._drop_session()
            s = None
        dgram = None
        if s is not None:
            rule = 0
            if s.compact and cfg.mid_block < 128:
                # The compact header rules carry the Message ID's low byte: the
                # proxy saw every number below this one but mid_block at most.
                rule, plaintext = frames.compress_up(plaintext)
            dgram = self._seal(plaintext, rule)
            if dgram is not None:
                self._unanswered += 1
                answer = _DOWN_OVERHEAD
                what = "frame"
        if dgram is None and self._cookie is not None:
            # The proxy is under load and answered our last IK message 1 with a
            # cookie: the same message again, with it (lowbw.wire.handshake).
            ini, dgram = self._cookie
            self._cookie = None
            answer = _IK2_OVERHEAD
            what = ini.pattern + "+cookie"
        elif dgram is None:
            st = self.store
            hsn = st.hs_next
            # Saved (step() writes the store) before the message goes out.
            st.hs_next = hsn + 1
            ini = handshake.Initiator(cfg.private_key, cfg.proxy_public_key, caps=cfg.caps,
                                      random=self.random, epoch=self._epoch_to_announce(), hsn=hsn,
                                      compact=cfg.compact)
            dgram = ini.start(plaintext)
            what = ini.pattern
            ini.datagram = dgram
            self._hs.append(ini)
            if len(self._hs) > 2:
                self._hs.pop(0)
            self.counters["handshakes"] += 1
            answer = _IK2_OVERHEAD
        answer += _ANSWER_COAP + _ANSWER_EXTRA[req.kind]
        base = (len(dgram) + answer) * 8 / cfg.link_bps + cfg.proxy_allowance
        if backoff:
            rto = req.rto * 2
            cap = cfg.max_rto if cfg.max_rto > base else base
            req.rto = cap if rto > cap else rto
        else:
            req.rto = base * (1 + self.random(1)[0] / 510)
        req.sends += 1
        req.state = _WAIT_ANSWER
        req.deadline = now + req.rto
        self._say("-> %s #%d %s (%d B%s)" % (
            what, req.msgnum, req.kind, len(dgram),
            ", try %d" % req.sends if req.sends > 1 else ""))
        out.append(dgram)

    def _drop_session(self):
        self.session = None
        self._unanswered = 0
        self._dirty = True

    def _finish_handshake(self, datagram):
        hs = self._hs
        i = len(hs) - 1
        while i >= 0:
            try:
                session, caps, response = hs[i].finish(datagram)
            except LowbwError:
                i -= 1
                continue
            ini = hs[i]
            self.session = session
            self.caps = caps
            st = self.store
            if ini.epoch is not None and caps & handshake.CAP_EPOCH and ini.epoch == st.epoch:
                st.epoch_confirmed = True
                self._say("counter epoch %08x confirmed by the proxy" % st.epoch)
            if ini.floor is not None and st.hs_next <= ini.floor:
                # A fresh store: continue above the numbers of the lost one.
                st.hs_next = ini.floor + 1
                self._say("handshake numbers continue from %d" % st.hs_next)
            self._hs = []
            self._ctr_limit = 0
            self._unanswered = 0
            self._dirty = True
            self._say("session %d established (caps 0x%02x)" % (session.sid, caps))
            return response
        self._say("dropped an answer to no handshake of ours")
        return None

    def _take_cookie(self, datagram, now):
        """A cookie reply: the proxy is under load. Send our newest IK message 1
        again with the cookie, at once (it counts as a retransmission)."""
        req = self._req
        if not self._hs or req is None or self.session is not None:
            return
        try:
            cookie = handshake.parse_cookie_reply(datagram)
        except DecodeError:
            self._say("dropped a malformed cookie reply")
            return
        ini = self._hs[-1]
        self._cookie = (ini, handshake.cookied(cookie, ini.datagram))
        self._say("proxy under load: handshake again with its cookie")
        # Sent at the next step() as a fresh try, not a backed-off retransmission.
        req.state = _WAIT_RETRY
        req.deadline = now

    def _seal(self, plaintext, rule=0):
        """A transport frame on the session, or None (counter exhausted: the
        session is dropped and the next transmission is a handshake)."""
        s = self.session
        if s.next_send >= self._ctr_limit:
            self._ctr_limit = s.next_send + self.config.counter_block
            self._dirty = True
        try:
            return s.seal(plaintext, rule=rule)
        except RekeyRequired:
            self._say("re-handshake: session counter exhausted")
            self._drop_session()

    def _seal_control(self, msg):
        # Empty ACKs and RSTs: only on a session, and never retransmitted.
        if self.session is not None:
            dgram = self._seal(coap.encode(msg))
            if dgram is not None:
                self._out.append(dgram)

    def _on_message(self, msg, now):
        req = self._req
        mt = msg.mtype
        if mt == coap.CON or mt == coap.NON:
            if msg.is_response() and not msg.token:
                if mt == coap.CON:
                    self._seal_control(coap.make_ack(msg))
                if msg.mid == self._last_separate:
                    return
                self._last_separate = msg.mid
                if req is not None and req.deadline is not None:
                    self._on_response(req, msg, now)
                return
            if mt == coap.CON:
                self._seal_control(coap.make_rst(msg))
            return
        if req is None or msg.mid != (req.msgnum & 0xFFFF):
            return  # a late duplicate answer to something already done
        if mt == coap.RST:
            self._say("<- RST for #%d" % req.msgnum)
            self._reject(req, None, "reset by the proxy")
            self._done(req)
            return
        if msg.code == coap.EMPTY:
            req.state = _WAIT_SEPARATE
            req.deadline = now + self.config.max_rto
            return
        if msg.is_response():
            self._on_response(req, msg, now)

    def _on_response(self, req, msg, now):
        code = msg.code
        try:
            pending = coap.get_uint(msg, COMMANDS_PENDING, 0)
        except DecodeError:
            pending = 0
        # Every answer tells the current count, so the last one wins (the one to
        # a fetch still counts the command it carries, whose ack comes first).
        self._want_fetch = pending > 0
        self._say("<- %s for #%d %s (%d B)%s" % (coap.code_str(code), req.msgnum, req.kind, self._rx_len,
                                                ", %d command(s) pending" % pending if pending else ""))
        cls = code >> 5
        if cls == 5 or code == coap.TOO_MANY_REQUESTS:
            try:
                wait = coap.max_age(msg)
            except DecodeError:
                wait = None
            if wait is None:
                if code == coap.SERVICE_UNAVAILABLE or code == coap.TOO_MANY_REQUESTS:
                    wait = _DEFAULT_MAX_AGE
                else:
                    wait = min(req.rto * 2, self.config.max_rto)
            req.state = _WAIT_RETRY
            req.deadline = now + wait
            self._say("proxy says retry #%d in %s s" % (req.msgnum, wait))
            return
        if cls == 2:
            self._succeeded(req, msg, now)
        else:
            self._reject(req, code, self._reason(msg))
        self._done(req)

    def _succeeded(self, req, msg, now):
        kind = req.kind
        if kind == "v":
            self.counters["acked"] += len(req.data)
            for e in req.data:
                self._result(e[0], ACKED, msg.code, None)
        elif kind == "f":
            if msg.code == coap.CONTENT and msg.payload:
                self._deliver_command(msg.payload)
        elif kind == "t":
            try:
                ms = cbor.loads(msg.payload)
            except DecodeError:
                ms = None
            if isinstance(ms, int) and ms is not True and ms is not False and ms > 0:
                # The proxy read its clock before the answer went on air.
                airtime = self._rx_len * 8 / self.config.link_bps
                self._wall_offset = ms / 1000 + airtime - now
                self._say("wall clock set from the proxy")
            else:
                self._say("bad time answer ignored")

    def _deliver_command(self, payload):
        try:
            cmd = cbor.loads(payload, max_depth=2, max_items=8)
        except DecodeError:
            cmd = None
        if not (isinstance(cmd, list) and len(cmd) == 4 and isinstance(cmd[0], int)
                and isinstance(cmd[1], str) and isinstance(cmd[2], str) and isinstance(cmd[3], str)):
            self._say("bad command answer ignored")
            return
        cid, sender, body, event_id = cmd
        self.counters["commands"] += 1
        self._say("command %d from %s" % (cid, sender))
        cb = self.on_command
        if cb is not None:
            try:
                cb(cid, sender, body, event_id)
            except Exception as exc:
                # Acknowledged anyway: a command that crashes the handler would
                # otherwise come back for ever.
                self._say("on_command callback raised %r" % (exc,))
        self._acks.append(cid)

    def _reject(self, req, code, reason):
        kind = req.kind
        what = coap.code_str(code) if code is not None else "RST"
        if kind == "v":
            self.counters["rejected"] += len(req.data)
            self._say("readings %s rejected: %s %s" % ([e[0] for e in req.data], what, reason or ""))
            for e in req.data:
                self._result(e[0], REJECTED, code, reason)
        elif kind == "a" and code == coap.NOT_FOUND:
            pass  # already acknowledged (our earlier ack's answer was lost)
        else:
            self._say("request %s failed: %s %s" % (kind, what, reason or ""))

    def _reason(self, msg):
        pl = msg.payload
        if not pl:
            return coap.code_str(msg.code)
        try:
            obj = cbor.loads(pl, max_depth=4, max_items=64)
            if isinstance(obj, dict):
                # {errcode, error} under the session's key table, looked up by
                # id: importing keys.py would freeze its tables into the image.
                table = (self.caps or self.config.caps) & 0x0F
                ids = _ERROR_KEY_IDS.get(table, ())
                err = obj.get("error") or (obj.get(ids[1]) if ids else None)
                code = obj.get("errcode") or (obj.get(ids[0]) if ids else None)
                if err or code:
                    return "%s %s" % (code or "", err or "")
            if isinstance(obj, str):
                return obj
        except LowbwError:
            pass
        try:
            return str(bytes(pl), "utf-8")
        except (UnicodeError, ValueError):
            return coap.code_str(msg.code)

    def _done(self, req):
        if self._req is req:
            self._req = None
        self._dirty = True
