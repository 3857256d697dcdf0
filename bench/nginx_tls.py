"""nginx as a TLS 1.3 terminator in front of a plain-HTTP homeserver, for benchmarks.

The usual production shape of a Matrix homeserver: nginx (the Debian package)
terminates TLS with an ECDSA P-256 certificate and passes requests to Synapse
over HTTP/1.1 with upstream keep-alive, as Synapse's reverse-proxy
documentation shows. ``NginxTLS`` writes such a configuration into a temporary
directory (a fresh self-signed certificate made with ``cryptography``, TLS 1.3
only, an unprivileged loopback port, logs and temp files inside the directory),
runs ``nginx -p DIR -c nginx.conf -e error.log -g 'daemon off;'`` in its own
process group, waits until the port accepts connections, and stops it (SIGTERM
to the group) and removes the directory at the end.

Everything else is nginx's default, as a stock deployment leaves it (server
tokens on, TLS session tickets on, no gzip of JSON), since the headers and
TLS records it sends are part of what the benchmark measures.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

DEFAULT_SERVER_NAME = "matrix.lowbw.test"


class NginxError(RuntimeError):
    """nginx is missing, or did not start."""


def find_nginx() -> str | None:
    """The nginx binary: on PATH, or where Debian puts it (/usr/sbin is not on every PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def write_ecdsa_certificate(directory: Path, server_name: str) -> tuple[Path, Path]:
    """A fresh self-signed ECDSA P-256 certificate for ``server_name`` (and 127.0.0.1).

    Returns (certificate path, key path), PEM. Small on purpose, like a real
    leaf certificate without a chain: its size is part of every handshake.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(server_name), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


def config_prelude(prefix: Path, writer: str, connections: int, extra: str = "") -> str:
    """The start of an nginx.conf that keeps everything in ``prefix`` (pid, error log,
    temp files), one worker, no access log; ends inside the open ``http`` block."""
    p = str(prefix)
    return f"""# Written by {writer}; removed when the benchmark ends.
worker_processes 1;
{extra}pid {p}/nginx.pid;
error_log {p}/error.log warn;

events {{
    worker_connections {connections};
}}

http {{
    access_log off;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
"""


def nginx_config(prefix: Path, port: int, upstream: tuple[str, int], server_name: str) -> str:
    """nginx.conf: TLS 1.3 on 127.0.0.1:``port``, everything proxied to ``upstream`` over HTTP/1.1."""
    p = str(prefix)
    return (
        config_prelude(prefix, "bench/nginx_tls.py", 64)
        + f"""
    upstream homeserver {{
        server {upstream[0]}:{upstream[1]};
        keepalive 8;
    }}

    server {{
        listen 127.0.0.1:{port} ssl;
        server_name {server_name};
        ssl_certificate {p}/cert.pem;
        ssl_certificate_key {p}/key.pem;
        ssl_protocols TLSv1.3;
        keepalive_timeout 75s;
        client_max_body_size 50M;

        location / {{
            proxy_pass http://homeserver;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header Host $host;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Nginx:
    """nginx in a temporary prefix directory on 127.0.0.1:``port`` (``daemon off``, its
    own process group); a subclass writes the configuration (``write_config``)."""

    dir_prefix = "lowbw-nginx-"

    def __init__(self, *, nginx: str | None = None, start_timeout: float = 15.0) -> None:
        self.nginx = nginx or find_nginx()
        self.start_timeout = start_timeout
        self.dir: Path | None = None
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def write_config(self, directory: Path, port: int) -> str:
        """nginx.conf's text (and any file it needs, written into ``directory``)."""
        raise NotImplementedError

    def __enter__(self) -> Nginx:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def version(self) -> str:
        if self.nginx is None:
            raise NginxError("nginx is not installed (Debian: apt-get install nginx)")
        out = subprocess.run([self.nginx, "-v"], capture_output=True, text=True, timeout=10)
        return (out.stderr or out.stdout).strip().removeprefix("nginx version: ")

    def start(self) -> None:
        if self.nginx is None:
            raise NginxError("nginx is not installed (Debian: apt-get install nginx)")
        self.dir = Path(tempfile.mkdtemp(prefix=self.dir_prefix))
        try:
            (self.dir / "tmp").mkdir()
            self.port = _free_port()
            conf = self.dir / "nginx.conf"
            conf.write_text(self.write_config(self.dir, self.port))
            # -e: nginx opens its compiled-in error log before reading the config
            # unless told otherwise, and /var/log/nginx may not be writable.
            with open(self.dir / "stderr.log", "wb") as stderr:
                self._proc = subprocess.Popen(
                    [
                        self.nginx,
                        "-p",
                        str(self.dir),
                        "-c",
                        str(conf),
                        "-e",
                        str(self.dir / "error.log"),
                        "-g",
                        "daemon off;",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=stderr,
                    stderr=stderr,
                    start_new_session=True,
                )
            self._wait_listening()
        except BaseException:
            self.stop()
            raise

    def _wait_listening(self) -> None:
        assert self._proc is not None and self.port is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise NginxError(
                    "nginx exited with status %d:\n%s" % (self._proc.returncode, self.log_tail())
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise NginxError("nginx did not listen on port %d within %.0f s" % (self.port, self.start_timeout))

    def log_tail(self, lines: int = 20) -> str:
        chunks = []
        for name in ("stderr.log", "error.log"):
            path = self.dir / name if self.dir is not None else None
            if path is not None and path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                if text:
                    chunks.append("--- %s ---\n%s" % (name, "\n".join(text)))
        return "\n".join(chunks) or "(no output)"

    def stop(self) -> None:
        """SIGTERM to nginx's process group (master and worker), SIGKILL if it lingers."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        if proc is not None:
            try:  # a worker that outlived its master
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        self.port = None


class NginxTLS(Nginx):
    """A running nginx terminating TLS 1.3 on 127.0.0.1:``port`` in front of ``upstream``."""

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        server_name: str = DEFAULT_SERVER_NAME,
        nginx: str | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        super().__init__(nginx=nginx, start_timeout=start_timeout)
        self.upstream = upstream
        self.server_name = server_name

    def write_config(self, directory: Path, port: int) -> str:
        write_ecdsa_certificate(directory, self.server_name)
        return nginx_config(directory, port, self.upstream, self.server_name)
