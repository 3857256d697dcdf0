"""Run an adapter until SIGINT/SIGTERM: the part both adapters' main() share."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from prometheus_client.core import Metric

from lowbw.wire.errors import LowbwError


class Adapter(Protocol):
    def run(self) -> None: ...
    def stop(self) -> None: ...
    def stats(self) -> dict[str, Any]: ...


def open_metrics(settings: Any, what: str, prog: str) -> tuple[Any, int]:
    """Start the ``[metrics]`` listener before the adapter: (MetricsThread or None, 0),
    or (None, 1) with the reason printed if it cannot listen."""
    from lowbw.adapters.metrics import MetricsStartError, start_metrics

    try:
        return start_metrics(settings, what), 0
    except MetricsStartError as exc:
        print("%s: error: %s" % (prog, exc.message), file=sys.stderr)
        return None, 1


def close_metrics(metrics: Any) -> None:
    if metrics is not None:
        metrics.stop()


def serve(
    what: str,
    prog: str,
    metrics_settings: Any,
    make: Callable[[], Adapter],
    stats_path: str | None,
    log: logging.Logger,
    families: Callable[[Any, float], Iterable[Metric]],
) -> int:
    """An adapter command's life after its config is loaded: the ``[metrics]``
    listener first (a busy port is an error before anything starts), then
    ``make()`` (an error there is one line and exit 1), then ``run_until_signal``."""
    metrics, code = open_metrics(metrics_settings, what, prog)
    if code:
        return code
    try:
        adapter = make()
    except (LowbwError, OSError) as exc:
        close_metrics(metrics)
        print("%s: error: %s" % (prog, getattr(exc, "message", "") or exc), file=sys.stderr)
        return 1
    return run_until_signal(
        adapter, stats_path, log, what, metrics, lambda started: families(adapter, started)
    )


def run_until_signal(
    adapter: Adapter,
    stats_path: str | None,
    log: logging.Logger,
    what: str,
    metrics: Any = None,
    families: Callable[[float], Iterable[Metric]] | None = None,
) -> int:
    """Run ``adapter`` until a signal stops it; exit status 0, or 1 if it failed.

    Signal handlers are restored afterwards, and the counters are written to
    ``stats_path`` (if given) however the run ended. ``metrics`` (a started
    ``lowbw.adapters.metrics.MetricsThread``) serves ``families(start_time)``
    while the adapter runs and is stopped afterwards.
    """
    if metrics is not None and families is not None:
        started = time.time()
        metrics.attach(lambda: families(started))
        log.info(
            "metrics at %s/metrics%s", metrics.url, " (token required)" if metrics.settings.token else ""
        )

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
        close_metrics(metrics)
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if stats_path:
            try:
                with open(stats_path, "w", encoding="utf-8") as f:
                    json.dump(adapter.stats(), f, indent=1, sort_keys=True)
            except OSError as exc:
                log.error("cannot write %s: %s", stats_path, exc)
    return code
