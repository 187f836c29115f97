"""Health and metrics routes of `jego serve`: /healthz (alive), /readyz (usable), /metrics.

    setup_health(app)     # create_app: app[METRICS], app[READY_CHECKS], the routes

- `GET /healthz` stays a liveness check: 200 while the process serves HTTP.
- `GET /readyz` runs every check in `app[READY_CHECKS]` (each `await check()` is None when its
  thing is usable, else the reason; at most CHECK_TIMEOUT_S each): 200 `{"status": "ready",
  "checks": {"database": "ok", ...}}`, or 503 `{"status": "not_ready", "failing": ["trunk"],
  "checks": {"database": "ok", "trunk": "not registered with the carrier"}}`. The database check
  is built in; the bridge adds its workers' readiness (bridge/gateway/service.py), the
  cluster its Redis (`app[READY_CHECKS].append(("redis", check))`).
- `GET /metrics`: Prometheus text format of `app[METRICS]` (jego_call/metrics.py), after its
  refreshers ran (the bridge fetches its worker processes' series). 404 when `[metrics]
  enabled = false`.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

from aiohttp import web

from ..db import StorageUnavailable
from ..log import register_secret
from ..metrics import ServerMetrics, exposition
from .keys import (
    ACCOUNTS,
    CONFIG,
    DB,
    GATEWAY_SECRET,
    HUB,
    LOGIN_DOORS,
    MESSAGING,
    METRICS,
    READY_CHECKS,
    ReadyCheck,
)

CHECK_TIMEOUT_S = 2.0


async def run_checks(checks: list[tuple[str, ReadyCheck]]) -> tuple[bool, dict[str, str]]:
    """Run readiness checks concurrently: (all fine, {name: "ok" or the reason})."""

    async def one(check: ReadyCheck) -> str | None:
        try:
            return await asyncio.wait_for(check(), CHECK_TIMEOUT_S)
        except TimeoutError:
            return f"no answer within {CHECK_TIMEOUT_S:g} s"
        except Exception as exc:  # a check that fails is a "not ready", never a 500
            return f"{type(exc).__name__}: {exc}"[:200]

    results = await asyncio.gather(*(one(check) for _name, check in checks))
    out = {name: (why or "ok") for (name, _), why in zip(checks, results, strict=True)}
    return all(why is None for why in results), out


def readiness_response(ok: bool, checks: dict[str, str]) -> web.Response:
    body: dict[str, object] = {"status": "ready" if ok else "not_ready", "checks": checks}
    if not ok:
        body["failing"] = [name for name, v in checks.items() if v != "ok"]
    return web.json_response(body, status=200 if ok else 503, headers={"Cache-Control": "no-store"})


async def readyz(request: web.Request) -> web.Response:
    checks: list[tuple[str, ReadyCheck]] = request.app[READY_CHECKS]
    ok, results = await run_checks(list(checks))
    return readiness_response(ok, results)


async def metrics(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    if not m.enabled:
        raise web.HTTPNotFound(text="metrics are disabled ([metrics] enabled = false)")
    for refresh in list(m.refreshers):
        await refresh()
    body, ctype = exposition(m.registry)
    return web.Response(body=body, headers={"Content-Type": ctype, "Cache-Control": "no-store"})


def database_check(app: web.Application) -> ReadyCheck:
    async def check() -> str | None:
        db = app.get(DB)
        if db is None:
            return "not open yet"
        try:
            await db.query_one("SELECT MAX(version) FROM schema_version")
        except StorageUnavailable:  # PostgreSQL away (SQLite never is)
            return "unavailable"
        return None
    return check


def register_secrets(app: web.Application) -> None:
    """Values no log line may carry (jego_call/log.py redacts them): the gateway secret, the
    token signing key, the trunk password, TURN credentials of [ice] servers."""
    cfg = app[CONFIG]
    register_secret(app[GATEWAY_SECRET])
    key = app[ACCOUNTS].secret
    for form in (key.hex(), base64.b64encode(key).decode(), base64.urlsafe_b64encode(key).decode().rstrip("=")):
        register_secret(form)
    register_secret(cfg.bridge.secret)
    register_secret(cfg.bridge.password)
    for server in cfg.ice.servers:
        if isinstance(server, dict):
            register_secret(str(server.get("credential") or ""))
            register_secret(str(server.get("secret") or ""))


async def _health_ctx(app: web.Application) -> AsyncIterator[None]:
    register_secrets(app)
    m = app[METRICS]
    m.watch_hub(app[HUB])
    m.watch_doors(app[LOGIN_DOORS])
    if MESSAGING in app:
        m.watch_messaging(app[MESSAGING])
    yield


def setup_health(app: web.Application) -> None:
    """Add /readyz and /metrics (and the metrics of the hub, the login doors and messaging)."""
    app[METRICS] = ServerMetrics(enabled=app[CONFIG].metrics.enabled)
    app[READY_CHECKS] = [("database", database_check(app))]
    app.cleanup_ctx.append(_health_ctx)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
