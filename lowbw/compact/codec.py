"""Bodies of the client-server API on a client session: JSON <-> compact bytes.

A body crosses the link as CBOR with integer keys (``lowbw.wire.keys``, the
table the handshake agreed). When the handshake also agreed the preset
dictionary (caps bit 4, ``CAP_DICT_V1``), a body may instead go as raw DEFLATE
(RFC 1951) of those CBOR bytes with dictionary v1 preset
(``lowbw.compact.dictionary``). The sender picks whichever is shorter for each
body and says which by the CoAP Content-Format:

==========  ==================================================================
format      payload
==========  ==================================================================
60          CBOR, integer keys
65060       raw DEFLATE of the same CBOR, window preset with dictionary v1
absent      60; but in a *request* on a compact session (caps ``CAP_COMPACT``)
            that agreed the dictionary, 65060 (``deflate_default``)
==========  ==================================================================

Why requests on a compact session default to DEFLATE: nearly every request
body there (each message send) goes DEFLATEd, and its Content-Format option
costs 3 bytes (a 2-byte value), a plain CBOR one 2 (60, a 1-byte value).
Answers keep plain CBOR as the default: a send's answer, the commonest, is
an event ID, which does not compress.

Why both: DEFLATE costs a few bytes of block framing, so a 20-byte message send
is shorter as plain CBOR; a sync answer carrying Synapse's default push rules
(4.4 KB of JSON) is almost entirely found in the dictionary.

With an identifier table (``lowbw.compact.refs``: ``ProxyRefs`` on the proxy,
``ClientRefs`` on the client-proxy) the CBOR also carries identifiers the
session has seen as references (byte strings), before DEFLATE.

With ``blobs`` (a session that agreed ``Byte-Strings``, ``lowbw.compact.blobs``)
base64 text goes as byte strings restored exactly, also before DEFLATE: the
dictionary then matches the structure around them and no longer spends its
effort on random characters it cannot compress anyway.

Limits: a body decodes to at most ``max_bytes`` bytes of CBOR (default
``MAX_BODY``), ``max_items`` items (``MAX_ITEMS``) and ``MAX_DEPTH`` levels;
anything beyond is ``LimitError`` (4.13), anything malformed ``DecodeError``
(never a zlib or cbor exception). The limits bound the *work*, not only the
result: DEFLATE output is produced in slices and stops at ``max_bytes``, and
the CBOR decoder stops at the item limit, so a small body that would expand to
millions of items costs no more than ``max_items`` items of decoding. The
proxy passes ``[limits] decompress_max_bytes`` and ``decompress_max_items``;
the client-proxy, decoding the proxy's answers, keeps the larger defaults.
"""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any, Protocol

from lowbw.compact import dictionary
from lowbw.compact import refs as refs_module
from lowbw.wire import cbor, keys
from lowbw.wire.errors import DecodeError, LimitError, LowbwError

CF_CBOR = 60
CF_CBOR_DEFLATE_V1 = 65060
# Decoded CBOR size, items and nesting a body may have (a large initial sync is a few MB).
MAX_BODY = 16 * 1024 * 1024
MAX_ITEMS = 1_000_000
MAX_DEPTH = 64
# A JSON query value (a sync filter) decodes to at most this many bytes and items.
MAX_QUERY_JSON = 8192
MAX_QUERY_ITEMS = 4096


class Refs(Protocol):
    """An identifier table (lowbw.compact.refs) as the codec uses it."""

    def encode(self, obj: Any, ids: dict[str, int], blobs: bool = False) -> Any: ...

    def decode(self, obj: Any, names: dict[int, str], blobs: bool = False) -> Any: ...


class BodyCodec:
    """JSON values <-> (payload, Content-Format) for one session's agreed caps."""

    def __init__(
        self,
        table_id: int,
        dict_version: int | None = None,
        refs: Refs | None = None,
        *,
        blobs: bool = False,
        max_bytes: int = MAX_BODY,
        max_items: int = MAX_ITEMS,
        deflate_default: bool = False,
    ) -> None:
        self._table = keys.get_table(table_id)  # unknown table: DecodeError now, not per body
        self.table_id = table_id
        self.max_bytes = max_bytes
        self.max_items = max_items
        self.dict_version = dict_version
        self.refs = refs
        self.blobs = blobs
        self._zdict = dictionary.dictionary(dict_version) if dict_version is not None else None
        # What an absent Content-Format means (module docstring).
        self.default_cf = CF_CBOR_DEFLATE_V1 if deflate_default and self._zdict is not None else CF_CBOR

    def content_format(self, cf: int) -> int | None:
        """The Content-Format option a body of format ``cf`` carries (None: none, the default)."""
        return None if cf == self.default_cf else cf

    def encode(self, obj: Any) -> tuple[bytes, int]:
        """``(payload, content_format)`` for a JSON value, the shorter form."""
        if self.refs is not None:
            value = self.refs.encode(obj, self._table.ids, self.blobs)
        elif self.blobs:
            value = refs_module.encode_tree(
                obj, self._table.ids, refs_module.with_blobs(refs_module.text_only)
            )
        else:
            value = keys.compress(obj, self.table_id)
        plain = bytes(cbor.dumps(value))
        if self._zdict is None or len(plain) < 8:
            return plain, CF_CBOR
        comp = zlib.compressobj(level=9, wbits=-15, memLevel=9, zdict=self._zdict)
        packed = comp.compress(plain) + comp.flush()
        if len(packed) < len(plain):
            return packed, CF_CBOR_DEFLATE_V1
        return plain, CF_CBOR

    def decode(self, payload: bytes, content_format: int | None) -> Any:
        """The JSON value of a payload; DecodeError/LimitError for anything else."""
        if content_format is None:
            content_format = self.default_cf
        if content_format == CF_CBOR:
            raw = payload
        elif content_format == CF_CBOR_DEFLATE_V1:
            if self._zdict is None:
                raise DecodeError("DEFLATE body on a session without the dictionary")
            raw = inflate(payload, self._zdict, self.max_bytes)
        else:
            raise DecodeError("unsupported Content-Format %d" % content_format, coap_code=143)
        if len(raw) > self.max_bytes:
            raise LimitError("body larger than %d bytes" % self.max_bytes)
        value = cbor.loads(raw, max_depth=MAX_DEPTH, max_items=self.max_items)
        if self.refs is not None:
            return self.refs.decode(value, self._table.names, self.blobs)
        if self.blobs:
            return refs_module.decode_tree(
                value, self._table.names, refs_module.blob_entries(refs_module.no_entries)
            )
        expanded = keys.expand(value, self.table_id, max_depth=MAX_DEPTH)
        _no_byte_strings(expanded)
        return expanded


# A Uri-Query value that is JSON (a sync ``filter``), as CBOR with integer keys
# in base64url behind this prefix (compact sessions: docs/PROTOCOL.md, "Client
# sessions"). "\x01" and "\x02" are identifier references (lowbw.compact.refs).
JSON_QUERY_PREFIX = "\x03"


def compact_query_value(text: str, table_id: int) -> str:
    """``text`` as a shorter JSON_QUERY_PREFIX value when it is a JSON object that
    gets shorter that way; else ``text`` as it is."""
    if not text.startswith("{"):
        return text
    try:
        value = json.loads(text)
        packed = bytes(cbor.dumps(keys.compress(value, table_id)))
    except (ValueError, LowbwError):
        return text
    short = JSON_QUERY_PREFIX + base64.urlsafe_b64encode(packed).decode("ascii").rstrip("=")
    return short if len(short) < len(text.encode("utf-8")) else text


def expand_query_value(text: str, table_id: int) -> str:
    """The JSON text of a JSON_QUERY_PREFIX value (compact, no spaces); any other
    value as it is. DecodeError if it is not one."""
    if not text.startswith(JSON_QUERY_PREFIX):
        return text
    b64 = text[1:]
    try:
        raw = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
    except ValueError:
        raise DecodeError("bad JSON query value") from None
    if len(raw) > MAX_QUERY_JSON:
        raise LimitError("JSON query value too large")
    value = keys.expand(
        cbor.loads(raw, max_depth=MAX_DEPTH, max_items=MAX_QUERY_ITEMS), table_id, max_depth=MAX_DEPTH
    )
    _no_byte_strings(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _no_byte_strings(value: Any) -> None:
    """DecodeError if a byte string is left: JSON has none, and on a session
    without references or blobs none has a meaning (it would reach json.dumps)."""
    if isinstance(value, bytes):
        raise DecodeError("byte string in a body of a session that agreed none")
    if isinstance(value, dict):
        for v in value.values():
            _no_byte_strings(v)
    elif isinstance(value, list):
        for v in value:
            _no_byte_strings(v)


def inflate(payload: bytes, zdict: bytes, max_bytes: int = MAX_BODY) -> bytes:
    """Raw DEFLATE with a preset dictionary, bounded by ``max_bytes`` of output."""
    d = zlib.decompressobj(wbits=-15, zdict=zdict)
    try:
        # zlib stops producing at the bound: the work is bounded, not only the result.
        out = d.decompress(payload, max_bytes + 1)
    except zlib.error as exc:
        raise DecodeError("bad DEFLATE data: %s" % exc) from None
    if len(out) > max_bytes or d.unconsumed_tail:
        raise LimitError("body inflates beyond %d bytes" % max_bytes)
    if not d.eof:
        raise DecodeError("truncated DEFLATE data")
    if d.unused_data:
        raise DecodeError("trailing bytes after DEFLATE data")
    return out
