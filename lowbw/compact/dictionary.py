"""Preset DEFLATE dictionaries for Matrix bodies on the link, by version.

A session that agreed dictionary v1 in the handshake (caps bit 4,
``lowbw.wire.handshake.CAP_DICT_V1``) may send a body's CBOR (integer keys,
table 2) as raw DEFLATE primed with ``dictionary(1)``: ``zlib.compressobj(level=9,
wbits=-15, zdict=dictionary(1))`` on one end, ``zlib.decompressobj(wbits=-15,
zdict=dictionary(1))`` on the other. Both ends must hold the same bytes, so a
released dictionary never changes: ``dict_v1.bin`` is frozen, its SHA-256 is
pinned here and checked on load, and a better dictionary becomes v2.

v1 (23,840 bytes; a dictionary may not exceed the 32 KiB DEFLATE window) was
built by scripts/build_dictionary.py from the wire form of a chat session
against Synapse: default push rules, the /sync skeleton, common events and
room state, with ids, tokens and clocks cut out. bench/body_compression.py
measures it on a session it never saw.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources

from lowbw.wire.errors import DecodeError, LowbwError

DICT_V1_ID = 1
SUPPORTED = (DICT_V1_ID,)
DEFLATE_WINDOW = 32768

# The only bytes dictionary v1 may ever be (scripts/build_dictionary.py prints it).
DICT_V1_SHA256 = "1bf2a33ca3b19399835b96a3b467413bc4d55f91489a5453377516f1aae44ace"

_FILES = {DICT_V1_ID: ("dict_v1.bin", DICT_V1_SHA256)}


class UnknownDictionary(DecodeError, LookupError):
    """A dictionary version this build does not have: a body naming it cannot be read."""

    coap_code = 143  # 4.15 Unsupported Content-Format


class CorruptDictionary(LowbwError):
    """The installed dictionary file is not the released one; compressing with it would garble bodies."""


def dictionary(version: int) -> bytes:
    """The bytes of preset dictionary ``version``; UnknownDictionary if there is no such version.

    Read from the package once, and checked against the pinned SHA-256:
    CorruptDictionary if the file differs (a damaged or edited install).
    """
    if not isinstance(version, int) or isinstance(version, bool) or version not in _FILES:
        raise UnknownDictionary("no preset dictionary version %r (supported: %s)" % (version, SUPPORTED))
    return _load(version)


@functools.cache
def _load(version: int) -> bytes:
    name, sha256 = _FILES[version]
    data = resources.files(__package__).joinpath(name).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise CorruptDictionary(
            "preset dictionary v%d (%s) has SHA-256 %s, not the released %s" % (version, name, digest, sha256)
        )
    if len(data) > DEFLATE_WINDOW:
        raise CorruptDictionary("preset dictionary v%d is longer than the DEFLATE window" % version)
    return data
