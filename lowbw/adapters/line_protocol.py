"""The line protocol of sensors that cannot run the device client.

One reading per line, ended by LF (a CR before it is ignored), in either form:

    temperature=21.5 humidity=40          name=value pairs, separated by spaces,
                                          commas or semicolons
    {"temperature": 21.5, "humidity": 40} one JSON object per line

Names are field names of the gateway's device (``lowbw.adapters.values`` maps
them to slots; ``slot.field`` picks a slot explicitly). Values are decimal
numbers, or ``null``/``n/a`` for a failed sensor. Empty lines and lines
starting with ``#`` are ignored. A line that does not parse is reported with a
reason and skipped; nothing else of it is sent.

``LineSplitter`` cuts a byte stream into lines with a bounded buffer: a line
longer than ``max_line`` bytes is dropped (counted) up to its end.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal

from lowbw.wire.errors import DecodeError

FORMATS = ("auto", "kv", "json")
_SEP = re.compile(r"[\s,;]+")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


class LineError(DecodeError):
    """A line that is not a reading (the message says why)."""


def _no_constants(text: str) -> object:
    raise LineError("%s is not a number" % text)


def parse_json_object(text: str) -> dict[str, object]:
    """A JSON object whose numbers stay exact (Decimal); LineError otherwise."""
    try:
        obj = json.loads(text, parse_float=Decimal, parse_constant=_no_constants)
    except LineError:
        raise
    except (ValueError, RecursionError) as exc:
        raise LineError("not valid JSON (%s)" % exc)
    if not isinstance(obj, dict):
        raise LineError("expected a JSON object, got %s" % type(obj).__name__)
    return obj


def parse_line(text: str, fmt: str = "auto") -> dict[str, object] | None:
    """Named raw values of one line, None for a blank or comment line; LineError if malformed."""
    s = text.strip()
    if not s or s.startswith("#"):
        return None
    if fmt == "json" or (fmt == "auto" and s.startswith("{")):
        obj = parse_json_object(s)
        for key, value in obj.items():
            if isinstance(value, (dict, list)):
                raise LineError("%s: expected a number, got a JSON %s" % (key, type(value).__name__))
        return obj
    out: dict[str, object] = {}
    for token in _SEP.split(s):
        if not token:
            continue
        name, eq, value = token.partition("=")
        if not eq or not name:
            shown = token if len(token) <= 24 else token[:21] + "..."
            raise LineError("%r is not name=value" % shown)
        if not _NAME.match(name):
            raise LineError("%r is not a field name" % name[:24])
        if name in out:
            raise LineError("%s given twice" % name)
        out[name] = value
    if not out:
        raise LineError("no values")
    return out


class LineSplitter:
    """Bytes in, complete lines (bytes, without the newline) out; bounded.

    Counters: ``lines``, ``too_long`` (lines dropped for exceeding ``max_line``).
    """

    def __init__(self, max_line: int = 512) -> None:
        self.max_line = max_line
        self.buf = bytearray()
        self.discarding = False
        self.lines = 0
        self.too_long = 0

    def reset(self) -> None:
        """Forget a partial line (the port was reopened: its start is gone)."""
        self.buf = bytearray()
        self.discarding = False

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        start = 0
        while start < len(data):
            nl = data.find(b"\n", start)
            chunk = data[start:] if nl < 0 else data[start:nl]
            if not self.discarding:
                if len(self.buf) + len(chunk) > self.max_line:
                    self.too_long += 1
                    self.discarding = True
                    self.buf = bytearray()
                else:
                    self.buf += chunk
            if nl < 0:
                break
            if not self.discarding:
                line = bytes(self.buf)
                if line.endswith(b"\r"):
                    line = line[:-1]
                out.append(line)
                self.lines += 1
            self.buf = bytearray()
            self.discarding = False
            start = nl + 1
        return out
