"""jego_call.call.dialplan: what the dial pad says about a typed number before anyone dials it."""

from __future__ import annotations

import pytest

from jego_call.call.dialplan import check, format_as_typed
from jego_call.call.reasons import EndReason


@pytest.mark.parametrize(("typed", "formatted"), [
    ("1", "1"), ("138", "138"), ("1380013", "138 0013"), ("13800138000", "138 0013 8000"),
    ("+86", "+86"), ("+8613800138000", "+86 138 0013 8000"), ("01065529988", "010 6552 9988"),
    ("+86 10 6552 9988", "+86 10 6552 9988"), ("１３８００１３８０００", "138 0013 8000"),
])
def test_format_as_typed(typed: str, formatted: str) -> None:
    assert format_as_typed(typed) == formatted
    assert not format_as_typed(typed).endswith(" ")  # else a backspace would only delete the space


@pytest.mark.parametrize(("typed", "kind", "callable_", "reason", "complete"), [
    ("138 0013 8000", "mobile", True, None, True),
    ("+86 10 6552 9988", "fixed", True, None, True),
    ("110", "emergency", False, EndReason.EMERGENCY, True),
    ("+86 120", "emergency", False, EndReason.EMERGENCY, True),
    ("12345", "short", False, EndReason.SERVICE_NUMBER, True),
    ("400 123 4567", "shared_cost", False, EndReason.SERVICE_NUMBER, True),
    ("800 123 4567", "toll_free", False, EndReason.SERVICE_NUMBER, True),
    ("+49 30 12345678", "foreign", False, EndReason.REJECTED, True),
    ("138", "incomplete", False, EndReason.INVALID_NUMBER, False),   # still typing: no refusal shown
    ("+861000000000", "invalid", False, EndReason.INVALID_NUMBER, True),
    ("abc", "invalid", False, EndReason.INVALID_NUMBER, True),
    ("1#", "invalid", False, EndReason.INVALID_NUMBER, True),
    ("", "empty", False, EndReason.INVALID_NUMBER, False),
])
def test_check(typed: str, kind: str, callable_: bool, reason: EndReason | None, complete: bool) -> None:
    c = check(typed)
    assert (c.kind, c.callable, c.reason, c.complete) == (kind, callable_, reason, complete)
    wire = c.to_wire()
    assert wire["reason"] == (reason.value if reason else None) and wire["price"] is None
    if reason is not None:
        assert wire["words"] == {"en": reason.words("en", phone=True), "zh": reason.words("zh", phone=True)}


def test_check_details() -> None:
    c = check("13800138000")
    assert (c.e164, c.operator, c.operator_zh, c.international) == (
        "+8613800138000", "China Mobile", "中国移动", "+86 138 0013 8000")
    assert check("010 6552 9988").city_zh == "北京市"
    assert check("+49 30 12345678", allow_international=True).callable
    assert check("x" * 100).typed == "x" * 64
