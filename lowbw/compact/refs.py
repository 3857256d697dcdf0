"""Identifier references: a Matrix ID the session has already carried costs 2-3 bytes.

Room IDs, event IDs, user IDs and sync tokens recur: a room ID is in the path
of every message sent to the room, an event ID sent back in a send answer comes
again in the next sync, the ``next_batch`` of one sync is the ``since`` of the
next. Each session keeps one table of such strings, owned by the proxy:

* **The proxy defines.** When an answer body holds an identifier (a string
  starting with ``!``, ``$``, ``@`` or ``#`` of at least ``MIN_LEN``
  characters, or the value of a pagination/sync token key, ``TOKEN_KEYS``)
  that is not in the table, it gets the next index and goes as a *definition*;
  one already in the table goes as a *reference* -- but only if the
  client-proxy has said it holds that index (below), else as a definition
  again (the same index and string: a repeat is harmless).
* **The client-proxy opts in** by sending ``Refs-Known`` in its first request
  of the session (value 0); a session that never sends it gets plain text.
* **The client-proxy confirms.** It reports, in option ``Refs-Known`` (65020)
  of its next request, how many entries from index 0 it holds without a gap;
  it sends the option only when that number grew (on a compact session, once
  references are on, only with a GET). Definitions can arrive out
  of order (loss, retransmission, concurrent requests), so only the
  contiguous prefix counts.
* **Fixed texts.** Common event types in paths (``STATIC_TEXT``, frozen) are
  ``"\x02" + decimal index`` in Uri-Path and Uri-Query values.
* **The client-proxy refers.** In a request it may use any index it holds: the
  proxy, which made the table, has them all. In Uri-Path and Uri-Query values a
  reference is the text ``"\\x01" + decimal index``; in a body it is the same
  byte string as downlink.

In a CBOR body (JSON has no byte strings, so a byte string is never data):

==========================  ============================================
byte string content         meaning
==========================  ============================================
1-2 bytes                   reference: the big-endian index
index(2) 0x00 text          definition: index, then the string (UTF-8)
index(2) sigil hash(32)     definition of ``sigil + base64url(hash)``, the
                            form of event IDs and of v12 room IDs (``$``
                            or ``!`` then 43 characters): 9 bytes shorter
==========================  ============================================

On a session that agreed base64 byte strings (``lowbw.compact.blobs``), a
byte string of 3 or more bytes starting with ``80``..``83`` is a blob, not an
entry: ``encode``/``decode`` take ``blobs=True`` for that, and a string that
is not an identifier goes as a blob when it restores exactly.

The table holds at most ``MAX_REFS`` strings; after that new identifiers go
as plain text. It lives and dies with the Noise session on both sides: a new
handshake starts an empty table.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from lowbw.compact import blobs as blobs_module
from lowbw.wire.errors import DecodeError, EncodeError, LimitError

MAX_REFS = 4096
MIN_LEN = 8
MAX_LEN = 255
SIGILS = "!$@#"
HASH_SIGILS = b"$!"
TOKEN_KEYS = frozenset(("next_batch", "prev_batch", "start", "end", "from", "to", "since"))
TEXT_PREFIX = "\x01"
STATIC_PREFIX = "\x02"
# Path segments common enough to have a fixed number (event types of sends and
# state), in Uri-Path as "\x02" + decimal index. Frozen: append only.
STATIC_TEXT = (
    "m.room.message",
    "m.reaction",
    "m.room.redaction",
    "m.room.member",
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.room.power_levels",
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.canonical_alias",
    "m.room.encrypted",
    "m.room.encryption",
    "m.room.pinned_events",
    "m.room.create",
    "m.room.server_acl",
    "m.room.tombstone",
    "m.sticker",
    "m.space.child",
    "m.space.parent",
    "m.read",
    "m.read.private",
    "m.fully_read",
    "m.typing",
    "m.direct",
    "m.push_rules",
    "m.room_key_request",
    "m.room_key",
    "m.forwarded_room_key",
    "m.key.verification.request",
    "m.call.invite",
)
_STATIC_INDEX = {s: i for i, s in enumerate(STATIC_TEXT)}
_FORM_TEXT = 0
_HASH_LEN = 32
_HASH_ID_LEN = 44


def is_identifier(s: str, key: str | None = None) -> bool:
    """Whether a string is worth a table entry (module docstring)."""
    if not MIN_LEN <= len(s) <= MAX_LEN or not s.isprintable():
        return False
    return s[0] in SIGILS or key in TOKEN_KEYS


def _hash_form(s: str) -> bytes | None:
    """``sigil + 32 bytes`` if ``s`` is exactly a base64url hash ID, else None."""
    if len(s) != _HASH_ID_LEN or s[0] not in "$!":
        return None
    try:
        raw = base64.urlsafe_b64decode(s[1:] + "=")
    except (ValueError, TypeError):
        return None
    if len(raw) != _HASH_LEN or base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=") != s[1:]:
        return None
    return s[0].encode("ascii") + raw


def definition(index: int, s: str) -> bytes:
    head = bytes((index >> 8, index & 0xFF))
    hashed = _hash_form(s)
    if hashed is not None:
        return head + hashed
    return head + b"\x00" + s.encode("utf-8")


def reference(index: int) -> bytes:
    return bytes((index,)) if index < 256 else bytes((index >> 8, index & 0xFF))


def parse_entry(b: bytes) -> tuple[int, str | None]:
    """``(index, None)`` for a reference, ``(index, string)`` for a definition."""
    if 1 <= len(b) <= 2:
        return int.from_bytes(b, "big"), None
    if len(b) < 4:
        raise DecodeError("identifier entry too short")
    index = (b[0] << 8) | b[1]
    if index >= MAX_REFS:
        raise LimitError("identifier index %d beyond the table" % index)
    form = b[2]
    if form == _FORM_TEXT:
        try:
            return index, b[3:].decode("utf-8")
        except UnicodeError:
            raise DecodeError("identifier definition is not UTF-8") from None
    if form in HASH_SIGILS and len(b) == 3 + _HASH_LEN:
        return index, chr(form) + base64.urlsafe_b64encode(b[3:]).decode("ascii").rstrip("=")
    raise DecodeError("unknown identifier definition form")


class ProxyRefs:
    """The proxy's side: defines entries, knows how far the client has them."""

    def __init__(self) -> None:
        self.strings: list[str] = []
        self.index: dict[str, int] = {}
        self.confirmed = 0

    def confirm(self, known: int) -> None:
        """The client holds entries 0..known-1; DecodeError if it claims more than exist."""
        if known > len(self.strings):
            raise DecodeError("Refs-Known %d beyond the table (%d)" % (known, len(self.strings)))
        self.confirmed = max(self.confirmed, known)

    def _out(self, s: str, key: str | None) -> Any:
        if not is_identifier(s, key):
            return s
        i = self.index.get(s)
        if i is None:
            if len(self.strings) >= MAX_REFS:
                return s
            i = self.index[s] = len(self.strings)
            self.strings.append(s)
        return reference(i) if i < self.confirmed else definition(i, s)

    def encode(self, obj: Any, ids: dict[str, int], blobs: bool = False) -> Any:
        """``obj`` with keys compressed by ``ids`` (a key table) and identifiers as entries
        (and, with ``blobs``, base64 text as blobs)."""
        return _encode(obj, ids, with_blobs(self._out) if blobs else self._out)

    def resolve_text(self, s: str) -> str:
        """A Uri-Path or Uri-Query value with a reference resolved."""
        if not s.startswith((TEXT_PREFIX, STATIC_PREFIX)):
            return s
        digits = s[1:]
        bad = not digits.isdigit() or not digits.isascii() or len(digits) > 5
        if bad or (len(digits) > 1 and digits[0] == "0"):
            raise DecodeError("bad identifier reference in an option")
        if s[0] == STATIC_PREFIX:
            if int(digits) >= len(STATIC_TEXT):
                raise DecodeError("static text %s is not in the table" % digits)
            return STATIC_TEXT[int(digits)]
        return self._lookup(int(digits))

    def _lookup(self, i: int) -> str:
        if i >= len(self.strings):
            raise DecodeError("identifier reference %d is not in the table" % i)
        return self.strings[i]

    def decode(self, obj: Any, names: dict[int, str], blobs: bool = False) -> Any:
        """A request body: key ids expanded by ``names``, references resolved (no definitions)."""
        return _decode(obj, names, blob_entries(self._entry) if blobs else self._entry)

    def _entry(self, b: bytes) -> str:
        index, s = parse_entry(b)
        if s is not None:
            raise DecodeError("a client does not define identifiers")
        return self._lookup(index)


class ClientRefs:
    """The client-proxy's side: learns definitions, refers to what it holds."""

    def __init__(self) -> None:
        self.strings: dict[int, str] = {}
        self.index: dict[str, int] = {}
        self.known = 0  # contiguous entries from 0
        # -1: nothing sent yet; the first report (0) tells the proxy to use references.
        self.reported = -1

    def _learn(self, index: int, s: str) -> str:
        old = self.strings.get(index)
        if old is not None and old != s:
            raise DecodeError("identifier %d redefined differently" % index)
        if old is None:
            self.strings[index] = s
            self.index.setdefault(s, index)
            while self.known in self.strings:
                self.known += 1
        return s

    def to_report(self) -> int | None:
        """The Refs-Known value to send now, or None when it has not grown.

        The first call of a session returns 0 even with nothing held: that
        report is what turns references on at the proxy.
        """
        if self.known > self.reported:
            self.reported = self.known
            return self.known
        return None

    def unreport(self, value: int) -> None:
        """A request carrying ``value`` was never answered: report again next time."""
        if self.reported == value:
            self.reported = -1

    def refer_text(self, s: str) -> str:
        i = self.index.get(s)
        if i is not None:
            return TEXT_PREFIX + str(i)
        j = _STATIC_INDEX.get(s)
        return s if j is None else STATIC_PREFIX + str(j)

    def encode(self, obj: Any, ids: dict[str, int], blobs: bool = False) -> Any:
        """A request body: keys compressed, identifiers this side holds as references."""
        return _encode(obj, ids, with_blobs(self._out) if blobs else self._out)

    def _out(self, s: str, key: str | None) -> Any:
        i = self.index.get(s)
        return s if i is None else reference(i)

    def decode(self, obj: Any, names: dict[int, str], blobs: bool = False) -> Any:
        """An answer body: key ids expanded, definitions learnt, references resolved."""
        return _decode(obj, names, blob_entries(self._entry) if blobs else self._entry)

    def _entry(self, b: bytes) -> str:
        index, s = parse_entry(b)
        if s is not None:
            return self._learn(index, s)
        found = self.strings.get(index)
        if found is None:
            raise DecodeError("identifier reference %d is not known here" % index)
        return found


def with_blobs(leaf: Callable[[str, str | None], Any]) -> Callable[[str, str | None], Any]:
    """``leaf`` and then, for a string it left as text, the blob form if there is one."""

    def out(s: str, key: str | None) -> Any:
        value = leaf(s, key)
        if value is s:
            blob = blobs_module.encode(s)
            if blob is not None:
                return blob
        return value

    return out


def blob_entries(entry: Callable[[bytes], str]) -> Callable[[bytes], str]:
    """``entry`` for identifier entries, ``blobs.decode`` for blobs."""

    def read(b: bytes) -> str:
        return blobs_module.decode(b) if blobs_module.is_blob(b) else entry(b)

    return read


def text_only(s: str, key: str | None) -> Any:
    """The leaf of a session without identifier references: every string stays text."""
    return s


def no_entries(b: bytes) -> str:
    """The entry reader of a session without identifier references: no byte string is data."""
    raise DecodeError("byte string in a body of a session without identifier references")


def encode_tree(obj: Any, ids: dict[str, int], leaf: Callable[[str, str | None], Any]) -> Any:
    """Key compression with each string through ``leaf(string, its key)`` (public ``_encode``)."""
    return _encode(obj, ids, leaf)


def decode_tree(obj: Any, names: dict[int, str], entry: Callable[[bytes], str]) -> Any:
    """Key expansion with each byte string through ``entry`` (public ``_decode``)."""
    return _decode(obj, names, entry)


def _encode(
    obj: Any,
    ids: dict[str, int],
    leaf: Callable[[str, str | None], Any],
    key: str | None = None,
    depth: int = 64,
) -> Any:
    """Key compression (``ids``) with every other string through ``leaf(string, its key)``."""
    if depth <= 0:
        raise EncodeError("JSON nested too deeply to compress")
    if isinstance(obj, str):
        return leaf(obj, key)
    if isinstance(obj, dict):
        out: dict[Any, Any] = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise EncodeError("JSON object keys must be strings")
            kid = ids.get(k)
            out[kid if kid is not None else leaf(k, None)] = _encode(v, ids, leaf, k, depth - 1)
        return out
    if isinstance(obj, (list, tuple)):
        return [_encode(v, ids, leaf, key, depth - 1) for v in obj]
    return obj


def _decode(obj: Any, names: dict[int, str], entry: Callable[[bytes], str], depth: int = 64) -> Any:
    """Key ids expanded (``names``), byte strings (identifier entries) through ``entry``."""
    if depth <= 0:
        raise LimitError("body nested too deeply")
    if isinstance(obj, bytes):
        return entry(obj)
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            if isinstance(k, str):
                key = k
            elif isinstance(k, bytes):
                key = entry(k)
            elif isinstance(k, int) and not isinstance(k, bool) and k in names:
                key = names[k]
            else:
                raise DecodeError("map key is neither a key id, text nor an identifier")
            out[key] = _decode(v, names, entry, depth - 1)
        return out
    if isinstance(obj, list):
        return [_decode(v, names, entry, depth - 1) for v in obj]
    return obj
