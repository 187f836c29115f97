"""The aiohttp app factory: `create_app(cfg)` returns the whole signalling server.

Routes: the web client at `/`, WebSocket signalling at `/ws`, the JSON API under `/api`,
`/healthz`, `/readyz` and `/metrics` (health.py). Every long-lived resource (database, hub) is
owned by a `cleanup_ctx` entry. The database is `[db] url`: SQLite in DATA (the default) or
PostgreSQL shared by several nodes.
Run it with `jego serve`, or `web.run_app(create_app(cfg))`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import mimetypes
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from .. import __version__
from ..accounts import Accounts, GateBusy, LoginDoors, load_shared_secret, normalise_display_name
from ..billing.web import setup_billing
from ..call import reasons
from ..calllog import CallLog
from ..config import Config
from ..db import Database, open_database
from ..directory import make_directory
from ..errors import ErrorCode, SignallingError
from ..groups.service import setup_groups
from ..messaging.service import setup_messaging
from .call_quality import setup_call_quality
from .health import setup_health
from .http import MAX_JSON_BODY, authenticated_user, error_middleware, json_body
from .hub import Hub
from .keys import (
    ACCOUNTS,
    BOUND_URL,
    CALL_LOG,
    CLUSTER,
    CONFIG,
    DB,
    DIRECTORY,
    GATEWAY_SECRET,
    HUB,
    LOGIN_DOORS,
    READY_CHECKS,
    SHARED_DOORS,
)
from .people import setup_people
from .turn import ice_servers_for
from .ws import websocket_handler

log = logging.getLogger("jego.server")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
mimetypes.add_type("application/manifest+json", ".webmanifest")


async def _token_json(token: Any, accounts: Accounts) -> dict[str, Any]:
    return {"token": token.token, "username": token.username,
            "display_name": await accounts.display_name(token.username), "expires_at": token.expires_at}


def _connected(request: web.Request) -> Callable[[], bool]:
    """Whether the client is still there (checked just before its password is hashed)."""
    return lambda: request.transport is not None and not request.transport.is_closing()


def too_many(retry_after: float, message: str) -> web.Response:
    """429 with Retry-After (whole seconds, at least 1) in the API's error shape."""
    secs = max(1, math.ceil(retry_after))
    return web.json_response({"error": {"code": str(ErrorCode.RATE_LIMITED), "message": message,
                                        "retry_after": secs}}, status=429, headers={"Retry-After": str(secs)})


async def register(request: web.Request) -> web.Response:
    doors = request.app[LOGIN_DOORS]
    source = request.remote or "?"
    denied = doors.policy.before_register(source, time.monotonic())
    if denied is None and SHARED_DOORS in request.app:
        denied = await request.app[SHARED_DOORS].before_register(source, time.time())
    if denied is not None:
        if (more := doors.should_log(f"register {source}", time.monotonic())) is not None:
            log.warning("register from %s refused: %s%s", source, denied.rule, more)
        return too_many(denied.retry_after, denied.message)
    body = await json_body(request)
    accounts = request.app[ACCOUNTS]
    name, pw = await accounts.validate_new(body.get("username"), body.get("password"))
    raw_name = body.get("display_name")
    shown = normalise_display_name(raw_name) if raw_name not in (None, "") else None
    try:
        pw_hash = await doors.gate.run(accounts.hash_password, pw, alive=_connected(request),
                                       priority=doors.policy.register_suspicion(source, time.monotonic()))
    except GateBusy as busy:
        return too_many(busy.retry_after, "The server is busy: try again in a moment")
    await accounts.create(name, pw_hash, shown)
    log.info("registered user %s", name)
    return web.json_response(await _token_json(accounts.issue_token(name), accounts), status=201)


async def login(request: web.Request) -> web.Response:
    doors = request.app[LOGIN_DOORS]
    source = request.remote or "?"
    body = await json_body(request)
    key = doors.account_key(body.get("username"))
    shared = request.app.get(SHARED_DOORS)
    denied = await shared.before_login(key, source, time.time()) if shared is not None else None
    if denied is None:
        denied = doors.policy.before_login(key, source, time.monotonic())
    if denied is not None:
        if (more := doors.should_log(f"{denied.rule} {key if denied.rule.startswith('account') else source}",
                                     time.monotonic())) is not None:
            log.warning("login for %r from %s refused: %s%s", key, source, denied.rule, more)
        return too_many(denied.retry_after, denied.message)
    accounts = request.app[ACCOUNTS]
    name, stored = await accounts.stored_hash(body.get("username"))
    try:
        ok = await doors.gate.run(accounts.verify_password, stored, body.get("password"), alive=_connected(request),
                                  priority=doors.policy.suspicion(key, source, time.monotonic()))
    except GateBusy as busy:
        doors.policy.login_abandoned(key)
        if not busy.gone and (more := doors.should_log("busy", time.monotonic())) is not None:
            log.warning("login for %r from %s refused: the password hasher is busy%s", key, source, more)
        return too_many(busy.retry_after, "The server is busy: try again in a moment")
    except BaseException:  # cancelled (the client went away) or failed: the password was not judged
        doors.policy.login_abandoned(key)
        raise
    if not ok or name is None:
        locked = doors.policy.login_failed(key, source, time.monotonic())
        if shared is not None:
            locked = max(locked, await shared.login_failed(key, source, time.time()))
        if locked:
            log.warning("account %r locked for %.0f s after failed logins (last from %s)", key, locked, source)
        raise SignallingError(ErrorCode.AUTH_FAILED, "wrong username or password")
    doors.policy.login_ok(key, source, time.monotonic())
    if shared is not None:
        await shared.login_ok(key)
    return web.json_response(await _token_json(accounts.issue_token(name), accounts))


async def me(request: web.Request) -> web.Response:
    user = await authenticated_user(request)
    accounts = request.app[ACCOUNTS]
    return web.json_response({**await accounts.profile(user), "created_at": await accounts.created_at(user)})


async def list_contacts(request: web.Request) -> web.Response:
    user = await authenticated_user(request)
    hub = request.app[HUB]
    accounts = request.app[ACCOUNTS]
    contacts = [{"username": c["username"], "display_name": c["display_name"],
                 "presence": "offline" if c["hidden"] else hub.presence(str(c["username"]))}
                for c in await accounts.contact_list(user)]
    return web.json_response({"contacts": contacts, "blocked": await accounts.blocked(user)})


async def add_contact(request: web.Request) -> web.Response:
    user = await authenticated_user(request)
    body = await json_body(request)
    accounts = request.app[ACCOUNTS]
    name, created = await accounts.add_contact(user, body.get("username"))
    hub = request.app[HUB]
    hidden = await accounts.is_blocked(name, user)
    if not hidden:
        await request.app[DIRECTORY].ensure(name)
        hub.contact_added(user, name)
    return web.json_response({**await accounts.profile(name),
                              "presence": "offline" if hidden else hub.presence(name)}, status=201 if created else 200)


async def remove_contact(request: web.Request) -> web.Response:
    user = await authenticated_user(request)
    await request.app[ACCOUNTS].remove_contact(user, request.match_info["username"])
    return web.Response(status=204)


async def call_history(request: web.Request) -> web.Response:
    user = await authenticated_user(request)
    try:
        limit = min(500, max(1, int(request.query.get("limit", "50"))))
    except ValueError:
        raise SignallingError(ErrorCode.INVALID_MESSAGE, "limit must be an integer") from None
    accounts = request.app[ACCOUNTS]
    blocked = {str(b["username"]) for b in await accounts.blocked(user)}
    calls = []
    for c in await request.app[CALL_LOG].history(user, limit):
        if c["direction"] == "incoming" and c["peer"] in blocked:
            continue  # calls from people you blocked are not yours to see
        if c["peer_kind"] == "user":
            c["display_name"] = await accounts.display_name(c["peer"])
        calls.append(c)
    return web.json_response({"calls": calls})


async def load_gateway_secret(cfg: Config, db: Database) -> str:
    """bridge.secret, or the one kept in DATA/bridge.key (created here at first start; on
    PostgreSQL the one every node shares, see accounts.load_shared_secret)."""
    if cfg.bridge.secret:
        return cfg.bridge.secret
    return (await load_shared_secret(db, cfg.data_dir, "bridge.key")).hex()


async def client_config(request: web.Request) -> web.Response:
    """GET /api/config: the ICE servers (with TURN credentials only for a signed-in user)."""
    cfg = request.app[CONFIG]
    servers: list[dict[str, Any]] = [dict(s) for s in cfg.ice.servers]
    if cfg.ice.turn_urls and request.headers.get("Authorization"):
        servers, _ = ice_servers_for(cfg.ice, await authenticated_user(request), time.time())
    return web.json_response({"ice_servers": servers, "ice_transport_policy": cfg.ice.transport_policy,
                              "protocol": 1})


async def end_reasons(request: web.Request) -> web.Response:
    """Every call end reason with its SIP code, Q.850 cause and words (the web client's table)."""
    return web.json_response(reasons.catalogue(), headers={"Cache-Control": "max-age=3600"})


async def healthz(request: web.Request) -> web.Response:
    """200 {"status": "ok"}; 503 {"status": "degraded"} while Redis (in a cluster) is unreachable,
    or with "storage": "unavailable" while a shared database (PostgreSQL) does not answer."""
    db = request.app[DB]
    if db.engine != "sqlite" and not await db.ping():
        return web.json_response({"status": "degraded", "version": __version__, "storage": "unavailable"},
                                 status=503)
    node = request.app.get(CLUSTER)
    if node is None:
        return web.json_response({"status": "ok", "version": __version__})
    body = {"status": "ok" if node.healthy else "degraded", "version": __version__, **node.status()}
    return web.json_response(body, status=200 if node.healthy else 503)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def _storage(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    db = await open_database(cfg)
    try:
        app[DB] = db
        accounts = Accounts(db, await load_shared_secret(db, cfg.data_dir), cfg.auth)
        directory = make_directory(accounts)
        accounts.on_change = getattr(directory, "refresh", None)
        await directory.start()
        app[ACCOUNTS] = accounts
        app[DIRECTORY] = directory
        app[CALL_LOG] = CallLog(db)
        app[GATEWAY_SECRET] = await load_gateway_secret(cfg, db)
    except BaseException:
        await db.close()
        raise
    yield
    await db.close()


async def _cluster(app: web.Application) -> AsyncIterator[None]:
    """In a cluster: reach the shared state (waiting for it), share the signing keys, and the
    login doors' limits. Nothing at all without `[cluster] redis_url`."""
    cfg = app[CONFIG]
    if not cfg.cluster.redis_url:
        yield
        return
    from ..cluster import open_node
    from ..cluster.doors import SharedDoors

    node = await open_node(cfg, info={"version": __version__, "pid": os.getpid()})
    app[CLUSTER] = node
    accounts = app[ACCOUNTS]
    accounts.secret = await node.shared_secret("token", accounts.secret)  # a token from any node works on all
    if not cfg.bridge.secret:
        app[GATEWAY_SECRET] = (await node.shared_secret("gateway", app[GATEWAY_SECRET].encode())).decode()
    app[SHARED_DOORS] = SharedDoors(node.state, app[LOGIN_DOORS].policy.limits)

    async def redis_ready() -> str | None:  # GET /readyz: "redis" fails while Redis is unreachable
        return None if node.healthy else f"unreachable: {node.last_error or 'no answer'}"

    if READY_CHECKS in app:
        app[READY_CHECKS].append(("redis", redis_ready))
    log.info("cluster node %s on %s", node.id, _safe_url(cfg.cluster.redis_url))
    yield
    await node.stop()


def _safe_url(url: str) -> str:
    from ..cluster.redis_state import safe_url

    return url if url.startswith("memory://") else safe_url(url)


async def _hub(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    app[BOUND_URL] = asyncio.get_running_loop().create_future()
    app[HUB] = Hub(app[DIRECTORY], cfg.calls, cfg.signalling.max_sessions_per_user, call_log=app[CALL_LOG],
                   allow_international=cfg.bridge.allow_international)
    if CLUSTER in app:
        app[CLUSTER].bind(app[HUB], app[DIRECTORY])
    yield
    app[HUB].shutdown()
    await app[HUB].drain()  # the call records of the calls shutdown ended


async def _doors(app: web.Application) -> AsyncIterator[None]:
    app[LOGIN_DOORS] = LoginDoors(app[CONFIG].auth)
    yield
    app[LOGIN_DOORS].close()


async def _on_shutdown(app: web.Application) -> None:
    # Before cleanup: end calls with a reason and close sockets, so WebSocket handlers return.
    if HUB in app:
        app[HUB].shutdown()


def create_app(cfg: Config) -> web.Application:
    """The signalling server for `cfg`; start it with an AppRunner or `web.run_app`."""
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_JSON_BODY)
    app[CONFIG] = cfg
    app.cleanup_ctx.append(_storage)
    app.cleanup_ctx.append(_doors)
    app.cleanup_ctx.append(_cluster)
    app.cleanup_ctx.append(_hub)
    app.on_shutdown.append(_on_shutdown)
    app.router.add_get("/", index)
    app.router.add_static("/static", WEB_DIR, append_version=True)
    app.router.add_get("/ws", websocket_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/api/register", register)
    app.router.add_post("/api/login", login)
    app.router.add_get("/api/me", me)
    app.router.add_get("/api/contacts", list_contacts)
    app.router.add_post("/api/contacts", add_contact)
    app.router.add_delete("/api/contacts/{username}", remove_contact)
    app.router.add_get("/api/config", client_config)
    app.router.add_get("/api/reasons", end_reasons)
    app.router.add_get("/api/calls", call_history)
    setup_people(app)
    setup_messaging(app)
    setup_groups(app)
    setup_billing(app)
    setup_health(app)          # /readyz, /metrics (after the hub and messaging exist)
    setup_call_quality(app)    # call_stats -> call_quality, call summaries, MOS in the record
    return app
