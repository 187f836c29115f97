"""In-process servers for protocol tests: `make_client(**sections)` builds `create_app` with config
overrides on a temp data dir and returns an aiohttp TestClient on 127.0.0.1; `client` is one
with the defaults (2 s ring timeout, 1 s heartbeat, 2 s auth timeout)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from aiohttp.test_utils import TestClient, TestServer

from jego_call.config import load_config
from jego_call.signalling.server import create_app
from tests.servers import RedisServer, redis_server

from .sigclient import AppClient


class Factory(Protocol):
    """`make_client(**sections)`: config sections to override, as `{"calls": {"ring_timeout_s": 1}}`."""

    async def __call__(self, **sections: dict[str, Any]) -> AppClient: ...


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module with `BACKENDS = ["embedded", "redis"]` runs each of its tests that builds
    servers with `make_client` once per backend: "redis" makes every server a cluster node on a
    real redis-server (tests/servers.py; one per session, a key prefix per server)."""
    backends = getattr(metafunc.module, "BACKENDS", None)
    if backends and "make_client" in metafunc.fixturenames:
        metafunc.parametrize("backend", backends, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "embedded"))


@pytest.fixture(scope="session")
def session_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as r:
        yield r


@pytest.fixture
async def make_client(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    clients: list[AppClient] = []
    redis: RedisServer | None = request.getfixturevalue("session_redis") if backend == "redis" else None

    async def factory(**sections: dict[str, Any]) -> AppClient:
        overrides: dict[str, dict[str, Any]] = {
            "data": {"dir": str(tmp_path / f"d{len(clients)}")},
            "calls": {"ring_timeout_s": 2.0},
            "signalling": {"heartbeat_s": 1.0, "auth_timeout_s": 2.0},
        }
        if redis is not None:
            overrides["cluster"] = {"redis_url": redis.url, "node_id": f"n{len(clients)}",
                                    "key_prefix": f"t{uuid.uuid4().hex[:12]}"}
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
