"""Run the bridge workers of `jego serve` (an aiohttp cleanup_ctx entry).

`jego_call.cli.serve` calls `attach(app, cfg)` when `[bridge] enabled` is true. Once the server
listens (`app[BOUND_URL]`, resolved by `jego serve`), `[bridge] workers` `jego bridge` processes
start (bridge/gateway/supervisor.py `WorkerPool`; "auto" = one per core), children of jego
serve, each connecting to this very server with the gateway secret `app[GATEWAY_SECRET]` and
registering with the trunk on its own; a worker that dies is started again with back-off. On
shutdown, before the hub ends calls, every worker gets SIGTERM and hangs up its calls while the
server and the carrier are still up. The pool is `app[BRIDGE_POOL]` (None until the server
listens). The workers' jego_bridge_* series are merged into jego serve's /metrics at each
scrape (`app[METRICS]` refresher + collector), and "bridge" is one of /readyz's checks: every
worker's own /readyz (trunk registered, server connected).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator

from aiohttp import web
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from jego_call.config import Config
from jego_call.metrics import Live
from jego_call.signalling.keys import BOUND_URL, GATEWAY_SECRET, METRICS, READY_CHECKS

from .supervisor import WorkerPool, worker_specs

log = logging.getLogger("jego.bridge")

BRIDGE_POOL: web.AppKey[WorkerPool | None] = web.AppKey("bridge_pool", WorkerPool)


def merge_families(texts: list[str], prefix: str = "jego_bridge_") -> list[Metric]:
    """The `prefix` families of several workers' /metrics texts, one family per name with every
    worker's samples (each carries its own `worker` label)."""
    merged: dict[str, Metric] = {}
    for text in texts:
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError as exc:
            log.warning("a bridge worker's /metrics did not parse: %s", exc)
            continue
        for fam in families:
            if not fam.name.startswith(prefix):
                continue
            into = merged.get(fam.name)
            if into is None:
                merged[fam.name] = fam
            elif into.type == fam.type:
                into.samples.extend(fam.samples)
    return list(merged.values())


def attach(app: web.Application, cfg: Config, config_path: str | None = None) -> None:
    """Add `[bridge] workers` worker processes to `app`'s start-up/shut-down (cleanup_ctx)."""
    app[BRIDGE_POOL] = None
    scraped: list[Metric] = []

    async def bridge_ctx(app: web.Application) -> AsyncIterator[None]:
        async def start_when_bound() -> None:
            url = await app[BOUND_URL]  # jego serve resolves it once the site listens
            count = cfg.bridge.worker_count
            pool = WorkerPool(worker_specs(cfg, url, app[GATEWAY_SECRET], count, config_path=config_path))
            app[BRIDGE_POOL] = pool
            await pool.start()
            print(f"Bridge: {count} worker process{'es' if count > 1 else ''} "
                  f"({', '.join(w.name for w in pool.workers)}), trunk {cfg.bridge.trunk_host}:"
                  f"{cfg.bridge.trunk_port} ({'REGISTER' if cfg.bridge.register else 'trunk mode'}), "
                  f"up to {cfg.bridge.max_calls} calls each", flush=True)

        starter = asyncio.ensure_future(start_when_bound())
        try:
            yield
        finally:
            starter.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starter
            pool = app[BRIDGE_POOL]
            if pool is not None:
                await pool.stop()

    async def stop_first(app: web.Application) -> None:
        # Before the hub ends calls and closes sockets (create_app's on_shutdown): the workers hang
        # up their SIP legs with BYE/CANCEL and un-REGISTER while the server and the trunk are up.
        pool = app[BRIDGE_POOL]
        if pool is not None:
            await pool.stop()

    async def workers_ready() -> str | None:
        # GET /readyz of jego serve: every worker's own /readyz (trunk registered, server connected)
        pool = app[BRIDGE_POOL]
        if pool is None:
            return "bridge not started yet"
        return await pool.readiness()

    async def scrape_workers() -> None:
        pool = app[BRIDGE_POOL]
        scraped[:] = merge_families(await pool.scrape()) if pool is not None else []

    def collect() -> Iterator[Metric]:
        yield from scraped

    app.cleanup_ctx.append(bridge_ctx)
    app.on_shutdown.insert(0, stop_first)
    app[READY_CHECKS].append(("bridge", workers_ready))
    metrics = app[METRICS]
    if metrics.enabled:
        metrics.refreshers.append(scrape_workers)
        metrics.registry.register(Live(collect))
