"""Short transaction IDs on the radio, the client's own everywhere else.

Clients name each send with a transaction ID of their choice; matrix-nio and
Element use UUIDs (36 characters), about a quarter of a message send's bytes
on the air. The client-proxy sends ``base64url(SHA-256(txn))[:8]`` instead:

* deterministic, so a client's retry of a send (same ID) is the same short ID
  and the homeserver's deduplication holds -- across client-proxy restarts too;
* 48 bits: two IDs of one device colliding is a 1-in-2**24 event after
  sixteen million sends;
* the homeserver echoes the ID back to the sending device in
  ``unsigned.transaction_id`` (sync, /messages); ``restore`` puts the client's
  own ID back there from a bounded memory of recent sends. An ID older than that
  memory (or from before a restart) stays short: the client then treats its
  own echo as a remote event, as it does for events sent from another device.
"""

from __future__ import annotations

import base64
import hashlib
import urllib.parse
from collections import OrderedDict
from typing import Any

SHORT_LEN = 8
REMEMBERED = 4096
# Path templates whose last segment is a transaction ID (after /_matrix/client/<version>/).
_TXN_ROUTES = (
    ("rooms", None, "send", None, None),
    ("rooms", None, "redact", None, None),
    ("sendToDevice", None, None),
)


def short_id(txn: str) -> str:
    digest = hashlib.sha256(txn.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii")[:SHORT_LEN]


class TxnIds:
    def __init__(self, remembered: int = REMEMBERED) -> None:
        self._originals: OrderedDict[str, str] = OrderedDict()
        self._limit = remembered

    def shorten_path(self, path: str) -> str:
        """``path`` with its transaction ID shortened, if it is a send-like path."""
        parts = path.split("/")
        if len(parts) < 5 or parts[1:3] != ["_matrix", "client"]:
            return path
        tail = parts[4:]
        for template in _TXN_ROUTES:
            if len(tail) == len(template) and all(
                t is None or t == s for t, s in zip(template, tail, strict=True)
            ):
                original = urllib.parse.unquote(tail[-1])
                short = short_id(original)
                self._originals[short] = original
                self._originals.move_to_end(short)
                while len(self._originals) > self._limit:
                    self._originals.popitem(last=False)
                return "/".join(parts[:-1] + [short])
        return path

    def restore(self, body: Any) -> Any:
        """Put the client's own IDs back into ``unsigned.transaction_id`` (in place)."""
        if not self._originals:
            return body
        stack = [body]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                unsigned = node.get("unsigned")
                if isinstance(unsigned, dict):
                    txn = unsigned.get("transaction_id")
                    if isinstance(txn, str) and txn in self._originals:
                        unsigned["transaction_id"] = self._originals[txn]
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
        return body
