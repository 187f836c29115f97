"""jego_call.billing.money: integer minor units, amounts as people write them (hypothesis)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jego_call.billing.money import (
    CURRENCIES,
    MoneyError,
    currency,
    format_amount,
    parse_amount,
    parse_decimal_scaled,
)

CNY = currency("CNY")
JPY = currency("JPY")
currencies = st.sampled_from(sorted(CURRENCIES.values(), key=lambda c: c.code))


@pytest.mark.parametrize(("text", "minor"), [
    ("5", 500), ("12.50", 1250), ("12.5", 1250), ("12,50", 1250), ("12,5", 1250), ("0.01", 1), (".50", None),
    ("0012.00", 1200), ("¥12.50", 1250), ("12.50 CNY", 1250), ("cny 3", 300), ("RMB 3", 300), ("3元", 300),
    ("１２．５０", 1250), (" 7 ", 700), ("0,05", 5),
])
def test_amounts_as_people_write_them(text: str, minor: int | None) -> None:
    if minor is None:
        with pytest.raises(MoneyError):
            parse_amount(text, CNY)
    else:
        got = parse_amount(text, CNY)
        assert got == minor and type(got) is int


@pytest.mark.parametrize(("text", "words"), [
    ("12,500", "ambiguous"), ("1,234.56", "thousands"), ("1.234,56", "thousands"), ("12.505", "more than 2 decimal"),
    ("1e3", "not a number"), ("nan", "not a number"), ("inf", "not a number"), ("", "empty"), ("-5", "positive"),
    ("0", "zero"), ("0.00", "zero"), ("12.50 EUR", "in EUR"), ("€5", "in EUR"), ("5 $", "in USD"), ("HK$5", "in HKD"), ("5 HK$", "in HKD"),
    ("1" * 20, "too large"), ("12..5", "thousands"), ("--5", "positive"), ("5-", "not a number"), ("12.5.0", "thousands"),
])
def test_refused_amounts_say_why(text: str, words: str) -> None:
    with pytest.raises(MoneyError) as err:
        parse_amount(text, CNY)
    assert words in err.value.message


def test_signed_corrections_and_zero_exponent() -> None:
    assert parse_amount("-2.50", CNY, signed=True) == -250
    assert parse_amount("+2", CNY, signed=True) == 200
    assert parse_amount("500", JPY) == 500 and format_amount(500, JPY) == "500 JPY"
    with pytest.raises(MoneyError, match="more than 0 decimal"):
        parse_amount("5.5", JPY)
    with pytest.raises(MoneyError, match="ambiguous"):
        parse_amount("1,000", JPY)
    with pytest.raises(MoneyError, match="unknown currency"):
        currency("XYZ")


def test_format_refuses_floats() -> None:
    assert format_amount(1250, CNY) == "12.50 CNY" and format_amount(-5, CNY) == "-0.05 CNY"
    assert format_amount(0, CNY, code=False) == "0.00"
    with pytest.raises(TypeError):
        format_amount(12.5, CNY)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        format_amount(True, CNY)


@given(st.integers(min_value=-(10**14), max_value=10**14), currencies)
def test_format_then_parse_is_the_identity(minor: int, cur: object) -> None:
    from jego_call.billing.money import Currency
    assert isinstance(cur, Currency)
    text = format_amount(minor, cur)
    if minor == 0:
        with pytest.raises(MoneyError):
            parse_amount(text, cur, signed=True)
        return
    got = parse_amount(text, cur, signed=True)
    assert got == minor and type(got) is int
    assert parse_amount(format_amount(minor, cur, code=False), cur, signed=True) == minor


@given(st.integers(min_value=0, max_value=10**12), st.integers(min_value=0, max_value=6),
       st.integers(min_value=0, max_value=6), st.sampled_from([".", ","]))
def test_decimal_parsing_is_exact(whole: int, decimals: int, places: int, sep: str) -> None:
    """Against an exact oracle (Fraction): no float ever rounds an amount."""
    frac_digits = str(whole * 7919 % 10**decimals).zfill(decimals) if decimals else ""
    text = f"{whole}{sep}{frac_digits}" if decimals else str(whole)
    exact = Fraction(text.replace(",", ".")) * 10**places
    ambiguous = sep == "," and decimals == 3 and whole != 0
    if decimals > places or ambiguous:
        with pytest.raises(MoneyError):
            parse_decimal_scaled(text, places)
        return
    got = parse_decimal_scaled(text, places)
    assert type(got) is int and got == exact
