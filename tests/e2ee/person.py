"""A person with an end-to-end encrypting Matrix client: matrix-nio with vodozemac.

``Person(url, user_id, password, store)`` logs in (a new Matrix device each
time), uploads its keys; ``sync()`` returns the timeline events it sees
(decrypted where it can: nio's event objects), ``say(room, text)`` sends an
encrypted message. Runs on its own event loop in the calling thread, so a
test can use it between blocking calls.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any


class Person:
    def __init__(self, url: str, user_id: str, password: str, store: Path) -> None:
        from nio import AsyncClient, AsyncClientConfig

        store.mkdir(parents=True, exist_ok=True)
        self.loop = asyncio.new_event_loop()
        self.client = AsyncClient(
            url,
            user_id,
            store_path=str(store),
            config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True),
        )
        resp = self.run(self.client.login(password, device_name="test person"))
        assert getattr(resp, "device_id", None), resp
        self.run(self._keys())
        self.seen: list[Any] = []

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _keys(self) -> None:
        await self.client.sync(timeout=0, full_state=True)
        if self.client.should_upload_keys:
            await self.client.keys_upload()

    async def _sync(self, timeout_ms: int) -> list[Any]:
        c = self.client
        resp = await c.sync(timeout=timeout_ms)
        if c.should_upload_keys:
            await c.keys_upload()
        if c.should_query_keys:
            await c.keys_query()
        if c.should_claim_keys:
            await c.keys_claim(c.get_users_for_key_claiming())
        await c.send_to_device_messages()
        out = []
        for _room_id, info in resp.rooms.join.items():
            out.extend(info.timeline.events)
        return out

    def sync(self, timeout_ms: int = 0) -> list[Any]:
        events = self.run(self._sync(timeout_ms))
        self.seen.extend(events)
        return events

    def join(self, room_id: str) -> None:
        resp = self.run(self.client.join(room_id))
        assert getattr(resp, "room_id", None) == room_id, resp
        self.sync()

    def leave(self, room_id: str) -> None:
        self.run(self.client.room_leave(room_id))

    def say(self, room_id: str, text: str) -> str:
        async def send() -> Any:
            self.seen.extend(await self._sync(0))
            return await self.client.room_send(
                room_id, "m.room.message", {"msgtype": "m.text", "body": text}, ignore_unverified_devices=True
            )

        resp = self.run(send())
        assert getattr(resp, "event_id", None), resp
        return str(resp.event_id)

    def close(self) -> None:
        self.run(self.client.close())
        self.loop.close()


def notices(events: list[Any]) -> list[Any]:
    """Decrypted m.notice readings among ``events`` (nio RoomMessageNotice)."""
    from nio import RoomMessageNotice

    return [e for e in events if isinstance(e, RoomMessageNotice)]
