"""Run the simulated carrier: `start_carrier` (the trunk plus its local control channel) and
`attach(app, cfg)`, which adds it to `jego serve` as an aiohttp cleanup_ctx entry.

`jego_call.cli.serve` calls `attach` when `[carrier] enabled` is true; the carrier starts with
the app (SIP on [sip] host/port of `cfg.carrier.config`, records under `cfg.data_dir`/carrier,
the control channel for `jego carrier call`) and stops with it. The running trunk is
`app[CARRIER_KEY]`. `jego carrier` (cli.py) uses `start_carrier` the same way.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from jego_call.config import Config

from .config import load_carrier_config, resolve_config_path
from .control import ControlServer
from .scenarios import CarrierConfig
from .trunk import Carrier

log = logging.getLogger("jego.carrier")

CARRIER_KEY: web.AppKey[Carrier] = web.AppKey("carrier", Carrier)


@dataclass(eq=False)
class CarrierService:
    """A started carrier and, when asked for, its control channel. `await stop()` ends both."""

    carrier: Carrier
    control: ControlServer | None = None

    async def stop(self) -> None:
        if self.control is not None:
            await self.control.stop()
            self.control = None
        await self.carrier.stop()


async def start_carrier(cfg: CarrierConfig, data_dir: str | Path, *, control: bool = True,
                        **kwargs: object) -> CarrierService:
    """Build and start a Carrier (and its control channel unless `control=False`); a busy SIP
    port becomes SystemExit with a readable message."""
    carrier = Carrier(cfg, data_dir, **kwargs)  # type: ignore[arg-type]
    try:
        await carrier.start()
    except OSError as exc:
        await carrier.stop()
        raise SystemExit(f"carrier: cannot listen on {carrier.host}:{carrier.port}: "
                         f"{exc.strerror or exc} (set [sip] port in the carrier config, or --no-carrier)") from None
    service = CarrierService(carrier)
    if control:
        service.control = ControlServer(carrier, port=cfg.control.port)
        try:
            await service.control.start()
        except BaseException:
            await service.stop()
            raise
    return service


def attach(app: web.Application, cfg: Config) -> None:
    """Add the carrier to `app`'s start-up/shut-down (cleanup_ctx)."""

    async def carrier_ctx(app: web.Application) -> AsyncIterator[None]:
        ccfg = load_carrier_config(resolve_config_path(cfg.carrier.config))
        service = await start_carrier(ccfg, cfg.data_dir)
        carrier = service.carrier
        app[CARRIER_KEY] = carrier
        print(f"Simulated carrier: SIP udp/tcp {carrier.host}:{carrier.udp_port}, realm {ccfg.sip.realm}",
              flush=True)
        try:
            yield
        finally:
            await service.stop()

    app.cleanup_ctx.append(carrier_ctx)
