#!/usr/bin/env python3
"""Build the preset DEFLATE dictionary for Matrix bodies on the link (lowbw/compact/dict_v1.bin).

A body crosses the link as JSON -> integer keys (``lowbw.wire.keys.compress``,
table 2) -> CBOR (``lowbw.wire.cbor.dumps``) -> raw DEFLATE primed with a
preset dictionary when the session agreed one in the handshake. The bytes
that repeat from session to session (Synapse's default push rules, most of
an initial /sync; the /sync skeleton; the shapes of common events and of a
room's initial state) are what a dictionary can hold; ids, tokens and
timestamps are random and are not worth a byte of it.

So this script runs a chat session a stock client would have against a real
Synapse (``lowbw.testing.synapse.SynapseServer``, server name
``example.org`` so the dictionary does not learn the test server's name):
/versions, login, capabilities, whoami, push rules, filter upload and
download, display names and profiles, room creation (private, public, direct),
invite and join, messages (plain, formatted, emote, notice, reply, edit,
reaction, redaction), typing, receipts, read markers, topic and name changes,
initial syncs (default, and with a timeline-limit-1 filter), incremental
syncs (empty and with events), /messages pages, room state, joined rooms,
and a sensor room with readings as the lowbw proxy renders them
(``lowbw.proxy.sensor``). Every request and response body is recorded (``Body``).

Building (``build_dictionary``):

1. every body is turned into a skeleton of its wire form (integer keys,
   CBOR) in which random values keep only what repeats: an event, room or
   user id its sigil, a stream token its first letter, a password or device
   id nothing but its CBOR head, a millisecond clock its head and top bytes
   (``typical_prefix``, ``skeleton_cbor``). DEFLATE matches up to the random
   part, copies it as literals and matches again after it, from anywhere, so
   a placeholder of the right length would only waste dictionary bytes;
2. candidate pieces are the skeletons of the bodies and of every object and
   array inside them (events, the push-rule set, /sync sections), each
   distinct piece once (``pieces``);
3. pieces are taken greedily by how many link bytes they save across the
   whole capture (each real body DEFLATEd or not, whichever is shorter,
   ``link_cost``) per byte of dictionary they take, while that is at least
   ``MIN_GAIN_PER_BYTE`` and the dictionary stays within 32 KiB (the DEFLATE
   window);
4. the chosen pieces are laid out least useful first: DEFLATE reaches the
   end of the dictionary with the shortest distances, and a long body slides
   the start of the dictionary out of its window first.

The build is deterministic for a given capture (and zlib version). Two live
captures differ (Synapse orders rooms and state events differently each time,
clocks differ, and DEFLATE's sizes on the real random ids with them), so a
dictionary is reproduced from its saved capture: ``--corpus-out FILE`` saves
one (JSON), ``--corpus-in FILE`` builds from it without starting Synapse.

The committed ``lowbw/compact/dict_v1.bin`` is frozen: both ends of a link
that agreed dictionary v1 must hold the same bytes, forever; its SHA-256 is
pinned in ``lowbw/compact/dictionary.py``. This script refuses to overwrite
any existing file without ``--force``; write a candidate elsewhere with
``--out`` and measure it with ``bench/body_compression.py --dict FILE``.
``--json-text`` builds a dictionary for compact JSON text instead (the bench
does, for comparison).

Usage: python scripts/build_dictionary.py [--out FILE] [--force] [--corpus-out FILE]
       [--corpus-in FILE] [--server-name NAME] [--size N] [--json-text]

``MatrixClient`` and ``Body`` are also used by bench/body_compression.py.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))

from lowbw.proxy import sensor  # noqa: E402
from lowbw.wire import cbor, keys  # noqa: E402

DICT_V1_PATH = ROOT / "lowbw" / "compact" / "dict_v1.bin"
TRAINING_SERVER_NAME = "example.org"
DEFLATE_WINDOW = 32768
PREFIX = "/_matrix/client/v3"


# ---- capture ---------------------------------------------------------------


@dataclass(frozen=True)
class Body:
    """One JSON body seen on the client API: ``kind`` names the exchange, ``.req`` marks a request."""

    kind: str
    obj: Any


class MatrixClient:
    """The smallest JSON-over-HTTP Matrix client that records every body it sends and receives."""

    def __init__(self, base_url: str, record: list[Body], access_token: str | None = None) -> None:
        self.base_url = base_url
        self.record = record
        self.access_token = access_token
        self.user_id = ""
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._txn = 0

    def call(
        self,
        kind: str,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, str] | None = None,
        record: bool = True,
    ) -> Any:
        """``method path`` with ``body`` as JSON; the decoded answer. Both bodies go into ``record``."""
        url = self.base_url + (path if path.startswith("/_matrix") else PREFIX + path)
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = json.dumps(body).encode("utf-8") if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.access_token is not None:
            req.add_header("Authorization", "Bearer " + self.access_token)
        try:
            with self._opener.open(req, timeout=60) as resp:
                answer = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")[:500]
            raise RuntimeError("%s %s -> HTTP %d: %s" % (method, path, exc.code, detail)) from None
        if record:
            if body is not None:
                self.record.append(Body(kind + ".req", body))
            self.record.append(Body(kind, answer))
        return answer

    # -- the calls a chat client makes -------------------------------------

    def login(self, localpart: str, password: str, device_name: str) -> dict[str, Any]:
        answer = self.call(
            "login",
            "POST",
            "/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": localpart},
                "password": password,
                "initial_device_display_name": device_name,
            },
        )
        self.access_token = answer["access_token"]
        self.user_id = answer["user_id"]
        return dict(answer)

    def sync(
        self, kind: str, since: str | None = None, filter_: str | None = None, timeout_ms: int = 0
    ) -> Any:
        query = {"timeout": str(timeout_ms)}
        if since is not None:
            query["since"] = since
        if filter_ is not None:
            query["filter"] = filter_
        return self.call(kind, "GET", "/sync", query=query)

    def send(self, room_id: str, content: dict[str, Any], event_type: str = "m.room.message") -> str:
        self._txn += 1
        path = "/rooms/%s/send/%s/%d" % (_q(room_id), _q(event_type), self._txn)
        return str(self.call("send", "PUT", path, content)["event_id"])

    def messages(self, room_id: str, limit: int = 10, from_: str | None = None) -> Any:
        query = {"dir": "b", "limit": str(limit)}
        if from_ is not None:
            query["from"] = from_
        return self.call("messages", "GET", "/rooms/%s/messages" % _q(room_id), query=query)


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")


LIMIT_1_FILTER = {"room": {"timeline": {"limit": 1}, "state": {"lazy_load_members": True}}}

TRAINING_MESSAGES = (
    "Good morning! Is the meeting still on for ten?",
    "Yes, see you there.",
    "Could you bring the latest figures?",
    "Sure, I'll print them out.",
    "The link is slow today, messages take a while.",
    "ok",
)


SENSOR_SLOTS = [{"name": "climate", "fields": [{"name": "temperature", "unit": "°C", "scale": 1},
                                               {"name": "humidity", "unit": "%", "scale": 0}]}]
SENSOR_READINGS = ((215, 40), (213, 41), (-5, 87))


def capture_training_session(base_url: str, users: tuple[tuple[str, str], tuple[str, str]]) -> list[Body]:
    """A two-user chat session a stock client would have; every body it sees, in order.

    ``users`` are two registered (localpart, password) pairs.
    """
    record: list[Body] = []
    alice = MatrixClient(base_url, record)
    bob = MatrixClient(base_url, record)
    alice.call("versions", "GET", "/_matrix/client/versions")
    alice.call("login_flows", "GET", "/login")
    alice.login(users[0][0], users[0][1], "Element Desktop: Linux")
    bob.login(users[1][0], users[1][1], "lowbw client-proxy")
    for client in (alice, bob):
        client.call("capabilities", "GET", "/capabilities")
        client.call("whoami", "GET", "/account/whoami")
        client.call("pushrules", "GET", "/pushrules/")
    filter_path = "/user/%s/filter" % _q(alice.user_id)
    filter_id = alice.call("filter", "POST", filter_path, LIMIT_1_FILTER)["filter_id"]
    alice.call("filter_get", "GET", "/user/%s/filter/%s" % (_q(alice.user_id), _q(filter_id)))
    alice.call("displayname", "PUT", "/profile/%s/displayname" % _q(alice.user_id), {"displayname": "Alice"})
    bob.call("displayname", "PUT", "/profile/%s/displayname" % _q(bob.user_id), {"displayname": "Bob"})
    alice.call("profile", "GET", "/profile/%s" % _q(bob.user_id))

    first = alice.sync("sync_initial")
    room = alice.call(
        "create_room",
        "POST",
        "/createRoom",
        {"name": "Planning", "topic": "Weekly planning", "preset": "private_chat", "invite": [bob.user_id]},
    )["room_id"]
    public = alice.call(
        "create_room",
        "POST",
        "/createRoom",
        {"name": "Lobby", "preset": "public_chat", "room_alias_name": "lobby", "visibility": "public"},
    )["room_id"]
    direct = bob.call(
        "create_room",
        "POST",
        "/createRoom",
        {"preset": "trusted_private_chat", "is_direct": True, "invite": [alice.user_id]},
    )["room_id"]
    bob.sync("sync_initial")  # an invite, with its stripped state
    bob.call("join", "POST", "/join/%s" % _q(room), {})
    bob.call("join", "POST", "/rooms/%s/join" % _q(public), {})
    alice.call("join", "POST", "/rooms/%s/join" % _q(direct), {})
    alice.call("state_send", "PUT", "/rooms/%s/state/m.room.topic/" % _q(room),
               {"topic": "Weekly planning, Tuesdays"})

    since_a = alice.sync("sync_incremental", since=first["next_batch"])["next_batch"]
    last = ""
    for i, text in enumerate(TRAINING_MESSAGES):
        sender, room_id = (alice, room) if i % 2 == 0 else (bob, room)
        last = sender.send(room_id, {"msgtype": "m.text", "body": text})
    alice.send(room, {"msgtype": "m.text", "body": "**bold** move", "format": "org.matrix.custom.html",
                      "formatted_body": "<strong>bold</strong> move"})
    bob.send(room, {"msgtype": "m.emote", "body": "waves"})
    alice.send(room, {"msgtype": "m.notice", "body": "Reminder: meeting at 10:00"})
    reply = bob.send(room, {"msgtype": "m.text", "body": "> <%s> ok\n\nthanks" % alice.user_id,
                            "m.relates_to": {"m.in_reply_to": {"event_id": last}}})
    alice.send(room, {"msgtype": "m.text", "body": " * thanks!",
                      "m.new_content": {"msgtype": "m.text", "body": "thanks!"},
                      "m.relates_to": {"rel_type": "m.replace", "event_id": reply}})
    alice.send(room, {"m.relates_to": {"rel_type": "m.annotation", "event_id": reply, "key": "👍"}},
               "m.reaction")
    oops = bob.send(public, {"msgtype": "m.text", "body": "hello lobby"})
    bob.call("redact", "PUT", "/rooms/%s/redact/%s/r1" % (_q(public), _q(oops)), {"reason": "wrong room"})
    bob.send(direct, {"msgtype": "m.text", "body": "psst"})
    typing_path = "/rooms/%s/typing/%s" % (_q(room), _q(bob.user_id))
    bob.call("typing", "PUT", typing_path, {"typing": True, "timeout": 30000})
    alice.call("receipt", "POST", "/rooms/%s/receipt/m.read/%s" % (_q(room), _q(reply)), {})
    alice.call("read_markers", "POST", "/rooms/%s/read_markers" % _q(room),
               {"m.fully_read": reply, "m.read": reply})

    since_a = alice.sync("sync_incremental", since=since_a)["next_batch"]
    alice.sync("sync_incremental", since=since_a)  # nothing new
    bob.call("typing", "PUT", typing_path, {"typing": False})
    alice.send(room, {"msgtype": "m.text", "body": "see you"})
    alice.sync("sync_incremental", since=since_a)
    alice.sync("sync_initial", filter_=filter_id)
    bob.sync("sync_initial", filter_=json.dumps(LIMIT_1_FILTER, separators=(",", ":")))
    bob.sync("sync_initial", timeout_ms=1)  # not the 0 of the first: Synapse would answer from its cache
    page = alice.messages(room)
    alice.messages(room, from_=page.get("end"))
    bob.messages(direct)
    alice.call("state", "GET", "/rooms/%s/state" % _q(room))
    alice.call("members", "GET", "/rooms/%s/members" % _q(room))
    alice.call("event", "GET", "/rooms/%s/event/%s" % (_q(room), _q(reply)))
    alice.call("joined_rooms", "GET", "/joined_rooms")
    bob.call("joined_rooms", "GET", "/joined_rooms")

    # A sensor room, as a stock client following a lowbw device sees it: the
    # proxy's own rendering of readings (lowbw.proxy.sensor), posted by bob.
    sensor_room = alice.call(
        "create_room", "POST", "/createRoom",
        {"name": "Weather station", "preset": "private_chat", "invite": [bob.user_id]},
    )["room_id"]
    bob.call("join", "POST", "/join/%s" % _q(sensor_room), {})
    since_a = alice.sync("sync_incremental", since=since_a)["next_batch"]
    for seq, values in enumerate(SENSOR_READINGS):
        content = sensor.render("station1", SENSOR_SLOTS, 0, list(values), seq, 1795666000123 + seq)
        bob.send(sensor_room, content)
        since_a = alice.sync("sync_incremental", since=since_a)["next_batch"]
    alice.messages(sensor_room, limit=5)
    return record


def capture_from_synapse(
    server_name: str,
    session: Callable[[str, tuple[tuple[str, str], tuple[str, str]]], list[Body]] = capture_training_session,
    localparts: tuple[str, str] = ("alice", "bob"),
) -> list[Body]:
    """Start a throw-away Synapse named ``server_name``, register two users, run ``session``, stop."""
    import secrets

    from lowbw.testing.synapse import SynapseServer

    # Presence is on in a stock Synapse; the harness turns it off for tests.
    with SynapseServer(server_name=server_name, extra_config={"presence": {"enabled": True}}) as server:
        users = []
        for name in localparts:
            password = secrets.token_urlsafe(12)
            server.register_user(name, password)
            users.append((name, password))
        return session(server.url, (users[0], users[1]))


# ---- building --------------------------------------------------------------

# Integer values that are clocks: only their leading CBOR bytes are typical
# (a millisecond timestamp's top bytes 1b 00 00 01 hold from 2004 to 2039).
CLOCK_KEYS = frozenset(
    {"age", "origin_server_ts", "ts", "last_active_ago", "expires_in_ms", "retry_after_ms", "measured_at"}
)
# Strings that are secrets or per-deployment: only a fixed prefix, if any, is typical.
SECRET_KEYS = frozenset({"password", "access_token", "refresh_token", "device_id", "base_url", "token"})
SIGILS = "$!@#+"
STREAM_TOKEN = re.compile(r"^[st]\d+[-_]")
MIN_PIECE = 24
# A piece must save at least this many link bytes per byte it takes in the
# dictionary over the training session. Below it, on a session the dictionary
# never saw (bench/body_compression.py), pieces saved nothing: they fit the
# training session's own strings.
MIN_GAIN_PER_BYTE = 0.01


def typical_prefix(text: str, key: str | None) -> str | None:
    """What of a random string is worth a place in a dictionary; None if it is not random.

    Event, room and user ids, aliases, stream tokens, media URIs, tokens and
    passwords differ in every session: their first character (or scheme, or
    token prefix) is all that repeats. A short dictionary entry is better than
    a placeholder of the right length: DEFLATE matches up to the random part,
    copies it as literals, and matches again after it from anywhere.
    """
    if key in SECRET_KEYS:
        if text.startswith("syt_"):
            return "syt_"
        scheme = text.find("://")
        return text[: scheme + 3] if scheme > 0 else ""
    if text[:1] in SIGILS and (":" in text or len(text) >= 40):
        return text[0]
    if STREAM_TOKEN.match(text):
        return text[0]
    if text.startswith("mxc://"):
        return "mxc://"
    return None


def wire_bytes(obj: Any) -> bytes:
    """A body as the link carries it before DEFLATE: integer keys (table 2), CBOR."""
    return bytes(cbor.dumps(keys.compress(obj, keys.TABLE_LOWBW_V1)))


def json_bytes(obj: Any) -> bytes:
    """A body as compact JSON text (UTF-8, as Synapse sends it)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _cbor_head(major: int, n: int) -> bytes:
    unsigned = bytes(cbor.dumps(n))  # major type 0: its type bits are zero
    return bytes([unsigned[0] | major << 5]) + unsigned[1:]


def skeleton_cbor(obj: Any, key: str | None = None) -> bytes:
    """``wire_bytes(obj)`` with random strings cut to ``typical_prefix`` and clocks to their top bytes.

    Not valid CBOR where something was cut: a dictionary is only a source of matches.
    """
    if isinstance(obj, dict):
        ids = keys.get_table(keys.TABLE_LOWBW_V1).ids
        out = [_cbor_head(5, len(obj))]
        for k, v in obj.items():
            out.append(bytes(cbor.dumps(ids[k])) if k in ids else _cbor_text(k, None))
            out.append(skeleton_cbor(v, k))
        return b"".join(out)
    if isinstance(obj, list):
        return _cbor_head(4, len(obj)) + b"".join(skeleton_cbor(v, key) for v in obj)
    if isinstance(obj, str):
        return _cbor_text(obj, key)
    encoded = bytes(cbor.dumps(obj))
    if isinstance(obj, int) and not isinstance(obj, bool) and (key in CLOCK_KEYS or obj >= 1 << 32):
        return encoded[:4] if len(encoded) == 9 else encoded[:1]
    return encoded


def _cbor_text(text: str, key: str | None) -> bytes:
    encoded = bytes(cbor.dumps(text))
    prefix = typical_prefix(text, key)
    if prefix is None:
        return encoded
    head = len(encoded) - len(text.encode("utf-8"))
    return encoded[:head] + prefix.encode("utf-8")


def skeleton_json(obj: Any, key: str | None = None) -> bytes:
    """``json_bytes(obj)`` cut like ``skeleton_cbor``: for a JSON-text dictionary, to compare."""
    if isinstance(obj, dict):
        items = [_json_text(k, None) + b":" + skeleton_json(v, k) for k, v in obj.items()]
        return b"{" + b",".join(items) + b"}"
    if isinstance(obj, list):
        return b"[" + b",".join(skeleton_json(v, key) for v in obj) + b"]"
    if isinstance(obj, str):
        return _json_text(obj, key)
    if isinstance(obj, int) and not isinstance(obj, bool) and (key in CLOCK_KEYS or obj >= 1 << 32):
        return str(obj)[:2].encode("ascii") if obj >= 1 << 32 else b""
    return json_bytes(obj)


def _json_text(text: str, key: str | None) -> bytes:
    prefix = typical_prefix(text, key)
    return json_bytes(text if prefix is None else prefix)


def deflate(data: bytes, zdict: bytes = b"") -> bytes:
    """Raw DEFLATE as the codec (lowbw/compact/codec.py) sends it: level 9, memLevel 9, no header."""
    if zdict:
        comp = zlib.compressobj(level=9, wbits=-15, memLevel=9, zdict=zdict)
    else:
        comp = zlib.compressobj(level=9, wbits=-15, memLevel=9)
    return comp.compress(data) + comp.flush()


def inflate(data: bytes, zdict: bytes = b"") -> bytes:
    decomp = zlib.decompressobj(wbits=-15, zdict=zdict) if zdict else zlib.decompressobj(wbits=-15)
    out = decomp.decompress(data) + decomp.flush()
    if not decomp.eof:
        raise ValueError("truncated DEFLATE stream")
    return out


def link_cost(bodies: Sequence[bytes], zdict: bytes) -> int:
    """Bytes the bodies take on the link when each goes DEFLATEd or as is, whichever is shorter."""
    return sum(min(len(b), len(deflate(b, zdict))) for b in bodies)


def pieces(bodies: Sequence[Body], skeleton: Callable[[Any, str | None], bytes]) -> list[bytes]:
    """Candidate dictionary pieces: every body's skeleton, and every object and array inside it.

    Distinct pieces of at least ``MIN_PIECE`` bytes, in order of first appearance.
    """
    seen: dict[bytes, None] = {}

    def walk(obj: Any, key: str | None) -> None:
        piece = skeleton(obj, key)
        if len(piece) >= MIN_PIECE:
            seen.setdefault(piece, None)
        children = obj.items() if isinstance(obj, dict) else ((key, v) for v in obj)
        for k, v in children:
            if isinstance(v, (dict, list)):
                walk(v, k)

    for body in bodies:
        if isinstance(body.obj, (dict, list)):
            walk(body.obj, None)
    return list(seen)


def build_dictionary(
    bodies: Sequence[Body],
    encode: Callable[[Any], bytes] = wire_bytes,
    skeleton: Callable[[Any, str | None], bytes] = skeleton_cbor,
    size: int = DEFLATE_WINDOW,
    min_gain_per_byte: float = MIN_GAIN_PER_BYTE,
    log: Callable[[str], None] | None = None,
) -> bytes:
    """A preset dictionary of at most ``size`` bytes for bodies like ``bodies``.

    Greedy: each round adds, IN FRONT of what is chosen, the piece that saves the
    most link bytes over all of ``bodies`` (``link_cost``) per dictionary byte,
    so the first choices end up nearest the data. Gains only shrink as the
    dictionary grows (mostly: DEFLATE is not exactly submodular), so a piece's
    last known gain bounds its next and only the leader is re-measured (lazy
    greedy). Ties go to the earlier piece: the result depends on nothing but
    the input (and zlib's output, which is fixed for a zlib version).
    """
    encoded = [encode(b.obj) for b in bodies]
    candidates = pieces(bodies, skeleton)
    chosen = b""
    cost = link_cost(encoded, chosen)
    if log:
        log("%d bodies, %d B encoded, %d B on the link without a dictionary; %d candidate pieces"
            % (len(encoded), sum(map(len, encoded)), cost, len(candidates)))
    heap: list[tuple[float, int, int, int]] = []  # (-gain per byte, index, gain, round measured)
    for i, piece in enumerate(candidates):
        if len(piece) <= size:
            gain = cost - link_cost(encoded, piece)
            heapq.heappush(heap, (-gain / len(piece), i, gain, 0))
    rounds = 0
    while heap:
        neg_density, i, gain, measured = heapq.heappop(heap)
        piece = candidates[i]
        if len(chosen) + len(piece) > size:
            continue
        if measured != rounds:
            gain = cost - link_cost(encoded, piece + chosen)
            heapq.heappush(heap, (-gain / len(piece), i, gain, rounds))
            continue
        if gain <= 0 or gain < min_gain_per_byte * len(piece):
            break
        chosen = piece + chosen
        cost -= gain
        rounds += 1
        if log:
            log("  + %5d B piece saves %5d B (%.2f B/B): dictionary %5d B, link %6d B"
                % (len(piece), gain, -neg_density, len(chosen), cost))
    return chosen


# ---- command line -----------------------------------------------------------


def load_corpus(path: Path) -> list[Body]:
    return [Body(kind, obj) for kind, obj in json.loads(path.read_text(encoding="utf-8"))]


def save_corpus(path: Path, bodies: Sequence[Body]) -> None:
    path.write_text(json.dumps([[b.kind, b.obj] for b in bodies], indent=1, ensure_ascii=False) + "\n",
                    encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=DICT_V1_PATH,
                        help="where to write the dictionary (default: the frozen %s)" % DICT_V1_PATH.name)
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    parser.add_argument("--corpus-in", type=Path, help="build from this saved capture; no Synapse")
    parser.add_argument("--corpus-out", type=Path, help="save the capture (JSON) here")
    parser.add_argument("--server-name", default=TRAINING_SERVER_NAME)
    parser.add_argument("--size", type=int, default=DEFLATE_WINDOW, help="at most this many bytes")
    parser.add_argument("--json-text", action="store_true",
                        help="build a dictionary for compact JSON text instead (for comparison only)")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.force:
        frozen = args.out.resolve() == DICT_V1_PATH.resolve()
        print("%s exists%s; pass --force to overwrite it, or --out elsewhere"
              % (args.out, ": it is the FROZEN v1 dictionary, which peers must share byte for byte"
                 if frozen else ""), file=sys.stderr)
        return 2
    if not 0 < args.size <= DEFLATE_WINDOW:
        parser.error("--size must be 1..%d" % DEFLATE_WINDOW)

    if args.corpus_in:
        bodies = load_corpus(args.corpus_in)
    else:
        print("capturing a chat session from a real Synapse (%s)..." % args.server_name, file=sys.stderr)
        bodies = capture_from_synapse(args.server_name)
    if args.corpus_out:
        save_corpus(args.corpus_out, bodies)
    if args.json_text:
        zdict = build_dictionary(bodies, json_bytes, skeleton_json, args.size, log=_log)
    else:
        zdict = build_dictionary(bodies, size=args.size, log=_log)
    args.out.write_bytes(zdict)
    print("wrote %s: %d B, sha256 %s" % (args.out, len(zdict), hashlib.sha256(zdict).hexdigest()))
    return 0


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
