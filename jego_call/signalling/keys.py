"""Every `web.AppKey` of the signalling server, in one module that imports nothing at run time.

`create_app` (server.py) and the `cleanup_ctx` entries fill them; handlers read them, e.g.
`request.app[HUB]`. Features add their own resources here too (MESSAGING).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from ..accounts import Accounts, LoginDoors
    from ..billing.service import Billing
    from ..calllog import CallLog
    from ..cluster.doors import SharedDoors
    from ..cluster.node import ClusterNode
    from ..config import Config
    from ..db import Database
    from ..directory import LiveDirectory
    from ..groups.service import GroupDirectory, Groups
    from ..messaging.service import Messaging
    from ..metrics import ServerMetrics
    from .hub import Hub

CONFIG: web.AppKey[Config] = web.AppKey("config")
DB: web.AppKey[Database] = web.AppKey("db")
ACCOUNTS: web.AppKey[Accounts] = web.AppKey("accounts")
HUB: web.AppKey[Hub] = web.AppKey("hub")
# The hub core's accounts lookups (jego_call/directory.py); the shells call load/release/ensure.
DIRECTORY: web.AppKey[LiveDirectory] = web.AppKey("directory")
CALL_LOG: web.AppKey[CallLog] = web.AppKey("call_log")
GATEWAY_SECRET: web.AppKey[str] = web.AppKey("gateway_secret")
MESSAGING: web.AppKey[Messaging] = web.AppKey("messaging")
GROUPS: web.AppKey[Groups] = web.AppKey("groups")
GROUP_DIRECTORY: web.AppKey[GroupDirectory] = web.AppKey("group_directory")  # the desk's groups
BILLING: web.AppKey[Billing] = web.AppKey("billing")            # jego_call/billing/web.py
LOGIN_DOORS: web.AppKey[LoginDoors] = web.AppKey("login_doors")  # rate limits, lockout, hash gate
# Only in a cluster ([cluster] redis_url): this node's link to the others, and the lockouts and
# per-source buckets of the login doors kept in the shared state.
CLUSTER: web.AppKey[ClusterNode] = web.AppKey("cluster")
SHARED_DOORS: web.AppKey[SharedDoors] = web.AppKey("shared_doors")
# Resolved by `jego serve` with the URL it listens on, for in-process clients (the bridge).
BOUND_URL: web.AppKey[asyncio.Future[str]] = web.AppKey("bound_url")
# The billing hook for the dial pad: E.164 -> {"per_minute": "0.10", "currency": "CNY"} or None.
# Unset until billing installs one; GET /api/numbers/check then returns "price": null.
PRICE_LOOKUP: web.AppKey[Callable[[str], dict[str, Any] | None]] = web.AppKey("price_lookup")
# Observability (jego_call/signalling/health.py): this process's Prometheus series, and the
# readiness checks behind GET /readyz: (name, check) where `await check()` is None when the
# thing is usable, else why not. Features add theirs at build time or start-up, e.g. the cluster:
# app[READY_CHECKS].append(("redis", redis_check)); the in-process bridge adds its trunk.
METRICS: web.AppKey[ServerMetrics] = web.AppKey("metrics")
ReadyCheck = Callable[[], Awaitable[str | None]]
READY_CHECKS: web.AppKey[list[tuple[str, ReadyCheck]]] = web.AppKey("ready_checks")
