"""Fixtures for the adapters' tests: real mosquitto, real PTYs, the real proxy and Synapse.

The proxy/Synapse fixtures are the proxy engineers' (tests/proxy/conftest.py),
imported here so pytest registers them for this directory too.

``mosquitto`` starts the Debian broker (/usr/sbin/mosquitto) with a generated
config: 127.0.0.1 on a free port, persistence on (saved after every change)
so a restart keeps the bridge's session and queued messages, and a second
listener with TLS and username/password for the credential tests.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.proxy.conftest import (  # noqa: F401  (fixtures, registered by import)
    EnrolledDevice,
    MatrixUser,
    appservice,
    device_factory,
    enroll_device,
    matrix_call,
    matrix_user,
    proxy_config_path,
    proxy_factory,
    room_events,
    synapse,
)

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
ROOT = Path(__file__).resolve().parents[2]

# Device client tuning for loopback tests: no radio in between, so answers come
# in milliseconds; short timers keep restarts quick.
FAST_CLIENT = {"proxy_allowance": 1, "max_rto": 2, "queue_limit": 32, "batch_limit": 8}


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---- mosquitto ------------------------------------------------------------------------


def _make_tls(directory: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost (cryptography)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lowbw test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": directory / "ca.pem", "cert": directory / "server.pem", "key": directory / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    os.chmod(paths["key"], 0o600)
    return paths


class Mosquitto:
    """A mosquitto process with a persistent store that survives ``restart()``."""

    USER = "bridge"
    PASSWORD = "s3cret-pw"

    def __init__(self, directory: Path) -> None:
        if MOSQUITTO is None:
            raise RuntimeError(
                "mosquitto is not installed (Debian package 'mosquitto'); the MQTT tests need a real "
                "broker. Install it, or add an amqtt fallback (amqtt is not installed here either)."
            )
        self.dir = directory
        self.port = free_tcp_port()
        self.tls_port = free_tcp_port()
        self.tls = _make_tls(directory)
        self.passwd = directory / "passwd"
        if MOSQUITTO_PASSWD is None:
            raise RuntimeError("mosquitto_passwd is missing (it ships with the mosquitto package)")
        subprocess.run(
            [MOSQUITTO_PASSWD, "-b", "-c", str(self.passwd), self.USER, self.PASSWORD],
            check=True,
            capture_output=True,
        )
        os.chmod(self.passwd, 0o600)
        self.conf = directory / "mosquitto.conf"
        self.log = directory / "mosquitto.log"
        (directory / "data").mkdir(exist_ok=True)
        self.conf.write_text(
            "\n".join(
                [
                    "per_listener_settings true",
                    "persistence true",
                    "persistence_location %s/" % (directory / "data"),
                    # Save after every change: even a SIGKILL loses nothing.
                    "autosave_on_changes true",
                    "autosave_interval 1",
                    "max_queued_messages 10000",
                    "log_dest file %s" % self.log,
                    "log_type all",
                    # Running as root in CI: do not switch to the 'mosquitto' user.
                    "user %s" % _current_user(),
                    "listener %d 127.0.0.1" % self.port,
                    "allow_anonymous true",
                    "listener %d 127.0.0.1" % self.tls_port,
                    "allow_anonymous false",
                    "password_file %s" % self.passwd,
                    "cafile %s" % self.tls["ca"],
                    "certfile %s" % self.tls["cert"],
                    "keyfile %s" % self.tls["key"],
                    "",
                ]
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        assert self.proc is None
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.starts += 1
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(
                    "mosquitto exited (%s): %s\n%s" % (self.proc.returncode, err, self.log_tail())
                )
            try:
                for port in (self.port, self.tls_port):
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("mosquitto did not listen within 10 s\n" + self.log_tail())

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def restart(self, sig: int = signal.SIGTERM, down_for: float = 0.0) -> None:
        self.stop(sig)
        time.sleep(down_for)
        self.start()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    yield broker
    broker.stop()


class Subscriber:
    """A paho client collecting messages on a topic filter (QoS 1)."""

    def __init__(self, port: int, topic: str) -> None:
        from paho.mqtt import client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[str, bytes]] = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-sub-%d" % os.getpid())
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10), "test subscriber did not subscribe"

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self.cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self.cond.notify_all()

    def wait_for(self, n: int, timeout: float) -> list[tuple[str, bytes]]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.messages) >= n, timeout)
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publisher(port: int, client_id: str = "test-pub", **tls: Any) -> Any:
    from paho.mqtt import client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="%s-%d" % (client_id, os.getpid()))
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def publish(client: Any, topic: str, payload: bytes | str, timeout: float = 10.0) -> None:
    info = client.publish(topic, payload, qos=1)
    info.wait_for_publish(timeout)
    assert info.is_published(), "the broker did not acknowledge %s" % topic


# ---- enrolled devices and the room ---------------------------------------------------


def tune_device(dev: EnrolledDevice, **extra: Any) -> Path:
    """Rewrite the enrolled device config with fast client timers (loopback, no radio)."""
    cfg = dict(dev.config)
    cfg["link_bps"] = 1_000_000
    cfg["client"] = dict(FAST_CLIENT, **extra)
    dev.config_path.write_text(json.dumps(cfg), encoding="utf-8")
    os.chmod(dev.config_path, 0o600)
    dev.config.update(cfg)
    return dev.config_path


def readings_in_room(hs: Any, user: MatrixUser, dev: EnrolledDevice) -> list[dict[str, Any]]:
    """The org.lowbw.reading contents the device posted, oldest first."""
    out = []
    for ev in room_events(hs.url, user.access_token, dev.room_id, sender=dev.user_id):
        r = ev.get("content", {}).get("org.lowbw.reading")
        if r is not None:
            out.append(r)
    return out


def wait_for_readings(
    hs: Any, user: MatrixUser, dev: EnrolledDevice, n: int, timeout: float = 60.0
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    got: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        got = readings_in_room(hs, user, dev)
        if len(got) >= n:
            return got
        time.sleep(0.25)
    return got


def values_of(reading: dict[str, Any]) -> dict[str, str | None]:
    return {v["name"]: v["value"] for v in reading["values"]}


def post_command(hs: Any, user: MatrixUser, dev: EnrolledDevice, text: str, txn: str) -> str:
    status, body = matrix_call(
        hs.url,
        "PUT",
        "/_matrix/client/v3/rooms/%s/send/m.room.message/%s"
        % (urllib.parse.quote(dev.room_id, safe=""), txn),
        user.access_token,
        {"msgtype": "m.text", "body": "!%s %s" % (dev.name, text)},
    )
    assert status == 200, body
    return str(body["event_id"])


# ---- adapter processes ---------------------------------------------------------------------


class AdapterProcess:
    """``python -m lowbw.adapters.<module> --config FILE`` (or a script), with its log kept."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, *args], stdout=self._log, stderr=subprocess.STDOUT, cwd=str(ROOT), env=env
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return int(self.proc.returncode)

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout)
        self._log.close()
        return int(rc)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@pytest.fixture
def processes() -> Iterator[Callable[[list[str], Path], AdapterProcess]]:
    started: list[AdapterProcess] = []

    def start(args: list[str], log_path: Path) -> AdapterProcess:
        p = AdapterProcess(args, log_path)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.alive():
            p.stop(signal.SIGKILL)
