"""The aiohttp app factory: `create_app(cfg)` returns the whole signalling server.

Routes: the web client at `/`, WebSocket signalling at `/ws`, the JSON API under `/api`,
`/healthz`. Every long-lived resource (database, hub) is owned by a `cleanup_ctx` entry.
Run it with `jego serve`, or `web.run_app(create_app(cfg))`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from .. import __version__
from ..accounts import Accounts, load_secret
from ..calllog import CallLog
from ..config import Config
from ..db import Database
from ..errors import ErrorCode, SignallingError
from .hub import Hub
from .ws import websocket_handler

log = logging.getLogger("jego.server")

CONFIG = web.AppKey("config", Config)
DB = web.AppKey("db", Database)
ACCOUNTS = web.AppKey("accounts", Accounts)
HUB = web.AppKey("hub", Hub)
CALL_LOG = web.AppKey("call_log", CallLog)
GATEWAY_SECRET = web.AppKey("gateway_secret", str)
# Resolved by `jego serve` with the URL it listens on, for in-process clients (the bridge).
BOUND_URL = web.AppKey("bound_url", asyncio.Future)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
MAX_JSON_BODY = 64 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(exc: SignallingError) -> web.Response:
    return web.json_response({"error": {"code": str(exc.code), "message": exc.message}}, status=exc.http_status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place API errors become HTTP: SignallingError -> JSON with its code."""
    try:
        return await handler(request)
    except SignallingError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if request.path.startswith("/api/") and exc.status >= 400:
            code = ErrorCode.NOT_FOUND if exc.status == 404 else ErrorCode.INVALID_MESSAGE
            if exc.status == 413:
                code = ErrorCode.TOO_LARGE
            elif exc.status == 405:
                code = ErrorCode.INVALID_MESSAGE
            return web.json_response({"error": {"code": str(code), "message": exc.reason}}, status=exc.status)
        raise
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return error_response(SignallingError(ErrorCode.INTERNAL, "internal error"))


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body; invalid_json otherwise."""
    if request.content_length is not None and request.content_length > MAX_JSON_BODY:
        raise SignallingError(ErrorCode.TOO_LARGE, f"body is larger than {MAX_JSON_BODY} bytes")
    raw = await request.content.read(MAX_JSON_BODY + 1)
    if len(raw) > MAX_JSON_BODY:
        raise SignallingError(ErrorCode.TOO_LARGE, f"body is larger than {MAX_JSON_BODY} bytes")
    try:
        obj = json.loads(raw)
    except ValueError:
        raise SignallingError(ErrorCode.INVALID_JSON, "body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise SignallingError(ErrorCode.INVALID_JSON, "body must be a JSON object")
    return obj


def authenticated_user(request: web.Request) -> str:
    """The username of the request's bearer token, or SignallingError(not_authenticated)."""
    header = request.headers.get("Authorization", "")
    token = header[7:] if header.startswith("Bearer ") else request.query.get("token")
    if not token:
        raise SignallingError(ErrorCode.NOT_AUTHENTICATED, "send Authorization: Bearer TOKEN")
    try:
        return request.app[ACCOUNTS].verify_token(token)
    except SignallingError as exc:
        raise SignallingError(ErrorCode.NOT_AUTHENTICATED, exc.message) from None


def _token_json(token: Any) -> dict[str, Any]:
    return {"token": token.token, "username": token.username, "expires_at": token.expires_at}


async def register(request: web.Request) -> web.Response:
    body = await json_body(request)
    accounts = request.app[ACCOUNTS]
    name, pw = accounts.validate_new(body.get("username"), body.get("password"))
    pw_hash = await asyncio.to_thread(accounts.hash_password, pw)
    accounts.create(name, pw_hash)
    log.info("registered user %s", name)
    return web.json_response(_token_json(accounts.issue_token(name)), status=201)


async def login(request: web.Request) -> web.Response:
    body = await json_body(request)
    accounts = request.app[ACCOUNTS]
    name, stored = accounts.stored_hash(body.get("username"))
    ok = await asyncio.to_thread(accounts.verify_password, stored, body.get("password"))
    if not ok or name is None:
        raise SignallingError(ErrorCode.AUTH_FAILED, "wrong username or password")
    return web.json_response(_token_json(accounts.issue_token(name)))


async def me(request: web.Request) -> web.Response:
    user = authenticated_user(request)
    return web.json_response({"username": user, "created_at": request.app[ACCOUNTS].created_at(user)})


async def list_contacts(request: web.Request) -> web.Response:
    user = authenticated_user(request)
    hub = request.app[HUB]
    names = request.app[ACCOUNTS].contacts(user)
    return web.json_response({"contacts": [{"username": n, "presence": hub.presence(n)} for n in names]})


async def add_contact(request: web.Request) -> web.Response:
    user = authenticated_user(request)
    body = await json_body(request)
    name, created = request.app[ACCOUNTS].add_contact(user, body.get("username"))
    hub = request.app[HUB]
    hub.contact_added(user, name)
    return web.json_response({"username": name, "presence": hub.presence(name)}, status=201 if created else 200)


async def remove_contact(request: web.Request) -> web.Response:
    user = authenticated_user(request)
    request.app[ACCOUNTS].remove_contact(user, request.match_info["username"])
    return web.Response(status=204)


async def call_history(request: web.Request) -> web.Response:
    user = authenticated_user(request)
    try:
        limit = min(500, max(1, int(request.query.get("limit", "50"))))
    except ValueError:
        raise SignallingError(ErrorCode.INVALID_MESSAGE, "limit must be an integer") from None
    return web.json_response({"calls": request.app[CALL_LOG].history(user, limit)})


def load_gateway_secret(cfg: Config) -> str:
    """bridge.secret, or the one kept in DATA/bridge.key (created here at first start)."""
    if cfg.bridge.secret:
        return cfg.bridge.secret
    return load_secret(cfg.data_dir, "bridge.key").hex()


async def client_config(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG]
    return web.json_response({"ice_servers": list(cfg.ice.servers), "protocol": 1})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": __version__})


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def _storage(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    db = Database.open(cfg.data_dir / "jego.sqlite3")
    app[DB] = db
    app[ACCOUNTS] = Accounts(db, load_secret(cfg.data_dir), cfg.auth)
    app[CALL_LOG] = CallLog(db)
    app[GATEWAY_SECRET] = load_gateway_secret(cfg)
    yield
    db.close()


async def _hub(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    app[BOUND_URL] = asyncio.get_running_loop().create_future()
    app[HUB] = Hub(app[ACCOUNTS], cfg.calls, cfg.signalling.max_sessions_per_user, call_log=app[CALL_LOG],
                   allow_international=cfg.bridge.allow_international)
    yield
    app[HUB].shutdown()


async def _on_shutdown(app: web.Application) -> None:
    # Before cleanup: end calls with a reason and close sockets, so WebSocket handlers return.
    if HUB in app:
        app[HUB].shutdown()


def create_app(cfg: Config) -> web.Application:
    """The signalling server for `cfg`; start it with an AppRunner or `web.run_app`."""
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_JSON_BODY)
    app[CONFIG] = cfg
    app.cleanup_ctx.append(_storage)
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
    app.router.add_get("/api/calls", call_history)
    from ..messaging.service import setup_messaging  # imports this module: import it late

    setup_messaging(app)
    return app
