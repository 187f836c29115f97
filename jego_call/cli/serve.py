"""`jego serve`: the whole service in one process tree (signalling, web client, and, when
enabled in config, the simulated carrier and the bridge). This is the composition root:
the only place that wires `bridge` services into the `jego_call` app.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import signal
import sys
from typing import Any

from aiohttp import web

from ..aio import run as run_loop
from ..config import Config, load_config
from ..log import default_node, setup_logging
from ..metrics import Live
from ..signalling.gc_tuning import GcTuner, GcWatch
from ..signalling.keys import BOUND_URL, METRICS
from ..signalling.server import create_app

log = logging.getLogger("jego.serve")

# Connections the kernel queues before accept() (capped by net.core.somaxconn). aiohttp's 128 drops
# SYNs when thousands of clients come back after a restart, and a dropped SYN is retried only
# after 1, 3, 7 ... s (docs/benchmarks.md "Cluster: idle clients and reconnect storms").
LISTEN_BACKLOG = 4096

# Optional services: "module:function" taking (app, cfg, config_path=...) and adding cleanup_ctx
# entries; enabled by the config section of the same name ([carrier] in-process; [bridge] starts
# `[bridge] workers` `jego bridge` processes under this one, which read the same config file).
SERVICES: dict[str, str] = {"carrier": "bridge.carrier.service:attach", "bridge": "bridge.gateway.service:attach"}


def add_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the service (web client, signalling, carrier, bridge)")
    p.add_argument("--config", metavar="PATH", help="TOML config (default config/jego.toml)")
    p.add_argument("--host", help="override http.host")
    p.add_argument("--port", type=int, help="override http.port (0 picks a free port)")
    p.add_argument("--data-dir", help="override data.dir")
    p.add_argument("--no-carrier", action="store_true", help="do not start the simulated carrier")
    p.add_argument("--no-bridge", action="store_true", help="do not start the bridge")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> Config:
    overrides: dict[str, dict[str, Any]] = {}
    if args.host is not None:
        overrides.setdefault("http", {})["host"] = args.host
    if args.port is not None:
        overrides.setdefault("http", {})["port"] = args.port
    if args.data_dir is not None:
        overrides.setdefault("data", {})["dir"] = args.data_dir
    if args.no_carrier:
        overrides.setdefault("carrier", {})["enabled"] = False
    if args.no_bridge:
        overrides.setdefault("bridge", {})["enabled"] = False
    return load_config(args.config, overrides=overrides)


def build_app(cfg: Config, config_path: str | None = None) -> web.Application:
    app = create_app(cfg)
    for section, target in SERVICES.items():
        if getattr(getattr(cfg, section), "enabled", False):
            module, func = target.split(":")
            extra = {"config_path": config_path} if section == "bridge" else {}
            getattr(importlib.import_module(module), func)(app, cfg, **extra)
    return app


async def serve(cfg: Config, config_path: str | None = None) -> None:
    app = build_app(cfg, config_path)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, cfg.http.host, cfg.http.port, backlog=LISTEN_BACKLOG)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise SystemExit(f"jego serve: cannot listen on {cfg.http.host}:{cfg.http.port}: {exc.strerror}") from None
    host, port = runner.addresses[0][:2]
    watch = GcWatch()  # collection pauses at /metrics (jego_gc_*)
    if METRICS in app and app[METRICS].enabled:
        watch.install()
        app[METRICS].register(Live(watch.collect))
    tuner = GcTuner(cfg.signalling)  # start-up is done: freeze what it made (gc_tuning.py)
    tuner.start()
    app[BOUND_URL].set_result(f"http://{host}:{port}")
    print(f"Jego Call is running: open http://{host}:{port}/", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    tuner.stop()
    await runner.cleanup()
    watch.uninstall()
    print("Jego Call stopped.", flush=True)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    setup_logging(cfg.log.level, fmt=cfg.log.format, node=cfg.log.node or default_node())
    try:
        run_loop(serve(cfg, args.config))  # uvloop when installed
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return 1
        raise
    return 0
