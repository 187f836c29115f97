"""[pure] The rate table: prices per destination prefix on E.164 numbers, longest prefix wins.

Build it once with `build_rate_table(toml_dict)` (the shell reads config/rates.toml; see
`jego_call.billing.service.load_rate_table`), then `table.lookup(info)` with the
`numbering.classify` result of the number. A rate may also be narrowed to a number kind
("mobile", "fixed") and a mobile operator ("China Mobile"), so mobiles are priced by operator
and landlines by area (their area code is a prefix: +8610 is Beijing). Among the rates that
match, the longest prefix wins; on an equal prefix the one naming an operator beats the one
naming only a kind, which beats the one naming neither.

Money is integers (see `money`): a connection fee is in minor units; a price per minute is in
`PRICE_SCALE`-ths of a minor unit (CNY 0.015/min = 1.5 fen = 15000), so prices finer than a
fen stay exact. A call's cost is rounded up to a whole minor unit once, at the end.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from .. import schema
from ..errors import ConfigError
from ..numbering import KINDS, MOBILE_ALLOCATION, NumberInfo
from .money import Currency, MoneyError, currency, format_amount, parse_decimal_scaled

__all__ = ["PRICE_PLACES", "PRICE_SCALE", "Increment", "Rate", "RateTable", "build_rate_table",
           "parse_increment"]

PRICE_PLACES: Final = 4
PRICE_SCALE: Final = 10**PRICE_PLACES          # price units per minor unit
_PER_SECOND: Final = 60 * PRICE_SCALE          # price units per minute -> per second, per minor unit
MAX_INCREMENT_S: Final = 3600
OPERATORS: Final = frozenset(op.name for op in MOBILE_ALLOCATION.values())
_INCREMENT_RE: Final = re.compile(r"\s*(\d{1,4})\s*/\s*(\d{1,4})\s*")
_PREFIX_RE: Final = re.compile(r"\+\d{1,15}")


@dataclass(frozen=True, slots=True)
class Increment:
    """Billing increment "first/next": the first `first_s` seconds are billed whole, then each
    started `next_s` block (60/60 per minute, 6/6 per six seconds, 30/6 ...)."""

    first_s: int
    next_s: int

    @property
    def text(self) -> str:
        return f"{self.first_s}/{self.next_s}"

    def billed_s(self, duration_ms: int) -> int:
        """Seconds billed for an answered call that lasted `duration_ms` (0 for 0 ms)."""
        if duration_ms <= 0:
            return 0
        secs = -(-duration_ms // 1000)              # started seconds
        if secs <= self.first_s:
            return self.first_s
        return self.first_s + -(-(secs - self.first_s) // self.next_s) * self.next_s

    def floor(self, seconds: int) -> int:
        """The longest billable duration (first + k*next) not above `seconds`; 0 below `first_s`."""
        if seconds < self.first_s:
            return 0
        return self.first_s + (seconds - self.first_s) // self.next_s * self.next_s


def parse_increment(text: str, key: str = "increment") -> Increment:
    """ "60/60" -> Increment(60, 60); ConfigError naming `key` otherwise."""
    m = _INCREMENT_RE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise ConfigError(key, f"expected FIRST/NEXT seconds such as \"60/60\" or \"6/6\", got {text!r}")
    first, nxt = int(m.group(1)), int(m.group(2))
    if not (1 <= first <= MAX_INCREMENT_S and 1 <= nxt <= MAX_INCREMENT_S):
        raise ConfigError(key, f"increments are 1..{MAX_INCREMENT_S} seconds, got {text!r}")
    return Increment(first, nxt)


@dataclass(frozen=True, slots=True)
class Rate:
    """One price: `per_minute` in price units (PRICE_SCALE per minor unit), `connection_fee` in
    minor units, charged once for an answered call."""

    prefix: str
    per_minute: int
    increment: Increment
    currency: Currency
    connection_fee: int = 0
    name: str = ""
    name_zh: str = ""
    kind: str | None = None
    operator: str | None = None

    @property
    def specificity(self) -> tuple[int, int]:
        return len(self.prefix), (2 if self.operator else 1 if self.kind else 0)

    def matches(self, info: NumberInfo) -> bool:
        return (info.e164.startswith(self.prefix) and (self.kind is None or self.kind == info.kind)
                and (self.operator is None or self.operator == info.operator))

    def cost(self, billed_s: int) -> int:
        """Minor units for `billed_s` billed seconds (0 seconds: nothing, not even the fee)."""
        if billed_s <= 0:
            return 0
        return self.connection_fee + -(-billed_s * self.per_minute // _PER_SECOND)

    def cost_of(self, duration_ms: int) -> tuple[int, int]:
        """(billed seconds, cost) of an answered call that lasted `duration_ms`."""
        billed = self.increment.billed_s(duration_ms)
        return billed, self.cost(billed)

    def affordable_s(self, available: int) -> int | None:
        """The longest billable duration whose cost is at most `available` minor units: 0 if
        not even the first increment is covered, None if the rate is free (no limit)."""
        if available < self.cost(self.increment.first_s):
            return 0
        if self.per_minute == 0:
            return None
        # fee + ceil(b*p/S) <= A  <=>  b*p <= (A - fee)*S   (A - fee is an integer)
        return self.increment.floor((available - self.connection_fee) * _PER_SECOND // self.per_minute)

    def per_minute_text(self) -> str:
        """ "0.15 CNY" (or "0.0150 CNY" when finer than a minor unit)."""
        whole, frac = divmod(self.per_minute, PRICE_SCALE)
        if frac == 0:
            return format_amount(whole, self.currency)
        digits = f"{frac:0{PRICE_PLACES}d}".rstrip("0")
        places = self.currency.exponent + len(digits)
        scaled = self.per_minute * 10**len(digits) // PRICE_SCALE
        major, rest = divmod(scaled, 10**places)
        return f"{major}.{rest:0{places}d} {self.currency.code}"

    def describe(self, info: NumberInfo, lang: str = "en") -> str:
        """What the destination is, for people: the rate's name, else from the classification."""
        zh = lang.lower().startswith("zh")
        if zh and self.name_zh:
            return self.name_zh
        if self.name and not zh:
            return self.name
        return describe_number(info, lang)

    def to_json(self, info: NumberInfo | None = None, lang: str = "en") -> dict[str, Any]:
        out: dict[str, Any] = {
            "prefix": self.prefix, "currency": self.currency.code, "per_minute": self.per_minute,
            "per_minute_scale": PRICE_SCALE, "per_minute_text": self.per_minute_text(),
            "increment": self.increment.text, "connection_fee": self.connection_fee,
            "connection_fee_text": format_amount(self.connection_fee, self.currency),
        }
        if info is not None:
            out["destination"] = self.describe(info, lang)
        return out


def describe_number(info: NumberInfo, lang: str = "en") -> str:
    """ "China Mobile mobile", "Beijing landline" (or the Chinese words) from `classify`."""
    zh = lang.lower().startswith("zh")
    if info.kind in ("mobile", "satellite") and info.operator:
        if zh:
            return f"{info.operator_zh or info.operator}{'卫星电话' if info.kind == 'satellite' else '手机'}"
        return f"{info.operator} {'satellite' if info.kind == 'satellite' else 'mobile'}"
    if info.kind == "fixed":
        if zh:
            return f"{info.city_zh or info.city or ''}固定电话"
        return f"{(info.city or 'China').split(',')[0]} landline"
    return info.kind


@dataclass(frozen=True, slots=True)
class RateTable:
    """Every rate, in one currency. `lookup(info)` is the one way to price a number."""

    currency: Currency
    rates: tuple[Rate, ...]

    def lookup(self, info: NumberInfo) -> Rate | None:
        """The matching rate with the longest prefix (then the most specific), or None."""
        best: Rate | None = None
        for r in self.rates:
            if r.matches(info) and (best is None or r.specificity > best.specificity):
                best = r
        return best


@dataclass(frozen=True, slots=True)
class _RateToml:
    prefix: str = ""
    per_minute: str = ""
    name: str = ""
    name_zh: str = ""
    increment: str = ""
    connection_fee: str = ""
    kind: str = ""
    operator: str = ""


@dataclass(frozen=True, slots=True)
class _TableToml:
    currency: str = ""
    increment: str = "60/60"
    connection_fee: str = "0"
    rate: tuple[dict[str, Any], ...] = ()


_MONEY_KEYS: Final = ("per_minute", "connection_fee")


def _money_as_text(table: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    out = dict(table)
    for k in _MONEY_KEYS:
        v = out.get(k)
        if isinstance(v, float):
            raise ConfigError(f"{prefix}{k}", f'write money as a string, e.g. "{v}": TOML floats are binary fractions')
        if isinstance(v, int) and not isinstance(v, bool):
            out[k] = str(v)
    return out


def _money(text: str, places: int, key: str) -> int:
    try:
        value = parse_decimal_scaled(text, places, "price")
    except MoneyError as exc:
        raise ConfigError(key, exc.message) from None
    if value < 0:
        raise ConfigError(key, f"must not be negative, got {text!r}")
    return value


def build_rate_table(data: Mapping[str, Any], source: str = "rates") -> RateTable:
    """The RateTable of a parsed rates.toml; ConfigError naming the key ("rates.rate[2].prefix")."""
    p = f"{source}."
    top = schema.build(_TableToml, _money_as_text(data, p), p)
    if not top.currency:
        raise ConfigError(f"{p}currency", "required: the ISO code of the credit currency, e.g. \"CNY\"")
    try:
        cur = currency(top.currency)
    except MoneyError as exc:
        raise ConfigError(f"{p}currency", exc.message) from None
    default_inc = parse_increment(top.increment, f"{p}increment")
    default_fee = _money(top.connection_fee, cur.exponent, f"{p}connection_fee")
    rates: list[Rate] = []
    seen: dict[tuple[str, str, str], str] = {}
    for i, raw in enumerate(top.rate):
        rp = f"{p}rate[{i}]."
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}rate[{i}]", "expected a table ([[rate]])")
        t = schema.build(_RateToml, _money_as_text(raw, rp), rp)
        if not _PREFIX_RE.fullmatch(t.prefix):
            raise ConfigError(f"{rp}prefix", f"expected + and 1 to 15 digits (E.164), got {t.prefix!r}")
        if not t.per_minute:
            raise ConfigError(f"{rp}per_minute", 'required: the price of a minute, e.g. "0.15"')
        if t.kind and t.kind not in KINDS:
            raise ConfigError(f"{rp}kind", f"must be one of {', '.join(sorted(KINDS))}, got {t.kind!r}")
        if t.operator and t.operator not in OPERATORS:
            raise ConfigError(f"{rp}operator", f"must be one of {', '.join(sorted(OPERATORS))}, got {t.operator!r}")
        ident = (t.prefix, t.kind, t.operator)
        if ident in seen:
            raise ConfigError(f"{rp}prefix", f"the same prefix, kind and operator as {seen[ident]}")
        seen[ident] = f"{p}rate[{i}]"
        rates.append(Rate(
            prefix=t.prefix,
            per_minute=_money(t.per_minute, PRICE_PLACES + cur.exponent, f"{rp}per_minute"),
            increment=parse_increment(t.increment, f"{rp}increment") if t.increment else default_inc,
            currency=cur,
            connection_fee=_money(t.connection_fee, cur.exponent, f"{rp}connection_fee")
            if t.connection_fee else default_fee,
            name=t.name, name_zh=t.name_zh, kind=t.kind or None, operator=t.operator or None,
        ))
    return RateTable(cur, tuple(rates))
