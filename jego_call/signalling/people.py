"""People and numbers over HTTP: your profile, other users, blocks, and the dial pad's number check.

`setup_people(app)` (called by `create_app`) adds:

- `PATCH /api/me` `{"display_name"}`: change your display name; your watchers get a `presence`.
- `GET /api/users/{username}`: someone's username and display name, and whether they are your
  contact or blocked (for a message or call from someone who is not a contact yet).
- `GET /api/blocks`, `POST /api/blocks` `{"username"}`, `DELETE /api/blocks/{username}`.
- `GET /api/numbers/check?number=TYPED`: `jego_call.call.dialplan.check` as JSON, with the price
  per minute when a price lookup is installed (`app[PRICE_LOOKUP]`, the billing hook).

Protocol: docs/signalling.md ("HTTP API", "People").
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..call import dialplan
from ..errors import ErrorCode, SignallingError
from .http import authenticated_user, json_body
from .keys import ACCOUNTS, CONFIG, HUB, PRICE_LOOKUP

MAX_TYPED = 64


async def _presence(request: web.Request, about: str, presence: str | None = None) -> dict[str, Any]:
    hub = request.app[HUB]
    return {"type": "presence", "username": about, "presence": presence or hub.presence(about),
            "display_name": await request.app[ACCOUNTS].display_name(about)}


async def update_me(request: web.Request) -> web.Response:
    """PATCH /api/me {"display_name"}: 200 {"username", "display_name", "created_at"}."""
    user = await authenticated_user(request)
    body = await json_body(request)
    accounts = request.app[ACCOUNTS]
    if "display_name" not in body:
        raise SignallingError(ErrorCode.INVALID_MESSAGE, "field 'display_name' is required")
    await accounts.set_display_name(user, body["display_name"])
    msg = await _presence(request, user)
    for watcher in await accounts.watchers(user):
        request.app[HUB].send_to_user(watcher, msg)
    return web.json_response({**await accounts.profile(user), "created_at": await accounts.created_at(user)})


async def get_user(request: web.Request) -> web.Response:
    """GET /api/users/{username}: 200 {"username", "display_name", "contact", "blocked"}."""
    user = await authenticated_user(request)
    accounts = request.app[ACCOUNTS]
    name = request.match_info["username"].strip().lower()
    if not await accounts.exists(name):
        raise SignallingError(ErrorCode.UNKNOWN_USER, f"no user {name!r}")
    return web.json_response({**await accounts.profile(name), "contact": await accounts.is_contact(user, name),
                              "blocked": await accounts.is_blocked(user, name)})


async def list_blocks(request: web.Request) -> web.Response:
    """GET /api/blocks: 200 {"blocked": [{"username", "display_name"}]}."""
    user = await authenticated_user(request)
    return web.json_response({"blocked": await request.app[ACCOUNTS].blocked(user)})


async def add_block(request: web.Request) -> web.Response:
    """POST /api/blocks {"username"}: 201 {"username", "display_name"} (200 if already blocked)."""
    user = await authenticated_user(request)
    body = await json_body(request)
    accounts = request.app[ACCOUNTS]
    name, created = await accounts.block(user, body.get("username"))
    if await accounts.is_contact(name, user):  # from now on they see you offline
        request.app[HUB].send_to_user(name, await _presence(request, user, "offline"))
    return web.json_response(await accounts.profile(name), status=201 if created else 200)


async def remove_block(request: web.Request) -> web.Response:
    """DELETE /api/blocks/{username}: 204 (404 not_found when they were not blocked)."""
    user = await authenticated_user(request)
    accounts = request.app[ACCOUNTS]
    name = await accounts.unblock(user, request.match_info["username"])
    if await accounts.is_contact(name, user):
        request.app[HUB].send_to_user(name, await _presence(request, user))
    return web.Response(status=204)


async def check_number(request: web.Request) -> web.Response:
    """GET /api/numbers/check?number=TYPED: the dial pad's formatting and refusal words."""
    await authenticated_user(request)
    typed = request.query.get("number", "")
    if len(typed) > MAX_TYPED:
        raise SignallingError(ErrorCode.INVALID_MESSAGE, f"number is longer than {MAX_TYPED} characters")
    cfg = request.app[CONFIG]
    result = dialplan.check(typed, cfg.calls.default_region, cfg.bridge.allow_international)
    price = None
    lookup = request.app.get(PRICE_LOOKUP)
    if lookup is not None and result.callable and result.e164:
        price = lookup(result.e164)
    return web.json_response(result.to_wire(price))


def setup_people(app: web.Application) -> None:
    """Add the routes above to a `create_app` app."""
    app.router.add_patch("/api/me", update_me)
    app.router.add_get("/api/users/{username}", get_user)
    app.router.add_get("/api/blocks", list_blocks)
    app.router.add_post("/api/blocks", add_block)
    app.router.add_delete("/api/blocks/{username}", remove_block)
    app.router.add_get("/api/numbers/check", check_number)
