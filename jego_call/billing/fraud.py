"""[pure] Toll-fraud controls: which destinations may be called, per-user caps, and velocity.

`FraudConfig` is the `[fraud]` section of config/jego.toml (config.py nests it). Call
`check_destination(cfg, info)` with the `numbering.classify` result, `check_caps(cfg,
activity, now)` and `check_velocity(cfg, activity, e164, now)` with the user's recent
phone calls; each returns what it decided and never touches a clock or a database
(`jego_call.billing.policy.decide` runs them in order; `service.Billing` feeds them).

Defaults are what we would ship to production for a family calling service: China only, mobile
and fixed lines only (premium, shared-cost +86 400 / 95xxx, toll-free, satellite +86 1349 /
174 / 1619, unallocated and special numbers are barred), at most 2 phone calls at once,
20 calls an hour, 240 minutes in 24 hours; 6 distinct numbers within 10 minutes warns, 10
suspends; 3 consecutive calls into one 1000-number block warns, 5 suspends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

import phonenumbers
from phonenumbers import PhoneNumberType

from ..call.reasons import EndReason
from ..numbering import NumberInfo
from .fraud_config import FRAUD_KINDS, FraudConfig
from .refusal import Refusal

__all__ = ["FRAUD_KINDS", "Activity", "FraudConfig", "Signal", "check_caps", "check_destination", "check_velocity",
           "daily_refusal", "daily_remaining_s", "destination_kind", "suspension_for"]

_PN_KIND: Final[dict[int, str]] = {
    PhoneNumberType.FIXED_LINE: "fixed", PhoneNumberType.MOBILE: "mobile",
    PhoneNumberType.FIXED_LINE_OR_MOBILE: "mobile", PhoneNumberType.TOLL_FREE: "toll_free",
    PhoneNumberType.PREMIUM_RATE: "premium", PhoneNumberType.SHARED_COST: "shared_cost",
    PhoneNumberType.VOIP: "voip", PhoneNumberType.PERSONAL_NUMBER: "personal",
    PhoneNumberType.PAGER: "pager", PhoneNumberType.UAN: "uan", PhoneNumberType.VOICEMAIL: "voicemail",
}


# --------------------------------------------------------------------------------------------
# destinations


def _premium_pattern(region: str) -> re.Pattern[str] | None:
    desc = phonenumbers.PhoneMetadata.metadata_for_region(region)
    pattern = desc.premium_rate.national_number_pattern if desc and desc.premium_rate else None
    return re.compile(pattern) if pattern else None


# phonenumbers' premium-rate ranges of China (16[08]xxxxx voice information services): our own
# table reads these 8-digit numbers as incomplete mobiles, so they are checked first.
_CN_PREMIUM: Final = _premium_pattern("CN")


def destination_kind(info: NumberInfo) -> str:
    """Our kind for `info`: "premium" wherever phonenumbers' metadata says premium rate, else
    numbering's classification for +86 (the MIIT table decides mobile, satellite and
    unallocated) and phonenumbers' number type abroad."""
    if info.e164.startswith("+86"):
        if _CN_PREMIUM is not None and _CN_PREMIUM.fullmatch(info.e164[3:]):
            return "premium"
        return info.kind
    if info.kind != "foreign":
        return info.kind
    try:
        num = phonenumbers.parse(info.e164, None)
    except phonenumbers.NumberParseException:  # pragma: no cover - classify parsed it already
        return info.kind
    return _PN_KIND.get(phonenumbers.number_type(num), "unknown")


_KIND_WORDS: Final[dict[str, tuple[str, str]]] = {
    "premium": ("Premium-rate numbers cannot be called from the app", "不能通过本应用拨打付费声讯号码"),
    "shared_cost": ("Shared-cost and service numbers (such as 400 and 95xxx numbers) cannot be called from the app",
                    "不能通过本应用拨打400、95xxx等共享付费及服务号码"),
    "toll_free": ("Toll-free numbers cannot be called from abroad", "免费电话无法从境外拨打"),
    "satellite": ("Satellite phones cannot be called from the app", "不能通过本应用拨打卫星电话"),
    "unallocated": ("This number is not in use: its range has not been allocated", "该号段尚未分配，号码不存在"),
    "emergency": ("Emergency numbers cannot be called from the app: use a local phone",
                  "无法通过本应用拨打紧急电话，请使用当地电话"),
    "short": ("Special service numbers cannot be called from the app", "不能通过本应用拨打特服号码"),
    "invalid": ("The number is not valid", "号码无效"),
    "incomplete": ("The number is incomplete", "号码不完整"),
}


def _region_name(region: str) -> tuple[str, str]:
    cc = phonenumbers.country_code_for_region(region) if region != "ZZ" else 0
    return (f"{region} (+{cc})", f"{region}（+{cc}）") if cc else ("that country", "该国家或地区")


def check_destination(cfg: FraudConfig, info: NumberInfo) -> Refusal | None:
    """None if `info` may be called; else a `destination_barred` Refusal saying why."""
    kind = destination_kind(info)
    if info.region not in cfg.allowed_countries and kind not in ("invalid", "incomplete"):
        en, zh = _region_name(info.region)
        return Refusal(EndReason.DESTINATION_BARRED, f"Calls to {en} are not allowed from the app",
                       f"不允许通过本应用拨打{zh}的电话", "country")
    for prefix in cfg.denied_prefixes:
        if info.e164.startswith(prefix):
            en, zh = _KIND_WORDS.get(kind, ("Calls to this range of numbers are not allowed", "不允许拨打此号段"))
            if kind in ("mobile", "fixed"):
                en, zh = "Calls to this range of numbers are not allowed", "不允许拨打此号段"
            return Refusal(EndReason.DESTINATION_BARRED, en, zh, f"prefix {prefix}")
    if kind not in cfg.allowed_kinds:
        en, zh = _KIND_WORDS.get(kind, ("Calls to this kind of number are not allowed", "不允许拨打此类号码"))
        return Refusal(EndReason.DESTINATION_BARRED, en, zh, f"kind {kind}")
    return None


# --------------------------------------------------------------------------------------------
# caps and velocity


@dataclass(frozen=True, slots=True)
class Activity:
    """A user's phone calls as the ledger knows them at `now` (service.Billing reads it in the
    authorising transaction). `recent` is (authorised_at, e164) of calls authorised within the
    last hour, oldest first."""

    open_calls: int = 0
    recent: tuple[tuple[float, str], ...] = ()
    used_s_24h: int = 0        # billed seconds of calls settled within the last 24 hours
    reserved_s: int = 0        # allowed seconds of calls still open (they may still use them)
    velocity_from: float = float("-inf")  # an operator lifted a suspension then: velocity starts afresh


@dataclass(frozen=True, slots=True)
class Signal:
    """A velocity rule passed its warning or critical threshold."""

    rule: str           # "distinct_destinations" | "sequential"
    level: str          # "warning" | "critical"
    count: int
    threshold: int
    en: str
    zh: str


def check_caps(cfg: FraudConfig, activity: Activity, now: float) -> Refusal | None:
    """Concurrent calls and calls per hour: a `limit_reached` Refusal, or None."""
    if activity.open_calls >= cfg.max_concurrent_calls:
        n = cfg.max_concurrent_calls
        return Refusal(EndReason.LIMIT_REACHED,
                       f"You already have {activity.open_calls} phone call{'s' * (activity.open_calls != 1)} in "
                       f"progress, the most allowed at once ({n}): hang up one first",
                       f"您已有{activity.open_calls}个电话正在进行，已达同时通话上限（{n}个），请先挂断一个", "concurrent")
    hour = [t for t, _ in activity.recent if t > now - 3600.0]
    if len(hour) >= cfg.max_calls_per_hour:
        wait_min = max(1, -(-int(hour[0] + 3600.0 - now) // 60))
        n = cfg.max_calls_per_hour
        return Refusal(EndReason.LIMIT_REACHED,
                       f"You have made {n} phone calls in the last hour, the most allowed: try again in {wait_min} min",
                       f"您在过去一小时内已拨打{n}个电话，已达上限，请{wait_min}分钟后再试", "calls_per_hour")
    return None


def daily_remaining_s(cfg: FraudConfig, activity: Activity) -> int:
    """Seconds of phone calls still allowed in the rolling 24 hours (open calls count in full)."""
    return max(0, cfg.max_minutes_per_day * 60 - activity.used_s_24h - activity.reserved_s)


def daily_refusal(cfg: FraudConfig) -> Refusal:
    n = cfg.max_minutes_per_day
    return Refusal(EndReason.LIMIT_REACHED,
                   f"You have used your {n} minutes of phone calls for the last 24 hours: try again later",
                   f"您在24小时内的{n}分钟通话时长已用完，请稍后再试", "minutes_per_day")


def _block(e164: str, digits: int) -> str:
    return e164[:-digits] if len(e164) > digits + 3 else e164


def check_velocity(cfg: FraudConfig, activity: Activity, e164: str, now: float) -> tuple[Signal, ...]:
    """Velocity signals for a new call to `e164` (counted with it): distinct destinations
    within `velocity_window_s`, and the run of consecutive distinct numbers in one block
    (numbers equal but for their last `sequential_digits` digits). A critical signal suspends."""
    start = max(now - cfg.velocity_window_s, activity.velocity_from)
    window = [(t, n) for t, n in activity.recent if t > start] + [(now, e164)]
    out: list[Signal] = []
    distinct = len({n for _, n in window})
    level = _level(distinct, cfg.distinct_destinations_warning, cfg.distinct_destinations_critical)
    if level:
        thr = cfg.distinct_destinations_critical if level == "critical" else cfg.distinct_destinations_warning
        mins = round(cfg.velocity_window_s / 60)
        out.append(Signal("distinct_destinations", level, distinct, thr,
                          f"you called {distinct} different numbers within {mins} minutes",
                          f"您在{mins}分钟内拨打了{distinct}个不同的号码"))
    block = _block(e164, cfg.sequential_digits)
    run: set[str] = set()
    for _, n in reversed(window):
        if _block(n, cfg.sequential_digits) != block:
            break
        run.add(n)
    level = _level(len(run), cfg.sequential_warning, cfg.sequential_critical)
    if level:
        thr = cfg.sequential_critical if level == "critical" else cfg.sequential_warning
        shown = block + "x" * cfg.sequential_digits
        out.append(Signal("sequential", level, len(run), thr,
                          f"you called {len(run)} numbers in a row in the range {shown}",
                          f"您连续拨打了{shown}号段内的{len(run)}个号码"))
    return tuple(out)


def _level(count: int, warning: int, critical: int) -> str:
    if count >= critical:
        return "critical"
    if count >= warning:
        return "warning"
    return ""


def suspension_for(signals: tuple[Signal, ...]) -> Refusal | None:
    """The `suspended` Refusal that a critical signal brings (None without one)."""
    crit = [s for s in signals if s.level == "critical"]
    if not crit:
        return None
    en = "; ".join(s.en for s in crit)
    zh = "；".join(s.zh for s in crit)
    return Refusal(EndReason.SUSPENDED,
                   f"Phone calls from your account are suspended because {en}, which looks like toll fraud. "
                   "Contact support to have them restored.",
                   f"由于{zh}，疑似盗打电话，您账户的电话呼叫功能已被暂停。请联系客服恢复。",
                   ",".join(s.rule for s in crit))
