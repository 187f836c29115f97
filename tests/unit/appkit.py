"""In-process signalling servers for unit tests: `create_app` on 127.0.0.1 (aiohttp's TestServer)
with SQLite in tmp_path, a cheap argon2 so registering costs milliseconds, and small helpers.

    async def test_x(make_client: MakeClient) -> None:
        client = await make_client(signalling={"max_message_bytes": 200})
        other = await make_client(install)   # install(app) runs before the app starts
        token = await register(client, "alice")
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher

from jego_call import accounts as acc
from jego_call.config import load_config
from jego_call.signalling.server import create_app

PASSWORD = "correct-horse-9"
GATEWAY_SECRET = "gw-secret-for-tests"

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    cheap = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    monkeypatch.setattr(acc, "_HASHER", cheap)
    monkeypatch.setattr(acc, "_DUMMY_HASH", cheap.hash("x"))


@pytest.fixture
async def make_client(tmp_path: Path, cheap_hashes: None) -> AsyncIterator[MakeClient]:
    clients: list[Client] = []

    async def factory(before_start: Callable[[web.Application], None] | None = None,
                      **sections: dict[str, Any]) -> Client:
        overrides: dict[str, dict[str, Any]] = {
            "data": {"dir": str(tmp_path / f"d{len(clients)}")},
            "signalling": {"heartbeat_s": 5.0, "auth_timeout_s": 5.0},
            "bridge": {"secret": GATEWAY_SECRET},
        }
        for k, v in sections.items():
            overrides.setdefault(k, {}).update(v)
        cfg = load_config(None, environ={}, overrides=overrides)
        app = create_app(cfg)
        if before_start is not None:
            before_start(app)
        client: Client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield factory
    for c in clients:
        await c.close()


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()


async def register(client: Client, name: str, display_name: str | None = None) -> str:
    body: dict[str, Any] = {"username": name, "password": PASSWORD}
    if display_name is not None:
        body["display_name"] = display_name
    res = await client.post("/api/register", json=body)
    assert res.status == 201, await res.text()
    return str((await res.json())["token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def call(client: Client, method: str, path: str, token: str | None = None, body: Any = None,
               **kw: Any) -> tuple[int, Any]:
    """(status, JSON body or None for an empty one)."""
    headers = {**(bearer(token) if token else {}), **kw.pop("headers", {})}
    if body is not None:
        kw["json"] = body
    res = await client.request(method, path, headers=headers, **kw)
    text = await res.text()
    return res.status, (json.loads(text) if text else None)
