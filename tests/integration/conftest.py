"""In-process servers for protocol tests: `make_client(**sections)` builds `create_app` with config
overrides on a temp data dir and returns an aiohttp TestClient on 127.0.0.1; `client` is one
with the defaults (2 s ring timeout, 1 s heartbeat, 2 s auth timeout)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from aiohttp.test_utils import TestClient, TestServer

from jego_call.config import load_config
from jego_call.signalling.server import create_app

from .sigclient import AppClient


class Factory(Protocol):
    """`make_client(**sections)`: config sections to override, as `{"calls": {"ring_timeout_s": 1}}`."""

    async def __call__(self, **sections: dict[str, Any]) -> AppClient: ...


@pytest.fixture
async def make_client(tmp_path: Path) -> AsyncIterator[Factory]:
    clients: list[AppClient] = []

    async def factory(**sections: dict[str, Any]) -> AppClient:
        overrides: dict[str, dict[str, Any]] = {
            "data": {"dir": str(tmp_path / f"d{len(clients)}")},
            "calls": {"ring_timeout_s": 2.0},
            "signalling": {"heartbeat_s": 1.0, "auth_timeout_s": 2.0},
        }
        for k, v in sections.items():
            overrides.setdefault(k, {}).update(v)
        cfg = load_config(None, environ={}, overrides=overrides)
        client = TestClient(TestServer(create_app(cfg), host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield factory
    for c in clients:
        await c.close()


@pytest.fixture
async def client(make_client: Factory) -> AppClient:
    c: AppClient = await make_client()
    return c
