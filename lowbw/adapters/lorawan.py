"""The MQTT bridge's LoRaWAN formats: ``bridge.format = "tts-v3"`` / ``"chirpstack-v4"``.

The bridge subscribes to a network server application's uplinks and downlink
events (``lowbw.lorawan.formats``), and speaks for each LoRaWAN device as one
enrolled lowbw device, so each device's readings land in its own Matrix room
(or a shared one) through the proxy with the device client's exactly-once
delivery. docs/lorawan.md is the user's description; in short:

- Devices: ``[[device]]`` entries whose ``aliases`` name the LoRaWAN device ID
  or DevEUI, and, with ``auto_enroll`` (default), every device heard for the
  first time is enrolled with ``lowbw.proxy.enroll.enroll`` (the proxy config
  in ``lorawan.proxy_config``; an encrypted room unless ``encrypted = false``),
  if the allow-list (``allow``: device IDs / DevEUIs; empty = all) lets it in.
- Readings: slot ``uplink`` = the payload fields (the network server's decoded
  payload, or the profile's decoder on FRMPayload) and the radio metadata;
  measured at the network server's reception time.
- Exactly once: each uplink's duplicate key (ChirpStack ``deduplicationId``;
  TTS application + device + session key id + f_cnt) is recorded, fsynced,
  with the device store's next reading id before its reading is queued; a key
  seen again is acknowledged only, across restarts (``reconcile`` as in
  ``lowbw.adapters.bridge_state``). Frame-counter gaps are logged and counted.
- Commands -> downlinks (``lowbw.lorawan.decoder.parse_command``), published
  through the bridge's durable outbox; their outcomes (sent, acked, nacked,
  failed) come back as readings of the slots ``downlink_<outcome>`` carrying
  the command's id, so they reach encrypted rooms too.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lowbw.adapters.devicelink import DeviceLink, DeviceLinkError, load_device_config
from lowbw.adapters.values import MappingError, SlotMapper
from lowbw.lorawan import decoder, formats
from lowbw.lorawan.decoder import FieldSpec, Profile
from lowbw.lorawan.formats import Downlink, FormatError, Other, Outcome, Uplink
from lowbw.wire.errors import EncodeError, LowbwError

if TYPE_CHECKING:
    from lowbw.adapters.mqtt_bridge import Incoming, MqttBridge

log = logging.getLogger("lowbw.adapters.lorawan")

STATE_VERSION = 1
ENROLL_RETRY = 60.0  # seconds before a device whose enrollment failed is tried again
_NAME_OK = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")


@dataclass
class LorawanSettings:
    application: str
    proxy_config: Path | None = None
    devices_dir: Path = Path("lorawan-devices")
    state: Path = Path("lorawan.state")
    auto_enroll: bool = True
    allow: list[str] = field(default_factory=list)
    room: str = "new"
    invite: list[str] = field(default_factory=list)
    encrypted: bool = True
    name_prefix: str = ""
    proxy_host: str | None = None
    proxy_port: int | None = None
    default_profile: str | None = None
    profiles: dict[str, Profile] = field(default_factory=dict)
    device_profile: dict[str, str] = field(default_factory=dict)
    downlink_replace: bool = False
    client: dict[str, Any] = field(default_factory=dict)
    dedup_keep: int = 4096


def _downlink_table(sec: Any, name: str) -> Downlink:
    raw = sec.raw(name)
    if not isinstance(raw, dict):
        sec.fail(name, 'expected a table {f_port = N, hex = "..."}')
    try:
        return decoder.downlink_from_object(raw)
    except FormatError as exc:
        sec.fail(name, exc.message)
        raise


def load_lorawan(sec: Any, cfg: Any, section_cls: Any) -> LorawanSettings:
    """The ``[lorawan]`` table (``sec`` is a config ``_Section``)."""
    app = sec.req_text("application")
    try:
        formats.check_topic_level(app, "application")
    except FormatError as exc:
        sec.fail("application", exc.message)
    base = sec.base
    s = LorawanSettings(application=app)
    s.proxy_config = sec.path_value("proxy_config")
    s.devices_dir = sec.path_value("devices_dir", base / "lorawan-devices")
    s.state = sec.path_value("state", Path(str(cfg.state) + ".lorawan"))
    s.auto_enroll = sec.boolean("auto_enroll", True)
    s.allow = [a.lower() for a in sec.strings("allow")]
    s.room = sec.text("room", "new") or "new"
    if s.room != "new" and s.room[:1] not in ("!", "#"):
        sec.fail("room", 'expected "new" (a room per device), a room ID (!...) or an alias (#...)')
    s.invite = sec.strings("invite")
    s.encrypted = sec.boolean("encrypted", True)
    s.name_prefix = sec.text("name_prefix", "") or ""
    if s.name_prefix and not _NAME_OK.match(s.name_prefix):
        sec.fail("name_prefix", "a-z 0-9 _ -, starting with a letter or digit")
    s.proxy_host = sec.text("proxy_host") or None
    s.proxy_port = sec.opt_integer("proxy_port", 1, 65535)
    s.default_profile = sec.text("default_profile") or None
    s.downlink_replace = sec.boolean("downlink_replace", False)
    s.dedup_keep = sec.integer("dedup_keep", 4096, 16, 10_000_000)
    client = sec.raw("client")
    if client is not None:
        if not isinstance(client, dict):
            sec.fail("client", "expected a table of device client tuning keys")
        s.client = dict(client)
    profiles = sec.sub("profile")
    if profiles is not None:
        for pname in list(profiles.table):
            p = profiles.sub(pname)
            assert p is not None
            prof = Profile(pname)
            for key in ("fields", "decoder"):
                rows = p.raw(key)
                if rows is None:
                    continue
                if not isinstance(rows, list):
                    p.fail(key, "expected a list of {name, unit, scale} tables")
                for i, row in enumerate(rows):
                    rs = section_cls(p.source, "%s[%d]" % (p.key(key), i), row, base)
                    spec = FieldSpec(
                        name=rs.req_text("name"),
                        unit=rs.text("unit", "") or "",
                        scale=rs.integer("scale", 0, 0, 18),
                        type=rs.text("type") if key == "decoder" else None,
                    )
                    if key == "decoder" and spec.type is None:
                        rs.fail("type", "missing (u8, i16, u32le, ...)")
                    rs.done()
                    (prof.fields if key == "fields" else prof.decoder).append(spec)
            radio = p.raw("radio")
            if radio is not None:
                if not isinstance(radio, list) or not all(isinstance(r, str) for r in radio):
                    p.fail("radio", "expected a list of names (%s)" % ", ".join(decoder.RADIO_FIELDS))
                prof.radio = list(radio)
            cmds = p.sub("commands")
            if cmds is not None:
                for cname in list(cmds.table):
                    prof.commands[cname] = _downlink_table(cmds, cname)
                cmds.done()
            try:
                prof.check()
            except ValueError as exc:
                p.fail("", str(exc))
            p.done()
            s.profiles[pname] = prof
        profiles.done()
    for k, v in sec.mapping("device_profile").items():
        s.device_profile[k.lower()] = v
    for name in list(s.device_profile.values()) + ([s.default_profile] if s.default_profile else []):
        if name not in s.profiles:
            sec.fail("default_profile", "no [lorawan.profile.%s]" % name)
    if s.auto_enroll and s.proxy_config is None:
        sec.fail("proxy_config", "auto_enroll needs the proxy's config file (proxy.toml) to enroll devices")
    sec.done()
    return s


# ---- state --------------------------------------------------------------------------


class LorawanState:
    """The LoRaWAN side's state file (JSON, written atomically and fsynced):

    - ``uplinks``: duplicate key -> [device, first_rid, done] (the last ``keep``);
    - ``devices``: network-server device id -> {name, config, state, profile};
    - ``fcnt``: device -> [session, last f_cnt] (gap detection);
    - ``awaiting``: downlink ref -> {device, command, confirmed} until its final outcome.
    """

    def __init__(self, path: Path, keep: int) -> None:
        self.path = path
        self.keep = keep
        self.uplinks: OrderedDict[str, list[Any]] = OrderedDict()
        self.devices: dict[str, dict[str, Any]] = {}
        self.fcnt: dict[str, list[Any]] = {}
        self.awaiting: OrderedDict[str, dict[str, Any]] = OrderedDict()
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise DeviceLinkError("%s: cannot read (%s)" % (path, exc.strerror or exc))
        try:
            obj = json.loads(data.decode("utf-8"))
            if not isinstance(obj, dict) or obj.get("version") != STATE_VERSION:
                raise ValueError("not a version %d LoRaWAN bridge state" % STATE_VERSION)
            for row in obj["uplinks"]:
                key, device, first, done = row
                if not (isinstance(key, str) and isinstance(device, str)):
                    raise ValueError("bad uplink entry")
                if not (isinstance(first, int) and isinstance(done, int)):
                    raise ValueError("bad uplink entry")
                self.uplinks[key] = [device, first, done]
            if not isinstance(obj["devices"], dict) or not isinstance(obj["fcnt"], dict):
                raise ValueError("bad devices")
            self.devices = obj["devices"]
            self.fcnt = obj["fcnt"]
            if not isinstance(obj["awaiting"], dict):
                raise ValueError("bad awaiting")
            self.awaiting = OrderedDict(obj["awaiting"])
        except (ValueError, TypeError, KeyError, UnicodeError) as exc:
            raise DeviceLinkError(
                "%s: not a LoRaWAN bridge state file (%s); move it away to start afresh" % (path, exc)
            )

    def save(self) -> None:
        obj = {
            "version": STATE_VERSION,
            "uplinks": [[k, *v] for k, v in self.uplinks.items()],
            "devices": self.devices,
            "fcnt": self.fcnt,
            "awaiting": self.awaiting,
        }
        data = json.dumps(obj, separators=(",", ":")).encode("utf-8")
        tmp = str(self.path) + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)

    def record(self, key: str, device: str, first_rid: int) -> list[Any]:
        entry = [device, first_rid, -1]
        self.uplinks.pop(key, None)
        self.uplinks[key] = entry
        while len(self.uplinks) > self.keep:
            self.uplinks.popitem(last=False)
        return entry

    def reconcile(self, next_rid: Any) -> None:
        changed = False
        for entry in self.uplinks.values():
            if entry[2] >= 0:
                continue
            top = next_rid(entry[0])
            if top is None:
                continue
            entry[2] = 1 if top > entry[1] else 0
            changed = True
        if changed:
            self.save()


def device_name(prefix: str, device_id: str) -> str:
    """A lowbw device name (a Matrix localpart, <= 32 characters) for a LoRaWAN device."""
    base = re.sub(r"[^a-z0-9_-]", "-", device_id.lower()).strip("-_") or "dev"
    name = prefix + base
    if len(name) > 32:
        h = hashlib.sha256(device_id.encode()).hexdigest()[:6]
        name = name[: 32 - 7] + "-" + h
    return name


# ---- the LoRaWAN side of the bridge --------------------------------------------------


class LorawanSide:
    """What ``MqttBridge`` does differently with a LoRaWAN format (module docstring)."""

    def __init__(self, bridge: MqttBridge, settings: LorawanSettings) -> None:
        self.b = bridge
        self.s = settings
        self.fmt = bridge.cfg.format
        self.state = LorawanState(settings.state, max(settings.dedup_keep, bridge.cfg.dedup_keep))
        self.by_name: dict[str, str] = {}  # lowbw device name -> network-server device id
        self.profiles: dict[str, Profile] = {}  # lowbw device name -> profile
        self.enroll_failed: dict[str, float] = {}
        self.outcomes: dict[str, int] = {}  # downlink events of ours, by outcome
        self.counters = bridge.counters
        for k in (
            "uplinks",
            "outcomes",
            "other_events",
            "not_allowed",
            "unknown_devices",
            "enrolled",
            "enroll_failures",
            "fcnt_gaps",
            "fcnt_resets",
            "downlinks",
            "commands_bad",
        ):
            self.counters.setdefault(k, 0)
        for ns_id, d in self.state.devices.items():
            self._open(ns_id, d)
        for name in list(bridge.links):
            if name not in self.by_name:
                self.by_name[name] = name

    def _open(self, ns_id: str, d: dict[str, Any]) -> DeviceLink:
        dcfg = load_device_config(Path(d["config"]))
        link = DeviceLink(dcfg, Path(d["state"]), command_poll=self.b.cfg.command_poll, logger=self.b_log)
        self.b.add_link(link, [ns_id])
        self.by_name[link.name] = ns_id
        prof = d.get("profile")
        if isinstance(prof, str) and prof in self.s.profiles:
            self.profiles[link.name] = self.s.profiles[prof]
        return link

    @property
    def b_log(self) -> logging.Logger:
        return log

    def filters(self) -> list[str]:
        return formats.subscriptions(self.fmt, self.s.application)

    def reconcile(self) -> None:
        self.state.reconcile(lambda name: self.b.links[name].next_rid if name in self.b.links else None)

    def save(self) -> None:
        from lowbw.adapters.mqtt_bridge import BridgeFatal

        try:
            self.state.save()
        except OSError as exc:
            raise BridgeFatal("%s: cannot write (%s)" % (self.s.state, exc.strerror or exc))

    # -- messages --------------------------------------------------------------------

    def take(self, m: Incoming) -> bool:
        now = time.monotonic()
        try:
            ev = formats.parse(self.fmt, m.topic, m.payload)
            if isinstance(ev, Uplink):
                return self._uplink(m, ev)
            if isinstance(ev, Outcome):
                return self._outcome(m, ev)
            assert isinstance(ev, Other)
            self.counters["other_events"] += 1
            log.info("%s: %s event %s", ev.device_id, ev.kind, ev.detail)
        except (FormatError, MappingError) as exc:
            self.counters["bad"] += 1
            self.b.skip("bad_event")
            self.b.throttle.warning(now, "%s: skipped: %s", m.topic, exc.message)
        self.b._ack(m)
        return True

    def _allowed(self, up: Uplink) -> bool:
        if not self.s.allow:
            return True
        return up.device_id.lower() in self.s.allow or (up.dev_eui or "") in self.s.allow

    def _link_for(self, up: Uplink) -> DeviceLink | None:
        for ref in (up.device_id, up.dev_eui):
            if ref is None:
                continue
            name = self.b.names.get(ref) or self.b.names.get(ref.lower())
            if name is not None:
                return self.b.links[name]
        if not self.s.auto_enroll:
            return None
        return self._enroll(up)

    def _profile_for(self, up: Uplink) -> Profile | None:
        for ref in (up.device_id.lower(), (up.dev_eui or "").lower()):
            if ref in self.s.device_profile:
                return self.s.profiles[self.s.device_profile[ref]]
        if up.profile is not None and up.profile in self.s.profiles:
            return self.s.profiles[up.profile]
        if self.s.default_profile is not None:
            return self.s.profiles[self.s.default_profile]
        return None

    def _enroll(self, up: Uplink) -> DeviceLink | None:
        from lowbw.proxy.config import ConfigError as ProxyConfigError
        from lowbw.proxy.config import load as load_proxy
        from lowbw.proxy.enroll import enroll

        now = time.monotonic()
        failed = self.enroll_failed.get(up.device_id)
        if failed is not None and now - failed < ENROLL_RETRY:
            return None
        profile = self._profile_for(up)
        radio = profile.radio if profile is not None else list(decoder.DEFAULT_RADIO)
        if profile is not None and profile.fields:
            fields = profile.fields
        elif profile is not None and profile.decoder:
            fields = profile.decoder
        elif up.decoded:
            fields = decoder.fields_from_decoded(up.decoded, decoder.MAX_VALUES - len(radio))
        else:
            fields = []
        slots = decoder.uplink_slots(fields, radio)
        name = device_name(self.s.name_prefix, up.device_id)
        assert self.s.proxy_config is not None
        self.s.devices_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        out = self.s.devices_dir / ("%s.json" % name)
        try:
            pcfg = load_proxy(str(self.s.proxy_config))
            result = asyncio.run(
                enroll(
                    pcfg,
                    name,
                    self.s.room,
                    slots=slots,
                    invite=self.s.invite if self.s.room == "new" else (),
                    out=out,
                    proxy_host=self.s.proxy_host,
                    proxy_port=self.s.proxy_port,
                    encrypted=self.s.encrypted,
                )
            )
        except (LowbwError, ProxyConfigError, OSError) as exc:
            self.enroll_failed[up.device_id] = now
            self.counters["enroll_failures"] += 1
            log.error(
                "%s: cannot enroll as %s: %s (retried in %.0f s)",
                up.device_id,
                name,
                getattr(exc, "message", "") or exc,
                ENROLL_RETRY,
            )
            return None
        if self.s.client:
            cfg = json.loads(result.config_path.read_text(encoding="utf-8"))
            cfg["client"] = dict(cfg.get("client", {}), **self.s.client)
            tmp = Path(str(result.config_path) + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(cfg, f, indent=2)
            os.replace(tmp, result.config_path)
        entry = {
            "name": name,
            "config": str(result.config_path),
            "state": str(result.config_path) + ".state",
            "profile": profile.name if profile is not None else None,
        }
        self.state.devices[up.device_id] = entry
        self.save()
        self.counters["enrolled"] += 1
        log.info(
            "%s: enrolled as %s in %s (%d field(s)%s)",
            up.device_id,
            name,
            result.room_id,
            len(slots[0]["fields"]),
            ", profile %s" % profile.name if profile is not None else "",
        )
        link = self._open(up.device_id, entry)
        if up.dev_eui and up.dev_eui != up.device_id:
            self.b.names.setdefault(up.dev_eui, link.name)
        return link

    def _fields(self, link: DeviceLink, up: Uplink) -> dict[str, object]:
        profile = self.profiles.get(link.name) or self._profile_for(up)
        values: dict[str, object] = {}
        if profile is not None and profile.decoder:
            if up.payload:
                values.update(decoder.decode_raw(profile.decoder, up.payload))
        elif up.decoded:
            values.update(up.decoded)
        for k, v in up.radio.items():
            if k not in values:
                values[k] = v
        return values

    def _uplink(self, m: Incoming, up: Uplink) -> bool:
        self.counters["uplinks"] += 1
        if not self._allowed(up):
            self.counters["not_allowed"] += 1
            self.b.throttle.warning(time.monotonic(), "%s: not in lorawan.allow: skipped", up.device_id)
            self.b._ack(m)
            return True
        seen = self.state.uplinks.get(up.key)
        if seen is not None and seen[2] > 0:
            self.counters["duplicates"] += 1
            log.info("%s: duplicate of uplink %s: skipped", up.device_id, up.key)
            self.b._ack(m)
            return True
        link = self._link_for(up)
        if link is None:
            self.counters["unknown_devices"] += 1
            self.b.throttle.warning(
                time.monotonic(), "%s: unknown device (auto_enroll is off or failed): skipped", up.device_id
            )
            self.b._ack(m)
            return True
        slots = link.cfg.slots
        try:
            slot = [s[0] for s in slots].index(decoder.UPLINK_SLOT)
        except ValueError:
            slot = 0
        mapper = SlotMapper(slots, {}, strict=False)
        values = self._fields(link, up)
        for f in slots[slot][1]:
            values.setdefault(f[0], None)
        reading = mapper.for_slot(slot, values)
        if not link.room_for(1) and link.device.pending() > 0:
            return False
        self._check_fcnt(link.name, up)
        entry = self.state.record(up.key, link.name, link.next_rid)
        self.save()
        try:
            link.queue(reading[0], reading[1], up.time)
        except EncodeError as exc:
            self.counters["bad"] += 1
            self.b.skip("out_of_range")
            log.warning("%s: skipped: %s", m.topic, exc.message)
        except OSError as exc:
            from lowbw.adapters.mqtt_bridge import BridgeFatal

            raise BridgeFatal("%s: cannot write the device state: %s" % (link.name, exc))
        else:
            self.counters["readings"] += 1
        entry[2] = 1
        self.counters["queued"] += 1
        log.info(
            "%s -> %s: f_cnt %s via %s%s",
            up.device_id,
            link.name,
            up.f_cnt,
            up.gateway or "?",
            " (simulated)" if up.simulated else "",
        )
        self.b._ack(m)
        return True

    def _check_fcnt(self, name: str, up: Uplink) -> None:
        if up.f_cnt is None:
            return
        last = self.state.fcnt.get(name)
        if last is not None and last[0] == up.session:
            gap = up.f_cnt - int(last[1]) - 1
            if gap > 0:
                self.counters["fcnt_gaps"] += gap
                log.warning("%s: frame counter gap: %d uplink(s) lost before f_cnt %d", name, gap, up.f_cnt)
            elif gap < -1:
                self.counters["fcnt_resets"] += 1
                log.info("%s: f_cnt went back to %d (late or replayed uplink)", name, up.f_cnt)
            if up.f_cnt <= int(last[1]):
                return
        elif last is not None:
            self.counters["fcnt_resets"] += 1
            log.info("%s: new session (%s), f_cnt %d", name, up.session, up.f_cnt)
        self.state.fcnt[name] = [up.session, up.f_cnt]

    # -- downlinks -----------------------------------------------------------------------

    def on_command(self, name: str, command_id: int, sender: str, body: str, event_id: str) -> None:
        ns_id = self.by_name.get(name, name)
        try:
            down = decoder.parse_command(body, self.profiles.get(name))
            ref = formats.new_ref()
            topic, payload = formats.downlink_message(
                self.fmt, self.s.application, ns_id, down, ref, self.s.downlink_replace
            )
        except FormatError as exc:
            self.counters["commands_bad"] += 1
            log.warning("command %d for %s: %s: reported failed", command_id, name, exc.message)
            self._report(name, command_id, formats.FAILED, "cmd/%s/%d" % (name, command_id))
            return
        self.state.awaiting[ref] = {"device": name, "command": command_id, "confirmed": down.confirmed}
        while len(self.state.awaiting) > 1024:
            self.state.awaiting.popitem(last=False)
        self.save()
        entry = {
            "device": name,
            "id": command_id,
            "sender": sender,
            "body": body,
            "event_id": event_id,
            "topic": topic,
            "payload": payload.decode("utf-8"),
            "ref": ref,
        }
        self.b.state.outbox.append(entry)
        self.b._save()
        self.counters["downlinks"] += 1
        self.b._publish_command(entry)

    def _outcome(self, m: Incoming, ev: Outcome) -> bool:
        self.counters["outcomes"] += 1
        pending = self.state.awaiting.get(ev.ref) if ev.ref is not None else None
        if pending is None:
            log.info(
                "%s: downlink %s %s (not one of ours, or already reported)", ev.device_id, ev.ref, ev.outcome
            )
            self.b._ack(m)
            return True
        name = pending["device"]
        link = self.b.links.get(name)
        if link is not None and not link.room_for(1) and link.device.pending() > 0:
            return False
        self.outcomes[ev.outcome] = self.outcomes.get(ev.outcome, 0) + 1
        log.info(
            "%s: command %s downlink %s%s",
            name,
            pending["command"],
            ev.outcome,
            " (%s)" % ev.reason if ev.reason else "",
        )
        if ev.outcome != formats.QUEUED:
            self._report(name, int(pending["command"]), ev.outcome, "out/%s/%s" % (ev.ref, ev.outcome))
        final = ev.outcome in (formats.ACKED, formats.NACKED, formats.FAILED) or (
            ev.outcome == formats.SENT and not pending.get("confirmed")
        )
        if final:
            self.state.awaiting.pop(str(ev.ref), None)
            self.save()
        self.b._ack(m)
        return True

    def _report(self, name: str, command_id: int, outcome: str, key: str) -> None:
        link = self.b.links.get(name)
        if link is None:
            return
        seen = self.state.uplinks.get(key)
        if seen is not None and seen[2] > 0:
            return
        slot_name = "downlink_%s" % outcome
        names = [s[0] for s in link.cfg.slots]
        if slot_name not in names:
            log.info("%s: no slot %s: outcome of command %d only logged", name, slot_name, command_id)
            return
        entry = self.state.record(key, name, link.next_rid)
        self.save()
        try:
            link.queue(names.index(slot_name), [command_id], time.time())
        except (EncodeError, OSError) as exc:
            log.warning("%s: cannot queue the outcome of command %d: %s", name, command_id, exc)
        entry[2] = 1

    def stats(self) -> dict[str, Any]:
        return {"awaiting_outcome": len(self.state.awaiting), "lorawan_devices": len(self.state.devices)}
