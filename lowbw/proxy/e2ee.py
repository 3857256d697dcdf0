"""End-to-end encrypted rooms: the proxy is each device's Matrix device.

The radio link does not change: Noise between device and proxy, the same bytes
on the air. For a device whose room is encrypted (registry ``encrypted``), the
proxy holds that device user's Matrix device, like a bridge does: an Olm
account with device keys, one-time keys and a fallback key uploaded, the
Megolm sessions of its rooms, and a self-signed cross-signing identity that
signs the device (``crosssign``). Readings go out as ``m.room.encrypted``;
commands typed into the encrypted room are decrypted and queued exactly like
plaintext ones. The homeserver stores only ciphertext.

The Olm/Megolm work is matrix-nio's crypto layer on vodozemac (the maintained
Rust implementation; libolm is not used), one ``nio.AsyncClient`` per
encrypted device with its own SQLite crypto store under ``<registry dir>/e2ee``
(directory 0700, files 0600). Account and sessions in that store are pickled
with a key derived from the proxy's static private key (``pickle_key``), so a
copy of the store alone reveals nothing; the proxy key file and the store
together are what an operator must protect (docs/e2ee.md).

Each encrypted device has:

* a **Matrix device**: appservice mode logs the device user in with
  ``m.login.application_service`` (the appservice token, no password exists);
  token mode uses the device user's own access token. Device ID and token are
  kept in the registry (``matrix_devices``).
* a **sync loop** (its own long poll): to-device messages (room keys, Olm
  sessions), device-list changes of the room's members (nio re-queries keys
  and starts a new Megolm session when a member leaves or a device changes),
  one-time key counts, and the room timeline, where commands arrive. Per
  device-user syncs rather than Synapse's experimental appservice extensions
  (MSC2409/MSC3202): they work on any homeserver and in token mode, at the
  cost of one long poll per encrypted device (docs/e2ee.md has the figures).
* **sending**: ``encrypt(rec, room, type, content)`` makes sure members and
  their device keys are known, shares the room's outbound Megolm session over
  Olm with every device of every joined member that lacks it, honours the
  room's ``rotation_period_ms`` / ``rotation_period_msgs``, and returns the
  ``m.room.encrypted`` content. The caller posts it with its usual credential
  (the appservice token keeps the measurement time as ``ts``) and transaction
  ID, so a retried reading is still one event.

Fail closed: when the device's crypto is not ready (first login, keys not
uploaded, homeserver down) ``encrypt`` raises ``NotReady`` and the reading is
answered 5.03 with Retry-After; the device keeps it in its store and sends it
again (a reading is acknowledged only once its event is stored in the room,
as for plaintext rooms). Plaintext is never posted into an encrypted room.

Undecryptable commands (the room key has not arrived yet) are logged with the
reason and decrypted again after every sync, until ``UNDECRYPTED_KEEP``
seconds have passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp

from lowbw.proxy import crosssign
from lowbw.proxy.homeserver import CLIENT_V3, HomeserverUnavailable, encode_path
from lowbw.proxy.registry import DeviceRecord, Registry
from lowbw.wire.errors import LowbwError

log = logging.getLogger("lowbw.proxy.e2ee")

MEGOLM = "m.megolm.v1.aes-sha2"
# Long-poll of each device's sync loop (ms) and the wait after a failed sync (s).
SYNC_TIMEOUT_MS = 30000
SYNC_RETRY = (1.0, 30.0)
# How long an undecryptable command is retried as room keys arrive.
UNDECRYPTED_KEEP = 24 * 3600.0
UNDECRYPTED_MAX = 256
# The room's rotation defaults (Matrix spec: one week, 100 messages).
DEFAULT_ROTATION_MS = 7 * 24 * 3600 * 1000
DEFAULT_ROTATION_MSGS = 100
# Only the device's own rooms, only the last events: a device user's sync stays small.
SYNC_FILTER: dict[str, Any] = {
    "presence": {"not_types": ["*"]},
    "account_data": {"not_types": ["*"]},
    "room": {
        "timeline": {"limit": 20},
        "ephemeral": {"not_types": ["*"]},
        "account_data": {"not_types": ["*"]},
        "state": {"lazy_load_members": False},
    },
}


class E2EEError(LowbwError):
    """Something about a device's end-to-end encryption failed (the message says what)."""


class NotReady(E2EEError):
    """The device's crypto cannot encrypt yet: the reading waits (5.03), never goes out in plaintext."""


def pickle_key(proxy_private_key: bytes) -> str:
    """The key the crypto store's pickles are encrypted with, derived from the proxy's static key."""
    return hmac.new(bytes(proxy_private_key), b"lowbw e2ee store pickle v1", hashlib.sha256).hexdigest()


def store_dir(registry_path: Path) -> Path:
    return Path(registry_path).resolve().parent / "e2ee"


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


@dataclass
class _Rotation:
    ms: int = DEFAULT_ROTATION_MS
    msgs: int = DEFAULT_ROTATION_MSGS


@dataclass
class _Undecrypted:
    event: Any
    room_id: str
    first_seen: float
    reason: str


@dataclass
class DeviceCrypto:
    """One device user's Matrix device: nio client, sync loop, undecrypted commands."""

    rec: DeviceRecord
    client: Any  # nio.AsyncClient
    ready: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task[None] | None = None
    rotation: dict[str, _Rotation] = field(default_factory=dict)
    undecrypted: list[_Undecrypted] = field(default_factory=list)
    synced: asyncio.Event = field(default_factory=asyncio.Event)


class E2EEService:
    """Every encrypted device of one proxy (module docstring).

    ``on_command(device_name, event_dict)`` is called with each decrypted room
    event (the same shape the appservice push gives plaintext events:
    ``type``, ``room_id``, ``sender``, ``event_id``, ``content``).
    """

    def __init__(
        self,
        homeserver_url: str,
        registry: Registry,
        proxy_private_key: bytes,
        *,
        mode: str,
        as_token: str | None,
        verify_tls: bool = True,
        store: Path | None = None,
        on_command: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.homeserver_url = homeserver_url.rstrip("/")
        self.registry = registry
        self.mode = mode
        self.as_token = as_token
        self.verify_tls = verify_tls
        self.store = store if store is not None else store_dir(registry.path)
        self._pickle_key = pickle_key(proxy_private_key)
        self.on_command = on_command
        self.devices: dict[str, DeviceCrypto] = {}
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._closed = False
        self.counters = {"encrypted": 0, "decrypted_commands": 0, "undecryptable": 0, "not_ready": 0}

    # -- life cycle ------------------------------------------------------------------

    def start_all(self, records: list[DeviceRecord]) -> None:
        """Begin bringing up every encrypted device (in the background)."""
        for rec in records:
            if rec.encrypted and not rec.revoked:
                self.ensure(rec)

    def ensure(self, rec: DeviceRecord) -> None:
        """Start ``rec``'s Matrix device in the background unless it runs or is starting."""
        if self._closed or rec.name in self.devices or rec.name in self._starting:
            return
        task = asyncio.get_running_loop().create_task(self._start(rec), name="e2ee start %s" % rec.name)
        self._starting[rec.name] = task
        task.add_done_callback(functools.partial(self._started, rec.name))

    def _started(self, name: str, task: asyncio.Task[None]) -> None:
        self._starting.pop(name, None)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            text = exc.message if isinstance(exc, LowbwError) and exc.message else repr(exc)
            log.warning("%s: end-to-end encryption not ready: %s (retried on the next reading)", name, text)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._starting.values()):
            task.cancel()
        for dev in list(self.devices.values()):
            await self._stop_device(dev)
        self.devices.clear()

    def forget(self, name: str) -> None:
        """A revoked device: stop its sync loop (its state stays in the store)."""
        dev = self.devices.pop(name, None)
        if dev is not None:
            asyncio.get_running_loop().create_task(self._stop_device(dev))

    async def _stop_device(self, dev: DeviceCrypto) -> None:
        if dev.task is not None:
            dev.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await dev.task
        with contextlib.suppress(Exception):
            await dev.client.close()

    # -- bringing a device up ------------------------------------------------------------

    async def _login(self, rec: DeviceRecord) -> tuple[str, str]:
        """(device_id, access_token) of the device user's Matrix device, logging in once."""
        known = self.registry.matrix_device(rec.name)
        if known is not None:
            return known
        localpart = rec.user_id[1:].split(":", 1)[0]
        async with aiohttp.ClientSession() as http:
            try:
                if self.mode == "appservice":
                    async with http.post(
                        self.homeserver_url + CLIENT_V3 + "/login",
                        json={
                            "type": "m.login.application_service",
                            "identifier": {"type": "m.id.user", "user": localpart},
                            "initial_device_display_name": "lowbw proxy (%s)" % rec.name,
                        },
                        headers={"Authorization": "Bearer %s" % self.as_token},
                        ssl=True if self.verify_tls else False,
                    ) as resp:
                        body = await resp.json(content_type=None)
                        if resp.status != 200 or not isinstance(body, dict):
                            raise E2EEError("login of %s refused: %s" % (rec.user_id, resp.status))
                        device_id, token = body.get("device_id"), body.get("access_token")
                else:
                    token = rec.access_token
                    async with http.get(
                        self.homeserver_url + CLIENT_V3 + "/account/whoami",
                        headers={"Authorization": "Bearer %s" % token},
                        ssl=True if self.verify_tls else False,
                    ) as resp:
                        body = await resp.json(content_type=None)
                        if resp.status != 200 or not isinstance(body, dict):
                            raise E2EEError("whoami of %s refused: %s" % (rec.user_id, resp.status))
                        device_id = body.get("device_id")
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise NotReady("homeserver unreachable: %s" % type(exc).__name__) from None
        if not isinstance(device_id, str) or not isinstance(token, str):
            raise E2EEError("the homeserver gave %s no device" % rec.user_id)
        self.registry.set_matrix_device(rec.name, device_id, token)
        log.info("%s: Matrix device %s for %s", rec.name, device_id, rec.user_id)
        return device_id, token

    async def _start(self, rec: DeviceRecord) -> None:
        from nio import AsyncClient, AsyncClientConfig

        device_id, token = await self._login(rec)
        path = _private_dir(self.store)
        config = AsyncClientConfig(
            encryption_enabled=True,
            pickle_key=self._pickle_key,
            store_sync_tokens=True,
            max_limit_exceeded=2,
            max_timeouts=2,
            request_timeout=SYNC_TIMEOUT_MS / 1000 + 15,
        )
        client = AsyncClient(
            self.homeserver_url,
            rec.user_id,
            device_id,
            store_path=str(path),
            config=config,
            ssl=True if self.verify_tls else False,
        )
        old_umask = os.umask(0o077)
        try:
            client.restore_login(rec.user_id, device_id, token)
        finally:
            os.umask(old_umask)
        dev = DeviceCrypto(rec, client)
        try:
            # Any authenticated call shows whether the stored login still holds.
            whoami = await client.whoami()
            if getattr(whoami, "status_code", None) == "M_UNKNOWN_TOKEN":
                self.registry.drop_matrix_device(rec.name)
                raise NotReady("the homeserver no longer knows %s's login; logging in again" % rec.user_id)
            if type(whoami).__name__.endswith("Error"):
                raise NotReady("homeserver: %s" % getattr(whoami, "message", whoami))
            if client.should_upload_keys:
                resp = await client.keys_upload()
                if type(resp).__name__.endswith("Error"):
                    raise NotReady("keys upload failed: %s" % getattr(resp, "message", resp))
            await self._upload_fallback_key(client)
            await crosssign.ensure_signed(
                client,
                self.store,
                self._pickle_key,
                as_token=self.as_token if self.mode == "appservice" else None,
            )
            await self._sync_once(dev, full_state=True)
            for room_id in rec.rooms:
                await self._learn_rotation(dev, room_id)
        except BaseException:
            await client.close()
            raise
        dev.ready = True
        self.devices[rec.name] = dev
        dev.task = asyncio.get_running_loop().create_task(
            self._sync_loop(dev), name="e2ee sync %s" % rec.name
        )
        log.info(
            "%s: end-to-end encryption ready (device %s, ed25519 %s)",
            rec.name,
            device_id,
            client.olm.account.identity_keys["ed25519"] if client.olm else "?",
        )

    async def _upload_fallback_key(self, client: Any) -> None:
        """A fresh signed fallback key, so Olm sessions can start even when every
        one-time key was claimed (nio keeps those topped up but has no fallback
        key of its own). Replaced at every start; vodozemac still accepts the
        previous one for sessions started with it."""
        account = client.olm.account._account  # the vodozemac Account nio wraps
        account.generate_fallback_key()
        uploads = {}
        for key_id, key in account.fallback_key.items():
            obj: dict[str, Any] = {"key": key.to_base64(), "fallback": True}
            obj["signatures"] = {client.user_id: {"ed25519:" + client.device_id: client.olm.sign_json(obj)}}
            uploads["signed_curve25519:" + key_id] = obj
        if not uploads:
            return
        async with aiohttp.ClientSession() as http:
            async with http.post(
                self.homeserver_url + CLIENT_V3 + "/keys/upload",
                json={"fallback_keys": uploads},
                headers={"Authorization": "Bearer %s" % client.access_token},
                ssl=True if self.verify_tls else False,
            ) as resp:
                if resp.status != 200:
                    raise NotReady("fallback key upload refused: %d" % resp.status)
        account.mark_keys_as_published()
        client.olm.save_account()

    async def _learn_rotation(self, dev: DeviceCrypto, room_id: str) -> None:
        resp = await dev.client.room_get_state_event(room_id, "m.room.encryption")
        content = getattr(resp, "content", None)
        rot = _Rotation()
        if isinstance(content, dict):
            ms, msgs = content.get("rotation_period_ms"), content.get("rotation_period_msgs")
            if isinstance(ms, int) and not isinstance(ms, bool) and ms > 0:
                rot.ms = ms
            if isinstance(msgs, int) and not isinstance(msgs, bool) and msgs > 0:
                rot.msgs = msgs
        dev.rotation[room_id] = rot

    # -- the sync loop ---------------------------------------------------------------------

    async def _sync_once(self, dev: DeviceCrypto, full_state: bool = False, timeout_ms: int = 0) -> None:
        client = dev.client
        resp = await client.sync(timeout=timeout_ms, sync_filter=SYNC_FILTER, full_state=full_state)
        if type(resp).__name__ != "SyncResponse":
            raise NotReady("sync failed: %s" % getattr(resp, "message", resp))
        await client.send_to_device_messages()
        if client.should_upload_keys:
            await client.keys_upload()
        if client.should_query_keys:
            await client.keys_query()
        if client.should_claim_keys:
            await client.keys_claim(client.get_users_for_key_claiming())
        self._take_events(dev, resp)
        self._retry_undecrypted(dev)
        dev.synced.set()
        dev.synced.clear()

    async def _sync_loop(self, dev: DeviceCrypto) -> None:
        delay = SYNC_RETRY[0]
        while True:
            try:
                await self._sync_once(dev, timeout_ms=SYNC_TIMEOUT_MS)
                delay = SYNC_RETRY[0]
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the loop must survive a bad sync
                log.warning("%s: sync failed (%s); again in %.0f s", dev.rec.name, type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(SYNC_RETRY[1], delay * 2)

    def _take_events(self, dev: DeviceCrypto, resp: Any) -> None:
        from nio import MegolmEvent

        own = dev.rec.user_id
        for room_id, info in resp.rooms.join.items():
            if room_id not in dev.rec.rooms:
                continue
            for ev in info.timeline.events:
                if getattr(ev, "sender", None) == own:
                    continue
                if isinstance(ev, MegolmEvent):
                    self._hold(dev, ev, room_id, "no room key for session %s yet" % ev.session_id)
                    continue
                if getattr(ev, "decrypted", False):
                    self._deliver(dev, room_id, ev)

    def _hold(self, dev: DeviceCrypto, ev: Any, room_id: str, reason: str) -> None:
        self.counters["undecryptable"] += 1
        log.warning(
            "%s: command %s from %s not decrypted: %s (kept, retried as keys arrive)",
            dev.rec.name,
            ev.event_id,
            ev.sender,
            reason,
        )
        dev.undecrypted.append(_Undecrypted(ev, room_id, time.monotonic(), reason))
        del dev.undecrypted[:-UNDECRYPTED_MAX]

    def _retry_undecrypted(self, dev: DeviceCrypto) -> None:
        from nio import EncryptionError

        keep = []
        now = time.monotonic()
        for item in dev.undecrypted:
            try:
                ev = dev.client.decrypt_event(item.event)
            except (EncryptionError, ValueError, KeyError) as exc:
                if now - item.first_seen < UNDECRYPTED_KEEP:
                    item.reason = str(exc) or type(exc).__name__
                    keep.append(item)
                else:
                    log.warning(
                        "%s: command %s dropped, never decrypted: %s",
                        dev.rec.name,
                        item.event.event_id,
                        item.reason,
                    )
                continue
            log.info("%s: command %s decrypted after its room key arrived", dev.rec.name, item.event.event_id)
            self._deliver(dev, item.room_id, ev)
        dev.undecrypted = keep

    def _deliver(self, dev: DeviceCrypto, room_id: str, ev: Any) -> None:
        source = getattr(ev, "source", None)
        if not isinstance(source, dict):
            return
        event = {
            "type": source.get("type"),
            "room_id": room_id,
            "sender": getattr(ev, "sender", None),
            "event_id": getattr(ev, "event_id", None),
            "content": source.get("content"),
        }
        self.counters["decrypted_commands"] += 1
        if self.on_command is not None:
            self.on_command(dev.rec.name, event)

    # -- sending -------------------------------------------------------------------------

    def ready(self, name: str) -> bool:
        dev = self.devices.get(name)
        return dev is not None and dev.ready

    async def encrypt(
        self, rec: DeviceRecord, room_id: str, event_type: str, content: dict[str, Any]
    ) -> dict[str, Any]:
        """The ``m.room.encrypted`` content for one event of ``rec`` in ``room_id``.

        NotReady if it cannot be encrypted yet (never falls back to plaintext)."""
        dev = self.devices.get(rec.name)
        if dev is None or not dev.ready:
            self.counters["not_ready"] += 1
            self.ensure(rec)
            raise NotReady("end-to-end encryption for %s is not ready yet" % rec.name)
        client = dev.client
        async with dev.lock:
            try:
                room = client.rooms.get(room_id)
                if room is None:
                    await self._sync_once(dev)
                    room = client.rooms.get(room_id)
                if room is None:
                    raise NotReady("%s is not in room %s yet" % (rec.user_id, room_id))
                if not room.encrypted:
                    # The registry says encrypted; nio has not seen the state yet. Never plaintext.
                    await self._sync_once(dev, full_state=True)
                    if not client.rooms[room_id].encrypted:
                        raise NotReady("room %s: encryption state not seen yet" % room_id)
                if not room.members_synced:
                    await client.joined_members(room_id)
                if client.should_query_keys:
                    await client.keys_query()
                if client.olm.should_share_group_session(room_id):
                    await client.share_group_session(room_id, ignore_unverified_devices=True)
                    rot = dev.rotation.get(room_id) or _Rotation()
                    session = client.olm.outbound_group_sessions.get(room_id)
                    if session is not None:
                        session.max_age = timedelta(milliseconds=rot.ms)
                        session.max_messages = rot.msgs
                _etype, encrypted = client.encrypt(room_id, event_type, content)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise HomeserverUnavailable(
                    "homeserver unreachable while sharing keys: %s" % type(exc).__name__
                )
            except LowbwError:
                raise
            except Exception as exc:  # noqa: BLE001 - nio's own errors: not ready, never plaintext
                raise NotReady("cannot encrypt for %s yet: %s" % (room_id, exc)) from None
        self.counters["encrypted"] += 1
        return dict(encrypted)

    def send_path(self, room_id: str, txn_id: str) -> str:
        return encode_path(CLIENT_V3 + "/rooms/{}/send/{}/{}", room_id, "m.room.encrypted", txn_id)
