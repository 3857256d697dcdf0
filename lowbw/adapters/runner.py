"""Run an adapter until SIGINT/SIGTERM: the part both adapters' main() share."""

from __future__ import annotations

import json
import logging
import signal
from typing import Any, Protocol

from lowbw.wire.errors import LowbwError


class Adapter(Protocol):
    def run(self) -> None: ...
    def stop(self) -> None: ...
    def stats(self) -> dict[str, Any]: ...


def run_until_signal(adapter: Adapter, stats_path: str | None, log: logging.Logger, what: str) -> int:
    """Run ``adapter`` until a signal stops it; exit status 0, or 1 if it failed.

    Signal handlers are restored afterwards, and the counters are written to
    ``stats_path`` (if given) however the run ended.
    """

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        adapter.stop()

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        adapter.run()
    except LowbwError as exc:
        log.error("stopping: %s", exc.message or type(exc).__name__)
        code = 1
    except Exception:
        log.exception("%s failed", what)
        code = 1
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if stats_path:
            try:
                with open(stats_path, "w", encoding="utf-8") as f:
                    json.dump(adapter.stats(), f, indent=1, sort_keys=True)
            except OSError as exc:
                log.error("cannot write %s: %s", stats_path, exc)
    return code
