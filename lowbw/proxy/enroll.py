"""Enrolling a device: key pair, Matrix identity, room, registry record, device config.

``enroll()`` is ``lowbw device enroll``.  In order:

1. Everything local is checked before the homeserver is touched: the name (it
   becomes the Matrix localpart ``<user_prefix><name>`` and a file name), the
   schema, the target file (an existing device config is never overwritten: it
   holds another private key), and that the registry has no device of that name.
2. A fresh X25519 key pair for the device.
3. The Matrix user.  Appservice mode: ``POST /register`` with the appservice
   token (a user left over from an interrupted enrollment is reused).  Token mode:
   Synapse's shared-secret admin registration (``/_synapse/admin/v1/register``,
   HMAC-SHA1 over nonce, user, password, admin flag); the access token it returns
   is kept in the registry, the random password is thrown away.
4. The room.  ``new``: the device user creates a private room and invites the
   ``--invite`` users; the room is end-to-end encrypted (``m.room.encryption``,
   ``m.megolm.v1.aes-sha2``) unless ``encrypted=False`` (``--unencrypted``).
   Otherwise the device user joins the room ID or alias (it must be public or
   the user invited), and whether that room is encrypted is read from its
   state. An encrypted device's Matrix device and keys are made by the proxy
   (``lowbw.proxy.e2ee``) when it first needs them.
5. The device config JSON (0600: it holds the device's private key), then the
   registry record.  If the record cannot be added the config file is removed.

The link profile (``--profile``, docs/PROTOCOL.md "Compact link profile") is
recorded in both: ``compact`` (Noise KK, 8-byte tags, compressed CoAP headers)
or ``standard`` (Noise IK, 16-byte tags). Without the flag it follows the
proxy's ``link_bps``: compact below ``COMPACT_BELOW_BPS``.

Schema specs (``--schema``), one slot each, slot index = order given::

    temperature                  slot "temperature", one field, no unit, scale 0
    temperature:°C:1             one field, unit °C, integer values are tenths
    climate=temperature:°C:1,humidity:%
                                 slot "climate", two fields

A schema file holds the same, one spec per line (``#`` comments), or JSON: a
list of slots ``[{"name": ..., "fields": [{"name", "unit", "scale"}]}]`` as in
the device config.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowbw.proxy import keyfile
from lowbw.proxy.config import ProxyConfig
from lowbw.proxy.homeserver import CLIENT_V3, Homeserver, HomeserverUnavailable, HttpResult, encode_path
from lowbw.proxy.registry import PROFILES, DeviceRecord, Registry
from lowbw.wire import handshake, reading
from lowbw.wire.errors import LowbwError

log = logging.getLogger(__name__)

DEVICE_CONFIG_VERSION = 1
NEW_ROOM = "new"
DEFAULT_EVENT_TYPES = ("m.room.message",)
PERMISSIONS = ("create_room",)
MAX_NAME_LEN = 32
MAX_SCALE = 18
MAX_UNIT_LEN = 16
MAX_FIELD_NAME_LEN = 32
# Links slower than this get the compact link profile unless --profile says otherwise.
COMPACT_BELOW_BPS = 10_000


def default_profile(link_bps: float) -> str:
    """The link profile a device enrolled for a ``link_bps`` link gets by default."""
    return "compact" if link_bps < COMPACT_BELOW_BPS else "standard"


def check_profile(profile: str | None, link_bps: float) -> str:
    if profile is None:
        return default_profile(link_bps)
    if profile not in PROFILES:
        raise EnrollError("--profile is one of %s, not %r" % (", ".join(PROFILES), profile))
    return profile


# Lowercase because it becomes a Matrix localpart; no dots because it is one
# component of the transaction ID `lowbw.<name>.<msgnum>.<i>`; and a file name.
_DEVICE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")
_FIELD_NAME_RE = re.compile(r"[\w.-]+\Z")
_USER_ID_RE = re.compile(r"@[^:\s]+:[^\s]+\Z")
_EVENT_TYPE_RE = re.compile(r"[A-Za-z0-9._-]+\Z")
_WILDCARD_BINDS = ("0.0.0.0", "::", "")


class EnrollError(LowbwError):
    """Enrollment cannot go ahead (bad input, name taken, homeserver refused)."""


@dataclass
class EnrollResult:
    record: DeviceRecord
    config_path: Path
    room_id: str
    created_room: bool


# -- checks and schema parsing -------------------------------------------------


def check_device_name(name: str) -> str:
    if len(name) > MAX_NAME_LEN or not _DEVICE_NAME_RE.match(name):
        raise EnrollError(
            "device name %r: 1..%d characters of a-z 0-9 _ -, starting with a letter or digit"
            % (name, MAX_NAME_LEN)
        )
    return name


def check_user_id(user_id: str) -> str:
    if not _USER_ID_RE.match(user_id):
        raise EnrollError("%r is not a Matrix user ID (@user:server)" % user_id)
    return user_id


def check_event_type(event_type: str) -> str:
    if not _EVENT_TYPE_RE.match(event_type):
        raise EnrollError("%r is not an event type (letters, digits . _ -)" % event_type)
    return event_type


def check_permission(permission: str) -> str:
    if permission not in PERMISSIONS:
        raise EnrollError("unknown permission %r (known: %s)" % (permission, ", ".join(PERMISSIONS)))
    return permission


def check_room(room: str) -> str:
    well_formed = room[:1] in ("!", "#") and len(room) > 1 and not any(c.isspace() for c in room)
    if room != NEW_ROOM and not well_formed:
        raise EnrollError("room %r: give a room ID (!...), an alias (#...:server) or `new`" % room)
    return room


def _field(name: Any, unit: Any, scale: Any, where: str) -> dict[str, Any]:
    if not isinstance(name, str) or len(name) > MAX_FIELD_NAME_LEN or not _FIELD_NAME_RE.match(name):
        raise EnrollError(
            "%s: field name %r: 1..%d letters, digits, _ . -" % (where, name, MAX_FIELD_NAME_LEN)
        )
    if not isinstance(unit, str) or len(unit) > MAX_UNIT_LEN or any(not c.isprintable() for c in unit):
        raise EnrollError("%s: unit %r: up to %d printable characters" % (where, unit, MAX_UNIT_LEN))
    if isinstance(scale, str):
        text = scale.strip()
        if not (text.isascii() and text.isdigit()):
            raise EnrollError("%s: scale %r must be an integer 0..%d" % (where, scale, MAX_SCALE))
        scale = int(text)
    if not isinstance(scale, int) or isinstance(scale, bool) or not 0 <= scale <= MAX_SCALE:
        raise EnrollError("%s: scale %r must be an integer 0..%d" % (where, scale, MAX_SCALE))
    return {"name": name, "unit": unit, "scale": scale}


def _field_spec(text: str, where: str) -> dict[str, Any]:
    parts = text.split(":")
    if len(parts) > 3:
        raise EnrollError("%s: %r has more than name:unit:scale" % (where, text))
    name = parts[0].strip()
    unit = parts[1].strip() if len(parts) > 1 else ""
    scale = parts[2] if len(parts) > 2 else "0"
    return _field(name, unit, scale, where)


def parse_schema_spec(spec: str) -> dict[str, Any]:
    """One slot from ``name[:unit[:scale]]`` or ``name=field[:unit[:scale]],field...``."""
    where = "schema %r" % spec
    if "=" in spec:
        slot_name, _, rest = spec.partition("=")
        slot_name = slot_name.strip()
        if not rest.strip():
            raise EnrollError("%s: no fields after '='" % where)
        fields = [_field_spec(part, where) for part in rest.split(",")]
    else:
        fields = [_field_spec(spec, where)]
        slot_name = fields[0]["name"]
    return check_slot({"name": slot_name, "fields": fields}, where)


def check_slot(slot: Any, where: str = "schema") -> dict[str, Any]:
    if not isinstance(slot, dict) or set(slot) - {"name", "fields"}:
        raise EnrollError('%s: a slot is {"name": ..., "fields": [...]}' % where)
    name = slot.get("name")
    if not isinstance(name, str) or len(name) > MAX_FIELD_NAME_LEN or not _FIELD_NAME_RE.match(name):
        raise EnrollError(
            "%s: slot name %r: 1..%d letters, digits, _ . -" % (where, name, MAX_FIELD_NAME_LEN)
        )
    fields = slot.get("fields")
    if not isinstance(fields, list) or not 1 <= len(fields) <= reading.MAX_VALUES:
        raise EnrollError("%s: slot %r needs 1..%d fields" % (where, name, reading.MAX_VALUES))
    checked = []
    for f in fields:
        if not isinstance(f, dict) or "name" not in f or set(f) - {"name", "unit", "scale"}:
            raise EnrollError('%s: a field is {"name": ..., "unit": ..., "scale": ...}' % where)
        checked.append(_field(f["name"], f.get("unit", ""), f.get("scale", 0), where))
    names = [f["name"] for f in checked]
    if len(set(names)) != len(names):
        raise EnrollError("%s: slot %r names a field twice" % (where, name))
    return {"name": name, "fields": checked}


def check_slots(slots: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    if len(slots) > reading.MAX_SLOT + 1:
        raise EnrollError("at most %d slots" % (reading.MAX_SLOT + 1))
    checked = [check_slot(s) for s in slots]
    names = [s["name"] for s in checked]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise EnrollError("slot name(s) given twice: %s" % ", ".join(dupes))
    return checked


def load_schema_file(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Slots from a file: JSON (a list of slots, or {"slots": [...]}) or one spec per line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EnrollError("schema file not found: %s" % path)
    except (OSError, UnicodeDecodeError) as exc:
        raise EnrollError("cannot read schema file %s: %s" % (path, getattr(exc, "strerror", None) or exc))
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise EnrollError("schema file %s is not valid JSON: %s" % (path, exc))
        if isinstance(data, dict):
            data = data.get("slots")
        if not isinstance(data, list):
            raise EnrollError("schema file %s: expected a list of slots" % path)
        return [check_slot(s, "schema file %s" % path) for s in data]
    slots = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            slots.append(parse_schema_spec(line))
    return slots


# -- the device config -----------------------------------------------------------


def device_config(
    name: str,
    proxy_host: str,
    proxy_port: int,
    proxy_public_key: bytes,
    device_private_key: bytes,
    link_bps: int,
    room_id: str,
    user_id: str,
    slots: list[dict[str, Any]],
    caps: int = handshake.DEFAULT_CAPS,
    profile: str = "standard",
) -> dict[str, Any]:
    return {
        "version": DEVICE_CONFIG_VERSION,
        "name": name,
        "proxy": {"host": proxy_host, "port": proxy_port, "public_key": keyfile.key_to_hex(proxy_public_key)},
        "device_private_key": keyfile.key_to_hex(device_private_key),
        "caps": caps,
        "profile": profile,
        "link_bps": link_bps,
        "room_id": room_id,
        "user_id": user_id,
        "slots": slots,
    }


def write_device_config(path: Path, config: dict[str, Any]) -> None:
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    try:
        keyfile.write_secret_text(path, text)
    except keyfile.KeyFileError:
        raise EnrollError("%s exists; it holds another device's key (remove it or use --out)" % path)


# -- the homeserver side -----------------------------------------------------------


def _failed(what: str, result: HttpResult) -> EnrollError:
    detail = ("%s %s" % (result.errcode or "", result.error or "")).strip()
    return EnrollError("%s: homeserver answered %d %s" % (what, result.status, detail))


async def register_with_shared_secret(hs: Homeserver, localpart: str, shared_secret: str) -> tuple[str, str]:
    """Token mode: a new user via Synapse's shared-secret admin API; (user_id, access_token)."""
    path = "/_synapse/admin/v1/register"
    got = await hs.request("GET", path)
    if not got.ok or not isinstance(got.json, dict) or not isinstance(got.json.get("nonce"), str):
        raise _failed("shared-secret registration (is this Synapse, with the admin API reachable?)", got)
    nonce = got.json["nonce"]
    password = secrets.token_urlsafe(24)
    mac = hmac.new(shared_secret.encode("utf-8"), digestmod=hashlib.sha1)
    for part in (nonce, localpart, password):
        mac.update(part.encode("utf-8"))
        mac.update(b"\x00")
    mac.update(b"notadmin")
    result = await hs.request(
        "POST",
        path,
        json_body={
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": False,
            "mac": mac.hexdigest(),
        },
    )
    if result.status == 400 and result.errcode == "M_USER_IN_USE":
        raise EnrollError(
            "user %s already exists on the homeserver; token mode cannot take it over (choose another name)"
            % localpart
        )
    if result.status == 403:
        raise _failed("shared-secret registration (is registration_shared_secret right?)", result)
    body = result.json if isinstance(result.json, dict) else {}
    if (
        not result.ok
        or not isinstance(body.get("user_id"), str)
        or not isinstance(body.get("access_token"), str)
    ):
        raise _failed("shared-secret registration of %s" % localpart, result)
    return str(body["user_id"]), str(body["access_token"])


async def check_invitees(cfg: ProxyConfig, hs: Homeserver, invite: Sequence[str]) -> None:
    """Every ``--invite`` user exists: the homeserver's profile API answers 404 for
    one that does not (a room invite to it would otherwise "succeed" silently).

    Asked before anything is created, with the appservice token (token mode:
    without one, as Synapse allows by default). Only a 404 is fatal; a
    homeserver that will not say (profile lookups restricted) gets a warning.
    """
    token = cfg.appservice.as_token if cfg.mode == "appservice" and cfg.appservice is not None else None
    for user in invite:
        result = await hs.request("GET", encode_path(CLIENT_V3 + "/profile/{}", user), access_token=token)
        if result.status == 404:
            raise EnrollError(
                "cannot invite %s: no such user on the homeserver (%s)" % (user, result.errcode or "404")
            )
        if not result.ok:
            log.warning("could not check that %s exists: homeserver answered %d", user, result.status)


ENCRYPTION_STATE = {
    "type": "m.room.encryption",
    "state_key": "",
    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
}


async def room_is_encrypted(hs: Homeserver, room_id: str, token: str, as_user: str | None) -> bool:
    """True if the room has an ``m.room.encryption`` state event (encryption cannot be turned off)."""
    result = await hs.request(
        "GET",
        encode_path(CLIENT_V3 + "/rooms/{}/state/m.room.encryption/", room_id),
        access_token=token,
        as_user=as_user,
    )
    if result.status == 404:
        return False
    if not result.ok:
        raise _failed("reading the encryption state of %s" % room_id, result)
    return isinstance(result.json, dict) and bool(result.json.get("algorithm"))


async def _setup_matrix(
    cfg: ProxyConfig,
    hs: Homeserver,
    name: str,
    room: str,
    invite: Sequence[str],
    encrypted: bool = True,
) -> tuple[str, str | None, str, bool, bool]:
    """Create the Matrix user and get it into the room.

    Returns (user_id, access_token, room_id, created, encrypted)."""
    localpart = cfg.user_localpart(name)
    await check_invitees(cfg, hs, invite)
    as_user: str | None
    if cfg.mode == "appservice":
        assert cfg.appservice is not None
        token = cfg.appservice.as_token
        try:
            user_id = await hs.register_appservice_user(localpart, token)
        except HomeserverUnavailable:
            raise
        except LowbwError as exc:
            raise EnrollError(
                "registering %s as the appservice failed (%s); is appservice.yaml loaded by the homeserver?"
                % (localpart, exc.message or type(exc).__name__)
            )
        as_user = user_id
        device_token: str | None = None
    else:
        secret = cfg.homeserver.registration_shared_secret
        if not secret:
            raise EnrollError(
                "token mode needs [homeserver] registration_shared_secret in %s to register users" % cfg.path
            )
        user_id, token = await register_with_shared_secret(hs, localpart, secret)
        as_user = None
        device_token = token

    displayname = await hs.request(
        "PUT",
        encode_path(CLIENT_V3 + "/profile/{}/displayname", user_id),
        json_body={"displayname": name},
        access_token=token,
        as_user=as_user,
    )
    if not displayname.ok:
        log.warning("could not set the display name of %s: %d", user_id, displayname.status)

    if room == NEW_ROOM:
        create: dict[str, Any] = {
            "preset": "private_chat",
            "name": name,
            "topic": "lowbw device %s" % name,
            "invite": list(invite),
        }
        if encrypted:
            create["initial_state"] = [ENCRYPTION_STATE]
        result = await hs.create_room(token, create, as_user=as_user)
        body = result.json if isinstance(result.json, dict) else {}
        if not result.ok or not isinstance(body.get("room_id"), str):
            raise _failed("creating a room for %s" % name, result)
        return user_id, device_token, str(body["room_id"]), True, encrypted

    result = await hs.join_room(room, token, as_user=as_user)
    body = result.json if isinstance(result.json, dict) else {}
    if not result.ok or not isinstance(body.get("room_id"), str):
        raise _failed("%s joining %s (invite it first, or make the room public)" % (user_id, room), result)
    room_id = str(body["room_id"])
    return user_id, device_token, room_id, False, await room_is_encrypted(hs, room_id, token, as_user)


async def enroll(
    cfg: ProxyConfig,
    name: str,
    room: str,
    *,
    slots: Sequence[dict[str, Any]] = (),
    event_types: Sequence[str] = (),
    permissions: Sequence[str] = (),
    invite: Sequence[str] = (),
    out: str | os.PathLike[str] | None = None,
    proxy_host: str | None = None,
    proxy_port: int | None = None,
    homeserver: Homeserver | None = None,
    encrypted: bool = True,
    profile: str | None = None,
) -> EnrollResult:
    """Enroll device ``name`` (see the module docstring); the homeserver client is closed if we made it."""
    check_device_name(name)
    link_profile = check_profile(profile, cfg.proxy.link_bps)
    check_room(room)
    if not slots:
        # The device config needs at least one slot (lowbw.device.config), and a
        # device without one could never send a reading.
        raise EnrollError(
            "no reading slots: give at least one --schema SPEC (e.g. --schema temperature:°C:1) or "
            "--schema-file FILE; see `lowbw device enroll --help`"
        )
    checked_slots = check_slots(slots)
    types = [check_event_type(t) for t in (event_types or DEFAULT_EVENT_TYPES)]
    perms = [check_permission(p) for p in permissions]
    invites = [check_user_id(u) for u in invite]
    if invites and room != NEW_ROOM:
        raise EnrollError("--invite works with --room new only (invite people to an existing room yourself)")
    host, port = _proxy_address(cfg, proxy_host, proxy_port, "devices")
    target = Path(out) if out is not None else cfg.devices_dir / ("%s.json" % name)
    proxy_pub = cfg.read_public_key()

    with Registry(cfg.proxy.registry) as registry:
        _check_new(registry, name, target)

        device_priv, device_pub = keyfile.generate_keypair()
        hs = homeserver or Homeserver(cfg.homeserver.url, verify_tls=cfg.homeserver.verify_tls)
        try:
            user_id, access_token, room_id, created, is_encrypted = await _setup_matrix(
                cfg, hs, name, room, invites, encrypted
            )
        except HomeserverUnavailable as exc:
            # No HTTP answer at all: not a registration problem, whatever step it was.
            raise EnrollError(
                "the homeserver is unreachable at %s (%s); is it running, and is [homeserver] url in %s "
                "right? Nothing was enrolled" % (cfg.homeserver.url, exc.message or "no answer", cfg.path)
            )
        finally:
            if homeserver is None:
                await hs.close()

        record = DeviceRecord(
            name=name,
            public_key=device_pub,
            user_id=user_id,
            access_token=access_token,
            rooms=[room_id],
            event_types=types,
            slots=checked_slots,
            permissions=perms,
            encrypted=is_encrypted,
            profile=link_profile,
        )
        write_device_config(
            target,
            device_config(
                name=name,
                proxy_host=host,
                proxy_port=port,
                proxy_public_key=proxy_pub,
                device_private_key=device_priv,
                link_bps=cfg.proxy.link_bps,
                room_id=room_id,
                user_id=user_id,
                slots=checked_slots,
                profile=link_profile,
            ),
        )
        try:
            registry.add_device(record)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
    log.info("enrolled %s as %s in %s%s", name, user_id, room_id, " (encrypted)" if is_encrypted else "")
    return EnrollResult(record=record, config_path=target, room_id=room_id, created_room=created)


def _proxy_address(
    cfg: ProxyConfig, proxy_host: str | None, proxy_port: int | None, who: str
) -> tuple[str, int]:
    """Where ``who`` reach the proxy: the given address, else the bind address (never a wildcard)."""
    host = proxy_host if proxy_host is not None else cfg.proxy.bind
    if host in _WILDCARD_BINDS:
        raise EnrollError(
            "the proxy binds to %r: give the address %s reach it at (--proxy-host)" % (host, who)
        )
    port = proxy_port if proxy_port is not None else cfg.proxy.port
    if not 0 < port < 65536:
        raise EnrollError("proxy port %d: give the port %s reach the proxy at (--proxy-port)" % (port, who))
    return host, port


def _check_new(registry: Registry, name: str, target: Path) -> None:
    """No device of that name yet, and no file where its config (and private key) would go."""
    existing = registry.device(name)
    if existing is not None:
        raise EnrollError(
            "a device named %r is already enrolled%s" % (name, " (revoked)" if existing.revoked else "")
        )
    if os.path.lexists(target):
        raise EnrollError("%s exists; it holds another device's key (remove it or use --out)" % target)


# -- client-proxies ------------------------------------------------------------------


@dataclass
class ClientEnrollResult:
    record: DeviceRecord
    config_path: Path


def enroll_client(
    cfg: ProxyConfig,
    name: str,
    *,
    out: str | os.PathLike[str] | None = None,
    proxy_host: str | None = None,
    proxy_port: int | None = None,
    listen: str = "127.0.0.1:8008",
    profile: str | None = None,
) -> ClientEnrollResult:
    """Enroll a client-proxy key (``lowbw proxy enroll-client``): registry record, config file.

    No Matrix user and no room: the person using the client logs in as
    themselves (``lowbw.proxy.clients``). The key gets the permission ``client``.
    ``profile`` is the link profile (default by the proxy's ``link_bps``, as for
    devices): a compact client-proxy opens its sessions with Noise KK and uses
    compact transport frames.
    """
    from lowbw.clientproxy.config import ClientProxyConfig

    check_device_name(name)
    link_profile = check_profile(profile, cfg.proxy.link_bps)
    host, port = _proxy_address(cfg, proxy_host, proxy_port, "clients")
    target = Path(out) if out is not None else cfg.devices_dir / ("%s.client.toml" % name)
    with Registry(cfg.proxy.registry) as registry:
        _check_new(registry, name, target)
        priv, pub = keyfile.generate_keypair()
        record = DeviceRecord(
            name=name,
            public_key=pub,
            user_id="",
            rooms=[],
            event_types=[],
            permissions=["client"],
            profile=link_profile,
        )
        config = ClientProxyConfig(
            path=target,
            name=name,
            listen=listen,
            proxy_host=host,
            proxy_port=port,
            proxy_public_key=cfg.read_public_key(),
            private_key=priv,
            link_bps=float(cfg.proxy.link_bps),
            mtu=cfg.proxy.mtu,
            profile=link_profile,
        )
        if not target.parent.exists():
            target.parent.mkdir(mode=0o700, parents=True)
        try:
            keyfile.write_secret_text(target, config.to_toml())
        except keyfile.KeyFileError:
            raise EnrollError("%s exists; it holds another key (remove it or use --out)" % target)
        try:
            registry.add_device(record)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
    log.info("enrolled client-proxy %s", name)
    return ClientEnrollResult(record=record, config_path=target)
