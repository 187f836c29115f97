"""HTTP side of billing: `setup_billing(app)` (called by `create_app`) loads the rates, adds
`GET /api/credit` and `GET /api/rate`, and a `cleanup_ctx` entry that builds `Billing`
(AppKey BILLING), settles what a crash left open (`recover`) and marks live calls in the
ledger every `billing.heartbeat_s` (so a later crash is billed for the time calls were up).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from .. import numbering
from ..errors import ErrorCode, SignallingError
from ..signalling.http import authenticated_user
from ..signalling.keys import BILLING, CONFIG, DB, HUB
from .policy import Terms
from .rates import RateTable
from .refusal import Refusal
from .service import Billing, load_rate_table

log = logging.getLogger("jego.billing")

_RATES: web.AppKey[RateTable] = web.AppKey("billing_rates")


async def credit(request: web.Request) -> web.Response:
    """GET /api/credit: the caller's balance, held and available credit and recent entries."""
    user = await authenticated_user(request)
    if BILLING not in request.app:
        return web.json_response({"enabled": False})
    try:
        limit = min(200, max(1, int(request.query.get("limit", str(request.app[BILLING].history)))))
    except ValueError:
        raise SignallingError(ErrorCode.INVALID_MESSAGE, "limit must be an integer") from None
    return web.json_response({"enabled": True, **await request.app[BILLING].view(user, limit)})


async def rate(request: web.Request) -> web.Response:
    """GET /api/rate?number=…: the price of a number before it is dialled, or why it cannot be."""
    await authenticated_user(request)
    raw = request.query.get("number", "")
    cfg = request.app[CONFIG]
    if BILLING not in request.app:
        return web.json_response({"enabled": False})
    if numbering.is_emergency(raw, cfg.calls.default_region):
        return web.json_response({"enabled": True, "number": raw, "e164": None, "callable": False, "rate": None,
                                  "refusal": {"reason": "emergency", "en": "Emergency numbers cannot be called from "
                                              "the app: use a local phone", "zh": "无法通过本应用拨打紧急电话，请使用当地电话"}})
    try:
        e164 = numbering.normalise(raw, cfg.calls.default_region)
    except numbering.NumberError as exc:
        raise SignallingError(ErrorCode.INVALID_NUMBER, exc.message) from None
    billing = request.app[BILLING]
    q = billing.quote(e164)
    info = numbering.classify(e164)
    out: dict[str, object] = {"enabled": True, "number": raw, "e164": e164, "international": info.international}
    if isinstance(q, Refusal):
        out.update(callable=False, rate=None, refusal={"reason": q.reason.value, "en": q.en, "zh": q.zh})
    else:
        out.update(callable=True, rate=q.to_json(info), refusal=None,
                   destination_zh=q.describe(info, "zh"))
    return web.json_response(out)


async def _heartbeats(app: web.Application, billing: Billing, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            live = list(app[HUB].calls) if HUB in app else []
            await billing.heartbeat(live, time.time())
        except Exception:  # a locked or full database must not stop the loop
            log.exception("billing heartbeat failed")


async def _billing_ctx(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    billing = await Billing.open(app[DB], app[_RATES], cfg.fraud, Terms(cfg.billing.warning_s, cfg.billing.max_call_s),
                                 history=cfg.billing.history)
    recovered = await billing.recover(time.time())
    if recovered:
        log.warning("settled %d call(s) left open by a crash: %s", len(recovered),
                    ", ".join(f"{s.call_id} {s.billed_s} s" for s in recovered))
    app[BILLING] = billing
    task = asyncio.get_running_loop().create_task(_heartbeats(app, billing, cfg.billing.heartbeat_s))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def setup_billing(app: web.Application) -> None:
    """Load config/rates.toml now (a bad file stops start-up, naming the key) and add the
    routes and the Billing cleanup_ctx entry (after `_storage`, which opens the database)."""
    cfg = app[CONFIG]
    app.router.add_get("/api/credit", credit)
    app.router.add_get("/api/rate", rate)
    if not cfg.billing.enabled:
        return
    app[_RATES] = load_rate_table(cfg.billing.rates)
    app.cleanup_ctx.append(_billing_ctx)
