"""The client-proxy's configuration file (TOML), written by ``lowbw proxy enroll-client``.

::

    # lowbw client-proxy "laptop" (mode 0600: holds its private key)
    name = "laptop"
    listen = "127.0.0.1:8008"          # where the Matrix client connects (HTTP)
    proxy = "203.0.113.5:5683"         # the lowbw proxy (or the radio in front of it), UDP
    proxy_public_key = "<64 hex>"      # the proxy's Noise static key
    private_key = "<64 hex>"           # this client-proxy's Noise static key (enrolled)
    link_bps = 1000                    # the radio's bit rate: sizes timers and blocks
    request_timeout = 300              # seconds before a request is answered 504
    dead_link_timeout = 0              # silence (s) after which the link is given up (0: 4 ACK timeouts)
    dictionary = true                  # offer the preset body dictionary (false: to measure it)
    identifier_refs = true             # IDs as references, numbered event types (false: to measure)
    short_txn = true                   # 8-character transaction IDs on the air (false: to measure)
    byte_strings = true                # base64 (keys, ciphertexts) as CBOR byte strings (false: to measure)
    mtu = 256                          # largest datagram the radio carries (default by link_bps)
    profile = "compact"                # the link profile enrolled: compact (KK, 8-byte tags) or standard
    metrics_listen = "127.0.0.1:9468"  # Prometheus /metrics (off unless set; a bare port: 127.0.0.1)
    metrics_token = ""                 # required on every /metrics request when set (needed off loopback)

Every key but the keys and ``proxy`` has a default; ``--listen``, ``--proxy``
and ``--link-bps`` on the command line override the file. A key not listed
here (a typo such as ``listn``) or any table is refused, naming the file and
the key: a misspelt ``listen`` must not start the client-proxy on a default.
``metrics_listen`` follows the proxy's ``[metrics] listen`` rules
(``lowbw.metrics``): a bare port is loopback, and anything but loopback needs
``metrics_token`` (refused at load otherwise).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowbw.metrics import MetricsConfigError, check_exposure, parse_listen
from lowbw.proxy import keyfile
from lowbw.wire.errors import LowbwError

DEFAULT_LISTEN = "127.0.0.1:8008"
DEFAULT_LINK_BPS = 1000.0
DEFAULT_REQUEST_TIMEOUT = 300.0
# Every key a client-proxy config may have (anything else is refused).
KNOWN_KEYS = frozenset(
    (
        "name",
        "listen",
        "proxy",
        "proxy_public_key",
        "private_key",
        "link_bps",
        "request_timeout",
        "echo_hold",
        "local_receipts",
        "dead_link_timeout",
        "dictionary",
        "identifier_refs",
        "short_txn",
        "byte_strings",
        "mtu",
        "profile",
        "metrics_listen",
        "metrics_token",
    )
)


def default_mtu(link_bps: float) -> int:
    """256-byte frames on slow radios (LoRa, the 100 bit/s presets), 1024 above 2400 bit/s."""
    return 256 if link_bps <= 2400 else 1024


DEFAULT_ECHO_HOLD = 120.0
MAX_ECHO_HOLD = 600


class ClientProxyConfigError(LowbwError):
    """The client-proxy's configuration is missing, unreadable or wrong."""


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ClientProxyConfigError("%s %r: expected HOST:PORT" % (what, text))
    return host, int(port)


@dataclass
class ClientProxyConfig:
    path: Path
    name: str
    listen: str
    proxy_host: str
    proxy_port: int
    proxy_public_key: bytes
    private_key: bytes
    link_bps: float = DEFAULT_LINK_BPS
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    dead_link_timeout: float = 0.0  # 0: DEAD_LINK_ACK_TIMEOUTS ACK timeouts at link_bps
    dictionary: bool = True
    identifier_refs: bool = True
    short_txn: bool = True
    byte_strings: bool = True
    mtu: int = 0  # 0: by link_bps (default_mtu)
    # The link profile enrolled (``lowbw proxy enroll-client --profile``): "compact"
    # (Noise KK, 8-byte tags; docs/PROTOCOL.md "Compact link profile") or "standard".
    profile: str = "standard"
    # Seconds the proxy may hold a sync result holding only the client's own echoes (0: off).
    echo_hold: float = DEFAULT_ECHO_HOLD
    # Receipts, read markers and typing answered here, carried unconfirmed (NON, No-Response).
    local_receipts: bool = True
    metrics_listen: str = ""  # "": no /metrics listener
    metrics_token: str = ""

    @property
    def radio_mtu(self) -> int:
        return self.mtu or default_mtu(self.link_bps)

    def __repr__(self) -> str:  # never the private key
        return "<ClientProxyConfig %s listen=%s proxy=%s:%d>" % (
            self.name,
            self.listen,
            self.proxy_host,
            self.proxy_port,
        )

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_hostport(self.listen, "listen")

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """(host, port) of the ``/metrics`` listener, None when off (checked: ``check_metrics``)."""
        if not self.metrics_listen:
            return None
        return parse_listen(self.metrics_listen, "metrics_listen")

    def to_toml(self) -> str:
        host = "[%s]" % self.proxy_host if ":" in self.proxy_host else self.proxy_host
        return (
            '# lowbw client-proxy "%s" (mode 0600: it holds its private key)\n'
            "# Run it with: lowbw client-proxy --config %s\n"
            'name = "%s"\n'
            'listen = "%s"\n'
            'proxy = "%s:%d"\n'
            'proxy_public_key = "%s"\n'
            'private_key = "%s"\n'
            "link_bps = %g\n"
            "request_timeout = %g\n"
            "dictionary = %s\n"
            "%s"
            "%s"
            "%s"
            "%s"
            "%s"
            % (
                self.name,
                self.path,
                self.name,
                self.listen,
                host,
                self.proxy_port,
                keyfile.key_to_hex(self.proxy_public_key),
                keyfile.key_to_hex(self.private_key),
                self.link_bps,
                self.request_timeout,
                "true" if self.dictionary else "false",
                "mtu = %d\n" % self.mtu if self.mtu else "",
                'profile = "%s"\n' % self.profile,
                "dead_link_timeout = %g\n" % self.dead_link_timeout if self.dead_link_timeout else "",
                'metrics_listen = "%s"\n' % self.metrics_listen if self.metrics_listen else "",
                'metrics_token = "%s"\n' % self.metrics_token if self.metrics_token else "",
            )
        )


def check_metrics(listen: str, token: str, what: str = "metrics_listen") -> str:
    """``listen`` checked as the proxy's ``[metrics] listen`` is (``lowbw.metrics``):
    ``HOST:PORT``, ``[IPv6]:PORT`` or a bare port (127.0.0.1), and loopback unless
    ``token`` is set. Returns it as ``HOST:PORT`` ("" stays "": off)."""
    if not listen:
        return ""
    try:
        host, port = parse_listen(listen, what)
        check_exposure(host, token, what)
    except MetricsConfigError as exc:
        message = exc.message or str(exc)
        if "not loopback" in message:
            message = (
                "%s is on %s, not loopback: set metrics_token (a random string; Prometheus "
                "sends it as a bearer token) or listen on 127.0.0.1" % (what, host)
            )
        raise ClientProxyConfigError(message) from None
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def _number(data: dict[str, Any], key: str, default: float, zero_ok: bool = False) -> float:
    value = data.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or value < 0
        or (value == 0 and not zero_ok)
    ):
        raise ClientProxyConfigError("%s must be a positive number" % key)
    return float(value)


def echo_hold_seconds(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_ECHO_HOLD:
        raise ClientProxyConfigError("%s must be a number of seconds 0..%d (0: off)" % (what, MAX_ECHO_HOLD))
    return float(value)


def _check_keys(p: Path, data: dict[str, Any]) -> None:
    """Refuse what the client-proxy would otherwise silently ignore (as the proxy's config does)."""
    tables = sorted(k for k, v in data.items() if isinstance(v, dict))
    if tables:
        raise ClientProxyConfigError(
            "%s: unknown table(s): %s (this file has keys only)" % (p, ", ".join(tables))
        )
    unknown = sorted(set(data) - KNOWN_KEYS)
    if unknown:
        raise ClientProxyConfigError(
            "%s: unknown key(s): %s (known: %s)" % (p, ", ".join(unknown), ", ".join(sorted(KNOWN_KEYS)))
        )


def load(path: str | os.PathLike[str]) -> ClientProxyConfig:
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except OSError as exc:
        raise ClientProxyConfigError("cannot read %s: %s" % (p, exc.strerror or exc))
    except (tomllib.TOMLDecodeError, UnicodeError) as exc:
        raise ClientProxyConfigError("%s is not valid TOML: %s" % (p, exc))
    if os.name == "posix" and p.stat().st_mode & 0o077:
        raise ClientProxyConfigError("%s is readable by others; it holds a private key (chmod 600)" % p)
    _check_keys(p, data)
    for key in ("proxy", "proxy_public_key", "private_key"):
        if not isinstance(data.get(key), str):
            raise ClientProxyConfigError("%s: %s is missing (a string)" % (p, key))
    host, port = parse_hostport(data["proxy"], "proxy")
    listen = data.get("listen", DEFAULT_LISTEN)
    if not isinstance(listen, str):
        raise ClientProxyConfigError("listen must be HOST:PORT")
    parse_hostport(listen, "listen")
    try:
        proxy_pub = keyfile.key_from_hex(data["proxy_public_key"], "proxy_public_key")
        priv = keyfile.key_from_hex(data["private_key"], "private_key")
    except keyfile.KeyFileError as exc:
        raise ClientProxyConfigError("%s: %s" % (p, exc.message))
    mtu = data.get("mtu", 0)
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not (mtu == 0 or 64 <= mtu <= 65507):
        raise ClientProxyConfigError("mtu must be an integer 64..65507 (or 0: by link_bps)")
    # Absent: standard, as every client-proxy enrolled before profiles existed.
    profile = data.get("profile", "standard")
    if profile not in ("compact", "standard"):
        raise ClientProxyConfigError('%s: profile must be "compact" or "standard"' % p)
    switches = {}
    for key in ("dictionary", "identifier_refs", "short_txn", "byte_strings", "local_receipts"):
        switches[key] = data.get(key, True)
        if not isinstance(switches[key], bool):
            raise ClientProxyConfigError("%s must be true or false" % key)
    metrics_listen = data.get("metrics_listen", "")
    if isinstance(metrics_listen, bool) or not isinstance(metrics_listen, (str, int)):
        raise ClientProxyConfigError("%s: metrics_listen must be HOST:PORT or a port" % p)
    metrics_token = data.get("metrics_token", "")
    if not isinstance(metrics_token, str):
        raise ClientProxyConfigError("%s: metrics_token must be a string" % p)
    try:
        metrics_listen = check_metrics(str(metrics_listen) if metrics_listen != "" else "", metrics_token)
    except ClientProxyConfigError as exc:
        raise ClientProxyConfigError("%s: %s" % (p, exc.message)) from None
    return ClientProxyConfig(
        path=p,
        metrics_listen=metrics_listen,
        metrics_token=metrics_token,
        dictionary=switches["dictionary"],
        identifier_refs=switches["identifier_refs"],
        short_txn=switches["short_txn"],
        byte_strings=switches["byte_strings"],
        local_receipts=switches["local_receipts"],
        echo_hold=echo_hold_seconds(data.get("echo_hold", DEFAULT_ECHO_HOLD), "echo_hold"),
        mtu=mtu,
        profile=profile,
        name=str(data.get("name", p.stem)),
        listen=listen,
        proxy_host=host,
        proxy_port=port,
        proxy_public_key=proxy_pub,
        private_key=priv,
        link_bps=_number(data, "link_bps", DEFAULT_LINK_BPS),
        request_timeout=_number(data, "request_timeout", DEFAULT_REQUEST_TIMEOUT),
        dead_link_timeout=_number(data, "dead_link_timeout", 0.0, zero_ok=True),
    )
