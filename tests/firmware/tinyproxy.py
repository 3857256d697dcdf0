"""TinyProxy: ProxyCore (tests/firmware/proxycore.py) behind a UDP socket.

A stand-in for the lowbw proxy in the firmware tests, NOT the proxy (which
talks to Synapse; the end-to-end tests use the real one). It runs in a thread
of the test process; ``lock`` guards the core's records; ``drop_next``
datagrams are ignored (the device must retransmit).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from tests.firmware.proxycore import ProxyCore


class TinyProxy:
    def __init__(self, proxy_priv: bytes, device_pub: bytes) -> None:
        self.core = ProxyCore(proxy_priv, device_pub)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.drop_next = 0
        self.datagrams_in = 0
        # Replaceable per test (e.g. to lose datagrams for a while).
        self.handler: Callable[[bytes], bytes | None] = self.core.handle
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    # The core's records, for the tests' convenience.
    @property
    def readings(self) -> list[Any]:
        return self.core.readings

    @property
    def handshakes(self) -> int:
        return self.core.handshakes

    @property
    def commands(self) -> list[Any]:
        return self.core.commands

    @commands.setter
    def commands(self, value: list[Any]) -> None:
        self.core.commands = value

    @property
    def acked_commands(self) -> list[int]:
        return self.core.acked_commands

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                if predicate():
                    return True
            time.sleep(0.02)
        return False

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                self.datagrams_in += 1
                if self.drop_next:
                    self.drop_next -= 1
                    continue
                out = self.handler(data)
            if out is not None:
                self.sock.sendto(out, addr)
