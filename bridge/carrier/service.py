"""Run the simulated carrier inside `jego serve` (an aiohttp cleanup_ctx entry).

`jego_call.cli.serve` calls `attach(app, cfg)` when `[carrier] enabled` is true; the carrier
starts with the app (SIP on [sip] host/port of `cfg.carrier.config`, records under
`cfg.data_dir`/carrier, control channel for `jego carrier call`) and stops with it. The running
instance is `app[CARRIER_KEY]`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from jego_call.config import Config

from .scenarios import DEFAULT_CARRIER_CONFIG, CarrierConfig, load_carrier_config
from .trunk import Carrier

log = logging.getLogger("jego.carrier")

CARRIER_KEY: web.AppKey[Carrier] = web.AppKey("carrier", Carrier)


def resolve_config_path(path: str | Path) -> Path:
    """A relative config path is taken from the working directory, else from the repository
    (so `jego serve` works from any directory with the default "config/carrier.toml")."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    repo = DEFAULT_CARRIER_CONFIG.parents[1]
    return repo / p if (repo / p).exists() else p


async def start_carrier(cfg: CarrierConfig, data_dir: str | Path, **kwargs: object) -> Carrier:
    """Build and start a Carrier; a busy SIP port becomes SystemExit with a readable message."""
    carrier = Carrier(cfg, data_dir, **kwargs)  # type: ignore[arg-type]
    try:
        await carrier.start()
    except OSError as exc:
        await carrier.stop()
        raise SystemExit(f"carrier: cannot listen on {carrier.host}:{carrier.port}: "
                         f"{exc.strerror or exc} (set [sip] port in the carrier config, or --no-carrier)") from None
    return carrier


def attach(app: web.Application, cfg: Config) -> None:
    """Add the carrier to `app`'s start-up/shut-down (cleanup_ctx)."""

    async def carrier_ctx(app: web.Application) -> AsyncIterator[None]:
        ccfg = load_carrier_config(resolve_config_path(cfg.carrier.config))
        carrier = await start_carrier(ccfg, cfg.data_dir, control_port=0)
        app[CARRIER_KEY] = carrier
        print(f"Simulated carrier: SIP udp/tcp {carrier.host}:{carrier.udp_port}, realm {ccfg.sip.realm}",
              flush=True)
        try:
            yield
        finally:
            await carrier.stop()

    app.cleanup_ctx.append(carrier_ctx)
