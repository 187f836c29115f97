"""The conference's pure core (bridge/gateway/conference_core.py): app legs, phone legs with their
BridgeStateMachine, what is mixed, what the server is told, and the close."""

from __future__ import annotations

from collections.abc import Sequence

from bridge.gateway.call_core import BridgeState
from bridge.gateway.conference_core import (
    AddIce,
    AnswerReady,
    AppFailed,
    AppIce,
    Close,
    CloseAppLeg,
    ConferenceCore,
    DialPhone,
    Finish,
    HangupPhone,
    Join,
    Leave,
    Mute,
    OpenAppLeg,
    PhoneEvent,
    PhoneInvite,
    PhoneOpFailed,
    PhoneServer,
    ReportPhone,
    ToServer,
)
from bridge.gateway.legs import LegAnswered, LegEnded, LegRinging
from jego_call.call.reasons import EndReason

CID = "gcall-0001"
LEG = "gcall-0001-p1"


def server(cmds: Sequence[object]) -> list[dict[str, object]]:
    return [c.msg for c in cmds if isinstance(c, ToServer)]


def test_app_legs_join_answer_mute_leave() -> None:
    core = ConferenceCore(CID)
    cmds = core.handle(Join("mum.1", "mum", "v=0 offer"))
    assert [c for c in cmds if isinstance(c, OpenAppLeg)] == [OpenAppLeg("mum.1", "v=0 offer")]
    assert core.mixing() == ([], set())   # not mixed before its answer
    assert server(core.handle(AnswerReady("mum.1", "v=0 answer"))) == [
        {"type": "conference_answer", "call_id": CID, "leg": "mum.1", "sdp": "v=0 answer"}]
    core.handle(Join("lili.1", "lili", "v=0 offer2"))
    core.handle(AnswerReady("lili.1", "v=0 answer2"))
    assert core.mixing() == (["mum.1", "lili.1"], set())
    core.handle(Mute("lili.1", True))
    assert core.mixing() == (["mum.1", "lili.1"], {"lili.1"})
    assert core.handle(AppIce("mum.1", None)) == [AddIce("mum.1", None)]
    assert core.handle(Leave("lili.1")) == [CloseAppLeg("lili.1")]
    assert core.mixing() == (["mum.1"], set())
    assert core.handle(AnswerReady("lili.1", "late")) == []   # gone: nothing to tell


def test_a_failed_app_leg_is_reported_once() -> None:
    core = ConferenceCore(CID)
    core.handle(Join("mum.1", "mum", "v=0"))
    cmds = core.handle(AppFailed("mum.1", "bad offer"))
    assert CloseAppLeg("mum.1") in cmds
    assert server(cmds) == [{"type": "conference_leg_failed", "call_id": CID, "leg": "mum.1", "detail": "bad offer"}]
    assert core.handle(AppFailed("mum.1", "again")) == []


def test_phone_leg_rings_answers_is_mixed_and_hangs_up() -> None:
    core = ConferenceCore(CID)
    assert DialPhone(LEG, "+8613800138000") in core.handle(PhoneInvite(LEG, "+8613800138000", "mum"))
    assert server(core.handle(PhoneEvent(LEG, LegRinging(180, False)))) == [
        {"type": "ringing", "call_id": LEG, "sip_code": 180}]
    assert server(core.handle(PhoneEvent(LEG, LegRinging(183, True)))) == []   # said once
    assert server(core.handle(PhoneEvent(LEG, LegAnswered("PCMU")))) == [{"type": "accept", "call_id": LEG}]
    assert core.phones[LEG].sm.state is BridgeState.CONNECTED
    assert core.mixing() == ([LEG], set())
    core.handle(Mute(LEG, True))
    assert core.mixing() == ([LEG], {LEG})
    cmds = core.handle(PhoneEvent(LEG, LegEnded(EndReason.HANGUP, None, 16)))
    assert server(cmds) == [{"type": "hangup", "call_id": LEG, "sip_code": None, "q850_cause": 16}]
    assert ReportPhone(LEG) in cmds and core.mixing() == ([], set())


def test_phone_refused_before_the_answer_is_a_decline_with_its_reason() -> None:
    core = ConferenceCore(CID)
    core.handle(PhoneInvite(LEG, "+8613800138000", "mum"))
    msgs = server(core.handle(PhoneEvent(LEG, LegEnded(EndReason.BUSY, 486, 17))))
    assert msgs == [{"type": "decline", "call_id": LEG, "reason": "busy", "sip_code": 486, "q850_cause": 17,
                     "detail": EndReason.BUSY.words()}]
    core.handle(PhoneInvite("p2-leg", "+8613800138000", "mum"))
    msgs = server(core.handle(PhoneOpFailed("p2-leg", "dial", "no route")))
    assert msgs[0]["type"] == "decline" and msgs[0]["reason"] == "failed"


def test_the_server_ending_a_phone_leg_hangs_it_up_and_tells_it_nothing_more() -> None:
    core = ConferenceCore(CID)
    core.handle(PhoneInvite(LEG, "+8613800138000", "mum"))
    core.handle(PhoneEvent(LEG, LegAnswered("PCMU")))
    assert core.handle(PhoneServer(LEG, {"type": "call_ended", "call_id": LEG, "reason": "hangup"})) == [
        HangupPhone(LEG, 16)]
    assert core.handle(PhoneServer(LEG, {"type": "call_ended", "call_id": LEG})) == []   # once
    cmds = core.handle(PhoneEvent(LEG, LegEnded(EndReason.HANGUP, remote=False)))
    assert server(cmds) == [] and ReportPhone(LEG) in cmds


def test_close_ends_every_leg_then_finishes() -> None:
    core = ConferenceCore(CID)
    core.handle(Join("mum.1", "mum", "v=0"))
    core.handle(AnswerReady("mum.1", "v=0 a"))
    core.handle(PhoneInvite(LEG, "+8613800138000", "mum"))
    core.handle(PhoneEvent(LEG, LegAnswered("PCMU")))
    cmds = core.handle(Close("hangup"))
    assert CloseAppLeg("mum.1") in cmds and HangupPhone(LEG, 16) in cmds and Finish() not in cmds
    cmds = core.handle(PhoneEvent(LEG, LegEnded(EndReason.HANGUP, remote=False)))
    assert server(cmds) == [] and cmds[-1] == Finish() and core.finished
    late = ConferenceCore(CID)
    late.handle(Close("hangup"))
    msgs = server(late.handle(PhoneInvite(LEG, "+8613800138000", "mum")))
    assert msgs[0]["type"] == "decline" and msgs[0]["detail"] == "the group call has ended"
