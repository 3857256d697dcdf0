"""The proxy's configuration (``proxy.toml``) and the files ``lowbw proxy init`` writes.

``proxy.toml`` has three tables; every path in it is relative to the directory
of the config file (absolute paths are kept as they are)::

    [proxy]
    bind = "127.0.0.1"          # UDP address for devices; anything else is an explicit choice
    port = 5683                 # 0 = any free port (tests)
    private_key = "proxy.key"   # 64 hex digits, mode 0600
    public_key = "proxy.pub"
    registry = "registry.sqlite3"  # an SQLite file, or "postgresql://user@host/db" (docs/scale-out.md)
    link_bps = 100              # radio bit rate: the proxy derives its CoAP timers from it
    mtu = 0                     # largest datagram the radio carries; 0: 256 up to 2400 bit/s, else 1024

    [homeserver]
    url = "http://127.0.0.1:8008"
    server_name = "example.org" # the part after ':' in user IDs; defaults to the URL's host
    verify_tls = true
    mode = "appservice"         # or "token"
    user_prefix = "lowbw_"      # device NAME is the Matrix user @<user_prefix>NAME:<server_name>
    registration_shared_secret = ""  # token mode: lets `lowbw device enroll` register users

    [appservice]                # required in appservice mode, optional in token mode
    registration = "appservice.yaml"
    id = "lowbw"
    sender_localpart = "lowbw"
    as_token = "..."            # proxy -> homeserver
    hs_token = "..."            # homeserver -> proxy (transaction pushes)
    listen = "127.0.0.1:9009"   # where the homeserver pushes transactions

    [metrics]                   # optional: Prometheus /metrics and the status page
    listen = "127.0.0.1:9464"   # HOST:PORT or a bare port (loopback); "" = off (the default)
    token = ""                  # required on every request when set; required off loopback
    per_device = true           # per-device series (false for large fleets)
    history_interval = 300      # seconds per point of the status page's charts
    history_points = 288        # points kept per device (24 h at 300 s)

    [cluster]                   # optional: several proxies on one fleet (docs/scale-out.md)
    nodes = 1                   # > 1 needs registry = "postgresql://..."
    node = 0                    # this process (`lowbw proxy run --node N` overrides it)
    forward = "127.0.0.1:0"     # where other nodes forward this node's frames
    node_timeout = 3.0          # seconds without a heartbeat: the node is dead

Only ``[homeserver] url`` (and, in appservice mode, both tokens) must be given;
every other key has the default shown.  An unknown table or key is an error,
so a typo never silently falls back to a default.  Errors name the file and the
key, never a token's value.

``write_default()`` is ``lowbw proxy init``: it creates the directory (0700),
the key pair, ``proxy.toml`` (0600: it holds the tokens) and, in appservice
mode, ``appservice.yaml`` (0600) for the homeserver's ``app_service_config_files``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import secrets
import stat
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowbw.metrics import MetricsConfigError, check_exposure, is_loopback, parse_listen
from lowbw.proxy import keyfile
from lowbw.proxy.limits import Limits
from lowbw.wire.errors import LowbwError

log = logging.getLogger(__name__)

CONFIG_NAME = "proxy.toml"
MODES = ("appservice", "token")
DEFAULT_BIND = "127.0.0.1"
DEFAULT_PORT = 5683
DEFAULT_LINK_BPS = 100
DEFAULT_APPSERVICE_LISTEN = "127.0.0.1:9009"
DEFAULT_USER_PREFIX = "lowbw_"
DEFAULT_APPSERVICE_ID = "lowbw"
DEFAULT_SENDER_LOCALPART = "lowbw"
TOKEN_BYTES = 32
DEFAULT_METRICS_LISTEN = "127.0.0.1:9464"
DEFAULT_HISTORY_INTERVAL = 300.0
DEFAULT_HISTORY_POINTS = 288

# Matrix user ID grammar (spec "User Identifiers"): lowercase localparts.
_LOCALPART_RE = re.compile(r"[a-z0-9._=/+-]+\Z")
_SERVER_NAME_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?\Z")


class ConfigError(LowbwError):
    """The config file is missing, unreadable, or a key in it is wrong (the message names it)."""


@dataclass
class ProxySection:
    bind: str = DEFAULT_BIND
    port: int = DEFAULT_PORT
    private_key: Path = Path("proxy.key")
    public_key: Path = Path("proxy.pub")
    # An SQLite file, or a PostgreSQL URL (a str starting postgresql://).
    registry: Path | str = Path("registry.sqlite3")
    link_bps: int = DEFAULT_LINK_BPS
    mtu: int = 0


@dataclass
class HomeserverSection:
    url: str
    server_name: str
    verify_tls: bool = True
    mode: str = "appservice"
    user_prefix: str = DEFAULT_USER_PREFIX
    registration_shared_secret: str = field(default="", repr=False)


@dataclass
class AppserviceSection:
    as_token: str = field(repr=False)
    hs_token: str = field(repr=False)
    registration: Path = Path("appservice.yaml")
    id: str = DEFAULT_APPSERVICE_ID
    sender_localpart: str = DEFAULT_SENDER_LOCALPART
    listen: str = DEFAULT_APPSERVICE_LISTEN

    @property
    def listen_host(self) -> str:
        return split_host_port(self.listen, "[appservice] listen")[0]

    @property
    def listen_port(self) -> int:
        return split_host_port(self.listen, "[appservice] listen")[1]

    @property
    def url(self) -> str:
        """The URL the homeserver pushes transactions to (the registration's ``url``)."""
        return "http://" + self.listen


@dataclass
class MetricsSection:
    """``[metrics]``: where ``/metrics`` and the status page are served (``lowbw.proxy.metrics``)."""

    listen: str = ""
    token: str = field(default="", repr=False)
    per_device: bool = True
    history_interval: float = DEFAULT_HISTORY_INTERVAL
    history_points: int = DEFAULT_HISTORY_POINTS

    @property
    def enabled(self) -> bool:
        return bool(self.listen)

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]


@dataclass
class ClusterSection:
    """``[cluster]``: several proxies on one fleet (``lowbw.proxy.cluster``, docs/scale-out.md).

    ``nodes`` 1 (the default) is a single proxy. With more, every node runs
    with the same key and PostgreSQL registry, ``node`` is its number
    (``lowbw proxy run --node N`` overrides it), ``forward`` is where the other
    nodes send it frames of its sessions, ``node_timeout`` how long a node may
    miss heartbeats before its sessions count as lost.
    """

    node: int = 0
    nodes: int = 1
    forward: str = "127.0.0.1:0"
    node_timeout: float = 3.0

    @property
    def enabled(self) -> bool:
        return self.nodes > 1

    @property
    def node_bits(self) -> int:
        return (self.nodes - 1).bit_length() if self.nodes > 1 else 0

    def check(self) -> None:
        if not 1 <= self.nodes <= 16:
            raise ConfigError("[cluster] nodes must be 1..16")
        if not 0 <= self.node < self.nodes:
            raise ConfigError(
                "[cluster] node must be 0..%d (nodes - 1), got %d" % (self.nodes - 1, self.node)
            )
        if self.node_timeout < 2.0:
            raise ConfigError("[cluster] node_timeout must be at least 2 s")
        host, sep, port = self.forward.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError("[cluster] forward must be HOST:PORT")


@dataclass
class ProxyConfig:
    """A loaded ``proxy.toml``; paths are absolute, resolved against the file's directory."""

    path: Path
    proxy: ProxySection
    homeserver: HomeserverSection
    appservice: AppserviceSection | None = None
    limits: Limits = field(default_factory=Limits)
    metrics: MetricsSection | None = None
    cluster: ClusterSection = field(default_factory=ClusterSection)

    @property
    def dir(self) -> Path:
        return self.path.parent

    @property
    def mode(self) -> str:
        return self.homeserver.mode

    @property
    def devices_dir(self) -> Path:
        """Where ``lowbw device enroll`` writes device configs by default."""
        return self.dir / "devices"

    def user_localpart(self, device_name: str) -> str:
        return self.homeserver.user_prefix + device_name

    def user_id(self, device_name: str) -> str:
        return "@%s:%s" % (self.user_localpart(device_name), self.homeserver.server_name)

    def user_namespace_regex(self) -> str:
        return user_namespace_regex(self.homeserver.user_prefix, self.homeserver.server_name)

    def read_private_key(self) -> bytes:
        return keyfile.read_private_key(self.proxy.private_key)

    def read_public_key(self) -> bytes:
        return keyfile.read_public_key(self.proxy.public_key)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ProxyConfig:
        return load(path)

    def to_toml(self) -> str:
        return _to_toml(self)


# -- small validators ---------------------------------------------------------


def split_host_port(value: str, what: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); ConfigError naming ``what`` otherwise."""
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError("%s must be HOST:PORT or [IPv6]:PORT, got %r" % (what, value))
        port_text = rest[1:]
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or ":" in host:
            raise ConfigError("%s must be HOST:PORT or [IPv6]:PORT, got %r" % (what, value))
    if not host:
        raise ConfigError("%s has no host: %r" % (what, value))
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ConfigError("%s has a bad port: %r" % (what, value))
    return host, int(port_text)


def join_host_port(host: str, port: int) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return "[%s]:%d" % (host, port)
    except ValueError:
        pass
    return "%s:%d" % (host, port)


def parse_homeserver_url(url: str, what: str = "homeserver URL") -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("%s must be http(s)://host[:port], got %r" % (what, url))
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError("%s must not carry credentials, a query or a fragment" % what)
    try:
        _ = parts.port
    except ValueError:
        raise ConfigError("%s has a bad port: %r" % (what, url))
    return parts


def server_name_from_url(url: str) -> str:
    """The Matrix server name an operator most likely means: the URL's host."""
    host = parse_homeserver_url(url).hostname or ""
    return "[%s]" % host if ":" in host else host


def check_server_name(name: str, what: str = "server name") -> str:
    if not _SERVER_NAME_RE.match(name):
        raise ConfigError("%s %r is not a Matrix server name (host or host:port)" % (what, name))
    return name


def check_localpart(value: str, what: str) -> str:
    if not _LOCALPART_RE.match(value):
        raise ConfigError("%s %r may use only a-z 0-9 . _ = / + -" % (what, value))
    return value


def user_namespace_regex(user_prefix: str, server_name: str) -> str:
    return "@%s.*:%s" % (re.escape(user_prefix), re.escape(server_name))


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


# -- loading --------------------------------------------------------------------


class _Table:
    """One TOML table being read: typed getters with errors naming ``[table] key``."""

    def __init__(self, source: Path, name: str, data: Any) -> None:
        if not isinstance(data, dict):
            raise ConfigError("%s: [%s] must be a table" % (source, name))
        self.source = source
        self.name = name
        self.data: dict[str, Any] = data
        self.used: set[str] = set()

    def _fail(self, key: str, why: str) -> ConfigError:
        return ConfigError("%s: [%s] %s %s" % (self.source, self.name, key, why))

    def _get(self, key: str, default: Any, kind: type | tuple[type, ...], kind_name: str) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is None:
                raise self._fail(key, "is missing")
            return default
        value = self.data[key]
        # bool is an int subclass; a port of `true` is a mistake, not 1.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self._fail(key, "must be %s" % kind_name)
        return value

    def string(self, key: str, default: str | None = None, *, empty_ok: bool = False) -> str:
        value: str = self._get(key, default, str, "a string")
        if not value and not empty_ok:
            raise self._fail(key, "must not be empty")
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value: int = self._get(key, default, int, "an integer")
        if not low <= value <= high:
            raise self._fail(key, "must be between %d and %d, got %d" % (low, high, value))
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value: bool = self._get(key, default, bool, "true or false")
        return value

    def path(self, key: str, default: str) -> Path:
        value = Path(self.string(key, default))
        return value if value.is_absolute() else (self.source.parent / value)

    def check(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(
                "%s: [%s] has unknown key(s): %s" % (self.source, self.name, ", ".join(unknown))
            )


def _registry_location(t: _Table) -> Path | str:
    """``[proxy] registry``: a PostgreSQL URL as it is, a file relative to the config."""
    from lowbw.proxy import regdb

    raw = t.data.get("registry")
    if isinstance(raw, str):
        url = regdb.fix_url(raw)
        if url is not None:
            t.used.add("registry")
            return url
    return t.path("registry", "registry.sqlite3")


def load(path: str | os.PathLike[str]) -> ProxyConfig:
    """Read and check ``proxy.toml``; ConfigError (naming the key) on anything wrong."""
    source = Path(os.path.abspath(path))
    try:
        with open(source, "rb") as src:
            data = tomllib.load(src)
        st = os.stat(source)
    except FileNotFoundError:
        raise ConfigError("config file not found: %s (create one with `lowbw proxy init`)" % source)
    except IsADirectoryError:
        raise ConfigError("%s is a directory; pass the proxy.toml inside it" % source)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("%s is not valid TOML: %s" % (source, exc))
    except UnicodeDecodeError:
        raise ConfigError("%s is not UTF-8 text" % source)
    except OSError as exc:
        raise ConfigError("cannot read config file %s: %s" % (source, exc.strerror or type(exc).__name__))

    unknown = sorted(set(data) - {"proxy", "homeserver", "appservice", "limits", "metrics", "cluster"})
    if unknown:
        raise ConfigError("%s: unknown table(s): %s" % (source, ", ".join(unknown)))
    if "homeserver" not in data:
        raise ConfigError("%s: [homeserver] table is missing" % source)

    t = _Table(source, "proxy", data.get("proxy", {}))
    proxy = ProxySection(
        bind=t.string("bind", DEFAULT_BIND),
        port=t.integer("port", DEFAULT_PORT, 0, 65535),
        private_key=t.path("private_key", "proxy.key"),
        public_key=t.path("public_key", "proxy.pub"),
        registry=_registry_location(t),
        link_bps=t.integer("link_bps", DEFAULT_LINK_BPS, 1, 1_000_000_000),
        mtu=t.integer("mtu", 0, 0, 65507),
    )
    t.check()

    t = _Table(source, "homeserver", data["homeserver"])
    url = t.string("url")
    parse_homeserver_url(url, "%s: [homeserver] url" % source)
    server_name = check_server_name(
        t.string("server_name", server_name_from_url(url)), "%s: [homeserver] server_name" % source
    )
    user_prefix = check_localpart(
        t.string("user_prefix", DEFAULT_USER_PREFIX), "%s: [homeserver] user_prefix" % source
    )
    mode = t.string("mode", "appservice")
    if mode not in MODES:
        raise ConfigError(
            "%s: [homeserver] mode must be one of %s, got %r" % (source, ", ".join(MODES), mode)
        )
    homeserver = HomeserverSection(
        url=url,
        server_name=server_name,
        verify_tls=t.boolean("verify_tls", True),
        mode=mode,
        user_prefix=user_prefix,
        registration_shared_secret=t.string("registration_shared_secret", "", empty_ok=True),
    )
    t.check()

    appservice = None
    if "appservice" in data or mode == "appservice":
        if "appservice" not in data:
            raise ConfigError("%s: [appservice] table is missing (needed in appservice mode)" % source)
        t = _Table(source, "appservice", data["appservice"])
        appservice = AppserviceSection(
            registration=t.path("registration", "appservice.yaml"),
            id=t.string("id", DEFAULT_APPSERVICE_ID),
            sender_localpart=check_localpart(
                t.string("sender_localpart", DEFAULT_SENDER_LOCALPART),
                "%s: [appservice] sender_localpart" % source,
            ),
            as_token=t.string("as_token"),
            hs_token=t.string("hs_token"),
            listen=t.string("listen", DEFAULT_APPSERVICE_LISTEN),
        )
        split_host_port(appservice.listen, "%s: [appservice] listen" % source)
        t.check()

    if stat.S_IMODE(st.st_mode) & 0o077 and (appservice is not None or homeserver.registration_shared_secret):
        log.warning("%s holds tokens but others may read it (mode %04o)", source, stat.S_IMODE(st.st_mode))
    limits = _load_limits(_Table(source, "limits", data.get("limits", {})))
    metrics = _load_metrics(_Table(source, "metrics", data["metrics"])) if "metrics" in data else None
    if metrics is not None and metrics.token and stat.S_IMODE(st.st_mode) & 0o077:
        log.warning(
            "%s holds the metrics token but others may read it (mode %04o)", source, stat.S_IMODE(st.st_mode)
        )
    cluster = _load_cluster(_Table(source, "cluster", data.get("cluster", {})))
    if cluster.enabled and isinstance(proxy.registry, Path):
        raise ConfigError("%s: [cluster] nodes > 1 needs [proxy] registry = \"postgresql://...\"" % source)
    return ProxyConfig(
        path=source,
        proxy=proxy,
        homeserver=homeserver,
        appservice=appservice,
        limits=limits,
        metrics=metrics,
        cluster=cluster,
    )


def _load_cluster(t: _Table) -> ClusterSection:
    timeout = t.data.get("node_timeout", 3.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise t._fail("node_timeout", "must be a number")
    t.used.add("node_timeout")
    c = ClusterSection(
        node=t.integer("node", 0, 0, 15),
        nodes=t.integer("nodes", 1, 1, 16),
        forward=t.string("forward", "127.0.0.1:0"),
        node_timeout=float(timeout),
    )
    t.check()
    try:
        c.check()
    except ConfigError as exc:
        raise ConfigError("%s: %s" % (t.source, exc.message or exc)) from None
    return c


def _load_metrics(t: _Table) -> MetricsSection:
    """``[metrics]``: off unless ``listen`` is set; off loopback only with a token."""
    t.used.add("listen")
    raw = t.data.get("listen", "")
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise t._fail("listen", "must be HOST:PORT or a port")
    listen = str(raw).strip()
    token = t.string("token", "", empty_ok=True)
    interval = t._get("history_interval", DEFAULT_HISTORY_INTERVAL, (int, float), "a number")
    if isinstance(interval, bool) or not 0.05 <= interval <= 86400:
        raise t._fail("history_interval", "must be a number of seconds between 0.05 and 86400")
    section = MetricsSection(
        listen=listen,
        token=token,
        per_device=t.boolean("per_device", True),
        history_interval=float(interval),
        history_points=t.integer("history_points", DEFAULT_HISTORY_POINTS, 1, 100000),
    )
    t.check()
    if listen:
        try:
            host, port = parse_listen(raw)
            check_exposure(host, token)
        except MetricsConfigError as exc:
            raise ConfigError("%s: %s" % (t.source, exc.message or exc)) from None
        section.listen = join_host_port(host, port)
    return section


def _load_limits(t: _Table) -> Limits:
    """``[limits]``: every key optional (defaults in ``lowbw.proxy.limits``), none negative."""
    defaults = Limits()
    values: dict[str, Any] = {}
    for key in Limits.keys():
        default = getattr(defaults, key)
        if isinstance(default, int):
            values[key] = t.integer(key, default, 0, 2**31 - 1)
        else:
            value = t._get(key, default, (int, float), "a number")
            if isinstance(value, bool) or not 0 <= value <= 1e9:
                raise t._fail(key, "must be a number between 0 and 1e9")
            values[key] = float(value)
    t.check()
    return Limits(**values)


# -- writing --------------------------------------------------------------------


def toml_string(value: str) -> str:
    """A TOML basic string: quote, backslash and control characters escaped."""
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif code < 0x20 or code == 0x7F:
            out.append("\\u%04x" % code)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _rel(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def _to_toml(cfg: ProxyConfig) -> str:
    base = cfg.dir
    p, h = cfg.proxy, cfg.homeserver
    lines = [
        "# lowbw proxy configuration (written by `lowbw proxy init`).",
        "# Paths are relative to this file's directory. This file holds tokens: keep it 0600.",
        "",
        "[proxy]",
        "# UDP address the devices reach. 127.0.0.1 unless you choose otherwise.",
        "bind = %s" % toml_string(p.bind),
        "port = %d" % p.port,
        "private_key = %s" % toml_string(_rel(p.private_key, base)),
        "public_key = %s" % toml_string(_rel(p.public_key, base)),
        "# An SQLite file, or postgresql://USER@HOST/DB (several proxies on one fleet:",
        "# docs/scale-out.md).",
        "registry = %s"
        % toml_string(p.registry if isinstance(p.registry, str) else _rel(p.registry, base)),
        "# Radio link bit rate; CoAP retransmission timers are derived from it.",
        "link_bps = %d" % p.link_bps,
        "# Largest datagram the radio carries (sizes block-wise transfers); 0: 256 B up to",
        "# 2400 bit/s, else 1024 B.",
        "mtu = %d" % p.mtu,
        "",
        "[homeserver]",
        "url = %s" % toml_string(h.url),
        "server_name = %s" % toml_string(h.server_name),
        "verify_tls = %s" % ("true" if h.verify_tls else "false"),
        '# "appservice" (the proxy acts for its devices with one appservice token) or',
        '# "token" (one access token per device, for homeservers without an appservice).',
        "mode = %s" % toml_string(h.mode),
        "# Device NAME is the Matrix user @<user_prefix>NAME:<server_name>.",
        "# In appservice mode it must match the namespace in the registration file.",
        "user_prefix = %s" % toml_string(h.user_prefix),
        "# Token mode: the homeserver's registration_shared_secret, so that",
        "# `lowbw device enroll` can register device users. Leave empty otherwise.",
        "registration_shared_secret = %s" % toml_string(h.registration_shared_secret),
    ]
    a = cfg.appservice
    if a is not None:
        lines += [
            "",
            "[appservice]",
            "# The registration file to list in the homeserver's app_service_config_files.",
            "registration = %s" % toml_string(_rel(a.registration, base)),
            "id = %s" % toml_string(a.id),
            "sender_localpart = %s" % toml_string(a.sender_localpart),
            "as_token = %s" % toml_string(a.as_token),
            "hs_token = %s" % toml_string(a.hs_token),
            "# The homeserver pushes room events (device commands) to http://<listen>.",
            "listen = %s" % toml_string(a.listen),
        ]
    m = cfg.metrics
    if m is not None and m.enabled:
        lines += [
            "",
            "[metrics]",
            "# Prometheus metrics at http://<listen>/metrics and the status page at http://<listen>/.",
            "listen = %s" % toml_string(m.listen),
            "# Required on every request when set (Authorization: Bearer <token>, or HTTP Basic",
            "# with the token as password); required when listen is not a loopback address.",
            "token = %s" % toml_string(m.token),
            "# Per-device series (last seen, bytes, airtime, readings, authentication failures).",
            "per_device = %s" % ("true" if m.per_device else "false"),
        ]
    c = cfg.cluster
    if c.enabled:
        lines += [
            "",
            "[cluster]",
            "# Several proxies on one fleet (docs/scale-out.md); `lowbw proxy run --node N` sets node.",
            "node = %d" % c.node,
            "nodes = %d" % c.nodes,
            "forward = %s" % toml_string(c.forward),
            "node_timeout = %s" % repr(float(c.node_timeout)),
        ]
    return "\n".join(lines) + "\n"


def _yaml_scalar(value: str) -> str:
    # A JSON string of ASCII is a valid YAML double-quoted scalar.
    return json.dumps(value, ensure_ascii=True)


def appservice_registration_yaml(cfg: ProxyConfig) -> str:
    """The application-service registration file for the homeserver, as YAML."""
    a = cfg.appservice
    if a is None:
        raise ConfigError("token mode has no appservice registration")
    return "\n".join(
        [
            "# Application-service registration for the lowbw proxy.",
            "# List this file in the homeserver's app_service_config_files and restart it.",
            "# It holds both tokens: keep it readable only by the homeserver and the proxy.",
            "id: %s" % _yaml_scalar(a.id),
            "url: %s" % _yaml_scalar(a.url),
            "as_token: %s" % _yaml_scalar(a.as_token),
            "hs_token: %s" % _yaml_scalar(a.hs_token),
            "sender_localpart: %s" % _yaml_scalar(a.sender_localpart),
            "rate_limited: false",
            "namespaces:",
            "  users:",
            "    - exclusive: true",
            "      regex: %s" % _yaml_scalar(cfg.user_namespace_regex()),
            "  aliases: []",
            "  rooms: []",
            "",
        ]
    )


def _init_registry(registry: str | None, target: Path) -> Path | str:
    """``lowbw proxy init --registry``: a PostgreSQL URL, a file, or registry.sqlite3 in DIR."""
    from lowbw.proxy import regdb

    if not registry:
        return target / "registry.sqlite3"
    url = regdb.fix_url(registry)
    if url is not None:
        return url
    path = Path(registry)
    return path if path.is_absolute() else Path(os.path.abspath(path))


@dataclass
class InitResult:
    config: ProxyConfig
    written: list[tuple[Path, int]]  # (path, mode)
    created_dir: bool
    kept_registry: bool


def write_default(
    directory: str | os.PathLike[str],
    homeserver_url: str,
    *,
    server_name: str | None = None,
    bind: str = DEFAULT_BIND,
    port: int = DEFAULT_PORT,
    link_bps: int = DEFAULT_LINK_BPS,
    mtu: int = 0,
    mode: str = "appservice",
    appservice_listen: str = DEFAULT_APPSERVICE_LISTEN,
    verify_tls: bool = True,
    user_prefix: str = DEFAULT_USER_PREFIX,
    appservice_id: str = DEFAULT_APPSERVICE_ID,
    sender_localpart: str = DEFAULT_SENDER_LOCALPART,
    as_token: str | None = None,
    hs_token: str | None = None,
    registration_shared_secret: str = "",
    metrics_listen: str | None = None,
    metrics_token: str | None = None,
    registry: str | None = None,
    force: bool = False,
) -> InitResult:
    """``lowbw proxy init``: directory, key pair, proxy.toml and the appservice registration.

    Tokens are random (``secrets.token_urlsafe(32)``) unless given (tests pass
    the ones their homeserver already loaded).  Existing files are an error
    unless ``force``; an existing registry is never touched.
    """
    parse_homeserver_url(homeserver_url)
    if server_name is None:
        server_name = server_name_from_url(homeserver_url)
    check_server_name(server_name)
    check_localpart(user_prefix, "user prefix")
    check_localpart(sender_localpart, "sender localpart")
    if mode not in MODES:
        raise ConfigError("mode must be one of %s" % ", ".join(MODES))
    if not 0 <= port <= 65535:
        raise ConfigError("port must be between 0 and 65535")
    if link_bps < 1:
        raise ConfigError("link_bps must be positive")
    if not (mtu == 0 or 64 <= mtu <= 65507):
        raise ConfigError("mtu must be 64..65507 (or 0: by link_bps)")
    split_host_port(appservice_listen, "appservice listen address")
    metrics = None
    if metrics_listen:
        try:
            m_host, m_port = parse_listen(metrics_listen, "metrics listen address")
        except MetricsConfigError as exc:
            raise ConfigError(exc.message or str(exc)) from None
        if metrics_token is None and not is_loopback(m_host):
            # Off loopback the listener needs a token: make one (it is in proxy.toml, 0600).
            metrics_token = new_token()
        metrics = MetricsSection(listen=join_host_port(m_host, m_port), token=metrics_token or "")

    target = Path(os.path.abspath(directory))
    cfg = ProxyConfig(
        path=target / CONFIG_NAME,
        proxy=ProxySection(
            bind=bind,
            port=port,
            private_key=target / "proxy.key",
            public_key=target / "proxy.pub",
            registry=_init_registry(registry, target),
            link_bps=link_bps,
            mtu=mtu,
        ),
        homeserver=HomeserverSection(
            url=homeserver_url,
            server_name=server_name,
            verify_tls=verify_tls,
            mode=mode,
            user_prefix=user_prefix,
            registration_shared_secret=registration_shared_secret,
        ),
        appservice=(
            AppserviceSection(
                registration=target / "appservice.yaml",
                id=appservice_id,
                sender_localpart=sender_localpart,
                as_token=as_token or new_token(),
                hs_token=hs_token or new_token(),
                listen=appservice_listen,
            )
            if mode == "appservice"
            else None
        ),
        metrics=metrics,
    )
    files = [cfg.path, cfg.proxy.private_key, cfg.proxy.public_key]
    if cfg.appservice is not None:
        files.append(cfg.appservice.registration)
    if not force:
        present = [str(f) for f in files if os.path.lexists(f)]
        if present:
            raise ConfigError("refusing to overwrite %s (use --force)" % ", ".join(present))

    created_dir = not target.exists()
    if created_dir:
        target.mkdir(mode=0o700, parents=True)
        # mkdir's mode is filtered through the umask; this one must not be.
        os.chmod(target, 0o700)
    elif not target.is_dir():
        raise ConfigError("%s exists and is not a directory" % target)

    priv, pub = keyfile.generate_keypair()
    written: list[tuple[Path, int]] = []
    keyfile.write_private_key(cfg.proxy.private_key, priv, overwrite=force)
    written.append((cfg.proxy.private_key, keyfile.PRIVATE_MODE))
    keyfile.write_public_key(cfg.proxy.public_key, pub, overwrite=force)
    written.append((cfg.proxy.public_key, keyfile.PUBLIC_MODE))
    if cfg.appservice is not None:
        keyfile.write_secret_text(
            cfg.appservice.registration, appservice_registration_yaml(cfg), overwrite=force
        )
        written.append((cfg.appservice.registration, keyfile.PRIVATE_MODE))
    # Last, so a half-finished init never leaves a config that points at nothing.
    keyfile.write_secret_text(cfg.path, cfg.to_toml(), overwrite=force)
    written.append((cfg.path, keyfile.PRIVATE_MODE))
    return InitResult(
        config=cfg,
        written=written,
        created_dir=created_dir,
        kept_registry=isinstance(cfg.proxy.registry, Path) and cfg.proxy.registry.exists(),
    )
