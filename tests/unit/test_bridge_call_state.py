"""BridgeCall's state machine: every (state, event) pair is in the table or raises; reason mapping."""

from __future__ import annotations

import itertools

import pytest

from bridge.call import (
    REASON_FOR_OUTCOME,
    TRANSITIONS,
    BridgeEvent,
    BridgeState,
    BridgeStateMachine,
    decline_for,
)
from bridge.causes import OUTCOMES
from bridge.legs import LegEnded
from jego_call.errors import InvalidTransition
from jego_call.signalling.messages import GATEWAY_END_REASONS

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


def test_every_outcome_maps_to_a_protocol_reason() -> None:
    for o in OUTCOMES:
        assert REASON_FOR_OUTCOME[o.key] in GATEWAY_END_REASONS, o.key
    assert set(REASON_FOR_OUTCOME.values()) <= GATEWAY_END_REASONS


@pytest.mark.parametrize(
    ("code", "cause", "reason"),
    [(486, 17, "busy"), (480, 19, "no_answer"), (480, 20, "unavailable"), (404, 1, "invalid_number"),
     (484, 28, "invalid_number"), (503, 34, "congestion"), (408, 18, "timeout"), (603, 21, "declined"),
     (403, 21, "rejected"), (486, None, "busy"), (480, None, "no_answer"), (599, None, "failed")],
)
def test_sip_final_responses_become_plain_reasons(code: int, cause: int | None, reason: str) -> None:
    got = decline_for(LegEnded("whatever", code, cause))
    assert got["reason"] == reason
    assert got["sip_code"] == code and got["q850_cause"] == cause
    assert got["detail"]  # plain words for people


def test_no_response_at_all_is_unreachable() -> None:
    got = decline_for(LegEnded("timeout", None, None, detail="no response to INVITE"))
    assert got["reason"] == "unreachable" and got["sip_code"] is None
