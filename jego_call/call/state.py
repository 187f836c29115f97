"""[pure] The call state machine: an Enum of states, an Enum of events, one transition table.

Create a `CallStateMachine`, then `apply(event)` for each thing that happens; an event the
table does not allow raises InvalidTransition. `end_reason` tells why an ended call ended.
"""

from __future__ import annotations

from enum import Enum

from .machine import TableMachine
from .reasons import EndReason


class CallState(Enum):
    CALLING = "calling"      # invite delivered to the callee's sessions, no ringing yet
    RINGING = "ringing"      # a callee session reported ringing
    CONNECTED = "connected"  # a callee session accepted
    ENDED = "ended"


class CallEvent(Enum):
    RING = "ring"
    ACCEPT = "accept"
    DECLINE = "decline"
    BUSY = "busy"
    UNAVAILABLE = "unavailable"
    CANCEL = "cancel"
    TIMEOUT = "timeout"
    HANGUP = "hangup"
    CONNECTION_LOST = "connection_lost"
    MAX_DURATION = "max_duration"
    SHUTDOWN = "shutdown"
    FAIL = "fail"


S, E = CallState, CallEvent

# (state, event) -> next state. Anything absent is illegal.
TRANSITIONS: dict[tuple[CallState, CallEvent], CallState] = {
    (S.CALLING, E.RING): S.RINGING,
    (S.CALLING, E.ACCEPT): S.CONNECTED,
    (S.RINGING, E.RING): S.RINGING,  # a second callee session also rings
    (S.RINGING, E.ACCEPT): S.CONNECTED,
    **{(s, e): S.ENDED for s in (S.CALLING, S.RINGING) for e in (
        E.DECLINE, E.BUSY, E.UNAVAILABLE, E.CANCEL, E.TIMEOUT, E.HANGUP, E.CONNECTION_LOST, E.SHUTDOWN, E.FAIL)},
    **{(S.CONNECTED, e): S.ENDED for e in (
        E.HANGUP, E.CONNECTION_LOST, E.MAX_DURATION, E.SHUTDOWN, E.FAIL)},
}

# Why a call ended, as sent in call_ended.reason (docs/signalling.md).
END_REASONS: dict[CallEvent, EndReason] = {
    E.DECLINE: EndReason.DECLINED,
    E.BUSY: EndReason.BUSY,
    E.UNAVAILABLE: EndReason.UNAVAILABLE,
    E.CANCEL: EndReason.CANCELLED,
    E.TIMEOUT: EndReason.NO_ANSWER,
    E.HANGUP: EndReason.HANGUP,
    E.CONNECTION_LOST: EndReason.CONNECTION_LOST,
    E.MAX_DURATION: EndReason.MAX_DURATION,
    E.SHUTDOWN: EndReason.SERVER_SHUTDOWN,
    E.FAIL: EndReason.FAILED,
}


class CallStateMachine(TableMachine[CallState, CallEvent]):
    """One call's state. `apply` is the only way to change it."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("call", TRANSITIONS, CallState.CALLING, CallState.ENDED)

    @property
    def end_reason(self) -> EndReason | None:
        return END_REASONS[self.end_event] if self.end_event is not None else None
