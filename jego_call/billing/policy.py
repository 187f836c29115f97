"""[pure] One phone call's authorisation and settlement, in virtual time.

`decide(...)` takes the caller's account state (balance, money held by open calls, activity,
suspension) read in one transaction, the number's classification and `now`, and returns a
`Decision`: a `Grant` (the rate, the money to hold, the allowed duration and why the call
would be cut) or a `Refusal` with plain words, plus any velocity signals, and whether this
attempt suspends the user. `timers(grant, answered_at)` gives the moments to cut the call and
to send `credit_low`; `settle_amounts(...)` the billed seconds and cost at the end.
`service.Billing` is the shell that reads and writes the ledger around these.

Order of checks: suspended, destination (allow-list), rate, caps (concurrent, per hour),
velocity (a critical signal suspends and refuses this attempt), minutes per day, credit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..call.reasons import EndReason
from ..numbering import NumberInfo
from . import fraud
from .fraud import Activity, FraudConfig, Signal
from .money import format_amount, format_amount_zh
from .rates import Rate, RateTable
from .refusal import Refusal


@dataclass(frozen=True, slots=True)
class Terms:
    """Billing terms from [billing] in config/jego.toml."""

    warning_s: float = 60.0        # credit_low this long before the cut
    max_call_s: int = 7200         # the most one authorisation reserves (then: max_duration)


@dataclass(frozen=True, slots=True)
class Account:
    """The caller's money at `now`: `held` is what open calls have reserved."""

    balance: int = 0
    held: int = 0
    suspended: Refusal | None = None

    @property
    def available(self) -> int:
        return self.balance - self.held


@dataclass(frozen=True, slots=True)
class Grant:
    """A call may go ahead: hold `hold` minor units; it may last `allowed_s` after the answer,
    then it is ended with `cut_reason` (credit_exhausted, limit_reached or max_duration)."""

    rate: Rate
    hold: int
    allowed_s: int
    cut_reason: EndReason
    warn: bool                      # send credit_low before the cut (the cut is for credit)


@dataclass(frozen=True, slots=True)
class Decision:
    grant: Grant | None = None
    refusal: Refusal | None = None
    signals: tuple[Signal, ...] = ()
    suspends: bool = False          # this attempt suspends the user's phone calls (refusal says why)


@dataclass(frozen=True, slots=True)
class Timers:
    """Absolute moments (same clock as `answered_at`) to cut the call and to warn."""

    cut_at: float
    warn_at: float | None
    cut_reason: EndReason


def _no_rate() -> Refusal:
    return Refusal(EndReason.NO_RATE, "There is no rate for this destination, so it cannot be called",
                   "此目的地没有资费，无法拨打", "rate")


def _insufficient(rate: Rate, account: Account, info: NumberInfo) -> Refusal:
    cur = rate.currency
    cost, avail = rate.cost(rate.increment.first_s), max(0, account.available)
    need, have = format_amount(cost, cur), format_amount(avail, cur)
    held = ""
    held_zh = ""
    if account.held > 0:
        held = f" ({format_amount(account.held, cur)} of your balance is held by your other call)"
        held_zh = f"（其中{format_amount_zh(account.held, cur)}被您正在进行的另一通电话占用）"
    first = rate.increment.first_s
    return Refusal(EndReason.INSUFFICIENT_CREDIT,
                   f"Not enough credit: a call to {rate.describe(info)} costs at least {need} (the first {first} s) "
                   f"and you have {have} available{held}. Top up to call.",
                   f"余额不足：拨打{rate.describe(info, 'zh')}至少需要{format_amount_zh(cost, cur)}（前{first}秒），"
                   f"您的可用余额为{format_amount_zh(avail, cur)}{held_zh}。请充值后再拨打。", "credit")


def decide(info: NumberInfo, account: Account, activity: Activity, rates: RateTable, cfg: FraudConfig,
           terms: Terms, now: float) -> Decision:
    """Authorise a call to `info` (numbering.classify of the E.164 number) at `now`."""
    if account.suspended is not None:
        return Decision(refusal=account.suspended)
    barred = fraud.check_destination(cfg, info)
    if barred is not None:
        return Decision(refusal=barred)
    rate = rates.lookup(info)
    if rate is None:
        return Decision(refusal=_no_rate())
    capped = fraud.check_caps(cfg, activity, now)
    if capped is not None:
        return Decision(refusal=capped)
    signals = fraud.check_velocity(cfg, activity, info.e164, now)
    suspension = fraud.suspension_for(signals)
    if suspension is not None:
        return Decision(refusal=suspension, signals=signals, suspends=True)
    first = rate.increment.first_s
    daily = rate.increment.floor(fraud.daily_remaining_s(cfg, activity))
    if daily < first:
        return Decision(refusal=fraud.daily_refusal(cfg), signals=signals)
    money = rate.affordable_s(account.available)
    if money == 0:
        return Decision(refusal=_insufficient(rate, account, info), signals=signals)
    # The shortest limit decides when the call is cut, and why.
    limits = [(rate.increment.floor(terms.max_call_s) or first, 2, EndReason.MAX_DURATION),
              (daily, 1, EndReason.LIMIT_REACHED)]
    if money is not None:
        limits.append((money, 0, EndReason.CREDIT_EXHAUSTED))
    allowed, _, why = min(limits, key=lambda x: (x[0], x[1]))
    return Decision(grant=Grant(rate, rate.cost(allowed), allowed, why, why is EndReason.CREDIT_EXHAUSTED),
                    signals=signals)


def timers(grant: Grant, answered_at: float, terms: Terms) -> Timers:
    """When to cut an answered call and when to send credit_low (None: no warning)."""
    cut = answered_at + grant.allowed_s
    warn = max(answered_at, cut - terms.warning_s) if grant.warn else None
    return Timers(cut, warn, grant.cut_reason)


@dataclass(frozen=True, slots=True)
class Amounts:
    """What a call costs at the end."""

    billed_s: int
    cost: int
    duration_ms: int = 0
    capped: bool = field(default=False)   # billed at allowed_s: the cut came a little late


def settle_amounts(rate: Rate, allowed_s: int, answered_at: float | None, ended_at: float) -> Amounts:
    """Billed seconds (rounded up to the increment, never above `allowed_s`: a cut that comes a
    moment late is on us) and cost, in minor units, of a call that ended at `ended_at`."""
    if answered_at is None:
        return Amounts(0, 0)
    duration_ms = max(0, round((ended_at - answered_at) * 1000))
    billed = rate.increment.billed_s(duration_ms)
    capped = billed > allowed_s
    billed = min(billed, allowed_s)
    return Amounts(billed, rate.cost(billed), duration_ms, capped)


def quote(info: NumberInfo, rates: RateTable, cfg: FraudConfig) -> Rate | Refusal:
    """The rate for `info`, or why it cannot be called at all (barred, no rate): what the app
    shows while a number is being typed. Credit and caps are checked only by `decide`."""
    barred = fraud.check_destination(cfg, info)
    if barred is not None:
        return barred
    rate = rates.lookup(info)
    return rate if rate is not None else _no_rate()
