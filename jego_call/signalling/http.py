"""HTTP helpers every API handler uses: `json_body`, `authenticated_user`, and `error_middleware`,
the one place where a SignallingError becomes an HTTP JSON error with its code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..errors import ErrorCode, SignallingError
from .keys import ACCOUNTS

log = logging.getLogger("jego.server")

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


async def authenticated_user(request: web.Request) -> str:
    """The username of the request's bearer token, or SignallingError(not_authenticated).

    Only the `Authorization: Bearer` header counts: a token in a URL would leak into logs and
    history (media for `<img>`/`<audio>` use signed links, jego_call/messaging/service.py)."""
    header = request.headers.get("Authorization", "")
    token = header[7:] if header.startswith("Bearer ") else None
    if not token:
        raise SignallingError(ErrorCode.NOT_AUTHENTICATED, "send Authorization: Bearer TOKEN")
    try:
        return await request.app[ACCOUNTS].verify_token(token)
    except SignallingError as exc:
        raise SignallingError(ErrorCode.NOT_AUTHENTICATED, exc.message) from None
