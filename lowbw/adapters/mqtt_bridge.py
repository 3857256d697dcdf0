"""``lowbw mqtt-bridge``: MQTT topics -> readings in Matrix rooms, commands back to MQTT.

The bridge subscribes to topic filters (wildcards allowed) on a broker with
paho-mqtt (MQTT 5 or 3.1.1, username/password, TLS) and acts as one or more
*enrolled devices* (device configs from ``lowbw device enroll``): each MQTT
message becomes readings of a device's slots, sent through the proxy over the
low-bandwidth link by ``lowbw.device.client.Device``. Each ``[[topic]]`` rule
says which device (fixed, or named by a topic level: ``site/+/temperature``
with ``device_segment = 1``) and which slot (fixed, named by a topic level, or
found from the field names of a JSON/CBOR object, ``lowbw.adapters.values``).
Payloads: plain numbers (``21.5``), JSON (``21.5``, ``{"temperature": 21.5}``)
and CBOR.

No loss, no duplicates:

* QoS 1 subscriptions on a persistent session (fixed client id; MQTT 5
  ``clean_start=False`` with a session expiry, 3.1.1 ``clean_session=False``),
  and manual acknowledgements: a message is acknowledged to the broker only
  after its readings are durably queued in the device's store, from where the
  device client delivers each exactly once (message numbers -> Matrix
  transaction ids). Until then the broker keeps it and redelivers it to a
  restarted bridge.
* A redelivery of a message that was queued but not yet acknowledged when the
  bridge stopped is recognised by its key in the bridge's state file
  (``lowbw.adapters.bridge_state``) and only acknowledged.
* Back-pressure instead of drops: a message whose readings would overflow the
  device's queue (``client.queue_limit``) waits, unacknowledged, until the
  link has drained; the broker's receive maximum bounds how many wait.
* Messages the broker sends with the retain flag (a stored old value, sent on
  subscribing) are acknowledged and skipped: they are not new measurements.
* A payload that cannot be a reading is logged with the reason, acknowledged
  (it would never get better) and counted.

Broker disconnects: paho reconnects with exponential backoff
(``reconnect_min`` .. ``reconnect_max`` seconds) and every (re)connection
subscribes again. The other direction: commands from the room reach the device
client (``on_command``), are written to the state file's outbox, and are
published to the device's commands topic (QoS 1); an entry leaves the outbox
when the broker acknowledged the publication.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import queue
import selectors
import socket
import sys
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from paho.mqtt import client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from lowbw.adapters import config as adapter_config
from lowbw.adapters.bridge_state import BridgeState, StateFileError, digest
from lowbw.adapters.devicelink import DeviceLink, DeviceLinkError, load_device_config
from lowbw.adapters.line_protocol import LineError, parse_json_object
from lowbw.adapters.logutil import Throttle, setup_logging
from lowbw.adapters.lorawan import LorawanSide
from lowbw.adapters.metrics import bridge_families
from lowbw.adapters.runner import serve
from lowbw.adapters.values import (
    NULL_WORDS,
    MappingError,
    Reading,
    SlotMapper,
    describe,
    is_scalar,
    unix_from_timestamp,
)
from lowbw.wire import cbor
from lowbw.wire.errors import DecodeError, EncodeError, LowbwError

log = logging.getLogger("lowbw.adapters.mqtt")


# Own command publications remembered, to recognise them coming back (MQTT 3.1.1).
OWN_COMMANDS_KEPT = 64

class BridgeFatal(LowbwError):
    """The bridge cannot go on safely (its state cannot be written)."""


@dataclass
class Incoming:
    topic: str
    payload: bytes
    qos: int
    mid: int
    dup: bool
    retain: bool
    digest: str
    # Unix seconds it reached the bridge: its measurement time without a time_field,
    # however long it then waits for room in the device queue.
    arrived: float = 0.0


def _reject_constant(text: str) -> object:
    raise MappingError("%s is not a number" % text)


def decode_payload(data: bytes, kind: str) -> object:
    """The value or object an MQTT payload holds (``kind``: auto, number, json, cbor)."""
    if not data:
        raise MappingError("empty payload")
    if kind == "cbor":
        return _cbor(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        if kind == "auto":
            return _cbor(data)
        raise MappingError("payload is not UTF-8 text")
    if kind == "number":
        return text
    stripped = text.strip()
    if kind == "json" or stripped[:1] == "{":
        if stripped[:1] == "{":
            try:
                return parse_json_object(stripped)
            except LineError as exc:
                raise MappingError(exc.message)
    try:
        return json.loads(stripped, parse_float=Decimal, parse_constant=_reject_constant)
    except ValueError:
        pass
    if kind == "json":
        raise MappingError("payload is not JSON")
    if stripped.lower() in NULL_WORDS:
        return None
    try:
        return _cbor(data)
    except MappingError:
        shown = stripped if len(stripped) <= 24 else stripped[:21] + "..."
        raise MappingError("payload %r is not a number, JSON or CBOR" % shown)


def _cbor(data: bytes) -> object:
    try:
        obj = cbor.loads(data, max_depth=4, max_items=256)
    except DecodeError as exc:
        raise MappingError("payload is not CBOR (%s)" % exc.message)
    if isinstance(obj, dict):
        for key in obj:
            if not isinstance(key, str):
                raise MappingError("CBOR map keys must be text, got %r" % (key,))
    elif isinstance(obj, bytes):
        raise MappingError("CBOR byte string is not a number")
    return obj


class _Client(mqtt.Client):
    """paho's client, keeping why the last connection attempt failed: paho retries
    silently, and its ``on_connect_fail`` callback is told nothing."""

    last_error: OSError | None = None

    def reconnect(self) -> Any:
        try:
            rc = super().reconnect()
        except OSError as exc:
            self.last_error = exc
            raise
        self.last_error = None
        return rc


def describe_os_error(exc: BaseException | None) -> str:
    """``connection refused`` rather than ``[Errno 111] Connection refused``."""
    if exc is None:
        return "unknown reason"
    if isinstance(exc, socket.gaierror):
        return "cannot resolve the host name (%s)" % (exc.strerror or exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


class MqttBridge:
    """The bridge (module docstring): ``run()`` until ``stop()``."""

    def __init__(self, cfg: adapter_config.BridgeConfig) -> None:
        self.cfg = cfg
        self.links: dict[str, DeviceLink] = {}
        self.names: dict[str, str] = {}  # device name or alias -> device name
        self.commands_topic: dict[str, str | None] = {}
        self._mappers: dict[tuple[int, str], SlotMapper] = {}
        self.throttle = Throttle(log)
        self.counters: dict[str, int] = {
            "received": 0,
            "queued": 0,
            "readings": 0,
            "duplicates": 0,
            "bad": 0,
            "retained_skipped": 0,
            "own_commands": 0,
            "acked": 0,
            "held": 0,
            "commands": 0,
            "commands_published": 0,
            "connects": 0,
            "connect_failures": 0,
            "disconnects": 0,
        }
        # (topic, payload digest) of our last command publications: MQTT 3.1.1 has no
        # noLocal, so a reading filter that matches the commands topic brings them back.
        self._own_commands: collections.deque[tuple[str, str]] = collections.deque(maxlen=OWN_COMMANDS_KEPT)
        # The "bad" messages by reason (lowbw.adapters.metrics.BRIDGE_SKIP_REASONS).
        self.skipped: dict[str, int] = {}
        self._connect_failures = 0  # in a row, since the last successful connection
        self.inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.pending: collections.deque[Incoming] = collections.deque()
        self._pub_mids: dict[int, dict[str, Any]] = {}
        self._stop = False
        self._closed = False
        self.connected = False
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        try:
            for dev in cfg.devices:
                dcfg = load_device_config(dev.config)
                if dcfg.name in self.links:
                    raise DeviceLinkError("device %s is configured twice" % dcfg.name)
                link = DeviceLink(dcfg, dev.state, command_poll=cfg.command_poll, logger=log)
                link.device.on_command = self._command_handler(link.name)
                self.links[link.name] = link
                for alias in [link.name, *dev.aliases]:
                    if self.names.get(alias, link.name) != link.name:
                        raise DeviceLinkError("alias %s names two devices" % alias)
                    self.names[alias] = link.name
                self.commands_topic[link.name] = dev.commands_topic or cfg.commands_topic
                self.sel.register(link.fileno(), selectors.EVENT_READ, link)
            self.state = BridgeState(cfg.state, cfg.dedup_keep)
            self.lorawan: LorawanSide | None = None
            if cfg.format != "generic":
                self.lorawan = LorawanSide(self, cfg.lorawan)
            self.client = self._make_client()
        except BaseException:
            self._close_links()
            self.sel.close()
            self._wake_r.close()
            self._wake_w.close()
            raise
        partial = self.state.reconcile(lambda name: self.links[name].next_rid if name in self.links else None)
        if self.lorawan is not None:
            self.lorawan.reconcile()
        if partial:
            log.warning(
                "%d message(s) were being queued when the bridge stopped; their redelivery completes them",
                partial,
            )

    def add_link(self, link: DeviceLink, aliases: list[str]) -> None:
        """Speak for one more device (the LoRaWAN side's auto-enrolled ones)."""
        if link.name in self.links:
            raise DeviceLinkError("device %s is configured twice" % link.name)
        link.device.on_command = self._command_handler(link.name)
        self.links[link.name] = link
        for alias in [link.name, *aliases]:
            self.names.setdefault(alias, link.name)
        self.commands_topic[link.name] = None
        self.sel.register(link.fileno(), selectors.EVENT_READ, link)

    # -- MQTT client (its callbacks run in paho's thread: they only hand over) -----------

    def _make_client(self) -> mqtt.Client:
        m = self.cfg.mqtt
        v5 = m.protocol == "5"
        c = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=m.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False,
            manual_ack=True,
        )
        if m.username:
            c.username_pw_set(m.username, m.password)
        if m.tls.enabled:
            c.tls_set(
                ca_certs=str(m.tls.ca_file) if m.tls.ca_file else None,
                certfile=str(m.tls.cert_file) if m.tls.cert_file else None,
                keyfile=str(m.tls.key_file) if m.tls.key_file else None,
            )
            if m.tls.insecure:
                c.tls_insecure_set(True)
        c.reconnect_delay_set(max(1, int(m.reconnect_min)), max(1, math.ceil(m.reconnect_max)))
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        return c

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.error(
                "broker %s:%d refused the connection: %s", self.cfg.mqtt.host, self.cfg.mqtt.port, reason
            )
            return
        self.connected = True
        self.counters["connects"] += 1
        log.info(
            "connected to %s:%d (MQTT %s, session %s)%s",
            self.cfg.mqtt.host,
            self.cfg.mqtt.port,
            self.cfg.mqtt.protocol,
            "resumed" if flags.session_present else "new",
            " after %d failed attempt(s)" % self._connect_failures if self._connect_failures else "",
        )
        self._connect_failures = 0
        filters = list(dict.fromkeys(rule.filter for rule in self.cfg.topics))
        if self.lorawan is not None:
            filters = self.lorawan.filters()
        if self.cfg.format == "tts-v3":
            # The Things Stack's MQTT server: QoS 0 only (docs/lorawan.md, what can be lost).
            client.subscribe([(f, 0) for f in filters])
        elif self.cfg.mqtt.protocol == "5":
            # retainHandling 2: no stored (retained) values on subscribing; they are not new readings.
            # noLocal: never our own command publications back (a filter such as
            # plant/+/+ also matches plant/{device}/commands).
            opts = SubscribeOptions(qos=1, noLocal=True, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
            client.subscribe([(f, opts) for f in filters])
        else:
            client.subscribe([(f, 1) for f in filters])

    def reconnect_delay(self, failures: int) -> float:
        """Seconds paho waits after the ``failures``-th failed attempt in a row (1-based):
        reconnect_min, doubling up to reconnect_max (as set in ``_make_client``)."""
        m = self.cfg.mqtt
        lo, hi = max(1, int(m.reconnect_min)), max(1, math.ceil(m.reconnect_max))
        return float(min(lo * 2 ** min(failures - 1, 30), hi))

    def _on_connect_fail(self, client: mqtt.Client, _u: Any) -> None:
        # Every attempt is logged: the backoff (at most one a reconnect_max) keeps it short.
        self._connect_failures += 1
        self.counters["connect_failures"] += 1
        m = self.cfg.mqtt
        log.warning(
            "cannot connect to the MQTT broker %s:%d: %s; retrying in %g s (attempt %d; backoff %g..%g s)",
            m.host,
            m.port,
            describe_os_error(getattr(client, "last_error", None)),
            self.reconnect_delay(self._connect_failures),
            self._connect_failures,
            max(1, int(m.reconnect_min)),
            max(1, math.ceil(m.reconnect_max)),
        )

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, reasons: list[Any], _p: Any) -> None:
        bad = [str(r) for r in reasons if r.is_failure]
        if bad:
            log.error("the broker refused subscription(s): %s", ", ".join(bad))
        else:
            log.info("subscribed (QoS %s)", ", ".join(str(r.value) for r in reasons))

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        if self.connected:
            self.counters["disconnects"] += 1
            if self._stop:
                log.info("disconnected from the broker")
            else:
                log.warning("disconnected from the broker (%s); reconnecting with backoff", reason)
        self.connected = False

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = None
        arrived = time.time()
        item = (topic, payload, msg.qos, msg.mid, bool(msg.dup), bool(msg.retain), digest(payload), arrived)
        self.inbox.put(("msg", item))
        self._wake()

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, _reason: Any, _p: Any) -> None:
        self.inbox.put(("pub", mid))
        self._wake()

    # -- life cycle ---------------------------------------------------------------------

    def stop(self) -> None:
        """Ask ``run`` to return (thread- and signal-safe)."""
        self._stop = True
        self._wake()

    def run(self) -> None:
        m = self.cfg.mqtt
        log.info(
            "MQTT bridge: %s:%d as %s, devices %s, topics %s",
            m.host,
            m.port,
            m.client_id,
            ", ".join(self.links),
            ", ".join(r.filter for r in self.cfg.topics),
        )
        try:
            if m.protocol == "5":
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = m.session_expiry
                props.ReceiveMaximum = m.receive_maximum
                self.client.connect_async(m.host, m.port, m.keepalive, clean_start=False, properties=props)
            else:
                self.client.connect_async(m.host, m.port, m.keepalive)
            self.client.loop_start()
            for entry in list(self.state.outbox):
                self._publish_command(entry)
            while not self._stop:
                now = time.monotonic()
                self._drain_inbox()
                self._process_pending()
                wake: float | None = None
                for link in self.links.values():
                    try:
                        due = link.service(now)
                    except OSError as exc:
                        raise BridgeFatal("%s: cannot write the device state: %s" % (link.name, exc))
                    if due is not None and (wake is None or due < wake):
                        wake = due
                timeout = None if wake is None else max(0.0, wake - time.monotonic())
                if self.pending and timeout is None:
                    timeout = 1.0
                for key, _ev in self.sel.select(timeout):
                    if key.data is None:
                        try:
                            self._wake_r.recv(4096)
                        except OSError:
                            pass
                    else:
                        key.data.readable(time.monotonic())
        finally:
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.client.disconnect()
        except Exception:  # noqa: BLE001 - shutting down; the broker copes with a dropped connection
            pass
        self.client.loop_stop()
        self._drain_publications()
        self._close_links()
        self.sel.close()
        self._wake_r.close()
        self._wake_w.close()
        log.info("MQTT bridge stopped: %s", json.dumps(self.stats(), sort_keys=True))

    def _close_links(self) -> None:
        for link in self.links.values():
            link.close()

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counters)
        out["held"] = len(self.pending)
        out["outbox"] = len(self.state.outbox) if hasattr(self, "state") else 0
        out["devices"] = {name: link.stats() for name, link in self.links.items()}
        if getattr(self, "lorawan", None) is not None:
            assert self.lorawan is not None
            out.update(self.lorawan.stats())
        return out

    # -- messages -----------------------------------------------------------------------

    def _drain_inbox(self) -> None:
        while True:
            try:
                kind, item = self.inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "pub":
                self._published(item)
                continue
            topic, payload, qos, mid, dup, retain, dig, arrived = item
            self.counters["received"] += 1
            if topic is None:
                self.counters["bad"] += 1
                self.skip("topic_not_utf8")
                log.warning("skipped a message whose topic is not UTF-8")
                self._ack_raw(mid, qos)
                continue
            m = Incoming(topic, payload, qos, mid, dup, retain, dig, arrived)
            if qos > 0 and any(p.mid == mid and p.topic == topic and p.digest == dig for p in self.pending):
                # A redelivery (after a reconnect) of a message still waiting here.
                self.counters["duplicates"] += 1
                continue
            self.pending.append(m)

    def _drain_publications(self) -> None:
        # At shutdown: settle the outbox for acknowledgements that arrived;
        # messages still waiting stay unacknowledged (the broker resends them).
        while True:
            try:
                kind, item = self.inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "pub":
                try:
                    self._published(item)
                except BridgeFatal as exc:
                    log.error("%s", exc.message)
                    return

    def _process_pending(self) -> None:
        while self.pending:
            if not self._take(self.pending[0]):
                self.counters["held"] = len(self.pending)
                return
            self.pending.popleft()

    def _take(self, m: Incoming) -> bool:
        """Queue, skip or recognise ``m``; False if it must wait for room in the device queue."""
        now = time.monotonic()
        if m.retain:
            self.counters["retained_skipped"] += 1
            log.info("%s: skipped a retained (stored) value", m.topic)
            self._ack(m)
            return True
        if self.lorawan is not None:
            return self.lorawan.take(m)
        own = (m.topic, m.digest)
        if m.topic is not None and own in self._own_commands:
            # One of our own command publications, back through a reading filter.
            self._own_commands.remove(own)
            self.counters["own_commands"] += 1
            self._ack(m)
            return True
        entry = self.state.match(m.mid, m.topic, m.digest) if (m.qos > 0 and m.dup) else None
        if entry is not None and entry.done >= entry.count:
            self.counters["duplicates"] += 1
            log.info("%s: redelivery of packet %d, already queued: acknowledged only", m.topic, m.mid)
            self._ack(m)
            return True
        try:
            link, readings, when = self._resolve(m)
        except MappingError as exc:
            self.counters["bad"] += 1
            self.skip("too_large" if len(m.payload) > self.cfg.max_payload else "unmapped")
            self.throttle.warning(now, "%s: skipped: %s", m.topic, exc.message)
            self._ack(m)
            return True
        if entry is not None:
            # Recorded, then the bridge stopped part way: queue the rest only.
            done = max(entry.done, 0)
            readings = readings[done:]
        if not link.room_for(len(readings)) and link.device.pending() > 0:
            return False
        if entry is not None:
            # Re-anchor so that ``reconcile`` still counts exactly: the rest
            # gets the ids from next_rid on.
            entry.first_rid = link.next_rid - done
            entry.done = -1
            self._save()
        elif m.qos > 0:
            entry = self.state.record(m.mid, m.topic, m.digest, link.name, link.next_rid, len(readings))
            self._save()
        for slot, vals in readings:
            try:
                link.queue(slot, vals, when)
            except EncodeError as exc:
                self.counters["bad"] += 1
                self.skip("out_of_range")
                log.warning("%s: skipped: %s", m.topic, exc.message)
                break
            except OSError as exc:
                raise BridgeFatal("%s: cannot write the device state: %s" % (link.name, exc))
            self.counters["readings"] += 1
        if entry is not None:
            entry.done = entry.count
        self.counters["queued"] += 1
        log.info("%s -> %s: queued %s", m.topic, link.name, describe(self._mapper(0, link), readings))
        self._ack(m)
        return True

    def _resolve(self, m: Incoming) -> tuple[DeviceLink, list[Reading], float]:
        if len(m.payload) > self.cfg.max_payload:
            raise MappingError(
                "payload of %d bytes (bridge.max_payload %d)" % (len(m.payload), self.cfg.max_payload)
            )
        index = next(
            (i for i, r in enumerate(self.cfg.topics) if mqtt.topic_matches_sub(r.filter, m.topic)), None
        )
        if index is None:
            raise MappingError("no [[topic]] filter matches")
        rule = self.cfg.topics[index]
        levels = m.topic.split("/")
        if rule.device is not None:
            ref: str | None = rule.device
        elif rule.device_segment is not None:
            if rule.device_segment >= len(levels):
                raise MappingError("no topic level %d to name the device" % rule.device_segment)
            ref = levels[rule.device_segment]
        else:
            ref = next(iter(self.links))
        name = self.names.get(ref) if ref is not None else None
        if name is None:
            raise MappingError("no device named %r (devices: %s)" % (ref, ", ".join(sorted(self.names))))
        link = self.links[name]
        mapper = self._mapper(index, link)
        obj = decode_payload(m.payload, rule.payload)
        # Sent as an absolute time, which the proxy keeps exactly: the payload's own
        # time if it states one, else when the message arrived here.
        when = m.arrived or time.time()
        if isinstance(obj, dict) and rule.time_field and rule.time_field in obj:
            obj = dict(obj)
            when = unix_from_timestamp(obj.pop(rule.time_field), time.time(), rule.time_field)
        slot: int | None = None
        if rule.slot is not None:
            slot = mapper.slot_index(rule.slot)
        elif rule.slot_segment is not None:
            if rule.slot_segment >= len(levels):
                raise MappingError("no topic level %d to name the slot" % rule.slot_segment)
            slot = mapper.slot_index(levels[rule.slot_segment])
        if isinstance(obj, list):
            raise MappingError("a JSON/CBOR array is not a reading (publish a number or an object)")
        if slot is not None:
            if isinstance(obj, dict):
                return link, [mapper.for_slot(slot, obj)], when
            if rule.field_name is not None:
                return link, [mapper.for_slot(slot, {rule.field_name: obj})], when
            return link, [mapper.one(slot, obj)], when
        if isinstance(obj, dict):
            return link, mapper.map(obj), when
        assert is_scalar(obj)
        return link, mapper.map({rule.field_name or levels[-1]: obj}), when

    def _mapper(self, index: int, link: DeviceLink) -> SlotMapper:
        key = (index, link.name)
        mp = self._mappers.get(key)
        if mp is None:
            rename = self.cfg.topics[index].rename if index < len(self.cfg.topics) else {}
            mp = SlotMapper(link.cfg.slots, rename, strict=False)
            self._mappers[key] = mp
        return mp

    def skip(self, reason: str) -> None:
        """Count a message skipped for ``reason`` (the metrics' messages_skipped)."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def _save(self) -> None:
        try:
            self.state.save()
        except StateFileError as exc:
            raise BridgeFatal(exc.message)

    def _ack(self, m: Incoming) -> None:
        self._ack_raw(m.mid, m.qos)

    def _ack_raw(self, mid: int, qos: int) -> None:
        if qos > 0:
            # Not connected: the broker redelivers it after the reconnect, and
            # the duplicate key (or the pending check) makes that a plain ack.
            self.client.ack(mid, qos)
            self.counters["acked"] += 1

    # -- commands (room -> MQTT) ----------------------------------------------------------

    def _command_handler(self, name: str) -> Any:
        def on_command(command_id: int, sender: str, body: str, event_id: str) -> None:
            self.counters["commands"] += 1
            log.info("command %d for %s from %s (%s)", command_id, name, sender, event_id)
            if self.lorawan is not None:
                self.lorawan.on_command(name, command_id, sender, body, event_id)
                return
            entry = {"device": name, "id": command_id, "sender": sender, "body": body, "event_id": event_id}
            if self.commands_topic.get(name) is None:
                log.warning(
                    "%s: no commands_topic configured: command %d only logged: %s", name, command_id, body
                )
                return
            self.state.outbox.append(entry)
            # Must be durable before we return: the device acknowledges the
            # command to the proxy right after this callback.
            self._save()
            self._publish_command(entry)

        return on_command

    def _publish_command(self, entry: dict[str, Any]) -> None:
        if "topic" in entry and "payload" in entry:
            # A LoRaWAN downlink, built when the command arrived (lowbw.adapters.lorawan).
            qos = 0 if self.cfg.format == "tts-v3" else self.cfg.commands_qos
            info = self.client.publish(str(entry["topic"]), str(entry["payload"]).encode("utf-8"), qos=qos)
            if qos == 0:
                self._published_entry(entry)
            else:
                self._pub_mids[info.mid] = entry
            log.info(
                "command %s for %s -> downlink on %s", entry.get("id"), entry.get("device"), entry["topic"]
            )
            return
        template = self.commands_topic.get(entry.get("device", "")) or self.cfg.commands_topic
        if template is None:
            return
        try:
            topic = template.format(device=entry["device"])
        except (KeyError, IndexError, ValueError) as exc:
            log.error("commands_topic %r: %s", template, exc)
            return
        if self.cfg.commands_format == "text":
            payload = str(entry.get("body", "")).encode("utf-8")
        else:
            payload = json.dumps(entry, ensure_ascii=False, sort_keys=True).encode("utf-8")
        self._own_commands.append((topic, digest(payload)))
        info = self.client.publish(topic, payload, qos=self.cfg.commands_qos)
        if self.cfg.commands_qos == 0:
            self._published_entry(entry)
        else:
            self._pub_mids[info.mid] = entry
        log.info("command %s for %s -> %s", entry.get("id"), entry.get("device"), topic)

    def _published(self, mid: int) -> None:
        entry = self._pub_mids.pop(mid, None)
        if entry is not None:
            self._published_entry(entry)

    def _published_entry(self, entry: dict[str, Any]) -> None:
        try:
            self.state.outbox.remove(entry)
        except ValueError:
            return
        self.counters["commands_published"] += 1
        log.info("command %s for %s: the broker has it", entry.get("id"), entry.get("device"))
        self._save()


# ---- command line -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lowbw mqtt-bridge",
        description=(
            "Bridge MQTT topics into Matrix rooms through the lowbw proxy, acting as enrolled "
            "devices: each message on a configured topic filter becomes a reading (plain number, "
            "JSON or CBOR payload), acknowledged to the broker only once it is durably queued, so "
            "nothing is lost or duplicated across restarts. Commands from the rooms are published "
            "to MQTT."
        ),
        epilog=(
            "See examples/mqtt-bridge.toml and the docs (Adapters) for every key. Exit status: 0 "
            "stopped by SIGINT/SIGTERM, 1 failure (bad config included), 2 bad usage."
        ),
    )
    p.add_argument("--config", required=True, metavar="FILE", help="bridge config (TOML)")
    p.add_argument("--check", action="store_true", help="validate the config and device configs, then exit")
    p.add_argument("--stats", metavar="FILE", help="write counters as JSON to FILE when stopping")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: every datagram)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        cfg = adapter_config.load_bridge(args.config)
        if args.check:
            for dev in cfg.devices:
                load_device_config(dev.config)
            print(
                "%s: OK (%d device(s), %d topic rule(s))" % (args.config, len(cfg.devices), len(cfg.topics))
            )
            return 0
    except (adapter_config.AdapterConfigError, DeviceLinkError) as exc:
        # A bad config is a failure like any other (exit 1); 2 is for usage errors only.
        print("lowbw mqtt-bridge: error: %s" % exc.message, file=sys.stderr)
        return 1
    return serve(
        "MQTT bridge",
        "lowbw mqtt-bridge",
        cfg.metrics,
        lambda: MqttBridge(cfg),
        args.stats,
        log,
        lambda adapter, started: bridge_families(adapter, cfg.metrics, started),
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
