"""What one device or client may spend at the proxy: the ``[limits]`` table of ``proxy.toml``.

The proxy is the trust boundary between radios and the homeserver. Every
enrolled key, however buggy or hostile, gets a bounded share of memory, CPU
and homeserver connections, so that the others keep their service. Each field
below is one key of ``[limits]``; its default is the value shown, and
docs/proxy.md lists them all with what happens when one is reached.

All counts are per Noise session unless the name says ``global``/``total``.
Times are in seconds; ``0`` for a derived time means "derive it from the link".
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Limits:
    # -- per session: CoAP requests --------------------------------------------
    # Observe registrations; a new one replaces the session's oldest.
    observations_per_session: int = 4
    # Requests being worked on (towards the homeserver) at once; more get 5.03.
    requests_in_flight: int = 8
    # Longest long poll (sync ``timeout``, parked sync) the proxy will hold, seconds.
    long_poll_max: float = 60.0
    # -- per session: bodies ---------------------------------------------------------
    # Largest request body a sensor key may send (reassembled block-wise), bytes.
    sensor_body_max: int = 4096
    # Largest request body a client key may send, bytes.
    client_body_max: int = 1048576
    # Unfinished block-wise uploads a session may hold; a new one replaces the oldest.
    blockwise_uploads_per_session: int = 2
    # An unfinished block-wise upload is dropped after this long without a block
    # (0: derived from the link, a few block airtimes plus retransmissions).
    blockwise_idle: float = 0.0
    # Decompression work per body: bytes produced and CBOR items decoded.
    decompress_max_bytes: int = 4 * 1024 * 1024
    decompress_max_items: int = 100000
    # -- homeserver connections ------------------------------------------------------
    # Connections kept for readings and command acknowledgements (never used by long polls).
    readings_connections: int = 32
    # Connections for everything else (client API, long polls).
    other_connections: int = 64
    # -- handshakes --------------------------------------------------------------------
    # Handshake messages one source (IP address and port) may have processed per
    # second (token bucket; the burst is the same number).
    handshakes_per_source: float = 4.0
    # Handshake messages the proxy processes per second in all (Diffie-Hellman work).
    handshakes_global: float = 400.0
    # Above this many handshake messages per second the proxy is "under load" and
    # answers handshakes without a valid cookie with a cookie reply instead.
    cookie_threshold: float = 50.0
    # XX pairings waiting for their third message: per source, and in all.
    xx_pending_per_source: int = 2
    xx_pending_total: int = 256
    # How often rejected datagrams are summarised in the log, seconds.
    log_summary_interval: float = 60.0
    # How often the proxy checks the registry for revocations and new commands, seconds.
    registry_poll_interval: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value < 0:
                raise ValueError("%s must not be negative" % f.name)

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def kind(cls, key: str) -> Any:
        for f in fields(cls):
            if f.name == key:
                return type(getattr(cls(), key))
        raise KeyError(key)
