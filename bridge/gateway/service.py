"""Run one bridge worker inside `jego serve` (an aiohttp cleanup_ctx entry).

`jego_call.cli.serve` calls `attach(app, cfg)` when `[bridge] enabled` is true. The worker
connects to this very server once it listens (`app[BOUND_URL]`, resolved by `jego serve`) with
the gateway secret `app[GATEWAY_SECRET]`, and stops with the app. More capacity: run extra
workers with `jego bridge` (bridge/gateway/cli.py). The running worker is `app[BRIDGE_KEY][0]`
(empty until the server listens). Its metrics are on jego serve's /metrics (`app[METRICS]`'s
registry) and its trunk registration is one of jego serve's /readyz checks ("bridge").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from jego_call.config import Config
from jego_call.media.endpoint import enable_loopback_candidates
from jego_call.signalling.keys import BOUND_URL, GATEWAY_SECRET, METRICS, READY_CHECKS

from .metrics import readiness
from .worker import BridgeWorker

log = logging.getLogger("jego.bridge")

BRIDGE_KEY: web.AppKey[list[BridgeWorker]] = web.AppKey("bridge", list)


def attach(app: web.Application, cfg: Config) -> None:
    """Add one in-process bridge worker to `app`'s start-up/shut-down (cleanup_ctx)."""

    async def bridge_ctx(app: web.Application) -> AsyncIterator[None]:
        if cfg.ice.loopback_candidates:
            enable_loopback_candidates()
        holder: list[BridgeWorker] = []
        app[BRIDGE_KEY] = holder

        async def start_when_bound() -> None:
            url = await app[BOUND_URL]  # jego serve resolves it once the site listens
            metrics = app[METRICS]      # its series go to jego serve's /metrics
            worker = BridgeWorker.from_config(cfg, url, app[GATEWAY_SECRET],
                                              registry=metrics.registry if metrics.enabled else None)
            holder.append(worker)
            metrics.refreshers.append(lambda: worker.metrics.refresh(worker.calls.values()))
            await worker.start()
            print(f"Bridge {worker.name}: trunk {cfg.bridge.trunk_host}:{cfg.bridge.trunk_port} "
                  f"({'REGISTER' if cfg.bridge.register else 'trunk mode'}), up to {worker.max_calls} calls",
                  flush=True)

        starter = asyncio.ensure_future(start_when_bound())
        try:
            yield
        finally:
            starter.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starter
            for worker in holder:
                await worker.stop()

    async def stop_first(app: web.Application) -> None:
        # Before the hub ends calls and closes sockets (create_app's on_shutdown): hang up our
        # SIP legs with BYE/CANCEL and un-REGISTER while the server and the trunk are still up.
        for worker in app.get(BRIDGE_KEY, []):
            await worker.stop()

    async def trunk_ready() -> str | None:
        # GET /readyz of jego serve: the in-process worker's trunk registration and connection
        workers = app.get(BRIDGE_KEY, [])
        if not workers:
            return "bridge not started yet"
        ok, checks = await readiness(workers[0])
        return None if ok else "; ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok")

    app.cleanup_ctx.append(bridge_ctx)
    app.on_shutdown.insert(0, stop_first)
    app[READY_CHECKS].append(("bridge", trunk_ready))
