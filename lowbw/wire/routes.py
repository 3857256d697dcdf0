"""HTTP paths <-> short CoAP Uri-Path segments.

A CoAP request names its resource with Uri-Path options, one per segment,
each carrying text that is NOT percent-encoded (RFC 7252 5.10.1). lowbw puts
one of two shapes there:

- known route: ``[route, param1, param2, ...]``. ``route`` is a route id,
  optionally followed by ``.`` and a version: ``"~"`` is
  /_matrix/client/v3/sync, ``"~.r0"`` is /_matrix/client/r0/sync. The params
  fill the template's ``{...}`` slots in order, decoded (``!r:x``, not
  ``%21r%3Ax``).
- fallback: the path's own segments, decoded: ``["_matrix", "client", "v3",
  "somethingnew"]``. If the first segment would read as a route (see below),
  an empty segment goes in front as an escape: /ab/c is ``["", "ab", "c"]``.

How the first segment is read: the empty string is the escape; otherwise
its part before the first ``.`` is the route id if it is 1 or 2 characters
long (an unknown one is a DecodeError), and anything else (``_matrix``,
``.well-known``) starts a fallback path.

Route ids, all in one namespace so one decoder takes them all:

- ``0``-``9``, ``A``-``Z``, ``a``-``u``: MSC3079 ``coap_path_enums_v1``,
  exactly. Their default version is ``r0`` (``0`` is /_matrix/client/versions,
  which has no version).
- ``v`` ``x`` ``z``: lowbw's device routes /_lowbw/v1/reading, /commands and
  /time. (MSC3079 already uses ``r``, ``c`` and ``t``.) ``w`` and ``y`` are
  reserved for more device routes.
- ``~ ! = - ' , ; + * & @ $``: the busiest client-server v3 endpoints
  (sync, send, state, messages, typing, receipts, read markers, E2EE keys,
  to-device, one event). ``_ : ( )`` are reserved.
- two characters: every other common client-server and media endpoint.

Versions: every route has a default version (v3 for ours, except v1 for
the endpoints that only exist as v1, r0 for MSC3079's), which costs nothing.
Any other version, including an empty one, is spelled out after a dot:
``"~.r0"``, ``"~.unstable"``. The encoder picks the shortest spelling, so an
r0 path whose template MSC3079 has goes out as the MSC3079 enum, and a v3
path as ours.

Segments that are ``.`` or ``..`` (a state key may be one) cannot be
Uri-Path values as they are (RFC 7252 5.10.1), so a parameter or fallback
segment is escaped with one NUL character in front when it is ``.``, ``..``
or itself starts with NUL (so the escape is reversible): ``"."`` goes on the
air as ``"\x00."``. A bare ``.`` or ``..`` Uri-Path value is a DecodeError.
``decode_segments`` percent-encodes ``.`` and ``..`` segments as ``%2E`` and
``%2E%2E``, so no HTTP stack folds them away, and every byte outside RFC 3986
``unreserved`` (``A-Z a-z 0-9 - . _ ~``), as matrix-nio does, so
``!r:x`` becomes ``%21r%3Ax``: a path round-trips exactly when it was written
that way, and otherwise comes back in that normal form. Query strings are
not paths: they belong in Uri-Query options, and ``encode_path`` rejects
``?`` and ``#``.

Shared with MicroPython.
"""

from lowbw.wire.cbor import utf8_valid
from lowbw.wire.errors import DecodeError, EncodeError

ROUTE_READING = "v"
ROUTE_COMMANDS = "x"
ROUTE_TIME = "z"

_C = "/_matrix/client/{v}/"
_M = "/_matrix/media/{v}/"

# (route id, default version or None, template). MSC3079 first: on a tie in
# cost the earlier entry wins.
ROUTES = (
    ("0", None, "/_matrix/client/versions"),
    ("1", "r0", _C + "login"),
    ("2", "r0", _C + "capabilities"),
    ("3", "r0", _C + "logout"),
    ("4", "r0", _C + "register"),
    ("5", "r0", _C + "user/{userId}/filter"),
    ("6", "r0", _C + "user/{userId}/filter/{filterId}"),
    ("7", "r0", _C + "sync"),
    ("8", "r0", _C + "rooms/{roomId}/state/{eventType}/{stateKey}"),
    ("9", "r0", _C + "rooms/{roomId}/send/{eventType}/{txnId}"),
    ("A", "r0", _C + "rooms/{roomId}/event/{eventId}"),
    ("B", "r0", _C + "rooms/{roomId}/state"),
    ("C", "r0", _C + "rooms/{roomId}/members"),
    ("D", "r0", _C + "rooms/{roomId}/joined_members"),
    ("E", "r0", _C + "rooms/{roomId}/messages"),
    ("F", "r0", _C + "rooms/{roomId}/redact/{eventId}/{txnId}"),
    ("G", "r0", _C + "createRoom"),
    ("H", "r0", _C + "directory/room/{roomAlias}"),
    ("I", "r0", _C + "joined_rooms"),
    ("J", "r0", _C + "rooms/{roomId}/invite"),
    ("K", "r0", _C + "rooms/{roomId}/join"),
    ("L", "r0", _C + "join/{roomIdOrAlias}"),
    ("M", "r0", _C + "rooms/{roomId}/leave"),
    ("N", "r0", _C + "rooms/{roomId}/forget"),
    ("O", "r0", _C + "rooms/{roomId}/kick"),
    ("P", "r0", _C + "rooms/{roomId}/ban"),
    ("Q", "r0", _C + "rooms/{roomId}/unban"),
    ("R", "r0", _C + "directory/list/room/{roomId}"),
    ("S", "r0", _C + "publicRooms"),
    ("T", "r0", _C + "user_directory/search"),
    ("U", "r0", _C + "profile/{userId}/displayname"),
    ("V", "r0", _C + "profile/{userId}/avatar_url"),
    ("W", "r0", _C + "profile/{userId}"),
    ("X", "r0", _C + "voip/turnServer"),
    ("Y", "r0", _C + "rooms/{roomId}/typing/{userId}"),
    ("Z", "r0", _C + "rooms/{roomId}/receipt/{receiptType}/{eventId}"),
    ("a", "r0", _C + "rooms/{roomId}/read_markers"),
    ("b", "r0", _C + "presence/{userId}/status"),
    ("c", "r0", _C + "sendToDevice/{eventType}/{txnId}"),
    ("d", "r0", _C + "devices"),
    ("e", "r0", _C + "devices/{deviceId}"),
    ("f", "r0", _C + "delete_devices"),
    ("g", "r0", _C + "keys/upload"),
    ("h", "r0", _C + "keys/query"),
    ("i", "r0", _C + "keys/claim"),
    ("j", "r0", _C + "keys/changes"),
    ("k", "r0", _C + "pushers"),
    ("l", "r0", _C + "pushers/set"),
    ("m", "r0", _C + "notifications"),
    ("n", "r0", _C + "pushrules/"),
    ("o", "r0", _C + "search"),
    ("p", "r0", _C + "user/{userId}/rooms/{roomId}/tags"),
    ("q", "r0", _C + "user/{userId}/rooms/{roomId}/tags/{tag}"),
    ("r", "r0", _C + "user/{userId}/account_data/{type}"),
    ("s", "r0", _C + "user/{userId}/rooms/{roomId}/account_data/{type}"),
    ("t", "r0", _C + "rooms/{roomId}/context/{eventId}"),
    ("u", "r0", _C + "rooms/{roomId}/report/{eventId}"),
    # lowbw device routes
    (ROUTE_READING, "v1", "/_lowbw/{v}/reading"),
    (ROUTE_COMMANDS, "v1", "/_lowbw/{v}/commands"),
    (ROUTE_TIME, "v1", "/_lowbw/{v}/time"),
    # the busiest v3 endpoints: one byte
    ("~", "v3", _C + "sync"),
    ("!", "v3", _C + "rooms/{roomId}/send/{eventType}/{txnId}"),
    ("=", "v3", _C + "rooms/{roomId}/state/{eventType}/{stateKey}"),
    ("-", "v3", _C + "rooms/{roomId}/messages"),
    ("'", "v3", _C + "rooms/{roomId}/typing/{userId}"),
    (",", "v3", _C + "rooms/{roomId}/receipt/{receiptType}/{eventId}"),
    (";", "v3", _C + "rooms/{roomId}/read_markers"),
    ("+", "v3", _C + "keys/upload"),
    ("*", "v3", _C + "keys/query"),
    ("&", "v3", _C + "keys/claim"),
    ("@", "v3", _C + "sendToDevice/{eventType}/{txnId}"),
    ("$", "v3", _C + "rooms/{roomId}/event/{eventId}"),
    # the rest of MSC3079's list, as v3
    ("li", "v3", _C + "login"),
    ("ca", "v3", _C + "capabilities"),
    ("lo", "v3", _C + "logout"),
    ("rg", "v3", _C + "register"),
    ("fi", "v3", _C + "user/{userId}/filter"),
    ("fg", "v3", _C + "user/{userId}/filter/{filterId}"),
    ("st", "v3", _C + "rooms/{roomId}/state"),
    ("me", "v3", _C + "rooms/{roomId}/members"),
    ("jm", "v3", _C + "rooms/{roomId}/joined_members"),
    ("rd", "v3", _C + "rooms/{roomId}/redact/{eventId}/{txnId}"),
    ("cr", "v3", _C + "createRoom"),
    ("da", "v3", _C + "directory/room/{roomAlias}"),
    ("jr", "v3", _C + "joined_rooms"),
    ("in", "v3", _C + "rooms/{roomId}/invite"),
    ("jo", "v3", _C + "rooms/{roomId}/join"),
    ("ja", "v3", _C + "join/{roomIdOrAlias}"),
    ("le", "v3", _C + "rooms/{roomId}/leave"),
    ("fo", "v3", _C + "rooms/{roomId}/forget"),
    ("ki", "v3", _C + "rooms/{roomId}/kick"),
    ("ba", "v3", _C + "rooms/{roomId}/ban"),
    ("ub", "v3", _C + "rooms/{roomId}/unban"),
    ("dl", "v3", _C + "directory/list/room/{roomId}"),
    ("pb", "v3", _C + "publicRooms"),
    ("us", "v3", _C + "user_directory/search"),
    ("pd", "v3", _C + "profile/{userId}/displayname"),
    ("pa", "v3", _C + "profile/{userId}/avatar_url"),
    ("pf", "v3", _C + "profile/{userId}"),
    ("ts", "v3", _C + "voip/turnServer"),
    ("ps", "v3", _C + "presence/{userId}/status"),
    ("dv", "v3", _C + "devices"),
    ("de", "v3", _C + "devices/{deviceId}"),
    ("dd", "v3", _C + "delete_devices"),
    ("kc", "v3", _C + "keys/changes"),
    ("pu", "v3", _C + "pushers"),
    ("pe", "v3", _C + "pushers/set"),
    ("no", "v3", _C + "notifications"),
    ("pr", "v3", _C + "pushrules/"),
    ("se", "v3", _C + "search"),
    ("tg", "v3", _C + "user/{userId}/rooms/{roomId}/tags"),
    ("ta", "v3", _C + "user/{userId}/rooms/{roomId}/tags/{tag}"),
    ("ad", "v3", _C + "user/{userId}/account_data/{type}"),
    ("ra", "v3", _C + "user/{userId}/rooms/{roomId}/account_data/{type}"),
    ("cx", "v3", _C + "rooms/{roomId}/context/{eventId}"),
    ("rp", "v3", _C + "rooms/{roomId}/report/{eventId}"),
    # v3 endpoints MSC3079 lacks
    ("wh", "v3", _C + "account/whoami"),
    ("pw", "v3", _C + "account/password"),
    ("dc", "v3", _C + "account/deactivate"),
    ("av", "v3", _C + "register/available"),
    ("rf", "v3", _C + "refresh"),
    ("sn", "v3", _C + "rooms/{roomId}/state/{eventType}"),
    ("up", "v3", _C + "rooms/{roomId}/upgrade"),
    ("al", "v3", _C + "rooms/{roomId}/aliases"),
    ("kn", "v3", _C + "knock/{roomIdOrAlias}"),
    ("ks", "v3", _C + "keys/signatures/upload"),
    ("kd", "v3", _C + "keys/device_signing/upload"),
    ("kv", "v3", _C + "room_keys/version"),
    ("ky", "v3", _C + "room_keys/version/{version}"),
    ("kk", "v3", _C + "room_keys/keys"),
    ("kr", "v3", _C + "room_keys/keys/{roomId}"),
    ("ke", "v3", _C + "room_keys/keys/{roomId}/{sessionId}"),
    ("pn", "v3", _C + "pushrules/{scope}/{kind}/{ruleId}"),
    ("pq", "v3", _C + "pushrules/{scope}/{kind}/{ruleId}/enabled"),
    ("px", "v3", _C + "pushrules/{scope}/{kind}/{ruleId}/actions"),
    ("oi", "v3", _C + "user/{userId}/openid/request_token"),
    ("tp", "v3", _C + "thirdparty/protocols"),
    # v1-only client endpoints
    ("rl", "v1", _C + "rooms/{roomId}/relations/{eventId}"),
    ("rt", "v1", _C + "rooms/{roomId}/relations/{eventId}/{relType}"),
    ("re", "v1", _C + "rooms/{roomId}/relations/{eventId}/{relType}/{eventType}"),
    ("th", "v1", _C + "rooms/{roomId}/threads"),
    ("hi", "v1", _C + "rooms/{roomId}/hierarchy"),
    ("te", "v1", _C + "rooms/{roomId}/timestamp_to_event"),
    ("gt", "v1", _C + "login/get_token"),
    # media: authenticated (client v1) and legacy (media v3)
    ("mc", "v1", _C + "media/config"),
    ("md", "v1", _C + "media/download/{serverName}/{mediaId}"),
    ("mf", "v1", _C + "media/download/{serverName}/{mediaId}/{fileName}"),
    ("mt", "v1", _C + "media/thumbnail/{serverName}/{mediaId}"),
    ("mp", "v1", _C + "media/preview_url"),
    ("Mc", "v3", _M + "config"),
    ("Mu", "v3", _M + "upload"),
    ("Md", "v3", _M + "download/{serverName}/{mediaId}"),
    ("Mf", "v3", _M + "download/{serverName}/{mediaId}/{fileName}"),
    ("Mt", "v3", _M + "thumbnail/{serverName}/{mediaId}"),
    ("Mp", "v3", _M + "preview_url"),
    ("Mn", "v1", _M + "create"),
    # discovery
    ("wk", None, "/.well-known/matrix/client"),
)

_PARAM = 0
_VERSION = 1
_UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
_HEX = "0123456789ABCDEF"


def _parse_template(template):
    parts = []
    for seg in template[1:].split("/"):
        if seg == "{v}":
            parts.append(_VERSION)
        elif seg.startswith("{"):
            parts.append(_PARAM)
        else:
            parts.append(seg)
    return tuple(parts)


def _build_index():
    by_id = {}  # type: dict
    by_len = {}  # type: dict
    for rid, default, template in ROUTES:
        if rid in by_id:
            raise ValueError("duplicate route id %r" % rid)
        parts = _parse_template(template)
        nparams = 0
        for p in parts:
            if p == _PARAM:
                nparams += 1
        entry = (rid, default, parts, nparams)
        by_id[rid] = entry
        n = len(parts)
        if n not in by_len:
            by_len[n] = []
        by_len[n].append(entry)
    return by_id, by_len


_BY_ID, _BY_LEN = _build_index()

_safe = bytearray(128)
for _c in _UNRESERVED:
    _safe[_c] = 1


_ESC = "\x00"


def _esc(s):
    if s == "." or s == ".." or s.startswith(_ESC):
        return _ESC + s
    return s


def _unesc(s):
    return s[1:] if s.startswith(_ESC) else s


def _quote(s):
    if s == ".":
        return "%2E"
    if s == "..":
        return "%2E%2E"
    out = []
    for c in s.encode("utf-8"):
        if c < 128 and _safe[c]:
            out.append(chr(c))
        else:
            out.append("%" + _HEX[c >> 4] + _HEX[c & 15])
    return "".join(out)


def _hexval(ch):
    o = ord(ch)
    if 48 <= o <= 57:
        return o - 48
    o |= 0x20
    if 97 <= o <= 102:
        return o - 87
    raise EncodeError("bad percent-escape in path")


def _unquote(s):
    if "%" not in s:
        return s
    b = bytearray()
    i = 0
    n = len(s)
    while i < n:
        ch = s[i]
        if ch == "%":
            if i + 2 >= n:
                raise EncodeError("truncated percent-escape in path")
            b.append(_hexval(s[i + 1]) * 16 + _hexval(s[i + 2]))
            i += 3
        else:
            b.extend(ch.encode("utf-8"))
            i += 1
    if not utf8_valid(b):
        raise EncodeError("percent-escapes in path are not UTF-8")
    return bytes(b).decode("utf-8")


def _first_kind(seg):
    """0: the fallback escape, 1: a route id, 2: the start of a fallback path."""
    if seg == "":
        return 0
    dot = seg.find(".")
    n = len(seg) if dot < 0 else dot
    return 1 if 1 <= n <= 2 else 2


def _match(parts, segs):
    version = None
    params = []
    for i in range(len(parts)):
        p = parts[i]
        s = segs[i]
        if p == _PARAM:
            params.append(s)
        elif p == _VERSION:
            version = s
        elif p != s:
            return None
    return version, params


def encode_path(path):
    """Uri-Path segments for an HTTP path (which may be percent-encoded)."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise EncodeError("path must be a string starting with '/'")
    if "?" in path or "#" in path:
        raise EncodeError("query and fragment do not belong in a path")
    if path == "/":
        return []
    segs = [_unquote(s) for s in path[1:].split("/")]
    best = None
    best_cost = 0
    for rid, default, parts, _ in _BY_LEN.get(len(segs), ()):
        m = _match(parts, segs)
        if m is None:
            continue
        version, params = m
        if version == "." or version == "..":
            continue
        head = rid if version == default else rid + "." + version
        if best is None or len(head) < best_cost:
            best = [head] + [_esc(p) for p in params]
            best_cost = len(head)
    if best is not None:
        return best
    segs = [_esc(s) for s in segs]
    if _first_kind(segs[0]) != 2:
        return [""] + segs
    return segs


def parse_segments(segments):
    """(route id or None, version or None, params) for Uri-Path segments.

    For a known route, params are the template's parameters; for a fallback
    path (route id None) they are the path's segments.
    """
    if not isinstance(segments, (list, tuple)):
        raise DecodeError("Uri-Path segments must be a list")
    for s in segments:
        if not isinstance(s, str):
            raise DecodeError("Uri-Path segments must be text")
        if s == "." or s == "..":
            raise DecodeError("'.' and '..' are not valid Uri-Path values")
    if not segments:
        return None, None, []
    first = segments[0]
    kind = _first_kind(first)
    if kind == 0:
        return None, None, [_unesc(s) for s in segments[1:]]
    if kind == 2:
        return None, None, [_unesc(s) for s in segments]
    dot = first.find(".")
    rid = first if dot < 0 else first[:dot]
    entry = _BY_ID.get(rid)
    if entry is None:
        raise DecodeError("unknown route id %r" % rid)
    _, default, parts, nparams = entry
    if dot < 0:
        version = default
    elif default is None:
        raise DecodeError("route %r has no version" % rid)
    else:
        version = first[dot + 1 :]
    params = [_unesc(s) for s in segments[1:]]
    if len(params) != nparams:
        raise DecodeError("route %r takes %d parameters, got %d" % (rid, nparams, len(params)))
    return rid, version, params


def decode_segments(segments):
    """The HTTP path (percent-encoded) for Uri-Path segments."""
    rid, version, params = parse_segments(segments)
    if rid is None:
        return "/" + "/".join([_quote(s) for s in params])
    parts = _BY_ID[rid][2]
    out = []
    i = 0
    for p in parts:
        if p == _PARAM:
            out.append(_quote(params[i]))
            i += 1
        elif p == _VERSION:
            out.append(_quote(version))
        else:
            out.append(p)
    return "/" + "/".join(out)
