"""The device state machine against an in-memory proxy, on a virtual clock.

``FakeProxy`` is a named test double for the real (aiocoap) proxy, built only

# portable: full tree
from the wire layer: Noise IK responder, frames.Session, CoAP, the sensor
profile's routes, message-number reconstruction and transaction-id dedup as
the proxy contract describes them. ``Net`` moves datagrams between it and a
Device with zero latency and scripted loss, jumping the clock to the device's
next deadline, so a 100 bit/s exchange with minutes of backoff runs at once.

Portable: runs under pytest and under MicroPython (tests/portable/mp_run.py).
"""

import hashlib
import os

from lowbw.device import client, config, store
from lowbw.wire import cbor, coap, crypto, frames, handshake, reading, routes
from lowbw.wire.errors import AuthError, DecodeError, EncodeError, LowbwError
from tests.portable.check import raises

DEV_PRIV = bytes(range(1, 33))
PROXY_PRIV = bytes(range(33, 65))
CMD_OPTION = 65004


class DetRandom:
    """Deterministic random bytes (SHA-256 in counter mode) for repeatable timers and keys."""

    def __init__(self, seed=b"lowbw"):
        self.seed = seed
        self.n = 0

    def __call__(self, k):
        out = b""
        while len(out) < k:
            out += hashlib.sha256(self.seed + self.n.to_bytes(4, "big")).digest()
            self.n += 1
        return out[:k]


def make_config(profile=None, **client_opts):
    tuning = {"proxy_allowance": 12, "max_rto": 120, "queue_limit": 32, "batch_limit": 8}
    for k in client_opts:
        tuning[k] = client_opts[k]
    obj = {
        "version": 1, "name": "sensor1",
        "proxy": {"host": "127.0.0.1", "port": 5683, "public_key": crypto.x25519_base(PROXY_PRIV).hex()},
        "device_private_key": DEV_PRIV.hex(),
        "caps": 2, "link_bps": 100,
        "room_id": "!room:example.org", "user_id": "@lowbw_sensor1:example.org",
        "slots": [
            {"name": "temperature", "fields": [{"name": "temperature", "unit": "°C", "scale": 0}]},
            {"name": "climate", "fields": [{"name": "temperature", "unit": "°C"},
                                           {"name": "humidity", "unit": "%", "scale": 1}]},
        ],
        "client": tuning,
    }
    if profile is not None:
        obj["profile"] = profile
    return config.from_dict(obj)


class FakeProxy:
    """Test double of the lowbw proxy (contract: /tmp/proxy_contract.md), wire layer only."""

    def __init__(self, name="sensor1", priv=PROXY_PRIV, device_pub=None):
        self.name = name
        self.priv = priv
        self.device_pub = device_pub or crypto.x25519_base(DEV_PRIV)
        self.sessions = {}
        self.next_sid = 0x101
        self.top = -1
        self.epoch = 0  # the device's counter epoch as recorded (0: never announced)
        self.echo_epoch = True  # False: a proxy that ignores epochs (never confirms)
        self.epochs = []  # every epoch announced, in order
        self.events = {}  # txn_id -> (slot, values, t)
        self.requests = []  # (msgnum, method, path, readings or payload)
        self.cache = {}
        self.seen_eph = {}
        self.commands = []  # [id, sender, body, event_id]
        self.script = []  # forced answers to reading requests: (code, max_age)
        self.handshakes = 0
        self.time_ms = 1795666000123
        self.separate = False  # answer readings with an empty ACK, then a CON response
        self.override = None  # msg -> Message: replaces every answer while set
        self.pending_out = []
        self.sep_mid = 0x7000
        self.hsns = []  # handshake numbers of the IK messages answered
        self.hs_floor = -1  # highest accepted, as the proxy's registry keeps it
        self.cookie = None  # bytes: under load, IK 1 without this cookie gets a cookie reply
        self.cookie_replies = 0

    # -- helpers for tests
    def txn(self, msgnum, index):
        return "lowbw.%s.%08x.%d.%d" % (self.name, self.epoch, msgnum, index)

    def msgnum(self, mid):
        if self.top < 0:
            return mid
        cand = (self.top & ~0xFFFF) | mid
        if cand - self.top > 32768:
            cand -= 65536
        elif self.top - cand > 32768:
            cand += 65536
        return cand

    def inspect(self, dgram):
        """(kind, counter or None, CoAP message) of an uplink datagram, without touching state."""
        k = frames.kind_of(dgram)
        if k == frames.HS_COOKIED:
            dgram = handshake.split_cookied(dgram)[1]
            k = frames.HS_IK1
        if k == frames.HS_IK1:
            _, _, req = handshake.Responder(self.priv).read_init(dgram)
            return "IK", None, coap.decode(req)
        if k == frames.HS_KK1:
            _, _, req = handshake.Responder(self.priv, rs=self.device_pub).read_init(dgram)
            return "KK", None, coap.decode(req)
        sess = self.sessions.get(frames.peek_session_id(dgram))
        if sess is None:
            return "frame", None, None
        clone = frames.Session.from_state(sess.export_state())
        pt = frames.open_up(clone, dgram)
        return "frame", clone.window.top, coap.decode(pt)

    # -- the proxy
    def datagram(self, dgram, now=0):
        try:
            kind = frames.kind_of(dgram)
        except DecodeError:
            return []
        if kind == frames.HS_COOKIED:
            cookie, dgram = handshake.split_cookied(dgram)
            if cookie != self.cookie:
                return []
            kind = dgram[0]
        elif (kind == frames.HS_IK1 or kind == frames.HS_KK1) and self.cookie is not None:
            self.cookie_replies += 1
            return [bytes([frames.HS_COOKIE_REPLY]) + self.cookie]
        if kind == frames.HS_IK1 or kind == frames.HS_KK1:
            eph = handshake.init_ephemeral(dgram)
            if eph in self.seen_eph:
                return []  # replayed handshake: silence
            self.seen_eph[eph] = True
            # KK (the compact profile): the key id names the device, whose key we hold.
            resp = handshake.Responder(self.priv, rs=self.device_pub if kind == frames.HS_KK1 else None)
            try:
                pub, caps, request = resp.read_init(dgram)
            except LowbwError:
                return []
            if pub != self.device_pub:
                return []
            floor = None
            if resp.epoch is None or resp.epoch == self.epoch:
                if resp.hsn <= self.hs_floor:
                    return []  # an old handshake: silence
            elif resp.hsn <= self.hs_floor:
                floor = self.hs_floor  # a fresh store: count on above the old numbers
            self.hs_floor = max(self.hs_floor, resp.hsn)
            self.hsns.append(resp.hsn)
            self.handshakes += 1
            accepted = handshake.negotiate_caps(caps)
            if resp.epoch is not None:
                self.epochs.append(resp.epoch)
                if self.echo_epoch:
                    if resp.epoch != self.epoch:
                        self.epoch = resp.epoch
                        self.top = -1
                    accepted |= handshake.CAP_EPOCH
            sid = self.next_sid
            self.next_sid += 1
            answer = self.handle(sid, request)
            out, session = resp.respond(sid, accepted, answer or b"", floor)
            self.sessions[sid] = session
            return [out]
        if kind == frames.KIND_SHORT or kind == frames.KIND_LONG or kind == frames.KIND_COMPACT:
            try:
                sess = self.sessions.get(frames.peek_session_id(dgram))
                if sess is None:
                    return []
                pt = frames.open_up(sess, dgram)
            except (AuthError, DecodeError):
                return []
            answer = self.handle(sess.sid, pt)
            out = [] if answer is None else [frames.seal_down(sess, answer)]
            for extra in self.pending_out:
                out.append(frames.seal_down(sess, extra))
            self.pending_out = []
            return out
        return []

    def handle(self, sid, plaintext):
        msg = coap.decode(plaintext)
        if msg.mtype != coap.CON or not msg.is_request():
            return None  # ACKs of our separate responses, RSTs
        key = (sid, msg.mid)
        if key in self.cache:
            return self.cache[key]
        resp = self.override(msg) if self.override is not None else self.answer(msg)
        if self.commands:
            resp.add_option(CMD_OPTION, coap.uint_encode(len(self.commands)))
        if self.separate and resp.code == coap.CHANGED:
            self.sep_mid += 1
            sep = coap.Message(coap.CON, resp.code, self.sep_mid, b"", resp.options, resp.payload)
            self.pending_out.append(sep.encode())
            out = coap.make_ack(msg).encode()
        else:
            out = resp.encode()
        if not (resp.code >> 5 == 5 or resp.code == coap.TOO_MANY_REQUESTS):
            self.cache[key] = out
        return out

    def answer(self, msg):
        path = coap.uri_path(msg)
        n = self.msgnum(msg.mid)
        if path == [routes.ROUTE_READING] and msg.code == coap.POST:
            readings = reading.decode_readings(msg.payload)
            self.requests.append((n, "POST", "v", readings))
            if self.script:
                code, max_age = self.script.pop(0)
                opts = [] if max_age is None else [(coap.MAX_AGE, coap.uint_encode(max_age))]
                return coap.make_response(msg, code, b"", opts)
            for i, r in enumerate(readings):
                txn = self.txn(n, i)
                if txn not in self.events:
                    self.events[txn] = r
            if n > self.top:
                self.top = n
            return coap.make_response(msg, coap.CHANGED)
        if path == [routes.ROUTE_COMMANDS] and msg.code == coap.GET:
            self.requests.append((n, "GET", "x", None))
            if not self.commands:
                return coap.make_response(msg, coap.VALID)
            return coap.make_response(msg, coap.CONTENT, cbor.dumps(self.commands[0]))
        if path == [routes.ROUTE_COMMANDS] and msg.code == coap.POST:
            cid = cbor.loads(msg.payload)
            self.requests.append((n, "POST", "x", cid))
            for c in self.commands:
                if c[0] == cid:
                    self.commands.remove(c)
                    return coap.make_response(msg, coap.CHANGED)
            return coap.make_response(msg, coap.NOT_FOUND)
        if path == [routes.ROUTE_TIME] and msg.code == coap.GET:
            self.requests.append((n, "GET", "z", None))
            return coap.make_response(msg, coap.CONTENT, cbor.dumps(self.time_ms))
        return coap.make_response(msg, coap.NOT_FOUND)


class Net:
    """Zero-latency link with scripted loss; the clock jumps to the next deadline."""

    def __init__(self, proxy, t=1000.0):
        self.proxy = proxy
        self.t = t
        self.up = []  # (t, datagram, delivered)
        self.info = []  # proxy.inspect() of each uplink datagram, taken before delivery
        self.down = []
        self.drop_up = []  # indices of uplink datagrams to lose
        self.drop_down = []
        self.dead = False  # everything lost

    def clock(self):
        return self.t

    def device(self, st=None, cfg=None, seed=b"dev"):
        return client.Device(cfg or make_config(), st if st is not None else store.MemoryStore(),
                             clock=self.clock, random=DetRandom(seed))

    def transmit(self, dev, dgrams):
        for d in dgrams:
            i = len(self.up)
            lost = self.dead or i in self.drop_up
            self.up.append((self.t, bytes(d), not lost))
            try:
                self.info.append(self.proxy.inspect(bytes(d)))
            except LowbwError:
                self.info.append(None)
            if lost:
                continue
            for r in self.proxy.datagram(bytes(d), self.t):
                j = len(self.down)
                lost_down = self.dead or j in self.drop_down
                self.down.append((self.t, r, not lost_down))
                if not lost_down:
                    dev.receive(r, self.t)

    def run(self, dev, until, limit=100000.0):
        for _ in range(10000):
            if until():
                return True
            self.transmit(dev, dev.step(self.t))
            if until():
                return True
            due = dev.next_deadline()
            if due is None:
                return until()
            if due > self.t:
                if due - self.t > limit:
                    return False
                self.t = due
        raise AssertionError("no progress")


def warm(net, dev):
    """Establish a session with one reading; return its msgnum."""
    dev.send(0, [20])
    assert net.run(dev, lambda: dev.pending() == 0)
    assert dev.session is not None
    return net.proxy.top


def test_routes_match_wire():
    assert client.ROUTE_READING == routes.ROUTE_READING
    assert client.ROUTE_COMMANDS == routes.ROUTE_COMMANDS
    assert client.ROUTE_TIME == routes.ROUTE_TIME


def test_cold_start_is_one_ik_datagram_carrying_the_reading():
    proxy = FakeProxy()
    net = Net(proxy)
    dev = net.device()
    results = []
    dev.on_result = lambda rid, status, code, reason: results.append((rid, status, code))
    rid = dev.send(0, [21.5])
    assert net.run(dev, lambda: dev.pending() == 0)
    assert len(net.up) == 1 and len(net.down) == 1
    d = net.up[0][1]
    # A fresh store's first handshake also announces its counter epoch: 4 bytes,
    # and carries its handshake number 0: 1 byte.
    assert d[0] == frames.HS_IK1 and len(d) == 115
    assert len(net.down[0][1]) == 56
    kind, _, msg = proxy.inspect(d)
    assert kind == "IK" and msg.code == coap.POST and msg.payload == reading.encode_readings([(0, [21.5], 0)])
    assert proxy.handshakes == 1
    assert list(proxy.events.values()) == [(0, [21.5], 0)]
    assert results == [(rid, client.ACKED, coap.CHANGED)]
    c = dev.counters
    assert (c["sent"], c["acked"], c["handshakes"], c["retransmissions"]) == (1, 1, 1, 0)
    assert (c["bytes_up"], c["bytes_down"]) == (115, 56)
    assert dev.store.inflight is None and dev.store.queue == []
    assert dev.idle()
    assert proxy.epochs == [dev.store.epoch] and dev.store.epoch_confirmed


def test_cold_handshake_of_a_confirmed_store_is_111_bytes():
    proxy = FakeProxy()
    net = Net(proxy)
    st = store.MemoryStore()
    dev = net.device(st)
    warm(net, dev)
    dev2 = net.device(store.MemoryStore(st.blob))
    dev2.session = None  # e.g. the session was lost: a new IK
    n = len(net.up)
    dev2.send(0, [21.5])
    assert net.run(dev2, lambda: dev2.pending() == 0)
    assert len(net.up) == n + 1
    assert net.up[n][1][0] == frames.HS_IK1 and len(net.up[n][1]) == 111
    assert len(net.down[-1][1]) == 56
    assert proxy.handshakes == 2 and proxy.epochs == [st.epoch] and len(proxy.events) == 2


def test_warm_send_is_31_bytes_and_answer_21():
    proxy = FakeProxy()
    net = Net(proxy)
    dev = net.device()
    warm(net, dev)
    n = len(net.up)
    dev.send(0, [21.5])
    assert net.run(dev, lambda: dev.pending() == 0)
    assert len(net.up) == n + 1
    assert len(net.up[-1][1]) == 31 and len(net.down[-1][1]) == 21
    assert proxy.handshakes == 1
    assert len(proxy.events) == 2


def test_age_travels_in_the_payload():
    proxy = FakeProxy()
    net = Net(proxy)
    dev = net.device()
    warm(net, dev)
    dev.send(1, [21, 405], when=net.t - 65)
    assert net.run(dev, lambda: dev.pending() == 0)
    assert proxy.requests[-1][3] == [(1, [21, 405], -65)]


def test_loss_retransmits_same_mid_after_airtime_based_timeout():
    proxy = FakeProxy()
    net = Net(proxy)
    dev = net.device()
    warm(net, dev)
    first = len(net.up)
    net.drop_up = [first]
    dev.send(0, [22.0])
    assert net.run(dev, lambda: dev.pending() == 0)
    assert len(net.up) == first + 2
    (t0, _, ok0), (t1, _, ok1) = net.up[first], net.up[first + 1]
    assert not ok0 and ok1
    k0, c0, m0 = net.info[first]
    k1, c1, m1 = net.info[first + 1]
    assert k0 == k1 == "frame" and m0.mid == m1.mid and c1 > c0
    # request 31 B + expected answer 17 + 9 B at 100 bit/s, plus the 12 s allowance
    base = (31 + 17 + 9) * 8 / 100 + 12
    assert base <= t1 - t0 <= base * 1.5
    assert dev.counters["retransmissions"] == 1
    assert len(proxy.events) == 2


def test_backoff_doubles_and_is_capped_and_every_ik_is_fresh():
    proxy = FakeProxy()
    net = Net(proxy)
    # base is 26..27 s, so the first timeout is 26..40 s, the second 52..80 s
    # and the third is capped whatever the random factor was.
    dev = net.device(cfg=make_config(max_rto=100))
    net.drop_up = [0, 1, 2, 3]
    dev.send(0, [1])
    assert net.run(dev, lambda: dev.pending() == 0)
    assert len(net.up) == 5
    times = [u[0] for u in net.up]
    gaps = [times[i + 1] - times[i] for i in range(4)]
    base = (len(net.up[0][1]) + 52 + 9) * 8 / 100 + 12
    assert base <= gaps[0] <= 1.5 * base
    assert abs(gaps[1] - 2 * gaps[0]) < 1e-6
    assert gaps[2] == 100 and gaps[3] == 100  # the cap
    mids = [i[2].mid for i in net.info]
    assert len(set(mids)) == 1
    ephs = [handshake.init_ephemeral(u[1]) for u in net.up]
    assert len(set(ephs)) == 5  # a repeated IK would be refused as a replay
    assert proxy.handshakes == 1 and len(proxy.events) == 1
    assert dev.counters["handshakes"] == 5 and dev.counters["retransmissions"] == 4


def test_replayed_ik_gets_no_answer_but_device_recovers():
    proxy = FakeProxy()
    net = Net(proxy)
    dev = net.device()
    net.drop_down = [0]  # the IK answer is lost: the proxy has seen that ephemeral
    dev.send(0, [1])
    assert net.run(dev, lambda: dev.pending() == 0)
    assert proxy.handshakes == 2 and len(proxy.events) == 1
    assert dev.counters["acked"] == 1


def test_restart_from_store_resumes_session_without_handshake():
    proxy = FakeProxy()
    net = Net(proxy)
    st = store.MemoryStore()
    dev = net.device(st)
    warm(net, dev)
    for v in (1, 2, 3):
        dev.send(0, [v])
        assert net.run(dev, lambda: dev.pending() == 0)
    counters_before = [i[1] for i in net.info[1:]]
    msgnums_before = [r[0] for r in proxy.requests]
    # reboot: a new Device from the stored bytes only
    dev2 = net.device(store.MemoryStore(st.blob))
    assert dev2.session is not None
    dev2.send(0, [21.5])
    n = len(net.up)
    assert net.run(dev2, lambda: dev2.pending() == 0)
    assert proxy.handshakes == 1  # no handshake after the restart
    d = net.up[n][1]
    assert frames.kind_of(d) in (frames.KIND_SHORT, frames.KIND_LONG) and len(d) == 31
    assert net.up[n][2]
    assert net.info[n][1] > max(counters_before)
    assert proxy.requests[-1][0] > max(msgnums_before)
    assert len(proxy.events) == 5


def test_restart_with_request_in_flight_resends_same_mid_new_counter():
    proxy = FakeProxy()
    net = Net(proxy)
    st = store.MemoryStore()
    dev = net.device(st)
    warm(net, dev)
    net.dead = True
    measured = net.t
    dev.send(0, [7])
    net.transmit(dev, dev.step(net.t))  # goes out and is lost
    _, _, lost_msg = net.info[-1]
    net.t = dev.next_deadline()
    net.transmit(dev, dev.step(net.t))  # the retransmission too; then the device dies
    _, lost_ctr, lost_msg2 = net.info[-1]
    assert lost_msg2.mid == lost_msg.mid and dev.counters["retransmissions"] == 1
    blob = st.blob
    net.dead = False
    net.t += 5
    dev2 = net.device(store.MemoryStore(blob))
    assert dev2.pending() == 1
    out = dev2.step(net.t)
    assert len(out) == 1
    _, ctr, msg = proxy.inspect(out[0])
    assert msg.mid == lost_msg.mid and ctr > lost_ctr
    assert msg.payload == reading.encode_readings([(0, [7], -int(net.t - measured + 0.5))])
    net.transmit(dev2, out)
    assert dev2.pending() == 0 and proxy.handshakes == 1
    assert len(proxy.events) == 2


def test_counter_and_mid_reserved_ahead_survive_many_restarts():
    proxy = FakeProxy()
    net = Net(proxy)
    st = store.MemoryStore()
    dev = net.device(st, cfg=make_config(counter_block=4, mid_block=3))
    warm(net, dev)
    seen_ctr = []
    seen_mid = []
    for i in range(6):
        d = net.device(store.MemoryStore(st.blob), cfg=make_config(counter_block=4, mid_block=3))
        st = d.store
        for j in range(i % 3 + 1):
            d.send(0, [i * 10 + j])
            n = len(net.up)
            assert net.run(d, d.idle)
            assert len(net.up) == n + 1
            seen_mid.append(proxy.requests[-1][0])
            seen_ctr.append(net.info[n][1])
    assert len(set(seen_mid)) == len(seen_mid) and seen_mid == sorted(seen_mid)
    assert len(set(seen_ctr)) == len(seen_ctr) and seen_ctr == sorted(seen_ctr)
    assert proxy.handshakes == 1
    assert len(proxy.events) == 1 + sum(i % 3 + 1 for i in range(6))


def test_queue_bound_drops_oldest_and_counts_across_restart():
    proxy = FakeProxy()
    net = Net(proxy)
    st = store.MemoryStore()
    dev = net.device(st, cfg=make_config(queue_limit=4))
    results = []
    dev.on_result = lambda rid, status, code, reason: results.append((rid, status))
    rids = [dev.send(0, [i]) for i in range(6)]
    assert results == [(rids[0], client.DROPPED), (rids[1], client.DROPPED)]
    assert dev.counters["dropped"] == 2
    dev2 = net.device(store.MemoryStore(st.blob), cfg=make_config(queue_limit=4))
    assert dev2.counters["dropped"] == 2 and dev2.pending() == 4
    assert [e[0] for e in dev2.store.queue] == rids[2:]
    assert net.run(dev2, lambda: dev2.pending() == 0)
    # the backed-up queue went out as one batch
    assert len(net.up) == 1
    assert proxy.requests[0][3] == [(0, [2], 0), (0, [3], 0), (0, [4], 0), (0, [5], 0)]
    assert sorted(proxy.events) == [proxy.txn(proxy.top, i) for i in range(4)]


def test_batching_when_queue_backs_up():
    proxy = FakeProxy()
    net = Net(proxy)
    dev = net.device(cfg=make_config(batch_limit=3))
    warm(net, dev)
    dev.send(0, [1])
    out = dev.step(net.t)  # reading 1 in flight
    assert dev.step(net.t) == []
    for v in (2, 3, 4, 5):
        dev.send(0, [v], when=net.t - 10)
        net.t += 1
    net.transmit(dev, out)
    assert net.run(dev, lambda: dev.pending() == 0)
    batches = [r[3] for r in proxy.requests[1:]]
    assert batches[0] == [(0, [1], 0)]
    # the queue drains three at a time, each with its own age
    assert batches[1] == [(0, [2], -14), (0, [3], -13), (0, [4], -12)]
    assert batches[2] == [(0, [5], -11)]
    assert len(proxy.events) == 6


def test_batch_respects_mtu():
    proxy = FakeProxy()
    net = Net(proxy)
    dev = net.device(cfg=make_config(mtu=80, batch_limit=16))
    warm(net, dev)
    for i in range(8):
        dev.send(1, [1.1 + i, 2.2 + i])  # float64 values: 21 B of CBOR per reading
    assert net.run(dev, lambda: dev.pending() == 0)
    assert all(len(u[1]) <= 80 for u in net.up[1:])
    assert [len(r[3]) for r in proxy.requests[1:]] == [2, 2, 2, 2]
    assert len(proxy.events) == 9


def test_503_waits_max_age_and_retries_same_mid():
    proxy = FakeProxy()
    net = Net(proxy)
    dev = net.device()
    warm(net, dev)
    proxy.script = [(coap.SERVICE_UNAVAILABLE, 30), (coap.GATEWAY_TIMEOUT, 7)]
    n = len(net.up)
    dev.send(0, [5])
    assert net.run(dev, lambda: dev.pending() == 0)
    ups = net.up[n:]
    assert len(ups) == 3
    assert ups[1][0] - ups[0][0] == 30 and ups[2][0] - ups[1][0] == 7
    mids = [i[2].mid for i in net.info[n:]]
    assert mids[0] == mids[1] == mids[2]
    assert [r[0] for r in proxy.requests[-3:]] == [proxy.top] * 3
    assert len(proxy.events) == 2 and dev.counters["acked"] == 2
    assert proxy.handshakes == 1  # answered: no re-handshake


def test_429_waits_and_rst_rejects():
    proxy = FakeProxy()
    net = Net(proxy)
    dev = net.device()
    warm(net, dev)
    results = []
    dev.on_result = lambda rid, status, code, reason: results.append((rid, status, code))
    proxy.script = [(coap.TOO_MANY_REQUESTS, None)]
    n = len(net.up)
    r1 = dev.send(0, [1])
    assert net.run(dev, lambda: dev.pending() == 0)
    assert net.up[n + 1][0] - net.up[n][0] == 60  # no Max-Age: CoAP's default 60 s
    assert results == [(r1, client.ACKED, coap.CHANGED)]
    proxy.override = coap.make_rst
    r2 = dev.send(0, [2])
    assert net.run(dev, lambda: dev.pending() == 0)
    proxy.override = None
    assert results[-1] == (r2, client.REJECTED, None)
    assert dev.counters["rejected"] == 1


def test_4xx_rejects_and_moves_on():
    proxy = FakeProxy()
    net = Net(proxy)
    dev = net.device()
    warm(net, dev)
    results = []
    dev.on_result = lambda rid, status, code, reason: results.append((rid, status, code))
    proxy.script = [(coap.FORBIDDEN, None)]
    r1 = dev.send(0, [1])
    r2 = dev.send(0, [2])
    assert net.run(dev, lambda: dev.pending() == 0)
    # both readings went in one request, and the rejection covers both
    assert results == [(r1, client.REJECTED, coap.FORBIDDEN), (r2, client.REJECTED, coap.FORBIDDEN)]
    assert dev.counters["rejected"] == 2 and dev.pending() == 0
    r3 = dev.send(0, [3])
    assert net.run(dev, lambda: dev.pending() == 0)
    assert results[-1] == (r3, client.ACKED, coap.CHANGED)
    assert len(proxy.events) == 2


def test_reject_reason_from_cbor_error():
    proxy = FakeProxy()
    net = Net(proxy)
    dev = net.device()
    warm(net, dev)
    got = []
    dev.on_result = lambda rid, status, code, reason: got.append(reason)

    def answer(msg):
        from lowbw.wire import keys
        body = keys.compress({"errcode": "M_FORBIDDEN", "error": "no"}, 2)
        return coap.make_response(msg, coap.FORBIDDEN, cbor.dumps(body))

    proxy.override = answer
    dev.send(0, [1])
    assert net.run(dev, lambda: dev.pending() == 0)
    proxy.override = None
    assert got == ["M_FORBIDDEN no"]


def test_commands_fetched_delivered_and_acked():
    proxy = FakeProxy()
    net = Net(proxy)
    dev = net.device()
    warm(net, dev)
    got = []
    dev.on_command = lambda cid, sender, body, ev: got.append((cid, sender, body, ev))
    proxy.commands = [[7, "@alice:example.org", "blink 3", "$e1"], [8, "@bob:example.org", "off", "$e2"]]
    n = len(proxy.requests)
    dev.send(0, [1])
    assert net.run(dev, lambda: dev.idle())
    assert got == [(7, "@alice:example.org", "blink 3", "$e1"), (8, "@bob:example.org", "off", "$e2")]
    assert proxy.commands == []
    kinds = [(r[1], r[2]) for r in proxy.requests[n:]]
    assert kinds == [("POST", "v"), ("GET", "x"), ("POST", "x"), ("GET", "x"), ("POST", "x")]
    assert [r[3] for r in proxy.requests[n:] if r[1:3] == ("POST", "x")] == [7, 8]
    assert dev.counters["commands"] == 2


def test_command_callback_error_still_acks():
    proxy = FakeProxy()
    net = Net(proxy)
    dev = net.device()
    warm(net, dev)

    def boom(*a):
        raise ValueError("handler bug")

    dev.on_command = boom
    proxy.commands = [[1, "@a:x", "x", "$e"]]
    dev.send(0, [1])
    assert net.run(dev, lambda: dev.idle())
    assert proxy.commands == []


def test_rehandshake_after_two_unanswered_keeps_mid():
    proxy = FakeProxy()
    net = Net(proxy)
    dev = net.device()
    warm(net, dev)
    proxy.sessions = {}  # the proxy crashed and lost its sessions
    n = len(net.up)
    dev.send(0, [9])
    assert net.run(dev, lambda: dev.pending() == 0)
    ups = [u[1] for u in net.up[n:]]
    assert [frames.kind_of(u) == frames.HS_IK1 for u in ups] == [False, False, True]
    m = net.info[n + 2][2]
    assert proxy.handshakes == 2
    assert proxy.requests[-1][0] == proxy.top and len(proxy.events) == 2
    # the same message number as the first two (unreadable) copies carried
    assert m.mid == proxy.top & 0xFFFF


def test_rehandshake_when_rekey_due():
    proxy = FakeProxy()
    net = Net(proxy)
    dev = net.device()
    warm(net, dev)
    dev.session.next_send = frames.REKEY_SOFT_LIMIT
    n = len(net.up)
    dev.send(0, [9])
    assert net.run(dev, lambda: dev.pending() == 0)
    assert frames.kind_of(net.up[n][1]) == frames.HS_IK1
    assert proxy.handshakes == 2 and dev.session.next_send < 10


def test_separate_response_is_acked_and_counts():
    proxy = FakeProxy()
    net = Net(proxy)
    dev = net.device()
    warm(net, dev)
    proxy.separate = True
    n = len(net.up)
    dev.send(0, [3])
    assert net.run(dev, lambda: dev.pending() == 0)
    assert dev.counters["acked"] == 2
    out = dev.step(net.t)  # the empty ACK for the proxy's CON response
    assert len(out) == 1
    m = proxy.inspect(out[0])[2]
    assert m.mtype == coap.ACK and m.code == coap.EMPTY and m.mid == proxy.sep_mid
    assert len(net.up) == n + 1


def test_time_sync():
    proxy = FakeProxy()
    net = Net(proxy)
    dev = net.device()
    assert dev.wall_time() is None
    dev.sync_time()
    assert net.run(dev, lambda: dev.idle())
    w = dev.wall_time()
    air = len(net.down[-1][1]) * 8 / 100
    assert abs(w - (proxy.time_ms / 1000 + air)) < 1e-3
    # readings now carry absolute times in the store (exact across reboots) and ages on the wire
    dev.send(0, [1], when=net.t - 3)
    assert dev.store.queue[0][4] is True and abs(dev.store.queue[0][3] - (w - 3)) < 1e-3
    assert net.run(dev, lambda: dev.pending() == 0)
    assert proxy.requests[-1][3] == [(0, [1], -3)]


def test_absolute_times_after_reboot_without_wall_clock():
    proxy = FakeProxy()
    net = Net(proxy)
    st = store.MemoryStore()
    dev = net.device(st)
    dev.set_wall_time(1795666000.0)
    net.dead = True
    dev.send(0, [1])
    net.dead = False
    dev2 = net.device(store.MemoryStore(st.blob))
    assert net.run(dev2, lambda: dev2.pending() == 0)
    assert proxy.requests[-1][3] == [(0, [1], 1795666000)]


def test_clock_restart_keeps_ages_as_lower_bounds():
    proxy = FakeProxy()
    net = Net(proxy)
    st = store.MemoryStore()
    dev = net.device(st)
    net.dead = True
    dev.send(0, [1], when=net.t - 20)
    net.t = 5.0  # reboot: the monotonic clock starts again
    net.dead = False
    dev2 = net.device(store.MemoryStore(st.blob))
    assert net.run(dev2, lambda: dev2.pending() == 0)
    assert proxy.requests[-1][3] == [(0, [1], -20)]


def test_garbage_is_dropped_without_error():
    proxy = FakeProxy()
    net = Net(proxy)
    dev = net.device()
    warm(net, dev)
    before = dev.session.export_state()
    junk = [b"", b"\x00", b"\xff\xff", b"\x82" + bytes(60), b"\x00" + os.urandom(40),
            b"\x40\x01\x02", b"\x81" + bytes(100), net.down[-1][1]]
    for j in junk:
        dev.receive(j, net.t)
    assert dev.session.export_state() == before
    assert dev.step(net.t) == []


def test_send_validates_against_config():
    net = Net(FakeProxy())
    dev = net.device()
    raises(EncodeError, dev.send, 2, [1])
    raises(EncodeError, dev.send, 0, [1, 2])
    raises(EncodeError, dev.send, 1, [1])
    raises(EncodeError, dev.send, 0, ["21"])
    raises(EncodeError, dev.send, 0, [True])
    assert dev.pending() == 0
    dev.send(1, [None, 40])
    assert dev.pending() == 1


def test_store_other_keys_session_not_used():
    proxy = FakeProxy()
    net = Net(proxy)
    st = store.MemoryStore()
    dev = net.device(st)
    warm(net, dev)
    st.keyid = b"\x00" * 8
    st.save()
    dev2 = net.device(store.MemoryStore(st.blob))
    assert dev2.session is None


def test_store_roundtrip_and_corruption():
    st = store.MemoryStore()
    st.queue = [[0, 1, [21.5, None, -3], 12.5, False], [1, 0, [7], 1795666000.25, True]]
    st.inflight = [4, "v", [[2, 0, [1], 3.0, False]]]
    st.mid_limit = 16
    st.dropped = 3
    st.next_rid = 3
    st.session = [5, True, bytes(32), bytes(range(32)), 48, 10, 0x7FF, 1]
    st.keyid = bytes(8)
    st.save()
    st2 = store.MemoryStore(st.blob)
    for k in ("queue", "inflight", "mid_limit", "dropped", "next_rid", "session", "keyid"):
        assert getattr(st2, k) == getattr(st, k), k
    blob = st.blob
    raises(DecodeError, store.MemoryStore, blob[:-1])
    raises(DecodeError, store.MemoryStore, b"\x80")
    raises(DecodeError, store.MemoryStore, cbor.dumps([2] + [None] * 8))
    bad = cbor.loads(blob)
    bad[6] = [99, "v", []]  # in-flight number beyond the reserved limit
    raises(DecodeError, store.MemoryStore, cbor.dumps(bad))
    for i in range(len(blob)):
        b = bytearray(blob)
        b[i] ^= 0x55
        try:
            store.MemoryStore(bytes(b))
        except DecodeError:
            pass

    st.epoch, st.epoch_confirmed = 0xFEDCBA98, True
    st.save()
    st3 = store.MemoryStore(st.blob)
    assert (st3.epoch, st3.epoch_confirmed) == (0xFEDCBA98, True)
    for epoch, confirmed in ((-1, False), (1 << 32, False), (1.5, False), ("e", False), (5, 1),
                             (None, True), (5, None)):
        bad = cbor.loads(st.blob)
        bad[9], bad[10] = epoch, confirmed
        raises(DecodeError, store.MemoryStore, cbor.dumps(bad))
    raises(DecodeError, store.MemoryStore, cbor.dumps([True] + cbor.loads(st.blob)[1:9]))


def test_store_format_1_is_epoch_0_confirmed():
    st = store.MemoryStore()
    st.mid_limit = 32
    st.save()
    v1 = cbor.loads(st.blob)[:9]
    v1[0] = 1
    old = store.MemoryStore(cbor.dumps(v1))
    assert (old.epoch, old.epoch_confirmed, old.mid_limit) == (0, True, 32)
    raises(DecodeError, store.MemoryStore, cbor.dumps(v1 + [0, True]))  # version 1 has 9 items
    # A device on it announces nothing: its counter never restarted.
    proxy = FakeProxy()
    net = Net(proxy)
    dev = net.device(old)
    dev.send(0, [21.5])
    assert net.run(dev, lambda: dev.pending() == 0)
    assert len(net.up[0][1]) == 111 and proxy.epochs == [] and proxy.requests[0][0] == 32
    assert cbor.loads(old.blob)[0] == store.FORMAT_VERSION == 3


def test_fresh_store_draws_a_nonzero_epoch_saved_before_anything_is_sent():
    st = store.MemoryStore()
    assert st.epoch is None and not st.epoch_confirmed
    zeros_first = DetRandom()
    draws = [b"\0\0\0\0", b"\0\0\0\x07"]

    def rnd(n):
        return draws.pop(0) if draws and n == 4 else zeros_first(n)

    dev = client.Device(make_config(), st, clock=lambda: 1000.0, random=rnd)
    assert st.epoch == 7 and not st.epoch_confirmed
    dev.send(0, [21.5])
    assert store.MemoryStore(st.blob).epoch == 7
    out = dev.step(1000.0)
    assert len(out) == 1 and len(out[0]) == 115
    resp = handshake.Responder(PROXY_PRIV)
    resp.read_init(out[0])
    assert resp.epoch == 7
    # Another device on the same (reloaded) store keeps the epoch.
    assert client.Device(make_config(), store.MemoryStore(st.blob), clock=lambda: 1000.0).store.epoch == 7
    raises(LowbwError, client.Device, make_config(), store.MemoryStore(), clock=lambda: 0.0,
           random=lambda n: bytes(n))


def test_epoch_announced_until_an_answer_confirms_it():
    proxy = FakeProxy()
    net = Net(proxy)
    st = store.MemoryStore()
    dev = net.device(st)
    net.drop_down = [0]  # the proxy recorded the epoch, but its answer is lost
    dev.send(0, [21.5])
    assert net.run(dev, lambda: dev.pending() == 0)
    assert len(net.up) == 2 and len(net.up[0][1]) == 115
    assert proxy.epochs == [st.epoch, st.epoch] and st.epoch_confirmed
    # The retried handshake kept its message number: one event.
    assert proxy.handshakes == 2 and len(proxy.events) == 1
    assert store.MemoryStore(st.blob).epoch_confirmed
    # Confirmed: a later handshake leaves the epoch out.
    dev._drop_session()
    dev.send(0, [22.5])
    assert net.run(dev, lambda: dev.pending() == 0)
    assert len(net.up[-1][1]) == 111 and len(proxy.epochs) == 2 and len(proxy.events) == 2


def test_epoch_announced_on_every_handshake_to_a_proxy_that_does_not_echo_it():
    proxy = FakeProxy()
    proxy.echo_epoch = False
    net = Net(proxy)
    dev = net.device()
    for v in (21.5, 22.5):
        dev._drop_session()
        dev.send(0, [v])
        assert net.run(dev, lambda: dev.pending() == 0)
    assert [len(u[1]) for u in net.up] == [115, 115]
    assert proxy.epochs == [dev.store.epoch] * 2 and proxy.handshakes == 2
    assert not dev.store.epoch_confirmed and not dev.caps & handshake.CAP_EPOCH


def test_wiped_store_readings_are_new_messages_to_the_proxy():
    proxy = FakeProxy()
    net = Net(proxy)
    st = store.MemoryStore()
    dev = net.device(st, seed=b"first")
    for v in (1, 2, 3):
        dev.send(0, [v])
        assert net.run(dev, lambda: dev.pending() == 0)
    first_epoch = st.epoch
    wiped = net.device(store.MemoryStore(), seed=b"second")  # flash wiped
    assert wiped.store.epoch != first_epoch
    for v in (4, 5):
        wiped.send(0, [v])
        assert net.run(wiped, lambda: wiped.pending() == 0)
    # The numbers start again at 0 but the epoch tells them apart.
    assert [r[0] for r in proxy.requests] == [0, 1, 2, 0, 1]
    assert sorted(r[1][0] for r in proxy.events.values()) == [1, 2, 3, 4, 5]
    assert proxy.epochs == [first_epoch, wiped.store.epoch]


def _tmpdir():
    base = "/tmp/lowbw-device-test-%s" % DetRandom(os.urandom(8))(4).hex()
    os.mkdir(base)
    return base


def _rm(path):
    try:
        os.remove(path)
    except OSError:
        pass


def test_file_store_atomic_write():
    d = _tmpdir()
    path = d + "/dev.state"
    try:
        st = store.FileStore(path)
        assert st.queue == [] and st.session is None
        st.queue.append([0, 0, [1], 1.0, False])
        st.mid_limit = 16
        st.save()
        assert store.FileStore(path).queue == [[0, 0, [1], 1.0, False]]
        st.queue.append([1, 0, [2], 2.0, False])
        st.save()
        assert len(store.FileStore(path).queue) == 2
        assert "dev.state.tmp" not in os.listdir(d)
        # a crash between remove and rename leaves only the complete tmp file
        os.rename(path, path + ".tmp")
        assert len(store.FileStore(path).queue) == 2
        # a first write cut short leaves a partial tmp: nothing stored
        with open(path + ".tmp", "wb") as f:
            f.write(st.encode()[:10])
        assert store.FileStore(path).queue == []
        # a corrupt state file is an error, not a silent fresh start
        with open(path, "wb") as f:
            f.write(b"\x89garbage")
        raises(DecodeError, store.FileStore, path)
    finally:
        _rm(path)
        _rm(path + ".tmp")
        os.rmdir(d)


def test_config_errors_name_the_key():
    good = {
        "version": 1, "name": "s", "proxy": {"host": "h", "port": 1, "public_key": "ab" * 32},
        "device_private_key": "cd" * 32, "slots": [{"name": "t", "fields": [{"name": "t"}]}],
    }
    cfg = config.from_dict(good)
    assert cfg.proxy_public_key == b"\xab" * 32 and cfg.caps == 2 and cfg.link_bps == 100
    assert cfg.slots == [("t", [("t", "", 0)])] and cfg.proxy_allowance == 12
    assert "cd" not in repr(cfg)

    def broken(path, value):
        obj = cbor.loads(cbor.dumps(good))
        parts = path.split(".")
        o = obj
        for p in parts[:-1]:
            o = o[p]
        if value is None:
            del o[parts[-1]]
        else:
            o[parts[-1]] = value
        return raises(config.ConfigError, config.from_dict, obj).message

    assert "proxy.public_key" in broken("proxy.public_key", "zz" * 32)
    assert "proxy.public_key" in broken("proxy.public_key", "ab")
    assert "device_private_key" in broken("device_private_key", None)
    assert "proxy.port" in broken("proxy.port", 70000)
    assert "version" in broken("version", 2)
    assert "slots" in broken("slots", [])
    assert "slots[0].fields" in broken("slots", [{"name": "t", "fields": []}])
    assert "link_bps" in broken("link_bps", -1)
    assert "client.queue_limit" in broken("client", {"queue_limit": 0})
    assert "name" in broken("name", "")
    assert isinstance(raises(config.ConfigError, config.loads, "{nope"), LowbwError)
    raises(config.ConfigError, config.load, "/nonexistent/lowbw/device.json")


def test_error_key_ids_match_the_key_tables():
    from lowbw.device import client as _client
    from lowbw.wire import keys as _keys
    for table, (errcode, error) in _client._ERROR_KEY_IDS.items():
        t = _keys.get_table(table)
        assert t.ids["errcode"] == errcode and t.ids["error"] == error


def test_handshake_numbers_grow_and_survive_a_reboot():
    proxy = FakeProxy()
    net = Net(proxy)
    st = store.MemoryStore()
    dev = net.device(st)
    for v in (21.5, 22.5, 23.5):
        dev._drop_session()
        dev.send(0, [v])
        assert net.run(dev, lambda: dev.pending() == 0)
    assert proxy.hsns == [0, 1, 2] and st.hs_next == 3
    # A reboot: the next handshake continues from the store.
    dev2 = net.device(store.MemoryStore(st.blob))
    dev2._drop_session()
    dev2.send(0, [24.5])
    assert net.run(dev2, lambda: dev2.pending() == 0)
    assert proxy.hsns == [0, 1, 2, 3] and len(proxy.events) == 4


def test_a_handshake_number_is_stored_before_its_message_goes_out():
    st = store.MemoryStore()
    dev = client.Device(make_config(), st, clock=lambda: 1000.0, random=DetRandom())
    dev.send(0, [21.5])
    out = dev.step(1000.0)
    assert len(out) == 1 and out[0][0] == frames.HS_IK1
    assert store.MemoryStore(st.blob).hs_next == 1
    resp = handshake.Responder(PROXY_PRIV)
    resp.read_init(out[0])
    assert resp.hsn == 0


def test_fresh_store_continues_above_the_old_numbers():
    proxy = FakeProxy()
    net = Net(proxy)
    proxy.hs_floor = 40  # the device made 41 handshakes before it lost its store
    proxy.epoch = 0x1234
    st = store.MemoryStore()
    dev = net.device(st)
    dev.send(0, [21.5])
    assert net.run(dev, lambda: dev.pending() == 0)
    assert proxy.hsns == [0] and st.hs_next == 41 and st.epoch_confirmed
    dev._drop_session()
    dev.send(0, [22.5])
    assert net.run(dev, lambda: dev.pending() == 0)
    assert proxy.hsns == [0, 41] and len(proxy.events) == 2


def test_cookie_reply_under_load_then_the_same_handshake_with_it():
    proxy = FakeProxy()
    proxy.cookie = bytes(range(100, 116))
    net = Net(proxy)
    dev = net.device()
    results = []
    dev.on_result = lambda rid, status, code, reason: results.append(status)
    dev.send(0, [21.5])
    assert net.run(dev, lambda: dev.pending() == 0)
    ups = [u[1] for u in net.up]
    assert [u[0] for u in ups] == [frames.HS_IK1, frames.HS_COOKIED]
    assert ups[1] == handshake.cookied(proxy.cookie, ups[0])  # the same IK 1, with the cookie
    assert proxy.cookie_replies == 1 and proxy.handshakes == 1 and results == [client.ACKED]
    assert len(proxy.events) == 1 and dev.counters["retransmissions"] == 0
    # A cookie reply nobody asked for (no handshake in flight) changes nothing.
    dev.receive(bytes([frames.HS_COOKIE_REPLY]) + bytes(16), 0.0)
    assert dev.step(0.0) == [] and dev.idle()
    # A malformed one is dropped.
    dev._drop_session()
    dev.send(0, [22.5])
    out = dev.step(0.0)
    dev.receive(bytes([frames.HS_COOKIE_REPLY]) + bytes(3), 0.0)
    assert out and out[0][0] == frames.HS_IK1 and dev.step(0.0) == []


# -- the compact link profile (docs/PROTOCOL.md, "Compact link profile") ----------


def test_compact_profile_cold_warm_and_wake_without_a_handshake():
    proxy = FakeProxy()
    proxy.next_sid = 0x2A  # a compact session id below 0x80: one byte
    net = Net(proxy)
    st = store.MemoryStore()
    dev = net.device(st, cfg=make_config("compact"))
    assert dev.config.compact
    dev.send(0, [21.5])
    assert net.run(dev, lambda: dev.pending() == 0)
    kk1 = net.up[0][1]
    # A fresh store: KK message 1 with the counter epoch (65 B), answer 52 B.
    assert kk1[0] == frames.HS_KK1 and len(kk1) == 65 and len(net.down[0][1]) == 52
    assert dev.session.compact and dev.caps & handshake.CAP_COMPACT and dev.store.epoch_confirmed
    dev.send(0, [21.5])
    assert net.run(dev, lambda: dev.pending() == 0)
    # Warm: 16 B up (rule 1, one-byte session id, the Message ID's low byte), 9 B down.
    assert len(net.up[-1][1]) == 16 and net.up[-1][1][0] >> 4 == 0xD and len(net.down[-1][1]) == 9
    # A reboot (deep sleep): the stored session is compact, no handshake, same sizes.
    dev2 = net.device(store.MemoryStore(st.blob), cfg=make_config("compact"))
    assert dev2.session is not None and dev2.session.compact
    dev2.send(0, [22.0])
    assert net.run(dev2, lambda: dev2.pending() == 0)
    assert len(net.up[-1][1]) == 16 and len(net.down[-1][1]) == 9
    assert dev2.counters["handshakes"] == 0 and proxy.handshakes == 1
    assert sorted(r[1] for r in proxy.events.values()) == [[21.5], [21.5], [22.0]]


def test_compact_profile_lost_answer_retries_the_same_message_once():
    proxy = FakeProxy()
    proxy.next_sid = 0x2A  # a compact session id below 0x80: one byte
    net = Net(proxy)
    dev = net.device(cfg=make_config("compact"))
    dev.send(0, [1])
    assert net.run(dev, lambda: dev.pending() == 0)
    net.drop_down.append(len(net.down))  # the next answer is lost
    dev.send(0, [2])
    assert net.run(dev, lambda: dev.pending() == 0)
    # Same message (MID) in a new frame, answered from the proxy's cache: one event.
    assert dev.counters["retransmissions"] == 1
    mids = [info[2].mid for info in net.info[1:]]
    assert mids[0] == mids[1]
    assert sorted(r[1] for r in proxy.events.values()) == [[1], [2]]


def test_compact_profile_other_requests_and_a_stale_answer():
    proxy = FakeProxy()
    proxy.next_sid = 0x2A  # a compact session id below 0x80: one byte
    net = Net(proxy)
    dev = net.device(cfg=make_config("compact"))
    dev.send(0, [1])
    assert net.run(dev, lambda: dev.pending() == 0)
    dev.sync_time()
    assert net.run(dev, lambda: dev.wall_time() is not None)
    assert net.up[-1][1][0] >> 4 == 0xE  # GET z: rule 2 (the code in the residue)
    # An answer to an earlier request arriving late does not authenticate for the
    # request now in flight (the implied Message ID is bound to the tag).
    sess = proxy.sessions[dev.session.sid]
    old = coap.Message(coap.CON, coap.POST, 0)
    stale = frames.seal_down(sess, coap.make_response(old, coap.CHANGED).encode())
    dev.send(0, [2])
    out = dev.step(net.t)
    failures = dev.session.failures
    dev.receive(stale, net.t)
    assert dev.session.failures > failures and dev.pending() == 1
    net.transmit(dev, out)
    assert net.run(dev, lambda: dev.pending() == 0)
