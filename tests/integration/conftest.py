"""In-process servers for protocol tests: `make_client(**sections)` builds `create_app` with config
overrides on a temp data dir and returns an aiohttp TestClient on 127.0.0.1; `client` is one
with the defaults (2 s ring timeout, 1 s heartbeat, 2 s auth timeout).

The backend is the `backend` fixture: "sqlite" (the embedded default) unless a module says
`pytestmark = pytest.mark.backends("sqlite", "postgres")` (or "cluster"), which runs each of its
tests that use `make_client`/`client`, or `server_factory`/`live_server` (a live `jego serve`
subprocess), once per backend: "postgres" is one real PostgreSQL server
per module (tests/servers.py) with a fresh database per client; "cluster" adds a real redis-server
and makes every client a cluster node on it (its own key prefix) as well."""

from __future__ import annotations

import itertools
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from jego_call.config import load_config
from jego_call.signalling.server import create_app
from tests.conftest import ServerFactory, serving
from tests.servers import PostgresServer, RedisServer, postgres_server, redis_server

from .sigclient import AppClient


class Factory(Protocol):
    """`make_client(**sections)`: config sections to override, as `{"calls": {"ring_timeout_s": 1}}`."""

    async def __call__(self, **sections: dict[str, Any]) -> AppClient: ...


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("backends")
    if marker is not None and "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", marker.args, indirect=True, scope="module")


@dataclass
class Backend:
    """The storage engine of a module's tests: "sqlite", or "postgres" on `pg` (one server)."""

    name: str
    pg: PostgresServer | None = None
    redis: RedisServer | None = None   # "cluster": every client is a node on it
    _n: Iterator[int] = field(default_factory=itertools.count)

    async def new_database(self) -> str:
        """The URL of a new, empty database on the server ("" on SQLite: DATA/jego.sqlite3)."""
        if self.pg is None:
            return ""
        name = f"t{next(self._n)}"
        conn = await asyncpg.connect(self.pg.url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.pg.url.rsplit("/", 1)[0] + "/" + name

    def serve_env(self) -> dict[str, str]:
        """JEGO_* settings that put one more `jego serve` on this backend, on its own: a new
        database on "postgres", and on "cluster" its own key prefix on the Redis too ({} on SQLite)."""
        if self.pg is None:
            return {}
        env = {"JEGO_DB_URL": self.pg.create_database(f"s{next(self._n)}")}
        if self.redis is not None:
            env |= {"JEGO_CLUSTER_REDIS_URL": self.redis.url, "JEGO_CLUSTER_KEY_PREFIX": f"t{uuid.uuid4().hex[:12]}"}
        return env


@pytest.fixture(scope="module")
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    name = getattr(request, "param", "sqlite")
    if name == "sqlite":
        yield Backend("sqlite")
        return
    assert name in ("postgres", "cluster"), name
    with postgres_server(tmp_path_factory.mktemp("pg")) as pg:
        if name == "postgres":
            yield Backend("postgres", pg)
            return
        with redis_server(tmp_path_factory.mktemp("redis")) as redis:
            yield Backend("cluster", pg, redis)


@pytest.fixture
def server_factory(tmp_path: Path, backend: Backend) -> Iterator[ServerFactory]:
    """tests/conftest.py's `server_factory` on the module's backend: each `jego serve` it starts
    (and its restart(), which keeps the settings) stores on the backend's PostgreSQL and Redis."""
    with serving(tmp_path, backend.serve_env) as factory:
        yield factory


@pytest.fixture
async def make_client(tmp_path: Path, backend: Backend) -> AsyncIterator[Factory]:
    clients: list[AppClient] = []
    redis = backend.redis

    async def factory(**sections: dict[str, Any]) -> AppClient:
        overrides: dict[str, dict[str, Any]] = {
            "data": {"dir": str(tmp_path / f"d{len(clients)}")},
            "calls": {"ring_timeout_s": 2.0},
            "signalling": {"heartbeat_s": 1.0, "auth_timeout_s": 2.0},
            "db": {"url": await backend.new_database()},
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


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Subprocesses a test starts (append them): any still running at the end is killed."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(10)
