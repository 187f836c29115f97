"""jego_call.call.reasons: one vocabulary of end reasons, with SIP codes, Q.850 causes and words."""

from __future__ import annotations

import re

import pytest

from jego_call.call.reasons import (
    BILLING_REASONS,
    GATEWAY_DECLINE_REASONS,
    REASONS,
    USER_DECLINE_REASONS,
    EndReason,
    catalogue,
    from_sip,
)
from jego_call.call.state import END_REASONS

CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.mark.parametrize(("code", "cause", "reason"), [
    (486, 17, EndReason.BUSY), (480, 19, EndReason.NO_ANSWER), (408, 18, EndReason.TIMEOUT),
    (480, 20, EndReason.SWITCHED_OFF), (404, 1, EndReason.NOT_FOUND), (484, 28, EndReason.INVALID_NUMBER),
    (410, 22, EndReason.NUMBER_CHANGED), (403, 21, EndReason.REJECTED), (603, 21, EndReason.DECLINED),
    (503, 34, EndReason.CONGESTION), (503, 42, EndReason.CONGESTION), (502, 27, EndReason.UNREACHABLE),
    (488, 65, EndReason.FAILED), (487, None, EndReason.CANCELLED), (487, 127, EndReason.CANCELLED),
    (200, 16, EndReason.HANGUP), (0, None, EndReason.HANGUP), (None, 41, EndReason.FAILED),
    (0, 17, EndReason.BUSY), (486, None, EndReason.BUSY), (600, None, EndReason.BUSY),
    (404, None, EndReason.NOT_FOUND), (480, None, EndReason.NO_ANSWER), (699, None, EndReason.FAILED),
    (499, 18, EndReason.TIMEOUT),
])
def test_sip_to_reason(code: int | None, cause: int | None, reason: EndReason) -> None:
    assert from_sip(code, cause) is reason


def test_every_reason_has_words_in_both_languages() -> None:
    assert set(REASONS) == set(EndReason)
    for r in EndReason:
        en, zh = r.words("en"), r.words("zh-CN")
        assert en and zh and en != zh, r
        assert not CJK.search(en) and CJK.search(zh), r
        assert r.words("fr") == en


def test_refusal_codes_are_final_responses_and_map_back() -> None:
    """What we send for a reason is read back as a reason with the same verdict."""
    for r in EndReason:
        if r.sip_code and r.sip_code >= 300:
            assert 300 <= r.sip_code <= 699 and r.q850 is not None and 0 < r.q850 < 128
            assert from_sip(r.sip_code, r.q850).outcome == r.outcome, r


def test_decline_reasons() -> None:
    assert USER_DECLINE_REASONS == {EndReason.DECLINED, EndReason.BUSY}
    assert USER_DECLINE_REASONS <= GATEWAY_DECLINE_REASONS
    assert EndReason.HANGUP not in GATEWAY_DECLINE_REASONS and EndReason.NOT_FOUND in GATEWAY_DECLINE_REASONS
    assert set(END_REASONS.values()) <= set(EndReason)


def test_parse_and_catalogue() -> None:
    assert EndReason.parse("busy") is EndReason.BUSY
    assert EndReason.parse("nonsense") is EndReason.FAILED
    assert EndReason.parse(None, EndReason.HANGUP) is EndReason.HANGUP
    table = catalogue()
    assert set(table) == {r.value for r in EndReason}
    assert table["not_found"] == {"sip_code": 404, "q850_cause": 1, "outcome": "invalid_number",
                                  "en": "The number does not exist", "zh": "您拨打的号码不存在",
                                  "phone_en": "The number does not exist", "phone_zh": "您拨打的号码不存在",
                                  "callee_en": "The number does not exist", "callee_zh": "您拨打的号码不存在",
                                  "missed": False}
    assert table["busy"]["phone_en"] == "The number is busy" != table["busy"]["en"]
    assert EndReason.BUSY.words("zh", phone=True) == "您拨打的号码正忙"


def test_billing_reasons() -> None:
    """Refusals are decided before any SIP is sent; the cuts of a connected call are a BYE with
    Q.850 cause 16 (normal clearing), like max_duration's BYE."""
    E = EndReason
    assert BILLING_REASONS == {E.INSUFFICIENT_CREDIT, E.CREDIT_EXHAUSTED, E.NO_RATE, E.DESTINATION_BARRED,
                               E.SUSPENDED, E.LIMIT_REACHED}
    for r in (E.INSUFFICIENT_CREDIT, E.NO_RATE, E.DESTINATION_BARRED, E.SUSPENDED):
        assert (r.sip_code, r.q850, r.outcome) == (None, None, "failed"), r
    assert (E.CREDIT_EXHAUSTED.sip_code, E.CREDIT_EXHAUSTED.q850, E.CREDIT_EXHAUSTED.outcome) == (0, 16, "answered")
    assert (E.LIMIT_REACHED.sip_code, E.LIMIT_REACHED.q850) == (0, 16)
    assert not BILLING_REASONS & GATEWAY_DECLINE_REASONS        # only the server decides these
    assert E.NO_RATE.words() == "There is no rate for this destination, so it cannot be called"
    assert E.INSUFFICIENT_CREDIT.words("zh") == "余额不足，请充值后再拨打"
    assert E.CREDIT_EXHAUSTED.words("en") == "Your credit ran out, so the call ended"
    assert catalogue()["credit_exhausted"]["q850_cause"] == 16


def test_missed_calls_are_told_from_the_callee_side() -> None:
    """Issue 11: the person who was called sees "Missed call", not the caller's "Offline" or "No answer"."""
    for r in (EndReason.NO_ANSWER, EndReason.UNAVAILABLE, EndReason.CANCELLED):
        assert r.missed
        assert r.words("en", callee=True) == "Missed call" and r.words("zh", callee=True) == "未接来电"
        assert r.words("en") != "Missed call"
    assert EndReason.BUSY.missed and EndReason.BUSY.words("en", callee=True).startswith("Missed call")
    assert not EndReason.DECLINED.missed and EndReason.DECLINED.words("en", callee=True) == "You declined the call"
    missed = {r for r in EndReason if r.missed}
    assert missed == {EndReason.NO_ANSWER, EndReason.UNAVAILABLE, EndReason.CANCELLED, EndReason.BUSY}
    table = catalogue()
    assert table["no_answer"]["callee_zh"] == "未接来电" and table["no_answer"]["missed"] is True
    assert table["hangup"]["callee_en"] == table["hangup"]["en"] == "Call ended"
    for r in EndReason:
        assert not CJK.search(r.words("en", callee=True)) and CJK.search(r.words("zh", callee=True)), r


def test_words_say_it_once_without_codes_or_jargon() -> None:
    """Issue 11: one plain clause per outcome, no trunk jargon, no SIP or Q.850 codes."""
    for r in EndReason:
        for lang in ("en", "zh"):
            for phone in (False, True):
                words = r.words(lang, phone=phone)
                assert "(" not in words and "（" not in words, words
                assert not re.search(r"\d{3}|trunk|SIP|Q\.850|cause", words, re.I), words
    assert EndReason.EMERGENCY.words("en") == "Emergency numbers cannot be called from the app: use a local phone"
    assert EndReason.SERVICE_NUMBER.words("zh") == "无法通过本应用拨打中国的服务号码，请使用当地电话"
    assert EndReason.SERVICE_NUMBER not in GATEWAY_DECLINE_REASONS  # the dial pad's own refusal
