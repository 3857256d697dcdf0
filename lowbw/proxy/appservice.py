"""The application-service listener: room events pushed by the homeserver -> device commands.

The homeserver sends every event in rooms where one of the appservice's users
(the devices) is joined as ``PUT /_matrix/app/v1/transactions/{txnId}``
(``/transactions/{txnId}`` for old homeservers), with the registration's
``hs_token`` as ``Authorization: Bearer`` (or, from old homeservers, the
``access_token`` query parameter). A wrong token gets 403, none 401, and the
body is not read.

A command for device NAME is

* an ``m.room.message`` in one of NAME's rooms, from anyone but NAME's own
  user, whose ``body`` starts with ``!NAME `` (the command text is the rest), or
* an ``org.lowbw.command`` event in one of NAME's rooms with content
  ``{"device": NAME, "body": "..."}`` (without a text ``body``, the whole
  content as compact JSON is the command text).

Commands are queued durably in the registry, deduplicated by event id (the
homeserver retries a transaction until it gets 200, and may push the same event
again). If the registry cannot store one, the answer is 500 so the homeserver
retries: a command is never dropped silently. Delivery to the device is
``lowbw.proxy.resources`` (option 65004, GET/POST ``x``).

An ``m.room.encryption`` state event in a device's room marks the device as
encrypted at once (``SessionTable.room_encrypted``): its next reading is
Megolm-encrypted (lowbw.proxy.e2ee), never plaintext.

``/_matrix/app/v1/users/*`` and ``/rooms/*`` (the homeserver asking whether
a user or alias exists) answer 404: devices are created at enrollment only.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from lowbw.proxy.registry import DeviceRecord, RegistryError
from lowbw.proxy.sessions import SessionTable

log = logging.getLogger("lowbw.proxy.appservice")

COMMAND_EVENT_TYPE = "org.lowbw.command"
MAX_TRANSACTION_BYTES = 16 * 1024 * 1024


def detect_command(event: Any, devices: Mapping[str, DeviceRecord]) -> tuple[str, str] | None:
    """(device name, command text) if ``event`` is a command for a device, else None."""
    if not isinstance(event, dict):
        return None
    etype = event.get("type")
    room = event.get("room_id")
    sender = event.get("sender")
    content = event.get("content")
    if not isinstance(room, str) or not isinstance(sender, str) or not isinstance(content, dict):
        return None
    if etype == "m.room.message":
        body = content.get("body")
        if not isinstance(body, str) or not body.startswith("!"):
            return None
        name, sep, text = body[1:].partition(" ")
        if not sep or not text:
            return None
    elif etype == COMMAND_EVENT_TYPE:
        name = content.get("device")  # type: ignore[assignment]
        if not isinstance(name, str):
            return None
        body = content.get("body")
        text = (
            body if isinstance(body, str) else json.dumps(content, separators=(",", ":"), ensure_ascii=False)
        )
    else:
        return None
    rec = devices.get(name)
    if rec is None or room not in rec.rooms or sender == rec.user_id:
        return None
    return name, text


def queue_command(table: SessionTable, event: Any, only: str | None = None) -> int | None:
    """Queue ``event`` durably if it is a command (for device ``only``, when given).

    The new command's id, or None if it is no command or was queued before (the
    homeserver pushes again; a decrypted event may be seen twice). RegistryError
    if the registry cannot store it. Used for pushed plaintext events and for
    events decrypted from encrypted rooms (lowbw.proxy.e2ee) alike.
    """
    found = detect_command(event, table.devices)
    if found is None or (only is not None and found[0] != only):
        return None
    name, text = found
    event_id = event.get("event_id")
    if not isinstance(event_id, str):
        return None
    cid = table.registry.enqueue_command(name, event_id, str(event["sender"]), text)
    if cid is not None:
        table.commands_queued += 1
        log.info("%s: command %d queued (%d B)", name, cid, len(text.encode("utf-8")))
        table.refresh_commands(name)
    return cid


class AppserviceListener:
    """aiohttp server for the homeserver's pushes (module docstring)."""

    def __init__(self, hs_token: str, table: SessionTable, host: str = "127.0.0.1", port: int = 0) -> None:
        if not hs_token:
            raise ValueError("the appservice listener needs the hs_token")
        self._hs_token = hs_token.encode("utf-8")
        self.table = table
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        # SO_REUSEPORT: several proxies of one fleet on this machine share the port.
        self.reuse_port = False
        self.transactions = 0
        self.queued = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_TRANSACTION_BYTES)
        app.router.add_put("/_matrix/app/v1/transactions/{txn}", self._transaction)
        app.router.add_put("/transactions/{txn}", self._transaction)
        app.router.add_post("/_matrix/app/v1/ping", self._ping)
        for prefix in ("/_matrix/app/v1", ""):
            app.router.add_get(prefix + "/users/{user}", self._not_found)
            app.router.add_get(prefix + "/rooms/{alias}", self._not_found)
        return app

    async def start(self) -> int:
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_port=self.reuse_port or None)
        await site.start()
        self._runner = runner
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- handlers ------------------------------------------------------------------

    def _authorised(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else request.query.get("access_token", "")
        if not token:
            return web.json_response({"errcode": "M_UNAUTHORIZED", "error": "no token"}, status=401)
        if not hmac.compare_digest(token.encode("utf-8"), self._hs_token):
            log.warning("appservice push with a wrong token refused")
            return web.json_response({"errcode": "M_FORBIDDEN", "error": "bad token"}, status=403)
        return None

    async def _ping(self, request: web.Request) -> web.Response:
        refused = self._authorised(request)
        return refused or web.json_response({})

    async def _not_found(self, request: web.Request) -> web.Response:
        refused = self._authorised(request)
        return refused or web.json_response({"errcode": "M_NOT_FOUND", "error": "not here"}, status=404)

    async def _transaction(self, request: web.Request) -> web.Response:
        refused = self._authorised(request)
        if refused is not None:
            return refused
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return web.json_response({"errcode": "M_NOT_JSON", "error": "not JSON"}, status=400)
        events = body.get("events") if isinstance(body, dict) else None
        if not isinstance(events, list):
            return web.json_response({"errcode": "M_BAD_JSON", "error": "no events"}, status=400)
        self.transactions += 1
        table = self.table
        table.poll_changes()
        for event in events:
            if (
                isinstance(event, dict)
                and event.get("type") == "m.room.encryption"
                and event.get("state_key") == ""
                and isinstance(event.get("room_id"), str)
            ):
                # A device's room became encrypted: from now on its events are Megolm.
                table.room_encrypted(event["room_id"])
                continue
            try:
                cid = queue_command(table, event)
            except RegistryError as exc:
                log.error("command could not be queued (%s); homeserver will retry", exc.message)
                return web.json_response({"errcode": "M_UNKNOWN", "error": "queue unavailable"}, status=500)
            if cid is not None:
                self.queued += 1
        return web.json_response({})
