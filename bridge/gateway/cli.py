"""`jego bridge`: bridge workers in processes of their own (`jego serve` starts `[bridge] workers`
of them itself; this is for workers on other machines or beside a `jego serve --no-bridge`).

    jego bridge [--server http://127.0.0.1:8080] [--secret S] [--name bridge-2] [--max-calls 16]
                [--config config/jego.toml] [--data-dir DIR] [--workers N|auto]

The worker connects to the server's /ws as a gateway (`gateway_auth`), using `--secret`, else
`bridge.secret`, else the hex key in DATA/bridge.key that `jego serve` created. Its SIP trunk
settings come from [bridge] of the config (JEGO_BRIDGE_* variables override them); give each
worker its own `sip_port` (0 picks a free one). Prometheus `/metrics`, `/healthz` and `/readyz`
(trunk registered, server connected) are served on `local_host`:`[bridge] metrics_port` (0 picks
a free one; the start line prints it). Stops on SIGINT/SIGTERM, hanging up its calls.
`--workers N` (or `auto`, one per core) runs N worker processes under this one
(bridge/gateway/supervisor.py), named NAME-1..N, each registering with the server on its own; a
worker that dies is started again with back-off; SIGINT/SIGTERM stops them all.
Exit codes: 0 stopped, 1 could not start, 2 usage or config error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from jego_call.aio import run as run_loop
from jego_call.config import BridgeSection, Config, load_config
from jego_call.log import default_node, setup_logging
from jego_call.media.endpoint import enable_loopback_candidates

from .metrics import MetricsServer
from .supervisor import WorkerPool, die_with_parent, worker_specs
from .worker import BridgeWorker

log = logging.getLogger("jego.bridge")


def add_parser(sub: Any) -> None:
    """Add `jego bridge`."""
    p = sub.add_parser("bridge", help="run a bridge worker (SIP trunk <-> app calls) as its own process",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", metavar="URL", help="signalling server (default: bridge.server_url or [http])")
    p.add_argument("--secret", help="gateway secret (default: bridge.secret or DATA/bridge.key)")
    p.add_argument("--name", help="worker name (default: bridge.name)")
    p.add_argument("--max-calls", type=int, metavar="N", help="most calls at once (default: bridge.max_calls)")
    p.add_argument("--config", metavar="PATH", help="TOML config (default config/jego.toml)")
    p.add_argument("--data-dir", help="where bridge.key is (default: data.dir)")
    p.add_argument("--workers", metavar="N", help='run N worker processes ("auto": one per core); default 1')
    p.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # set by the supervisor (supervisor.py)
    p.set_defaults(func=run)


def gateway_secret(cfg: Config, given: str | None) -> str:
    """--secret, bridge.secret, or DATA/bridge.key (read only: the server creates it)."""
    if given:
        return given
    if cfg.bridge.secret:
        return cfg.bridge.secret
    path = Path(cfg.data.dir) / "bridge.key"
    try:
        return bytes.fromhex(path.read_text().strip()).hex()
    except (OSError, ValueError):
        raise SystemExit(f"jego bridge: no gateway secret: pass --secret, set bridge.secret, "
                         f"or start `jego serve` once so it writes {path}") from None


def server_url(cfg: Config, given: str | None) -> str:
    if given:
        return given
    if cfg.bridge.server_url:
        return cfg.bridge.server_url
    host = "127.0.0.1" if cfg.http.host in ("0.0.0.0", "") else cfg.http.host
    return f"http://{host}:{cfg.http.port}"


def worker_count(given: str) -> int:
    """--workers: a whole number >= 1, or "auto" (one per core)."""
    if given == "auto":
        return BridgeSection(workers="auto").worker_count
    try:
        n = int(given)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f'--workers must be "auto" or a whole number >= 1, got {given!r}')
    return n


def run(args: argparse.Namespace) -> int:
    if args.parent_pid is not None:
        try:
            die_with_parent(args.parent_pid)  # a supervisor's child: never outlive it
        except SystemExit as exc:
            print(exc.code, file=sys.stderr)
            return 1
    count = 1
    if args.workers is not None:
        try:
            count = worker_count(args.workers)
        except ValueError as exc:
            print(f"jego bridge: {exc}", file=sys.stderr)
            return 2
    overrides: dict[str, dict[str, Any]] = {}
    if args.data_dir:
        overrides["data"] = {"dir": args.data_dir}
    if args.max_calls is not None:
        if args.max_calls < 1:
            print("jego bridge: --max-calls must be at least 1", file=sys.stderr)
            return 2
        overrides["bridge"] = {"max_calls": args.max_calls}
    cfg = load_config(args.config, overrides=overrides)
    setup_logging(cfg.log.level, fmt=cfg.log.format, node=cfg.log.node or default_node())
    try:
        secret = gateway_secret(cfg, args.secret)
    except SystemExit as exc:
        print(exc.code, file=sys.stderr)
        return 1
    url = server_url(cfg, args.server)
    if count > 1:
        return run_pool(cfg, url, secret, count, args)

    async def main() -> int:
        if cfg.ice.loopback_candidates:
            enable_loopback_candidates()
        worker = BridgeWorker.from_config(cfg, url, secret, name=args.name)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        http = MetricsServer(worker.metrics, worker, cfg.bridge.local_host, cfg.bridge.metrics_port)
        try:
            where = await http.start()  # /metrics, /healthz, /readyz
        except OSError as exc:
            print(f"jego bridge: cannot listen on {cfg.bridge.local_host}:{cfg.bridge.metrics_port} "
                  f"([bridge] metrics_port): {exc.strerror or exc}", file=sys.stderr)
            return 1
        await worker.start()
        log.info("bridge %s: metrics on %s/metrics", worker.name, where)
        print(f"Jego bridge {worker.name}: server {url}, trunk {cfg.bridge.trunk_host}:{cfg.bridge.trunk_port}, "
              f"up to {worker.max_calls} calls, metrics {where}/metrics", flush=True)
        await stop.wait()
        await worker.stop()
        await http.stop()
        print(f"Jego bridge {worker.name} stopped.", flush=True)
        return 0

    return run_loop(main())  # uvloop when installed


def run_pool(cfg: Config, url: str, secret: str, count: int, args: argparse.Namespace) -> int:
    """`--workers N`: N `jego bridge` children under a supervisor (this process) until a signal."""
    specs = worker_specs(cfg, url, secret, count, config_path=args.config, name=args.name,
                         max_calls=args.max_calls)

    async def main() -> int:
        pool = WorkerPool(specs)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await pool.start()
        print(f"Jego bridge: {count} workers ({', '.join(s.name for s in specs)}), server {url}", flush=True)
        await stop.wait()
        await pool.stop()
        print(f"Jego bridge: {count} workers stopped.", flush=True)
        return 0

    return run_loop(main())
