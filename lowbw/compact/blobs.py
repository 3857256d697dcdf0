"""Base64 text carried as CBOR byte strings: 3 bytes on the air for every 4 characters.

End-to-end encrypted Matrix traffic is mostly base64 (RFC 4648) inside JSON:
Megolm and Olm ciphertexts, Curve25519 and Ed25519 keys, signatures, session
IDs and session keys, nearly always *unpadded standard* base64 (the Matrix
spec's "unpadded base64"), sometimes URL-safe. As text each character costs a
byte and carries 6 bits; DEFLATE cannot win that back (the characters are
random), so a 43-character Curve25519 key is 45 bytes of CBOR text and 35 as
a blob (``0x58 0x21``, the marker, 32 bytes).

A **blob** is a CBOR byte string ``marker(1) | raw bytes`` in a body of a
session that agreed the form (``lowbw.proxy.clients``, option
``Byte-Strings``); the marker says how the text is restored:

========  =========================================
marker    the text is
========  =========================================
``80``    standard alphabet (``+/``), unpadded
``81``    standard alphabet, padded with ``=``
``82``    URL-safe alphabet (``-_``), unpadded
``83``    URL-safe alphabet, padded
========  =========================================

``84``..``ff`` are reserved (``DecodeError``). Identifier entries
(``lowbw.compact.refs``) are byte strings too, but never clash: a reference
is 1-2 bytes, a definition starts with its index (``00``..``0f``), a blob is
at least 3 bytes and starts with ``80``..``83``.

A string becomes a blob only when the round trip is exact: its decoded bytes,
encoded again with the marker's alphabet and padding, give the very same
text (so ``"QQ"`` and ``"QR"``, which decode to the same byte, are told
apart: only ``"QQ"`` is canonical and ``"QR"`` stays text). Strings shorter
than ``MIN_CHARS``, or without both upper- and lower-case letters, stay text:
a blob saves a quarter of the characters less two bytes, and words
(``"password"``, ``"unread_notifications"`` are valid base64) would lose
their dictionary matches for nothing. Which strings are chosen is the
sender's business; the receiver restores whatever blob it gets.

Pure functions, no I/O: both the proxy and the client-proxy use them.
"""

from __future__ import annotations

import binascii
import re

from lowbw.wire.errors import DecodeError

MARK_STD = 0x80
MARK_STD_PAD = 0x81
MARK_URL = 0x82
MARK_URL_PAD = 0x83
_PAD_BIT = 0x01
_URL_BIT = 0x02
# A blob is never shorter than this (marker + 2 bytes): 1-2 bytes are identifier references.
MIN_BLOB = 3
# Shorter strings stay text (module docstring).
MIN_CHARS = 16
# What could be base64 at all: one alphabet's characters, then at most two '='.
_STD = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_URL = re.compile(r"[A-Za-z0-9\-_]+={0,2}")
_UPPER = re.compile(r"[A-Z]")
_LOWER = re.compile(r"[a-z]")
_TO_URL = bytes.maketrans(b"+/", b"-_")
_FROM_URL = bytes.maketrans(b"-_", b"+/")


def is_blob(b: bytes) -> bool:
    """Whether a byte string found in a body is a blob (not an identifier entry)."""
    return len(b) >= MIN_BLOB and b[0] >= MARK_STD


def _text(raw: bytes, marker: int) -> str:
    out = binascii.b2a_base64(raw, newline=False)
    if marker & _URL_BIT:
        out = out.translate(_TO_URL)
    if not marker & _PAD_BIT:
        out = out.rstrip(b"=")
    return out.decode("ascii")


def encode(s: str) -> bytes | None:
    """The blob for ``s``, or None if ``s`` is not base64 that restores exactly (or is too short)."""
    if len(s) < MIN_CHARS or not s.isascii():
        return None
    if not (_UPPER.search(s) and _LOWER.search(s)):
        # Random base64 of 12+ bytes has both cases (all but ~1 in 5,000 strings);
        # words_with_underscores, sync tokens and hex do not, and as text they keep
        # their dictionary matches (a key such as "unread_notifications" is valid
        # URL-safe base64).
        return None
    if _STD.fullmatch(s):
        marker = MARK_STD
    elif _URL.fullmatch(s):
        marker = MARK_URL
    else:
        return None
    body = s.rstrip("=")
    padded = len(body) != len(s)
    if padded:
        marker |= _PAD_BIT
        if len(s) % 4:
            return None
    if len(body) % 4 == 1:
        return None  # no byte count encodes to this many characters
    std = body.encode("ascii")
    if marker & _URL_BIT:
        std = std.translate(_FROM_URL)
    try:
        raw = binascii.a2b_base64(std + b"=" * (-len(std) % 4), strict_mode=True)
    except binascii.Error:
        return None
    if _text(raw, marker) != s:
        return None  # not canonical (stray low bits in the last character, padding of a wrong length)
    return bytes((marker,)) + raw


def decode(b: bytes) -> str:
    """The text of a blob; DecodeError for anything that is not one."""
    if len(b) < MIN_BLOB:
        raise DecodeError("byte string too short for a blob")
    marker = b[0]
    if not MARK_STD <= marker <= MARK_URL_PAD:
        raise DecodeError("unknown byte string form 0x%02x" % marker)
    text = _text(b[1:], marker)
    if marker >= MARK_URL and "-" not in text and "_" not in text:
        # The same text in the standard alphabet is what the encoder writes: one
        # text, one form on the air (as CBOR's shortest-form rule).
        raise DecodeError("URL-safe byte string form for a text of the standard alphabet")
    return text
