"""[pure] Money as integers: an amount is a count of the currency's minor unit (fen, cent).

Call `currency(code)` for a `Currency`, `parse_amount(text, cur)` for what a person typed
("5", "12.50", "12,50", "¥12.50", "12.50 CNY") and `format_amount(minor, cur)` to show one.
No float is ever involved: parsing works on the digits, arithmetic on ints.

Decisions, explicitly:
- The decimal point is ".". A decimal comma ("12,50") is accepted when exactly one comma is
  followed by 1 to `exponent` digits, since many of our users write amounts that way; a comma
  followed by 3 digits ("12,500") is refused as ambiguous (thousands or decimals?), and so is
  any amount with both "," and "." or more than one separator. No thousands separators.
- More decimals than the currency has ("12.505 CNY") is an error, never rounded.
- An ISO code or the currency's symbol may come before or after the number; another
  currency's code is an error ("amount is in EUR, credit is kept in CNY").
- Full-width digits and punctuation (１２．５０) are read as their ASCII forms.
- `parse_amount(..., signed=True)` accepts a leading "-" or "+" (corrections); otherwise the
  amount must be positive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = ["CURRENCIES", "ZH_UNITS", "Currency", "MoneyError", "currency", "format_amount", "format_amount_zh",
           "parse_amount", "parse_decimal_scaled"]


class MoneyError(ValueError):
    """An amount that cannot be read. `message` is for people."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class Currency:
    """An ISO 4217 currency: `exponent` decimal digits in its minor unit (CNY 2: 1 yuan = 100 fen)."""

    code: str
    exponent: int
    symbols: tuple[str, ...] = ()

    @property
    def scale(self) -> int:
        """Minor units per major unit (100 for CNY)."""
        return int(10**self.exponent)


# ISO 4217 exponents of the currencies we expect an operator to sell credit in.
CURRENCIES: Final[dict[str, Currency]] = {c.code: c for c in (
    Currency("CNY", 2, ("¥", "￥", "元", "RMB")),
    Currency("EUR", 2, ("€",)),
    Currency("USD", 2, ("$", "US$")),
    Currency("GBP", 2, ("£",)),
    Currency("HKD", 2, ("HK$",)),
    Currency("AUD", 2, ("A$",)),
    Currency("CAD", 2, ("C$",)),
    Currency("CHF", 2, ()),
    Currency("SGD", 2, ("S$",)),
    Currency("JPY", 0, ("円",)),
    Currency("KRW", 0, ("₩",)),
)}


def currency(code: str) -> Currency:
    """The Currency for an ISO code (case-insensitive); MoneyError naming the known ones otherwise."""
    cur = CURRENCIES.get(code.strip().upper()) if isinstance(code, str) else None
    if cur is None:
        raise MoneyError(f"unknown currency {code!r}: use one of {', '.join(sorted(CURRENCIES))}")
    return cur


# (symbol, code), longest symbols first so "HK$" is not read as "$".
_OTHER_SYMBOLS: Final = sorted(((s.upper(), c.code) for c in CURRENCIES.values() for s in c.symbols),
                               key=lambda x: -len(x[0]))
_FULLWIDTH: Final = str.maketrans("０１２３４５６７８９．，＋－", "0123456789.,+-")
_NUMBER_RE: Final = re.compile(r"[+-]?\d+(?:[.,]\d+)?")
_MAX_DIGITS: Final = 15  # 10^15 minor units is far beyond any credit balance


def parse_decimal_scaled(text: str, places: int, what: str = "amount") -> int:
    """The decimal string `text` ("12.5", "-0.015") times 10**places, exactly, as an int.

    Raises MoneyError when it has more than `places` decimals or is not a plain decimal
    (no exponent, no separators other than one "." or one decimal ","; see the module doc).
    """
    s = text.strip().translate(_FULLWIDTH)
    if not s:
        raise MoneyError(f"{what} is empty")
    if not _NUMBER_RE.fullmatch(s):
        if "," in s and "." in s or s.count(",") + s.count(".") > 1:
            raise MoneyError(f"{what} {text!r}: write it without thousands separators, e.g. 1234.50")
        raise MoneyError(f"{what} {text!r} is not a number like 5 or 12.50")
    sign = -1 if s[0] == "-" else 1
    s = s.lstrip("+-")
    if "," in s:
        whole, frac = s.split(",")
        if len(frac) == 3 and whole.lstrip("0"):
            raise MoneyError(f"{what} {text!r} is ambiguous: write decimals with a dot, e.g. 12.50, "
                             "and no thousands separators")
    elif "." in s:
        whole, frac = s.split(".")
    else:
        whole, frac = s, ""
    if len(frac) > places:
        raise MoneyError(f"{what} {text!r} has more than {places} decimal places")
    whole = whole.lstrip("0") or "0"
    if len(whole) > _MAX_DIGITS:
        raise MoneyError(f"{what} {text!r} is too large")
    scale: int = 10**places
    return sign * (int(whole) * scale + int(frac.ljust(places, "0") or "0"))


def _strip_currency(text: str, cur: Currency) -> str:
    s = text.strip()
    tokens = sorted({cur.code, *cur.symbols}, key=len, reverse=True)
    upper = s.upper()
    for tok in tokens:
        t = tok.upper()
        if upper.startswith(t):
            return s[len(tok):].strip()
        if upper.endswith(t):
            return s[: len(s) - len(tok)].strip()
    mine = {t.upper() for t in tokens}
    for sym, other in _OTHER_SYMBOLS:
        if sym not in mine and (upper.startswith(sym) or upper.endswith(sym)):
            raise MoneyError(f"amount is in {other}, but credit is kept in {cur.code}")
    m = re.fullmatch(r"([A-Za-z]{3})\s*(.*)|(.*?)\s*([A-Za-z]{3})", s)
    if m:
        code = (m.group(1) or m.group(4) or "").upper()
        if code in CURRENCIES:
            raise MoneyError(f"amount is in {code}, but credit is kept in {cur.code}")
    return s


def parse_amount(text: str, cur: Currency, *, signed: bool = False) -> int:
    """Minor units for an amount as a person writes it ("5", "12.50", "12,50", "¥5", "5 CNY").

    Raises MoneyError with a message for people. Zero and negative amounts are refused unless
    `signed` (then zero is still refused: it would change nothing)."""
    if not isinstance(text, str):
        raise MoneyError("amount must be text such as 12.50")
    body = _strip_currency(text, cur)
    if body.startswith(("-", "+", "－", "＋")) and not signed:
        raise MoneyError(f"amount {text!r} must be positive, e.g. 12.50")
    minor = parse_decimal_scaled(body, cur.exponent)
    if minor == 0:
        raise MoneyError("amount must not be zero")
    if minor < 0 and not signed:  # pragma: no cover - a sign is refused above
        raise MoneyError(f"amount {text!r} must be positive")
    return minor


def format_amount(minor: int, cur: Currency, *, code: bool = True) -> str:
    """"12.50 CNY" for 1250 (JPY: "500 JPY"); `code=False` leaves the code out."""
    if not isinstance(minor, int) or isinstance(minor, bool):
        raise TypeError(f"money is an int of minor units, got {type(minor).__name__}")
    sign = "-" if minor < 0 else ""
    whole, frac = divmod(abs(minor), cur.scale)
    text = f"{sign}{whole}" + (f".{frac:0{cur.exponent}d}" if cur.exponent else "")
    return f"{text} {cur.code}" if code else text


# How Chinese text names a currency after an amount (other currencies keep their ISO code).
ZH_UNITS: Final[dict[str, str]] = {"CNY": "元", "JPY": "日元", "HKD": "港元", "EUR": "欧元", "USD": "美元",
                                   "GBP": "英镑"}


def format_amount_zh(minor: int, cur: Currency) -> str:
    """ "12.50元" for 1250 fen: an amount inside Chinese words (format_amount elsewhere)."""
    unit = ZH_UNITS.get(cur.code)
    return f"{format_amount(minor, cur, code=False)}{unit}" if unit else format_amount(minor, cur)
