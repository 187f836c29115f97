"""Prepaid credit through the real call path: `jego dial` -> `jego serve` (hub + ledger on
SQLite + in-process bridge on pyVoIP) -> the simulated carrier. A test rate makes money move
fast: mobiles cost 0.60 CNY a minute billed per second (1 fen a second), landlines have no rate.

- too little credit: refused with `insufficient_credit` and its words, and no SIP at all (the
  carrier's call records have nothing for the number until there is credit);
- at zero the call is cut: `credit_low` first, then BYE with Q.850 cause 16 and reason text
  `credit_exhausted`, within 1 s of the moment the credit allows (measured on the carrier's
  own record of the call), charged exactly that, shown in /api/calls;
- a call's hold: while it is up, nothing else (another node's authorisation, an operator's
  deduction) can spend the money it holds; the balance never goes below zero;
- each toll-fraud control refuses with its reason and words in English and Chinese, before
  any SIP: a barred destination, no rate, the concurrent and hourly caps, minutes per day,
  and the velocity suspension until `jego user unsuspend`.

Each test uses its own user, so the fraud counters of one do not touch another.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from jego_call.billing.fraud import FraudConfig
from jego_call.billing.service import Billing, load_rate_table
from jego_call.db import Database
from tests.conftest import PASSWORD, ROOT, LiveServer, http_json, make_user, top_up
from tests.helpers import wait_for

from .bridge_util import PLAIN, carrier_record, carrier_records, phone_server
from .test_billing_store import SyncBilling
from .test_dial import _env, dial

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
WARNING_S = 3
FRAUD = {"JEGO_FRAUD_MAX_CALLS_PER_HOUR": "3", "JEGO_FRAUD_DISTINCT_DESTINATIONS_WARNING": "2",
         "JEGO_FRAUD_DISTINCT_DESTINATIONS_CRITICAL": "3"}


@pytest.fixture(scope="module")
def paid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("paid")
    rates = tmp / "rates.toml"
    rates.write_text(RATES)
    env = {"JEGO_BILLING_RATES": str(rates), "JEGO_BILLING_WARNING_S": str(WARNING_S),
           "JEGO_BILLING_HEARTBEAT_S": "0.5", **FRAUD}
    s = phone_server(tmp, None, 0, **env)   # positional: a str-valued **env cannot land on extra_args
    yield s
    s.stop()


def user(server: LiveServer, fen: int) -> str:
    """A new user with `fen` of credit."""
    name = f"u{uuid.uuid4().hex[:10]}"
    make_user(server, name)
    if fen:
        top_up(server, name, fen)
    return name


def api(server: LiveServer, name: str, path: str) -> Any:
    status, body = http_json("POST", f"{server.url}/api/login", {"username": name, "password": PASSWORD})
    assert status == 200, body
    status, body = http_json("GET", f"{server.url}{path}", token=body["token"])
    assert status == 200, body
    return body


def ledger(server: LiveServer) -> Any:
    """The server's ledger, opened from this process (as another node or `jego credit` would)."""
    return SyncBilling(Billing(Database.open(server.data_dir / "jego.sqlite3"), load_rate_table(server.env["JEGO_BILLING_RATES"]),
                   FraudConfig(max_calls_per_hour=3,
                               distinct_destinations_warning=2, distinct_destinations_critical=3)))


def number(i: int) -> str:
    """A China Mobile number no other test dials (the carrier answers and echoes it)."""
    return f"+86138{uuid.uuid4().int % 10**6:06d}{i:02d}"


def cdr_for(server: LiveServer, to: str) -> list[dict[str, Any]]:
    return [r for r in carrier_records(server) if r.get("to") == to]


def chinese(text: str | None) -> bool:
    return bool(text) and any("\u4e00" <= ch <= "\u9fff" for ch in text or "")


# --- credit ---------------------------------------------------------------------------------------
def test_too_little_credit_is_refused_before_any_sip(paid: LiveServer) -> None:
    name, to = user(paid, 0), number(1)
    rc, res, err = dial(paid, to, "--json", "--duration", "1", user=name)
    assert rc == 1 and res is not None, err
    assert res["reason"] == "insufficient_credit" and res["outcome"] == "failed"
    assert res["detail"].startswith("Not enough credit: a call to China mobile (test) costs at least 0.01 CNY")
    assert "you have 0.00 CNY available" in res["detail"] and "Top up to call" in res["detail"]
    assert res["detail_zh"] == "余额不足：拨打中国手机（测试）至少需要0.01元（前1秒），您的可用余额为0.00元。请充值后再拨打。"
    assert res["sip_code"] is None and res["q850_cause"] is None
    assert "refused before SIP: insufficient_credit" in paid.log()
    # with credit the same number does reach the carrier: its records are what prove "no SIP"
    top_up(paid, name, 100)
    rc, res, err = dial(paid, to, "--json", "--duration", "1", user=name)
    assert rc == 0 and res is not None and res["outcome"] == "answered", err
    carrier_record(paid, to)
    [rec] = cdr_for(paid, to)  # one record: the refused attempt sent nothing
    assert rec["outcome"] == "hangup"
    calls = api(paid, name, "/api/calls")["calls"]
    assert [c["outcome"] for c in calls] == ["hangup", "insufficient_credit"]
    assert calls[1]["cost"] is None and calls[0]["cost"] == calls[0]["billed_s"] >= 1  # 1 fen a second


def test_cut_at_zero_within_a_second_of_the_computed_moment(paid: LiveServer, tmp_path: Path) -> None:
    name, to = user(paid, 8), number(2)  # 8 fen at 1 fen a second: 8 s
    rate = api(paid, name, f"/api/rate?number={quote(to)}")["rate"]
    assert (rate["per_minute_text"], rate["increment"]) == ("0.60 CNY", "1/1")
    rc, res, err = dial(paid, to, "--json", "--duration", "30", user=name)
    assert rc == 0 and res is not None, err  # it was answered: exit 0 (jego dial's table)
    assert res["reason"] == "credit_exhausted" and res["outcome"] == "answered", res
    low = res["credit_low"]
    assert low is not None and low["remaining_s"] == WARNING_S and low["currency"] == "CNY", low
    assert (low["balance"], low["held"], low["available"]) == (8, 8, 0)
    assert 8 - WARNING_S - 1 <= low["at_s"] <= 8 - WARNING_S + 1, low
    cdr = carrier_record(paid, to)
    allowed = 8.0
    print(f"cut: the carrier saw {cdr['duration_s']:.3f} s, the credit allowed {allowed:.0f} s")
    assert abs(cdr["duration_s"] - allowed) <= 1.0, cdr  # the spec's tolerance: 1 s
    assert cdr["q850_cause"] == 16 and cdr["reason_text"] == "credit_exhausted" and cdr["outcome"] == "hangup", cdr
    credit = api(paid, name, "/api/credit")
    assert (credit["balance"], credit["held"], credit["open_calls"]) == (0, 0, 0)
    charge = credit["entries"][0]
    assert (charge["kind"], charge["amount"], charge["billed_s"], charge["balance_after"]) == ("call", -8, 8, 0)
    [call] = api(paid, name, "/api/calls")["calls"]
    assert (call["outcome"], call["cost"], call["cost_text"], call["billed_s"]) == (
        "credit_exhausted", 8, "0.08 CNY", 8)


def test_two_calls_cannot_spend_the_same_money(paid: LiveServer) -> None:
    """While a call is up it holds its money: a second authorisation (as another node of a
    cluster would make, from another process on the same database) and an operator's deduction
    get only what it does not hold; the call then uses all of it, and no more."""
    name, to = user(paid, 6), number(3)
    first = subprocess.Popen([sys.executable, "-m", "jego_call.cli.main", "dial", "call", to, "--server", paid.url,
                              "--user", name, "--password", PASSWORD, "--duration", "30", "--json", "--quiet"],
                             cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    billing = ledger(paid)
    try:
        def held() -> bool:   # the call is authorised and holds 6 fen
            assert first.poll() is None
            return bool(billing.view(name)["open_calls"])
        wait_for(held, 20, "the call's hold", interval=0.05)
        view = billing.view(name)
        assert (view["balance"], view["held"], view["available"]) == (6, 6, 0)
        other = billing.authorise("other-node-" + uuid.uuid4().hex, name, number(4), time.time())
        assert other.refusal is not None and other.refusal.reason.value == "insufficient_credit"
        assert "0.06 CNY of your balance is held by your other call" in other.refusal.en
        out = subprocess.run([sys.executable, "-m", "jego_call.cli.main", "credit", "add", name, "-0.01", "--note",
                              "try to take held money", "--data-dir", str(paid.data_dir)],
                             cwd=ROOT, env={**_env(), **paid.env}, capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and "0.00 CNY available" in out.stderr, out
        stdout, stderr = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stderr
    view = billing.view(name)
    assert (view["balance"], view["held"]) == (0, 0)
    assert [(e["kind"], e["amount"], e["balance_after"]) for e in view["entries"]] == [("call", -6, 0),
                                                                                    ("topup", 6, 6)]
    billing.db.close()


# --- toll-fraud controls, each with its words, before any SIP ---------------------------------------
@pytest.mark.parametrize(("to", "reason", "words"), [
    ("+864008123456", "destination_barred", "Shared-cost and service numbers (such as 400 and 95xxx numbers) "
                                            "cannot be called from the app"),
    ("+8613492123456", "destination_barred", "Satellite"),       # satellite 1349x
    ("+8617400123456", "destination_barred", "Satellite"),       # satellite 174
    ("+861065529988", "no_rate", "There is no rate for this destination, so it cannot be called"),
])
def test_barred_destinations_and_numbers_without_a_rate(paid: LiveServer, to: str, reason: str, words: str) -> None:
    name = user(paid, 500)
    before = len(cdr_for(paid, to))
    rc, res, err = dial(paid, to, "--json", user=name)
    assert rc == 1 and res is not None, err
    assert res["reason"] == reason and words in res["detail"], res
    assert chinese(res["detail_zh"]) and res["sip_code"] is None, res
    assert len(cdr_for(paid, to)) == before  # nothing reached the carrier


def seed_call(billing: Any, name: str, to: str, at: float, seconds: int | None) -> str:
    """A call in the ledger as another node of the cluster placed it: still open (`seconds`
    None) or answered at `at` and settled `seconds` later."""
    cid = "seed-" + uuid.uuid4().hex
    auth = billing.authorise(cid, name, to, at)
    assert auth.grant is not None, auth.refusal
    if seconds is not None:
        billing.answered(cid, at)
        billing.settle(cid, at, at + seconds, at + seconds)
    return cid


def test_concurrent_calls_cap(paid: LiveServer) -> None:
    """Two calls in progress elsewhere (other nodes of a cluster; one hub already allows a user one
    call at a time), the default cap: the third is refused."""
    name = user(paid, 20000)  # two calls of the longest length (2 h) hold 144 CNY
    billing = ledger(paid)
    others = [seed_call(billing, name, number(i), time.time(), None) for i in (5, 6)]
    rc, res, err = dial(paid, number(13), "--json", user=name)
    assert rc == 1 and res is not None, err
    assert res["reason"] == "limit_reached", res
    assert res["detail"] == ("You already have 2 phone calls in progress, the most allowed at once (2): "
                             "hang up one first")
    assert res["detail_zh"] == "您已有2个电话正在进行，已达同时通话上限（2个），请先挂断一个"
    for cid in others:
        billing.settle(cid, None, time.time())
    billing.db.close()


def test_calls_per_hour_cap(paid: LiveServer) -> None:
    name, to = user(paid, 500), number(7)
    for _ in range(3):  # one number, so velocity stays quiet (3 into one block only warns)
        rc, res, err = dial(paid, to, "--json", "--duration", "0.5", user=name)
        assert rc == 0 and res is not None, err
    rc, res, err = dial(paid, to, "--json", user=name)
    assert rc == 1 and res is not None and res["reason"] == "limit_reached", (res, err)
    assert res["detail"].startswith("You have made 3 phone calls in the last hour, the most allowed: try again in")
    assert res["detail_zh"].startswith("您在过去一小时内已拨打3个电话，已达上限")
    assert len(cdr_for(paid, to)) == 3


def test_minutes_per_day(paid: LiveServer) -> None:
    name = user(paid, 20000)
    billing = ledger(paid)
    for hours_ago in (6, 4):  # the day's 240 minutes, in two calls of the longest length (2 h)
        seed_call(billing, name, number(hours_ago), time.time() - hours_ago * 3600, 7200)
    billing.db.close()
    rc, res, err = dial(paid, number(9), "--json", user=name)
    assert rc == 1 and res is not None and res["reason"] == "limit_reached", (res, err)
    assert res["detail"] == "You have used your 240 minutes of phone calls for the last 24 hours: try again later"
    assert res["detail_zh"] == "您在24小时内的240分钟通话时长已用完，请稍后再试"


def test_velocity_suspends_until_an_operator_lifts_it(paid: LiveServer) -> None:
    name = user(paid, 500)
    for i in (10, 11):  # two different numbers: the warning threshold
        rc, res, err = dial(paid, number(i), "--json", "--duration", "0.5", user=name)
        assert rc == 0, (res, err)
    third = number(12)
    rc, res, err = dial(paid, third, "--json", user=name)
    assert rc == 1 and res is not None and res["reason"] == "suspended", (res, err)
    assert res["detail"] == ("Phone calls from your account are suspended because you called 3 different numbers "
                             "within 10 minutes, which looks like toll fraud. Contact support to have them restored.")
    assert res["detail_zh"].startswith("由于") and "暂停" in res["detail_zh"]
    assert cdr_for(paid, third) == []
    rc, res, err = dial(paid, number(10), "--json", user=name)  # any number now, until lifted
    assert rc == 1 and res is not None and res["reason"] == "suspended", res
    credit = api(paid, name, "/api/credit")
    assert credit["suspended"]["rule"] == "distinct_destinations"
    lifted = subprocess.run([sys.executable, "-m", "jego_call.cli.main", "user", "unsuspend", name, "--note",
                             "checked with the customer", "--data-dir", str(paid.data_dir)],
                            cwd=ROOT, env={**_env(), **paid.env}, capture_output=True, text=True, timeout=60)
    assert lifted.returncode == 0, lifted.stderr
    rc, res, err = dial(paid, PLAIN, "--json", "--duration", "0.5", user=name)
    assert rc == 0 and res is not None and res["outcome"] == "answered", (res, err)
