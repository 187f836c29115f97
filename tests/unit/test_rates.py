"""jego_call.billing.rates: longest prefix wins, classification selectors, increments, rounding,
and config errors that name the key. Also the shipped config/rates.toml."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jego_call.billing.money import currency
from jego_call.billing.rates import PRICE_SCALE, Increment, Rate, build_rate_table, parse_increment
from jego_call.errors import ConfigError
from jego_call.numbering import classify

ROOT = Path(__file__).resolve().parents[2]
CNY = currency("CNY")


def table(*rates: dict[str, Any], **top: Any) -> Any:
    return build_rate_table({"currency": "CNY", **top, "rate": list(rates)})


def test_longest_prefix_wins_then_operator_then_kind() -> None:
    t = table({"prefix": "+86", "per_minute": "0.30", "name": "China"},
              {"prefix": "+86", "kind": "mobile", "per_minute": "0.20"},
              {"prefix": "+86", "kind": "mobile", "operator": "China Mobile", "per_minute": "0.15"},
              {"prefix": "+861", "per_minute": "0.25"},
              {"prefix": "+8610", "kind": "fixed", "per_minute": "0.08"},
              {"prefix": "+86138", "per_minute": "0.12"})
    def per_min(n: str) -> int | None:
        r = t.lookup(classify(n))
        return r.per_minute if r else None
    assert per_min("+8613800138000") == 120000          # +86138 is longer than any +86 / +861 rate
    assert per_min("+8613912345678") == 250000          # +861 beats the +86 operator rate: prefix first
    assert per_min("+861065529988") == 80000            # Beijing landline: +8610 fixed
    assert per_min("+862161234567") == 300000           # Shanghai: only the +86 catch-all matches
    t2 = table({"prefix": "+86", "per_minute": "0.30"},
               {"prefix": "+86", "kind": "mobile", "per_minute": "0.20"},
               {"prefix": "+86", "kind": "mobile", "operator": "China Mobile", "per_minute": "0.15"})
    assert t2.lookup(classify("+8613912345678")).per_minute == 150000   # operator beats kind on +86
    assert t2.lookup(classify("+8613012345678")).per_minute == 200000   # Unicom: kind
    assert t2.lookup(classify("+861065529988")).per_minute == 300000    # landline: neither
    assert table({"prefix": "+8610", "per_minute": "1"}).lookup(classify("+8613800138000")) is None


@pytest.mark.parametrize(("inc", "duration_ms", "billed"), [
    ("60/60", 0, 0), ("60/60", 1, 60), ("60/60", 60_000, 60), ("60/60", 60_001, 120), ("60/60", 119_999, 120),
    ("6/6", 1, 6), ("6/6", 6_000, 6), ("6/6", 6_001, 12), ("30/6", 29_000, 30), ("30/6", 30_500, 36),
    ("30/6", 36_000, 36), ("30/6", 36_001, 42), ("1/1", 1_499, 2), ("1/1", 1_000, 1),
])
def test_rounding_to_the_increment(inc: str, duration_ms: int, billed: int) -> None:
    assert parse_increment(inc).billed_s(duration_ms) == billed


def test_cost_is_rounded_up_once_per_call() -> None:
    r = Rate("+86", per_minute=15_000, increment=Increment(6, 6), currency=CNY)  # 0.015 CNY/min
    assert r.cost(0) == 0 and r.cost(6) == 1 and r.cost(60) == 2 and r.cost(600) == 15
    fee = Rate("+86", per_minute=150_000, increment=Increment(60, 60), currency=CNY, connection_fee=20)
    assert fee.cost(0) == 0 and fee.cost(60) == 35 and fee.cost_of(61_000) == (120, 50)
    assert r.per_minute_text() == "0.015 CNY" and fee.per_minute_text() == "0.15 CNY"


rates = st.builds(Rate, prefix=st.just("+86"), per_minute=st.integers(0, 100 * PRICE_SCALE * 100),
                  increment=st.builds(Increment, st.integers(1, 120), st.integers(1, 120)), currency=st.just(CNY),
                  connection_fee=st.integers(0, 500))


@given(rates, st.integers(0, 10**6))
def test_affordable_is_the_longest_duration_the_money_covers(rate: Rate, available: int) -> None:
    a = rate.affordable_s(available)
    first, nxt = rate.increment.first_s, rate.increment.next_s
    if a is None:
        assert rate.per_minute == 0 and rate.cost(first) <= available
        return
    assert type(a) is int
    if a == 0:
        assert rate.cost(first) > available
        return
    assert (a - first) % nxt == 0 and a >= first
    assert rate.cost(a) <= available < rate.cost(a + nxt)
    assert type(rate.cost(a)) is int


@given(rates, st.integers(0, 10**8), st.integers(0, 10**8))
def test_cost_is_monotonic_and_integer(rate: Rate, d1: int, d2: int) -> None:
    (b1, c1), (b2, c2) = rate.cost_of(d1), rate.cost_of(d2)
    assert type(c1) is int and type(b1) is int
    if d1 <= d2:
        assert b1 <= b2 and c1 <= c2
    assert b1 * 1000 >= d1 and (d1 == 0) == (b1 == 0)


@pytest.mark.parametrize(("data", "key", "words"), [
    ({"rate": []}, "rates.currency", "required"),
    ({"currency": "XYZ"}, "rates.currency", "unknown currency"),
    ({"currency": "CNY", "colour": 1}, "rates.colour", "unknown key"),
    ({"currency": "CNY", "increment": "60"}, "rates.increment", "FIRST/NEXT"),
    ({"currency": "CNY", "rate": [{"prefix": "86", "per_minute": "1"}]}, "rates.rate[0].prefix", "E.164"),
    ({"currency": "CNY", "rate": [{"prefix": "+86", "per_minute": 0.15}]}, "rates.rate[0].per_minute", "string"),
    ({"currency": "CNY", "rate": [{"prefix": "+86"}]}, "rates.rate[0].per_minute", "required"),
    ({"currency": "CNY", "rate": [{"prefix": "+86", "per_minute": "-1"}]}, "rates.rate[0].per_minute", "negative"),
    ({"currency": "CNY", "rate": [{"prefix": "+86", "per_minute": "0.1234567"}]}, "rates.rate[0].per_minute",
     "decimal places"),
    ({"currency": "CNY", "rate": [{"prefix": "+86", "per_minute": "1", "kind": "cell"}]}, "rates.rate[0].kind",
     "must be one of"),
    ({"currency": "CNY", "rate": [{"prefix": "+86", "per_minute": "1", "operator": "China Mobil"}]},
     "rates.rate[0].operator", "must be one of"),
    ({"currency": "CNY", "rate": [{"prefix": "+86", "per_minute": "1", "increment": "0/60"}]},
     "rates.rate[0].increment", "1..3600"),
    ({"currency": "CNY", "rate": [{"prefix": "+86", "per_minute": "1", "connection_fee": "0.001"}]},
     "rates.rate[0].connection_fee", "decimal places"),
    ({"currency": "CNY", "rate": [{"prefix": "+86", "per_minute": "1"}, {"prefix": "+86", "per_minute": "2"}]},
     "rates.rate[1].prefix", "same prefix"),
    ({"currency": "CNY", "rate": [{"prefix": "+86", "per_minute": "1", "price": "2"}]}, "rates.rate[0].price",
     "unknown key"),
    ({"currency": "CNY", "rate": ["+86"]}, "rates.rate[0]", "table"),
])
def test_config_errors_name_the_key(data: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_rate_table(data)
    assert err.value.key == key and words in err.value.message


def test_shipped_rates() -> None:
    t = build_rate_table(tomllib.loads((ROOT / "config" / "rates.toml").read_text()))
    assert t.currency.code == "CNY"
    def q(n: str) -> tuple[str, str, str]:
        r = t.lookup(classify(n))
        assert r is not None, n
        return r.per_minute_text(), r.increment.text, r.describe(classify(n))
    assert q("+8613800138000") == ("0.15 CNY", "60/60", "China Mobile mobile")
    assert q("+8613012345678") == ("0.15 CNY", "60/60", "China Unicom mobile")
    assert q("+8619212345678") == ("0.18 CNY", "60/60", "China mobile")      # Broadnet: no operator rate
    assert q("+861065529988") == ("0.10 CNY", "30/6", "Beijing landline")
    assert q("+8657187654321") == ("0.12 CNY", "30/6", "China landline")
    assert q("+8613492123456")[0] == "9.90 CNY"                            # priced, but [fraud] bars it
    assert t.lookup(classify("+864001234567")) is None                      # shared cost: no rate
    assert t.lookup(classify("+4915112345678")) is None                     # abroad: no rate
    zh = t.lookup(classify("+861065529988"))
    assert zh is not None and zh.describe(classify("+861065529988"), "zh") == "北京固定电话"
    assert all(type(r.per_minute) is int and type(r.connection_fee) is int for r in t.rates)
