"""Logging set-up of the long-running lowbw services (``proxy run``, ``client-proxy``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def setup_logging(quiet: Iterable[str] = ()) -> None:
    """INFO to stderr by default, ``LOWBW_LOG_LEVEL`` (e.g. WARNING) overrides; the
    loggers named in ``quiet`` only from WARNING up (libraries that log every
    retransmission or access at INFO)."""
    if not logging.getLogger().handlers:
        level = os.environ.get("LOWBW_LOG_LEVEL", "INFO").upper()
        if level not in LEVELS:
            level = "INFO"
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
