"""What a firmware run logs, read back: its samples and its final summary (tests and benches).

The firmware (firmware/app.py) logs each sample as ``sample N: reading ID = [values]``
and, when it stops, ``done: {...}`` or ``stopped: {...}``; ``Proc`` objects of
scripts/demo.py give their lines with the time each appeared.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

SAMPLE_RE = re.compile(r"sample \d+: reading (\d+) = (\[[^\]]*\])")


def samples(proc: Any) -> list[tuple[int, list[int | None], float]]:
    """(reading id, values, wall time the line appeared) of each sample a firmware run logged."""
    out = []
    for t, line in proc.lines():
        m = SAMPLE_RE.search(line)
        if m:
            out.append((int(m.group(1)), json.loads(m.group(2).replace("None", "null")), t))
    return out


def summary(proc: Any) -> dict[str, Any] | None:
    """The JSON summary the firmware prints at the end of a run ("done: {...}")."""
    for _, line in reversed(proc.lines()):
        m = re.search(r"(?:done|stopped): (\{.*\})", line)
        if m:
            obj: dict[str, Any] = json.loads(m.group(1))
            return obj
    return None


def rendered(values: list[int | None], scales: list[int]) -> list[str | None]:
    """The decimal strings a reader expects for integer values at the slot's scales."""
    return [None if v is None else str(Decimal(v).scaleb(-s)) for v, s in zip(values, scales, strict=True)]
