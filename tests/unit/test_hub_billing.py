"""HubCore with prepaid credit, in virtual time: the `Ledger` is asked before any SIP, a refusal
ends the call with its reason and words (en, zh) and nothing goes to a gateway, a grant puts
`max_s` in the gateway's invite, the answer arms credit_low and the cut, and every phone call
is settled exactly once with its call record. The ledger is tests/unit/hubkit.py's
MemoryLedger: in-memory balances and holds decided by the real pure billing policy
(config/rates.toml: China Mobile 0.15 CNY a minute, 60/60).
"""

from __future__ import annotations

from typing import Any

import pytest

from jego_call.billing.fraud import FraudConfig
from jego_call.billing.rates import build_rate_table
from jego_call.billing.refusal import Refusal
from jego_call.call.reasons import EndReason
from jego_call.signalling.hub_core import CallTimer

from .hubkit import ANSWER, SDP, WALL0, HubWorld, MemoryLedger

CID = "call-0001"
CID2 = "call-0002"
MOBILE = "+8613800138000"      # China Mobile mobile: 0.15 CNY/min, 60/60
PER_MIN = 15                   # fen a started minute


def billed(balances: dict[str, int] | None = None, ledger: MemoryLedger | None = None, gateway: bool = True,
           **kw: Any) -> HubWorld:
    """alice (a1), bob (b1) online; a gateway gw1 unless told otherwise; alice has 30 fen."""
    w = HubWorld(contacts={"alice": ["bob"], "bob": ["alice"]},
                 ledger=ledger or MemoryLedger({"alice": 30} if balances is None else balances), **kw)
    w.attach("a1", "alice")
    w.attach("b1", "bob")
    if gateway:
        w.gateway("gw1", "gw1", 4)
    w.drain()
    return w


def call_phone(w: HubWorld, to: str = MOBILE, call_id: str = CID, sid: str = "a1") -> None:
    w.msg(sid, type="invite", call_id=call_id, to=to, sdp=SDP)


def answer(w: HubWorld, call_id: str = CID) -> None:
    w.msg("gw1", type="ringing", call_id=call_id, sip_code=180)
    w.msg("gw1", type="accept", call_id=call_id, sdp=ANSWER)


def ledger_of(w: HubWorld) -> MemoryLedger:
    assert w.ledger is not None
    return w.ledger


# --- refused before any SIP ---------------------------------------------------------------------
def test_too_little_credit_is_refused_before_any_sip() -> None:
    w = billed({"alice": 5})
    call_phone(w)
    ended = w.last("a1", "call_ended")
    assert ended["reason"] == EndReason.INSUFFICIENT_CREDIT
    assert ended["detail"].startswith("Not enough credit: a call to China Mobile mobile costs at least 0.15 CNY")
    assert "0.05 CNY available" in ended["detail"] and "Top up" in ended["detail"]
    assert ended["detail_zh"].startswith("余额不足") and "0.15元" in ended["detail_zh"]
    assert ended["sip_code"] is None and ended["q850_cause"] is None
    assert w.inbox("gw1") == [] and w.core.gateways["gw1"].calls == set()  # no invite: no SIP
    [rec] = w.stored
    assert (rec.outcome, rec.callee, rec.answered_at) == ("insufficient_credit", MOBILE, None)
    assert ledger_of(w).charges == {} and w.core.user_call == {}  # alice may dial again at once


RATES_WITHOUT_LANDLINES = {"currency": "CNY", "rate": [
    {"prefix": "+86", "kind": "mobile", "name": "China mobile", "per_minute": "0.15"}]}


@pytest.mark.parametrize(("to", "reason", "setup"), [
    ("+864008123456", EndReason.DESTINATION_BARRED, None),    # shared-cost 400
    ("+8613491234567", EndReason.DESTINATION_BARRED, None),   # satellite 1349
    ("+8617412345678", EndReason.DESTINATION_BARRED, None),   # satellite 174
    ("+861065529988", EndReason.NO_RATE, "no_landline_rate"),
    (MOBILE, EndReason.SUSPENDED, "suspended"),
    (MOBILE, EndReason.LIMIT_REACHED, "hourly_cap"),
])
def test_every_billing_refusal_has_its_reason_and_words(to: str, reason: EndReason, setup: str | None) -> None:
    ledger = MemoryLedger({"alice": 500})
    if setup == "no_landline_rate":
        ledger.rates = build_rate_table(RATES_WITHOUT_LANDLINES)
    elif setup == "suspended":
        ledger.suspended["alice"] = Refusal(EndReason.SUSPENDED, "Phone calls from your account are suspended",
                                            "您账户的电话呼叫功能已被暂停", "distinct_destinations")
    elif setup == "hourly_cap":
        ledger.fraud = FraudConfig(max_calls_per_hour=1)
    w = billed(ledger=ledger)
    if setup == "hourly_cap":  # one call this hour already
        call_phone(w, call_id=CID2)
        w.msg("a1", type="cancel", call_id=CID2)
        w.drain()
    call_phone(w, to)
    ended = w.last("a1", "call_ended")
    assert ended["reason"] == reason, ended
    assert ended["detail"] and ended["detail_zh"] and ended["detail"] != ended["detail_zh"]
    assert any("\u4e00" <= ch <= "\u9fff" for ch in ended["detail_zh"])
    assert w.inbox("gw1", "invite") == [] and CID not in ledger.charges
    assert w.stored[-1].outcome == reason.value
    if reason is EndReason.NO_RATE:
        assert ended["detail"] == "There is no rate for this destination, so it cannot be called"
    if reason is EndReason.LIMIT_REACHED:
        assert "1 phone calls" in ended["detail"] or "hour" in ended["detail"], ended["detail"]


def test_velocity_suspends_and_says_why() -> None:
    ledger = MemoryLedger({"alice": 5000}, fraud=FraudConfig(distinct_destinations_warning=2,
                                                            distinct_destinations_critical=3))
    w = billed(ledger=ledger)
    for i, number in enumerate(("+8613800138011", "+8613900139022")):
        call_phone(w, number, call_id=f"call-v{i:04d}")
        w.msg("a1", type="cancel", call_id=f"call-v{i:04d}")
    w.drain()
    call_phone(w, "+8618600186033")  # the third distinct number in 10 minutes: critical
    ended = w.last("a1", "call_ended")
    assert ended["reason"] == EndReason.SUSPENDED
    assert "3 different numbers" in ended["detail"] and "toll fraud" in ended["detail"]
    assert "alice" in ledger.suspended
    call_phone(w, MOBILE, call_id=CID2)  # and from now on, any number
    assert w.last("a1", "call_ended")["reason"] == EndReason.SUSPENDED
    assert w.inbox("gw1", "invite") == []  # neither suspended attempt reached a gateway


# --- granted: max_s, credit_low, the cut, settlement ----------------------------------------------
def test_grant_gives_the_gateway_max_s() -> None:
    w = billed({"alice": 30})
    call_phone(w)
    [inv] = w.inbox("gw1", "invite")
    assert inv["max_s"] == 120 and inv["max_reason"] == EndReason.CREDIT_EXHAUSTED  # 30 fen / 15 a minute
    assert ledger_of(w).held("alice") == 30


def test_credit_low_60_s_before_the_cut_then_credit_exhausted_at_the_computed_moment() -> None:
    w = billed({"alice": 30})
    call_phone(w)
    answer(w)
    answered_at = w.now
    assert w.call(CID).timer is CallTimer.CREDIT_LOW
    w.advance(59.9)
    assert w.inbox("a1", "credit_low") == []
    w.advance(0.1)
    [low] = w.inbox("a1", "credit_low")
    assert low == {"type": "credit_low", "call_id": CID, "remaining_s": 60, "ends_at": WALL0 + answered_at - w.t0 + 120,
                   "reason": EndReason.CREDIT_EXHAUSTED, "balance": 30, "held": 30, "available": 0, "currency": "CNY"}
    assert w.inbox("b1", "credit_low") == [] and w.inbox("gw1", "credit_low") == []  # only the caller
    w.advance(59.99)
    assert w.inbox("a1", "call_ended") == []
    w.advance(0.01)
    ended = w.last("a1", "call_ended")
    assert ended["reason"] == EndReason.CREDIT_EXHAUSTED and w.now == pytest.approx(answered_at + 120)
    assert w.last("gw1", "call_ended")["reason"] == EndReason.CREDIT_EXHAUSTED  # the bridge BYEs with cause 16
    [rec] = w.stored
    assert rec.outcome == "credit_exhausted" and rec.ended_at - rec.answered_at == pytest.approx(120)  # type: ignore[operator]
    c = ledger_of(w).charges[CID]
    assert (c.billed_s, c.cost, ledger_of(w).balances["alice"]) == (120, 30, 0)
    assert ledger_of(w).settles[CID] == 1


def test_credit_for_less_than_the_warning_warns_at_the_answer() -> None:
    w = billed({"alice": 15})  # one minute
    call_phone(w)
    answer(w)
    w.advance(0)
    assert w.last("a1", "credit_low")["remaining_s"] == 60
    w.advance(60)
    assert w.last("a1", "call_ended")["reason"] == EndReason.CREDIT_EXHAUSTED


def test_a_sooner_maximum_length_wins_over_the_credit() -> None:
    w = billed({"alice": 30}, max_call_s=30)
    call_phone(w)
    answer(w)
    w.advance(31)
    assert w.last("a1", "call_ended")["reason"] == EndReason.MAX_DURATION
    assert w.inbox("a1", "credit_low") == []
    c = ledger_of(w).charges[CID]
    assert (c.billed_s, c.cost) == (60, 15)  # 30 s, rounded up to the minute


@pytest.mark.parametrize("how", ["phone_hangs_up", "user_hangs_up", "gateway_lost", "caller_lost", "shutdown"])
def test_every_end_settles_once_for_the_time_it_was_up(how: str) -> None:
    w = billed({"alice": 300})
    call_phone(w)
    answer(w)
    w.advance(61)
    if how == "phone_hangs_up":
        w.msg("gw1", type="hangup", call_id=CID, q850_cause=16)
    elif how == "user_hangs_up":
        w.msg("a1", type="hangup", call_id=CID)
    elif how == "gateway_lost":  # e.g. `jego bridge` killed: its socket closes
        w.detach("gw1")
    elif how == "caller_lost":
        w.detach("a1")
    else:
        w.shutdown()
    w.advance(600)
    ledger = ledger_of(w)
    assert ledger.settles[CID] == 1
    c = ledger.charges[CID]
    assert (c.billed_s, c.cost, ledger.balances["alice"]) == (120, 30, 270)
    assert [r.call_id for r in w.stored] == [CID]


def test_unanswered_calls_cost_nothing_and_release_their_hold() -> None:
    w = billed({"alice": 30})
    call_phone(w)
    assert ledger_of(w).held("alice") == 30
    w.msg("gw1", type="decline", call_id=CID, reason="busy", sip_code=486, q850_cause=17)
    ledger = ledger_of(w)
    assert ledger.held("alice") == 0 and ledger.settles[CID] == 1 and ledger.charges[CID].cost == 0
    assert ledger.balances["alice"] == 30


def test_no_free_gateway_releases_the_hold() -> None:
    w = billed({"alice": 30}, gateway=False)
    call_phone(w)
    assert w.last("a1", "call_ended")["reason"] == EndReason.UNREACHABLE
    ledger = ledger_of(w)
    assert ledger.held("alice") == 0 and ledger.settles[CID] == 1 and ledger.balances["alice"] == 30


def test_two_nodes_on_one_ledger_cannot_spend_the_same_money() -> None:
    """One hub lets a user have one call at a time; a second node (the cluster) sharing the
    ledger gets only what the first call does not hold."""
    ledger = MemoryLedger({"alice": 30})
    one, two = billed(ledger=ledger), billed(ledger=ledger)
    call_phone(one)
    answer(one)
    call_phone(two, call_id=CID2)
    ended = two.last("a1", "call_ended")
    assert ended["reason"] == EndReason.INSUFFICIENT_CREDIT
    assert "0.30 CNY of your balance is held by your other call" in ended["detail"]
    one.advance(120)
    assert one.last("a1", "call_ended")["reason"] == EndReason.CREDIT_EXHAUSTED
    assert ledger.balances["alice"] == 0  # never below zero


def test_calls_from_phones_and_between_users_are_free() -> None:
    w = billed({"alice": 0})
    w.msg("gw1", type="invite", call_id=CID, to="alice", **{"from": "+8613800138000"}, sdp=SDP)
    w.msg("a1", type="accept", call_id=CID, sdp=ANSWER)
    w.advance(300)
    w.msg("a1", type="hangup", call_id=CID)
    w.msg("a1", type="invite", call_id=CID2, to="bob", sdp=SDP)
    w.msg("b1", type="accept", call_id=CID2, sdp=ANSWER)
    w.advance(300)
    w.msg("b1", type="hangup", call_id=CID2)
    assert ledger_of(w).charges == {} and [r.outcome for r in w.stored] == ["hangup", "hangup"]
    assert w.inbox("a1", "credit_low") == []


def test_without_a_ledger_phone_calls_stay_free() -> None:
    w = HubWorld()
    w.attach("a1", "alice")
    w.gateway()
    call_phone(w)
    [inv] = w.inbox("gw1", "invite")
    assert "max_s" not in inv


# --- a ledger that fails --------------------------------------------------------------------------
def test_a_failing_credit_check_refuses_the_call_cleanly() -> None:
    w = billed({"alice": 30})
    ledger_of(w).fail_next = "authorise"
    call_phone(w)
    assert w.last("a1", "call_ended")["reason"] == EndReason.UNREACHABLE
    assert w.inbox("gw1") == [] and w.core.user_call == {}
    assert any("credit check failed" in line for line in w.logs())
    call_phone(w, call_id=CID2)  # the next one goes through
    assert w.inbox("gw1", "invite")[-1]["call_id"] == CID2


def test_a_failing_answer_mark_still_cuts_at_the_granted_length() -> None:
    w = billed({"alice": 30})
    call_phone(w)
    ledger_of(w).fail_next = "answered"
    answer(w)
    w.advance(119.9)
    assert w.inbox("a1", "call_ended") == []
    w.advance(0.1)
    assert w.last("a1", "call_ended")["reason"] == EndReason.CREDIT_EXHAUSTED


def test_credit_low_goes_out_without_figures_when_the_balance_cannot_be_read() -> None:
    w = billed({"alice": 30})
    call_phone(w)
    answer(w)
    ledger_of(w).fail_next = "credit"
    w.advance(60)
    low = w.last("a1", "credit_low")
    assert low["remaining_s"] == 60 and "balance" not in low
