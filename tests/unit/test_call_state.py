"""The call state machine: every (state, event) pair is either in the table or raises."""

from __future__ import annotations

import itertools

import pytest

from jego_call.call.state import END_REASONS, TRANSITIONS, CallEvent, CallState, CallStateMachine
from jego_call.errors import InvalidTransition


def machine_in(state: CallState) -> CallStateMachine:
    sm = CallStateMachine()
    path = {
        CallState.CALLING: [],
        CallState.RINGING: [CallEvent.RING],
        CallState.CONNECTED: [CallEvent.ACCEPT],
        CallState.ENDED: [CallEvent.CANCEL],
    }[state]
    for ev in path:
        sm.apply(ev)
    assert sm.state is state
    return sm


@pytest.mark.parametrize(("state", "event"), list(itertools.product(CallState, CallEvent)))
def test_whole_transition_table(state: CallState, event: CallEvent) -> None:
    sm = machine_in(state)
    expected = TRANSITIONS.get((state, event))
    if expected is None:
        with pytest.raises(InvalidTransition):
            sm.apply(event)
        assert sm.state is state  # an illegal move changes nothing
    else:
        assert sm.apply(event) is expected
        assert sm.history[-1] == (state, event, expected)


def test_ended_is_final_and_has_a_reason() -> None:
    for (state, event), nxt in TRANSITIONS.items():
        if nxt is CallState.ENDED:
            sm = machine_in(state)
            sm.apply(event)
            assert sm.ended and sm.end_reason == END_REASONS[event]
    assert not any(s is CallState.ENDED for s, _ in TRANSITIONS)


def test_outcomes_by_state() -> None:
    # a ringing call can time out as no_answer; a connected one cannot
    sm = machine_in(CallState.RINGING)
    sm.apply(CallEvent.TIMEOUT)
    assert sm.end_reason == "no_answer"
    with pytest.raises(InvalidTransition):
        machine_in(CallState.CONNECTED).apply(CallEvent.TIMEOUT)
    with pytest.raises(InvalidTransition):
        machine_in(CallState.CONNECTED).apply(CallEvent.CANCEL)
    sm = machine_in(CallState.CONNECTED)
    sm.apply(CallEvent.HANGUP)
    assert sm.end_reason == "hangup"
