"""Prepaid credit in the web client (issue 13), in real headless Chromium against `jego serve`
with the in-process bridge and the simulated carrier. A test rate makes money move fast:
mobiles cost 0.60 CNY a minute billed per second (1 fen a second), landlines have no rate.

The page shows the available credit and a low-credit warning on the "Call phones" tab, the price
per minute of the number being dialled before the call, the server's `credit_low` warning with
a countdown in the call overlay, the cut at zero in plain words (the carrier saw BYE with Q.850
cause 16), each call's cost in the call history, and the refusals (no credit, no rate) with
their words in English and Chinese; the carrier's records prove nothing was dialled for them.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from ..conftest import ROOT, LiveServer, http_json, top_up
from ..integration.bridge_util import carrier_record, carrier_records, phone_server
from ..integration.test_dial import _env
from .conftest import open_as
from .pagecheck import axe_violations, untranslated

pytestmark = pytest.mark.browser

RATES = """
currency = "CNY"
increment = "1/1"

[[rate]]
prefix = "+86"
kind = "mobile"
name = "China mobile (test)"
name_zh = "中国手机（测试）"
per_minute = "0.60"
"""
WARNING_S = 4
CREDIT_FEN = 10    # 10 s at 1 fen a second
TIMEOUT = 20_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("billing-e2e")
    rates = tmp / "rates.toml"
    rates.write_text(RATES)
    s = phone_server(tmp, credit=0, JEGO_BILLING_RATES=str(rates), JEGO_BILLING_WARNING_S=str(WARNING_S),
                     JEGO_BILLING_LOW_BALANCE="1", JEGO_FRAUD_DISTINCT_DESTINATIONS_WARNING="2",
                     JEGO_FRAUD_DISTINCT_DESTINATIONS_CRITICAL="3")
    yield s
    s.stop()


def reasons(server: LiveServer) -> dict[str, Any]:
    status, body = http_json("GET", f"{server.url}/api/reasons")
    assert status == 200, body
    table: dict[str, Any] = body
    return table


def cdrs_for(server: LiveServer, to: str) -> list[dict[str, Any]]:
    return [r for r in carrier_records(server) if r.get("to") == to]


def dial(page: Page, typed: str) -> None:
    page.get_by_test_id("tab-phone").click()
    page.get_by_test_id("dialpad-input").fill(typed)
    page.get_by_test_id("call-phone").click()


def test_credit_price_warning_cut_cost_and_refusals_in_both_languages(
        browser: Browser, contexts: list[BrowserContext], server: LiveServer) -> None:
    name = f"pay{uuid.uuid4().hex[:8]}"
    to = f"+86138{uuid.uuid4().int % 10**6:06d}01"   # a China Mobile number only this test dials
    typed = f"{to[3:6]} {to[6:10]} {to[10:]}"
    page = open_as(browser, contexts, server, name)
    top_up(server, name, CREDIT_FEN)
    words = reasons(server)

    # the balance and the low-credit warning on the Phone tab, then the price before dialling
    page.get_by_test_id("tab-phone").click()
    expect(page.get_by_test_id("credit-balance")).to_have_text("Credit: 0.10 CNY", timeout=TIMEOUT)
    expect(page.get_by_test_id("credit-low")).to_have_text(
        "Your credit is low (under 1.00 CNY): top up to keep calling phones.")
    page.get_by_test_id("dialpad-input").fill(typed)
    expect(page.get_by_test_id("dialpad-price")).to_have_text("0.60 CNY a minute · billed per second",
                                                              timeout=TIMEOUT)
    assert axe_violations(page) == []
    assert untranslated(page) == [], untranslated(page)

    # the call: connected, credit_low in the overlay with its countdown, then cut at zero
    page.get_by_test_id("call-phone").click()
    expect(page.get_by_test_id("call-state")).to_have_text("connected", timeout=TIMEOUT)
    low = page.get_by_test_id("call-credit-low")
    expect(low).to_be_visible(timeout=(CREDIT_FEN + 5) * 1000)
    expect(low).to_contain_text("Your credit is running out: this call ends in")
    seconds = int(low.inner_text().rsplit("in ", 1)[1].split(" ")[0])
    assert 0 <= seconds <= WARNING_S, low.inner_text()
    reason = page.get_by_test_id("call-end-reason")
    expect(reason).to_have_attribute("data-reason", "credit_exhausted", timeout=(WARNING_S + 5) * 1000)
    expect(reason).to_have_text(words["credit_exhausted"]["phone_en"])
    cdr = carrier_record(server, to)
    assert cdr["q850_cause"] == 16 and cdr["reason_text"] == "credit_exhausted", cdr
    assert abs(cdr["duration_s"] - CREDIT_FEN) <= 1.0, cdr

    # its cost in the history, the balance at zero
    page.get_by_test_id("tab-calls").click()
    item = page.get_by_test_id("call-history").get_by_test_id("call-history-item").first
    expect(item).to_have_attribute("data-outcome", "credit_exhausted", timeout=TIMEOUT)
    expect(item.get_by_test_id("call-cost")).to_have_text(f"cost 0.{CREDIT_FEN:02d} CNY")
    page.get_by_test_id("tab-phone").click()
    expect(page.get_by_test_id("credit-balance")).to_have_text("Credit: 0.00 CNY", timeout=TIMEOUT)

    # no credit left: refused before any SIP, with the server's plain words under the outcome
    dial(page, typed)
    expect(reason).to_have_attribute("data-reason", "insufficient_credit", timeout=TIMEOUT)
    expect(reason).to_have_text(words["insufficient_credit"]["phone_en"])
    said = page.get_by_test_id("call-end-words")
    expect(said).to_have_text("Not enough credit: a call to China mobile (test) costs at least 0.01 CNY "
                              "(the first 1 s) and you have 0.00 CNY available. Top up to call.")
    assert len(cdrs_for(server, to)) == 1, cdrs_for(server, to)   # nothing more reached the carrier

    # the same refusal in Chinese: the page's language switches, the words follow
    page.get_by_test_id("tab-me").click()
    page.get_by_test_id("lang-select").select_option("zh-CN")
    expect(said).to_have_text("余额不足：拨打中国手机（测试）至少需要0.01元（前1秒），您的可用余额为0.00元。请充值后再拨打。")
    expect(reason).to_have_text(words["insufficient_credit"]["phone_zh"])
    page.get_by_test_id("tab-phone").click()
    expect(page.get_by_test_id("credit-balance")).to_have_text("余额：0.00元")
    expect(page.get_by_test_id("credit-low")).to_have_text("余额不足1.00元，请充值以继续拨打电话。")
    expect(page.get_by_test_id("dialpad-price")).to_have_text("每分钟0.60元 · 按秒计费", timeout=TIMEOUT)
    page.get_by_test_id("tab-calls").click()
    expect(page.get_by_test_id("call-history").get_by_test_id("call-cost").first).to_have_text(
        f"费用0.{CREDIT_FEN:02d}元")
    assert untranslated(page) == [], untranslated(page)

    # a landline has no rate: refused with those words (in Chinese now), nothing dialled
    landline = "+861062345678"
    dial(page, "010 6234 5678")
    expect(reason).to_have_attribute("data-reason", "no_rate", timeout=TIMEOUT)
    expect(said).to_have_text("此目的地没有资费，无法拨打")
    page.get_by_test_id("tab-me").click()
    page.get_by_test_id("lang-select").select_option("en")
    expect(said).to_have_text("There is no rate for this destination, so it cannot be called")
    assert cdrs_for(server, landline) == []
    assert page.errors == []  # type: ignore[attr-defined]


def test_credit_low_at_the_answer_when_the_credit_is_shorter_than_the_warning(
        browser: Browser, contexts: list[BrowserContext], server: LiveServer) -> None:
    """3 s of credit, warned 4 s before the end: the warning comes at the answer, in Chinese
    for a zh-CN browser, and the call is cut at 3 s."""
    name = f"pay{uuid.uuid4().hex[:8]}"
    to = f"+86138{uuid.uuid4().int % 10**6:06d}02"
    page = open_as(browser, contexts, server, name, locale="zh-CN")
    top_up(server, name, 3)
    page.get_by_test_id("tab-phone").click()
    expect(page.get_by_test_id("credit-balance")).to_have_text("余额：0.03元", timeout=TIMEOUT)
    page.get_by_test_id("dialpad-input").fill(to)
    page.get_by_test_id("call-phone").click()
    low = page.get_by_test_id("call-credit-low")
    expect(low).to_be_visible(timeout=TIMEOUT)
    expect(low).to_contain_text("余额即将用完：本次通话将在")
    reason = page.get_by_test_id("call-end-reason")
    expect(reason).to_have_attribute("data-reason", "credit_exhausted", timeout=TIMEOUT)
    expect(reason).to_have_text(reasons(server)["credit_exhausted"]["phone_zh"])
    cdr = carrier_record(server, to)
    assert cdr["q850_cause"] == 16 and abs(cdr["duration_s"] - 3) <= 1.0, cdr
    assert page.errors == []  # type: ignore[attr-defined]


def test_velocity_suspension_is_shown_in_plain_words_until_an_operator_lifts_it(
        browser: Browser, contexts: list[BrowserContext], server: LiveServer) -> None:
    """Three different numbers within 10 minutes (the critical threshold here is 3): the third is
    refused before any SIP and the user's phone calls are suspended; the Phone tab says why,
    until `jego user unsuspend`."""
    name = f"pay{uuid.uuid4().hex[:8]}"
    numbers = [f"+86138{uuid.uuid4().int % 10**6:06d}{i:02d}" for i in (3, 4, 5)]
    page = open_as(browser, contexts, server, name)
    top_up(server, name, 500)
    reason = page.get_by_test_id("call-end-reason")
    for to in numbers[:2]:
        dial(page, to)
        expect(page.get_by_test_id("call-state")).to_have_text("connected", timeout=TIMEOUT)
        page.get_by_test_id("hangup").click()
        expect(reason).to_have_attribute("data-reason", "hangup", timeout=TIMEOUT)
    dial(page, numbers[2])
    expect(reason).to_have_attribute("data-reason", "suspended", timeout=TIMEOUT)
    words = ("Phone calls from your account are suspended because you called 3 different numbers within "
             "10 minutes, which looks like toll fraud. Contact support to have them restored.")
    expect(page.get_by_test_id("call-end-words")).to_have_text(words)
    assert cdrs_for(server, numbers[2]) == []
    page.get_by_test_id("tab-calls").click()
    page.get_by_test_id("tab-phone").click()
    expect(page.get_by_test_id("credit-suspended")).to_have_text(words, timeout=TIMEOUT)
    expect(page.get_by_test_id("credit-low")).to_be_hidden()
    page.get_by_test_id("tab-me").click()
    page.get_by_test_id("lang-select").select_option("zh-CN")
    page.get_by_test_id("tab-phone").click()
    expect(page.get_by_test_id("credit-suspended")).to_contain_text("疑似盗打电话，您账户的电话呼叫功能已被暂停")
    lifted = subprocess.run([sys.executable, "-m", "jego_call.cli.main", "user", "unsuspend", name, "--note",
                             "checked with the customer", "--data-dir", str(server.data_dir)],
                            cwd=ROOT, env={**_env(), **server.env}, capture_output=True, text=True, timeout=60)
    assert lifted.returncode == 0, lifted.stderr
    page.get_by_test_id("tab-calls").click()
    page.get_by_test_id("tab-phone").click()
    expect(page.get_by_test_id("credit-suspended")).to_be_hidden(timeout=TIMEOUT)
    expect(page.get_by_test_id("credit-balance")).to_contain_text("余额：")
    assert page.errors == []  # type: ignore[attr-defined]
