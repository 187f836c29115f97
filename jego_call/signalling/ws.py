"""The /ws handler: frames in, hub calls, JSON out. Errors become {"type":"error"} here.

Nothing in this module decides call logic; it authenticates, rate-limits and translates.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from typing import Any

from aiohttp import WSMsgType, web

from ..accounts import Accounts
from ..billing.ledger import PreparedLedger
from ..config import Config
from ..errors import ErrorCode, SignallingError
from ..groups.protocol import GroupCallAddPhone, GroupCallStart
from . import messages as m
from .hub import Hub
from .hub_core import is_phone_target
from .keys import ACCOUNTS, CONFIG, DIRECTORY, GATEWAY_SECRET, GROUP_DIRECTORY, HUB
from .turn import ice_servers_for, refresh_after_s

log = logging.getLogger("jego.ws")

OUTBOX_LIMIT = 2048  # a client this far behind is dropped rather than buffered without bound
CLOSE_AUTH_TIMEOUT = 4001
CLOSE_SLOW_CONSUMER = 4008
CLOSE_UNSUPPORTED = 1003


class TokenBucket:
    """Per-connection rate limit: `rate` tokens a second, `burst` at most."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.stamp = float(burst), now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class WsSession:
    """A hub Session over an aiohttp WebSocket, with a bounded outbox drained by one task."""

    def __init__(self, ws: web.WebSocketResponse, session_id: str) -> None:
        self.ws = ws
        self.id = session_id
        self.username: str = ""
        self.role = "user"
        self.outbox: asyncio.Queue[str | None] = asyncio.Queue(OUTBOX_LIMIT)
        self.writer = asyncio.get_running_loop().create_task(self._drain())
        self.ice_timer: asyncio.TimerHandle | None = None

    def send(self, msg: dict[str, Any]) -> None:
        try:
            self.outbox.put_nowait(json.dumps(msg, separators=(",", ":")))
        except asyncio.QueueFull:
            log.warning("session %s (%s) is not reading: dropping it", self.id, self.username)
            self.close(CLOSE_SLOW_CONSUMER, "too slow")

    def close(self, code: int, reason: str) -> None:
        if not self.ws.closed:
            asyncio.get_running_loop().create_task(self.ws.close(code=code, message=reason.encode()))

    async def _drain(self) -> None:
        while True:
            text = await self.outbox.get()
            if text is None:
                return
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return

    async def finish(self) -> None:
        """Flush what is queued (briefly), then stop the writer."""
        try:
            self.outbox.put_nowait(None)
        except asyncio.QueueFull:
            self.writer.cancel()
        try:
            await asyncio.wait_for(self.writer, 2.0)
        except (TimeoutError, asyncio.CancelledError):
            self.writer.cancel()


def _ice(cfg: Config, who: str, session: WsSession) -> dict[str, Any]:
    """auth_ok's ICE fields for `who` (its own TURN credentials), arming their refresh."""
    servers, expires = ice_servers_for(cfg.ice, who, time.time())
    out: dict[str, Any] = {"ice_servers": servers}
    if cfg.ice.transport_policy != "all":
        out["ice_transport_policy"] = cfg.ice.transport_policy
    if expires is not None:
        out["ice_expires_at"] = expires
        loop = asyncio.get_running_loop()

        def refresh() -> None:  # fresh credentials at half-life, for as long as the socket lives
            if session.ws.closed:
                return
            fresh, exp = ice_servers_for(cfg.ice, who, time.time())
            session.send({"type": "ice_servers", "ice_servers": fresh, "ice_expires_at": exp})
            session.ice_timer = loop.call_later(refresh_after_s(cfg.ice), refresh)

        session.ice_timer = loop.call_later(refresh_after_s(cfg.ice), refresh)
    return out


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    """GET /ws: one signalling connection (docs/signalling.md)."""

    cfg: Config = request.app[CONFIG]
    hub: Hub = request.app[HUB]
    accounts: Accounts = request.app[ACCOUNTS]
    directory = request.app[DIRECTORY]
    sc = cfg.signalling
    ws = web.WebSocketResponse(heartbeat=sc.heartbeat_s, max_msg_size=sc.max_frame_bytes)
    try:
        await ws.prepare(request)
    except ConnectionError:  # the client gave up before the upgrade was answered (a reconnect storm)
        log.debug("WebSocket upgrade: the client has gone")
        return ws
    loop = asyncio.get_running_loop()
    session = WsSession(ws, hub.new_session_id())
    bucket = TokenBucket(sc.rate_per_s, sc.rate_burst, loop.time())
    authed = False
    pinned: str | None = None  # the user whose directory entry this socket keeps loaded

    def auth_deadline() -> None:
        if not authed:
            session.close(CLOSE_AUTH_TIMEOUT, "authenticate first")

    timer = loop.call_later(sc.auth_timeout_s, auth_deadline)
    try:
        async for frame in ws:
            if frame.type == WSMsgType.BINARY:
                await ws.close(code=CLOSE_UNSUPPORTED, message=b"text frames only")
                break
            if frame.type != WSMsgType.TEXT:
                break
            ref = None
            try:
                if not bucket.take(loop.time()):
                    raise SignallingError(ErrorCode.RATE_LIMITED, "slow down")
                obj = m.decode_frame(frame.data, sc.max_message_bytes)
                ref = m.message_ref(obj)
                msg = m.parse_message(obj)
                if isinstance(msg, m.Ping):
                    session.send({"type": "pong"})
                elif isinstance(msg, m.Auth):
                    if authed:
                        raise SignallingError(ErrorCode.ALREADY_AUTHENTICATED, "this socket is authenticated")
                    username = await accounts.verify_token(msg.token)
                    await directory.load(username)
                    pinned = username
                    session.username = username
                    hub.attach(session, username, hello={
                        "type": "auth_ok", "protocol": m.PROTOCOL_VERSION, "username": username,
                        "session": session.id, **_ice(cfg, username, session),
                    })
                    authed = True
                    timer.cancel()
                elif isinstance(msg, m.GatewayAuth):
                    if authed:
                        raise SignallingError(ErrorCode.ALREADY_AUTHENTICATED, "this socket is authenticated")
                    if not hmac.compare_digest(msg.secret.encode(), request.app[GATEWAY_SECRET].encode()):
                        raise SignallingError(ErrorCode.AUTH_FAILED, "wrong gateway secret")
                    session.role = "gateway"
                    session.username = f"gateway:{msg.name}"
                    hub.attach_gateway(session, msg.name, msg.capacity, hello={
                        "type": "auth_ok", "protocol": m.PROTOCOL_VERSION, "role": "gateway",
                        "session": session.id, **_ice(cfg, f"gw.{msg.name}", session),
                    })
                    authed = True
                    timer.cancel()
                elif not authed:
                    raise SignallingError(ErrorCode.NOT_AUTHENTICATED, "send auth with your token first")
                else:
                    ledger = hub.ledger
                    paid: tuple[PreparedLedger, str, str] | None = None  # PostgreSQL: the credit check first
                    if isinstance(ledger, PreparedLedger) and session.role == "user":
                        if isinstance(msg, m.Invite) and is_phone_target(msg.to):
                            paid = (ledger, msg.call_id, msg.to)
                        elif isinstance(msg, GroupCallAddPhone):
                            leg = hub.core.group_calls.next_phone_leg(msg.call_id)
                            paid = (ledger, leg, msg.number) if leg is not None else None
                    if isinstance(msg, m.Invite):  # what the core will ask about the callee
                        await directory.ensure(msg.to.strip().lower())
                    elif isinstance(msg, GroupCallStart) and GROUP_DIRECTORY in request.app:
                        await request.app[GROUP_DIRECTORY].ensure(msg.group)  # the members it rings
                    if paid is not None:
                        await paid[0].prepare(paid[1], session.username, paid[2], cfg.calls.default_region,
                                              cfg.bridge.allow_international)
                    try:
                        pending = hub.handle(session, msg, obj, ref)
                        if pending is not None:
                            await pending
                    finally:
                        if paid is not None:  # refused before the core asked: the hold goes
                            await paid[0].release_unused(paid[1])
            except SignallingError as exc:
                if not authed:
                    session.username = ""
                    session.role = "user"
                    if pinned is not None:
                        directory.release(pinned)
                        pinned = None
                session.send(exc.to_wire(ref))
            except Exception:  # a bug must not kill the connection or the server
                log.exception("session %s: internal error", session.id)
                session.send(SignallingError(ErrorCode.INTERNAL, "internal error").to_wire(ref))
    finally:
        timer.cancel()
        if session.ice_timer is not None:
            session.ice_timer.cancel()
        if authed:
            hub.detach(session)
        if pinned is not None:
            directory.release(pinned)
        await session.finish()
    return ws

