"""`Billing`: the credit ledger and the authorise / answered / heartbeat / settle / recover
cycle of a phone call, on SQLite or PostgreSQL. Each public method is a coroutine and one
transaction that first locks the user's money (`store.lock_user`: BEGIN IMMEDIATE on SQLite, an
advisory lock on PostgreSQL), so two calls (or a call and `jego credit add` in another process,
or on another node) never see the same money. Build it with `await Billing.open(db, ...)`, which
checks the currency of the balances. On SQLite the coroutines never wait: `db.run_sync(...)`
runs one from synchronous code.

Wiring (the hub, when a call to a phone number is placed; docs/architecture.md "Billing"):
1. `authorise(call_id, user, e164, now)` before the gateway gets the invite: a `Refusal` ends
   the call at once (no SIP); a grant writes the call's billing record and holds its money.
2. `answered(call_id, at)` when the gateway accepts: the `Timers` say when to send
   `credit_low` and when to cut the call (`cut_reason`).
3. `heartbeat(live_call_ids, now)` every `billing.heartbeat_s` while calls are up.
4. `settle(call_id, answered_at, ended_at, also=write_call_record)` at the end, exactly once.
5. `recover(now)` at start-up settles what a crash left open.
"""

from __future__ import annotations

import inspect
import logging
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..db import Database, Executor
from ..errors import ConfigError
from ..numbering import classify
from . import policy, store
from .fraud import FraudConfig, Signal
from .money import Currency, MoneyError, format_amount, parse_amount
from .policy import Grant, Terms, Timers
from .rates import Rate, RateTable, build_rate_table
from .refusal import Refusal

log = logging.getLogger("jego.billing")

REPO_ROOT = Path(__file__).resolve().parents[2]


def resolve_path(path: str | Path) -> Path:
    """A relative path from the working directory if it exists there, else from the repository."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return REPO_ROOT / p


def load_rate_table(path: str | Path = "config/rates.toml") -> RateTable:
    """Read and check config/rates.toml (or `path`): ConfigError naming the key on any fault."""
    p = resolve_path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("billing.rates", f"no such file: {p}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(p), f"invalid TOML: {exc}") from None
    return build_rate_table(data, "rates")


# `settle(also=...)`: run inside the settlement's transaction, given it (may return a coroutine).
Also = Callable[[Executor], Any]


async def _also(also: Also | None, tx: Executor) -> None:
    if also is not None:
        out = also(tx)
        if inspect.isawaitable(out):
            await out


class BillingError(ValueError):
    """An operator request the ledger refuses (unknown user, not enough balance to deduct …)."""


@dataclass(frozen=True, slots=True)
class Authorisation:
    """`grant` (go ahead) or `refusal` (end the call with refusal.reason and its words)."""

    call_id: str
    grant: Grant | None
    refusal: Refusal | None
    signals: tuple[Signal, ...] = ()

    @property
    def ok(self) -> bool:
        return self.grant is not None


@dataclass(frozen=True, slots=True)
class Settlement:
    """A settled call: `duplicate` when it had been settled before (nothing was charged again)."""

    call_id: str
    username: str
    billed_s: int
    cost: int
    balance_after: int
    currency: str
    duplicate: bool = False
    by: str = "call"


class Billing:
    """Prepaid credit on `db`. Pass `now` (Unix seconds) to every call-path method; the hub
    passes time.time(). Each method is one small transaction (a coroutine): await it."""

    def __init__(self, db: Database, rates: RateTable, fraud: FraudConfig, terms: Terms | None = None,
                 history: int = 20, low_balance: str = "5") -> None:
        """Use `await Billing.open(...)`, which also checks the balances' currency."""
        self.db = db
        self.rates = rates
        self.fraud = fraud
        self.terms = terms or Terms()
        self.history = history
        self.counters: Counter[str] = Counter()
        try:
            self.low_balance = parse_amount(low_balance, rates.currency)
        except MoneyError as exc:
            raise ConfigError("billing.low_balance", str(exc)) from None

    @classmethod
    async def open(cls, db: Database, rates: RateTable, fraud: FraudConfig, terms: Terms | None = None,
                   history: int = 20, low_balance: str = "5") -> Billing:
        """A Billing on `db`; ConfigError if balances are kept in another currency than the rates."""
        billing = cls(db, rates, fraud, terms, history, low_balance)
        kept = await store.currencies(db) - {rates.currency.code}
        if kept:
            raise ConfigError("rates.currency", f"balances are kept in {', '.join(sorted(kept))}, but the rates are "
                              f"in {rates.currency.code}: convert the balances before changing the currency")
        return billing

    @property
    def currency(self) -> Currency:
        return self.rates.currency

    # -- operator -----------------------------------------------------------------------------
    async def top_up(self, username: str, amount: int, note: str, now: float | None = None) -> int:
        """Add `amount` minor units (negative: a correction, at most the available balance);
        returns the new balance. BillingError for an unknown user or a deduction too large."""
        if not isinstance(amount, int) or isinstance(amount, bool) or amount == 0:
            raise BillingError("amount must be a non-zero integer of minor units")
        now = time.time() if now is None else now
        async with self.db.transaction() as tx:
            await store.lock_user(tx, username)
            if not await store.user_exists(tx, username):
                raise BillingError(f"no user {username!r}")
            bal, _ = await store.balance(tx, username)
            hold, _, _ = await store.held(tx, username)
            if amount < 0 and bal - hold + amount < 0:
                raise BillingError(f"cannot deduct {format_amount(-amount, self.currency)}: {username} has "
                                   f"{format_amount(bal - hold, self.currency)} available")
            after = await store.post(tx, username, "topup" if amount > 0 else "adjustment", amount, self.currency,
                                     now, note)
        log.info("credit %s %s: %s (%s), balance %s", "added to" if amount > 0 else "deducted from", username,
                 format_amount(abs(amount), self.currency), note, format_amount(after, self.currency))
        return after

    async def view(self, username: str, limit: int | None = None) -> dict[str, Any]:
        """Balance, held, available, suspension and the newest ledger entries (GET /api/credit)."""
        async with self.db.transaction() as tx:
            await store.lock_user(tx, username)  # one consistent picture
            bal, _ = await store.balance(tx, username)
            hold, n_open, _ = await store.held(tx, username)
            entries = await store.ledger(tx, username, self.history if limit is None else limit)
            susp = await store.suspension(tx, username)
            opened = await store.open_charges(tx, username)
        cur = self.currency
        out: dict[str, Any] = {
            "username": username, "currency": cur.code, "minor_units": cur.exponent,
            "balance": bal, "balance_text": format_amount(bal, cur), "held": hold, "available": bal - hold,
            "available_text": format_amount(bal - hold, cur), "open_calls": n_open,
            "calls_in_progress": [{"call_id": c.call_id, "destination": c.destination, "hold": c.hold,
                                   "answered_at": c.answered_at} for c in opened],
            "entries": [{**e, "amount_text": format_amount(e["amount"], cur)} for e in entries],
            "suspended": None, "low_balance": self.low_balance,
            "low_balance_text": format_amount(self.low_balance, cur), "low": bal - hold < self.low_balance,
        }
        if susp is not None:
            refusal, at = susp
            out["suspended"] = {"since": at, "rule": refusal.rule, "en": refusal.en, "zh": refusal.zh}
        return out

    async def credit(self, username: str) -> dict[str, Any]:
        """Balance, held and available credit in minor units, and the currency (credit_low)."""
        async with self.db.transaction() as tx:
            bal, _ = await store.balance(tx, username)
            hold, _, _ = await store.held(tx, username)
        return {"balance": bal, "held": hold, "available": bal - hold, "currency": self.currency.code}

    async def unsuspend(self, username: str, note: str = "", now: float | None = None) -> bool:
        """Lift a suspension of the user's phone calls; False if there was none."""
        now = time.time() if now is None else now
        async with self.db.transaction() as tx:
            await store.lock_user(tx, username)
            lifted = await store.unsuspend(tx, username)
            if lifted:
                await store.fraud_event(tx, username, now, "lifted", "operator", note or "lifted by an operator")
        if lifted:
            log.warning("phone calls of %s unsuspended (%s)", username, note or "operator")
        return lifted

    # -- the call path -------------------------------------------------------------------------
    def quote(self, e164: str) -> Rate | Refusal:
        """The rate for a number, or why it cannot be called (barred, no rate). No database."""
        return policy.quote(classify(e164), self.rates, self.fraud)

    async def authorise(self, call_id: str, username: str, e164: str, now: float) -> Authorisation:
        """Decide whether `username` may call `e164` now; on a grant write the call's billing
        record and hold its money (one transaction). Call before any SIP is sent."""
        info = classify(e164)
        async with self.db.transaction() as tx:
            await store.lock_user(tx, username)
            existing = await store.get_charge(tx, call_id)
            if existing is not None:
                if existing.username != username or existing.destination != info.e164 or not existing.open:
                    raise ValueError(f"call {call_id} was authorised before")
                grant = Grant(existing.rate, existing.hold, existing.allowed_s, existing.cut_reason,
                              existing.cut_reason.value == "credit_exhausted")
                return Authorisation(call_id, grant, None)
            bal, _ = await store.balance(tx, username)
            open_calls = await store.held(tx, username)
            susp = await store.suspension(tx, username)
            account = policy.Account(bal, open_calls[0], susp[0] if susp else None)
            activity = await store.activity(tx, username, now, open_calls)
            decision = policy.decide(info, account, activity, self.rates, self.fraud, self.terms, now)
            for s in decision.signals:
                await store.fraud_event(tx, username, now, s.level, s.rule, s.en, call_id)
            if decision.suspends and decision.refusal is not None:
                await store.suspend(tx, username, decision.refusal, now)
            if decision.grant is not None:
                g = decision.grant
                await store.insert_charge(tx, call_id, username, info.e164, g.rate.describe(info), g.rate, g.hold,
                                          g.allowed_s, g.cut_reason, now)
        for s in decision.signals:
            self.counters[f"{s.rule}_{s.level}"] += 1
            log.warning("[call %s] fraud %s: %s %s (%d, threshold %d)", call_id, s.level, username, s.en, s.count,
                        s.threshold)
        if decision.suspends:
            self.counters["suspensions"] += 1
            log.error("[call %s] phone calls of %s suspended: %s", call_id, username, decision.refusal and decision.refusal.rule)
        if decision.refusal is not None:
            self.counters[f"refused_{decision.refusal.reason.value}"] += 1
            log.info("[call %s] %s -> %s refused: %s (%s)", call_id, username, info.e164, decision.refusal.reason,
                     decision.refusal.rule)
        else:
            self.counters["authorised"] += 1
        return Authorisation(call_id, decision.grant, decision.refusal, decision.signals)

    async def answered(self, call_id: str, at: float) -> Timers | None:
        """Mark the call answered at `at`; the moments to warn and to cut it (None: not billed)."""
        async with self.db.transaction() as tx:
            await store.mark_answered(tx, call_id, at)
            charge = await store.get_charge(tx, call_id)
        if charge is None or not charge.open or charge.answered_at is None:
            return None
        grant = Grant(charge.rate, charge.hold, charge.allowed_s, charge.cut_reason,
                      charge.cut_reason.value == "credit_exhausted")
        return policy.timers(grant, charge.answered_at, self.terms)

    async def heartbeat(self, call_ids: Iterable[str], now: float) -> int:
        """Record that these answered calls are still up at `now` (what recovery bills up to)."""
        ids = list(call_ids)
        if not ids:
            return 0
        async with self.db.transaction() as tx:
            return await store.touch(tx, ids, now)

    async def settle(self, call_id: str, answered_at: float | None, ended_at: float, now: float | None = None, *,
                     also: Also | None = None, by: str = "call") -> Settlement | None:
        """Charge the call once, in one transaction with `also(tx)` (e.g. writing the call
        record: `lambda tx: call_log.record(rec, tx)`; it may return a coroutine). A second
        settle changes nothing and returns `duplicate=True`; a call that was never authorised
        returns None (and `also` still runs)."""
        now = time.time() if now is None else now
        async with self.db.transaction() as tx:
            charge = await store.get_charge(tx, call_id)
            if charge is not None:
                await store.lock_user(tx, charge.username)
                charge = await store.get_charge(tx, call_id)  # as it is now that we hold the money
            if charge is None:
                await _also(also, tx)
                return None
            if not charge.open:
                return Settlement(call_id, charge.username, charge.billed_s or 0, charge.cost or 0,
                                  charge.balance_after or 0, charge.rate.currency.code, True, charge.settled_by or by)
            result = await self._settle_in(tx, charge, answered_at if answered_at is not None else charge.answered_at,
                                           ended_at, now, by)
            await _also(also, tx)
        self._log_settlement(result)
        return result

    async def recover(self, now: float, live: Iterable[str] = (),
                      also: Callable[[Executor, store.Charge, float], Any] | None = None) -> list[Settlement]:
        """Settle every open call not in `live` (at start-up: all of them) for the time it was
        last seen up (answered calls) or for nothing (never answered). `also(charge, ended_at)`
        runs for each in the same transaction, given it (e.g. writing the call's record)."""
        keep = set(live)
        out: list[Settlement] = []
        async with self.db.transaction() as tx:
            for charge in await store.open_charges(tx):
                if charge.call_id in keep:
                    continue
                await store.lock_user(tx, charge.username)
                if charge.answered_at is not None:
                    ended = max(charge.answered_at, charge.last_seen or charge.answered_at)
                else:
                    ended = charge.authorised_at
                out.append(await self._settle_in(tx, charge, charge.answered_at, ended, now, "recovery"))
                if also is not None:
                    done = also(tx, charge, ended)
                    if inspect.isawaitable(done):
                        await done
        for s in out:
            self._log_settlement(s)
        return out

    async def _settle_in(self, tx: Executor, charge: store.Charge, answered_at: float | None, ended_at: float,
                         now: float, by: str) -> Settlement:
        amounts = policy.settle_amounts(charge.rate, charge.allowed_s, answered_at, ended_at)
        if amounts.cost > charge.hold:  # pragma: no cover - billed_s is capped at allowed_s, cost(allowed_s) == hold
            raise AssertionError(f"call {charge.call_id} costs {amounts.cost}, more than its hold {charge.hold}")
        bal, _ = await store.balance(tx, charge.username)
        after = bal
        if amounts.cost > 0:
            note = f"{charge.description or charge.destination}, {amounts.billed_s} s"
            after = await store.post(tx, charge.username, "call", -amounts.cost, charge.rate.currency, now, note,
                                     call_id=charge.call_id)
        await store.close_charge(tx, charge.call_id, answered_at, ended_at, amounts.billed_s, amounts.cost, after, now,
                                 by)
        return Settlement(charge.call_id, charge.username, amounts.billed_s, amounts.cost, after,
                          charge.rate.currency.code, False, by)

    def _log_settlement(self, s: Settlement) -> None:
        self.counters["settled_" + s.by] += 1
        cur = self.currency
        log.info("[call %s] settled (%s): %s billed %d s, %s, balance %s", s.call_id, s.by, s.username, s.billed_s,
                 format_amount(s.cost, cur), format_amount(s.balance_after, cur))
