"""HTTP side of billing: `setup_billing(app)` (called by `create_app`) loads the rates, adds
`GET /api/credit` and `GET /api/rate`, and a `cleanup_ctx` entry that builds `Billing`
(AppKey BILLING), settles what a crash left open (`recover`, writing those calls' records),
installs it as the hub's `Ledger` (calls to phones are authorised, timed and charged from then
on) and as the dial pad's price (`PRICE_LOOKUP`), and marks live calls in the ledger every
`billing.heartbeat_s` (so a later crash is billed for the time calls were up).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from .. import numbering
from ..call.reasons import EndReason
from ..calllog import CallLog, CallRecord
from ..db import Executor
from ..errors import ConfigError, ErrorCode, SignallingError
from ..signalling.http import authenticated_user
from ..signalling.keys import BILLING, CALL_LOG, CONFIG, DB, HUB, PRICE_LOOKUP
from . import store
from .ledger import make_ledger
from .money import MoneyError, format_amount, parse_amount
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


def price_lookup(billing: Billing) -> Callable[[str], dict[str, Any] | None]:
    """The dial pad's price (GET /api/numbers/check `price`): per minute, as text, and the rest
    of the rate, or None when the number cannot be called (no rate, barred)."""

    def price(e164: str) -> dict[str, Any] | None:
        q = billing.quote(e164)
        if isinstance(q, Refusal):
            return None
        cur = q.currency
        info = numbering.classify(e164)
        return {"per_minute": q.per_minute_text().rsplit(" ", 1)[0], "currency": cur.code,
                "increment": q.increment.text, "first_s": q.increment.first_s,
                "connection_fee": format_amount(q.connection_fee, cur, code=False) if q.connection_fee else None,
                "destination": q.describe(info), "destination_zh": q.describe(info, "zh")}

    return price


def _recovered_record(call_log: CallLog | None) -> Callable[[Executor, store.Charge, float], Awaitable[None]] | None:
    """The call record of a call a crash left open (written in its settlement's transaction)."""
    if call_log is None:
        return None

    async def write(tx: Executor, charge: store.Charge, ended_at: float) -> None:
        await call_log.record(CallRecord(charge.call_id, charge.username, charge.destination, "user", "phone",
                                         "audio", charge.authorised_at, charge.answered_at, ended_at,
                                         EndReason.SERVER_SHUTDOWN.value), tx)

    return write


async def _heartbeats(app: web.Application, billing: Billing, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            live = list(app[HUB].calls) if HUB in app else []
            await billing.heartbeat(live, time.time())
            if HUB in app and app[HUB].unsettled:
                app[HUB].retry_records()
        except Exception:  # a locked or full database must not stop the loop
            log.exception("billing heartbeat failed")


async def _billing_ctx(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    billing = await Billing.open(app[DB], app[_RATES], cfg.fraud, Terms(cfg.billing.warning_s, cfg.billing.max_call_s),
                                 history=cfg.billing.history, low_balance=cfg.billing.low_balance)
    recovered = await billing.recover(time.time(), also=_recovered_record(app.get(CALL_LOG)))
    if recovered:
        log.warning("settled %d call(s) left open by a crash: %s", len(recovered),
                    ", ".join(f"{s.call_id} {s.billed_s} s" for s in recovered))
    app[BILLING] = billing
    if PRICE_LOOKUP not in app:  # (a test may have installed its own)
        app[PRICE_LOOKUP] = price_lookup(billing)
    ledger = make_ledger(billing)
    if HUB in app:
        app[HUB].set_ledger(ledger)
    task = asyncio.get_running_loop().create_task(_heartbeats(app, billing, cfg.billing.heartbeat_s))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if HUB in app and app[HUB].ledger is ledger:
        app[HUB].set_ledger(None)


def setup_billing(app: web.Application) -> None:
    """Load config/rates.toml now (a bad file stops start-up, naming the key) and add the
    routes and the Billing cleanup_ctx entry (after `_storage`, which opens the database)."""
    cfg = app[CONFIG]
    app.router.add_get("/api/credit", credit)
    app.router.add_get("/api/rate", rate)
    if not cfg.billing.enabled:
        return
    app[_RATES] = load_rate_table(cfg.billing.rates)
    try:  # checked now, in the rates' currency: a bad amount stops start-up too
        parse_amount(cfg.billing.low_balance, app[_RATES].currency)
    except MoneyError as exc:
        raise ConfigError("billing.low_balance", str(exc)) from None
    app.cleanup_ctx.append(_billing_ctx)
