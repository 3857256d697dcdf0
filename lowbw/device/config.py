"""The device config file: JSON written by ``lowbw device enroll``.

::

    {"version": 1, "name": "sensor1",
     "proxy": {"host": "127.0.0.1", "port": 5683, "public_key": "<64 hex>"},
     "device_private_key": "<64 hex>",
     "caps": 2, "profile": "compact", "link_bps": 100,
     "room_id": "!abc:example.org", "user_id": "@lowbw_sensor1:example.org",
     "slots": [{"name": "temperature",
                "fields": [{"name": "temperature", "unit": "°C", "scale": 0}]}],
     "client": {"proxy_allowance": 12, "max_rto": 120, "queue_limit": 32}}

The file holds the device's private key, so it should be mode 0600. A slot's
index is its position in ``slots``; a reading for slot i carries one value per
field of ``slots[i]``, in order. ``client`` is optional and tunes the client
(defaults in ``TUNING``):

==================  =========  ===============================================
key                 default    meaning
==================  =========  ===============================================
proxy_allowance     12         seconds the proxy may take to answer, on top of
                               the airtime of request and answer (the proxy's
                               EMPTY_ACK_DELAY is 12 s)
max_rto             120        cap on the retransmission timeout, seconds
queue_limit         32         readings kept while waiting; more drop the oldest
batch_limit         8          readings at most in one request
mtu                 256        largest datagram the link carries, bytes
mid_block           16         message IDs reserved per store write
counter_block       16         frame counters reserved per store write
==================  =========  ===============================================

``load(path)`` and ``from_dict(obj)`` return a ``DeviceConfig`` or raise
ConfigError naming the offending key, e.g. ``proxy.public_key: expected 64
hex digits``. An unknown key is an error too (``device config link_bsp:
unknown key (known: ...)``): a typo must not silently fall back to a default.
A newer enroller that adds keys needs a client that knows them. ``profile``
is the link profile recorded at enrollment: ``compact`` (Noise KK, compact
frames; docs/PROTOCOL.md) or ``standard`` (the default when absent). Keys starting
with ``_`` are comments; ``board`` is the firmware's (firmware/app.py).

Shared with MicroPython.
"""

from lowbw.wire.errors import LowbwError

TUNING = (
    ("proxy_allowance", 12, 0, 3600),
    ("max_rto", 120, 1, 86400),
    ("queue_limit", 32, 1, 4096),
    ("batch_limit", 8, 1, 64),
    ("mtu", 256, 64, 65507),
    ("mid_block", 16, 1, 4096),
    ("counter_block", 16, 1, 256),
)

_HEX = "0123456789abcdefABCDEF"

# Every key a config may hold, per object (anything else is refused: a typo).
# "board" holds the firmware's settings (checked by firmware/app.py); a key
# starting with "_" is a comment (firmware/config.example.json has "_comment").
_TOP_KEYS = ("board", "caps", "client", "device_private_key", "link_bps", "name", "profile", "proxy",
             "room_id", "slots", "user_id", "version")
_PROXY_KEYS = ("host", "port", "public_key")
_SLOT_KEYS = ("fields", "name")
_FIELD_KEYS = ("name", "scale", "unit")


class ConfigError(LowbwError):
    """The device config is missing, unreadable or invalid."""


def _is_int(v):
    return isinstance(v, int) and v is not True and v is not False


def _is_num(v):
    return (_is_int(v) or isinstance(v, float)) and v == v


class DeviceConfig:
    """A validated device config. Attributes:

    ``name``, ``proxy_host``, ``proxy_port``, ``proxy_public_key`` (32 bytes),
    ``private_key`` (32 bytes), ``caps``, ``compact`` (the link profile), ``link_bps``, ``room_id``,
    ``user_id``, ``slots`` (list of ``(name, [(field, unit, scale), ...])``),
    and one attribute per ``TUNING`` key.
    """

    def __init__(self):
        self.name = ""
        self.proxy_host = ""
        self.proxy_port = 0
        self.proxy_public_key = b""
        self.private_key = b""
        self.caps = 2
        self.compact = False
        self.link_bps = 100
        self.room_id = None
        self.user_id = None
        self.slots = []
        for key, default, _lo, _hi in TUNING:
            setattr(self, key, default)

    def field_count(self, slot):
        return len(self.slots[slot][1])

    def __repr__(self):
        # Never print the private key.
        return "<DeviceConfig %s proxy=%s:%d slots=%d>" % (
            self.name, self.proxy_host, self.proxy_port, len(self.slots))


class _Checker:
    def __init__(self, source):
        self.source = source

    def fail(self, key, why):
        where = (self.source + ": ") if self.source else ""
        raise ConfigError("%sdevice config %s: %s" % (where, key, why))

    def only(self, obj, known, path):
        """Fail on the first key of ``obj`` not in ``known`` (sorted, so the message is stable)."""
        for key in sorted(obj):
            if key not in known and not (isinstance(key, str) and key.startswith("_")):
                self.fail(path + str(key), "unknown key (known: %s)" % ", ".join(known))

    def get(self, obj, key, path, required=True):
        if key not in obj:
            if required:
                self.fail(path, "missing")
            return None
        return obj[key]

    def text(self, obj, key, path, required=True):
        v = self.get(obj, key, path, required)
        if v is None and not required:
            return None
        if not isinstance(v, str) or not v:
            self.fail(path, "expected a non-empty string")
        return v

    def key32(self, obj, key, path):
        v = self.get(obj, key, path)
        if not isinstance(v, str) or len(v) != 64:
            self.fail(path, "expected 64 hex digits")
        for c in v:
            if c not in _HEX:
                self.fail(path, "expected 64 hex digits")
        return bytes.fromhex(v)

    def integer(self, obj, key, path, lo, hi, required=True, default=None):
        v = self.get(obj, key, path, required)
        if v is None and not required:
            return default
        if not _is_int(v) or not lo <= v <= hi:
            self.fail(path, "expected an integer in %d..%d" % (lo, hi))
        return v


def from_dict(obj, source=""):
    """Validate a decoded config object; return a DeviceConfig."""
    ck = _Checker(source)
    if not isinstance(obj, dict):
        ck.fail("(top level)", "expected a JSON object")
    cfg = DeviceConfig()
    ck.only(obj, _TOP_KEYS, "")
    version = ck.get(obj, "version", "version")
    if version != 1:
        ck.fail("version", "unsupported version %r (this client reads 1)" % (version,))
    cfg.name = ck.text(obj, "name", "name")
    proxy = ck.get(obj, "proxy", "proxy")
    if not isinstance(proxy, dict):
        ck.fail("proxy", "expected an object")
    ck.only(proxy, _PROXY_KEYS, "proxy.")
    cfg.proxy_host = ck.text(proxy, "host", "proxy.host")
    cfg.proxy_port = ck.integer(proxy, "port", "proxy.port", 1, 65535)
    cfg.proxy_public_key = ck.key32(proxy, "public_key", "proxy.public_key")
    cfg.private_key = ck.key32(obj, "device_private_key", "device_private_key")
    cfg.caps = ck.integer(obj, "caps", "caps", 0, 255, False, 2)
    if obj.get("profile", "standard") != "standard":
        if obj["profile"] != "compact":
            ck.fail("profile", "expected compact or standard")
        cfg.compact = True
    bps = ck.get(obj, "link_bps", "link_bps", False)
    if bps is None:
        bps = 100
    if not _is_num(bps) or bps <= 0:
        ck.fail("link_bps", "expected a positive number of bits per second")
    cfg.link_bps = bps
    cfg.room_id = ck.text(obj, "room_id", "room_id", False)
    cfg.user_id = ck.text(obj, "user_id", "user_id", False)
    slots = ck.get(obj, "slots", "slots")
    if not isinstance(slots, list) or not slots:
        ck.fail("slots", "expected a non-empty list")
    if len(slots) > 256:
        ck.fail("slots", "at most 256 slots")
    for i, slot in enumerate(slots):
        path = "slots[%d]" % i
        if not isinstance(slot, dict):
            ck.fail(path, "expected an object")
        ck.only(slot, _SLOT_KEYS, path + ".")
        sname = ck.text(slot, "name", path + ".name")
        fields = ck.get(slot, "fields", path + ".fields")
        if not isinstance(fields, list) or not fields:
            ck.fail(path + ".fields", "expected a non-empty list")
        if len(fields) > 16:
            ck.fail(path + ".fields", "at most 16 fields")
        out = []
        for j, f in enumerate(fields):
            fpath = "%s.fields[%d]" % (path, j)
            if not isinstance(f, dict):
                ck.fail(fpath, "expected an object")
            ck.only(f, _FIELD_KEYS, fpath + ".")
            fname = ck.text(f, "name", fpath + ".name")
            unit = f.get("unit", "")
            if unit is None:
                unit = ""
            if not isinstance(unit, str):
                ck.fail(fpath + ".unit", "expected a string")
            scale = ck.integer(f, "scale", fpath + ".scale", -30, 30, False, 0)
            out.append((fname, unit, scale))
        cfg.slots.append((sname, out))
    tuning = ck.get(obj, "client", "client", False)
    if tuning is not None:
        if not isinstance(tuning, dict):
            ck.fail("client", "expected an object")
        ck.only(tuning, [t[0] for t in TUNING], "client.")
        for key, default, lo, hi in TUNING:
            v = tuning.get(key, default)
            if not _is_num(v) or not lo <= v <= hi:
                ck.fail("client." + key, "expected a number in %d..%d" % (lo, hi))
            if key != "proxy_allowance" and key != "max_rto" and not _is_int(v):
                ck.fail("client." + key, "expected an integer")
            setattr(cfg, key, v)
    return cfg


def loads(text, source=""):
    """Parse and validate config JSON text."""
    import json

    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise ConfigError("%s: not valid JSON (%s)" % (source or "device config", exc))
    return from_dict(obj, source)


def load(path):
    """Read and validate the config file at ``path``."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError("%s: cannot read device config (%s)" % (path, exc))
    try:
        text = data.decode("utf-8")
    except (UnicodeError, ValueError):
        raise ConfigError("%s: device config is not UTF-8" % path)
    return loads(text, path)
