"""``lowbw proxy run`` as its own process, for tests that measure it from outside.

``ProxyProcess(config_path, limits={...})`` appends a ``[limits]`` table to the
config (the keys of ``lowbw.proxy.limits``), starts the proxy, waits for its
"listening" line and keeps reading its output in a thread (so a chatty proxy
never blocks on a full pipe). ``rss()`` reads the process's resident memory
from /proc; ``stop()`` sends SIGTERM and returns everything it printed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any


class ProxyProcess:
    def __init__(self, config_path: str, limits: dict[str, Any] | None = None) -> None:
        if limits:
            with open(config_path, "a", encoding="utf-8") as f:
                f.write("\n[limits]\n")
                for key, value in limits.items():
                    f.write("%s = %r\n" % (key, value))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lowbw", "proxy", "run", "--config", config_path],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self._started = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._started.wait(30):
            self.proc.kill()
            raise AssertionError("proxy did not start:\n" + self.output())

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("lowbw proxy listening on udp"):
                self._started.set()

    def output(self) -> str:
        return "".join(self.lines)

    def rss(self) -> int:
        """Resident set size in bytes (VmRSS)."""
        with open("/proc/%d/status" % self.proc.pid, encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS for the proxy")

    def cpu_seconds(self) -> float:
        with open("/proc/%d/stat" % self.proc.pid, encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        return self.output()

    def wait_for(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return True
            time.sleep(0.05)
        return False
