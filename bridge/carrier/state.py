"""[pure] One call's state at the simulated trunk: an Enum of states, an Enum of events and one
transition table, run by the project's `TableMachine` (an illegal move raises InvalidTransition).

The trunk (bridge/carrier/trunk.py) creates a `CarrierCallMachine` per authenticated INVITE and
calls `apply(event)` as it sends 18x (RING), the 200 (ANSWER), gets the ACK (ACK) and ends (END).
"""

from __future__ import annotations

from enum import StrEnum

from jego_call.call.machine import TableMachine


class CallState(StrEnum):
    SETUP = "setup"          # authenticated INVITE, programme running, nothing but 100 sent
    EARLY = "early"          # a 18x went out (early dialog, maybe early media)
    ANSWERED = "answered"    # 200 sent; retransmitted until the ACK (RFC 3261 §13.3.1.4)
    CONFIRMED = "confirmed"  # ACK received: the call is up
    ENDED = "ended"          # final non-2xx sent, BYE sent or received, or cancelled


class CallEvent(StrEnum):
    RING = "ring"            # we sent 180 or 183
    ANSWER = "answer"        # we sent 200 OK
    ACK = "ack"              # the ACK for our 200 arrived
    END = "end"              # a final non-2xx, BYE either way, CANCEL, Timer H, media timeout


S, E = CallState, CallEvent

# (state, event) -> next state. Anything absent is illegal.
TRANSITIONS: dict[tuple[CallState, CallEvent], CallState] = {
    (S.SETUP, E.RING): S.EARLY,
    (S.EARLY, E.RING): S.EARLY,
    (S.SETUP, E.ANSWER): S.ANSWERED,
    (S.EARLY, E.ANSWER): S.ANSWERED,
    (S.ANSWERED, E.ACK): S.CONFIRMED,
    **{(s, E.END): S.ENDED for s in (S.SETUP, S.EARLY, S.ANSWERED, S.CONFIRMED)},
}


class CarrierCallMachine(TableMachine[CallState, CallEvent]):
    """One trunk call's state; `apply(event)` is the only way to change it."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("carrier call", TRANSITIONS, CallState.SETUP, CallState.ENDED)

    @property
    def answered(self) -> bool:
        """A 200 OK went out at some point (the call record bills from then)."""
        return any(to is CallState.ANSWERED for _s, _e, to in self.history)
