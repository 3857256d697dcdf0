"""Start a real PostgreSQL server on loopback, for tests and benchmarks.

``PostgresServer`` runs Debian's ``initdb`` on a temporary directory, then
``pg_ctl start`` with a free TCP port on 127.0.0.1 (no Unix socket in a shared
place), trust authentication for loopback, ``fsync = off`` (a test database
lives for minutes). ``url`` is a ``postgresql://`` URL for ``lowbw.proxy``'s
registry; ``new_database()`` makes a fresh database per test. ``stop()`` runs
``pg_ctl stop -m immediate`` and removes the directory.

PostgreSQL refuses to run as root: as root the server runs as the ``postgres``
user (Debian's package creates it) and the directory is handed to it.

``find_bin_dir()`` looks for ``initdb`` on PATH and in
``/usr/lib/postgresql/*/bin`` (Debian keeps it there). The bootstrap
(scripts/bootstrap.sh) installs the Debian package ``postgresql`` when missing.

Run ``python -m lowbw.testing.postgres`` to start one by hand: it prints the
URL and waits for Ctrl-C.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from lowbw.wire.errors import LowbwError


class PostgresError(LowbwError):
    """PostgreSQL is not installed, or did not start."""


def find_bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``; None if PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresServer:
    """A throw-away PostgreSQL cluster on 127.0.0.1:``port``."""

    def __init__(self, *, port: int | None = None, max_connections: int = 200) -> None:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise PostgresError("PostgreSQL is not installed (Debian package postgresql)")
        self.bin_dir = bin_dir
        self.port = port or _free_port()
        self.max_connections = max_connections
        self.dir: Path | None = None
        self.user = "postgres"
        self._run_as: str | None = None
        self.start_seconds: float | None = None

    @property
    def url(self) -> str:
        return "postgresql://%s@127.0.0.1:%d/postgres" % (self.user, self.port)

    def database_url(self, name: str, *, unix_socket: bool = False) -> str:
        """URL of database ``name`` (over TCP, or over the server's Unix socket)."""
        if unix_socket and self.dir is not None:
            return "postgresql://%s@/%s?host=%s&port=%d" % (self.user, name, self.dir, self.port)
        return "postgresql://%s@127.0.0.1:%d/%s" % (self.user, self.port, name)

    def _cmd(self, args: list[str]) -> list[str]:
        if self._run_as is None:
            return args
        return ["runuser", "-u", self._run_as, "--", *args]

    def start(self) -> PostgresServer:
        started = time.monotonic()
        self.dir = Path(tempfile.mkdtemp(prefix="lowbw-pg-"))
        data = self.dir / "data"
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresError("running as root and there is no postgres user to run PostgreSQL as")
            self._run_as = "postgres"
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        else:
            self.user = pwd.getpwuid(os.geteuid()).pw_name
        env = dict(os.environ, LC_ALL="C")
        init = subprocess.run(
            self._cmd(
                [
                    str(self.bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    self.user,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-sync",
                ]
            ),
            capture_output=True,
            text=True,
            env=env,
        )
        if init.returncode != 0:
            self._remove()
            raise PostgresError("initdb failed: %s" % (init.stderr.strip() or init.stdout.strip()))
        options = (
            "-c listen_addresses=127.0.0.1 -c port=%d -c unix_socket_directories='%s' "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=%d -c shared_buffers=32MB" % (self.port, self.dir, self.max_connections)
        )
        start = subprocess.run(
            self._cmd(
                [
                    str(self.bin_dir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(self.dir / "postgres.log"),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "30",
                    "start",
                ]
            ),
            capture_output=True,
            text=True,
            env=env,
        )
        if start.returncode != 0:
            log = ""
            try:
                log = (self.dir / "postgres.log").read_text()[-2000:]
            except OSError:
                pass
            self._remove()
            raise PostgresError("pg_ctl start failed: %s %s" % (start.stderr.strip(), log))
        self.start_seconds = time.monotonic() - started
        return self

    def new_database(self, prefix: str = "lowbw", *, unix_socket: bool = False) -> str:
        """Create an empty database; its URL (TCP, or the Unix socket)."""
        import psycopg

        name = "%s_%s" % (prefix, secrets.token_hex(6))
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute('CREATE DATABASE "%s"' % name)
        return self.database_url(name, unix_socket=unix_socket)

    def stop(self) -> None:
        if self.dir is None:
            return
        data = self.dir / "data"
        if (data / "postmaster.pid").exists():
            subprocess.run(
                self._cmd([str(self.bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                capture_output=True,
            )
        self._remove()

    def _remove(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main() -> int:
    with PostgresServer() as server:
        print(
            "postgresql at %s (started in %.2f s); Ctrl-C stops it" % (server.url, server.start_seconds or 0)
        )
        try:
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
