"""Logging for the adapters: a throttle for input that can flood, and the CLI setup."""

from __future__ import annotations

import logging
import sys
from typing import Any


class Throttle:
    """At most ``burst`` log lines per ``window`` seconds; says how many it held back."""

    def __init__(self, logger: logging.Logger, burst: int = 20, window: float = 10.0) -> None:
        self.logger = logger
        self.burst = burst
        self.window = window
        self.start = -1e18
        self.count = 0
        self.held = 0

    def warning(self, now: float, msg: str, *args: Any) -> None:
        if now - self.start >= self.window:
            if self.held:
                self.logger.warning("... %d more like this in the last %.0f s", self.held, self.window)
            self.start = now
            self.count = 0
            self.held = 0
        if self.count < self.burst:
            self.count += 1
            self.logger.warning(msg, *args)
        else:
            self.held += 1


def setup_logging(verbose: int) -> None:
    level = logging.INFO if verbose <= 0 else logging.DEBUG
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=level, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s"
        )
    logging.getLogger("lowbw").setLevel(level)
    # The device client's per-datagram lines only with -vv.
    logging.getLogger("lowbw.adapters.device").setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
