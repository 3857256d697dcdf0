"""Route table: Matrix paths <-> Uri-Path segments (CPython and MicroPython)."""

# portable: full tree
import json

from lowbw.wire import routes
from lowbw.wire.errors import DecodeError, EncodeError
from tests.portable.check import raises

SAMPLE = {
    "userId": ("@alice:example.org", "%40alice%3Aexample.org"),
    "roomId": ("!cuyZ:example.org", "%21cuyZ%3Aexample.org"),
    "roomAlias": ("#lab:example.org", "%23lab%3Aexample.org"),
    "roomIdOrAlias": ("#lab:example.org", "%23lab%3Aexample.org"),
    "eventId": ("$a/b+c", "%24a%2Fb%2Bc"),
    "eventType": ("m.room.message", "m.room.message"),
    "stateKey": ("", ""),
    "txnId": ("dev7.42", "dev7.42"),
    "filterId": ("12", "12"),
    "receiptType": ("m.read", "m.read"),
    "deviceId": ("ABCDEF", "ABCDEF"),
    "tag": ("u.caf\u00e9", "u.caf%C3%A9"),
    "type": ("m.direct", "m.direct"),
}


def reference_enums():
    here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
    with open(here + "/../data/msc3079-v1.json") as f:
        return json.load(f)["coap_path_enums_v1"]


def fill(template):
    """(encoded path, decoded params) for a template with {name} slots."""
    out = []
    params = []
    for seg in template.split("/"):
        if seg.startswith("{"):
            raw, enc = SAMPLE[seg[1:-1]]
            out.append(enc)
            params.append(raw)
        else:
            out.append(seg)
    return "/".join(out), params


def option_bytes(segments):
    """Bytes of the Uri-Path options (RFC 7252 3.1: 1-byte header under 13 bytes)."""
    total = 0
    for s in segments:
        n = len(s.encode())
        total += n + (1 if n < 13 else 2 if n < 269 else 3)
    return total


def test_msc3079_enums_decode_exactly():
    enums = reference_enums()
    assert len(enums) == 57
    for e in enums:
        path, params = fill(e["path"])
        assert routes.decode_segments([e["enum"]] + params) == path, e
        # r0 paths cost nothing as their MSC3079 enum, so the encoder picks it.
        assert routes.encode_path(path) == [e["enum"]] + params, e


def test_route_ids_do_not_collide():
    enums = [e["enum"] for e in reference_enums()]
    ids = [r[0] for r in routes.ROUTES]
    assert len(set(ids)) == len(ids)
    for rid in ids:
        assert 1 <= len(rid) <= 2 and "." not in rid and "/" not in rid, rid
    ours = ids[len(enums) :]
    assert ids[: len(enums)] == enums
    for rid in ours:
        assert rid not in enums, rid
    for rid in (routes.ROUTE_READING, routes.ROUTE_COMMANDS, routes.ROUTE_TIME):
        assert len(rid) == 1 and rid not in enums


def test_lowbw_routes():
    assert routes.encode_path("/_lowbw/v1/reading") == [routes.ROUTE_READING]
    assert routes.encode_path("/_lowbw/v1/commands") == [routes.ROUTE_COMMANDS]
    assert routes.encode_path("/_lowbw/v1/time") == [routes.ROUTE_TIME]
    assert routes.decode_segments([routes.ROUTE_READING]) == "/_lowbw/v1/reading"
    assert routes.decode_segments([routes.ROUTE_TIME + ".v2"]) == "/_lowbw/v2/time"
    assert routes.parse_segments([routes.ROUTE_COMMANDS]) == (routes.ROUTE_COMMANDS, "v1", [])


def test_v3_is_free_and_other_versions_round_trip():
    assert routes.encode_path("/_matrix/client/v3/sync") == ["~"]
    assert routes.encode_path("/_matrix/client/r0/sync") == ["7"]
    for version in ("v1", "v4", "unstable", "", "r0", "v3"):
        path = "/_matrix/client/%s/sync" % version
        segs = routes.encode_path(path)
        assert len(segs) == 1 and routes.decode_segments(segs) == path, (version, segs)
    assert routes.encode_path("/_matrix/client/unstable/sync") == ["7.unstable"]
    assert routes.decode_segments(["~.r0"]) == "/_matrix/client/r0/sync"
    assert routes.decode_segments(["9.v3", "!r:x", "m.t", "1"]) == (
        "/_matrix/client/v3/rooms/%21r%3Ax/send/m.t/1"
    )
    # v1-only endpoints default to v1.
    assert routes.encode_path("/_matrix/client/v1/media/config") == ["mc"]
    assert routes.encode_path("/_matrix/client/v3/media/config") == ["mc.v3"]
    assert routes.encode_path("/_matrix/media/v3/config") == ["Mc"]


def test_common_v3_endpoints():
    cases = [
        (
            "/_matrix/client/v3/rooms/%21cuyZ%3Aexample.org/send/m.room.message/dev7.42",
            ["!", "!cuyZ:example.org", "m.room.message", "dev7.42"],
        ),
        (
            "/_matrix/client/v3/rooms/%21cuyZ%3Aexample.org/state/m.room.name/",
            ["=", "!cuyZ:example.org", "m.room.name", ""],
        ),
        (
            "/_matrix/client/v3/rooms/%21cuyZ%3Aexample.org/state/m.room.name",
            ["sn", "!cuyZ:example.org", "m.room.name"],
        ),
        ("/_matrix/client/v3/rooms/%21cuyZ%3Aexample.org/messages", ["-", "!cuyZ:example.org"]),
        ("/_matrix/client/v3/createRoom", ["cr"]),
        ("/_matrix/client/v3/join/%23lab%3Aexample.org", ["ja", "#lab:example.org"]),
        ("/_matrix/client/v3/rooms/%21r%3Ax/invite", ["in", "!r:x"]),
        ("/_matrix/client/v3/rooms/%21r%3Ax/leave", ["le", "!r:x"]),
        ("/_matrix/client/v3/login", ["li"]),
        ("/_matrix/client/v3/logout", ["lo"]),
        ("/_matrix/client/v3/register", ["rg"]),
        ("/_matrix/client/v3/joined_rooms", ["jr"]),
        ("/_matrix/client/v3/rooms/%21r%3Ax/members", ["me", "!r:x"]),
        ("/_matrix/client/v3/profile/%40a%3Ab", ["pf", "@a:b"]),
        ("/_matrix/client/v3/profile/%40a%3Ab/displayname", ["pd", "@a:b"]),
        ("/_matrix/client/v3/user/%40a%3Ab/filter", ["fi", "@a:b"]),
        ("/_matrix/client/v3/user/%40a%3Ab/filter/7", ["fg", "@a:b", "7"]),
        ("/_matrix/client/v3/rooms/%21r%3Ax/typing/%40a%3Ab", ["'", "!r:x", "@a:b"]),
        ("/_matrix/client/v3/rooms/%21r%3Ax/receipt/m.read/%24e", [",", "!r:x", "m.read", "$e"]),
        ("/_matrix/client/v3/rooms/%21r%3Ax/read_markers", [";", "!r:x"]),
        ("/_matrix/client/v3/rooms/%21r%3Ax/redact/%24e/t1", ["rd", "!r:x", "$e", "t1"]),
        ("/_matrix/client/v3/user/%40a%3Ab/account_data/m.direct", ["ad", "@a:b", "m.direct"]),
        ("/_matrix/client/v3/account/whoami", ["wh"]),
        ("/_matrix/client/versions", ["0"]),
        ("/_matrix/client/v3/capabilities", ["ca"]),
        ("/_matrix/client/v3/keys/upload", ["+"]),
        ("/_matrix/client/v3/keys/query", ["*"]),
        ("/_matrix/client/v3/keys/claim", ["&"]),
        ("/_matrix/client/v3/sendToDevice/m.room.encrypted/t9", ["@", "m.room.encrypted", "t9"]),
        ("/_matrix/client/v3/pushrules/", ["pr"]),
        ("/_matrix/client/v3/presence/%40a%3Ab/status", ["ps", "@a:b"]),
        ("/_matrix/media/v3/config", ["Mc"]),
        ("/_matrix/client/v1/media/config", ["mc"]),
        ("/.well-known/matrix/client", ["wk"]),
    ]
    for path, segs in cases:
        assert routes.encode_path(path) == segs, path
        assert routes.decode_segments(segs) == path, segs
        assert option_bytes(segs) < option_bytes(path[1:].split("/")), path


def test_unescaped_input_comes_back_escaped():
    got = routes.encode_path("/_matrix/client/v3/rooms/!r:x/send/m.room.message/1")
    assert got == ["!", "!r:x", "m.room.message", "1"]
    assert routes.decode_segments(got) == "/_matrix/client/v3/rooms/%21r%3Ax/send/m.room.message/1"
    # lower-case hex and non-ASCII text are normalised too
    assert routes.encode_path("/_matrix/client/v3/profile/%40a%3ab") == ["pf", "@a:b"]
    assert routes.encode_path("/a\u00e9b") == ["a\u00e9b"]
    assert routes.decode_segments(["a\u00e9b"]) == "/a%C3%A9b"
    assert routes.decode_segments(["", "x y", "+&=?#%"]) == "/x%20y/%2B%26%3D%3F%23%25"


def test_fallback():
    assert routes.encode_path("/_matrix/client/v3/somethingnew") == [
        "_matrix",
        "client",
        "v3",
        "somethingnew",
    ]
    assert (
        routes.decode_segments(["_matrix", "client", "v3", "somethingnew"])
        == "/_matrix/client/v3/somethingnew"
    )
    # a first segment that reads as a route id gets the empty escape in front
    for path in ("/ab/c", "/v", "/x.y", "//x", "/9/x", "/ab.cdef"):
        segs = routes.encode_path(path)
        assert segs[0] == "", path
        assert routes.decode_segments(segs) == path
    assert routes.encode_path("/abc/d") == ["abc", "d"]
    assert routes.encode_path("/.hidden") == [".hidden"]
    assert routes.encode_path("/") == []
    assert routes.decode_segments([]) == "/"
    assert routes.encode_path("/_matrix/client/v3/sync/") == ["_matrix", "client", "v3", "sync", ""]
    # a peer may spell a known route out in full; it decodes to the same path
    assert routes.decode_segments(["_matrix", "client", "v3", "sync"]) == "/_matrix/client/v3/sync"
    assert routes.parse_segments(["", "ab"]) == (None, None, ["ab"])


def test_decode_errors():
    bad = [
        ["q9"],  # unknown two-character id
        ["ZZ"],
        ["w"],  # reserved, not assigned
        ["("],
        ["\u00e9"],
        ["ab.v3"],
        ["~", "extra"],  # wrong parameter count
        ["!", "!r:x"],
        ["0.v3"],  # versions has no version slot
        ["wk.v1"],
        ["~", 5],
        [b"~"],
        ["_matrix", ".."],
        ["", "."],
        ["!", "!r:x", ".", "t"],
    ]
    for segs in bad:
        raises(DecodeError, routes.decode_segments, segs)
    raises(DecodeError, routes.decode_segments, "~")
    raises(DecodeError, routes.decode_segments, None)


def test_encode_errors():
    bad = [
        "",
        "sync",
        "/_matrix/client/v3/sync?since=1",
        "/a#b",
        "/a/%zz",
        "/a/%4",
        "/a/%",
        "/a/%ff",  # not UTF-8
        "/a/%ed%a0%80",  # a surrogate
    ]
    for path in bad:
        raises(EncodeError, routes.encode_path, path)
    raises(EncodeError, routes.encode_path, b"/x")
    raises(EncodeError, routes.encode_path, None)


def test_dot_segments_ride_escaped():
    # A state key of "." or "..": carried with one NUL in front, never as a bare
    # Uri-Path value (RFC 7252 5.10.1), and back as %2E / %2E%2E.
    for key, wire in ((".", "\x00."), ("..", "\x00.."), ("\x00x", "\x00\x00x"), ("a.b", "a.b")):
        quoted = {".": "%2E", "..": "%2E%2E", "\x00x": "%00x", "a.b": "a.b"}[key]
        path = "/_matrix/client/v3/rooms/%21r%3Ax/state/m.t/" + quoted
        segs = routes.encode_path(path)
        assert segs[1:] == ["!r:x", "m.t", wire], segs
        assert routes.decode_segments(segs) == path
    for path in ("/a/./b", "/a/%2E%2E", "/.."):
        segs = routes.encode_path(path)
        assert "." not in segs and ".." not in segs
        assert routes.decode_segments(segs) == path.replace("/./", "/%2E/").replace("/..", "/%2E%2E")
