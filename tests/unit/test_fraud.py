"""jego_call.billing.fraud: destination allow-list, caps and velocity, each with its words."""

from __future__ import annotations

import re

import pytest

from jego_call.billing.fraud import (
    Activity,
    FraudConfig,
    check_caps,
    check_destination,
    check_velocity,
    daily_refusal,
    daily_remaining_s,
    suspension_for,
)
from jego_call.call.reasons import EndReason
from jego_call.config import load_config
from jego_call.errors import ConfigError
from jego_call.numbering import classify

CFG = FraudConfig()
CJK = re.compile(r"[\u4e00-\u9fff]")
T0 = 1_800_000_000.0


def test_shipped_defaults_are_the_dataclass_defaults() -> None:
    assert load_config(None, environ={}).fraud == CFG


def test_fraud_kinds_cover_the_numbering_plan() -> None:
    from jego_call.billing.fraud import _PN_KIND, FRAUD_KINDS
    from jego_call.numbering import KINDS
    assert KINDS <= FRAUD_KINDS and set(_PN_KIND.values()) <= FRAUD_KINDS


@pytest.mark.parametrize(("number", "rule", "en", "zh"), [
    ("+864001234567", "prefix +86400", "Shared-cost", "400"),               # shared cost +86 400
    ("+8695588", "kind shared_cost", "Shared-cost", "95xxx"),         # 95xxx service numbers
    ("+8613492123456", "prefix +861349", "Satellite", "卫星"),               # satellite 1349x
    ("+8617400123456", "prefix +86174", "Satellite", "卫星"),
    ("+8617410123456", "prefix +86174", "Satellite", "卫星"),
    ("+8616191234567", "prefix +861619", "Satellite", "卫星"),
    ("+8616012345678", "kind unallocated", "not in use", "未分配"),         # unallocated mobile range
    ("+8610000000001", "kind unallocated", "not in use", "未分配"),
    ("+868001234567", "kind toll_free", "Toll-free", "免费"),
    ("+8616812345", "kind premium", "Premium-rate", "声讯"),                 # 168 voice information
    ("+8616012345", "kind premium", "Premium-rate", "声讯"),
    ("+4915112345678", "country", "DE (+49)", "DE"),                       # outside China
    ("+449098790000", "country", "GB (+44)", "GB"),
])
def test_barred_destinations_say_why(number: str, rule: str, en: str, zh: str) -> None:
    r = check_destination(CFG, classify(number))
    assert r is not None, number
    assert r.reason is EndReason.DESTINATION_BARRED and r.rule == rule
    assert en in r.words("en") and zh in r.words("zh") and CJK.search(r.zh) and not CJK.search(r.en)


def test_allowed_destinations_and_premium_abroad() -> None:
    for n in ("+8613800138000", "+861065529988", "+8657187654321", "+8613400123456", "+8617001234567"):
        assert check_destination(CFG, classify(n)) is None, n
    world = FraudConfig(allowed_countries=("CN", "GB", "US"), allowed_kinds=("mobile", "fixed"))
    r = check_destination(world, classify("+449098790000"))  # a UK premium-rate number: phonenumbers says so
    assert r is not None and r.rule == "kind premium" and "Premium-rate" in r.en
    r = check_destination(world, classify("+19005550100"))
    assert r is not None and r.rule == "kind premium"
    assert check_destination(world, classify("+447400123456")) is None   # a UK mobile
    sat = FraudConfig(allowed_kinds=("mobile", "fixed", "satellite"), denied_prefixes=())
    assert check_destination(sat, classify("+8613492123456")) is None    # an operator can open satellites


def test_concurrent_and_hourly_caps() -> None:
    assert check_caps(CFG, Activity(open_calls=1), T0) is None
    r = check_caps(CFG, Activity(open_calls=2), T0)
    assert r is not None and r.reason is EndReason.LIMIT_REACHED and r.rule == "concurrent"
    assert "2 phone calls in progress" in r.en and "同时通话上限" in r.zh
    recent = tuple((T0 - 3000 + i * 10, f"+86138001380{i:02d}") for i in range(20))
    r = check_caps(CFG, Activity(recent=recent), T0)
    assert r is not None and r.rule == "calls_per_hour"
    assert "20 phone calls in the last hour" in r.en and "try again in 10 min" in r.en and "10分钟后" in r.zh
    assert check_caps(CFG, Activity(recent=recent[1:]), T0) is None
    assert check_caps(CFG, Activity(recent=recent), T0 + 601) is None   # the oldest left the hour


def test_minutes_per_day() -> None:
    assert daily_remaining_s(CFG, Activity(used_s_24h=3600, reserved_s=600)) == 240 * 60 - 4200
    assert daily_remaining_s(CFG, Activity(used_s_24h=240 * 60 + 5)) == 0
    r = daily_refusal(CFG)
    assert r.reason is EndReason.LIMIT_REACHED and "240 minutes" in r.en and "240分钟" in r.zh


def test_distinct_destinations_warn_then_suspend() -> None:
    nums = ["+8613800138000", "+8613912345678", "+8613012345678", "+8618912345678", "+861065529988",
            "+862161234567", "+8657187654321", "+8613512345678", "+8615012345678", "+8618612345678"]
    recent = tuple((T0 + i * 30, n) for i, n in enumerate(nums))
    now = T0 + 300
    assert check_velocity(CFG, Activity(recent=recent[:4]), nums[4], now) == ()          # 5 distinct
    (w,) = check_velocity(CFG, Activity(recent=recent[:5]), nums[5], now)              # 6: warning
    assert (w.rule, w.level, w.count, w.threshold) == ("distinct_destinations", "warning", 6, 6)
    assert suspension_for((w,)) is None
    (c,) = check_velocity(CFG, Activity(recent=recent[:9]), nums[9], now)              # 10: critical
    assert (c.level, c.count) == ("critical", 10)
    s = suspension_for((c,))
    assert s is not None and s.reason is EndReason.SUSPENDED and s.rule == "distinct_destinations"
    assert "10 different numbers within 10 minutes" in s.en and "Contact support" in s.en
    assert "10个不同的号码" in s.zh and "暂停" in s.zh
    # the same ten calls spread over more than 10 minutes are fine; calling one number again is one
    spread = tuple((T0 + i * 120, n) for i, n in enumerate(nums[:9]))
    assert all(sig.level != "critical" for sig in check_velocity(CFG, Activity(recent=spread), nums[9], T0 + 1080))
    again = tuple((T0 + i, nums[0]) for i in range(15))
    assert check_velocity(CFG, Activity(recent=again), nums[0], T0 + 20) == ()


def test_sequential_calls_into_one_block() -> None:
    scan = [f"+8613800138{i:03d}" for i in (100, 101, 102, 103, 104)]
    recent = tuple((T0 + i * 20, n) for i, n in enumerate(scan))
    (w,) = check_velocity(CFG, Activity(recent=recent[:2]), scan[2], T0 + 60)
    assert (w.rule, w.level, w.count) == ("sequential", "warning", 3)
    (c,) = check_velocity(CFG, Activity(recent=recent[:4]), scan[4], T0 + 100)
    assert (c.rule, c.level) == ("sequential", "critical")
    assert "5 numbers in a row in the range +8613800138xxx" in c.en and "+8613800138xxx号段" in c.zh
    # a call elsewhere breaks the run
    broken = recent[:2] + ((T0 + 45, "+861065529988"),) + recent[2:4]
    assert all(s.rule != "sequential" or s.level == "warning"
               for s in check_velocity(CFG, Activity(recent=broken), scan[4], T0 + 100))


@pytest.mark.parametrize(("values", "key"), [
    ({"allowed_countries": ["XX"]}, "fraud.allowed_countries[0]"),
    ({"allowed_kinds": ["mobile", "cell"]}, "fraud.allowed_kinds[1]"),
    ({"denied_prefixes": ["86400"]}, "fraud.denied_prefixes[0]"),
    ({"max_calls_per_hour": 0}, "fraud.max_calls_per_hour"),
    ({"sequential_warning": 6}, "fraud.sequential_warning"),
    ({"velocity_window_s": 0}, "fraud.velocity_window_s"),
    ({"max_minutes_per_day": "lots"}, "fraud.max_minutes_per_day"),
    ({"colour": 1}, "fraud.colour"),
])
def test_config_errors_name_the_key(values: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={}, overrides={"fraud": values})
    assert err.value.key == key


def test_environment_overrides() -> None:
    cfg = load_config(None, environ={"JEGO_FRAUD_MAX_CONCURRENT_CALLS": "1",
                                     "JEGO_FRAUD_ALLOWED_KINDS": '["mobile"]'})
    assert cfg.fraud.max_concurrent_calls == 1 and cfg.fraud.allowed_kinds == ("mobile",)
