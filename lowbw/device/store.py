"""The device's persistent state, one CBOR array written atomically.

Everything a device needs to carry on after a reboot or deep sleep without a
handshake, without losing a reading and without reusing a nonce or a message
ID. The blob is one CBOR array (``lowbw.wire.cbor``)::

    [3,            format version
     keyid,        8 bytes: SHA-256(device private key | proxy public key)[:8],
                   so a state file from other keys is not used with these
     session,      null, or Session.export_state() as an array:
                   [sid, initiator, send_key, recv_key, next_send, recv_top,
                    recv_mask, unheard, compact]; next_send is a counter
                   RESERVED ahead (no frame was ever sealed with it or anything
                   above it); compact (the compact link profile's frames) may
                   be missing: false
     mid_limit,    next message number to use after a restart (reserved ahead:
                   every number below it may have been used)
     queue,        [[rid, slot, [v1, ...], t, absolute], ...] readings waiting,
                   oldest first
     dropped,      readings dropped from the full queue, ever
     inflight,     null, or [msgnum, kind, data]: the request being sent;
                   kind "v" (data: list of queue entries), "a" (command ack,
                   data: command id), "f" (command fetch), "t" (time), data
                   null for the last two
     next_rid,     local id for the next reading
     mono,         the monotonic clock (seconds) when this was written
     epoch,        the counter epoch (0..2**32-1): drawn at random when the
                   store is created, so the proxy can tell a message counter
                   that started again from 0 from one it knows
                   (lowbw.wire.handshake, CAP_EPOCH)
     epoch_confirmed,  true once a handshake answer confirmed the proxy
                   recorded the epoch; until then every handshake announces it
     hs_next]      the handshake number the next IK message 1 carries
                   (lowbw.wire.handshake): written before that message goes
                   out, so no number is ever sent twice and a captured old
                   handshake stays dead

Format version 1 (no epoch fields) is still read: its counter was never lost,
so it is taken as epoch 0, confirmed (the proxy's default for every device).
Versions 1 and 2 have no ``hs_next``: it is 0 (the proxy accepts the first
numbered handshake of every device it knew before numbers existed).
A store with no blob yet has ``epoch`` None (confirmed false); the device
draws it (``lowbw.device.client``) before it sends anything, and it is
written with the next save.

A queue entry's ``t`` is Unix seconds when ``absolute`` is true (the device
knew the wall time when it measured), else the monotonic clock's seconds.

Writes are atomic: the blob goes to ``<path>.tmp``, is flushed (and fsynced
where the port can), then renamed over ``<path>``. A port whose filesystem
will not rename over an existing file (FAT) gets remove-then-rename, and a
reader that finds only ``<path>.tmp`` uses it, so a crash between the two
loses nothing.

Shared with MicroPython. ``Store`` is the base; ``FileStore`` keeps the blob
in a file (unix port, CPython, a board's flash), ``MemoryStore`` in memory
(tests; boards that keep it in RTC memory subclass ``Store`` and override
``_read``/``_write``).
"""

import os

from lowbw.wire import cbor
from lowbw.wire._compat import const
from lowbw.wire.errors import DecodeError

FORMAT_VERSION = const(3)
_V1_ITEMS = const(9)
_V2_ITEMS = const(11)
_V3_ITEMS = const(12)
KINDS = ("v", "a", "f", "t")
# The largest state a device writes is a full queue of full readings.
_MAX_ITEMS = const(20000)


def keyid(private_key, proxy_public_key):
    import hashlib

    return hashlib.sha256(bytes(private_key) + bytes(proxy_public_key)).digest()[:8]


def _is_int(v):
    return isinstance(v, int) and v is not True and v is not False


def _is_num(v):
    return _is_int(v) or isinstance(v, float)


def _check_entry(e):
    if not isinstance(e, list) or len(e) != 5:
        raise DecodeError("state: bad queue entry")
    rid, slot, values, t, absolute = e
    if not (_is_int(rid) and _is_int(slot) and isinstance(values, list) and _is_num(t)):
        raise DecodeError("state: bad queue entry")
    if absolute is not True and absolute is not False:
        raise DecodeError("state: bad queue entry")
    for v in values:
        if v is not None and not _is_num(v):
            raise DecodeError("state: bad reading value")


class Store:
    """The state fields (see the module docstring) and ``save()``."""

    def __init__(self):
        self.reset()
        blob = self._read()
        if blob is not None:
            self.decode(blob)

    def reset(self):
        self.keyid = None
        self.session = None
        self.mid_limit = 0
        self.queue = []
        self.dropped = 0
        self.inflight = None
        self.next_rid = 0
        self.mono = 0.0
        self.epoch = None
        self.epoch_confirmed = False
        self.hs_next = 0
        self.saves = 0

    def rebase(self, shift):
        """Move the monotonic times of the queued and in-flight readings by
        ``shift`` seconds (absolute ones stay); return how many moved."""
        n = 0
        entries = list(self.queue)
        inf = self.inflight
        if inf is not None and inf[1] == "v":
            entries += inf[2]
        for e in entries:
            if not e[4]:
                e[3] += shift
                n += 1
        return n

    # Subclasses: bytes or None (nothing stored yet), and the write.
    def _read(self):
        return None

    def _write(self, data):
        pass

    def encode(self):
        return cbor.dumps([
            FORMAT_VERSION, self.keyid, self.session, self.mid_limit, self.queue,
            self.dropped, self.inflight, self.next_rid, self.mono,
            self.epoch, self.epoch_confirmed, self.hs_next,
        ])

    def decode(self, blob):
        """Load fields from a blob; DecodeError (nothing changed) if it is not a valid state."""
        (self.keyid, self.session, self.mid_limit, self.queue, self.dropped, self.inflight,
         self.next_rid, self.mono, self.epoch, self.epoch_confirmed, self.hs_next) = parse(blob)

    def save(self):
        self._write(self.encode())
        self.saves += 1


def parse(blob):
    """The 11 fields after the version, validated (a version 1 blob gets epoch 0,
    confirmed; versions 1 and 2 get hs_next 0); DecodeError if ``blob`` is not a state."""
    obj = cbor.loads(blob, max_depth=6, max_items=_MAX_ITEMS)
    if not isinstance(obj, list) or not obj:
        raise DecodeError("state: not a lowbw device state")
    version = obj[0]
    if not _is_int(version) or not 1 <= version <= FORMAT_VERSION:
        raise DecodeError("state: unsupported format version %r" % (version,))
    hs_next = 0
    if version == 1 and len(obj) == _V1_ITEMS:
        epoch, confirmed = 0, True
    elif (version == 2 and len(obj) == _V2_ITEMS) or (version == 3 and len(obj) == _V3_ITEMS):
        epoch, confirmed = obj[9], obj[10]
        if version == 3:
            hs_next = obj[11]
            if not (_is_int(hs_next) and 0 <= hs_next < (1 << 63)):
                raise DecodeError("state: bad handshake number")
        # None: saved before any device drew one (nothing was sent yet).
        if epoch is not None and not (_is_int(epoch) and 0 <= epoch <= 0xFFFFFFFF):
            raise DecodeError("state: bad counter epoch")
        if (confirmed is not True and confirmed is not False) or (confirmed and epoch is None):
            raise DecodeError("state: bad counter epoch")
    else:
        raise DecodeError("state: not a lowbw device state")
    kid, session, mid_limit, queue, dropped, inflight, next_rid, mono = obj[1:9]
    if kid is not None and (not isinstance(kid, bytes) or len(kid) != 8):
        raise DecodeError("state: bad key id")
    if session is not None:
        if not isinstance(session, list) or not 8 <= len(session) <= 9:
            raise DecodeError("state: bad session")
        sid, initiator, sk, rk, nxt, top, mask, unheard = session[:8]
        if not (_is_int(sid) and 0 <= sid <= 0xFFFF and initiator is True and session[-1] is not None):
            raise DecodeError("state: bad session")
        if not (isinstance(sk, bytes) and isinstance(rk, bytes) and len(sk) == 32 and len(rk) == 32):
            raise DecodeError("state: bad session keys")
        if not (_is_int(nxt) and nxt >= 0 and _is_int(top) and top >= -1 and _is_int(mask)
                and mask >= 0 and _is_int(unheard) and unheard >= 0):
            raise DecodeError("state: bad session counters")
    if not (_is_int(mid_limit) and mid_limit >= 0 and _is_int(dropped) and dropped >= 0):
        raise DecodeError("state: bad counters")
    if not (_is_int(next_rid) and next_rid >= 0 and _is_num(mono)):
        raise DecodeError("state: bad counters")
    if not isinstance(queue, list):
        raise DecodeError("state: bad queue")
    for e in queue:
        _check_entry(e)
    if inflight is not None:
        if not isinstance(inflight, list) or len(inflight) != 3:
            raise DecodeError("state: bad in-flight request")
        msgnum, kind, data = inflight
        if not (_is_int(msgnum) and 0 <= msgnum < mid_limit and kind in KINDS):
            raise DecodeError("state: bad in-flight request")
        if kind == "v":
            if not isinstance(data, list) or not data:
                raise DecodeError("state: bad in-flight readings")
            for e in data:
                _check_entry(e)
        elif kind == "a" and not _is_int(data):
            raise DecodeError("state: bad in-flight command ack")
    return kid, session, mid_limit, queue, dropped, inflight, next_rid, mono, epoch, confirmed, hs_next


class MemoryStore(Store):
    """State kept in ``self.blob`` (bytes); ``MemoryStore(old.blob)`` is a reboot."""

    def __init__(self, blob=None):
        self.blob = blob
        Store.__init__(self)

    def _read(self):
        return self.blob

    def _write(self, data):
        self.blob = data


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _read_file(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


class FileStore(Store):
    """State in a file; ``<path>.tmp`` is the scratch file of the atomic write."""

    def __init__(self, path):
        self.path = path
        self.tmp = path + ".tmp"
        Store.__init__(self)

    def _read(self):
        data = _read_file(self.path)
        if data is not None:
            return data
        data = _read_file(self.tmp)
        if data is None:
            return None
        # Only remove-then-rename leaves a lone tmp that is complete; a first
        # write cut short leaves a partial one, which means "nothing stored".
        try:
            parse(data)
        except DecodeError:
            return None
        return data

    def _write(self, data):
        tmp = self.tmp
        f = _open_private(tmp)
        try:
            f.write(data)
            f.flush()
            fsync = getattr(os, "fsync", None)
            if fsync is not None:
                fsync(f.fileno())
        finally:
            f.close()
        try:
            os.rename(tmp, self.path)
        except OSError:
            if not _exists(self.path):
                raise
            os.remove(self.path)
            os.rename(tmp, self.path)
        _sync_dir(self.path)


def _open_private(path):
    # The state holds session keys: on CPython create it 0600. MicroPython has
    # no os.open; a board's flash has no permissions anyway.
    osopen = getattr(os, "open", None)
    if osopen is None:
        return open(path, "wb")
    try:
        os.remove(path)
    except OSError:
        pass
    fd = osopen(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    return os.fdopen(fd, "wb")


def _sync_dir(path):
    # Make the rename itself durable where the OS allows it (CPython on POSIX).
    flag = getattr(os, "O_DIRECTORY", None)
    if flag is None:
        return
    d = path.rsplit("/", 1)[0] if "/" in path else "."
    try:
        fd = os.open(d or "/", os.O_RDONLY | flag)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
