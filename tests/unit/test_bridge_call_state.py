"""BridgeCall's state machine: every (state, event) pair is in the table or raises; reason mapping."""

from __future__ import annotations

import itertools

import pytest

from bridge.gateway.call import (
    TRANSITIONS,
    BridgeEvent,
    BridgeState,
    BridgeStateMachine,
    decline_for,
    sip_refusal,
)
from bridge.gateway.legs import LegEnded
from jego_call.call.reasons import GATEWAY_DECLINE_REASONS, EndReason, from_sip
from jego_call.errors import InvalidTransition

PATHS = {
    BridgeState.IDLE: [],
    BridgeState.INVITING: [BridgeEvent.INVITE],
    BridgeState.RINGING: [BridgeEvent.INVITE, BridgeEvent.RING],
    BridgeState.EARLY_MEDIA: [BridgeEvent.INVITE, BridgeEvent.EARLY_MEDIA],
    BridgeState.CONNECTED: [BridgeEvent.INVITE, BridgeEvent.ANSWER],
    BridgeState.ENDED: [BridgeEvent.FAIL],
}


def machine_in(state: BridgeState) -> BridgeStateMachine:
    sm = BridgeStateMachine()
    for ev in PATHS[state]:
        sm.apply(ev)
    assert sm.state is state
    return sm


@pytest.mark.parametrize(("state", "event"), list(itertools.product(BridgeState, BridgeEvent)))
def test_whole_transition_table(state: BridgeState, event: BridgeEvent) -> None:
    sm = machine_in(state)
    expected = TRANSITIONS.get((state, event))
    if expected is None:
        with pytest.raises(InvalidTransition):
            sm.apply(event)
        assert sm.state is state  # an illegal move changes nothing
    else:
        assert sm.apply(event) is expected
        assert sm.history[-1] == (state, event, expected)


def test_ended_is_final() -> None:
    sm = machine_in(BridgeState.CONNECTED)
    sm.apply(BridgeEvent.PHONE_END)
    assert sm.ended and sm.answered and sm.end_event is BridgeEvent.PHONE_END
    for ev in BridgeEvent:
        assert not sm.can(ev)


def test_no_answer_after_the_end_and_no_ringing_after_the_answer() -> None:
    sm = machine_in(BridgeState.CONNECTED)
    with pytest.raises(InvalidTransition):
        sm.apply(BridgeEvent.RING)
    with pytest.raises(InvalidTransition):
        sm.apply(BridgeEvent.EARLY_MEDIA)
    sm = machine_in(BridgeState.RINGING)
    sm.apply(BridgeEvent.APP_END)
    with pytest.raises(InvalidTransition):
        sm.apply(BridgeEvent.ANSWER)


def test_early_media_survives_a_later_180() -> None:
    sm = machine_in(BridgeState.EARLY_MEDIA)
    assert sm.apply(BridgeEvent.RING) is BridgeState.EARLY_MEDIA
    assert sm.apply(BridgeEvent.ANSWER) is BridgeState.CONNECTED


@pytest.mark.parametrize(
    ("code", "cause", "reason"),
    [(486, 17, "busy"), (480, 19, "no_answer"), (480, 20, "switched_off"), (404, 1, "not_found"),
     (484, 28, "invalid_number"), (503, 34, "congestion"), (408, 18, "timeout"), (603, 21, "declined"),
     (403, 21, "rejected"), (486, None, "busy"), (480, None, "no_answer"), (599, None, "failed")],
)
def test_sip_final_responses_become_plain_reasons(code: int, cause: int | None, reason: str) -> None:
    got = decline_for(LegEnded(from_sip(code, cause), code, cause))
    assert got["reason"] == reason and EndReason(got["reason"]) in GATEWAY_DECLINE_REASONS
    assert got["sip_code"] == code and got["q850_cause"] == cause
    assert got["detail"] == EndReason(reason).words()  # plain words for people


def test_no_response_at_all_is_unreachable() -> None:
    got = decline_for(LegEnded(EndReason.TIMEOUT, None, None, detail="no response to INVITE"))
    assert got["reason"] == "unreachable" and got["sip_code"] is None


@pytest.mark.parametrize(("reason", "sip"), [
    (EndReason.BUSY, (486, 17)), (EndReason.DECLINED, (603, 21)), (EndReason.NO_ANSWER, (480, 19)),
    (EndReason.UNAVAILABLE, (480, 20)), (EndReason.CANCELLED, (487, 16)), (EndReason.CONNECTION_LOST, (480, 41)),
    (EndReason.SERVER_SHUTDOWN, (503, 41)), (EndReason.NOT_FOUND, (404, 1)), (EndReason.HANGUP, (480, 16)),
])
def test_app_side_endings_refuse_an_inbound_invite(reason: EndReason, sip: tuple[int, int]) -> None:
    assert sip_refusal(reason) == sip
