"""Start a real Synapse homeserver on loopback, for tests, benchmarks and the demo.

``SynapseServer`` writes a throw-away configuration into a temporary directory
(SQLite, one plain-HTTP listener on 127.0.0.1 on a free port, shared-secret
registration, application-service registrations supplied by the caller), runs
``python -m synapse.app.homeserver -c homeserver.yaml`` as a child process and
waits until ``/_matrix/client/versions`` answers.  ``stop()`` sends SIGTERM, then
SIGKILL, and removes the directory.

The configuration files are written as JSON: JSON is valid YAML, so Synapse reads
them, and we need no YAML emitter.  Rate limits are raised far above anything a
test does, except ``rc_login.failed_attempts`` which stays at a few attempts so a
test can obtain a genuine ``429`` with ``Retry-After`` from Synapse.

Only the HTTP calls a harness needs are here, made with urllib so fixtures need
no event loop; the proxy's own client is ``lowbw.proxy.homeserver``.

Run ``python -m lowbw.testing.synapse`` to start one by hand: it prints the URL,
the start time and the resident memory, registers an admin user and waits for
Ctrl-C.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from lowbw.wire.errors import LowbwError

DEFAULT_SERVER_NAME = "lowbw.test"

# Limits for everything a test or the demo does in bulk.  Not "unlimited": a
# runaway loop should still show up as 429s rather than a wedged server.
_RELAXED = {"per_second": 1000, "burst_count": 10000}
_RATE_LIMITS: dict[str, Any] = {
    "rc_message": _RELAXED,
    "rc_registration": _RELAXED,
    "rc_login": {
        "address": _RELAXED,
        "account": _RELAXED,
        # Kept tight on purpose: the one cheap way to get a real 429 with a
        # Retry-After header out of Synapse (four wrong passwords for one user).
        "failed_attempts": {"per_second": 0.1, "burst_count": 3},
    },
    "rc_joins": {"local": _RELAXED, "remote": _RELAXED},
    "rc_joins_per_room": _RELAXED,
    "rc_invites": {"per_room": _RELAXED, "per_user": _RELAXED, "per_issuer": _RELAXED},
    "rc_room_creation": _RELAXED,
    "rc_admin_redaction": _RELAXED,
    "rc_3pid_validation": _RELAXED,
    "rc_presence": {"per_user": _RELAXED},
    "rc_delayed_event_mgmt": _RELAXED,
    "rc_media_create": _RELAXED,
    "rc_key_requests": _RELAXED,
    "rc_profile": _RELAXED,
    "rc_user_directory": _RELAXED,
    "rc_reports": _RELAXED,
}

_LOG_TAIL_LINES = 40


class SynapseError(LowbwError):
    """Synapse did not start, or a harness call to it failed."""


@dataclass(frozen=True)
class AppserviceRegistration:
    """What was written to an application-service registration file."""

    path: Path
    id: str
    as_token: str
    hs_token: str
    url: str | None
    sender_localpart: str
    user_namespace_regex: str


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (it may be taken before you bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def write_appservice_registration(
    path: str | os.PathLike[str],
    id: str,
    as_token: str,
    hs_token: str,
    url: str | None,
    sender_localpart: str,
    user_namespace_regex: str,
    *,
    rate_limited: bool = False,
) -> AppserviceRegistration:
    """Write an application-service registration file that Synapse loads at start.

    ``url`` is where Synapse pushes transactions; ``None`` means it pushes nothing.
    The user namespace is exclusive: only this appservice may create such users.
    ``rate_limited=False`` exempts the appservice's users from rate limits, which
    is what a bridge carrying many devices needs.
    """
    registration = {
        "id": id,
        "url": url,
        "as_token": as_token,
        "hs_token": hs_token,
        "sender_localpart": sender_localpart,
        "rate_limited": rate_limited,
        "namespaces": {
            "users": [{"exclusive": True, "regex": user_namespace_regex}],
            "aliases": [],
            "rooms": [],
        },
    }
    target = Path(path)
    # The file holds both tokens.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(registration, out, indent=2)
        out.write("\n")
    return AppserviceRegistration(
        path=target,
        id=id,
        as_token=as_token,
        hs_token=hs_token,
        url=url,
        sender_localpart=sender_localpart,
        user_namespace_regex=user_namespace_regex,
    )


def _signing_key_line() -> str:
    # Synapse's signing key file: "<algorithm> <version> <unpadded base64 seed>".
    seed = base64.b64encode(secrets.token_bytes(32)).decode("ascii").rstrip("=")
    return "ed25519 a_lowbw %s\n" % seed


_running: set[SynapseServer] = set()


@atexit.register
def _stop_leftovers() -> None:
    # A test run that dies between start() and stop() must not leave Synapse behind.
    for server in list(_running):
        server.stop()


class SynapseServer:
    """A Synapse child process with its own temporary config, database and media store.

    Use as a context manager, or call ``start()`` and ``stop()``.  After start,
    ``url``, ``port``, ``server_name``, ``start_seconds`` and ``rss_bytes()`` are
    available.
    """

    def __init__(
        self,
        *,
        server_name: str = DEFAULT_SERVER_NAME,
        app_service_config_files: Iterable[str | os.PathLike[str]] = (),
        extra_config: Mapping[str, Any] | None = None,
        start_timeout: float = 60.0,
        python: str | None = None,
        keep_dir: bool = False,
    ) -> None:
        self.server_name = server_name
        self.app_service_config_files = [str(Path(p).resolve()) for p in app_service_config_files]
        self.extra_config = dict(extra_config or {})
        self.start_timeout = start_timeout
        self.python = python or sys.executable
        self.keep_dir = keep_dir
        self.registration_shared_secret = secrets.token_urlsafe(32)
        self.dir: Path | None = None
        self.port: int | None = None
        self.start_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # -- life cycle -------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise SynapseError("Synapse is not running")
        return "http://127.0.0.1:%d" % self.port

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path:
        if self.dir is None:
            raise SynapseError("Synapse has no directory yet")
        return self.dir / "homeserver.log"

    def __enter__(self) -> SynapseServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self._proc is not None:
            raise SynapseError("Synapse is already running")
        self.dir = Path(tempfile.mkdtemp(prefix="lowbw-synapse-"))
        try:
            (self.dir / "media_store").mkdir()
            (self.dir / "signing.key").write_text(_signing_key_line(), encoding="ascii")
            self._write_log_config()
            started = time.monotonic()
            # The free port can be taken between probing and Synapse binding it.
            for attempt in range(3):
                self.port = free_port()
                self._write_config()
                if self._launch_and_wait(last_attempt=attempt == 2):
                    break
            self.start_seconds = time.monotonic() - started
        except BaseException:
            self.stop()
            raise
        _running.add(self)

    def stop(self) -> None:
        """Stop Synapse (SIGTERM, then SIGKILL after 10 s) and remove its directory."""
        _running.discard(self)
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.dir is not None and not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        self.port = None

    def rss_bytes(self) -> int | None:
        """Resident set size of the Synapse process (Linux /proc), or None."""
        if self._proc is None:
            return None
        try:
            with open("/proc/%d/status" % self._proc.pid, encoding="ascii") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        chunks = []
        for name in ("homeserver.log", "stderr.log"):
            path = self.dir / name if self.dir is not None else None
            if path is not None and path.exists():
                text = path.read_text(encoding="utf-8", errors="replace").splitlines()
                if text:
                    chunks.append("--- %s ---\n%s" % (name, "\n".join(text[-lines:])))
        return "\n".join(chunks) or "(no log output)"

    def _write_log_config(self) -> None:
        assert self.dir is not None
        log_config = {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
            "handlers": {
                "file": {
                    "class": "logging.FileHandler",
                    "formatter": "plain",
                    "filename": str(self.dir / "homeserver.log"),
                    "encoding": "utf-8",
                }
            },
            "root": {"level": "WARNING", "handlers": ["file"]},
        }
        (self.dir / "log.config").write_text(json.dumps(log_config, indent=2), encoding="utf-8")

    def _write_config(self) -> None:
        assert self.dir is not None and self.port is not None
        config: dict[str, Any] = {
            "server_name": self.server_name,
            "pid_file": str(self.dir / "homeserver.pid"),
            "public_baseurl": "http://127.0.0.1:%d/" % self.port,
            "listeners": [
                {
                    "port": self.port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            "database": {"name": "sqlite3", "args": {"database": str(self.dir / "homeserver.db")}},
            "log_config": str(self.dir / "log.config"),
            "media_store_path": str(self.dir / "media_store"),
            "signing_key_path": str(self.dir / "signing.key"),
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "report_stats": False,
            "enable_metrics": False,
            "url_preview_enabled": False,
            "presence": {"enabled": False},
            "enable_registration": False,
            "registration_shared_secret": self.registration_shared_secret,
            "macaroon_secret_key": secrets.token_urlsafe(32),
            "form_secret": secrets.token_urlsafe(32),
            # Password hashing dominates user registration; this is a throw-away server.
            "bcrypt_rounds": 4,
            "app_service_config_files": self.app_service_config_files,
            **_RATE_LIMITS,
        }
        config.update(self.extra_config)
        path = self.dir / "homeserver.yaml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(config, out, indent=2)

    def _launch_and_wait(self, *, last_attempt: bool) -> bool:
        """Start the process; True once it answers, False if its port was taken."""
        assert self.dir is not None
        with open(self.dir / "stderr.log", "ab") as stderr:
            self._proc = subprocess.Popen(
                [self.python, "-m", "synapse.app.homeserver", "-c", str(self.dir / "homeserver.yaml")],
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                # Its own session: Ctrl-C in a terminal reaches us, and we stop it in order.
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                tail = self.log_tail()
                if "Address already in use" in tail and not last_attempt:
                    return False
                raise SynapseError("Synapse exited with status %d during start\n%s" % (code, tail))
            if self._answers():
                return True
            time.sleep(0.05)
        raise SynapseError(
            "Synapse did not answer /_matrix/client/versions within %.0f s\n%s"
            % (self.start_timeout, self.log_tail())
        )

    def _answers(self) -> bool:
        try:
            with self._opener.open(self.url + "/_matrix/client/versions", timeout=2) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    # -- HTTP helpers for fixtures ------------------------------------------

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode("utf-8") if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(req, timeout=30) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")[:500]
            raise SynapseError("%s %s -> HTTP %d: %s" % (method, path, exc.code, detail)) from None

    def register_user(self, localpart: str, password: str, admin: bool = False) -> tuple[str, str]:
        """Register a user with the shared-secret admin API; return (user_id, access_token)."""
        path = "/_synapse/admin/v1/register"
        nonce = self._call("GET", path)["nonce"]
        mac = hmac.new(self.registration_shared_secret.encode("utf-8"), digestmod=hashlib.sha1)
        mac.update(nonce.encode("utf-8"))
        mac.update(b"\x00")
        mac.update(localpart.encode("utf-8"))
        mac.update(b"\x00")
        mac.update(password.encode("utf-8"))
        mac.update(b"\x00")
        mac.update(b"admin" if admin else b"notadmin")
        result = self._call(
            "POST",
            path,
            {
                "nonce": nonce,
                "username": localpart,
                "password": password,
                "admin": admin,
                "mac": mac.hexdigest(),
            },
        )
        return str(result["user_id"]), str(result["access_token"])


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m lowbw.testing.synapse",
        description="Start a throw-away Synapse on loopback and wait for Ctrl-C.",
    )
    parser.add_argument("--appservice", action="append", default=[], help="registration file to load")
    parser.add_argument("--server-name", default=DEFAULT_SERVER_NAME)
    parser.add_argument("--check", action="store_true", help="start, report, stop (no waiting)")
    args = parser.parse_args(argv)
    with SynapseServer(server_name=args.server_name, app_service_config_files=args.appservice) as hs:
        rss = hs.rss_bytes()
        print("synapse %s up in %.2f s, RSS %.1f MB" % (hs.url, hs.start_seconds or 0.0, (rss or 0) / 1e6))
        password = secrets.token_urlsafe(12)
        user_id, _token = hs.register_user("admin", password, admin=True)
        print("admin user %s password %s" % (user_id, password))
        if args.check:
            return 0
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
