"""jego_call/signalling/health.py's readiness: checks run concurrently, each bounded by its
timeout; a check that fails, hangs or raises makes "not ready" with its reason (never a 500),
the answer names what is failing with a 503; the database check on a real SQLite file, before
the database is open, and with PostgreSQL away.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from aiohttp import web

from jego_call.db import Database, SqliteDatabase, StorageUnavailable, run_sync
from jego_call.signalling import health
from jego_call.signalling.health import database_check, readiness_response, run_checks
from jego_call.signalling.keys import DB, ReadyCheck


def returning(value: str | None) -> ReadyCheck:
    async def check() -> str | None:
        return value
    return check


def raising(exc: Exception) -> ReadyCheck:
    async def check() -> str | None:
        raise exc
    return check


async def test_all_fine_is_ready() -> None:
    ok, checks = await run_checks([("database", returning(None)), ("trunk", returning(None))])
    assert ok and checks == {"database": "ok", "trunk": "ok"}
    assert await run_checks([]) == (True, {})


async def test_a_failing_hanging_or_raising_check_is_not_ready_with_its_reason(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "CHECK_TIMEOUT_S", 0.05)
    never = asyncio.Event()

    async def hangs() -> str | None:
        await never.wait()
        return None

    ok, checks = await run_checks([("database", returning(None)), ("trunk", returning("not registered")),
                                   ("redis", hangs), ("disk", raising(OSError("no space left " + "x" * 300)))])
    assert not ok
    assert checks["database"] == "ok" and checks["trunk"] == "not registered"
    assert checks["redis"] == "no answer within 0.05 s"
    assert checks["disk"].startswith("OSError: no space left") and len(checks["disk"]) == 200


async def test_checks_run_at_the_same_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two checks that each wait for the other can only both finish if they run concurrently."""
    a, b = asyncio.Event(), asyncio.Event()

    async def first() -> str | None:
        a.set()
        await b.wait()
        return None

    async def second() -> str | None:
        b.set()
        await a.wait()
        return None

    assert await asyncio.wait_for(run_checks([("a", first), ("b", second)]), 5) == (True, {"a": "ok", "b": "ok"})


def test_the_answer_names_what_is_failing() -> None:
    good = readiness_response(True, {"database": "ok"})
    assert good.status == 200 and good.headers["Cache-Control"] == "no-store"
    assert good.text is not None and json.loads(good.text) == {"status": "ready", "checks": {"database": "ok"}}
    bad = readiness_response(False, {"database": "ok", "trunk": "not registered", "redis": "unavailable"})
    assert bad.status == 503 and bad.text is not None
    assert json.loads(bad.text) == {"status": "not_ready", "failing": ["trunk", "redis"],
                                    "checks": {"database": "ok", "trunk": "not registered", "redis": "unavailable"}}


@pytest.fixture
def db(tmp_path: Path) -> Iterator[SqliteDatabase]:
    database = Database.open(tmp_path / "jego.sqlite3")
    yield database
    run_sync(database.close())


async def test_the_database_check(db: SqliteDatabase) -> None:
    app = web.Application()
    check = database_check(app)
    assert await check() == "not open yet"
    app[DB] = db
    assert await check() is None


async def test_the_database_check_with_postgresql_away() -> None:
    class Away:
        async def query_one(self, sql: str, params: tuple[object, ...] = ()) -> None:
            raise StorageUnavailable()

    app = web.Application()
    app[DB] = cast(Database, Away())
    assert await database_check(app)() == "unavailable"
