"""The end-to-end stack: real processes, run side by side.

Every scenario uses the same building blocks as ``make demo`` (scripts/demo.py,
loaded here as a module): the proxy as ``python -m lowbw proxy run``, one
``python -m radio_sim relay`` per device (each device gets its own radio, so
scenarios do not share airtime), the firmware under the MicroPython unix port
(``firmware/main.py`` with the simulated sensor), devices enrolled with
``python -m lowbw device enroll``, and the session's real Synapse.

At 100 bit/s a warm reading is 4.2 s of airtime and a cold one 13.5 s, so the
scenarios run concurrently: a scenario is a function registered with
``@scenario(name)``; the package fixture starts, in threads, every scenario
that a selected test names with ``@pytest.mark.e2e_scenario(name)``, and each
test waits for its scenario's result and asserts on it. A scenario gathers
evidence (logs with wall-clock times, the room as a client reads it, radio
counters); the assertions are in the tests.
"""

from __future__ import annotations

import importlib.util
import secrets
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from lowbw.testing.firmwarelog import rendered, samples, summary  # noqa: F401  (the scenarios' checks use them)

ROOT = Path(__file__).resolve().parents[2]


def load_demo() -> ModuleType:
    """scripts/demo.py as a module (it is a script, not a package member)."""
    name = "lowbw_scripts_demo"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


demo = load_demo()
Proc = demo.Proc

# name -> (function(env) -> result, needs the shared Synapse + proxy)
SCENARIOS: dict[str, tuple[Callable[[Any], Any], bool]] = {}


def scenario(name: str, *, stack: bool = True) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
    """Register a scenario; ``stack=False`` for ones that bring their own (the demo)."""

    def register(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        SCENARIOS[name] = (fn, stack)
        return fn

    return register


# ------------------------------------------------------------------ parsing


# -------------------------------------------------------------- the stack


@dataclass
class Device:
    """An enrolled device: its config (as enroll wrote it) and where its files go."""

    name: str
    config: dict[str, Any]
    dir: Path

    @property
    def room_id(self) -> str:
        return str(self.config["room_id"])

    @property
    def user_id(self) -> str:
        return str(self.config["user_id"])

    @property
    def scales(self) -> list[int]:
        return [int(f.get("scale", 0)) for f in self.config["slots"][0]["fields"]]


@dataclass
class Env:
    """What the scenarios share: the homeserver, the proxy process, an ordinary user."""

    workdir: Path
    hs_url: str = ""
    config_path: Path | None = None
    proxy: Any = None
    user_id: str = ""
    token: str = ""
    password: str = ""
    procs: list[Any] = field(default_factory=list)
    closed: bool = False
    _enroll_lock: threading.Lock = field(default_factory=threading.Lock)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- set-up ---------------------------------------------------------------

    def start(self, synapse: Any, appservice: Any, server_name: str) -> None:
        from lowbw.proxy.config import write_default

        self.hs_url = synapse.url
        assert appservice.url is not None
        result = write_default(
            self.workdir / "proxy",
            synapse.url,
            server_name=server_name,
            port=demo.free_udp_port(),
            mode="appservice",
            appservice_listen=appservice.url.removeprefix("http://"),
            user_prefix="lowbw_",
            appservice_id=appservice.id,
            sender_localpart=appservice.sender_localpart,
            as_token=appservice.as_token,
            hs_token=appservice.hs_token,
        )
        self.config_path = Path(result.config.path)
        self.password = secrets.token_urlsafe(12)
        self.user_id, self.token = synapse.register_user("e2e_%s" % secrets.token_hex(4), self.password)
        self.proxy = demo.start_proxy(self.config_path, self.workdir / "proxy.log", track=self.procs)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            procs = list(self.procs)
        for p in reversed(procs):
            p.stop(timeout=15)

    def _started(self, proc: Any) -> Any:
        # A scenario still running when the stack shuts down (a failed test,
        # Ctrl-C) must not start a process nobody will stop.
        with self._lock:
            if not self.closed:
                return proc
        proc.stop()
        raise RuntimeError("the end-to-end stack is shutting down")

    # -- per scenario -----------------------------------------------------------

    def enroll(
        self,
        label: str,
        schema: str = "climate=temperature:°C:1,humidity:%:0",
        encrypted: bool = False,
        profile: str | None = None,
    ) -> Device:
        """``lowbw device enroll NAME --room new --invite USER [--unencrypted] [--profile P]``; the
        user joins the room. The proxy's link is 100 bit/s: the compact profile unless ``profile``."""
        assert self.config_path is not None
        name = "e2e-%s-%s" % (label, secrets.token_hex(2))
        with self._enroll_lock:  # one registry writer at a time
            config = demo.enroll(
                self.config_path, name, schema=[schema], invite=[self.user_id], encrypted=encrypted,
                profile=profile,
            )
        demo.join_room(self.hs_url, self.token, config["room_id"])
        d = self.workdir / name
        d.mkdir()
        return Device(name, config, d)

    def relay(self, dev: Device, preset: str = "100bps", seed: int | None = None) -> Any:
        port = int(dev.config["proxy"]["port"])
        return demo.Relay(
            ("127.0.0.1", port),
            dev.dir / "relay.log",
            dev.dir / "radio.json",
            preset=preset,
            seed=seed,
            track=self.procs,
        )

    def firmware(
        self, dev: Device, relay: Any, *, cycles: int | None = None, run: int = 1, **board: Any
    ) -> Any:
        path = dev.dir / "firmware.json"
        if not path.exists():
            demo.firmware_config(dev.config, path, relay=(relay.host, relay.port), **board)
        proc = demo.start_firmware(path, dev.dir / ("device-%d.log" % run), cycles=cycles, track=self.procs)
        return self._started(proc)

    def raw_room(self, dev: Device) -> list[dict[str, Any]]:
        """Every event of the device user in its room, as the homeserver holds it (oldest first)."""
        status, body = demo.matrix(
            self.hs_url,
            "GET",
            "/_matrix/client/v3/rooms/%s/messages" % demo.quote(dev.room_id),
            self.token,
            query={"dir": "b", "limit": 1000},
        )
        assert status == 200, body
        return [e for e in reversed(body["chunk"]) if e.get("sender") == dev.user_id]

    def room(self, dev: Device) -> list[dict[str, Any]]:
        """The device's events in its room, oldest first, read as the ordinary user (/messages)."""
        return [e for e in self.raw_room(dev) if e.get("type") == "m.room.message"]

    def say(self, dev: Device, text: str) -> str:
        """Post ``text`` in the device's room as the ordinary user; returns the event id."""
        status, body = demo.matrix(
            self.hs_url,
            "PUT",
            "/_matrix/client/v3/rooms/%s/send/m.room.message/%s"
            % (demo.quote(dev.room_id), secrets.token_hex(8)),
            self.token,
            {"msgtype": "m.text", "body": text},
        )
        assert status == 200, body
        return str(body["event_id"])

    def lowbw(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lowbw", *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=str(ROOT),
            stdin=subprocess.DEVNULL,
        )


class Runs:
    """Scenarios running in threads; ``result(name)`` waits for one."""

    def __init__(self, env: Env | None, names: list[str]) -> None:
        self.env = env
        self.futures: dict[str, Future[Any]] = {}
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(names)), thread_name_prefix="e2e")
        for name in names:
            fn, _ = SCENARIOS[name]
            self.futures[name] = self._pool.submit(fn, env)

    def result(self, name: str, timeout: float = 900.0) -> Any:
        if name not in self.futures:
            raise KeyError("scenario %r was not started (is its test marked e2e_scenario?)" % name)
        return self.futures[name].result(timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
