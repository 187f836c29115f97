"""jego_call.billing.policy: one call's authorisation, timers and settlement in virtual time."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jego_call.billing.fraud import Activity, FraudConfig
from jego_call.billing.money import currency
from jego_call.billing.policy import Account, Decision, Terms, decide, quote, settle_amounts, timers
from jego_call.billing.rates import Increment, Rate, RateTable, build_rate_table
from jego_call.billing.refusal import Refusal
from jego_call.call.reasons import EndReason
from jego_call.numbering import NumberInfo, classify

T0 = 1_800_000_000.0
CNY = currency("CNY")
RATES = build_rate_table({"currency": "CNY", "rate": [
    {"prefix": "+86", "kind": "mobile", "per_minute": "0.15", "name": "China mobile"},
    {"prefix": "+86", "kind": "fixed", "per_minute": "0.12", "increment": "30/6", "name": "China landline"},
    {"prefix": "+86", "kind": "satellite", "per_minute": "9.90", "connection_fee": "1.00"},
]})
CFG = FraudConfig()
TERMS = Terms(warning_s=60.0, max_call_s=7200)
MOBILE = classify("+8613800138000")
LANDLINE = classify("+861065529988")


def go(balance: int, info: NumberInfo = MOBILE, held: int = 0, activity: Activity | None = None,
       cfg: FraudConfig = CFG, terms: Terms = TERMS, suspended: Refusal | None = None) -> Decision:
    return decide(info, Account(balance, held, suspended), activity or Activity(), RATES, cfg, terms, T0)


def test_allowed_duration_is_balance_over_rate_and_warns_60_s_before() -> None:
    d = go(100)                                    # 1.00 CNY at 0.15/min, 60/60: 6 whole minutes
    assert d.refusal is None and d.grant is not None
    g = d.grant
    assert (g.allowed_s, g.hold, g.cut_reason, g.warn) == (360, 90, EndReason.CREDIT_EXHAUSTED, True)
    t = timers(g, T0 + 5, TERMS)
    assert t.cut_at == T0 + 365 and t.warn_at == T0 + 305 and t.cut_reason is EndReason.CREDIT_EXHAUSTED
    short = go(20).grant                           # 0.20 CNY: one minute; warn at the answer
    assert short is not None and short.allowed_s == 60
    assert timers(short, T0, TERMS).warn_at == T0
    land = go(100, LANDLINE).grant                 # 0.12/min, 30/6: 1.00 CNY buys 498 s (cost 0.996 -> 1.00)
    assert land is not None and land.allowed_s == 498 and land.hold == 100


def test_insufficient_credit_is_refused_with_words() -> None:
    for balance in (0, 14):
        d = go(balance)
        assert d.grant is None and d.refusal is not None
        assert d.refusal.reason is EndReason.INSUFFICIENT_CREDIT
        assert "costs at least 0.15 CNY (the first 60 s)" in d.refusal.en and "Top up" in d.refusal.en
        assert "余额不足" in d.refusal.zh and "0.15元" in d.refusal.zh  # amounts in Chinese words: 元
        assert not re.search(r"[A-Za-z]", d.refusal.zh), d.refusal.zh
    assert go(15).grant is not None
    held = go(100, held=90)                        # another call holds 0.90 CNY
    assert held.refusal is not None and "0.90 CNY of your balance is held by your other call" in held.refusal.en
    assert "另一通电话占用" in held.refusal.zh


def test_order_of_checks() -> None:
    stop = Refusal(EndReason.SUSPENDED, "suspended because x", "因为x", "distinct_destinations")
    assert go(10_000, suspended=stop).refusal is stop
    barred = go(10_000, classify("+8613492123456"))              # satellite: barred before priced
    assert barred.refusal is not None and barred.refusal.reason is EndReason.DESTINATION_BARRED
    open_sat = FraudConfig(allowed_kinds=("mobile", "fixed", "satellite"), denied_prefixes=())
    sat = go(10_000, classify("+8613492123456"), cfg=open_sat).grant
    assert sat is not None and sat.rate.connection_fee == 100
    norate = decide(MOBILE, Account(10_000), Activity(), RateTable(CNY, ()), CFG, TERMS, T0)
    assert norate.refusal is not None and norate.refusal.reason is EndReason.NO_RATE
    assert norate.refusal.en == "There is no rate for this destination, so it cannot be called"
    assert norate.refusal.zh == "此目的地没有资费，无法拨打"
    capped = go(0, activity=Activity(open_calls=2))             # caps before credit
    assert capped.refusal is not None and capped.refusal.rule == "concurrent"
    assert isinstance(quote(MOBILE, RATES, CFG), Rate)
    q = quote(classify("+864001234567"), RATES, CFG)
    assert isinstance(q, Refusal) and q.reason is EndReason.DESTINATION_BARRED


def test_velocity_critical_suspends_this_attempt() -> None:
    recent = tuple((T0 - 200 + i * 20, f"+8613800138{i:03d}") for i in range(4))
    d = decide(classify("+8613800138004"), Account(10_000), Activity(recent=recent), RATES, CFG, TERMS, T0)
    assert d.suspends and d.grant is None and d.refusal is not None
    assert d.refusal.reason is EndReason.SUSPENDED and d.refusal.rule == "sequential"
    w = decide(classify("+8613800138002"), Account(10_000), Activity(recent=recent[:2]), RATES, CFG, TERMS, T0)
    assert not w.suspends and w.grant is not None and [s.level for s in w.signals] == ["warning"]


def test_daily_minutes_and_max_duration_cut_the_call() -> None:
    d = go(100_000, activity=Activity(used_s_24h=240 * 60 - 300))     # 5 minutes left today
    assert d.grant is not None and (d.grant.allowed_s, d.grant.cut_reason, d.grant.warn) == (
        300, EndReason.LIMIT_REACHED, False)
    assert timers(d.grant, T0, TERMS).warn_at is None
    none_left = go(100_000, activity=Activity(used_s_24h=240 * 60 - 59))
    assert none_left.refusal is not None and none_left.refusal.rule == "minutes_per_day"
    rich = go(10**9, terms=Terms(max_call_s=3600), cfg=FraudConfig(max_minutes_per_day=10_000)).grant
    assert rich is not None and (rich.allowed_s, rich.cut_reason, rich.hold) == (3600, EndReason.MAX_DURATION, 900)


def test_settlement_rounds_up_and_never_exceeds_the_hold() -> None:
    rate = RATES.lookup(MOBILE)
    assert rate is not None
    assert settle_amounts(rate, 360, None, T0 + 100).cost == 0                  # never answered
    a = settle_amounts(rate, 360, T0, T0 + 61.2)
    assert (a.billed_s, a.cost, a.duration_ms, a.capped) == (120, 30, 61_200, False)
    late = settle_amounts(rate, 360, T0, T0 + 360.8)                          # the cut came 0.8 s late
    assert (late.billed_s, late.cost, late.capped) == (360, 90, True)


@given(balance=st.integers(0, 10**7), held=st.integers(0, 10**6), per_minute=st.integers(1, 10**7),
       first=st.integers(1, 120), nxt=st.integers(1, 120), fee=st.integers(0, 300),
       talk_ms=st.integers(0, 10**8), late_ms=st.integers(0, 1000))
def test_a_grant_never_spends_money_that_is_not_there(balance: int, held: int, per_minute: int, first: int,
                                                      nxt: int, fee: int, talk_ms: int, late_ms: int) -> None:
    table = RateTable(CNY, (Rate("+86", per_minute, Increment(first, nxt), CNY, fee),))
    d = decide(MOBILE, Account(balance, held), Activity(), table, FraudConfig(max_minutes_per_day=10**6),
               Terms(max_call_s=10**6), T0)
    available = balance - held
    if d.grant is None:
        assert d.refusal is not None and d.refusal.reason is EndReason.INSUFFICIENT_CREDIT
        assert table.rates[0].cost(first) > available
        return
    g = d.grant
    assert type(g.hold) is int and type(g.allowed_s) is int
    assert 0 < g.hold <= available and g.hold == g.rate.cost(g.allowed_s)
    ended = T0 + min(talk_ms, g.allowed_s * 1000 + late_ms) / 1000        # the cut ends it by allowed_s + 1 s
    a = settle_amounts(g.rate, g.allowed_s, T0, ended)
    assert type(a.cost) is int and 0 <= a.cost <= g.hold and a.billed_s <= g.allowed_s


@pytest.mark.parametrize("warning_s", [30.0, 60.0, 120.0])
def test_warning_moment_follows_terms(warning_s: float) -> None:
    g = go(1000).grant
    assert g is not None
    t = timers(g, T0, Terms(warning_s=warning_s))
    assert t.warn_at == T0 + g.allowed_s - warning_s
