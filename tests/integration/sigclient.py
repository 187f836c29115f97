"""A small test client for the signalling protocol over a real socket (aiohttp TestClient)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from aiohttp import ClientWebSocketResponse, WSMsgType, web
from aiohttp.test_utils import TestClient

PASSWORD = "correct-horse-9"
# The in-process app client every protocol test talks through (aiohttp generics: request, app).
AppClient = TestClient[web.Request, web.Application]

FAKE_SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"


def new_call_id() -> str:
    return uuid.uuid4().hex


async def register(client: AppClient, name: str, password: str = PASSWORD) -> str:
    res = await client.post("/api/register", json={"username": name, "password": password})
    body = await res.json()
    assert res.status == 201, body
    return str(body["token"])


async def give_credit(client: AppClient, name: str, amount: int = 5000) -> int:
    """Prepaid credit (minor units) for `name` on the in-process server (calls to phones are paid)."""
    from jego_call.signalling.keys import BILLING

    return await client.app[BILLING].top_up(name, amount, "test credit")


async def add_contact(client: AppClient, token: str, name: str) -> None:
    res = await client.post("/api/contacts", json={"username": name}, headers={"Authorization": f"Bearer {token}"})
    assert res.status in (200, 201), await res.text()


class Ws:
    """One signalling socket; `expect(type)` waits for the next message of that type.

    A reader task drains the socket all the time, as a browser does, so the server's
    heartbeat pings are answered even while a test waits on another socket.
    """

    def __init__(self, ws: ClientWebSocketResponse) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        while True:
            msg = await self.ws.receive()
            await self.inbox.put(msg)
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return

    @classmethod
    async def open(cls, client: AppClient, token: str | None = None) -> Ws:
        w = cls(await client.ws_connect("/ws"))
        if token is not None:
            await w.send({"type": "auth", "token": token})
            await w.expect("auth_ok")
        return w

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(msg))

    async def send_raw(self, text: str) -> None:
        await self.ws.send_str(text)

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        msg = await asyncio.wait_for(self.inbox.get(), timeout)
        if msg.type != WSMsgType.TEXT:
            raise ConnectionError(f"socket closed: {msg.type} {msg.data!r} {msg.extra!r}")
        obj: dict[str, Any] = json.loads(msg.data)
        self.seen.append(obj)
        return obj

    async def expect(self, kind: str, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
        """The next message of type `kind` whose fields match; others (presence...) are skipped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"no {kind} {fields} within {timeout} s; saw {self.seen[-5:]}")
            obj = await self.recv(left)
            if obj.get("type") == kind and all(obj.get(k) == v for k, v in fields.items()):
                return obj

    async def expect_error(self, code: str, timeout: float = 5.0) -> dict[str, Any]:
        return await self.expect("error", timeout, code=code)

    async def no_message(self, kind: str, wait: float = 0.3) -> None:
        """Assert nothing of type `kind` arrives within `wait` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while (left := deadline - loop.time()) > 0:
            try:
                obj = await self.recv(left)
            except TimeoutError:
                return
            assert obj.get("type") != kind, f"unexpected {obj}"

    async def next_raw(self, timeout: float = 5.0) -> Any:
        """The next raw aiohttp message (to see close frames)."""
        return await asyncio.wait_for(self.inbox.get(), timeout)

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()
